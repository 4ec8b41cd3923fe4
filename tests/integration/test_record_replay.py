"""Record / replay round trips and the limit consumer, against the real embedded broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
from confluent_kafka import Producer

from hcp.errors import ConfigError
from hcp.topics import Topics
from tools.bench.limit import measure_limit
from tools.record.recording import create_topics, read_manifest, record, replay


def _produce(bootstrap: str, rows: list[tuple[str, int, bytes, bytes, int | None]]) -> None:
    """Produce (topic, partition, key, value, timestamp) rows and check every delivery."""
    failures: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            failures.append(err.str())

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "max.in.flight.requests.per.connection": 1, "on_delivery": on_delivery})
    for topic, part, key, value, ts in rows:
        if ts is None:
            producer.produce(topic, value, key, part)
        else:
            producer.produce(topic, value, key, part, timestamp=ts)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert failures == []


def _contents(directory: Path) -> dict[tuple[str, int], list[tuple[bytes, bytes]]]:
    """(topic suffix, partition) -> [(key, value)] in offset order, from a recording."""
    prefix, recorded = read_manifest(directory)
    out: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
    for r in recorded:
        frame = pl.read_parquet(directory / r.file).sort(["partition", "offset"])
        for (part,), group in frame.group_by(["partition"], maintain_order=True):
            out[(r.topic[len(prefix):], part)] = list(zip(group["key"], group["value"],
                                                          strict=True))
    return out


def _telemetry_rows(topics: Topics, n: int) -> list[tuple[str, int, bytes, bytes, None]]:
    rows = []
    for i in range(n):
        dev = i % 97
        topic, id_field = (topics.gpu, "gpu_id") if i % 3 else (topics.asic, "asic_id")
        value = json.dumps({"v": 1, "ts": 1_700_000_000_000 + i, id_field: f"d{dev}", "seq": i})
        rows.append((topic, dev % 4, f"d{dev}".encode(), value.encode(), None))
    return rows


def test_record_then_replay_to_fresh_prefix_is_identical(bootstrap: str, tmp_path: Path) -> None:
    src = Topics(prefix=f"src{time.time_ns()}.")
    create_topics(bootstrap, {src.gpu: 4, src.asic: 4})
    rows = _telemetry_rows(src, 20_000)
    # A null key and an empty value survive the round trip too.
    rows.append((src.gpu, 2, None, b"", None))
    _produce(bootstrap, rows)

    first = tmp_path / "first"
    recorded = record(bootstrap, [src.gpu, src.asic], first, prefix=src.prefix)
    assert sum(r.messages for r in recorded) == len(rows)

    dst = Topics(prefix=f"dst{time.time_ns()}.")
    stats = replay(bootstrap, first, prefix=dst.prefix, speed=float("inf"))
    assert stats.messages == len(rows)
    assert set(stats.per_topic) == {dst.gpu, dst.asic}

    second = tmp_path / "second"
    record(bootstrap, [dst.gpu, dst.asic], second, prefix=dst.prefix)
    before, after = _contents(first), _contents(second)
    assert after == before
    # Per partition, the producer's order is kept: seq rises within each key's partition.
    for (_topic, _part), msgs in after.items():
        seqs = [json.loads(v)["seq"] for _k, v in msgs if v]
        assert seqs == sorted(seqs)


def test_replay_paces_by_speed(bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    create_topics(bootstrap, {topics.prices: 2})
    base = int(time.time() * 1000) - 60_000
    span_ms = 2_000
    rows = [
        (topics.prices, i % 2, b"btc_usd", json.dumps({"i": i}).encode(), base + i * span_ms // 199)
        for i in range(200)
    ]
    _produce(bootstrap, rows)
    rec_dir = tmp_path / "rec"
    record(bootstrap, [topics.prices], rec_dir, prefix=topics.prefix)

    dst = Topics(prefix=f"pace{time.time_ns()}.")
    stats = replay(bootstrap, rec_dir, prefix=dst.prefix, speed=4.0, keep_timestamps=True)
    assert stats.recorded_span_s == pytest.approx(span_ms / 1000, abs=0.02)
    expected = span_ms / 1000 / 4.0
    assert expected * 0.9 <= stats.seconds <= expected + 0.5, stats.seconds

    fast = Topics(prefix=f"fast{time.time_ns()}.")
    quick = replay(bootstrap, rec_dir, prefix=fast.prefix, speed=float("inf"))
    assert quick.seconds < expected
    # Timestamps were kept on request, so a re-recording has the same pace.
    again = tmp_path / "again"
    (r,) = record(bootstrap, [dst.prices], again, prefix=dst.prefix)
    assert (r.first_timestamp_ms, r.last_timestamp_ms) == (base, base + span_ms)


def test_replay_rejects_unknown_topic_and_missing_recording(bootstrap: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        replay(bootstrap, tmp_path / "nothing-here", speed=1.0)


def test_limit_counts_exactly_the_events_produced(bootstrap: str, topics: Topics) -> None:
    create_topics(bootstrap, {topics.gpu: 4, topics.asic: 4})
    rows = _telemetry_rows(topics, 30_000)
    _produce(bootstrap, rows)
    result = measure_limit(bootstrap, [topics.gpu, topics.asic])
    assert result.events == len(rows)
    assert result.events_per_s > 0
    assert result.per_topic == {
        topics.gpu: sum(1 for r in rows if r[0] == topics.gpu),
        topics.asic: sum(1 for r in rows if r[0] == topics.asic),
    }
