"""Crash recovery with telemetry frames: SIGKILL `hcp run --once --recovery-dir` while it
reads Arrow frames (a frame's rows share one Kafka offset), then compare with one
uninterrupted run: rows lost 0, duplicated 0; bad frames and bad rows dead-lettered once."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from hcp.frames import encode_frame, frame_schema
from hcp.topics import Topics
from tests.support.cleanup import delete_prefixes
from tests.support.faultkit import (
    Fleet,
    Job,
    compare,
    fleet_messages,
    job_args,
    kill_at,
    pg_state,
    redis_state,
    scratch_databases,
)
from tests.support.flowkit import T0, gpu_msg, make_topics
from tests.support.framekit import FIELDS, produce_frames, produce_json, samples_frame, site_frames

pytestmark = pytest.mark.fault

FLEET = Fleet(asics=150, gpus=60, minutes=5)
INTERVAL_S = 0.3
SEED = int(os.environ.get("HCP_FAULT_SEED", str(time.time_ns() % 1_000_000)))


def fill(bootstrap: str, topics: Topics) -> int:
    """Frames of one 10 s step per site, then a junk frame and a frame with two bad rows."""
    make_topics(bootstrap, topics)
    asics, gpus, prices = fleet_messages(FLEET)
    produce_frames(bootstrap, topics.asic, site_frames("asic", asics, FLEET.asics // 3))
    produce_frames(bootstrap, topics.gpu, site_frames("gpu", gpus, FLEET.gpus // 3))
    produce_json(bootstrap, topics.prices, prices, "kind")
    end = T0 + FLEET.minutes * 60_000
    rows = samples_frame("gpu", [gpu_msg(f"gpu-{i:04d}", end - 500, "site-01") for i in range(4)])
    rows = rows.with_columns(pl.Series("util_pct", [50.0, -1.0, 50.0, 101.0]))
    bad = [
        (b"site-01", b"\xff\xff\xff\xff garbage", True),
        (b"site-01", encode_frame(rows, frame_schema(FIELDS["gpu"])), True),
    ]
    produce_frames(bootstrap, topics.gpu, bad)
    return 3  # dead letters expected: one frame, two rows


def dead_letters(bootstrap: str, topic: str) -> Counter:
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
        "enable.partition.eof": True, "enable.auto.commit": False,
    })
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out: Counter = Counter()
    pending = set(meta.partitions)
    while pending:
        for m in consumer.consume(10_000, 0.5):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                continue
            h = {k: v.decode() for k, v in m.headers()}
            out[(int(h["hcp.source.partition"]), int(h["hcp.source.offset"]),
                 h.get("hcp.source.row"), h["hcp.reason"])] += 1
    consumer.close()
    return out


def test_sigkill_while_reading_frames_then_resume_equals_one_uninterrupted_run(
    bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    topics = Topics(prefix=f"ff{uuid.uuid4().hex[:10]}.")
    expected_dead = fill(bootstrap, topics)
    prefixes = [f"ff{uuid.uuid4().hex[:10]}:" for _ in range(2)]
    log = tmp_path / "frames.log"
    with scratch_databases(2) as dsns:
        try:
            rec_dir = tmp_path / "rec"

            def args(*extra: str) -> list[str]:
                return job_args(bootstrap, topics, redis_url, prefixes[1], dsns[1],
                                "--recovery-dir", str(rec_dir),
                                "--snapshot-interval-s", str(INTERVAL_S), *extra, batch_size=2)

            kills: Counter = Counter()
            for mode in ("after_snapshot", "mid_epoch", "after_snapshot", "mid_epoch"):
                job = Job(args(), log).start()
                kind = kill_at(job, rec_dir, mode, rng, INTERVAL_S)
                if kind is None:
                    break
                kills[kind] += 1
            job = Job(args(), log).start()
            assert job.wait(300) == 0, job.output()[-3000:]
            # Dead letters before the reference run (which finds them written).
            dead = dead_letters(bootstrap, topics.dlq)
            ref = Job(job_args(bootstrap, topics, redis_url, prefixes[0], dsns[0], batch_size=2),
                      log).start()
            assert ref.wait(300) == 0, ref.output()[-3000:]
            diff = compare(redis_state(redis_url, prefixes[0]), redis_state(redis_url, prefixes[1]),
                           pg_state(dsns[0]), pg_state(dsns[1]))
            assert diff.ok, diff.detail[:20]
            assert sum(kills.values()) >= 2, f"seed {SEED}: only {dict(kills)} kills"
            assert sum(dead.values()) == expected_dead and max(dead.values()) == 1, dead
            assert {(row, reason) for _, _, row, reason in dead} == {
                (None, "bad_frame"),
                ("1", "out_of_range:util_pct"),
                ("3", "out_of_range:util_pct"),
            }
        finally:
            delete_prefixes(redis_url, *prefixes)
