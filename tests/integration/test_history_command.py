"""``hcp history`` and ``hcp db init`` against the local PostgreSQL."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest

from hcp.errors import ConfigError, SinkUnavailableError
from sinks.postgres.schema import SchemaMissingError
from sinks.postgres.writer import PgWriter
from tests.conftest import PG_PATH
from tools.commands import db as db_command
from tools.commands import history as history_command

pytestmark = pytest.mark.pg

HOUR = 3_600_000
END = 1_764_000_000_000 // HOUR * HOUR  # newest window end in the data


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hcp")
    sub = parser.add_subparsers(dest="command", required=True)
    db_command.register(sub)
    history_command.register(sub)
    return parser


def run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture()
def empty_db(pg_dsn: str) -> Iterator[str]:
    name = f"hcp_history_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{pg_dsn.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_recs(n: int = 3_000, seed: int = 3) -> pl.DataFrame:
    """Recommendations over 48 h for 12 devices on 3 sites, 60 s windows."""
    rng = np.random.default_rng(seed)
    devices = [f"dev-{i:02d}" for i in range(12)]
    device = rng.choice(devices, n)
    end = END - rng.integers(0, 48 * 60, n) * 60_000
    frame = pl.DataFrame(
        {
            "device_id": device.tolist(),
            "device_type": ["asic" if int(d[-2:]) % 2 else "gpu" for d in device],
            "site": [f"site-{int(d[-2:]) % 3}" for d in device],
            "model": "S21",
            "window_start": end - 60_000,
            "window_end": end,
            "action": rng.choice(["mine", "curtail"], n).tolist(),
            "reason": "profitable",
            "revenue_usd_hr": rng.uniform(0, 12, n),
            "cost_usd_hr": rng.uniform(0, 9, n),
        }
    ).with_columns((pl.col("revenue_usd_hr") - pl.col("cost_usd_hr")).alias("net_usd_hr"))
    return frame.unique(subset=["device_id", "window_end"], keep="first", maintain_order=True)


@pytest.fixture()
def history_db(empty_db: str, capsys) -> tuple[str, pl.DataFrame]:
    assert run("db", "init", "--pg", empty_db) == 0
    assert f"{PG_PATH} path" in capsys.readouterr().out
    recs = make_recs()
    with psycopg.connect(empty_db, autocommit=True) as conn:
        PgWriter(conn).write({"recommendations": recs})
    return empty_db, recs


def reference(recs: pl.DataFrame, by: str, since_ms: int, until_ms: int) -> pl.DataFrame:
    keys = ["device_id"] if by == "device" else ["site"]
    h = (pl.col("window_end") - pl.col("window_start")) / HOUR
    return (
        recs.filter((pl.col("window_end") > since_ms) & (pl.col("window_end") <= until_ms))
        .group_by(keys)
        .agg(
            pl.len().alias("windows"),
            (pl.col("revenue_usd_hr") * h).sum().alias("revenue_usd"),
            (pl.col("net_usd_hr") * h).sum().alias("net_usd"),
        )
        .sort(keys)
    )


def _check(got: pl.DataFrame, want: pl.DataFrame, key: str) -> None:
    got = got.sort(key)
    assert got[key].to_list() == want[key].to_list()
    assert got["windows"].to_list() == want["windows"].to_list()
    for col in ("revenue_usd", "net_usd"):
        np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=1e-9)


def test_default_range_is_the_last_24h_of_data_per_device(history_db, tmp_path: Path) -> None:
    dsn, recs = history_db
    out = tmp_path / "by_device.parquet"
    assert run("history", "--pg", dsn, "--export", str(out)) == 0
    got = pl.read_parquet(out)
    _check(got, reference(recs, "device", END - 24 * HOUR, END), "device_id")
    assert got.height == 12
    margin = got["net_usd"] / got["revenue_usd"] * 100
    np.testing.assert_allclose(got["margin_pct"].to_numpy(), margin.to_numpy(), rtol=1e-9)


def test_by_site_over_an_explicit_range_to_csv(history_db, tmp_path: Path, capsys) -> None:
    dsn, recs = history_db
    out = tmp_path / "by_site.csv"
    since, until = END - 30 * HOUR, END - 6 * HOUR
    code = run(
        "history", "--pg", dsn, "--by", "site",
        "--since", _iso(since), "--until", _iso(until), "--export", str(out),
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "profitability by site" in printed and "site-0" in printed
    got = pl.read_csv(out)
    _check(got, reference(recs, "site", since, until), "site")
    assert (got["asics"] + got["gpus"]).sum() == 12


def test_site_and_device_filters(history_db, tmp_path: Path) -> None:
    dsn, recs = history_db
    out = tmp_path / "one.csv"
    assert run("history", "--pg", dsn, "--site", "site-1", "--export", str(out)) == 0
    got = pl.read_csv(out)
    assert set(got["site"]) == {"site-1"} and got.height == 4
    assert run("history", "--pg", dsn, "--device", "dev-05", "--export", str(out)) == 0
    got = pl.read_csv(out)
    want = reference(recs.filter(pl.col("device_id") == "dev-05"), "device", END - 24 * HOUR, END)
    _check(got, want, "device_id")


def test_unreachable_database_names_the_dsn_without_password() -> None:
    with pytest.raises(SinkUnavailableError) as info:
        run("history", "--pg", "postgresql://hcp:s3cret@127.0.0.1:1/hcp")
    text = str(info.value)
    assert "127.0.0.1:1" in text and "HCP_PG_DSN" in text and "s3cret" not in text


def test_missing_schema_says_to_run_db_init(empty_db: str) -> None:
    with pytest.raises(SchemaMissingError, match="hcp db init"):
        run("history", "--pg", empty_db)


def test_bad_export_suffix_and_reversed_range_are_config_errors(empty_db: str) -> None:
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        run("history", "--pg", empty_db, "--export", "out.xlsx")
    with pytest.raises(ConfigError, match="must be before"):
        run("history", "--pg", empty_db, "--since", "2026-01-02", "--until", "2026-01-01")


def test_db_init_creates_a_missing_database_and_is_idempotent(pg_dsn: str, capsys) -> None:
    name = f"hcp_dbinit_{uuid.uuid4().hex[:10]}"
    dsn = f"{pg_dsn.rsplit('/', 1)[0]}/{name}"
    try:
        assert run("db", "init", "--pg", dsn) == 0
        assert run("db", "init", "--pg", dsn) == 0
        out = capsys.readouterr().out
        assert out.count("created database") == 1
        assert out.count(f"{PG_PATH} path") == 2
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT version, path FROM schema_migrations ORDER BY 1")
            assert rows.fetchall() == [
                (1, "common"), (2, PG_PATH), (3, "common"), (4, "common"), (5, "common"),
                (6, PG_PATH), (7, PG_PATH), (8, "common"),
            ]
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_db_init_unreachable_is_one_clear_line() -> None:
    with pytest.raises(SinkUnavailableError) as info:
        run("db", "init", "--pg", "postgresql://hcp:s3cret@127.0.0.1:1/hcp")
    text = str(info.value)
    assert "\n" not in text and "HCP_PG_DSN" in text and "s3cret" not in text
