"""What only a real TimescaleDB shows: hypertables, replays into compressed chunks, and the
continuous aggregate equal to a direct sum. Runs in `make test`'s TimescaleDB pass
(`-m pg` against deploy/timescaledb.sh's cluster); the plain pass deselects it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal

from sinks.postgres.schema import PATH_TIMESCALE, apply_migrations
from sinks.postgres.writer import PgWriter
from tests.conftest import new_database
from tests.integration.test_pg_sink import expected, random_frame, read_back

pytestmark = [pytest.mark.pg, pytest.mark.timescaledb]

TIME_TABLES = ("gpu_metrics", "asic_metrics", "market_prices", "device_windows",
               "recommendations", "workload_events", "device_compliance", "site_compliance",
               "usage_minutes")


@pytest.fixture()
def db() -> Iterator[str]:
    with new_database("tsdb") as dsn:
        assert apply_migrations(dsn) == PATH_TIMESCALE
        yield dsn


def test_every_time_table_is_a_compressed_hypertable_with_the_aggregate(db: str) -> None:
    with psycopg.connect(db) as conn:
        version = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        hyper = {r[0]: r[1] for r in conn.execute(
            "SELECT hypertable_name, compression_enabled "
            "FROM timescaledb_information.hypertables")}
        caggs = [r[0] for r in conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates")]
    assert version == ("2.17.2",)
    assert set(TIME_TABLES) <= set(hyper)
    assert all(hyper[t] for t in TIME_TABLES)
    assert caggs == ["site_hourly_profit"]


def _compress_all(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('{table}') c"
        ).fetchall()
        n = conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = %s AND is_compressed", (table,)).fetchone()[0]
    assert n == len(rows)
    return n


@pytest.mark.parametrize("table", ["device_windows", "recommendations", "gpu_metrics"])
def test_a_replay_into_compressed_chunks_changes_nothing_and_an_update_lands(
    db: str, table: str
) -> None:
    frame = random_frame(table, 400, seed=11)
    with psycopg.connect(db, autocommit=True) as conn:
        PgWriter(conn).write({table: frame})
    assert _compress_all(db, table) >= 1
    with psycopg.connect(db, autocommit=True) as conn:
        PgWriter(conn).write({table: frame})  # the replay: same keys, same rows
    assert_frame_equal(read_back(db, table), expected(table, frame).select(
        read_back(db, table).columns), check_exact=True)
    if table == "recommendations":  # a changed row for a compressed window is upserted
        changed = frame.with_columns(pl.lit("curtail").alias("action"))
        with psycopg.connect(db, autocommit=True) as conn:
            PgWriter(conn).write({table: changed})
        got = read_back(db, table)
        assert got.height == 400 and set(got["action"].to_list()) == {"curtail"}


def test_the_continuous_aggregate_equals_the_direct_sum(db: str) -> None:
    rng = np.random.default_rng(5)
    n = 2_000
    start = 1_767_225_600_000 + rng.integers(0, 48, n) * 3_600_000 + rng.integers(0, 59, n) * 60_000
    recs = random_frame("recommendations", n, seed=3).with_columns(
        pl.Series("window_start", start, dtype=pl.Int64),
        pl.Series("window_end", start + 60_000, dtype=pl.Int64),
        pl.Series("site", [f"site-{i % 4}" for i in range(n)]),
        pl.Series("revenue_usd_hr", rng.uniform(0, 10, n)),
        pl.Series("cost_usd_hr", rng.uniform(0, 8, n)),
        pl.Series("net_usd_hr", rng.uniform(-5, 5, n)),
    ).unique(subset=["device_id", "window_end"])
    with psycopg.connect(db, autocommit=True) as conn:
        PgWriter(conn).write({"recommendations": recs})
        conn.execute("CALL refresh_continuous_aggregate('site_hourly_profit', NULL, NULL)")
        cagg = conn.execute(
            "SELECT bucket, site, windows, round(net_usd::numeric, 9), "
            "round(revenue_usd::numeric, 9) FROM site_hourly_profit ORDER BY 1, 2").fetchall()
        direct = conn.execute(
            "SELECT time_bucket(INTERVAL '1 hour', window_end), site, count(*), "
            "round(sum(net_usd_hr * EXTRACT(EPOCH FROM (window_end - window_start))::float8 "
            "/ 3600)::numeric, 9), "
            "round(sum(revenue_usd_hr * EXTRACT(EPOCH FROM (window_end - window_start))::float8 "
            "/ 3600)::numeric, 9) "
            "FROM recommendations GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    assert len(cagg) > 100
    assert cagg == direct
