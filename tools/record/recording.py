"""Record Kafka topics to Parquet files and replay them at the original pace.

A recording is a directory with one Parquet file per topic and a ``manifest.json``; the
format is documented in ``docs/replay.md``. Recording reads every partition from its
beginning to its end, where the end is found with ``enable.partition.eof`` (Tansu's
ListOffsets is unreliable, see :mod:`hcp.kafka_admin`). Replay sends every message back to
the same partition number, in offset order within a partition, so per-key order holds, and
paces them by their recorded timestamps divided by a speed factor.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)

from hcp.errors import ConfigError, HcpError
from hcp.kafka_admin import ensure_topics, partition_counts, split_fetch
from hcp.kafka_config import kafka_conf

__all__ = [
    "FORMAT",
    "RECORD_SCHEMA",
    "CheckedProducer",
    "RecordedTopic",
    "ReplayStats",
    "check_files",
    "create_topics",
    "prepare_out_dir",
    "read_manifest",
    "record",
    "replay",
]

log = logging.getLogger(__name__)

FORMAT = "hcp-recording"
FORMAT_VERSION = 2
# Version 1 recordings (no headers column) still replay: their messages had no headers.
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"

# Column order and types of every recording file.
RECORD_SCHEMA: dict[str, pl.DataType] = {
    "partition": pl.Int32(),
    "offset": pl.Int64(),
    "timestamp_ms": pl.Int64(),
    "key": pl.Binary(),
    "value": pl.Binary(),
    # Message headers in order, null when there were none (e.g. a frame's content-type).
    "headers": pl.List(pl.Struct({"name": pl.String(), "value": pl.Binary()})),
}

# Rows buffered before they become one Parquet row group; bounds memory while recording.
_CHUNK_ROWS = 250_000
ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class RecordedTopic:
    """One topic of a recording, as listed in its manifest."""

    topic: str
    file: str
    partitions: int
    messages: int
    per_partition: dict[int, int]
    first_timestamp_ms: int | None
    last_timestamp_ms: int | None


@dataclass
class ReplayStats:
    """What a replay sent: messages per destination topic and the wall time it took."""

    messages: int = 0
    seconds: float = 0.0
    recorded_span_s: float = 0.0
    per_topic: dict[str, int] = field(default_factory=dict)

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def _reader_config(bootstrap: str) -> dict[str, object]:
    return {
        **kafka_conf(bootstrap),
        "group.id": f"hcp-record-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        # Big, eager fetches: the recorder is a bulk reader, not a latency-sensitive one.
        "fetch.wait.max.ms": 1,
        "fetch.min.bytes": 1,
        "queued.min.messages": 1_000_000,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
    }


def _flush_chunk(writer: pq.ParquetWriter, cols: dict[str, list]) -> None:
    frame = pl.DataFrame(cols, schema=RECORD_SCHEMA)
    writer.write_table(frame.to_arrow())
    for values in cols.values():
        values.clear()


def _headers(raw: list[list[tuple[str, bytes]] | None]) -> list[list[dict] | None]:
    """Headers as the recording's column wants them; only messages that have some cost."""
    if not any(raw):
        return raw  # type: ignore[return-value]  # all None
    return [[{"name": k, "value": v} for k, v in h] if h else None for h in raw]


def _record_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    path: Path,
    progress: ProgressFn | None,
    timeout_s: float,
) -> RecordedTopic:
    cols: dict[str, list] = {name: [] for name in RECORD_SCHEMA}
    parts, offs, stamps, keys, values, heads = (cols[name] for name in RECORD_SCHEMA)
    per_partition = dict.fromkeys(range(partitions), 0)
    pending = set(per_partition)
    first_ts: int | None = None
    last_ts: int | None = None
    total = 0
    consumer = Consumer(_reader_config(bootstrap))
    schema = pl.DataFrame(schema=RECORD_SCHEMA).to_arrow().schema
    writer = pq.ParquetWriter(path, schema, compression="zstd")
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        idle_deadline = time.monotonic() + timeout_s
        while pending:
            batch = consumer.consume(20_000, 0.5)
            if not batch:
                if time.monotonic() > idle_deadline:
                    msg = f"no end of partitions {sorted(pending)} of {topic} within {timeout_s} s"
                    raise HcpError(msg)
                continue
            idle_deadline = time.monotonic() + timeout_s
            msgs, eofs = split_fetch(batch, f"reading {topic}")
            pending.difference_update(m.partition() for m in eofs)
            # One comprehension per column: much cheaper than five appends per message.
            parts.extend([m.partition() for m in msgs])
            offs.extend([m.offset() for m in msgs])
            stamps.extend([m.timestamp()[1] for m in msgs])
            keys.extend([m.key() for m in msgs])
            values.extend([m.value() for m in msgs])
            heads.extend(_headers([m.headers() for m in msgs]))
            if progress and msgs:
                progress(len(msgs))
            n = len(parts)
            if n >= _CHUNK_ROWS or (not pending and n):
                counts = pl.Series(parts, dtype=pl.Int32).value_counts()
                for p, c in counts.iter_rows():
                    per_partition[p] += c
                lo, hi = min(stamps), max(stamps)
                first_ts = lo if first_ts is None else min(first_ts, lo)
                last_ts = hi if last_ts is None else max(last_ts, hi)
                total += n
                _flush_chunk(writer, cols)
    finally:
        writer.close()
        consumer.close()
    return RecordedTopic(topic, path.name, partitions, total, per_partition, first_ts, last_ts)


