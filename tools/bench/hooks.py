"""The parts of ``hcp bench`` that drive the streaming jobs: HCP and the baseline.

Each runs as a child process on the filled topics (so its wall time and the peak RSS of
its process tree are its own, imports and start-up included) and returns a
:class:`JobRun` with its recommendations, so :func:`same_recommendations` can check that
speed was never bought by doing less. HCP gets a fresh PostgreSQL database and a fresh
Redis prefix, both removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import psycopg
from psycopg import conninfo, sql

from hcp.errors import HcpError
from hcp.redis_client import redis_client
from hcp.topics import Topics
from tools.bench.report import run_measured

__all__ = [
    "BenchContext",
    "JobRun",
    "delete_redis_prefix",
    "fresh_database",
    "read_pg_recommendations",
    "run_baseline",
    "run_hcp",
    "same_recommendations",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchContext:
    """Where the benchmark's data is: filled topics, and fresh Redis / PostgreSQL places."""

    bootstrap: str
    topics: Topics
    events: int  # messages in the input topics, all partitions complete
    redis_url: str
    redis_prefix: str  # fresh per run, e.g. "bench-1a2b3c:"; the hook deletes its keys
    pg_dsn: str  # the server to use; the hook creates and drops its own database on it
    args: argparse.Namespace  # the full `hcp bench` arguments, for extra knobs


@dataclass
class JobRun:
    """One job's pass over the topics: events in, wall seconds, peak RSS, what it decided.

    ``recommendations`` has at least ``device_id``, ``window_start``, ``window_end``,
    ``action`` and ``reason`` (hcp.schemas.REC_SCHEMA names), one row per device window,
    so HCP and the baseline can be compared with :func:`same_recommendations`.
    """

    events: int
    seconds: float
    peak_rss_mb: float | None = None
    recommendations: pl.DataFrame | None = None
    details: dict = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _with_dbname(dsn: str, name: str) -> str:
    params = conninfo.conninfo_to_dict(dsn)
    params["dbname"] = name
    return conninfo.make_conninfo(**params)


@contextlib.contextmanager
def fresh_database(dsn: str, label: str = "bench") -> Iterator[str]:
    """A new, empty database on ``dsn``'s server for the block; dropped afterwards."""
    from sinks.postgres.schema import ensure_database

    name = f"hcp_{label}_{uuid.uuid4().hex[:8]}"
    fresh = _with_dbname(dsn, name)
    try:
        ensure_database(fresh)
    except psycopg.Error as exc:
        msg = f"cannot create database {name} on the --pg server: {exc}".splitlines()[0]
        raise HcpError(msg) from exc
    try:
        yield fresh
    finally:
        try:
            with psycopg.connect(_with_dbname(dsn, "postgres"), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        except psycopg.Error as exc:
            log.warning("could not drop benchmark database %s: %s", name, exc)


def delete_redis_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (never the whole database); returns how many."""

    client = redis_client(redis_url)
    n = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            n += client.unlink(*batch)
            batch.clear()
    if batch:
        n += client.unlink(*batch)
    return n


def read_pg_recommendations(dsn: str) -> pl.DataFrame:
    """The ``recommendations`` table, times as epoch milliseconds like the flow's frames."""
    query = """
        SELECT device_id, device_type, site, model,
               (extract(epoch FROM window_start) * 1000)::bigint AS window_start,
               (extract(epoch FROM window_end) * 1000)::bigint AS window_end,
               action, reason, revenue_usd_hr, cost_usd_hr, net_usd_hr, score,
               expected_net_usd_hr, expected_power_w
        FROM recommendations
    """
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query)
        names = [d.name for d in cur.description]
        rows = cur.fetchall()
    schema = {
        "device_id": pl.String, "device_type": pl.String, "site": pl.String,
        "model": pl.String, "window_start": pl.Int64, "window_end": pl.Int64,
        "action": pl.String, "reason": pl.String,
    }
    return pl.DataFrame(
        rows, schema={n: schema.get(n, pl.Float64) for n in names}, orient="row"
    )


