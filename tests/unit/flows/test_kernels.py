"""Each Numba kernel against its plain-Python reference, on random inputs and edge cases."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.profitability import kernels as k
from flows.profitability.fleet import apply_power_caps
from hcp.schemas import ASIC_STATES
from tests.support import kernel_reference as ref

ASIC_STATE_CODE = {s: i for i, s in enumerate(ASIC_STATES)}

finite = st.floats(min_value=0, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=50), st.integers(-1, 10_000), st.integers(0, 500))
def test_late_mask_matches_reference(ts: list[int], start_max: int, lateness: int) -> None:
    late, new_max = k.late_mask(np.array(ts, dtype=np.int64), start_max, lateness)
    want, want_max = ref.late_flags(ts, start_max, lateness)
    assert late.tolist() == want
    assert new_max == want_max


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), finite, finite, finite, st.integers(0, 2)), max_size=40)
)
def test_accumulate_gpu_matches_plain_sums(rows: list[tuple]) -> None:
    acc = np.zeros((k.GPU_FIELDS_N, 5))
    if rows:
        dev, util, power, temp, state = (np.array(c) for c in zip(*rows, strict=True))
        k.accumulate_gpu(acc, dev.astype(np.int64), util, power, temp, state.astype(np.int8))
    for d in range(5):
        mine = [r for r in rows if r[0] == d]
        assert acc[k.G_COUNT, d] == len(mine)
        assert acc[k.G_POWER, d] == pytest.approx(sum(r[2] for r in mine))
        assert acc[k.G_BUSY, d] == sum(1 for r in mine if r[4] == k.GPU_BUSY)
        if mine:
            assert acc[k.G_LAST_STATE, d] == mine[-1][4]


def _asic_run(windows: list[dict], fee: float, hyst: float, dwell: int) -> list[tuple]:
    """Run the kernel window by window for one device and collect (action, reason, figures)."""
    action = np.zeros(1, np.int8)
    last = np.full(1, -1, np.int64)
    eh = np.full(1, 200.0)
    ep = np.full(1, 3500.0)
    out_rows = []
    for w in windows:
        out = np.zeros((8, 1))
        a = np.zeros(1, np.int8)
        r = np.zeros(1, np.int8)
        k.asic_decisions(
            np.array([w["hash"]]),
            np.array([w["power"]]),
            np.array([w["mhash"]]),
            np.array([w["mpower"]]),
            np.array([ASIC_STATE_CODE[w.get("state", "mining")]], np.int8),
            np.array([w["elec"]]),
            np.array([w.get("stale", False)]),
            w["btc"],
            w["diff"],
            w["reward"],
            fee,
            hyst,
            dwell,
            w["end"],
            action,
            last,
            eh,
            ep,
            out,
            a,
            r,
        )
        out_rows.append((k.ACTIONS[a[0]], k.REASONS[r[0]], out[:, 0].copy()))
    return out_rows


window_st = st.fixed_dictionaries(
    {
        # Subnormal inputs (1e-311 TH/s, 2e-308 USD/MWh) lose precision differently depending
        # on the order of multiplications, which the kernel and its twin need not share.
        "hash": st.floats(0, 400, allow_subnormal=False),
        "power": st.floats(0, 5000, allow_subnormal=False),
        "mhash": st.one_of(st.just(math.nan), st.floats(1, 400)),
        "mpower": st.floats(100, 5000),
        "state": st.sampled_from(ASIC_STATES),
        "elec": st.one_of(st.just(math.nan), st.floats(0, 3000, allow_subnormal=False)),
        "btc": st.floats(1000, 200_000),
        "diff": st.floats(1e12, 1e15),
        "reward": st.floats(0.5, 6.25),
        "stale": st.booleans(),
    }
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(window_st, min_size=1, max_size=12),
    st.floats(0, 0.05, allow_subnormal=False),
    st.floats(0, 0.2, allow_subnormal=False),
    st.integers(0, 5),
)
def test_asic_decisions_match_reference(
    windows: list[dict], fee: float, hyst: float, dwell_w: int
) -> None:
    for i, w in enumerate(windows):
        w["end"] = (i + 1) * 60_000
    dwell = dwell_w * 60_000
    got = _asic_run(windows, fee, hyst, dwell)
    state = {"action": "mine", "last_switch": -1, "exp_hash": 200.0, "exp_power": 3500.0}
    for w, (action, reason, figures) in zip(windows, got, strict=True):
        want_action, want_reason, f = ref.asic_step(
            state,
            w["hash"],
            w["power"],
            w["mhash"],
            w["mpower"],
            w["state"],
            w["elec"],
            w["btc"],
            w["diff"],
            w["reward"],
            fee,
            hyst,
            dwell,
            w["end"],
            w["stale"],
        )
        assert (action, reason) == (want_action, want_reason)
        assert figures[0] == pytest.approx(f["revenue"], rel=1e-9, abs=1e-12)
        assert figures[2] == pytest.approx(f["net"], rel=1e-9, abs=1e-9, nan_ok=True)
        # Score divides by revenue: a near-zero revenue (hashrate ~1e-300 TH/s) turns the
        # kernel's and the twin's different operation order into ~1e-8 relative differences.
        assert figures[3] == pytest.approx(f["score"], rel=1e-6, abs=1e-9, nan_ok=True)


def test_asic_dwell_and_hysteresis_story() -> None:
    """Cheap power, a spike, cheap again: curtail at once, resume only after the dwell time."""
    base = {
        "hash": 200.0,
        "power": 3500.0,
        "mhash": 200.0,
        "mpower": 3500.0,
        "btc": 100_000.0,
        "diff": 1.2e14,
        "reward": 3.125,
    }
    elec = [40, 40, 2000, 2000, 40, 40, 40, 40]
    windows = [dict(base, elec=e, end=(i + 1) * 60_000) for i, e in enumerate(elec)]
    got = [(a, r) for a, r, _ in _asic_run(windows, 0.0, 0.05, 3 * 60_000)]
    assert got[:3] == [("mine", "profitable"), ("mine", "profitable"), ("curtail", "unprofitable")]
    assert got[3] == ("curtail", "unprofitable")
    # Switched at window 3's end (180 s); resume allowed from 360 s, i.e. window 6.
    assert got[4] == ("curtail", "hysteresis_hold")
    assert got[5] == ("mine", "profitable")


def test_asic_stale_price_never_switches() -> None:
    """A spike seen only through a stale feed keeps the last action: no curtail, no resume."""
    base = {
        "hash": 200.0,
        "power": 3500.0,
        "mhash": 200.0,
        "mpower": 3500.0,
        "btc": 100_000.0,
        "diff": 1.2e14,
        "reward": 3.125,
    }
    elec = [40, 2000, 2000, 2000, 40, 40]
    stale = [False, True, False, False, True, False]
    windows = [
        dict(base, elec=e, stale=s, end=(i + 1) * 60_000)
        for i, (e, s) in enumerate(zip(elec, stale, strict=True))
    ]
    got = [(a, r) for a, r, _ in _asic_run(windows, 0.0, 0.05, 0)]
    assert got == [
        ("mine", "profitable"),
        ("mine", "stale_price"),
        ("curtail", "unprofitable"),
        ("curtail", "unprofitable"),
        ("curtail", "stale_price"),
        ("mine", "profitable"),
    ]


def test_asic_missing_prices_keep_state() -> None:
    w = {
        "hash": 200.0,
        "power": 3500.0,
        "mhash": 200.0,
        "mpower": 3500.0,
        "elec": math.nan,
        "btc": math.nan,
        "diff": 1.2e14,
        "reward": 3.125,
        "end": 60_000,
    }
    ((action, reason, figures),) = _asic_run([w], 0.0, 0.05, 0)
    assert (action, reason) == ("mine", "no_price")
    assert math.isnan(figures[0])


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0, 1),
    finite,
    st.sampled_from(["busy", "idle", "down"]),
    st.one_of(st.just(math.nan), st.floats(0, 10)),
    st.one_of(st.just(math.nan), st.floats(0, 5000)),
    st.booleans(),
)
def test_gpu_decisions_match_reference(
    busy: float, power: float, state: str, spot: float, elec: float, stale: bool
) -> None:
    out = np.zeros((8, 1))
    a = np.zeros(1, np.int8)
    r = np.zeros(1, np.int8)
    code = {"busy": k.GPU_BUSY, "idle": k.GPU_IDLE, "down": k.GPU_DOWN}[state]
    k.gpu_decisions(
        np.array([busy]),
        np.array([power]),
        np.array([code], np.int8),
        np.array([spot]),
        np.array([elec]),
        np.array([stale]),
        700.0,
        out,
        a,
        r,
    )
    action, reason, revenue, cost = ref.gpu_step(busy, power, state, spot, elec, 700.0, stale)
    assert (k.ACTIONS[a[0]], k.REASONS[r[0]]) == (action, reason)
    assert out[0, 0] == pytest.approx(revenue, nan_ok=True)
    assert out[1, 0] == pytest.approx(cost, nan_ok=True)


def test_score_edge_cases() -> None:
    out = np.zeros((8, 3))
    a = np.zeros(3, np.int8)
    r = np.zeros(3, np.int8)
    # zero revenue with cost -> -100; zero revenue and zero cost -> 0; revenue -> margin.
    k.gpu_decisions(
        np.array([0.0, 0.0, 1.0]),
        np.array([100.0, 0.0, 0.0]),
        np.array([1, 1, 0], np.int8),
        np.array([2.0, 2.0, 2.0]),
        np.array([50.0, 50.0, 50.0]),
        np.zeros(3, np.bool_),
        700.0,
        out,
        a,
        r,
    )
    assert out[3].tolist() == [-100.0, 0.0, 100.0]


device_st = st.fixed_dictionaries(
    {
        "site": st.sampled_from(["s1", "s2", "s3"]),
        "running": st.booleans(),
        "power": st.sampled_from([700.0, 3500.0, 3300.0, 0.0]),
        "net": st.floats(-5, 5),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(device_st, max_size=30),
    st.dictionaries(st.sampled_from(["s1", "s2", "s3"]), st.floats(0, 0.03)),
)
def test_power_cap_matches_reference(devices: list[dict], caps_mw: dict[str, float]) -> None:
    for i, d in enumerate(devices):
        d["id"] = f"dev-{i:03d}"
        d["cap_w"] = caps_mw[d["site"]] * 1e6 if d["site"] in caps_mw else None
    want = ref.power_cap(devices)
    df = pl.DataFrame(
        {
            "device_id": [d["id"] for d in devices],
            "device_type": ["asic" if d["power"] >= 3000 else "gpu" for d in devices],
            "site": [d["site"] for d in devices],
            "action": [
                ("mine" if d["power"] >= 3000 else "offer") if d["running"] else "curtail"
                for d in devices
            ],
            "reason": ["profitable"] * len(devices),
            "expected_power_w": [d["power"] for d in devices],
            "expected_net_usd_hr": [d["net"] for d in devices],
            "power_cap_mw": [caps_mw.get(d["site"]) for d in devices],
        },
        schema_overrides={
            "power_cap_mw": pl.Float64,
            "expected_net_usd_hr": pl.Float64,
            "expected_power_w": pl.Float64,
        },
    )
    result = apply_power_caps(df)
    kept = set(result.filter(pl.col("action").is_in(["mine", "offer"]))["device_id"].to_list())
    assert kept == want
    capped = result.filter(pl.col("reason") == "power_cap")
    assert set(capped["device_id"].to_list()) == {d["id"] for d in devices if d["running"]} - want
    for site, cap in caps_mw.items():
        running = result.filter(
            (pl.col("site") == site) & pl.col("action").is_in(["mine", "offer"])
        )
        assert running["expected_power_w"].sum() <= cap * 1e6 + 1e-6


def test_power_cap_equal_scores_break_ties_by_device_id() -> None:
    df = pl.DataFrame(
        {
            "device_id": ["b", "a", "c"],
            "device_type": ["asic"] * 3,
            "site": ["s"] * 3,
            "action": ["mine"] * 3,
            "reason": ["profitable"] * 3,
            "expected_power_w": [3500.0] * 3,
            "expected_net_usd_hr": [1.0] * 3,
            "power_cap_mw": [0.0071] * 3,
        }
    )
    out = apply_power_caps(df)
    assert out["device_id"].to_list() == ["a", "b", "c"]
    assert out["action"].to_list() == ["mine", "mine", "curtail"]


def test_empty_window_inputs() -> None:
    acc = np.zeros((k.ASIC_FIELDS_N, 0))
    e = np.zeros(0)
    k.accumulate_asic(acc, np.zeros(0, np.int64), e, e, e, e, e, e, np.zeros(0, np.int8))
    late, m = k.late_mask(np.zeros(0, np.int64), 5, 0)
    assert late.shape == (0,) and m == 5
    assert apply_power_caps(pl.DataFrame()).height == 0


def test_state_codes_are_the_contract_positions_the_shards_encode() -> None:
    from hcp.schemas import ASIC_STATES, GPU_STATES

    assert [GPU_STATES[c] for c in (k.GPU_BUSY, k.GPU_IDLE, k.GPU_DOWN)] == ["busy", "idle", "down"]
    asic = (k.ASIC_MINING, k.ASIC_CURTAILED, k.ASIC_FAULT)
    assert [ASIC_STATES[c] for c in asic] == ["mining", "curtailed", "fault"]
