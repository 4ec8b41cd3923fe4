"""Write polars DataFrames into the history tables: COPY to staging, then one upsert.

One call of :meth:`PgWriter.write` is one transaction: every frame is copied into a
per-connection temporary staging table, then merged with ``INSERT ... SELECT ... ON
CONFLICT (natural key) DO UPDATE``. Either the whole batch lands or none of it does, and
writing the same rows again changes nothing, so replays never duplicate.

Fast path for the per-window tables (:data:`FAST_TABLES`: ``device_windows``,
``recommendations``, ``device_compliance``): the table
``hcp_write_marks`` holds, per table, the newest window time stored, updated in the same
transaction as the rows and read ``FOR UPDATE`` (so writers of one table take turns).
A frame whose every window is newer than that mark cannot collide with a stored row, and
is COPYed straight into the table: no staging table, no upsert. Anything else (a replay
after a crash, even one between the Redis and the PostgreSQL write) takes the upsert.

The writer learns each table's columns, types and primary key from the database catalog,
so the SQL migrations are the single source of truth for the layout. DataFrame times are
int64 epoch milliseconds; the upsert converts them to ``timestamptz``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import polars as pl
import psycopg
from psycopg import sql

__all__ = ["FAST_TABLES", "CopyFormat", "PgWriter", "TableInfo"]

log = logging.getLogger(__name__)

CopyFormat = Literal["csv", "binary"]

# Column types the staging table holds them as, and the polars type a missing column gets.
_PG_TO_POLARS: dict[str, pl.DataType] = {
    "text": pl.String(),
    "bigint": pl.Int64(),
    "integer": pl.Int64(),
    "double precision": pl.Float64(),
    "timestamp with time zone": pl.Int64(),
    "boolean": pl.Boolean(),
}
_STAGE_TYPE = {"timestamp with time zone": "bigint", "integer": "bigint"}

COPY_SLICE_ROWS = 50_000
# Fleet commands are appended to the audit trail, not upserted (see _audit_commands).
AUDIT_TABLE = "audit_log"
# Tables that may skip the upsert, and the window column their mark follows.
# Each column is part of its table's primary key, so a row newer than the mark is a new key.
FAST_TABLES: dict[str, str] = {
    "device_windows": "window_start",
    "recommendations": "window_end",
    "device_compliance": "window_end",
}


@dataclass(frozen=True)
class TableInfo:
    """A history table as the catalog describes it."""

    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    key: tuple[str, ...]

    @property
    def stage(self) -> str:
        return f"hcp_stage_{self.name}"

    def stage_type(self, pg_type: str) -> str:
        return _STAGE_TYPE.get(pg_type, pg_type)


# The stage of fleet commands: audit_log's serial id and defaulted columns stay out; the
# detail is staged as text and cast once by the INSERT.
_AUDIT_STAGE = TableInfo(
    name="audit",
    columns=("actor", "action", "target", "request_id", "detail"),
    types=("text",) * 5,
    key=("action", "request_id", "target"),
)


def _load_table(conn: psycopg.Connection, table: str) -> TableInfo:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (table,),
    ).fetchall()
    if not rows:
        msg = f"table {table!r} does not exist; run `hcp db init`"
        raise LookupError(msg)
    key = conn.execute(
        "SELECT a.attname FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (table,),
    ).fetchall()
    if not key:
        msg = f"table {table!r} has no primary key to upsert on"
        raise LookupError(msg)
    return TableInfo(
        name=table,
        columns=tuple(r[0] for r in rows),
        types=tuple(r[1] for r in rows),
        key=tuple(r[0] for r in key),
    )


def _write_csv(copy: psycopg.Copy, df: pl.DataFrame) -> None:
    """Send ``df`` as CSV rows to an open COPY, a slice at a time.

    polars' native CSV writer is far faster than building rows in Python; it quotes empty
    strings, so an unquoted empty field is NULL to COPY. Slices keep the text of a whole
    fleet window (~100 MB for 310,000 recommendations) from sitting in memory at once.
    """
    for start in range(0, df.height, COPY_SLICE_ROWS):
        buf = io.BytesIO()
        df.slice(start, COPY_SLICE_ROWS).write_csv(buf, include_header=False)
        copy.write(buf.getbuffer())


def _upsert_sql(info: TableInfo) -> sql.Composed:
    cols = [sql.Identifier(c) for c in info.columns]
    exprs = []
    for col, pg_type in zip(info.columns, info.types, strict=True):
        if pg_type == "timestamp with time zone":
            # float8 seconds are exact to well under a microsecond for ms epochs, and
            # to_timestamp rounds to the microsecond, so every millisecond survives.
            exprs.append(
                sql.SQL("to_timestamp({}::double precision / 1000)").format(sql.Identifier(col))
            )
        else:
            exprs.append(sql.Identifier(col))
    rest = [c for c in info.columns if c not in info.key]
    if rest:
        target = sql.Identifier(info.name)
        action = sql.SQL("DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                for c in rest
            ),
            # Skipping identical rows keeps replays from rewriting (and bloating) the table.
            sql.SQL(", ").join(sql.SQL("{}.{}").format(target, sql.Identifier(c)) for c in rest),
            sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in rest),
        )
    else:
        action = sql.SQL("DO NOTHING")
    return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
        sql.Identifier(info.name),
        sql.SQL(", ").join(cols),
        sql.SQL(", ").join(exprs),
        sql.Identifier(info.stage),
        sql.SQL(", ").join(sql.Identifier(c) for c in info.key),
        action,
    )


class PgWriter:
    """Writes batches of DataFrames into history tables, one transaction per batch.

    ``before_commit(batch_number)`` runs inside the transaction after every row is
    merged and before the commit: a test hook that can raise to abort the batch.
    ``fast_path=False`` upserts every batch (the write marks are still kept).
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        copy_format: CopyFormat = "csv",
        before_commit: Callable[[int], None] | None = None,
        fast_path: bool = True,
    ) -> None:
        if copy_format not in ("csv", "binary"):
            msg = f"copy_format must be 'csv' or 'binary', got {copy_format!r}"
            raise ValueError(msg)
        if not conn.autocommit:
            msg = "PgWriter needs an autocommit connection; it opens its own transactions"
            raise ValueError(msg)
        self._conn = conn
        self._format = copy_format
        self._before_commit = before_commit
        self._fast_path = fast_path  # off: every batch upserts (for measuring the gain)
        self._tables: dict[str, TableInfo] = {}
        self._upserts: dict[str, sql.Composed] = {}
        self.batches = 0
        # Rows written per path since this writer was made, for tests and benchmarks.
        self.fast_rows = 0
        self.upsert_rows = 0

    def table(self, name: str) -> TableInfo:
        if name not in self._tables:
            self._tables[name] = _load_table(self._conn, name)
            self._upserts[name] = _upsert_sql(self._tables[name])
        return self._tables[name]

    def prepare(self, name: str, frame: pl.DataFrame) -> pl.DataFrame:
        """The frame reduced to the table's columns, times as ms, one row per key."""
        info = self.table(name)
        missing_keys = [k for k in info.key if k not in frame.columns]
        if missing_keys:
            msg = f"{name}: frame lacks key column(s) {missing_keys}; has {frame.columns}"
            raise ValueError(msg)
        exprs = []
        for col, pg_type in zip(info.columns, info.types, strict=True):
            want = _PG_TO_POLARS.get(pg_type, pl.String())
            if col not in frame.columns:
                exprs.append(pl.lit(None, dtype=want).alias(col))
            elif pg_type == "timestamp with time zone" and isinstance(
                frame.schema[col], pl.Datetime
            ):
                exprs.append(pl.col(col).dt.epoch("ms").alias(col))
            else:
                exprs.append(pl.col(col).cast(want).alias(col))
        out = frame.select(exprs)
        # ON CONFLICT DO UPDATE refuses to touch one row twice in a statement; the last
        # occurrence of a key in the batch is the newest, so it wins.
        return out.unique(subset=list(info.key), keep="last", maintain_order=True)

    def write(self, frames: Mapping[str, pl.DataFrame]) -> dict[str, int]:
        """Write ``{table: frame}`` in one transaction; return rows written per table."""
        audit = frames.get(AUDIT_TABLE)
        prepared = {name: self.prepare(name, df) for name, df in frames.items()
                    if df.height and name != AUDIT_TABLE}
        self.batches += 1
        counts: dict[str, int] = {}
        with self._conn.transaction():
            if audit is not None and audit.height:
                counts[AUDIT_TABLE] = self._audit_commands(audit)
            for name, df in prepared.items():
                info = self.table(name)
                if self._fast_path and name in FAST_TABLES and self._provably_new(info, df):
                    self._copy_new(info, df)
                    self.fast_rows += df.height
                else:
                    self._stage(info, df)
                    self._conn.execute(self._upserts[name])
                    self.upsert_rows += df.height
                if name in FAST_TABLES:
                    self._raise_mark(name, int(df[FAST_TABLES[name]].max()))  # type: ignore[arg-type]
                counts[name] = df.height
            if self._before_commit is not None:
                self._before_commit(self.batches)
        return counts

    def _audit_commands(self, df: pl.DataFrame) -> int:
        """Fleet commands (``Out.COMMANDS`` rows) into the append-only ``audit_log``.

        Keyed by (action, request id ``window:<ts>``, device): a replayed command is
        recorded once. Commands go out only when a device's action changes, but a job's
        first window changes every device: 310,000 rows at fleet scale, so the rows are
        built by polars and COPied through a stage, not inserted one by one.
        """
        rows = df.select(
            pl.lit("job").alias("actor"),
            pl.lit("fleet.command").alias("action"),
            pl.col("device_id").alias("target"),
            pl.format("window:{}", pl.col("ts")).alias("request_id"),
            # Keys in sorted order, as every other audit detail is written.
            pl.struct("action", "device_type", "reason", "site", "ts")
            .struct.json_encode()
            .alias("detail"),
        )
        self._stage(_AUDIT_STAGE, rows)
        self._conn.execute(
            sql.SQL(
                "INSERT INTO audit_log (actor, action, target, request_id, detail) "
                "SELECT actor, action, target, request_id, detail::jsonb FROM {} "
                "ON CONFLICT (action, request_id, target) DO NOTHING"
            ).format(sql.Identifier(_AUDIT_STAGE.stage))
        )
        return rows.height

    def _provably_new(self, info: TableInfo, df: pl.DataFrame) -> bool:
        """Whether every window of ``df`` is newer than the table's stored mark.

        Runs inside the batch's transaction; ``FOR UPDATE`` holds the mark row until the
        commit, so no other writer can add rows to the table in between.
        """
        column = FAST_TABLES[info.name]
        row = self._conn.execute(
            "SELECT high_ms FROM hcp_write_marks WHERE table_name = %s FOR UPDATE", (info.name,)
        ).fetchone()
        if row is None:
            # No mark yet: the table's own newest window (rows written before the mark
            # existed count too), recorded once; later batches read the one-row mark.
            self._conn.execute(
                sql.SQL(
                    "INSERT INTO hcp_write_marks (table_name, high_ms) "
                    "SELECT %s, coalesce((extract(epoch FROM max({}) ) * 1000)::bigint, -1) "
                    "FROM {} ON CONFLICT (table_name) DO NOTHING"
                ).format(sql.Identifier(column), sql.Identifier(info.name)),
                (info.name,),
            )
            row = self._conn.execute(
                "SELECT high_ms FROM hcp_write_marks WHERE table_name = %s FOR UPDATE",
                (info.name,),
            ).fetchone()
        assert row is not None
        return int(df[column].min()) > int(row[0])  # type: ignore[arg-type]

    def _raise_mark(self, table: str, high_ms: int) -> None:
        self._conn.execute(
            "UPDATE hcp_write_marks SET high_ms = greatest(high_ms, %s) WHERE table_name = %s",
            (high_ms, table),
        )

    def _copy_new(self, info: TableInfo, df: pl.DataFrame) -> None:
        """COPY rows known to be new straight into the table (times as ISO 8601 UTC)."""
        times = [
            pl.from_epoch(pl.col(c), time_unit="ms").dt.replace_time_zone("UTC").alias(c)
            for c, t in zip(info.columns, info.types, strict=True)
            if t == "timestamp with time zone"
        ]
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in info.columns)
        stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            sql.Identifier(info.name), cols
        )
        with self._conn.cursor() as cur, cur.copy(stmt) as copy:
            _write_csv(copy, df.with_columns(times))

    def _stage(self, info: TableInfo, df: pl.DataFrame) -> None:
        # ON COMMIT DELETE ROWS empties the stage at every commit; a rollback discards
        # both the rows and, if it was created in this transaction, the table itself.
        self._conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
                sql.Identifier(info.stage),
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(info.stage_type(t)))
                    for c, t in zip(info.columns, info.types, strict=True)
                ),
            )
        )
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in info.columns)
        with self._conn.cursor() as cur:
            if self._format == "csv":
                stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
                    sql.Identifier(info.stage), cols
                )
                with cur.copy(stmt) as copy:
                    _write_csv(copy, df)
            else:
                stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                    sql.Identifier(info.stage), cols
                )
                with cur.copy(stmt) as copy:
                    copy.set_types([info.stage_type(t) for t in info.types])
                    for row in df.iter_rows():
                        copy.write_row(row)
