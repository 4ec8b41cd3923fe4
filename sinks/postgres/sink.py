"""The Bytewax sink that stores HCP history in PostgreSQL / TimescaleDB.

``PostgresSink`` receives tagged items ``(tag, polars.DataFrame)`` and writes every item
of one ``write_batch`` call through :class:`~sinks.postgres.writer.PgWriter` (COPY into
staging, upsert on the natural key): one transaction, or for a large batch one per group
of tables on a few connections at once (:mod:`sinks.postgres.lanes`).

Delivery: at-least-once upstream plus idempotent upserts gives effectively-once rows. A
database that is down or rejects the batch makes ``write_batch`` retry with capped
exponential backoff *without returning*: Bytewax does not hand the worker more input
while its sink blocks, so the job holds its input (backpressure) and never drops or
leaves a batch half-written: a split batch's tables that landed stay, the rest are
retried until they land too. An outage is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl
import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from hcp.errors import SinkUnavailableError
from hcp.shutdown import Shutdown
from hcp.tags import Out
from sinks.metrics import (
    SINK_ERRORS,
    SINK_OUTAGES,
    SINK_ROWS,
    SINK_WRITE_SECONDS,
    outage_ended,
    outage_started,
    sink_started,
)
from sinks.postgres import lanes
from sinks.postgres.lanes import SPLIT_ROWS, Lane, split_tables
from sinks.postgres.schema import apply_migrations, redact_dsn
from sinks.postgres.writer import CopyFormat, PgWriter

__all__ = [
    "RAW_TAGS",
    "SINK_ERRORS",
    "SINK_OUTAGES",
    "SINK_ROWS",
    "SINK_WRITE_SECONDS",
    "TAG_TABLES",
    "PgWriter",
    "PostgresSink",
]

log = logging.getLogger(__name__)

# Which table each tagged stream lands in. Tags not listed belong to other sinks.
TAG_TABLES: dict[str, str] = {
    Out.GPU_RAW: "gpu_metrics",
    Out.ASIC_RAW: "asic_metrics",
    Out.PRICES: "market_prices",
    Out.WINDOWS: "device_windows",
    Out.RECS: "recommendations",
    Out.WORKLOAD_EVENTS: "workload_events",
    Out.COMPLIANCE: "device_compliance",
    Out.SITE_COMPLIANCE: "site_compliance",
    Out.USAGE: "usage_minutes",
    Out.COMMANDS: "audit_log",  # every fleet command the job sends, in the audit trail
    Out.COMMAND_RESULTS: "command_results",  # what the agents did with them
}
# Raw telemetry is by far the largest stream; --no-raw style deployments skip it.
RAW_TAGS = frozenset({Out.GPU_RAW, Out.ASIC_RAW})


@dataclass
class _Outage:
    started: float
    retries: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class _Config:
    dsn: str
    store_raw: bool
    store_prices: bool
    migrate: bool
    copy_format: CopyFormat
    backoff_min_s: float
    backoff_max_s: float
    give_up_after_s: float | None
    connect_timeout_s: int
    connections: int
    split_rows: int
    before_commit: Callable[[int], None] | None = field(default=None)
    shutdown: Shutdown = field(default_factory=Shutdown)


class PostgresSink(DynamicSink):
    """Stores windows, recommendations, workload events, prices and raw rows.

    Items are ``(tag, polars.DataFrame)`` with tag in :data:`TAG_TABLES`; other tags are
    ignored, raw tags (:data:`RAW_TAGS`) too when ``store_raw`` is false. Frames carry
    the columns of the ``hcp.schemas`` contract with times in epoch milliseconds.

    Every worker writes its own batches (``DynamicSink``) of idempotent upserts, so replays
    after a restart never duplicate rows. A batch of ``split_rows`` rows or more is spread
    over up to ``connections`` connections, whole tables each; a smaller one is one
    transaction. Failures are retried, only the tables not yet written, forever by default
    (``give_up_after_s`` to raise instead).
    ``before_commit(batch_number)`` runs inside each transaction once its rows are written;
    a ``psycopg.Error`` it raises aborts the batch, which is then retried like a lost
    connection (the fault tests use it to crash between write and commit).
    """

    def __init__(
        self,
        dsn: str,
        store_raw: bool = True,
        *,
        store_prices: bool = True,
        migrate: bool = True,
        copy_format: CopyFormat = "csv",
        backoff_min_s: float = 0.2,
        backoff_max_s: float = 5.0,
        give_up_after_s: float | None = None,
        connect_timeout_s: int = 5,
        connections: int = 2,
        split_rows: int = SPLIT_ROWS,
        before_commit: Callable[[int], None] | None = None,
        shutdown: Shutdown | None = None,
    ) -> None:
        if connections < 1:
            msg = f"connections must be >= 1, got {connections}"
            raise ValueError(msg)
        self._config = _Config(
            dsn=dsn,
            store_raw=store_raw,
            store_prices=store_prices,
            migrate=migrate,
            copy_format=copy_format,
            backoff_min_s=backoff_min_s,
            backoff_max_s=backoff_max_s,
            give_up_after_s=give_up_after_s,
            connect_timeout_s=connect_timeout_s,
            connections=connections,
            split_rows=split_rows,
            before_commit=before_commit,
            shutdown=shutdown or Shutdown(),
        )

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PostgresSinkPartition:
        return _PostgresSinkPartition(self._config, f"{step_id}[{worker_index}]")


# Worth retrying: connection loss, a rejected batch, a schema not created yet. Anything
# else (a frame without its key columns) is a bug that retrying cannot fix.
_RETRYABLE = (psycopg.Error, OSError, LookupError, SinkUnavailableError)


def _outcome(
    call: Callable[..., dict[str, int]], *args: object
) -> dict[str, int] | BaseException:
    """What ``call`` returned, or the retryable error it raised."""
    try:
        return call(*args)
    except _RETRYABLE as exc:
        return exc


class _PostgresSinkPartition(StatelessSinkPartition[tuple[str, pl.DataFrame]]):
    def __init__(self, config: _Config, name: str) -> None:
        self._config = config
        self._name = name
        self._lanes = [
            Lane(config.dsn, connect_timeout_s=config.connect_timeout_s,
                 copy_format=config.copy_format, before_commit=self._hook)
            for _ in range(config.connections)
        ]
        self._pool = (
            ThreadPoolExecutor(config.connections - 1, thread_name_prefix="hcp-pg")
            if config.connections > 1
            else None
        )
        self._migrated = not config.migrate
        self._batches = 0  # non-empty write_batch calls, the hook's batch numbers
        self._outage: _Outage | None = None
        sink_started("postgres")

    def _wanted(self, tag: str) -> bool:
        if tag not in TAG_TABLES:
            return False
        if tag in RAW_TAGS:
            return self._config.store_raw
        if tag == "prices":
            return self._config.store_prices
        return True

    def coalesce(self, items: Iterable[tuple[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
        """Group one call's items by table, in arrival order."""
        grouped: dict[str, list[pl.DataFrame]] = {}
        for tag, frame in items:
            if self._wanted(tag) and frame.height:
                grouped.setdefault(TAG_TABLES[tag], []).append(frame)
        return {
            table: frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
            for table, frames in grouped.items()
        }

    def write_batch(self, items: list[tuple[str, pl.DataFrame]]) -> None:
        pending = self.coalesce(items)
        if not pending:
            return
        self._batches += 1
        backoff = self._config.backoff_min_s
        started = time.perf_counter()  # retries included, as the shared metric states
        counts: dict[str, int] = {}
        while True:
            try:
                self._attempt(pending, counts)
            except _RETRYABLE as exc:
                self._on_failure(exc)
                # A stop request (hcp run's SIGTERM/SIGINT) ends the wait within a fraction
                # of a second: an outage may be waited out, a stop may not be.
                if self._config.shutdown.wait(backoff):
                    msg = (
                        f"stopped while PostgreSQL at {redact_dsn(self._config.dsn)} was "
                        f"unavailable ({self._outage.last_error if self._outage else exc}); "
                        "the held batch was not written"
                    )
                    raise SinkUnavailableError(msg) from None
                backoff = min(backoff * 2, self._config.backoff_max_s)
                continue
            SINK_WRITE_SECONDS.labels(sink="postgres").observe(time.perf_counter() - started)
            for table, rows in counts.items():
                SINK_ROWS.labels(sink="postgres", table=table).inc(rows)
            self._on_success()
            return

    def _attempt(self, pending: dict[str, pl.DataFrame], counts: dict[str, int]) -> None:
        """Write ``pending``'s tables, one group per lane at once; move each landed group's
        tables from ``pending`` to ``counts``, then raise the first failure if any."""
        if not self._migrated:
            apply_migrations(self._config.dsn)
            self._migrated = True
        groups = split_tables(pending, len(self._lanes), self._config.split_rows)
        jobs = list(zip(self._lanes, groups, strict=False))
        # The first group in the worker's own thread, the others in the pool's.
        others = [self._pool.submit(lane.write, group) for lane, group in jobs[1:]
                  if self._pool is not None]
        outcomes = [_outcome(jobs[0][0].write, jobs[0][1])]
        outcomes += [_outcome(future.result) for future in others]
        failure: BaseException | None = None
        for (lane, group), outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                lane.drop()
                failure = failure or outcome
                continue
            counts.update(outcome)
            for table in group:
                del pending[table]
        if failure is not None:
            raise failure

    def _hook(self, _writer_batches: int) -> None:
        # Number batches per write_batch call, not per attempt, so a retry of batch N is
        # still batch N to the hook.
        if self._config.before_commit is not None:
            self._config.before_commit(self._batches)

    def _on_failure(self, exc: BaseException) -> None:
        SINK_ERRORS.labels(sink="postgres").inc()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        now = time.monotonic()
        if self._outage is None:
            self._outage = _Outage(started=now)
            outage_started("postgres")
            log.warning(
                "postgres sink %s: write to %s failed (%s); holding the batch and retrying "
                "with backoff up to %.1fs",
                self._name,
                redact_dsn(self._config.dsn),
                reason,
                self._config.backoff_max_s,
            )
        self._outage.retries += 1
        self._outage.last_error = reason
        limit = self._config.give_up_after_s
        if limit is not None and now - self._outage.started > limit:
            msg = (
                f"PostgreSQL at {redact_dsn(self._config.dsn)} unavailable for "
                f"{now - self._outage.started:.0f}s: {reason}"
            )
            raise SinkUnavailableError(msg) from exc

    def _on_success(self) -> None:
        if self._outage is not None:
            log.info(
                "postgres sink %s: recovered after %.1fs outage (%d failed attempts)",
                self._name,
                time.monotonic() - self._outage.started,
                self._outage.retries,
            )
            self._outage = None
            outage_ended("postgres")
            lanes.outage_ended(self._config.dsn)

    def close(self) -> None:
        for lane in self._lanes:
            lane.drop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
