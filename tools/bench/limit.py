"""The limit: how fast one plain consumer can read and decode every event of some topics.

This is the ceiling HCP is compared with: a confluent-kafka consumer, assigned to every
partition from the beginning (no group join), fetching in big batches and JSON-decoding
every value, doing nothing else. It stops when every partition reports its end
(``enable.partition.eof``), so the topics must be complete before it starts.

Decoders: ``polars`` parses each batch per topic with one ``pl.read_ndjson`` call over the
values joined by newlines (with the SPEC schema when the topic is one of the inputs);
``orjson`` and ``json`` parse each value into a dict. ``auto`` is ``polars``, the fastest on
this machine (see docs/replay.md for the figures).
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from hcp.errors import ConfigError, HcpError
from hcp.kafka_admin import partition_counts, split_fetch
from hcp.kafka_config import kafka_conf
from hcp.schemas import ASIC_FIELDS, GPU_FIELDS, PRICE_FIELDS, WORKLOAD_FIELDS, polars_schema
from hcp.topics import Topics

__all__ = ["DECODERS", "LIMIT_CONSUMER_CONFIG", "LimitResult", "measure_limit"]

log = logging.getLogger(__name__)

# Tuned on the embedded Tansu broker: answer fetches at once and keep a deep local queue.
LIMIT_CONSUMER_CONFIG: dict[str, object] = {
    "enable.auto.commit": False,
    "enable.partition.eof": True,
    "fetch.wait.max.ms": 1,
    "fetch.min.bytes": 1,
    "queued.min.messages": 1_000_000,
    "queued.max.messages.kbytes": 1_048_576,
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 16 * 1024 * 1024,
}

PER_PARTITION_QUEUE: dict[str, object] = {
    "queued.min.messages": 100_000,
    "queued.max.messages.kbytes": 16_384,
}

# SPEC schemas by topic name relative to the prefix.
_SCHEMAS = {
    Topics("").gpu: polars_schema(GPU_FIELDS),
    Topics("").asic: polars_schema(ASIC_FIELDS),
    Topics("").prices: polars_schema(PRICE_FIELDS),
    Topics("").workloads: polars_schema(WORKLOAD_FIELDS),
}
DECODERS = ("auto", "polars", "orjson", "json", "frames")


@dataclass
class LimitResult:
    """Events read and decoded, the wall time from assignment to the last end of partition."""

    events: int
    seconds: float
    decoder: str
    value_bytes: int = 0
    bad: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _schema_for(topic: str) -> dict | None:
    for suffix, schema in _SCHEMAS.items():
        if topic.endswith(suffix):
            return schema
    return None


# A decoder takes one topic's values and returns (bad values, events read).
Decoder = Callable[[str, list[bytes]], tuple[int, int]]


def _polars_decoder() -> Decoder:
    def decode(topic: str, values: list[bytes]) -> tuple[int, int]:
        schema = _schema_for(topic)
        try:
            frame = pl.read_ndjson(io.BytesIO(b"\n".join(values)), schema=schema)
        except Exception:
            return _per_value(json.loads, values), len(values)
        if frame.height != len(values):  # an empty value makes no row
            return _per_value(json.loads, values), len(values)
        return 0, len(values)

    return decode


def _frames_decoder() -> Decoder:
    """Telemetry frames (SPEC 1b): each Arrow IPC stream read into one polars frame with no
    checks, as the JSON decoders only parse; JSON values (prices) go through polars."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    json_decode = _polars_decoder()

    def decode(topic: str, values: list[bytes]) -> tuple[int, int]:
        # An Arrow IPC stream starts with the continuation marker; JSON with "{".
        if not values or not values[0].startswith(b"\xff\xff\xff\xff"):
            return json_decode(topic, values)
        samples = bad = 0
        for v in values:
            try:
                table = ipc.open_stream(pa.py_buffer(v)).read_all()
            except pa.ArrowInvalid:
                bad += 1
                continue
            samples += pl.from_arrow(table, rechunk=False).height  # type: ignore[union-attr]
        return bad, samples

    return decode


def _per_value(loads: Callable[[bytes], object], values: list[bytes]) -> int:
    bad = 0
    for v in values:
        try:
            loads(v)
        except ValueError:
            bad += 1
    return bad


