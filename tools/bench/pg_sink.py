"""Measure history ingest: rows/s for raw ASIC rows and for window rows into PostgreSQL.

Run: ``.venv/bin/python -m tools.bench.pg_sink [--rows 300000] [--batch 50000] [--format csv]``.
It creates a throwaway database next to ``--admin-dsn``, applies the migrations, writes
synthetic rows through :class:`~sinks.postgres.writer.PgWriter` in batches (one transaction
each, exactly as the job does), writes the same rows again (a replay: every row hits
ON CONFLICT and is skipped as unchanged), and drops the database. New windows take the
writer's fast path (a plain COPY into the table) unless ``--upsert-only``.
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
import polars as pl
import psycopg

from sinks.postgres.schema import apply_migrations
from sinks.postgres.writer import PgWriter

__all__ = ["asic_rows", "main", "measure", "window_rows"]

_T0 = 1_764_000_000_000  # a fixed epoch-ms start keeps runs comparable


def asic_rows(n: int, devices: int = 1_000, seed: int = 0) -> pl.DataFrame:
    """``n`` decoded ASIC messages (ASIC_FIELDS columns): ``devices`` ASICs at 1 Hz."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    return pl.DataFrame(
        {
            "v": np.ones(n, dtype=np.int64),
            "ts": _T0 + (idx // devices) * 1_000,
            "asic_id": [f"asic-{i:06d}" for i in idx % devices],
            "site": [f"site-{i % 4}" for i in idx % devices],
            "model": "S21",
            "state": "mining",
            "hashrate_ths": rng.normal(200, 5, n),
            "power_w": rng.normal(3_500, 50, n),
            "temp_c": rng.normal(65, 3, n),
            "shares_accepted": rng.integers(0, 20, n),
            "shares_rejected": rng.integers(0, 2, n),
            "hw_errors": rng.integers(0, 2, n),
        }
    )


def window_rows(n: int, devices: int = 1_000, seed: int = 1) -> pl.DataFrame:
    """``n`` ASIC window rows (WINDOW_SCHEMA): ``devices`` ASICs, 60 s windows."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    start = _T0 + (idx // devices) * 60_000
    hashrate = rng.normal(200, 5, n)
    power = rng.normal(3_500, 50, n)
    return pl.DataFrame(
        {
            "device_id": [f"asic-{i:06d}" for i in idx % devices],
            "device_type": "asic",
            "site": [f"site-{i % 4}" for i in idx % devices],
            "model": "S21",
            "window_start": start,
            "window_end": start + 60_000,
            "samples": np.full(n, 60, dtype=np.int64),
            "util_pct": pl.Series([None] * n, dtype=pl.Float64),
            "power_w": power,
            "temp_c": rng.normal(65, 3, n),
            "hashrate_ths": hashrate,
            "shares_accepted": rng.integers(500, 900, n),
            "shares_rejected": rng.integers(0, 10, n),
            "hw_errors": rng.integers(0, 5, n),
            "busy_fraction": pl.Series([None] * n, dtype=pl.Float64),
            "j_per_th": power / hashrate,
            "reject_rate": rng.uniform(0, 0.01, n),
        }
    )


def measure(writer: PgWriter, table: str, frame: pl.DataFrame, batch: int) -> float:
    """Rows/s writing ``frame`` into ``table`` in transactions of ``batch`` rows."""
    started = time.perf_counter()
    for offset in range(0, frame.height, batch):
        writer.write({table: frame.slice(offset, batch)})
    return frame.height / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.pg_sink", description=__doc__)
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--format", choices=("csv", "binary"), default="csv")
    parser.add_argument("--upsert-only", action="store_true",
                        help="no fast path: new windows go through the staging upsert too")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs, each on a fresh database (a loaded machine is noisy)")
    args = parser.parse_args(argv)
    for _ in range(args.repeat):
        _run_once(args)
    return 0


def _run_once(args: argparse.Namespace) -> None:
    name = f"hcp_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{args.admin_dsn.rsplit('/', 1)[0]}/{name}"
    try:
        path = apply_migrations(dsn)
        asics, windows = asic_rows(args.rows), window_rows(args.rows)
        with psycopg.connect(dsn, autocommit=True) as conn:
            writer = PgWriter(conn, copy_format=args.format, fast_path=not args.upsert_only)
            results = [
                ("asic_metrics (raw)", "asic_metrics", asics),
                ("device_windows", "device_windows", windows),
            ]
            print(f"path={path} rows={args.rows} batch={args.batch} format={args.format} "
                  f"fast_path={not args.upsert_only}")
            for label, table, frame in results:
                first = measure(writer, table, frame, args.batch)
                again = measure(writer, table, frame, args.batch)
                count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                print(
                    f"{label:20s} insert {first:10,.0f} rows/s   replay {again:10,.0f} rows/s"
                    f"   rows in table {count[0] if count else 0:,}"
                )
    finally:
        with psycopg.connect(args.admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    raise SystemExit(main())
