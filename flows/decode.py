"""Decode a whole Kafka fetch of JSON values into one polars DataFrame, or dead letters.

The fast path hands the batch to polars' NDJSON reader at once and validates it with
vectorised expressions. polars is lenient where SPEC section 1 is strict (it turns an
empty value into no row, and fails the whole batch on one wrong type), so a batch that
the fast path cannot vouch for row by row goes through the strict per-message path
instead. Bad input is rare; the per-message path only ever sees the batches that carry it.

Both paths report the same reason for the same message: the first failing field in
contract order, checked as missing, then wrong type, then out of range.
"""

from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import dataclass

import polars as pl

from hcp.schemas import SCHEMA_VERSION, SITE_SCOPED_KINDS, Field, polars_schema

__all__ = [
    "MAX_VALUE_BYTES",
    "DecodeResult",
    "check_message",
    "decode_values",
    "row_reasons",
]

# Larger values are dead-lettered as `oversized`: a telemetry message is ~250 bytes.
MAX_VALUE_BYTES = 64 * 1024


@dataclass(frozen=True)
class DecodeResult:
    """Decoded rows, in input order, and the input positions that were rejected."""

    rows: pl.DataFrame
    bad_index: list[int]
    bad_reason: list[str]
    # For each row of `rows`, its position in the input batch.
    row_index: pl.Series | None = None
    # Decoded message by message: several times the cost of the batch reader.
    strict: bool = False


def decode_values(values: list[bytes | None], fields: tuple[Field, ...]) -> DecodeResult:
    """Decode and validate a batch of message values against a topic's field specs."""
    if not values:
        return DecodeResult(pl.DataFrame(schema=polars_schema(fields)), [], [])
    fast = _fast_path(values, fields)
    if fast is not None:
        return fast
    return _slow_path(values, fields)


def _fast_path(values: list[bytes | None], fields: tuple[Field, ...]) -> DecodeResult | None:
    try:
        buf = b"\n".join(values)  # type: ignore[arg-type]  # a None value raises TypeError
    except TypeError:
        return None
    n = len(values)
    # One row per message only if no value is empty, none spans lines, none is huge.
    if buf.count(b"\n") != n - 1 or b"\n\n" in buf or buf[:1] in (b"", b"\n") or buf[-1:] == b"\n":
        return None
    if len(buf) > MAX_VALUE_BYTES and max(map(len, values)) > MAX_VALUE_BYTES:  # type: ignore[arg-type]
        return None
    try:
        df = pl.read_ndjson(io.BytesIO(buf), schema=polars_schema(fields))
    except Exception:  # any parse failure sends the batch to the strict path
        return None
    if df.height != n:
        return None
    # The byte scan spares the column check for batches that hold no such token at all.
    if (b"true" in buf or b"false" in buf) and df.select(_cached_bool_text_expr(fields)).item():
        return None
    reason = _cached_reason_expr(fields)
    checked = df.with_columns(reason.alias("_reason"), pl.int_range(pl.len()).alias("_i"))
    if checked["_reason"].null_count() == n:
        return DecodeResult(df, [], [])
    bad = checked.filter(pl.col("_reason").is_not_null())
    good = checked.filter(pl.col("_reason").is_null())
    return DecodeResult(
        good.drop("_reason", "_i"),
        bad["_i"].to_list(),
        bad["_reason"].to_list(),
        good["_i"],
    )


def row_reasons(df: pl.DataFrame, fields: tuple[Field, ...]) -> pl.Series:
    """Each row's first failing check in contract order, null for a valid row.

    The same expression judges JSON rows here and frame rows in :mod:`flows.frames`, so a
    sample gets the same verdict whichever encoding carried it.
    """
    return df.select(_cached_reason_expr(fields).alias("_reason")).to_series()


@functools.cache
def _cached_bool_text_expr(fields: tuple[Field, ...]) -> pl.Expr:
    """Whether any string field reads "true" or "false".

    polars' NDJSON reader turns a JSON boolean given for a string into that text, which
    the strict path rejects as ``wrong_type``. A real "true" string is rare enough that
    the batch can go to the strict path to tell the two apart.
    """
    strings = [pl.col(f.name) for f in fields if f.dtype == pl.String]
    if not strings:
        return pl.lit(False)
    return pl.any_horizontal([c.is_in(["true", "false"]).any() for c in strings])


@functools.cache
def _cached_reason_expr(fields: tuple[Field, ...]) -> pl.Expr:
    return _reason_expr(fields)


