"""Crash recovery: SIGKILL `hcp run --once --recovery-dir` again and again, then compare.

The job runs as a subprocess over pre-filled topics and is killed at random points of the
three kinds that matter (before its first snapshot, mid-epoch, right after a snapshot),
then restarted with the same recovery directory until a run exits 0. The final Redis keys
(hashes, the recommendation stream with its entry ids, summaries, prices) and every
PostgreSQL table must equal those of one uninterrupted run of the same topics into another
key prefix and database: rows lost 0, duplicated 0. Set HCP_FAULT_SEED to replay a
schedule of kills.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from bytewax.recovery import init_db_dir
from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.recovery import INITIALISING, MANIFEST, prepare_recovery_dir
from flows.settings import JobSettings
from hcp.topics import Topics
from tests.support.cleanup import delete_prefixes
from tests.support.faultkit import (
    KILL_MODES,
    Fleet,
    Job,
    compare,
    fill_topics,
    job_args,
    kill_at,
    pg_state,
    record_figures,
    redis_state,
    scratch_databases,
)
from tests.support.flowkit import make_topics

pytestmark = pytest.mark.fault

FLEET = Fleet(asics=300, gpus=150, minutes=6)
INTERVAL_S = 0.3
BATCH = 20
BAD = [b"not json", b"[1, 2]", b'{"v": 1}', b'{"v": 9, "ts": 1}', b"\xff\xfe", b'{"v": 1, "ts"']
SEED = int(os.environ.get("HCP_FAULT_SEED", str(time.time_ns() % 1_000_000)))


class World:
    """Pre-filled topics and databases: reference, kills, worker change, mismatch, SIGTERM."""

    def __init__(self, bootstrap: str, redis_url: str, dsns: list[str], tmp: Path) -> None:
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.dsns = dsns
        self.tmp = tmp
        self.topics = Topics(prefix=f"f{uuid.uuid4().hex[:10]}.")
        self.events = fill_topics(bootstrap, self.topics, FLEET, bad=BAD)
        self.prefixes: list[str] = []
        self._reference: tuple[dict, dict] | None = None

    def prefix(self) -> str:
        p = f"f{uuid.uuid4().hex[:10]}:"
        self.prefixes.append(p)
        return p

    def args(self, prefix: str, dsn: str, *extra: str) -> list[str]:
        return job_args(
            self.bootstrap, self.topics, self.redis_url, prefix, dsn, *extra, batch_size=BATCH
        )

    def reference(self) -> tuple[dict, dict]:
        """One uninterrupted run without recovery: the state every other run must reach."""
        if self._reference is None:
            prefix = self.prefix()
            job = Job(self.args(prefix, self.dsns[0]), self.tmp / "reference.log").start()
            assert job.wait(300) == 0, job.output()[-3000:]
            self._reference = (redis_state(self.redis_url, prefix), pg_state(self.dsns[0]))
        return self._reference


@pytest.fixture(scope="module")
def world(
    bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with scratch_databases(5) as dsns:
        w = World(bootstrap, redis_url, dsns, tmp_path_factory.mktemp("recovery"))
        yield w
        delete_prefixes(redis_url, *w.prefixes)


def crash_until_done(
    world: World,
    rec_dir: Path,
    prefix: str,
    dsn: str,
    plan: list[tuple[str, list[str]]],
    final: list[str],
    rng: random.Random,
    log: Path,
) -> Counter:
    """Run with each plan entry's extra args and kill it as planned; then run to the end."""
    kills: Counter = Counter()
    for mode, extra in plan:
        args = world.args(prefix, dsn, "--recovery-dir", str(rec_dir),
                          "--snapshot-interval-s", str(INTERVAL_S), *extra)
        job = Job(args, log).start()
        kind = kill_at(job, rec_dir, mode, rng, INTERVAL_S)
        if kind is None:
            assert job.proc is not None and job.proc.returncode == 0, job.output()[-3000:]
            return kills  # finished before this kill: no more to do
        kills[kind] += 1
    args = world.args(prefix, dsn, "--recovery-dir", str(rec_dir),
                      "--snapshot-interval-s", str(INTERVAL_S), *final)
    job = Job(args, log).start()
    rc = job.wait(300)
    assert rc == 0, job.output()[-3000:]
    assert "resuming from recovery directory" in job.output()
    return kills


