"""Telemetry frames (SPEC section 1b): the Arrow IPC stream encoding of many samples.

The contract's side of the encoding, shared by producers (``hcp generate --encoding
frames``) and the job's decoder (:mod:`flows.frames`): the header that marks a frame, the
Arrow schema of each telemetry topic, and how a producer keeps every message under
Kafka's default 1 MiB limit.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from hcp.schemas import SCHEMA_VERSION, Field

__all__ = [
    "ARROW_STREAM",
    "CONTENT_TYPE",
    "FRAME_HEADERS",
    "MAX_FRAME_BYTES",
    "encode_frame",
    "encode_frames",
    "frame_schema",
    "is_frame",
]

CONTENT_TYPE = "content-type"
ARROW_STREAM = b"application/vnd.apache.arrow.stream"
FRAME_HEADERS = [(CONTENT_TYPE, ARROW_STREAM)]
# Under Kafka's default message.max.bytes (1 MiB) with room for the record overhead.
MAX_FRAME_BYTES = 1_000_000

_ARROW_TYPES = {pl.String: pa.string(), pl.Int64: pa.int64(), pl.Float64: pa.float64()}


def is_frame(headers: list[tuple[str, bytes]] | None) -> bool:
    """Whether a message's headers mark it as an Arrow IPC stream frame."""
    if not headers:
        return False
    for name, value in headers:
        if name.lower() == CONTENT_TYPE and value is not None:
            return bytes(value).split(b";", 1)[0].strip().lower() == ARROW_STREAM
    return False


def frame_schema(fields: tuple[Field, ...]) -> pa.Schema:
    """The Arrow schema a producer writes for a topic: every field but ``v``, ``v`` = 1."""
    return pa.schema(
        [
            pa.field(f.name, _ARROW_TYPES[f.dtype], nullable=f.nullable)
            for f in fields
            if f.name != "v"
        ],
        metadata={"v": str(SCHEMA_VERSION)},
    )


def encode_frame(rows: pl.DataFrame, schema: pa.Schema) -> bytes:
    """``rows`` (the topic's columns; ``v`` is ignored) as one Arrow IPC stream."""
    table = rows.select(schema.names).to_arrow().cast(schema)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def encode_frames(
    rows: pl.DataFrame, schema: pa.Schema, max_bytes: int = MAX_FRAME_BYTES
) -> list[bytes]:
    """``rows`` as frames in row order, each under ``max_bytes``, split into even parts."""
    whole = encode_frame(rows, schema)
    if len(whole) <= max_bytes or rows.height <= 1:
        return [whole]
    parts = -(-len(whole) // (max_bytes * 9 // 10))  # aim a tenth under the limit
    size = -(-rows.height // parts)
    out: list[bytes] = []
    for lo in range(0, rows.height, size):
        out.extend(encode_frames(rows.slice(lo, size), schema, max_bytes))
    return out
