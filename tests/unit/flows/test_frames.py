"""Frame decoding (SPEC 1b) without a broker: the same verdicts as JSON, row by row."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa

from flows.decode import decode_values
from flows.frames import BAD_FRAME, decode_frame, decode_messages
from hcp.frames import encode_frame, encode_frames, frame_schema, is_frame
from hcp.schemas import ASIC_FIELDS, GPU_FIELDS
from tests.support.flowkit import T0, asic_msg, gpu_msg
from tests.support.framekit import samples_frame

SCHEMA = frame_schema(GPU_FIELDS)


def _gpus(n: int, **over: object) -> list[dict]:
    return [gpu_msg(f"gpu-{i}", T0 + i, **over) for i in range(n)]


def test_a_frame_decodes_to_the_rows_its_json_twins_give() -> None:
    msgs = _gpus(5) + _gpus(2, state="idle")
    frame = decode_frame(encode_frame(samples_frame("gpu", msgs), SCHEMA), GPU_FIELDS)
    as_json = decode_values([json.dumps(m).encode() for m in msgs], GPU_FIELDS)
    assert frame.error is None and frame.samples == 7
    assert frame.rows.equals(as_json.rows)


def test_bad_rows_get_the_json_reason_and_their_row_index_across_frames() -> None:
    rows = samples_frame("gpu", _gpus(6)).with_columns(
        pl.Series("util_pct", [1.0, 101.0, 1.0, 1.0, float("nan"), 1.0]),
        pl.Series("state", ["busy", "busy", "gone", "busy", "busy", "busy"]),
    )
    first, second = encode_frame(rows.head(3), SCHEMA), encode_frame(rows.tail(3), SCHEMA)
    json_bad = b'{"v": 1}'
    got = decode_messages([first, json_bad, second, b"junk"], [True, False, True, True], GPU_FIELDS)
    assert list(zip(got.bad_msg, got.bad_row, got.bad_reason, strict=True)) == [
        (0, 1, "out_of_range:util_pct"),
        (0, 2, "out_of_range:state"),
        (1, None, "missing_field:ts"),
        (2, 1, "out_of_range:util_pct"),
        (3, None, BAD_FRAME),
    ]
    assert got.rows["gpu_id"].to_list() == ["gpu-0", "gpu-3", "gpu-5"]
    assert json.loads(got.bad_value[1])["state"] == "gone"  # the row as JSON, v first
    assert list(json.loads(got.bad_value[0])) == [f.name for f in GPU_FIELDS]
    assert got.samples == 6 + 1 + 1


def test_frames_whose_columns_are_not_the_topics_are_rejected_whole() -> None:
    rows = samples_frame("gpu", _gpus(3))
    no_version = SCHEMA.remove_metadata()
    wrong_type = SCHEMA.set(SCHEMA.get_field_index("util_pct"), pa.field("util_pct", pa.int64()))
    extra = SCHEMA.append(pa.field("colour", pa.string()))
    bad = [
        encode_frame(rows, no_version),
        encode_frame(rows.with_columns(pl.col("util_pct").cast(pl.Int64)), wrong_type),
        encode_frame(rows.with_columns(pl.lit("red").alias("colour")), extra),
        encode_frame(samples_frame("asic", [asic_msg("a", T0)]), frame_schema(ASIC_FIELDS)),
        b"",
    ]
    for value in bad:
        assert decode_frame(value, GPU_FIELDS).error == BAD_FRAME


def test_an_absent_nullable_column_is_null_and_large_frames_split_under_the_limit() -> None:
    rows = samples_frame("gpu", _gpus(4, state="idle")).drop("workload_id")
    schema = SCHEMA.remove(SCHEMA.get_field_index("workload_id"))
    got = decode_frame(encode_frame(rows, schema), GPU_FIELDS)
    assert got.error is None and got.rows["workload_id"].null_count() == 4
    big = samples_frame("gpu", _gpus(20_000))
    parts = encode_frames(big, SCHEMA, max_bytes=200_000)
    assert len(parts) > 1 and max(map(len, parts)) <= 200_000
    back = decode_messages(parts, [True] * len(parts), GPU_FIELDS)
    assert back.rows.drop("v").equals(big) and back.bad_msg == []


def test_the_content_type_header_marks_a_frame() -> None:
    assert is_frame([("content-type", b"application/vnd.apache.arrow.stream")])
    assert is_frame([("Content-Type", b"application/vnd.apache.arrow.stream; v=1")])
    assert not is_frame([("content-type", b"application/json")])
    assert not is_frame(None) and not is_frame([])
