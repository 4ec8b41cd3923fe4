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

from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from flows.decode import decode_values, row_reasons
from hcp.schemas import SCHEMA_VERSION, Field, polars_schema

__all__ = ["BAD_FRAME", "Decoded", "FrameResult", "decode_frame", "decode_messages"]

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
    schema = polars_schema(fields)
    try:
        table = ipc.open_stream(pa.py_buffer(value)).read_all()  # type: ignore[arg-type]
    except Exception:  # any malformed, truncated or empty stream
        return _rejected(schema)
    if not _schema_ok(table.schema, fields):
        return _rejected(schema)
    try:
        df = pl.from_arrow(table, rechunk=False)
    except Exception:  # an Arrow layout polars cannot take is unreadable for us too
        return _rejected(schema)
    assert isinstance(df, pl.DataFrame)
    if "v" not in df.columns:
        df = df.with_columns(pl.lit(SCHEMA_VERSION, dtype=pl.Int64).alias("v"))
    df = df.select([pl.col(n).cast(t) for n, t in schema.items()])
    n = df.height
    reasons = row_reasons(df, fields)
    if reasons.null_count() == n:
        return FrameResult(df, [], [], [], n)
    bad = reasons.is_not_null()
    index = pl.int_range(n, eager=True).filter(bad)
    bad_rows = df.filter(bad)
    as_json = bad_rows.select(pl.struct(pl.all()).struct.json_encode()).to_series()
    return FrameResult(
        df.filter(~bad),
        index.to_list(),
        reasons.filter(bad).to_list(),
        [s.encode() for s in as_json],
        n,
    )


def _rejected(schema: dict) -> FrameResult:
    return FrameResult(pl.DataFrame(schema=schema), [], [], [], 0, BAD_FRAME)


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
    each frame on its own. The rows keep the partition's order, which lateness depends on.
    """
    parts: list[pl.DataFrame] = []
    bad_msg: list[int] = []
    bad_row: list[int | None] = []
    bad_reason: list[str] = []
    bad_value: list[bytes | None] = []
    samples = 0
    i = 0
    n = len(values)
    while i < n:
        if frame_flags[i]:
            res = decode_frame(values[i], fields)
            if res.error is not None:
                bad_msg.append(i)
                bad_row.append(None)
                bad_reason.append(res.error)
                bad_value.append(values[i])
                samples += 1
            else:
                parts.append(res.rows)
                samples += res.samples
                bad_msg.extend([i] * len(res.bad_row))
                bad_row.extend(res.bad_row)
                bad_reason.extend(res.bad_reason)
                bad_value.extend(res.bad_json)
            i += 1
            continue
        j = i
        while j < n and not frame_flags[j]:
            j += 1
        dec = decode_values(values[i:j], fields)
        parts.append(dec.rows)
        samples += j - i
        for k, reason in zip(dec.bad_index, dec.bad_reason, strict=True):
            bad_msg.append(i + k)
            bad_row.append(None)
            bad_reason.append(reason)
            bad_value.append(values[i + k])
        i = j
    if not parts:
        rows = pl.DataFrame(schema=polars_schema(fields))
    else:
        rows = pl.concat(parts) if len(parts) > 1 else parts[0]
    return Decoded(rows, bad_msg, bad_row, bad_reason, bad_value, samples)