def prepare_out_dir(out_dir: Path, overwrite: bool = False) -> None:
    """Make ``out_dir`` ready for a new recording, or refuse with the reason.

    A new recording never shares a directory with old files: a manifest lists only its own
    topics, so a file left from an earlier recording would look like part of it to a reader
    of the directory. An existing recording is replaced only with ``overwrite``, and then
    only its own files (the manifest and the Parquet files) are deleted; a directory holding
    anything else is always refused.
    """
    if out_dir.exists() and not out_dir.is_dir():
        msg = f"--out {out_dir} is a file; give a directory for the recording"
        raise ConfigError(msg)
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
        return
    entries = list(out_dir.iterdir())
    if not entries:
        return
    ours = [p for p in entries if p.is_file() and (p.name == MANIFEST or p.suffix == ".parquet")]
    others = sorted(p.name for p in entries if p not in ours)
    if others:
        msg = (
            f"--out {out_dir} is not empty and holds files that are not a recording's "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); give a new or "
            f"empty directory"
        )
        raise ConfigError(msg)
    if not overwrite:
        msg = (
            f"--out {out_dir} already holds a recording; give a new directory, or "
            f"--overwrite to replace it"
        )
        raise ConfigError(msg)
    # The manifest goes first: an interrupted clean-up leaves no manifest naming lost files.
    for path in sorted(ours, key=lambda p: p.name != MANIFEST):
        path.unlink()
    log.info("removed the previous recording in %s (%d files)", out_dir, len(ours))


def record(
    bootstrap: str,
    topics: Sequence[str],
    out_dir: Path,
    *,
    prefix: str | None = None,
    progress: ProgressFn | None = None,
    timeout_s: float = 30.0,
    overwrite: bool = False,
) -> list[RecordedTopic]:
    """Record every message of ``topics`` into ``out_dir``; return what was written.

    ``prefix`` is the topic prefix the names share (stored so :func:`replay` can map them
    to another prefix). Reading stops at each partition's end as of the moment it is
    reached; messages produced later are not recorded. ``out_dir`` must be new or empty,
    or hold an earlier recording and ``overwrite`` be set (see :func:`prepare_out_dir`).
    """
    counts = partition_counts(bootstrap, list(topics))
    missing = [t for t in topics if t not in counts]
    if missing:
        msg = f"topics not found on {bootstrap}: {', '.join(missing)}"
        raise ConfigError(msg)
    prepare_out_dir(out_dir, overwrite)
    recorded = []
    for topic in topics:
        path = out_dir / f"{topic}.parquet"
        rec = _record_topic(bootstrap, topic, counts[topic], path, progress, timeout_s)
        log.info("recorded %d messages of %s to %s", rec.messages, topic, path)
        recorded.append(rec)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created_at_ms": int(time.time() * 1000),
        "prefix": prefix if prefix and all(t.startswith(prefix) for t in topics) else "",
        "topics": [
            {
                "topic": r.topic,
                "file": r.file,
                "partitions": r.partitions,
                "messages": r.messages,
                "per_partition": {str(p): c for p, c in r.per_partition.items()},
                "first_timestamp_ms": r.first_timestamp_ms,
                "last_timestamp_ms": r.last_timestamp_ms,
            }
            for r in recorded
        ],
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return recorded


