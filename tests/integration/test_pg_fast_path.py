"""The PostgreSQL sink's fast path: new windows are COPYed straight into their tables, and
anything that may already be stored (replays, a crash between the two sinks) is upserted."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal

from sinks.postgres.schema import apply_migrations
from sinks.postgres.sink import PostgresSink
from sinks.postgres.writer import PgWriter
from tests.conftest import new_database
from tests.integration.test_pg_sink import _batches, expected, read_back
from tests.support.faults import InjectedFaultError

pytestmark = pytest.mark.pg

TABLES = ("device_windows", "recommendations")


@pytest.fixture()
def db(pg_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    with new_database("pgfast") as dsn:
        apply_migrations(dsn)
        yield dsn


def _mark(dsn: str, table: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT high_ms FROM hcp_write_marks WHERE table_name = %s", (table,)
        ).fetchone()
    return None if row is None else int(row[0])


def test_new_windows_take_the_copy_and_replays_the_upsert_with_the_same_rows(db: str) -> None:
    batches = _batches(4)
    with psycopg.connect(db, autocommit=True) as conn:
        writer = PgWriter(conn)
        for batch in batches[:3]:
            writer.write(batch)
        assert writer.fast_rows == 3 * 2 * 120 and writer.upsert_rows == 0
        first = {t: read_back(db, t) for t in TABLES}
        # A replay from batch 2 on (as after a restart from an older snapshot), then one
        # batch that mixes stored and new windows, then a new one again.
        writer.write(batches[1])
        writer.write({t: batches[2][t].vstack(batches[3][t]) for t in TABLES})
        assert writer.upsert_rows == 2 * 120 + 2 * 240
        writer.write(batches[3])  # stored by now: the upsert again
    for table in TABLES:
        top = int(batches[2][table][table_column(table)].max())
        kept = read_back(db, table).filter(pl.col(table_column(table)) <= top)
        assert_frame_equal(kept, first[table], check_exact=True)
        assert_frame_equal(read_back(db, table), expected(table, *(b[table] for b in batches)))
        assert _mark(db, table) == int(batches[3][table][table_column(table)].max())


def table_column(table: str) -> str:
    return "window_start" if table == "device_windows" else "window_end"


def test_a_crash_before_commit_leaves_no_mark_and_the_retry_takes_the_copy(db: str) -> None:
    batches = _batches(3)

    def fail_second(batch_number: int) -> None:
        if batch_number == 2:
            raise InjectedFaultError("crash between the write and the commit")

    with psycopg.connect(db, autocommit=True) as conn:
        writer = PgWriter(conn, before_commit=fail_second)
        writer.write(batches[0])
        with pytest.raises(InjectedFaultError):
            writer.write(batches[1])
    mark = _mark(db, "device_windows")
    assert mark == int(batches[0]["device_windows"]["window_start"].max())
    # The restarted job writes batch 2 again: still new, so the copy; then batch 3.
    with psycopg.connect(db, autocommit=True) as conn:
        writer = PgWriter(conn)
        writer.write(batches[1])
        writer.write(batches[2])
        assert writer.fast_rows == 2 * 2 * 120
    for table in TABLES:
        assert_frame_equal(read_back(db, table), expected(table, *(b[table] for b in batches)))


def test_windows_written_to_postgres_but_not_redis_are_upserted_on_replay(db: str) -> None:
    """A crash after the PostgreSQL commit, before the Redis write: the replayed windows
    reach the PostgreSQL sink again; the mark proves nothing, so they are upserted."""
    batches = _batches(2)
    items = [("windows", batches[0]["device_windows"]), ("recs", batches[0]["recommendations"])]
    part = PostgresSink(db, migrate=False).build("pg", 0, 1)
    part.write_batch(items)
    part.close()
    again = PostgresSink(db, migrate=False).build("pg", 0, 1)  # the restarted job
    again.write_batch(items)
    again.write_batch(
        [("windows", batches[1]["device_windows"]), ("recs", batches[1]["recommendations"])]
    )
    again.close()
    for table in TABLES:
        assert_frame_equal(read_back(db, table), expected(table, *(b[table] for b in batches)))


def test_rows_stored_before_the_mark_existed_are_respected(db: str) -> None:
    batches = _batches(2)
    with psycopg.connect(db, autocommit=True) as conn:
        PgWriter(conn).write(batches[0])
        conn.execute("DELETE FROM hcp_write_marks")  # as a database from before the mark
        writer = PgWriter(conn)
        writer.write(batches[0])
        assert writer.fast_rows == 0  # the table's own newest window became the mark
        writer.write(batches[1])
        assert writer.fast_rows == 2 * 120
    for table in TABLES:
        assert_frame_equal(read_back(db, table), expected(table, *(b[table] for b in batches)))
