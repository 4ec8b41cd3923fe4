"""Connections of one PostgreSQL sink partition, and which tables each one writes.

A window close of a whole fleet is one batch of four large tables (device windows,
recommendations, the fleet commands' audit rows, device compliance): 9.5 s of COPY and
upsert at 310,000 devices, all of it work of one server backend while the job waits
(docs/benchmark.md). Tables of one batch are independent, so a large batch is split over
a few connections, each table in one transaction on one of them; a small batch stays on
one connection, where a second would cost a round trip for nothing.

Splitting gives up "the whole batch or none of it" for "each table whole or not at all".
That is enough: every table's write is idempotent (keyed upserts, the audit trail's
``ON CONFLICT DO NOTHING``, the fast path's write marks), and the sink retries a batch
until every table of it has landed, so a lane that failed is written again and a lane
that committed is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import polars as pl
import psycopg

from sinks.postgres.writer import AUDIT_TABLE, CopyFormat, PgWriter

__all__ = ["SPLIT_ROWS", "Lane", "outage_ended", "split_tables"]

# Below this many rows in a batch every table goes down one connection.
SPLIT_ROWS = 100_000
# Relative server cost per row: the audit rows go through a stage and an INSERT ... SELECT
# with a jsonb cast, twice a plain COPY's time per row (the 310,000-device close: 3.4 s
# against 1.7 s for device_windows, measured with log_min_duration_statement).
_ROW_COST = {AUDIT_TABLE: 2.0}


# Outages each server (by DSN) recovered from in this process. A connection opened before
# the latest recovery was cut with the rest and is reopened before use: otherwise a sink
# step idle through the outage would fail on it at its next write and count an outage of
# its own after the server is back.
_RECOVERIES: dict[str, int] = {}


def outage_ended(dsn: str) -> None:
    """Mark every connection to ``dsn`` opened so far as not to be trusted."""
    _RECOVERIES[dsn] = _RECOVERIES.get(dsn, 0) + 1


def split_tables(
    frames: Mapping[str, pl.DataFrame], lanes: int, split_rows: int = SPLIT_ROWS
) -> list[dict[str, pl.DataFrame]]:
    """``frames`` as at most ``lanes`` non-empty groups of whole tables, of about equal cost.

    Deterministic: the costliest table first, each to the cheapest group so far (the first
    of equal ones); fewer than ``split_rows`` rows in all make one group.
    """
    if lanes <= 1 or sum(df.height for df in frames.values()) < split_rows:
        return [dict(frames)] if frames else []
    groups: list[dict[str, pl.DataFrame]] = [{} for _ in range(lanes)]
    load = [0.0] * lanes
    cost = {name: df.height * _ROW_COST.get(name, 1.0) for name, df in frames.items()}
    for name in sorted(frames, key=lambda n: (-cost[n], n)):
        lane = load.index(min(load))
        groups[lane][name] = frames[name]
        load[lane] += cost[name]
    return [g for g in groups if g]


class Lane:
    """One connection and its writer, opened on first use and again after a failure."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout_s: int,
        copy_format: CopyFormat,
        before_commit: Callable[[int], None],
    ) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._copy_format = copy_format
        self._before_commit = before_commit
        self._conn: psycopg.Connection | None = None
        self._writer: PgWriter | None = None
        self._recoveries = 0  # _RECOVERIES[dsn] when the connection was opened

    def write(self, frames: Mapping[str, pl.DataFrame]) -> dict[str, int]:
        """Write ``frames`` in one transaction; rows written per table."""
        if self._recoveries != _RECOVERIES.get(self._dsn, 0):
            self.drop()
        if self._conn is None or self._conn.closed:
            self._recoveries = _RECOVERIES.get(self._dsn, 0)
            self._conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=self._connect_timeout_s,
                # A link that drops packets without a reset must fail, not hang for ever:
                # then the batch is retried like any other outage.
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                tcp_user_timeout=30_000,
            )
            self._writer = PgWriter(
                self._conn, copy_format=self._copy_format, before_commit=self._before_commit
            )
        assert self._writer is not None
        return self._writer.write(frames)

    def drop(self) -> None:
        """Close the connection; the next write opens a new one."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self._writer = None
