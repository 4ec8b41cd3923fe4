"""The job as a Bytewax cluster of processes: the same output as one process.

Each run is real ``hcp run`` processes against the session's broker, writing to its own
Redis prefix and its own PostgreSQL database; the dumps are compared whole (every Redis
hash, set and stream entry with its id; every table's rows as text).
"""

from __future__ import annotations

import random
import signal
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from hcp.topics import Topics
from sinks.postgres.schema import apply_migrations
from tests.conftest import PG_ADMIN_DSN
from tests.support.cleanup import delete_prefixes
from tests.support.clusterkit import (
    finish,
    fresh_database,
    generate_fleet,
    job_env,
    member_pids,
    pg_dump,
    redis_dump,
    run_job,
    start_job,
    wait_for,
)
from tests.support.netns import NetnsPair, netns_unavailable


@pytest.fixture(scope="module")
def fleet_topics(bootstrap: str) -> Topics:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    generate_fleet(bootstrap, topics)
    return topics


@pytest.fixture(scope="module")
def reference(bootstrap: str, fleet_topics: Topics, redis_url: str) -> tuple[dict, dict]:
    """What one uninterrupted single-process ``--once`` run writes."""
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    with fresh_database() as dsn:
        run_job(job_env(bootstrap, fleet_topics, redis_url, prefix, dsn), "--once")
        dumps = redis_dump(redis_url, prefix), pg_dump(dsn)
    _drop(redis_url, prefix)
    return dumps


def _drop(url: str, prefix: str) -> None:
    delete_prefixes(url, prefix)


def test_two_processes_write_byte_identical_output(
    bootstrap: str, fleet_topics: Topics, redis_url: str, redis_prefix: str,
    reference: tuple[dict, dict],
) -> None:
    want_redis, want_pg = reference
    # The data exercises the per-site stage: a power cap binds on one site for a while.
    assert any(e[1]["reason"] == "power_cap" for e in want_redis["recommendations"])
    assert len(want_redis["recommendations"]) == len(want_pg["recommendations"]) > 500
    with fresh_database() as dsn:
        out = run_job(job_env(bootstrap, fleet_topics, redis_url, redis_prefix, dsn),
                      "--once", "--processes", "2", "--workers", "2")
        got_pg = pg_dump(dsn)
    assert "process 1 of a 2-process cluster" in out
    got_redis = redis_dump(redis_url, redis_prefix)
    assert got_redis == want_redis
    assert got_pg == want_pg


def test_one_then_two_then_one_process_across_restarts(
    bootstrap: str, fleet_topics: Topics, redis_url: str, redis_prefix: str,
    reference: tuple[dict, dict], tmp_path: Path,
) -> None:
    """Stopped (SIGTERM) mid-stream twice, resumed with another process count each time."""
    want_redis, want_pg = reference
    recovery = tmp_path / "recovery"
    client = redis.Redis.from_url(redis_url)
    stream = f"{redis_prefix}recommendations"
    with fresh_database() as dsn:
        env = job_env(bootstrap, fleet_topics, redis_url, redis_prefix, dsn)
        common = ("--recovery-dir", str(recovery), "--snapshot-interval-s", "0.5",
                  "--recovery-partitions", "4")
        seen = 0
        for processes in ("1", "2"):
            # Streaming (no --once): stop it once it has written more windows.
            job = start_job(env, "--processes", processes, *common)
            wait_for(lambda n=seen: client.xlen(stream) > n, timeout=90)
            if processes == "2":
                wait_for(lambda j=job: len(member_pids(j.pid)) == 2, timeout=30)
            job.send_signal(signal.SIGTERM)
            code, out = finish(job)
            assert code == 0, out[-3000:]
            if seen:
                assert "resuming from recovery directory" in out
            seen = client.xlen(stream)
        assert 0 < seen < len(want_redis["recommendations"])
        run_job(env, "--once", "--processes", "1", *common)
        got_pg = pg_dump(dsn)
    assert redis_dump(redis_url, redis_prefix) == want_redis
    assert got_pg == want_pg


def test_two_processes_in_two_network_namespaces(
    bootstrap: str, fleet_topics: Topics, redis_url: str, redis_prefix: str,
    reference: tuple[dict, dict],
) -> None:
    """Each member in its own namespace: Bytewax's exchange crosses a veth pair."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"not counted: {reason}")
    want_redis, want_pg = reference
    services = [int(bootstrap.rsplit(":", 1)[1]), urlsplit(redis_url).port or 6379,
                urlsplit(PG_ADMIN_DSN).port or 5432]
    with fresh_database() as dsn, NetnsPair(services) as pair:
        apply_migrations(dsn)  # once, before two members race to it
        env = job_env(bootstrap, fleet_topics, redis_url, redis_prefix, dsn)
        ports = random.sample(range(20_000, 60_000), 2)
        addresses = f"{pair.addr_a}:{ports[0]};{pair.addr_b}:{ports[1]}"
        sent = {ns: pair.tx_bytes(ns) for ns in (pair.a, pair.b)}
        members = [
            start_job(env, "--once", "--process-id", str(i), "--addresses", addresses,
                      wrapper=tuple(pair.exec_prefix(ns)))
            for i, ns in enumerate((pair.a, pair.b))
        ]
        for member in members:
            code, out = finish(member)
            assert code == 0, out[-3000:]
        crossed = {ns: pair.tx_bytes(ns) - sent[ns] for ns in (pair.a, pair.b)}
        got_pg = pg_dump(dsn)
    print(f"bytes sent over the veth pair: {crossed}")
    # Each side sent the other its share of windows, watermarks and progress.
    assert all(n > 10_000 for n in crossed.values()), crossed
    assert redis_dump(redis_url, redis_prefix) == want_redis
    assert got_pg == want_pg
