"""What TimescaleDB buys HCP's history: bytes on disk and the hourly profit query.

``python -m tools.bench.timescaledb [--devices N --windows W]`` writes the same
recommendations (N devices x W one-minute windows, seeded) through HCP's PostgreSQL writer
into a fresh database on the plain server and one on TimescaleDB, compresses the
TimescaleDB chunks, and prints per server the table's bytes, the per-site hourly profit
query straight from ``recommendations`` and, on TimescaleDB, the same answer from the
``site_hourly_profit`` continuous aggregate (median of 5 runs each, same process).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import polars as pl
import psycopg

from sinks.postgres.schema import apply_migrations
from sinks.postgres.writer import PgWriter

DIRECT = (
    "SELECT time_bucket_ms, site, count(*), sum(net_usd_hr / 60.0) FROM ("
    "SELECT date_trunc('hour', window_end) AS time_bucket_ms, site, net_usd_hr "
    "FROM recommendations) r GROUP BY 1, 2 ORDER BY 1, 2"
)
CAGG = "SELECT bucket, site, windows, net_usd FROM site_hourly_profit ORDER BY 1, 2"
T0 = 1_767_225_600_000


def _frame(devices: int, windows: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = devices * windows
    start = T0 + np.repeat(np.arange(windows, dtype=np.int64) * 60_000, devices)
    dev = np.tile(np.arange(devices), windows)
    rev = rng.uniform(0, 10, n).round(4)
    cost = rng.uniform(0, 8, n).round(4)
    return pl.DataFrame({
        "v": 1,
        "device_id": [f"asic-{d:06d}" for d in dev],
        "device_type": "asic",
        "site": [f"site-{d % 8:02d}" for d in dev],
        "model": "S21",
        "window_start": start,
        "window_end": start + 60_000,
        "action": np.where(rev > cost, "mine", "curtail"),
        "reason": np.where(rev > cost, "profitable", "unprofitable"),
        "revenue_usd_hr": rev,
        "cost_usd_hr": cost,
        "net_usd_hr": (rev - cost).round(4),
        "score": ((rev - cost) / np.maximum(rev, 1e-9) * 100).round(2),
    })


def _timed(conn: psycopg.Connection, query: str, runs: int = 5) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        rows = len(conn.execute(query).fetchall())
        times.append(time.perf_counter() - t)
    return statistics.median(times), rows


def _measure(admin_dsn: str, frame: pl.DataFrame, timescale: bool) -> dict:
    name = f"hcp_tsbench_{int(time.time() * 1000) % 10**9}"
    base = admin_dsn.rsplit("/", 1)[0]
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{base}/{name}"
    try:
        path = apply_migrations(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            t = time.perf_counter()
            for part in frame.iter_slices(100_000):
                PgWriter(conn).write({"recommendations": part})
            write_s = time.perf_counter() - t
            out = {"server": admin_dsn, "path": path, "rows": frame.height,
                   "write_s": round(write_s, 2)}
            if timescale:
                out["bytes_before_compression"] = conn.execute(
                    "SELECT hypertable_size('recommendations')").fetchone()[0]
                conn.execute("SELECT compress_chunk(c, if_not_compressed => true) "
                             "FROM show_chunks('recommendations') c")
                out["bytes"] = conn.execute(
                    "SELECT hypertable_size('recommendations')").fetchone()[0]
                conn.execute("CALL refresh_continuous_aggregate('site_hourly_profit', NULL, NULL)")
                out["cagg_query_s"], out["cagg_rows"] = _timed(conn, CAGG)
            else:
                out["bytes"] = conn.execute(
                    "SELECT pg_total_relation_size('recommendations')").fetchone()[0]
            out["direct_query_s"], out["direct_rows"] = _timed(conn, DIRECT)
        return out
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.timescaledb", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=20_000)
    p.add_argument("--windows", type=int, default=120, help="one-minute windows per device")
    p.add_argument("--plain", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="admin DSN of the plain PostgreSQL server")
    p.add_argument("--timescaledb", default="postgresql://postgres@127.0.0.1:5433/postgres",
                   help="admin DSN of the TimescaleDB server (make timescaledb)")
    args = p.parse_args(argv)
    frame = _frame(args.devices, args.windows)
    print(f"{frame.height:,} recommendations ({args.devices:,} devices x {args.windows} "
          "windows)", file=sys.stderr)
    plain = _measure(args.plain, frame, timescale=False)
    tsdb = _measure(args.timescaledb, frame, timescale=True)
    for r in (plain, tsdb):
        print(r)
    print(f"bytes: plain {plain['bytes'] / 2**20:,.1f} MB, TimescaleDB compressed "
          f"{tsdb['bytes'] / 2**20:,.1f} MB ({plain['bytes'] / tsdb['bytes']:.1f}x smaller; "
          f"{tsdb['bytes_before_compression'] / 2**20:,.1f} MB before compression)")
    print(f"hourly profit per site: direct on plain {plain['direct_query_s'] * 1000:,.1f} ms, "
          f"direct on TimescaleDB (compressed) {tsdb['direct_query_s'] * 1000:,.1f} ms, "
          f"continuous aggregate {tsdb['cagg_query_s'] * 1000:,.2f} ms "
          f"({plain['direct_query_s'] / tsdb['cagg_query_s']:,.0f}x faster than direct on "
          "plain)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
