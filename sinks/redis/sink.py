"""The Redis sink of the profitability flow (SPEC section 4).

:class:`RedisWriter` writes tagged batches ``(tag, polars.DataFrame)``:

- ``"recs"``: REC_SCHEMA rows of whole windows -> the per-site columnar snapshots
  (:mod:`sinks.redis.snapshot`), ``rec:{device}`` hashes, the ``recommendations`` stream
  and the per-site / fleet summaries (:mod:`sinks.redis.recs`);
- ``"prices"``: PRICE_ROW_SCHEMA rows -> the ``prices`` hash;
- ``"workload_events"``: WORKLOAD_EVENT_SCHEMA rows -> ``workload:{id}`` hashes and the
  ``workloads`` stream (:mod:`sinks.redis.events`);
- ``"compliance"`` / ``"site_compliance"``: the control loop's rows -> the
  ``noncompliant`` hash and ``compliance:site:{site}`` hashes (:mod:`sinks.redis.compliance`);

- ``"gpu_health"``: GPU_HEALTH_SCHEMA rows (router cordons) -> the ``gpu:cordoned`` hash;
- ``"reservations"``: RESERVATION_SCHEMA rows -> ``expected_start_ts``, ``reserved_site``,
  ``reserved_gpus`` on the workload's hash (removed when the reservation ends);
- any other tag is ignored, so one output stream can feed several sinks.

:class:`RedisSink` wraps it for Bytewax. Delivery: at-least-once from the dataflow,
made effectively exactly-once by idempotent writes (a replayed batch leaves the same state
and adds no stream entries). While Redis is down or erroring the batch is held and retried
with exponential backoff, which blocks the worker: that is Bytewax's backpressure, and
nothing is dropped. Two things end the wait: a stop request (``hcp run``'s SIGTERM/SIGINT,
:class:`hcp.shutdown.Shutdown`), which raises :class:`SinkUnavailableError` within a fraction of a
second, and an answer that no retry can change (a DB index out of range, bad
credentials), which raises :class:`ConfigError` at once: a misconfiguration is not an
outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import polars as pl
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from hcp.errors import ConfigError, SinkUnavailableError
from hcp.redis_client import redis_client, safe_url
from hcp.shutdown import Shutdown
from hcp.tags import Out
from sinks.metrics import (
    SINK_ERRORS,
    SINK_ROWS,
    SINK_WRITE_SECONDS,
    outage_ended,
    outage_started,
    sink_started,
)
from sinks.redis.compliance import write_device_compliance, write_site_compliance
from sinks.redis.events import (
    write_gpu_health,
    write_prices,
    write_reservations,
    write_workload_events,
)
from sinks.redis.layout import COND_HSET_LUA, PRICES_LUA, WORKLOAD_LUA, RedisKeys
from sinks.redis.packer import BufferRing
from sinks.redis.recs import CHUNK_ROWS, HashCache, RecWriteStats, write_recs
from sinks.redis.snapshot import SNAPSHOT_LUA, SnapshotCache

__all__ = ["RedisSink", "RedisWriter", "config_problem"]

log = logging.getLogger(__name__)

Item = tuple[str, pl.DataFrame]
_RETRYABLE = (redis.RedisError, OSError)
# Replies to the connection handshake (AUTH, SELECT) that mean the URL itself is wrong.
_CONFIG_REPLIES = ("db index", "invalid db", "wrongpass", "noauth", "noperm",
                   "invalid password", "invalid username", "auth")


def config_problem(exc: BaseException) -> str | None:
    """Why ``exc`` is a misconfiguration that no retry can fix, or None for an outage."""
    if isinstance(exc, redis.AuthenticationError):
        return f"authentication failed ({exc})"
    if isinstance(exc, redis.ResponseError) and not isinstance(exc, redis.ReadOnlyError):
        text = str(exc).lower()
        if any(reply in text for reply in _CONFIG_REPLIES):
            return str(exc)
    return None


class RedisWriter:
    """Writes tagged DataFrames to one Redis under one key prefix, retrying until done."""

    def __init__(
        self,
        url: str,
        prefix: str = "hcp:",
        stream_maxlen: int = 1_000_000,
        *,
        chunk_rows: int = CHUNK_ROWS,
        backoff_min_s: float = 0.2,
        backoff_max_s: float = 5.0,
        give_up_after_s: float | None = None,
        socket_timeout_s: float = 30.0,
        delta_hashes: bool = True,
        stream_changed_only: bool = False,
        shutdown: Shutdown | None = None,
    ) -> None:
        if stream_maxlen < 1:
            msg = f"stream_maxlen must be >= 1, got {stream_maxlen}"
            raise ValueError(msg)
        self.url = url
        self.shutdown = shutdown or Shutdown()
        self.keys = RedisKeys(prefix)
        self.stream_maxlen = stream_maxlen
        self.chunk_rows = chunk_rows
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.give_up_after_s = give_up_after_s
        self.client = redis_client(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=min(socket_timeout_s, 5.0),
        )
        self._shas: dict[str, str] = {}
        self._ring = BufferRing(4)
        # Knowing what changed needs the previous window's text: the delta cache's.
        self._cache = HashCache() if delta_hashes or stream_changed_only else None
        self.stream_changed_only = stream_changed_only
        self._snapshots = SnapshotCache()
        self.last_rec_stats: RecWriteStats | None = None  # of the last "recs" item
        self._outage_since: float | None = None
        sink_started("redis")

    def close(self) -> None:
        self.client.close()

    def write_batch(self, items: Iterable[Item]) -> None:
        """Write every item, holding the batch and retrying while Redis fails."""
        items = [(tag, df) for tag, df in items if tag in _HANDLERS]
        if not items:
            return
        started = time.monotonic()
        delay = self.backoff_min_s
        while True:
            try:
                self._write_once(items)
            except _RETRYABLE as exc:
                problem = config_problem(exc)
                if problem is not None:
                    where = safe_url(self.url)
                    msg = f"Redis at {where} refused the connection: {problem}; check --redis"
                    raise ConfigError(msg) from None
                if self._cache is not None:
                    self._cache.clear()
                self._snapshots.clear()
                SINK_ERRORS.labels(sink="redis").inc()
                now = time.monotonic()
                if self._outage_since is None:
                    self._outage_since = now
                    outage_started("redis")
                    log.warning(
                        "Redis sink: %s failed (%s: %s); holding the batch and retrying",
                        self.url, type(exc).__name__, exc,
                    )
                if self.give_up_after_s is not None and now - started > self.give_up_after_s:
                    where = safe_url(self.url)
                    msg = f"Redis at {where} unavailable for {now - started:.1f} s: {exc}"
                    raise SinkUnavailableError(msg) from exc
                if self.shutdown.wait(delay):
                    msg = (f"stopped while Redis at {safe_url(self.url)} was unavailable ({exc}); "
                           "the held batch was not written")
                    raise SinkUnavailableError(msg) from None
                delay = min(delay * 2, self.backoff_max_s)
                continue
            break
        if self._outage_since is not None:
            log.warning(
                "Redis sink: %s recovered after %.1f s", self.url,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
            outage_ended("redis")
        SINK_WRITE_SECONDS.labels(sink="redis").observe(time.monotonic() - started)

    def _write_once(self, items: list[Item]) -> None:
        # Scripts are (re)loaded each attempt: a restarted Redis has forgotten them.
        self._shas = {
            name: self.client.script_load(lua)
            for name, lua in (("cond", COND_HSET_LUA), ("prices", PRICES_LUA),
                              ("workload", WORKLOAD_LUA), ("snapshot", SNAPSHOT_LUA))
        }
        for tag, df in items:
            _HANDLERS[tag](self, df)

    def _write_recs(self, df: pl.DataFrame) -> None:
        stats = write_recs(
            self.client, self.keys, df, cond_hset_sha=self._shas["cond"],
            stream_maxlen=self.stream_maxlen, chunk_rows=self.chunk_rows, ring=self._ring,
            cache=self._cache, changed_only=self.stream_changed_only,
            snapshot_sha=self._shas["snapshot"], snapshots=self._snapshots,
        )
        self.last_rec_stats = stats
        SINK_ROWS.labels(sink="redis", table="recommendations").inc(stats.stream_entries)

    def _write_prices(self, df: pl.DataFrame) -> None:
        write_prices(self.client, self.keys, df, self._shas["prices"])
        SINK_ROWS.labels(sink="redis", table="prices").inc(df.height)

    def _write_workload_events(self, df: pl.DataFrame) -> None:
        added = write_workload_events(
            self.client, self.keys, df, self._shas["workload"], self.stream_maxlen
        )
        SINK_ROWS.labels(sink="redis", table="workload_events").inc(added)

    def _write_site_compliance(self, df: pl.DataFrame) -> None:
        write_site_compliance(self.client, self.keys, df, self._shas["cond"])
        SINK_ROWS.labels(sink="redis", table="site_compliance").inc(df.height)

    def _write_device_compliance(self, df: pl.DataFrame) -> None:
        write_device_compliance(self.client, self.keys, df)
        SINK_ROWS.labels(sink="redis", table="device_compliance").inc(df.height)

    def _write_usage_totals(self, df: pl.DataFrame) -> None:
        from sinks.redis.usage import write_usage_totals

        write_usage_totals(self.client, self.keys, df)
        SINK_ROWS.labels(sink="redis", table="usage_totals").inc(df.height)

    def _write_gpu_health(self, df: pl.DataFrame) -> None:
        write_gpu_health(self.client, self.keys, df)
        SINK_ROWS.labels(sink="redis", table="gpu_cordoned").inc(df.height)

    def _write_reservations(self, df: pl.DataFrame) -> None:
        write_reservations(self.client, self.keys, df)
        SINK_ROWS.labels(sink="redis", table="reservations").inc(df.height)


_HANDLERS: dict[str, Any] = {
    Out.RECS: RedisWriter._write_recs,
    Out.COMPLIANCE: RedisWriter._write_device_compliance,
    Out.SITE_COMPLIANCE: RedisWriter._write_site_compliance,
    Out.PRICES: RedisWriter._write_prices,
    Out.WORKLOAD_EVENTS: RedisWriter._write_workload_events,
    Out.GPU_HEALTH: RedisWriter._write_gpu_health,
    Out.RESERVATIONS: RedisWriter._write_reservations,
    Out.USAGE_TOTALS: RedisWriter._write_usage_totals,
}


class _RedisSinkPartition(StatelessSinkPartition[Item]):
    def __init__(self, writer: RedisWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[Item]) -> None:
        self._writer.write_batch(items)

    def close(self) -> None:
        self._writer.close()


class RedisSink(DynamicSink[Item]):
    """Write ``(tag, DataFrame)`` items to Redis per SPEC section 4.

    Idempotent, so at-least-once delivery from a resumed dataflow gives exactly-once
    state. Recommendations must reach ONE worker's partition in window-end order (the
    stream ids and the no-older-overwrite check rely on a single ordered writer); prices
    and workload events may arrive at any worker, in any order.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "hcp:",
        stream_maxlen: int = 1_000_000,
        **writer_options: Any,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.writer_options = writer_options

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Item]:
        writer = RedisWriter(self.url, self.prefix, self.stream_maxlen, **self.writer_options)
        return _RedisSinkPartition(writer)
