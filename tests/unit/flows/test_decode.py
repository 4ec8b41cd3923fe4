"""The batch decoder: valid rows in order, every kind of bad input with its reason."""

from __future__ import annotations

import json
import random

import pytest

from flows.decode import MAX_VALUE_BYTES, decode_values
from hcp.schemas import ASIC_FIELDS, PRICE_FIELDS


def asic(i: int, **over: object) -> dict:
    msg = {
        "v": 1,
        "ts": 1_767_225_600_000 + i,
        "asic_id": f"asic-{i}",
        "site": "site-01",
        "model": "S21",
        "state": "mining",
        "hashrate_ths": 200.5,
        "power_w": 3500.0,
        "temp_c": 61.0,
        "shares_accepted": 12,
        "shares_rejected": 1,
        "hw_errors": 0,
    }
    msg.update(over)
    return msg


def enc(msg: object) -> bytes:
    return json.dumps(msg).encode()


def without(msg: dict, field: str) -> dict:
    return {k: v for k, v in msg.items() if k != field}


BAD = [
    (b"not json", "not_json"),
    (b"", "not_json"),
    (None, "null_value"),
    (b"[1, 2]", "not_object"),
    (b"42", "not_object"),
    (b'{"v": 1, "ts": \xff}', "not_utf8"),
    (enc(without(asic(1), "power_w")), "missing_field:power_w"),
    (enc(asic(1, hashrate_ths="fast")), "wrong_type:hashrate_ths"),
    (enc(asic(1, shares_accepted=1.5)), "wrong_type:shares_accepted"),
    (enc(asic(1, v=True)), "wrong_type:v"),
    (enc(asic(1, asic_id={"nested": 1})), "wrong_type:asic_id"),
    # polars reads a boolean given for a string as "true": the fuzzer found these accepted.
    (enc(asic(1, asic_id=True)), "wrong_type:asic_id"),
    (enc(asic(1, site=False)), "wrong_type:site"),
    (enc(asic(1, state=True)), "wrong_type:state"),
    (enc(asic(1, temp_c=999.0)), "out_of_range:temp_c"),
    (enc(asic(1, state="dancing")), "out_of_range:state"),
    (enc(asic(1, shares_rejected=-1)), "out_of_range:shares_rejected"),
    (enc(asic(1, v=2)), "unsupported_version"),
    (b'{"pad": "' + b"x" * MAX_VALUE_BYTES + b'"}', "oversized"),
    (enc(asic(1, ts=2**70)), "wrong_type:ts"),
    (b'{"v": 1,\n "ts": 5}', "missing_field:asic_id"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD, ids=[r for _, r in BAD])
def test_bad_message_gets_its_reason_and_neighbours_survive(raw: bytes | None, reason: str) -> None:
    values = [enc(asic(0)), raw, enc(asic(2))]
    result = decode_values(values, ASIC_FIELDS)
    assert result.bad_index == [1]
    assert result.bad_reason == [reason]
    assert result.rows["asic_id"].to_list() == ["asic-0", "asic-2"]


def test_valid_batch_takes_the_fast_path_in_order() -> None:
    values = [enc(asic(i)) for i in range(1000)]
    result = decode_values(values, ASIC_FIELDS)
    assert result.bad_index == []
    assert result.row_index is None  # fast path: every row kept, no re-indexing
    assert result.rows["ts"].to_list() == [asic(i)["ts"] for i in range(1000)]
    assert result.rows["hashrate_ths"][0] == 200.5


def test_range_errors_are_found_without_leaving_the_fast_path() -> None:
    values = [enc(asic(0)), enc(asic(1, util=1, power_w=-5.0)), enc(without(asic(2), "site"))]
    result = decode_values(values, ASIC_FIELDS)
    assert result.bad_reason == ["out_of_range:power_w", "missing_field:site"]
    assert result.row_index is not None and result.row_index.to_list() == [0]


def test_fast_and_strict_paths_agree_on_random_mixtures() -> None:
    rng = random.Random(7)
    for _ in range(20):
        values = [enc(asic(i)) for i in range(50)]
        picks = rng.sample(range(50), 5)
        for p in picks:
            values[p] = rng.choice([raw for raw, _ in BAD])
        result = decode_values(values, ASIC_FIELDS)
        assert sorted(result.bad_index) == sorted(picks)
        assert result.rows.height == 45
        singles = [decode_values([v], ASIC_FIELDS) for v in values]
        for i, reason in zip(result.bad_index, result.bad_reason, strict=True):
            assert singles[i].bad_reason == [reason]


def test_a_true_string_is_still_a_valid_string() -> None:
    result = decode_values([enc(asic(0)), enc(asic(1, site="true"))], ASIC_FIELDS)
    assert result.bad_index == []
    assert result.rows["site"].to_list() == ["site-01", "true"]


def test_price_scope_is_required_for_scoped_kinds() -> None:
    values = [
        enc({"v": 1, "ts": 1, "kind": "electricity_usd_mwh", "value": 40.0}),
        enc({"v": 1, "ts": 1, "kind": "gpu_spot_usd_hr", "value": 2.0}),
        enc({"v": 1, "ts": 1, "kind": "btc_usd", "value": 1e5}),
        enc({"v": 1, "ts": 1, "kind": "gold", "value": 1.0}),
    ]
    result = decode_values(values, PRICE_FIELDS)
    assert result.bad_reason == ["missing_field:site", "missing_field:model", "out_of_range:kind"]
    assert result.rows["kind"].to_list() == ["btc_usd"]