def _reason_expr(fields: tuple[Field, ...]) -> pl.Expr:
    """First failing check per row, in contract order; null when the row is valid."""
    checks: list[pl.Expr] = []
    names = {f.name for f in fields}
    for f in fields:
        col = pl.col(f.name)
        if not f.nullable:
            missing = col.is_null()
            if f.submit_only:
                missing = missing & (pl.col("op") != "cancel").fill_null(True)
            checks.append(pl.when(missing).then(pl.lit(f"missing_field:{f.name}")))
        if f.dtype == pl.String:
            # polars renders a nested object or array given for a string as its JSON text.
            checks.append(
                pl.when(col.str.starts_with("{") | col.str.starts_with("[")).then(
                    pl.lit(f"wrong_type:{f.name}")
                )
            )
        if f.name == "v":
            checks.append(pl.when(col != SCHEMA_VERSION).then(pl.lit("unsupported_version")))
            continue
        bad = _range_violation(col, f)
        if bad is not None:
            checks.append(pl.when(bad).then(pl.lit(f"out_of_range:{f.name}")))
    if "kind" in names and "value" in names and "site" in names:  # market prices
        checks.append(_price_scope_check())
    return pl.coalesce(checks)


def _range_violation(col: pl.Expr, f: Field) -> pl.Expr | None:
    parts: list[pl.Expr] = []
    if f.values is not None:
        parts.append(~col.is_in(list(f.values)))
    if f.lo is not None:
        parts.append(col < f.lo)
    if f.hi is not None:
        parts.append(col > f.hi)
    if f.dtype == pl.Float64:
        parts.append(col.is_nan() | col.is_infinite())
    if not parts:
        return None
    expr = parts[0]
    for p in parts[1:]:
        expr = expr | p
    return col.is_not_null() & expr


def _price_scope_check() -> pl.Expr:
    kind = pl.col("kind")
    return (
        pl.when(kind.is_in(list(SITE_SCOPED_KINDS)) & pl.col("site").is_null())
        .then(pl.lit("missing_field:site"))
        .when((kind == "gpu_spot_usd_hr") & pl.col("model").is_null())
        .then(pl.lit("missing_field:model"))
    )


# --- strict per-message path --------------------------------------------------------


def _slow_path(values: list[bytes | None], fields: tuple[Field, ...]) -> DecodeResult:
    good: list[dict[str, object]] = []
    good_index: list[int] = []
    bad_index: list[int] = []
    bad_reason: list[str] = []
    for i, raw in enumerate(values):
        obj, reason = check_message(raw, fields)
        if reason is None:
            good.append(obj)  # type: ignore[arg-type]
            good_index.append(i)
        else:
            bad_index.append(i)
            bad_reason.append(reason)
    schema = polars_schema(fields)
    rows = pl.DataFrame(
        {f.name: [_as_column_value(g.get(f.name), f) for g in good] for f in fields},
        schema=schema,
    )
    return DecodeResult(
        rows, bad_index, bad_reason, pl.Series("_i", good_index, pl.Int64), strict=True
    )


def check_message(raw: bytes | None, fields: tuple[Field, ...]) -> tuple[object, str | None]:
    """One message, strictly: ``(parsed object, None)`` or ``(None, reason)``."""
    if raw is None:
        return None, "null_value"
    if len(raw) > MAX_VALUE_BYTES:
        return None, "oversized"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not_utf8"
    try:
        obj = json.loads(text)
    except ValueError:
        return None, "not_json"
    if not isinstance(obj, dict):
        return None, "not_object"
    for f in fields:
        value = obj.get(f.name)
        if value is None:
            if f.nullable or (f.submit_only and obj.get("op") == "cancel"):
                continue
            return None, f"missing_field:{f.name}"
        if not _type_ok(value, f):
            return None, f"wrong_type:{f.name}"
        if f.name == "v":
            if value != SCHEMA_VERSION:
                return None, "unsupported_version"
            continue
        if _out_of_range(value, f):
            return None, f"out_of_range:{f.name}"
    if "kind" in obj and "value" in obj and any(f.name == "site" for f in fields):
        if obj["kind"] in SITE_SCOPED_KINDS and obj.get("site") is None:
            return None, "missing_field:site"
        if obj["kind"] == "gpu_spot_usd_hr" and obj.get("model") is None:
            return None, "missing_field:model"
    return obj, None


def _as_column_value(value: object, f: Field) -> object:
    if value is not None and f.dtype == pl.String and not isinstance(value, str):
        return json.dumps(value)
    if value is not None and f.dtype == pl.Float64:
        return float(value)  # type: ignore[arg-type]
    return value


def _type_ok(value: object, f: Field) -> bool:
    if f.dtype == pl.Boolean:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if f.dtype == pl.String:
        # Numbers are accepted as their text, as the fast path does; objects are not.
        return isinstance(value, str | int | float)
    if f.dtype == pl.Int64:
        return isinstance(value, int) and -(2**63) <= value < 2**63
    if f.dtype == pl.Float64:
        return isinstance(value, int | float)
    return True


def _out_of_range(value: object, f: Field) -> bool:
    if f.values is not None and str(value) not in f.values:
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        if f.lo is not None and value < f.lo:
            return True
        if f.hi is not None and value > f.hi:
            return True
    return False
