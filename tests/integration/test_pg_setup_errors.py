"""PostgreSQL set-up mistakes a newcomer makes: each ends in one clear line, not a mess.

- TimescaleDB installed but not in ``shared_preload_libraries``: ``CREATE EXTENSION``
  fails with FATAL and the server closes the connection. TimescaleDB is not on this
  machine, so the same failure is provoked for real with another extension: an event
  trigger terminates the session that creates it, a FATAL that closes the connection.
- A DSN without a database name would install the tables into the maintenance database.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from sinks.postgres.schema import PATH_POSTGRES, apply_migrations
from tools.cli import main

pytestmark = pytest.mark.pg

_KILL_ON_CREATE_EXTENSION = """
CREATE FUNCTION hcp_test_kill_me() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_terminate_backend(pg_backend_pid());
END $$;
CREATE EVENT TRIGGER hcp_test_kill_create_extension ON ddl_command_start
    WHEN TAG IN ('CREATE EXTENSION') EXECUTE FUNCTION hcp_test_kill_me();
"""


@pytest.fixture()
def fresh_dsn(pg_dsn: str) -> Iterator[str]:
    """An empty database of its own for one test."""
    name = f"hcp_pgsetup_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{pg_dsn.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_extension_step_that_closes_the_connection_falls_back_to_plain_tables(
    fresh_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute(_KILL_ON_CREATE_EXTENSION)
        assert conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'"
        ).fetchone()
    with caplog.at_level(logging.WARNING, logger="sinks.postgres.schema"):
        assert apply_migrations(fresh_dsn, extension="pg_trgm") == PATH_POSTGRES
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "closed the connection" in warning and "shared_preload_libraries" in warning
    with psycopg.connect(fresh_dsn) as conn:
        paths = {r[0] for r in conn.execute("SELECT path FROM schema_migrations")}
        assert PATH_POSTGRES in paths and "timescaledb" not in paths
        assert conn.execute("SELECT to_regclass('recommendations') IS NOT NULL").fetchone()[0]
        assert not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
    # Applying again keeps the recorded plain path without touching the extension.
    assert apply_migrations(fresh_dsn, extension="pg_trgm") == PATH_POSTGRES


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:5432/",
        "postgresql://postgres@127.0.0.1:5432",
        "host=127.0.0.1 user=postgres",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "postgresql://postgres@127.0.0.1:5432/template1",
    ],
)
def test_db_init_refuses_a_dsn_without_its_own_database(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "init", "--pg", dsn]) == 2  # a configuration mistake
    out, err = capsys.readouterr()
    assert "ready" not in out
    (line,) = err.strip().splitlines()
    assert line.startswith("hcp db: error: --pg ") and "database" in line