def read_manifest(in_dir: Path) -> tuple[str, list[RecordedTopic]]:
    """The recorded prefix and topics of a recording directory."""
    path = in_dir / MANIFEST
    if in_dir.exists() and not in_dir.is_dir():
        msg = f"{in_dir} is a file, not a recording directory (written by `hcp record --out`)"
        raise ConfigError(msg)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        msg = f"{in_dir} is not a recording: {MANIFEST} is missing"
        raise ConfigError(msg) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{path} is not valid JSON: {exc}"
        raise ConfigError(msg) from None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or data.get("version") not in READABLE_VERSIONS
    ):
        msg = f"{path} is not an {FORMAT} v1 or v{FORMAT_VERSION} manifest"
        raise ConfigError(msg)
    topics = [
        RecordedTopic(
            t["topic"],
            t["file"],
            int(t["partitions"]),
            int(t["messages"]),
            {int(p): int(c) for p, c in t["per_partition"].items()},
            t["first_timestamp_ms"],
            t["last_timestamp_ms"],
        )
        for t in data["topics"]
    ]
    return data.get("prefix", ""), topics


def _select(recorded: list[RecordedTopic], prefix: str, wanted: Sequence[str] | None):
    if not wanted:
        return recorded
    by_name = {r.topic: r for r in recorded}
    by_suffix = {r.topic[len(prefix) :]: r for r in recorded if prefix}
    chosen = []
    for name in wanted:
        rec = by_name.get(name) or by_suffix.get(name)
        if rec is None:
            msg = f"topic {name!r} is not in the recording (has: {', '.join(by_name)})"
            raise ConfigError(msg)
        chosen.append(rec)
    return chosen


def check_files(in_dir: Path, chosen: Sequence[RecordedTopic]) -> None:
    """Every chosen topic's Parquet file is there and readable, with the recorded columns.

    Checked before anything is produced, so a damaged recording fails in one line instead of
    halfway through a replay.
    """
    for r in chosen:
        path = in_dir / r.file
        try:
            schema = pq.read_schema(path)
        except FileNotFoundError:
            msg = f"recording {in_dir} is incomplete: {r.file} (topic {r.topic}) is missing"
            raise ConfigError(msg) from None
        except (OSError, pa.ArrowException) as exc:
            msg = f"{path} is not a readable Parquet file: {exc}"
            raise ConfigError(msg) from None
        # `headers` came with format version 2; a version 1 file replays without them.
        absent = [c for c in RECORD_SCHEMA if c not in schema.names and c != "headers"]
        if absent:
            msg = f"{path} lacks the recording columns {', '.join(absent)}"
            raise ConfigError(msg)


def _load(in_dir: Path, chosen: list[RecordedTopic]) -> pl.DataFrame:
    """All chosen messages in replay order, with the index of their topic in ``t``.

    The pace clock of a message is the running maximum of timestamps within its partition,
    so sorting by it never reorders a partition even if producer timestamps went backwards.
    """
    frames = [
        _scan(in_dir / r.file).with_columns(pl.lit(i, pl.Int32).alias("t"))
        for i, r in enumerate(chosen)
    ]
    if not frames:
        return pl.DataFrame(schema={**RECORD_SCHEMA, "t": pl.Int32(), "pace_ms": pl.Int64()})
    return (
        pl.concat(frames)
        .with_columns(pl.col("timestamp_ms").cum_max().over(["t", "partition"]).alias("pace_ms"))
        .sort(["pace_ms", "t", "partition", "offset"])
        .collect()
    )


def _scan(path: Path) -> pl.LazyFrame:
    """One recorded topic in the current column layout (a v1 file gets null headers)."""
    scan = pl.scan_parquet(path)
    if "headers" not in scan.collect_schema():
        scan = scan.with_columns(pl.lit(None, RECORD_SCHEMA["headers"]).alias("headers"))
    return scan


def create_topics(bootstrap: str, wanted: dict[str, int], timeout_s: float = 15.0) -> None:
    """Create the missing topics of ``wanted`` (name -> partitions) and wait until visible."""
    ensure_topics(bootstrap, wanted, timeout_s=timeout_s)


def _producer_config(bootstrap: str) -> dict[str, object]:
    return {
        **kafka_conf(bootstrap),
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # One request in flight per partition keeps per-key order even across retries.
        "max.in.flight.requests.per.connection": 1,
        "message.timeout.ms": 60_000,
    }


