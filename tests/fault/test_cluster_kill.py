"""SIGKILL one process of a 2-process cluster at random points: nothing lost or doubled.

The supervisor (``hcp run --processes 2``) sees the member die, stops the other and exits
1; the restarted cluster resumes from the recovery directory. After two kills and a final
``--once`` run the Redis keys (stream ids included) and every PostgreSQL row equal those
of an uninterrupted single-process run.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis

from hcp.topics import Topics
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

pytestmark = pytest.mark.fault

SEED = int(os.environ.get("HCP_TEST_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)


def test_sigkill_one_cluster_process_then_restart(
    bootstrap: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    print(f"HCP_TEST_SEED={SEED}")  # to replay the same kill points
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    generate_fleet(bootstrap, topics, seed=11)
    ref_prefix = f"t{uuid.uuid4().hex[:10]}:"
    with fresh_database() as dsn:
        run_job(job_env(bootstrap, topics, redis_url, ref_prefix, dsn), "--once")
        want_redis, want_pg = redis_dump(redis_url, ref_prefix), pg_dump(dsn)
    client = redis.Redis.from_url(redis_url)
    client.delete(*client.scan_iter(f"{ref_prefix}*", count=10_000))
    total = len(want_redis["recommendations"])

    stream = f"{redis_prefix}recommendations"
    common = ("--processes", "2", "--recovery-dir", str(tmp_path / "recovery"),
              "--snapshot-interval-s", "0.3", "--recovery-partitions", "4")
    killed = []
    with fresh_database() as dsn:
        env = job_env(bootstrap, topics, redis_url, redis_prefix, dsn)
        for _ in range(2):
            job = start_job(env, *common)
            wait_for(lambda j=job: len(member_pids(j.pid)) == 2, timeout=30)
            # Somewhere between "the cluster is up" and "well into the output".
            before = client.xlen(stream)
            target = before + rng.randrange(1, max(2, (total - before) // 3))
            wait_for(lambda t=target: client.xlen(stream) >= t, timeout=90, step=0.02)
            time.sleep(rng.uniform(0, 0.5))
            victim = rng.choice(member_pids(job.pid))
            os.kill(victim, signal.SIGKILL)
            killed.append(client.xlen(stream))
            code, out = finish(job)
            assert code == 1, out[-3000:]
            assert "stopped the whole cluster" in out
        print(f"SIGKILLed a member at stream lengths {killed} of {total}")
        assert all(0 < k < total for k in killed), killed
        run_job(env, "--once", *common)
        got_pg = pg_dump(dsn)
    got_redis = redis_dump(redis_url, redis_prefix)
    entries = got_redis["recommendations"]
    assert len({e[0] for e in entries}) == len(entries) == total  # 0 duplicated, 0 lost
    assert got_redis == want_redis
    assert got_pg == want_pg