def _dict_decoder(name: str) -> Decoder:
    if name == "orjson":
        try:
            import orjson
        except ImportError:
            msg = "decoder 'orjson' needs the orjson package (pip install orjson)"
            raise ConfigError(msg) from None
        loads = orjson.loads
    else:
        loads = json.loads

    def decode(_topic: str, values: list[bytes]) -> tuple[int, int]:
        try:
            for v in values:
                loads(v)
        except ValueError:
            return _per_value(loads, values), len(values)
        return 0, len(values)

    return decode


def measure_limit(
    bootstrap: str,
    topics: Sequence[str],
    *,
    decoder: str = "auto",
    config: dict[str, object] | None = None,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 30.0,
    per_partition: bool = True,
) -> LimitResult:
    """Read and decode every message of ``topics`` once; return the count and the rate.

    ``config`` overrides entries of :data:`LIMIT_CONSUMER_CONFIG` (for tuning runs).
    """
    if decoder not in DECODERS:
        msg = f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}"
        raise ConfigError(msg)
    name = "polars" if decoder == "auto" else decoder
    if name == "frames":
        decode = _frames_decoder()
    else:
        decode = _polars_decoder() if name == "polars" else _dict_decoder(name)
    counts = partition_counts(bootstrap, list(topics))
    missing = [t for t in topics if t not in counts]
    if missing:
        msg = f"topics not found on {bootstrap}: {', '.join(missing)}"
        raise ConfigError(msg)
    conf = {
        **kafka_conf(bootstrap),
        "group.id": f"hcp-limit-{uuid.uuid4().hex}",
        **LIMIT_CONSUMER_CONFIG,
        **(config or {}),
    }
    pending = {(t, p) for t in topics for p in range(counts[t])}
    if per_partition:
        # One consumer per partition, as Bytewax's KafkaSource and HCP's source use: on
        # the embedded broker this reads about twice as fast as one shared consumer, so
        # it is the honest ceiling. Queue sizes match HCP's, to bound memory alike.
        conf.update(PER_PARTITION_QUEUE)
        consumers = [Consumer(conf) for _ in sorted(pending)]
        for c, (t, p) in zip(consumers, sorted(pending), strict=True):
            c.assign([TopicPartition(t, p, OFFSET_BEGINNING)])
    else:
        consumers = [Consumer(conf)]
        consumers[0].assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in sorted(pending)])
    result = LimitResult(0, 0.0, name, per_topic=dict.fromkeys(topics, 0))
    turn = 0
    try:
        start = time.monotonic()
        idle_deadline = start + timeout_s
        while pending:
            turn += 1
            consumer = consumers[turn % len(consumers)]
            msgs = consumer.consume(batch, 0 if per_partition else 0.5)
            if not msgs and per_partition and turn % len(consumers):
                continue
            if not msgs:
                if per_partition:
                    time.sleep(0.001)
                if time.monotonic() > idle_deadline:
                    msg = f"no end of {len(pending)} partitions within {timeout_s} s"
                    raise HcpError(msg)
                continue
            idle_deadline = time.monotonic() + timeout_s
            ok, eofs = split_fetch(msgs, "limit consumer")
            pending.difference_update((m.topic(), m.partition()) for m in eofs)
            if not ok:
                continue
            # Column-wise comprehensions: far cheaper than a Python loop body per message.
            names = [m.topic() for m in ok]
            values_all = [m.value() or b"" for m in ok]
            if names.count(names[0]) == len(names):
                by_topic = {names[0]: values_all}
            else:
                by_topic = {
                    t: [v for n, v in zip(names, values_all, strict=True) if n == t]
                    for t in set(names)
                }
            for topic, values in by_topic.items():
                bad, events = decode(topic, values)
                result.bad += bad
                result.per_topic[topic] += events
                result.events += events
                result.value_bytes += sum(map(len, values))
            if progress:
                progress(len(ok))
        result.seconds = time.monotonic() - start
    finally:
        for c in consumers:
            c.close()
    log.info(
        "limit: %d events in %.2f s = %.0f events/s (decoder %s)",
        result.events,
        result.seconds,
        result.events_per_s,
        name,
    )
    return result
