"""Which tables of a PostgreSQL batch go down which connection (sinks/postgres/lanes.py)."""

from __future__ import annotations

import polars as pl

from sinks.postgres.lanes import split_tables


def _rows(n: int) -> pl.DataFrame:
    return pl.DataFrame({"x": range(n)})


def test_a_small_batch_stays_on_one_connection() -> None:
    frames = {"device_windows": _rows(10), "recommendations": _rows(10)}
    assert split_tables(frames, lanes=2, split_rows=100) == [frames]


def test_a_window_close_is_split_by_cost_and_every_table_lands_once() -> None:
    frames = {name: _rows(300) for name in
              ("device_windows", "recommendations", "audit_log", "device_compliance")}
    groups = split_tables(frames, lanes=2, split_rows=100)
    # The audit rows cost twice a COPY's: they share their lane with one other table.
    assert [sorted(g) for g in groups] == [
        ["audit_log", "recommendations"], ["device_compliance", "device_windows"]]
    assert split_tables(dict(reversed(frames.items())), lanes=2, split_rows=100) == groups


def test_never_more_groups_than_tables_or_lanes() -> None:
    frames = {"device_windows": _rows(500)}
    assert split_tables(frames, lanes=4, split_rows=100) == [frames]
    assert split_tables({}, lanes=2) == []
    assert len(split_tables({f"t{i}": _rows(100) for i in range(5)}, lanes=3, split_rows=1)) == 3
