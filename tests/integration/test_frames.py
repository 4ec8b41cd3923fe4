"""Telemetry frames (SPEC 1b) end to end: the same samples as frames or JSON give the same
windows and recommendations; bad frames and bad rows are dead-lettered exactly once."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from generators.run import generate
from generators.simulation import SimConfig
from hcp.frames import encode_frame, frame_schema
from hcp.topics import Topics
from tests.support.faultkit import Fleet, fleet_messages
from tests.support.flowkit import T0, gpu_msg, make_topics, price_msg, produce, run_once
from tests.support.framekit import (
    FIELDS,
    produce_frames,
    produce_json,
    read_dead_letters,
    samples_frame,
    site_frames,
)
from tools.record.recording import record, replay

KEY = ["window_start", "device_id"]


def _same(a: pl.DataFrame, b: pl.DataFrame, key: list[str]) -> None:
    assert a.height > 0
    assert a.sort(key).equals(b.sort(key).select(a.columns))


def test_frames_and_json_give_identical_windows_and_recommendations(
    bootstrap: str, topics: Topics
) -> None:
    asics, gpus, prices = fleet_messages(Fleet(asics=60, gpus=30, minutes=4))
    json_topics = Topics(prefix=topics.prefix + "json.")
    make_topics(bootstrap, json_topics)
    produce_json(bootstrap, json_topics.asic, asics, "asic_id")
    produce_json(bootstrap, json_topics.gpu, gpus, "gpu_id")
    produce_json(bootstrap, json_topics.prices, prices, "kind")
    # site-01 and site-02 send frames, site-03 JSON, on the same topics. A frame holds one
    # 10 s step of a site (20 ASICs, 10 GPUs), so frames of a partition stay in time order.
    make_topics(bootstrap, topics)
    for kind, msgs in (("asic", asics), ("gpu", gpus)):
        items = site_frames(kind, msgs, 10, json_sites=("site-03",))
        assert {framed for _, _, framed in items} == {True, False}
        produce_frames(bootstrap, getattr(topics, kind), items)
    produce_json(bootstrap, topics.prices, prices, "kind")

    by_json = run_once(bootstrap, json_topics, lateness_s=5)
    by_frames = run_once(bootstrap, topics, lateness_s=5)
    _same(by_json.frame("windows"), by_frames.frame("windows"), ["window_start", "device_id"])
    _same(by_json.frame("recs"), by_frames.frame("recs"), KEY)
    assert by_frames.frame("recs").height == 4 * 90
    assert by_frames.frame("dlq").height == 0


def test_generate_frames_gives_the_json_runs_recommendations(bootstrap: str) -> None:
    """`hcp generate --encoding frames` acts as the site collectors: same samples, same
    results (workload requests and prices stay JSON)."""
    runs = {}
    for encoding in ("json", "frames"):
        topics = Topics(prefix=f"gen{encoding}{T0 % 997}.{id(runs)}.")
        config = SimConfig(gpus=40, asics=80, sites=3, duration_s=150, encoding=encoding)
        summary = generate(config, bootstrap, topics, speed=math.inf, partitions=4)
        assert summary.counts[topics.gpu] == 40 * 150 and summary.counts[topics.asic] == 80 * 150
        runs[encoding] = run_once(bootstrap, topics, lateness_s=5)
    _same(runs["json"].frame("recs"), runs["frames"].frame("recs"), KEY)
    _same(runs["json"].frame("windows"), runs["frames"].frame("windows"), KEY)


def _counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_bad_frames_and_bad_rows_are_dead_lettered_exactly_once_across_restarts(
    bootstrap: str, topics: Topics
) -> None:
    make_topics(bootstrap, topics)
    gpus = [
        gpu_msg(f"gpu-{i}", T0 + s * 1000, "site-01") for s in range(0, 120, 10) for i in range(3)
    ]
    good = site_frames("gpu", gpus, 12)
    rows = samples_frame("gpu", [gpu_msg(f"gpu-{i}", T0 + 125_000, "site-01") for i in range(5)])
    rows = rows.with_columns(
        pl.Series("util_pct", [50.0, 250.0, 50.0, 50.0, 50.0]),
        pl.Series("state", ["busy", "busy", "busy", "asleep", "busy"]),
    )
    with_bad_rows = encode_frame(rows, frame_schema(FIELDS["gpu"]))
    schema = frame_schema(FIELDS["gpu"])
    no_site = encode_frame(rows.drop("site"), schema.remove(schema.get_field_index("site")))
    key = b"site-01"
    where = produce_frames(
        bootstrap,
        topics.gpu,
        [
            *good,
            (key, b"not an arrow stream", True),
            (key, with_bad_rows, True),
            (key, no_site, True),
        ],
    )
    produce(
        bootstrap, topics.prices, [price_msg("gpu_spot_usd_hr", 2.0, T0, model="H100-SXM")], "kind"
    )
    part, bad_rows_offset = where[len(good) + 1]
    # A crash after the junk frame's and the first bad row's dead letters were written,
    # before the second bad row's: what the DLQ sink finds on start.
    p = Producer({"bootstrap.servers": bootstrap})
    for offset, row, reason, value in (
        (where[len(good)][1], None, b"bad_frame", b"not an arrow stream"),
        (bad_rows_offset, b"1", b"out_of_range:util_pct", b"{}"),
    ):
        headers = [
            ("hcp.source.topic", topics.gpu.encode()),
            ("hcp.source.partition", str(part).encode()),
            ("hcp.source.offset", str(offset).encode()),
            ("hcp.reason", reason),
        ]
        p.produce(
            topics.dlq, value, key, headers=headers + ([("hcp.source.row", row)] if row else [])
        )
    assert p.flush(10) == 0
    before = _counter("hcp_bad_input_total", topic=topics.gpu, reason="bad_frame")

    out = run_once(bootstrap, topics, lateness_s=5)
    run_once(bootstrap, topics, lateness_s=5)  # a restart from the beginning: no new letters

    windows = out.frame("windows").sort(KEY)
    last = windows.filter(pl.col("window_start") == T0 + 120_000)
    # The good rows of the frame with bad rows; nothing of the two bad frames.
    assert last["device_id"].to_list() == ["gpu-0", "gpu-2", "gpu-4"]
    assert last["samples"].to_list() == [1, 1, 1]
    assert windows["samples"].sum() == len(gpus) + 3
    dead = read_dead_letters(bootstrap, topics.dlq)
    seen = sorted(
        (int(d["hcp.source.offset"]), d.get("hcp.source.row"), d["hcp.reason"]) for d in dead
    )
    assert seen == sorted(
        [
            (where[len(good)][1], None, "bad_frame"),
            (bad_rows_offset, "1", "out_of_range:util_pct"),
            (bad_rows_offset, "3", "out_of_range:state"),
            (where[len(good) + 2][1], None, "bad_frame"),
        ]
    )
    by_row = {d.get("hcp.source.row"): d for d in dead if "hcp.source.row" in d}
    row3 = json.loads(by_row["3"]["value"])
    assert row3["gpu_id"] == "gpu-3" and row3["state"] == "asleep" and row3["v"] == 1
    # Counted on every read (two runs), written once.
    assert _counter("hcp_bad_input_total", topic=topics.gpu, reason="bad_frame") - before == 4


def test_record_and_replay_keep_frame_headers(
    bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    config = SimConfig(gpus=30, asics=30, sites=2, duration_s=90, encoding="frames")
    generate(config, bootstrap, topics, speed=math.inf, partitions=4)
    record(bootstrap, topics.inputs(), tmp_path, prefix=topics.prefix)
    frame_rows = pl.read_parquet(tmp_path / f"{topics.gpu}.parquet")
    assert frame_rows["headers"].null_count() == 0
    assert pl.read_parquet(tmp_path / f"{topics.prices}.parquet")["headers"].null_count() > 0
    again = Topics(prefix=topics.prefix + "again.")
    replay(bootstrap, tmp_path, prefix=again.prefix, speed=math.inf)
    original = run_once(bootstrap, topics, lateness_s=5)
    replayed = run_once(bootstrap, again, lateness_s=5)
    _same(original.frame("recs"), replayed.frame("recs"), KEY)
    assert replayed.frame("dlq").height == 0
