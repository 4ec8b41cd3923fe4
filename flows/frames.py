"""Decode telemetry frames: Arrow IPC streams that carry many samples per Kafka message.

A site collector batches its devices' samples into one message whose header
``content-type`` is ``application/vnd.apache.arrow.stream`` (SPEC section 1b). Its record
batches have the topic's JSON fields as columns (``v`` travels as schema metadata, a
``v`` column is accepted too), and the whole frame is handed to polars at once: the only
Python work per frame is reading its schema, never per row.

A frame that cannot be read, or whose columns are not the topic's, is rejected whole
(``bad_frame``). Rows of a readable frame are checked with the very expression the JSON
fast path uses (:func:`flows.decode.row_reasons`), so a row gets the same reason its JSON
twin would; bad rows leave as JSON text, one dead letter each, with their row index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from flows.decode import decode_values, row_reasons
from hcp.schemas import SCHEMA_VERSION, Field, polars_schema

__all__ = [
    "BAD_FRAME",
    "Decoded",
    "FrameResult",
    "decode_frame",
    "decode_messages",
    "read_frame",
]

BAD_FRAME = "bad_frame"

_STRINGS = (pa.string(), pa.large_string(), pa.string_view())


@dataclass(frozen=True)
class FrameResult:
    """One frame: its good rows in frame order, and its bad rows (index, reason, JSON)."""

    rows: pl.DataFrame
    bad_row: list[int]
    bad_reason: list[str]
    bad_json: list[bytes]
    samples: int
    error: str | None = None  # set when the whole frame is rejected


def decode_frame(value: bytes | None, fields: tuple[Field, ...]) -> FrameResult:
    """Read and check one frame; never raises on bad input."""
    got = decode_messages([value], [True], fields)
    if got.bad_row and got.bad_row[0] is None:
        return FrameResult(got.rows, [], [], [], 0, BAD_FRAME)
    return FrameResult(
        got.rows,
        [r for r in got.bad_row if r is not None],
        got.bad_reason,
        got.bad_value,  # type: ignore[arg-type]
        got.samples,
    )


def read_frame(value: bytes | None, fields: tuple[Field, ...]) -> pa.Table | None:
    """A frame as a table in the topic's layout (every field, ``v`` included, in contract
    order), or None when it cannot be read or its columns are not the topic's."""
    try:
        table = ipc.open_stream(pa.py_buffer(value)).read_all()  # type: ignore[arg-type]
    except Exception:  # any malformed, truncated or empty stream
        return None
    if not _schema_ok(table.schema, fields):
        return None
    target = _layout(fields)
    n = table.num_rows
    cols = []
    try:
        for f in target:
            if f.name in table.column_names:
                col = table.column(f.name)
                cols.append(col if col.type == f.type else col.cast(f.type))
            elif f.name == "v":
                cols.append(pa.array(np.full(n, SCHEMA_VERSION, dtype=np.int64)))
            else:
                cols.append(pa.nulls(n, f.type))
        return pa.Table.from_arrays(cols, schema=target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


@functools.cache
def _layout(fields: tuple[Field, ...]) -> pa.Schema:
    types = {pl.String: pa.string(), pl.Int64: pa.int64(), pl.Float64: pa.float64()}
    return pa.schema([pa.field(f.name, types[f.dtype]) for f in fields])


def _schema_ok(schema: pa.Schema, fields: tuple[Field, ...]) -> bool:
    """Exactly the topic's columns with their Arrow types, and metadata ``v`` = 1."""
    meta = schema.metadata or {}
    if meta.get(b"v") != str(SCHEMA_VERSION).encode():
        return False
    expected = {f.name: f for f in fields}
    names = schema.names
    if len(set(names)) != len(names) or set(names) - set(expected):
        return False
    for f in fields:
        if f.name not in names:
            if f.name == "v" or f.nullable:
                continue  # a column that may be absent: `v` is in the metadata
            return False
        t = schema.field(f.name).type
        if pa.types.is_null(t) and f.nullable:
            continue
        if f.dtype == pl.String and t not in _STRINGS:
            return False
        if f.dtype == pl.Int64 and t != pa.int64():
            return False
        if f.dtype == pl.Float64 and t != pa.float64():
            return False
    return True


@dataclass(frozen=True)
class Decoded:
    """A fetch of JSON messages and frames: good rows in offset (then row) order, and the
    rejects: message index, row index (None for a whole message), reason, bytes to keep."""

    rows: pl.DataFrame
    bad_msg: list[int]
    bad_row: list[int | None]
    bad_reason: list[str]
    bad_value: list[bytes | None]
    samples: int


def decode_messages(
    values: list[bytes | None], frame_flags: list[bool], fields: tuple[Field, ...]
) -> Decoded:
    """Decode a fetch that holds frames (``frame_flags``), maybe between JSON messages.

    Consecutive JSON messages are decoded together by :func:`flows.decode.decode_values`;
    consecutive frames are read one by one but converted and checked together, so the
    per-call costs of polars are paid once per run of frames, not per frame. The rows
    keep the partition's order (offset, then row), which lateness depends on.
    """
    out = _Collector(fields)
    i = 0
    n = len(values)
    while i < n:
        j = i
        framed = frame_flags[i]
        while j < n and frame_flags[j] == framed:
            j += 1
        if framed:
            out.frames(values, i, j)
        else:
            out.json(values, i, j)
        i = j
    return out.result()


class _Collector:
    """Accumulates the parts and rejects of :func:`decode_messages`, in message order."""

    def __init__(self, fields: tuple[Field, ...]) -> None:
        self.fields = fields
        self.parts: list[pl.DataFrame] = []
        self.bad_msg: list[int] = []
        self.bad_row: list[int | None] = []
        self.bad_reason: list[str] = []
        self.bad_value: list[bytes | None] = []
        self.samples = 0

    def json(self, values: list[bytes | None], lo: int, hi: int) -> None:
        dec = decode_values(values[lo:hi], self.fields)
        self.parts.append(dec.rows)
        self.samples += hi - lo
        for k, reason in zip(dec.bad_index, dec.bad_reason, strict=True):
            self._reject(lo + k, None, reason, values[lo + k])

    def frames(self, values: list[bytes | None], lo: int, hi: int) -> None:
        tables: list[pa.Table] = []
        owners: list[int] = []
        # (message, row or -1, reason, value), put in message then row order at the end.
        rejects: list[tuple[int, int, str, bytes | None]] = []
        for i in range(lo, hi):
            table = read_frame(values[i], self.fields)
            if table is None:
                rejects.append((i, -1, BAD_FRAME, values[i]))
                self.samples += 1
            elif table.num_rows:
                tables.append(table)
                owners.append(i)
        if tables:
            self._frame_rows(tables, owners, rejects)
        for msg, row, reason, value in sorted(rejects, key=lambda r: (r[0], r[1])):
            self._reject(msg, None if row < 0 else row, reason, value)

    def _frame_rows(
        self,
        tables: list[pa.Table],
        owners: list[int],
        rejects: list[tuple[int, int, str, bytes | None]],
    ) -> None:
        """Convert and check the readable frames of a run together; bad rows to ``rejects``."""
        df = pl.from_arrow(pa.concat_tables(tables), rechunk=False)
        assert isinstance(df, pl.DataFrame)
        self.samples += df.height
        reasons = row_reasons(df, self.fields)
        if reasons.null_count() == df.height:
            self.parts.append(df)
            return
        bad = reasons.is_not_null()
        where = np.flatnonzero(bad.to_numpy())
        starts = np.cumsum([0] + [t.num_rows for t in tables])
        which = np.searchsorted(starts, where, side="right") - 1
        as_json = df.filter(bad).select(pl.struct(pl.all()).struct.json_encode()).to_series()
        for g, k, reason, text in zip(
            where.tolist(), which.tolist(), reasons.filter(bad), as_json, strict=True
        ):
            rejects.append((owners[k], g - int(starts[k]), reason, text.encode()))
        self.parts.append(df.filter(~bad))

    def _reject(self, msg: int, row: int | None, reason: str, value: bytes | None) -> None:
        self.bad_msg.append(msg)
        self.bad_row.append(row)
        self.bad_reason.append(reason)
        self.bad_value.append(value)

    def result(self) -> Decoded:
        if not self.parts:
            rows = pl.DataFrame(schema=polars_schema(self.fields))
        else:
            rows = pl.concat(self.parts) if len(self.parts) > 1 else self.parts[0]
        return Decoded(
            rows, self.bad_msg, self.bad_row, self.bad_reason, self.bad_value, self.samples
        )