class CheckedProducer:
    """A producer that checks every delivery report; :meth:`close` raises unless all succeed.

    Messages go to explicit partitions with one request in flight per connection, so the
    order of a partition is the order of :meth:`produce` calls even across retries.
    """

    def __init__(self, bootstrap: str, config: dict[str, object] | None = None) -> None:
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.first_error: str | None = None
        self._producer = Producer(
            {**_producer_config(bootstrap), **(config or {}), "on_delivery": self._on_delivery}
        )

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is None:
            self.ok += 1
        else:
            self.failed += 1
            if self.first_error is None:
                self.first_error = err.str()

    def produce(
        self,
        topic: str,
        value: bytes | str | None,
        key: bytes | str | None,
        partition: int,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one message, waiting for room when the local queue is full."""
        while True:
            try:
                if headers is not None:
                    self._producer.produce(
                        topic, value, key, partition, headers=headers, timestamp=timestamp_ms or 0
                    )
                elif timestamp_ms is None:
                    self._producer.produce(topic, value, key, partition)
                else:
                    self._producer.produce(topic, value, key, partition, timestamp=timestamp_ms)
                break
            except BufferError:
                self._producer.poll(0.05)
        self.sent += 1

    def poll(self) -> None:
        """Serve delivery reports without blocking."""
        self._producer.poll(0)

    def close(self, timeout_s: float = 120.0) -> int:
        """Wait for every delivery report; return the number sent, or raise HcpError."""
        remaining = self._producer.flush(timeout_s)
        if remaining or self.failed or self.ok != self.sent:
            msg = (
                f"produce incomplete: {self.ok:,} of {self.sent:,} messages delivered, "
                f"{self.failed:,} failed, {remaining:,} still queued"
                + (f" (first error: {self.first_error})" if self.first_error else "")
            )
            raise HcpError(msg)
        return self.sent


def replay(
    bootstrap: str,
    in_dir: Path,
    *,
    prefix: str | None = None,
    speed: float = 1.0,
    topics: Sequence[str] | None = None,
    keep_timestamps: bool = False,
    progress: ProgressFn | None = None,
) -> ReplayStats:
    """Produce a recording back to Kafka at ``speed`` times its recorded pace.

    ``prefix`` replaces the recorded topic prefix (``None`` keeps the recorded names);
    ``speed`` is ``inf`` for as fast as possible. Missing topics are created with the
    recorded partition count; an existing topic with too few partitions is an error.
    Raises :class:`HcpError` unless every message's delivery report is a success.
    """
    if not speed > 0:
        msg = f"speed must be > 0, got {speed}"
        raise ConfigError(msg)
    rec_prefix, recorded = read_manifest(in_dir)
    chosen = _select(recorded, rec_prefix, topics)
    check_files(in_dir, chosen)

    def dest(name: str) -> str:
        if prefix is None or not rec_prefix or not name.startswith(rec_prefix):
            return name
        return prefix + name[len(rec_prefix) :]

    names = [dest(r.topic) for r in chosen]
    needed = {n: max(r.partitions, 1) for n, r in zip(names, chosen, strict=True)}
    existing = partition_counts(bootstrap, names)
    for n, count in needed.items():
        if n in existing and existing[n] < count:
            msg = f"topic {n} has {existing[n]} partitions; the recording needs {count}"
            raise ConfigError(msg)
    create_topics(bootstrap, needed)

    data = _load(in_dir, chosen)
    stats = ReplayStats(per_topic=dict.fromkeys(names, 0))
    if data.height == 0:
        return stats
    base_ms = int(data["pace_ms"][0])
    stats.recorded_span_s = (int(data["pace_ms"][-1]) - base_ms) / 1000.0
    producer = CheckedProducer(bootstrap)
    produce = producer.produce
    paced = math.isfinite(speed)
    start = time.monotonic()
    last_pace = base_ms
    for chunk in data.iter_slices(50_000):
        cols = [
            chunk[c].to_list()
            for c in ("t", "partition", "key", "value", "timestamp_ms", "pace_ms", "headers")
        ]
        for t, part, key, value, ts, pace, heads in zip(*cols, strict=True):
            if paced and pace != last_pace:
                last_pace = pace
                wait = start + (pace - base_ms) / 1000.0 / speed - time.monotonic()
                if wait > 0:
                    producer.poll()
                    time.sleep(wait)
            stamp = ts if keep_timestamps else None
            if heads is None:
                produce(names[t], value, key, part, stamp)
            else:
                produce(names[t], value, key, part, stamp, [(h["name"], h["value"]) for h in heads])
        producer.poll()
        if progress:
            progress(chunk.height)
    sent = producer.close()
    stats.seconds = time.monotonic() - start
    stats.messages = sent
    counts = data.group_by("t").len()
    for t, n in counts.iter_rows():
        stats.per_topic[names[t]] = n
    return stats
