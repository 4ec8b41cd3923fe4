"""Session-scoped real services: the embedded Kafka broker, Redis and PostgreSQL.

Nothing here is mocked. Each test gets fresh topic names, a fresh Redis key prefix and the
session's own fresh PostgreSQL database, so tests never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from hcp.topics import Topics
from tests.support.cleanup import delete_prefixes
from tools.broker import EmbeddedBroker

REDIS_URL = os.environ.get("HCP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_ADMIN_DSN = os.environ.get("HCP_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Which PostgreSQL the tests run against: `plain` (the system server, no TimescaleDB) or
# `timescaledb` (the private cluster of deploy/timescaledb.sh, which preloads it). `make
# test` runs the PostgreSQL tests (marker `pg`) once on each; the session checks the server
# really is that flavour, so a mix-up cannot pass for coverage.
PG_FLAVOUR = os.environ.get("HCP_TEST_PG_FLAVOUR", "plain")
# The migration path `apply_migrations` must take on this flavour's server.
PG_PATH = "timescaledb" if PG_FLAVOUR == "timescaledb" else "postgres"


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """A real Kafka-protocol broker: HCP_TEST_KAFKA_BOOTSTRAP if set, else embedded Tansu."""
    external = os.environ.get("HCP_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture()
def topics() -> Topics:
    """A fresh topic set for one test."""
    return Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture()
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A fresh Redis key prefix for one test; its keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    yield prefix
    delete_prefixes(redis_url, prefix)


@contextlib.contextmanager
def new_database(label: str = "test") -> Iterator[str]:
    """A new PostgreSQL database on the test server (a URL DSN), dropped afterwards."""
    name = f"hcp_{label}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", autouse=True)
def _pg_flavour_is_what_it_says() -> None:
    if PG_FLAVOUR not in ("plain", "timescaledb"):
        pytest.exit(f"HCP_TEST_PG_FLAVOUR must be plain or timescaledb, not {PG_FLAVOUR!r}")
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=5) as conn:
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    except psycopg.Error:
        return  # tests that need PostgreSQL fail on their own, with their own message
    if ("timescaledb" in preload) != (PG_FLAVOUR == "timescaledb"):
        pytest.exit(f"HCP_TEST_PG_FLAVOUR={PG_FLAVOUR} but {PG_ADMIN_DSN} preloads "
                    f"{preload!r}", returncode=2)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with new_database() as dsn:
        yield dsn


@pytest.fixture(scope="module")
def own_pg_dsn() -> Iterator[str]:
    """A fresh, migrated database for one module whose rows must not meet other modules'
    (a live job, API keys and workload owners, time-range queries over "the latest")."""
    from sinks.postgres.schema import apply_migrations

    with new_database() as dsn:
        apply_migrations(dsn)
        yield dsn