def _job_seconds(stderr: str) -> float | None:
    match = re.search(r"job finished in ([0-9.]+) s", stderr)
    if match is None:  # the --once summary line: "once: ...; 17.4 s"
        match = re.search(r"^once: .*; ([0-9.]+) s\s*$", stderr, re.MULTILINE)
    return float(match.group(1)) if match else None


def run_hcp(ctx: BenchContext) -> JobRun:
    """HCP: ``hcp run --once`` in a child process, every sink on, raw storage off."""
    with fresh_database(ctx.pg_dsn) as dsn, tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "tools", "run", "--once", "--no-raw",
            "--bootstrap", ctx.bootstrap,
            "--topic-prefix", ctx.topics.prefix,
            "--redis", ctx.redis_url,
            "--redis-prefix", ctx.redis_prefix,
            "--pg", dsn,
            "--metrics-port", "0",
        ]
        workers = getattr(ctx.args, "hcp_workers", None)
        if workers:
            cmd += ["--workers", str(workers)]
        err_path = Path(tmp) / "stderr.txt"
        try:
            with err_path.open("w") as err:
                code, seconds, peak_mb = run_measured(cmd, stderr=err)
            stderr = err_path.read_text()
            if code != 0:
                tail = stderr.strip().splitlines()[-5:]
                msg = f"hcp run --once failed with exit code {code}: {' | '.join(tail)}"
                raise HcpError(msg)
            recs = read_pg_recommendations(dsn)
        finally:
            delete_redis_prefix(ctx.redis_url, ctx.redis_prefix)
    return JobRun(
        events=ctx.events,
        seconds=seconds,
        peak_rss_mb=round(peak_mb, 1),
        recommendations=recs,
        details={"command": subprocess.list2cmdline(cmd), "job_seconds": _job_seconds(stderr)},
    )


def run_baseline(ctx: BenchContext) -> JobRun:
    """The idiomatic per-event Bytewax version (tools/bench/baseline/flow.py) in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "recs.parquet"
        stats_path = Path(tmp) / "stats.json"
        cmd = [
            sys.executable, "-m", "tools.bench.baseline.flow",
            "--bootstrap", ctx.bootstrap,
            "--topic-prefix", ctx.topics.prefix,
            "--out", str(out),
            "--stats", str(stats_path),
        ]
        code, seconds, peak_mb = run_measured(cmd)
        if code != 0:
            msg = f"the baseline (python -m tools.bench.baseline.flow) failed with exit code {code}"
            raise HcpError(msg)
        recs = pl.read_parquet(out)
        stats = json.loads(stats_path.read_text())
    return JobRun(events=ctx.events, seconds=seconds, peak_rss_mb=round(peak_mb, 1),
                  recommendations=recs, details=stats)


_COMPARE_KEYS = ["device_id", "window_start"]
_COMPARE_EXACT = ["window_end", "action", "reason"]
_COMPARE_FLOAT = ["revenue_usd_hr", "cost_usd_hr", "net_usd_hr", "score"]


def same_recommendations(a: pl.DataFrame, b: pl.DataFrame, rel_tol: float = 1e-6) -> bool:
    """True when both runs made the same decision for every device window.

    Actions and reasons must match exactly; money columns present in both frames must
    agree within ``rel_tol`` (the two jobs may sum floats in a different order).
    """
    if a.height != b.height:
        return False
    exact = [c for c in _COMPARE_EXACT if c in a.columns and c in b.columns]
    floats = [c for c in _COMPARE_FLOAT if c in a.columns and c in b.columns]
    cols = _COMPARE_KEYS + exact + floats
    left = a.select(cols).sort(_COMPARE_KEYS)
    right = b.select(cols).sort(_COMPARE_KEYS)
    if not left.select(_COMPARE_KEYS + exact).equals(right.select(_COMPARE_KEYS + exact)):
        return False
    x, y = pl.col("x"), pl.col("y")
    close = ((x - y).abs() <= pl.max_horizontal(x.abs(), y.abs()) * rel_tol + 1e-9) | (
        x.is_nan() & y.is_nan()
    )
    for c in floats:
        pair = pl.DataFrame({"x": left[c], "y": right[c]}).cast(pl.Float64)
        ok = pair.select(((x.is_null() == y.is_null()) & close.fill_null(True)).all()).item()
        if not ok:
            return False
    return True
