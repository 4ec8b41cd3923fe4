"""Kafka input that emits whole fetches as decoded, columnar batches.

One Bytewax partition per Kafka topic-partition, as in Bytewax's own ``KafkaSource``, but
each ``next_batch`` turns up to ``batch_size`` messages into a single :class:`SourceBatch`
(a polars DataFrame plus dead letters), so everything downstream handles thousands of
events per Python call.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from flows import metrics
from flows.decode import decode_values
from flows.frames import decode_messages
from flows.metrics import MetricsEndpoint
from hcp.errors import ConfigError
from hcp.frames import is_frame
from hcp.kafka_admin import partition_counts
from hcp.kafka_config import kafka_conf
from hcp.schemas import (
    ASIC_FIELDS,
    COMMAND_RESULT_FIELDS,
    DLQ_SCHEMA,
    GPU_FIELDS,
    PRICE_FIELDS,
    WORKLOAD_FIELDS,
    Field,
)
from hcp.shutdown import Shutdown

__all__ = ["KafkaBatchSource", "SourceBatch"]

log = logging.getLogger(__name__)
# Workers of one process share the source object and call list_parts at the same time.
_VERIFY_LOCK = threading.Lock()

# Gathered bytes that make a batch ready at once: ~4 frames, ~30k samples.
READY_BYTES = 4 * 1024 * 1024

# Topics that may carry Arrow frames (contract section 1b); others are JSON only.
FRAME_KINDS = frozenset({"gpu", "asic"})

KIND_FIELDS: dict[str, tuple[Field, ...]] = {
    "gpu": GPU_FIELDS,
    "asic": ASIC_FIELDS,
    "prices": PRICE_FIELDS,
    "workloads": WORKLOAD_FIELDS,
    "command_results": COMMAND_RESULT_FIELDS,
}


@dataclass
class SourceBatch:
    """One fetch from one partition: decoded rows in offset order, and its dead letters.

    A batch with no rows is a heartbeat: it still carries the partition's progress
    (``eof``, ``idle``), which the watermark needs.
    """

    kind: str  # gpu | asic | prices | workloads | command_results
    topic: str
    partition: int
    rows: pl.DataFrame
    dlq: pl.DataFrame
    next_offset: int
    eof: bool = False
    idle: bool = False
    max_ts: int | None = field(default=None)

    @property
    def input_id(self) -> str:
        return f"{self.topic}#{self.partition}"


FETCH_WAIT_MAX_MS = 250
# An empty partition is polled after 20 ms, then less often, up to every 100 ms.
_IDLE_POLL_MIN_MS = 10
_IDLE_POLL_MAX_MS = 100


def heartbeat_interval_s(idle_timeout_s: float) -> float:
    """How often a partition with nothing to hand on still reports its progress.

    An input held after a pause (flows/progress.py) is let go by its first idle report
    at least the idle timeout after the resume. At a fixed 1 s cadence a short idle timeout
    held windows up to a second past it: 1.8 s of the live latency at 10k events/s with
    the bench's 0.5 s (docs/benchmark.md). A quarter of the timeout bounds that to 25 %.
    """
    if idle_timeout_s <= 0:
        return 1.0
    return min(1.0, max(idle_timeout_s / 4, 0.05))


def consumer_config(bootstrap: str, eof: bool = True) -> dict[str, object]:
    """Fetch tuning measured on the embedded broker: small waits, deep local queues.

    ``eof``: report each partition's end (what ``--once`` stops at). A streaming job has
    no use for it and must not ask: behind the broker, each fetch ends in such an event,
    and one inside a batch sends the whole batch down the decoder's strict path.
    """
    return {
        **kafka_conf(bootstrap),
        "group.id": f"hcp-job-{uuid.uuid4().hex[:8]}",  # assign() only; never joins a group
        "enable.auto.commit": False,
        "enable.partition.eof": eof,
        # Offsets come from Bytewax snapshots; without one a partition starts at its
        # beginning, which idempotent sinks make safe. See docs/recovery.md.
        "auto.offset.reset": "earliest",
        "fetch.min.bytes": 1,
        # How long the broker may hold a fetch of a partition at its end. It answers as
        # soon as data arrives (measured on Tansu: median 15 ms after a produce), so this
        # only bounds how often an idle partition is asked: 5 ms cost an idle job's broker
        # ~45 % of a core (issue 18; docs/architecture.md).
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        "queued.min.messages": 100_000,
        "queued.max.messages.kbytes": 16_384,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "statistics.interval.ms": 5_000,
    }


def _lag(stats: dict, start: int) -> int | None:
    """Messages between this consumer's position and the partition end, from librdkafka stats.

    librdkafka's own ``consumer_lag`` counts from the *committed* offset, and the job never
    commits (its offsets live in Bytewax snapshots), so that field is always -1. The lag
    from the stored offset (the position, stored as messages are consumed) is the one that
    means "behind"; before the first message the position is the start offset.
    """
    lag = stats.get("consumer_lag_stored", -1)
    if lag >= 0:
        return int(lag)
    end = stats.get("ls_offset", -1)
    if end < 0:
        end = stats.get("hi_offset", -1)
    if end < 0 or stats.get("app_offset", -1) >= 0:
        return None
    first = start if start >= 0 else stats.get("lo_offset", -1)
    return max(end - first, 0) if first >= 0 else None


class _BatchPartition(StatefulSourcePartition[SourceBatch, int]):
    def __init__(
        self,
        bootstrap: str,
        kind: str,
        topic: str,
        partition: int,
        resume_offset: int | None,
        batch_size: int,
        once: bool,
        idle_timeout_s: float,
        linger_s: float = 0.1,
        shutdown: Shutdown | None = None,
    ) -> None:
        self._shutdown = shutdown or Shutdown()
        self._kind = kind
        self._topic = topic
        self._partition = partition
        self._fields = KIND_FIELDS[kind]
        self._offset = OFFSET_BEGINNING if resume_offset is None else resume_offset
        self._batch_size = batch_size
        self._once = once
        self._idle_timeout_s = idle_timeout_s
        self._heartbeat_s = heartbeat_interval_s(idle_timeout_s)
        self._done = False
        self._idle = False
        self._last_data = time.monotonic()
        # Silence only means "idle" while the broker answers: during an outage every input
        # is silent, and whichever came back first would close the others' windows.
        self._broker_up = True
        self._up_since = self._last_data
        self._last_emit = 0.0
        self._next_awake: datetime | None = None
        self._linger_s = linger_s
        self._empty_polls = 0
        self._pending: list = []
        self._pending_since = 0.0
        conf = consumer_config(bootstrap, eof=once)
        conf["stats_cb"] = self._on_stats
        conf["error_cb"] = self._on_error
        self._consumer = Consumer(conf)
        self._consumer.assign([TopicPartition(topic, partition, self._offset)])
        # Zero from the start: "no errors" is then a sample, not a missing series.
        metrics.SOURCE_ERRORS.labels(topic)
        metrics.EVENTS_IN.labels(topic)
        metrics.DECODE_STRICT.labels(topic)

    def _on_stats(self, stats_json: str) -> None:
        try:
            stats = json.loads(stats_json)["topics"][self._topic]["partitions"][
                str(self._partition)
            ]
        except (KeyError, ValueError):
            return
        self._set_broker_up(
            any(
                b.get("state") == "UP"
                for b in json.loads(stats_json).get("brokers", {}).values()
                if b.get("nodeid", -1) >= 0
            )
        )
        lag = _lag(stats, self._offset)
        if lag is not None:
            metrics.CONSUMER_LAG.labels(self._topic, str(self._partition)).set(lag)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._set_broker_up(False)
        log.warning("Kafka client error on %s#%d: %s", self._topic, self._partition, err)

    def _set_broker_up(self, up: bool) -> None:
        if up and not self._broker_up:
            self._up_since = time.monotonic()
        self._broker_up = up

    def next_batch(self) -> list[SourceBatch]:
        if self._done or self._shutdown.requested:
            raise StopIteration
        msgs = self._consumer.consume(self._batch_size - len(self._pending), 0)
        eof = False
        if msgs:
            # A one-partition consumer's end-of-partition event comes last, so a full
            # batch is never scanned for it. One inside a batch (the partition was caught
            # up, then more arrived) fails decoding and is dropped with the bad messages;
            # only --once asks for these events, and there the topics are mostly complete.
            last = msgs[-1].error()
            if last is not None and last.code() == KafkaError._PARTITION_EOF:
                eof = True
                msgs = msgs[:-1]
            elif last is not None:
                msgs = self._without_errors(msgs)
        now = time.monotonic()
        if msgs:
            self._empty_polls = 0
            if not self._pending:
                self._pending_since = now
            self._pending.extend(msgs)
            self._last_data = now
            self._idle = False
        if self._pending and not self._ready(now, eof):
            # Live traffic arrives a few messages per poll; gather them for up to
            # `linger_s` so that per-batch costs stay spread over many events.
            wait = self._pending_since + self._linger_s - now
            self._next_awake = datetime.now(UTC) + timedelta(seconds=max(wait, 0.005))
            return []
        if not self._pending:
            # Nothing to hand on: poll again soon, backing off while the partition stays
            # empty (an idle job must not spin); the first message resets it.
            self._empty_polls = 0 if msgs else self._empty_polls + 1
            wait_ms = min(_IDLE_POLL_MIN_MS * 2 ** min(self._empty_polls, 8), _IDLE_POLL_MAX_MS)
            self._next_awake = datetime.now(UTC) + timedelta(milliseconds=wait_ms)
            quiet_since = max(self._last_data, self._up_since)
            idle = (
                self._idle_timeout_s > 0
                and self._broker_up
                and now - quiet_since >= self._idle_timeout_s
            )
            changed = idle != self._idle
            self._idle = idle
            if self._once and eof:
                self._done = True
                return [self._batch(pl.DataFrame(schema=_schema(self._fields)), None, eof=True)]
            if changed or now - self._last_emit >= self._heartbeat_s:
                self._last_emit = now
                return [self._batch(pl.DataFrame(schema=_schema(self._fields)), None)]
            return []
        msgs, self._pending = self._pending, []
        self._next_awake = None
        self._last_emit = now
        started = time.perf_counter()
        values = [m.value() for m in msgs]
        if None in values:
            # An error or end-of-partition event inside the batch (or a tombstone): take the
            # events out, once, for this batch only.
            msgs = self._without_errors(msgs)
            values = [m.value() for m in msgs]
        if not msgs:
            return []
        rows, dlq, samples = self._decode(msgs, values)
        self._offset = msgs[-1].offset() + 1
        metrics.EVENTS_IN.labels(self._topic).inc(samples)
        metrics.DECODE_SECONDS.labels(self._kind).observe(time.perf_counter() - started)
        finished = self._once and eof
        if finished:
            self._done = True
        return [self._batch(rows, dlq, eof=finished)]

    def _decode(self, msgs: list, values: list) -> tuple[pl.DataFrame, pl.DataFrame | None, int]:
        """Rows, dead letters and the number of samples read (a frame holds many)."""
        headers = [m.headers() for m in msgs] if self._kind in FRAME_KINDS else None
        if headers is not None and any(headers):
            flags = [is_frame(h) for h in headers]
            if any(flags):
                mixed = decode_messages(values, flags, self._fields)
                dlq = None
                samples = mixed.samples
                if mixed.bad_msg:
                    dlq = self._dead_letters(
                        msgs, mixed.bad_value, mixed.bad_msg, mixed.bad_reason, mixed.bad_row
                    )
                    samples -= _events_among(msgs, mixed.bad_msg)
                return mixed.rows, dlq, samples
        decoded = decode_values(values, self._fields)
        if decoded.strict:
            metrics.DECODE_STRICT.labels(self._topic).inc()
        dlq = None
        events = len(msgs)
        if decoded.bad_index:
            bad_values = [values[i] for i in decoded.bad_index]
            dlq = self._dead_letters(msgs, bad_values, decoded.bad_index, decoded.bad_reason)
            events -= _events_among(msgs, decoded.bad_index)
        return decoded.rows, dlq, events

    def _ready(self, now: float, eof: bool) -> bool:
        """Whether the gathered messages go out now."""
        if len(self._pending) >= self._batch_size // 10 or (self._once and eof):
            return True
        # A few frames already hold tens of thousands of samples: go as soon as they are here.
        if sum(map(len, self._pending)) >= READY_BYTES:
            return True
        return now - self._pending_since >= self._linger_s

    def _without_errors(self, msgs: list) -> list:
        """Drop error and end-of-partition events; only batches that carry one pay for it."""
        kept = []
        for m in msgs:
            err = m.error()
            if err is None:
                kept.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("Kafka error on %s#%d: %s", self._topic, self._partition, err)
                metrics.SOURCE_ERRORS.labels(self._topic).inc()
        return kept

    def _dead_letters(
        self,
        msgs: list,
        bad_values: list,
        bad_index: list[int],
        bad_reason: list[str],
        bad_row: list[int | None] | None = None,
    ) -> pl.DataFrame | None:
        """Dead letters for rejected messages (and frame rows: ``bad_row`` is their index)."""
        rows: dict[str, list] = {c: [] for c in DLQ_SCHEMA}
        reasons: list[str] = []
        row_of = bad_row if bad_row is not None else [None] * len(bad_index)
        for i, reason, value, row in zip(bad_index, bad_reason, bad_values, row_of, strict=True):
            err = msgs[i].error()
            if err is not None:
                # An event, not a message: nothing to dead-letter. librdkafka retries
                # broker errors on its own; log them so an outage is visible.
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("Kafka error on %s#%d: %s", self._topic, self._partition, err)
                    metrics.SOURCE_ERRORS.labels(self._topic).inc()
                continue
            rows["topic"].append(self._topic)
            rows["partition"].append(self._partition)
            rows["offset"].append(msgs[i].offset())
            rows["reason"].append(reason)
            rows["key"].append(msgs[i].key())
            rows["value"].append(value)
            rows["row"].append(row)
            reasons.append(reason)
        if not reasons:
            return None
        metrics.count_bad_input(self._topic, reasons)
        # In source order (offset, then frame row): the DLQ sink's replay mark relies on it.
        return pl.DataFrame(rows, schema=DLQ_SCHEMA).sort("offset", "row", nulls_last=False)

    def _batch(
        self, rows: pl.DataFrame, dlq: pl.DataFrame | None, eof: bool = False
    ) -> SourceBatch:
        if dlq is None:
            dlq = pl.DataFrame(schema=DLQ_SCHEMA)
        max_ts = rows["ts"].max() if rows.height else None
        return SourceBatch(
            kind=self._kind,
            topic=self._topic,
            partition=self._partition,
            rows=rows,
            dlq=dlq,
            next_offset=self._offset,
            eof=eof,
            idle=self._idle,
            max_ts=max_ts,  # type: ignore[arg-type]
        )

    def next_awake(self) -> datetime | None:
        return self._next_awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


def _events_among(msgs: list, bad: list[int]) -> int:
    """End-of-partition events among the rejected: they carry a value (librdkafka's text),
    so they reach the decoder and fail there, but they are not messages. Live, a caught-up
    partition has one between most fetches: counted, they inflated hcp_events_in_total."""
    return sum(1 for i in set(bad) if msgs[i].error() is not None)


def _schema(fields: tuple[Field, ...]) -> dict[str, object]:
    return {f.name: f.dtype for f in fields}


class KafkaBatchSource(FixedPartitionedSource[SourceBatch, int]):
    """Every partition of the given topics, read in order, as columnar batches.

    Delivery: at-least-once into the dataflow. The snapshot is the next offset to read,
    so a resume from a Bytewax recovery snapshot re-reads nothing that was committed in
    an earlier epoch and skips nothing after it.

    ``partitions`` (topic -> count) is the layout the flow was built for: with it,
    building the source does no I/O and the broker is asked only when the dataflow runs
    (``list_parts``), which stops the job if a topic is missing or has another count.
    Without it the counts are read from the broker here (the router-only flow).
    ``optional`` kinds are read when their topic exists, with the broker's partition count
    (no stage's layout depends on them): the agents' command results, which a fleet
    without ``hcp agent`` never produces.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, str],
        batch_size: int = 50_000,
        once: bool = False,
        idle_timeout_s: float = 30.0,
        linger_s: float = 0.1,
        *,
        partitions: dict[str, int] | None = None,
        optional: tuple[str, ...] = (),
        shutdown: Shutdown | None = None,
        metrics_endpoint: MetricsEndpoint | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._required = {k: t for k, t in topics.items() if k not in optional}
        self._optional = {k: t for k, t in topics.items() if k in optional}
        self._topics = dict(self._required)  # kind -> topic, what is read
        self._batch_size = batch_size
        self._once = once
        self._idle_timeout_s = idle_timeout_s
        self._linger_s = linger_s
        self.shutdown = shutdown or Shutdown()
        self._endpoint = metrics_endpoint or MetricsEndpoint(0)
        self._verified = partitions is None
        required = set(self._required.values())
        self._built_for = {t: n for t, n in (partitions or {}).items() if t in required}
        self.partitions = dict(self._built_for)
        if partitions is None:
            self._verify(None)

    def _verify(self, want: dict[str, int] | None) -> None:
        """Check the required topics against ``want``, then add the optional ones that exist.

        Idempotent: every worker thread of a process calls it on the one source object."""
        names = [*self._required.values(), *self._optional.values()]
        have = partition_counts(self._bootstrap, names)
        _check_layout(self._bootstrap, self._required, have, want)
        topics = dict(self._required)
        partitions = {t: have[t] for t in self._required.values()}
        for kind, topic in self._optional.items():
            if topic in have:
                topics[kind] = topic
                partitions[topic] = have[topic]
            else:
                log.info("optional topic %s does not exist; not read", topic)
        self._topics, self.partitions = topics, partitions

    def layout_parts(self) -> list[str]:
        """The source's partitions as built, without asking the broker."""
        return [
            f"{kind}|{topic}|{p}"
            for kind, topic in self._topics.items()
            for p in range(self.partitions[topic])
        ]

    def list_parts(self) -> list[str]:
        with _VERIFY_LOCK:
            if not self._verified:
                # Run time: the first (and only) broker round trip of a pre-built flow.
                self._verify(self._built_for)
                self._verified = True
            return self.layout_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _BatchPartition:
        kind, topic, part = for_part.split("|")
        self._endpoint.serve_once()
        return _BatchPartition(
            self._bootstrap,
            kind,
            topic,
            int(part),
            resume_state,
            self._batch_size,
            self._once,
            self._idle_timeout_s,
            self._linger_s,
            self.shutdown,
        )


def _check_layout(
    bootstrap: str, topics: dict[str, str], have: dict[str, int], want: dict[str, int] | None
) -> None:
    missing = [t for t in topics.values() if t not in have]
    if missing:
        msg = f"topics {missing} do not exist on {bootstrap}; create them with `hcp generate`"
        raise ConfigError(msg)
    if want is None:
        return
    wrong = {t: (want.get(t), have[t]) for t in topics.values() if want.get(t) != have[t]}
    if wrong:
        detail = ", ".join(f"{t} has {h} partitions, the flow was built for {w}"
                           for t, (w, h) in wrong.items())
        msg = (
            f"{detail}; set --partitions/HCP_PARTITIONS to the topics' partition count "
            f"(see docs/scale-out.md)"
        )
        raise ConfigError(msg)