def dlq_offsets(bootstrap: str, topics: Topics) -> Counter:
    """(source topic, partition, offset, reason) of every dead letter, with multiplicity."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
        "enable.partition.eof": True, "enable.auto.commit": False,
    })
    meta = consumer.list_topics(topics.dlq, timeout=10).topics[topics.dlq]
    consumer.assign([TopicPartition(topics.dlq, p, 0) for p in meta.partitions])
    out: Counter = Counter()
    pending = set(meta.partitions)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for m in consumer.consume(10_000, 0.5):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                continue
            h = {k: v.decode() for k, v in m.headers()}
            out[(h["hcp.source.topic"], int(h["hcp.source.partition"]),
                 int(h["hcp.source.offset"]), h["hcp.reason"])] += 1
    consumer.close()
    return out


def test_sigkill_at_random_points_then_resume_equals_one_uninterrupted_run(
    world: World, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED)
    plan = [m for m in KILL_MODES for _ in range(3)] + ["mid_epoch", "after_snapshot"]
    rng.shuffle(plan)
    rec_dir = world.tmp / "rec-kills"
    prefix = world.prefix()
    started = time.monotonic()
    kills = crash_until_done(
        world, rec_dir, prefix, world.dsns[1], [(m, []) for m in plan], [], rng,
        world.tmp / "kills.log",
    )
    elapsed = time.monotonic() - started
    # Dead letters first: the reference run below would find them already written.
    dead = dlq_offsets(world.bootstrap, world.topics)
    ref_redis, ref_pg = world.reference()
    diff = compare(ref_redis, redis_state(world.redis_url, prefix), ref_pg,
                   pg_state(world.dsns[1]))
    record_figures(request.config, "recovery_kills", {
        "seed": SEED, "events": world.events, "kills_survived": sum(kills.values()),
        "kills_by_kind": dict(kills), "rows_compared": diff.compared, "rows_lost": diff.lost,
        "rows_duplicated": diff.duplicated, "rows_changed": diff.changed,
        "dead_letters_sent": len(BAD), "dead_letters_written": sum(dead.values()),
        "dead_letters_repeated": sum(n - 1 for n in dead.values()), "seconds": round(elapsed, 1),
    })
    assert diff.ok, diff.detail[:20]
    # 11 are planned; a much faster machine may finish the input before the last few.
    assert sum(kills.values()) >= 6, f"the job finished after only {dict(kills)} kills"
    assert set(kills) >= {"before_first_snapshot", "after_snapshot", "mid_epoch"}, kills
    assert sum(dead.values()) == len(BAD) and max(dead.values()) == 1, dead
    assert ref_redis["recommendations"], "the reference run wrote no recommendations"


def test_resume_with_another_worker_count_equals_one_uninterrupted_run(
    world: World, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED + 1)
    rec_dir = world.tmp / "rec-workers"
    prefix = world.prefix()
    plan = [("after_snapshot", ["--workers", "1"]), ("mid_epoch", ["--workers", "2"]),
            ("after_snapshot", ["--workers", "1"])]
    kills = crash_until_done(world, rec_dir, prefix, world.dsns[2], plan, ["--workers", "2"],
                             rng, world.tmp / "workers.log")
    ref_redis, ref_pg = world.reference()
    diff = compare(ref_redis, redis_state(world.redis_url, prefix), ref_pg,
                   pg_state(world.dsns[2]))
    record_figures(request.config, "recovery_worker_change", {
        "seed": SEED + 1, "kills_survived": sum(kills.values()), "workers": "1->2->1->2",
        "rows_compared": diff.compared, "rows_lost": diff.lost,
        "rows_duplicated": diff.duplicated, "rows_changed": diff.changed,
    })
    assert diff.ok, diff.detail[:20]
    assert sum(kills.values()) >= 2, kills


def test_a_recovery_dir_of_other_topics_is_refused_with_what_to_do(world: World) -> None:
    rec_dir = world.tmp / "rec-mismatch"
    prefix = world.prefix()
    args = world.args(prefix, world.dsns[3], "--recovery-dir", str(rec_dir),
                      "--snapshot-interval-s", str(INTERVAL_S))
    job = Job(args, world.tmp / "mismatch.log").start()
    assert kill_at(job, rec_dir, "after_snapshot", random.Random(SEED), INTERVAL_S) is not None
    other = Topics(prefix=f"g{uuid.uuid4().hex[:10]}.")
    make_topics(world.bootstrap, other)
    args = job_args(world.bootstrap, other, world.redis_url, prefix, world.dsns[3],
                    "--recovery-dir", str(rec_dir))
    job = Job(args, world.tmp / "mismatch.log").start()
    assert job.wait(120) == 1
    out = job.output()
    assert "Traceback" not in out
    assert f"recovery directory {rec_dir} belongs to another job" in out
    assert "empty --recovery-dir" in out


def test_sigterm_mid_run_then_resume_equals_one_uninterrupted_run(
    world: World, request: pytest.FixtureRequest
) -> None:
    """A graceful stop of a --once run must not close its windows early (nor lose input)."""
    rec_dir = world.tmp / "rec-sigterm"
    prefix = world.prefix()
    stops = 0
    for _ in range(2):
        args = world.args(prefix, world.dsns[4], "--recovery-dir", str(rec_dir),
                          "--snapshot-interval-s", str(INTERVAL_S))
        job = Job(args, world.tmp / "sigterm.log").start()
        # Stop mid-run: once this run has added recommendations, with windows still open.
        client = redis.Redis.from_url(world.redis_url)
        seen = client.xlen(f"{prefix}recommendations")
        while job.alive() and client.xlen(f"{prefix}recommendations") <= seen:
            time.sleep(0.01)
        client.close()
        if not job.alive():
            break
        job.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert job.wait(60) == 0, job.output()[-3000:]
        stops += 1
    args = world.args(prefix, world.dsns[4], "--recovery-dir", str(rec_dir),
                      "--snapshot-interval-s", str(INTERVAL_S))
    job = Job(args, world.tmp / "sigterm.log").start()
    assert job.wait(300) == 0, job.output()[-3000:]
    ref_redis, ref_pg = world.reference()
    diff = compare(ref_redis, redis_state(world.redis_url, prefix), ref_pg,
                   pg_state(world.dsns[4]))
    record_figures(request.config, "recovery_sigterm", {
        "graceful_stops": stops, "rows_compared": diff.compared, "rows_lost": diff.lost,
        "rows_duplicated": diff.duplicated, "rows_changed": diff.changed,
    })
    assert stops >= 1
    assert diff.ok, diff.detail[:20]


def test_a_start_killed_while_creating_the_recovery_dir_is_redone(tmp_path: Path) -> None:
    """A SIGKILL between creating the partitions and writing the manifest is not fatal."""
    rec_dir = tmp_path / "rec"
    settings = JobSettings(recovery_dir=rec_dir, topic_prefix="x.")
    parts = {"x.telemetry.gpu": 4, "x.telemetry.asic": 4, "x.market.prices": 4}
    rec_dir.mkdir()
    (rec_dir / INITIALISING).touch()
    init_db_dir(rec_dir, 2)  # as far as the killed start got: partitions, no manifest
    (rec_dir / f"{MANIFEST}.tmp").write_text('{"form')
    prepare_recovery_dir(settings, parts, 8)
    assert len(list(rec_dir.glob("part-*.sqlite3"))) == 8
    assert not (rec_dir / INITIALISING).exists()
    assert json.loads((rec_dir / MANIFEST).read_text())["topics"]["x.telemetry.gpu"] == 4
    prepare_recovery_dir(settings, parts, 8)  # and it resumes from it afterwards
