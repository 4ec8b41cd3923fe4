"""Migrations against the local PostgreSQL: the plain path for real, the Timescale plan as text.

TimescaleDB is not installed on this machine, so its branch is checked two ways: applying
on this server takes the plain path cleanly, and the statement list the Timescale path
would run is asserted (that list is *not* evidence the Timescale SQL runs).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from flows.metering import USAGE_SCHEMA
from hcp import schemas
from sinks.postgres.schema import (
    MIGRATIONS_DIR,
    apply_migrations,
    plan_migrations,
    redact_dsn,
    split_statements,
)
from tests.conftest import PG_PATH

pytestmark = pytest.mark.pg


@pytest.fixture()
def fresh_dsn(pg_dsn: str) -> Iterator[str]:
    """An empty database of its own for one test."""
    name = f"hcp_pgschema_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{pg_dsn.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _timescale_on_server(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return bool(
            conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone()
        )


def _columns(conn: psycopg.Connection, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return {name: dtype for name, dtype in rows}


def _primary_key(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def _catalog_snapshot(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT c.relname, c.relkind, c.oid::bigint FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
        "ORDER BY c.relname"
    ).fetchall()


_PG_TYPE = {
    "String": "text",
    "Int64": "bigint",
    "Float64": "double precision",
    "Boolean": "boolean",
}


def _expected_columns(schema: dict, time_columns: set[str]) -> dict[str, str]:
    out = {}
    for name, dtype in schema.items():
        if name == "v":
            continue
        out[name] = "timestamp with time zone" if name in time_columns else _PG_TYPE[str(dtype)]
    return out


@pytest.mark.plain_pg
def test_plain_path_creates_every_table_view_and_brin_index(fresh_dsn: str) -> None:
    if _timescale_on_server(fresh_dsn):
        pytest.fail("this test expects a server without timescaledb (the plain path)")
    assert apply_migrations(fresh_dsn) == PG_PATH
    with psycopg.connect(fresh_dsn) as conn:
        kinds = dict(
            conn.execute(
                "SELECT relname, relkind::text FROM pg_class WHERE relname = ANY(%s)",
                (
                    [
                        "gpu_metrics",
                        "asic_metrics",
                        "market_prices",
                        "device_windows",
                        "recommendations",
                        "workload_events",
                        "site_hourly_profit",
                        "device_compliance",
                        "site_compliance",
                    ],
                ),
            ).fetchall()
        )
        brin = dict(
            conn.execute(
                "SELECT t.relname, a.attname FROM pg_index i "
                "JOIN pg_class ix ON ix.oid = i.indexrelid JOIN pg_am am ON am.oid = ix.relam "
                "JOIN pg_class t ON t.oid = i.indrelid "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0] "
                "WHERE am.amname = 'brin'"
            ).fetchall()
        )
        versions = conn.execute(
            "SELECT version, name, path FROM schema_migrations ORDER BY version"
        ).fetchall()
        ext = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert kinds == {
        "gpu_metrics": "r",
        "asic_metrics": "r",
        "market_prices": "r",
        "device_windows": "r",
        "recommendations": "r",
        "workload_events": "r",
        "site_hourly_profit": "v",
        "device_compliance": "r",
        "site_compliance": "r",
    }
    assert brin == {
        "gpu_metrics": "ts",
        "asic_metrics": "ts",
        "market_prices": "ts",
        "device_windows": "window_start",
        "recommendations": "window_end",
        "workload_events": "ts",
        "device_compliance": "window_end",
        "site_compliance": "window_end",
        "usage_minutes": "minute",
    }
    assert versions == [
        (1, "tables", "common"),
        (2, "time_layout", "postgres"),
        (3, "write_marks", "common"),
        (4, "control_loop", "common"),
        (5, "api_keys", "common"),
        (6, "control_loop_time_layout", "postgres"),
        (7, "customers", "postgres"),
        (8, "command_results", "common"),
    ]
    assert ext is None  # the Timescale branch was skipped, not half-run


def test_tables_follow_the_message_and_output_contracts(fresh_dsn: str) -> None:
    apply_migrations(fresh_dsn)
    expected = {
        "gpu_metrics": (
            _expected_columns(schemas.polars_schema(schemas.GPU_FIELDS), {"ts"}),
            ["gpu_id", "ts"],
        ),
        "asic_metrics": (
            _expected_columns(schemas.polars_schema(schemas.ASIC_FIELDS), {"ts"}),
            ["asic_id", "ts"],
        ),
        "market_prices": (
            _expected_columns(schemas.PRICE_ROW_SCHEMA, {"ts"}),
            ["key", "ts"],
        ),
        "device_windows": (
            _expected_columns(schemas.WINDOW_SCHEMA, {"window_start", "window_end"}),
            ["device_id", "window_start"],
        ),
        "recommendations": (
            _expected_columns(schemas.REC_SCHEMA, {"window_start", "window_end"}),
            ["device_id", "window_end"],
        ),
        "workload_events": (
            _expected_columns(schemas.WORKLOAD_EVENT_SCHEMA, {"ts"}),
            ["workload_id", "ts", "to_state"],
        ),
        "usage_minutes": (
            _expected_columns(USAGE_SCHEMA, {"minute"}),
            ["workload_id", "minute"],
        ),
        "command_results": (
            _expected_columns(
                schemas.polars_schema(schemas.COMMAND_RESULT_FIELDS), {"ts", "command_ts"}
            ),
            ["device_id", "command_position", "ts"],
        ),
    }
    with psycopg.connect(fresh_dsn) as conn:
        for table, (columns, key) in expected.items():
            assert _columns(conn, table) == columns, table
            assert _primary_key(conn, table) == key, table


def test_applying_twice_is_a_no_op(fresh_dsn: str) -> None:
    apply_migrations(fresh_dsn)
    with psycopg.connect(fresh_dsn) as conn:
        before = _catalog_snapshot(conn)
        applied = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
    assert apply_migrations(fresh_dsn) == PG_PATH
    with psycopg.connect(fresh_dsn) as conn:
        assert _catalog_snapshot(conn) == before  # same objects, same oids: nothing recreated
        assert conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall() == (
            applied
        )


def test_concurrent_appliers_apply_each_version_once(fresh_dsn: str) -> None:
    results: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        try:
            results.append(apply_migrations(fresh_dsn))
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert results == [PG_PATH] * 4
    with psycopg.connect(fresh_dsn) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    on_disk = sorted({int(f.name[:4]) for f in MIGRATIONS_DIR.glob("*.sql")})
    assert [r[0] for r in rows] == on_disk


def _statements(timescale: bool) -> list[str]:
    return [s for m in plan_migrations(timescale) for s in m.statements]


def test_timescale_plan_builds_hypertables_policies_and_continuous_aggregate() -> None:
    """The statement list the Timescale path would run (not run here: no extension)."""
    stmts = _statements(timescale=True)
    text = "\n".join(stmts)
    hypertables = dict(re.findall(r"create_hypertable\('(\w+)', by_range\('(\w+)'", text))
    assert hypertables == {
        "gpu_metrics": "ts",
        "asic_metrics": "ts",
        "market_prices": "ts",
        "device_windows": "window_start",
        "recommendations": "window_end",
        "workload_events": "ts",
        "device_compliance": "window_end",
        "site_compliance": "window_end",
        "usage_minutes": "minute",
    }
    compression = dict(
        re.findall(r"add_compression_policy\('(\w+)', compress_after => INTERVAL '([^']+)'", text)
    )
    assert compression == dict.fromkeys(hypertables, "7 days")
    retention = dict(
        re.findall(r"add_retention_policy\('(\w+)', drop_after => INTERVAL '([^']+)'", text)
    )
    assert retention == {
        "gpu_metrics": "30 days",
        "asic_metrics": "30 days",
        "market_prices": "30 days",
        "device_windows": "90 days",
        "recommendations": "90 days",
        "workload_events": "90 days",
        "site_hourly_profit": "90 days",
        "device_compliance": "90 days",
        "site_compliance": "90 days",
    }
    keys = {
        "gpu_metrics": {"gpu_id", "ts"},
        "asic_metrics": {"asic_id", "ts"},
        "market_prices": {"key", "ts"},
        "device_windows": {"device_id", "window_start"},
        "recommendations": {"device_id", "window_end"},
        "workload_events": {"workload_id", "ts", "to_state"},
        "device_compliance": {"device_id", "window_end"},
        "site_compliance": {"site", "window_end"},
        "usage_minutes": {"workload_id", "minute"},
    }
    for table, key in keys.items():
        found = re.search(
            rf"ALTER TABLE {table} SET \(timescaledb\.compress, "
            r"timescaledb\.compress_segmentby = '([^']+)', "
            r"timescaledb\.compress_orderby = '([^']+)'\)",
            text,
        )
        assert found, table
        # Compressed chunks can only enforce a primary key these columns cover.
        covered = {c.split()[0] for part in found.groups() for c in part.split(",")}
        assert key <= covered, table
    cagg = [s for s in stmts if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(cagg) == 1
    assert "timescaledb.continuous" in cagg[0]
    assert "time_bucket(INTERVAL '1 hour', window_end)" in cagg[0]
    assert cagg[0].rstrip().endswith("WITH NO DATA")  # runs inside the version's transaction
    assert "add_continuous_aggregate_policy('site_hourly_profit'" in text
    assert "brin" not in text.lower()
    # The table definitions are shared by both paths.
    assert stmts[:7] == _statements(timescale=False)[:7]


def test_plain_plan_has_no_timescale_calls_and_the_same_rollup_columns() -> None:
    plain = _statements(timescale=False)
    text = "\n".join(plain)
    for fn in (
        "create_hypertable",
        "add_compression_policy",
        "add_retention_policy",
        "time_bucket",
        "timescaledb",
    ):
        assert fn not in text
    assert sum("USING brin" in s for s in plain) == 9  # 6 of 0002, 2 of 0006, 1 of 0007

    def rollup_columns(stmts: list[str]) -> list[str]:
        view = next(s for s in stmts if "VIEW" in s and "site_hourly_profit" in s)
        select_list = view.split("SELECT", 1)[1].split("FROM recommendations", 1)[0]
        return [item.split()[-1] for item in select_list.split(",\n")]

    assert rollup_columns(plain) == rollup_columns(_statements(timescale=True))
    assert rollup_columns(plain) == [
        "bucket",
        "site",
        "windows",
        "device_hours",
        "revenue_usd",
        "cost_usd",
        "net_usd",
    ]


def test_split_statements_drops_comments_and_keeps_multiline_statements() -> None:
    sql = "-- a comment; with a semicolon\nCREATE TABLE a (\n  x int -- note\n);\n\nSELECT 1;\n"
    assert split_statements(sql) == ["CREATE TABLE a (\n  x int -- note\n)", "SELECT 1"]


def test_redact_dsn_never_shows_the_password() -> None:
    assert redact_dsn("postgresql://hcp:s3cret@db.example:5433/hcp") == (
        "postgresql://hcp@db.example:5433/hcp"
    )
    assert "s3cret" not in redact_dsn("host=db password=s3cret dbname=hcp")
