"""Helpers for cross-process tests: run `hcp run` as real processes, dump what they wrote.

Every run writes to its own Redis key prefix and its own PostgreSQL database, so two runs
over the same topics can be compared byte for byte: Redis hashes, sets and stream entries
(ids included) and every PostgreSQL table, as text.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import redis

from generators.run import generate
from generators.scenario import load_scenario
from generators.simulation import SimConfig
from hcp.topics import Topics
from tests.conftest import new_database

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ROOT = Path(__file__).resolve().parents[2]


def generate_fleet(bootstrap: str, topics: Topics, duration_s: int = 600, seed: int = 5) -> None:
    """Four sites, one of them power-capped for a while (the demo scenario), 4 partitions."""
    sites = [f"site-{i:02d}" for i in range(1, 5)]
    config = SimConfig(
        seed=seed, gpus=16, asics=60, sites=4, start_ms=START, duration_s=duration_s,
        scenario=load_scenario("demo", START, sites),
    )
    generate(config, bootstrap, topics, partitions=4)


def fresh_database() -> contextlib.AbstractContextManager[str]:
    """A new, uniquely named PostgreSQL database, dropped afterwards."""
    return new_database("cluster")


def job_env(bootstrap: str, topics: Topics, redis_url: str, prefix: str, dsn: str) -> dict:
    env = dict(os.environ)
    env.update(
        HCP_KAFKA_BOOTSTRAP=bootstrap,
        HCP_TOPIC_PREFIX=topics.prefix,
        HCP_REDIS_URL=redis_url,
        HCP_REDIS_PREFIX=prefix,
        HCP_PG_DSN=dsn,
        HCP_METRICS_PORT="0",
        HCP_LATENESS_S="0",
        HCP_IDLE_TIMEOUT_S="2",
        PYTHONPATH=str(ROOT),
    )
    return env


def start_job(
    env: dict, *args: str, wrapper: tuple[str, ...] = (), **popen: object
) -> subprocess.Popen:
    """``hcp run ARGS`` as a child process (its own session, so a test can signal it).

    ``wrapper`` goes before the command, e.g. ``ip netns exec NS``.
    """
    return subprocess.Popen(
        [*wrapper, sys.executable, "-m", "tools", "run", *args], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, **popen,  # type: ignore[arg-type]
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    """Wait for ``proc``; its exit code and output."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"hcp run did not finish in {timeout} s:\n{out[-3000:]}") from None
    return proc.returncode, out


def run_job(env: dict, *args: str, timeout: float = 120) -> str:
    code, out = finish(start_job(env, *args), timeout)
    assert code == 0, out[-3000:]
    return out


def member_pids(supervisor: int) -> list[int]:
    """The cluster members started by the ``hcp run --processes`` with pid ``supervisor``."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    with contextlib.suppress(OSError):
        return [int(p) for p in children.read_text().split()]
    return []


def wait_for(predicate: object, timeout: float = 60, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(step)
    raise AssertionError("condition not met in time")


def redis_dump(url: str, prefix: str) -> dict[str, object]:
    """Every key under ``prefix`` (prefix removed) with its whole content."""
    from sinks.redis.snapshot import decode_snapshot

    client = redis.Redis.from_url(url, decode_responses=True)
    raw = redis.Redis.from_url(url)  # the Arrow snapshots are binary: compared as rows
    out: dict[str, object] = {}
    for key in client.scan_iter(f"{prefix}*", count=10_000):
        kind = client.type(key)
        name = key[len(prefix):]
        if kind == "hash":
            out[name] = client.hgetall(key)
        elif kind == "stream":
            out[name] = client.xrange(key)
        elif kind == "set":
            out[name] = sorted(client.smembers(key))
        elif name.startswith("snapshot:site:"):
            out[name] = tuple(decode_snapshot(raw.get(key)).rows())
        else:
            out[name] = client.get(key)
    return out


def pg_dump(dsn: str) -> dict[str, list[tuple]]:
    """Every table of the public schema, rows as text, sorted."""
    out: dict[str, list[tuple]] = {}
    with psycopg.connect(dsn) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
        )]
        for table in tables:
            if "migration" in table:
                continue
            if table == "audit_log":
                # When (wall clock) and in what order (serial id) the job wrote an entry are
                # not what it decided; who, what and which command are.
                rows = conn.execute("SELECT (actor, action, target, request_id, detail)::text "
                                    "FROM audit_log").fetchall()
            else:
                rows = conn.execute(f'SELECT t::text FROM "{table}" t').fetchall()
            out[table] = sorted(rows)
    return out
