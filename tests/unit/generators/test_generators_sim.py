"""The simulators without a broker: block-size independence, economics, scenarios, API."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from generators import GpuFleet, SimConfig, Simulation, load_scenario
from generators.asic_fleet import AsicParams
from generators.encode import encode_records
from generators.market import Market, MarketParams, day_shape
from hcp.errors import ConfigError

START_MS = 1_767_225_600_000
SITES = ["site-01", "site-02", "site-03"]


def _all(sim: Simulation, blocks: list[tuple[int, int]]) -> dict[str, list[tuple[bytes, str, int]]]:
    out: dict[str, list] = {}
    for first, n in blocks:
        for b in sim.blocks(first, n):
            out.setdefault(b.stream, []).extend(zip(b.keys, b.values, b.partitions, strict=True))
    return out


def test_messages_do_not_depend_on_block_size() -> None:
    config = SimConfig(seed=11, gpus=7, asics=9, duration_s=120, workload_rate=30)
    big = _all(Simulation(config), [(0, 120)])
    small = _all(Simulation(config), [(s, 1) for s in range(120)])
    mixed = _all(Simulation(config), [(0, 7), (7, 50), (57, 63)])
    # Per stream the order may differ only across streams; within one it must be identical.
    assert big == small == mixed
    assert len(big["gpu"]) == 7 * 120 and len(big["asic"]) == 9 * 120


def test_s21_economics_profitable_at_normal_power_prices_not_in_a_spike() -> None:
    p, m = AsicParams(), MarketParams()
    reward = m.subsidy_btc + m.fees_btc
    # SPEC section 2 revenue formula at the default market.
    revenue = p.hashrate_ths * 1e12 * 3600 * reward / (m.difficulty * 2**32) * m.btc_usd
    cost = lambda usd_mwh: p.nominal_power_w / 1e6 * usd_mwh  # noqa: E731
    assert 1.1e14 <= m.difficulty <= 1.5e14 and 90_000 <= m.btc_usd <= 110_000
    assert revenue > cost(60) * 1.5  # comfortably profitable over the normal 20-60 $/MWh
    assert revenue < cost(500) / 3  # clearly unprofitable in a spike
    assert cost(120) > revenue > cost(100)  # break-even near 115 $/MWh
    # The day shape keeps normal prices within about 20-60 $/MWh.
    lo, hi = m.electricity_base
    shapes = [day_shape(h / 4) for h in range(96)]
    assert lo * min(shapes) > 18 and hi * max(shapes) < 60


def test_demo_scenario_tells_its_story_within_twenty_minutes() -> None:
    demo = load_scenario("demo", START_MS, SITES)
    assert not demo.random_spikes
    spike = next(e for e in demo.events if e.type == "electricity")
    assert spike.site == "site-01" and spike.params["value"] >= 500
    assert 13 * 60 <= spike.end_s - spike.start_s <= 16 * 60 and spike.end_s < 1200
    cap = next(e for e in demo.events if e.type == "power_cap")
    assert cap.site == "site-02" and cap.end_s < 1200
    assert any(e.type == "workload_burst" for e in demo.events)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "meteor", "at": 1}, "'type' must be one of"),
        (
            {"type": "electricity", "site": "site-09", "from": 1, "to": 2, "value": 9},
            "not simulated",
        ),
        (
            {"type": "electricity", "site": "site-01", "from": 5, "to": 5, "value": 9},
            "after 'from'",
        ),
        ({"type": "btc_price", "at": 1}, "missing ['value']"),
        ({"type": "btc_price", "at": "yesterday", "value": 1}, "bad time"),
        ({"type": "power_cap", "site": "site-01", "from": 1, "to": 2}, "exactly one of"),
        ({"type": "gpu_state", "from": 1, "to": 2, "state": "on fire"}, "state must be"),
        ({"type": "workload_burst", "at": 1, "count": -3}, "'count' must be a number"),
    ],
)
def test_bad_scenarios_are_rejected_up_front(tmp_path, event: dict, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"events": [event]}))
    with pytest.raises(ConfigError) as info:
        load_scenario(path, START_MS, SITES)
    assert message in str(info.value) and "event 0" in str(info.value)


def test_missing_scenario_names_the_file() -> None:
    with pytest.raises(ConfigError, match="no-such-story"):
        load_scenario("no-such-story", START_MS, SITES)


def test_gpu_assign_pins_a_workload_until_its_end() -> None:
    fleet = GpuFleet(4, np.zeros(4, dtype=np.int16), np.random.default_rng(0), START_MS)
    amb = np.array([20.0])
    fleet.assign("gpu-00003", 'wl-"quoted"', START_MS + 5_000, mem_gb=30.0)
    for s in range(5):
        cols = fleet.step(START_MS + s * 1000, amb)
        assert cols["state"][2] == 1 and cols["workload_id"][2] == 'wl-"quoted"'
        assert 85 <= cols["util_pct"][2] <= 99 and abs(cols["mem_used_gb"][2] - 30) < 1
    cols = fleet.step(START_MS + 5_000, amb)
    assert cols["workload_id"][2] != 'wl-"quoted"'
    fleet.assign(0, "wl-2", START_MS + 60_000)
    fleet.release("gpu-00001")
    assert fleet.step(START_MS + 6_000, amb)["workload_id"][0] is None
    with pytest.raises(IndexError):
        fleet.assign("gpu-00005", "x", START_MS)


def test_assigned_workload_ids_are_escaped_in_json() -> None:
    sim = Simulation(
        SimConfig(seed=1, gpus=2, asics=0, duration_s=2, market=False, workloads=False)
    )
    sim.gpu.assign(1, 'wl-"q"\\', START_MS + 10_000)
    values = [json.loads(v) for b in sim.blocks(0, 2) for v in b.values]
    assert [v["workload_id"] for v in values if v["gpu_id"] == "gpu-00002"] == ['wl-"q"\\'] * 2


def test_encode_records_omits_absent_fields_and_keeps_types() -> None:
    schema = {"ts": pl.Int64, "kind": pl.String, "value": pl.Float64}
    out = encode_records([{"ts": 1, "value": 2.0}, {"ts": 2, "kind": "x", "value": 3.5}], schema)
    assert out == ['{"v":1,"ts":1,"value":2.0}', '{"v":1,"ts":2,"kind":"x","value":3.5}']


def test_market_spikes_are_rare_but_reach_thousands() -> None:
    market = Market(SITES, ["H100-SXM"], np.random.default_rng(5))
    values = []
    for s in range(0, 30 * 86_400, 300):  # a month of 5-minute prices
        values += [
            v for k, _, _, v in market.step(s, START_MS + s * 1000) if k == "electricity_usd_mwh"
        ]
    values = np.array(values)
    assert np.mean((values >= 20) & (values <= 60)) > 0.85
    assert 0 < np.mean(values > 250) < 0.05 and values.max() > 1000


def test_huge_fleet_is_encoded_in_bounded_chunks() -> None:
    sim = Simulation(SimConfig(seed=2, gpus=10_000, asics=300_000, duration_s=1))
    sizes = {}
    for batch in sim.blocks(0, 1):
        assert len(batch.values) <= sim.chunk_rows
        sizes[batch.stream] = sizes.get(batch.stream, 0) + len(batch.values)
    assert sizes["gpu"] == 10_000 and sizes["asic"] == 300_000
