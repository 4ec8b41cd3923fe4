"""Column-wise JSON encoding of message batches.

Values are built by polars in one call per batch (``struct.json_encode``), never with a
``json.dumps`` per message: ints stay JSON integers, floats are always written with a
fraction or exponent (``85.0``), nulls become ``null`` and strings are escaped by the
encoder. The only per-message Python work left in the generator is the produce call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from hcp.schemas import SCHEMA_VERSION

__all__ = ["encode_frame", "encode_records"]

_VERSION = pl.lit(SCHEMA_VERSION, dtype=pl.Int64).alias("v")


def encode_frame(frame: pl.DataFrame) -> list[str]:
    """One JSON object per row, fields in column order, with ``"v":1`` first."""
    return (
        frame.select(pl.struct(_VERSION, pl.all()).struct.json_encode().alias("json"))
        .to_series()
        .to_list()
    )


def encode_records(
    records: Sequence[dict[str, Any]], schema: dict[str, type[pl.DataType] | pl.DataType]
) -> list[str]:
    """Encode low-volume messages (prices, workload requests) whose optional fields vary.

    Records are grouped by the set of fields they carry, so an absent optional field is
    absent from the JSON (not ``null``); each group is encoded column-wise and the values
    come back in the records' order.
    """
    out: list[str] = [""] * len(records)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(tuple(rec), []).append(i)
    for fields, rows in groups.items():
        sub = {name: schema[name] for name in fields}
        frame = pl.DataFrame(
            {name: [records[i][name] for i in rows] for name in fields}, schema=sub
        )
        for i, value in zip(rows, encode_frame(frame), strict=True):
            out[i] = value
    return out
