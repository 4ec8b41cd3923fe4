"""Expected figures come from whole mining windows, so a miner going to sleep stays asleep.

Three S21s share a 7.5 kW cap: two fit, the third (the least hashrate) is capped. It obeys:
its next window opens with one sample taken while it ramps down (still hashing, 490 W) and
then sleeps. Learning 490 W from that window would fit it under the cap and wake it into a
budget it does not have; a mining window is one mined from end to end.
"""

from __future__ import annotations

import uuid

import polars as pl

from hcp.topics import Topics
from tests.support.flowkit import T0, asic_msg, make_topics, price_msg, produce, run_once

MIN = 60_000
HASH = {"asic-1": 210.0, "asic-2": 205.0, "asic-3": 200.0}


def _asic_samples() -> list[dict]:
    out = []
    for s in range(0, 4 * 60, 10):
        ts = T0 + s * 1000
        for device, ths in HASH.items():
            msg = asic_msg(device, ts, hashrate_ths=ths)
            if device == "asic-3" and s >= 60:
                ramping = s == 60
                msg |= {
                    "state": "mining" if ramping else "curtailed",
                    "hashrate_ths": 28.0 if ramping else 0.0,
                    "power_w": 490.0 if ramping else 15.0,
                }
            if device == "asic-3" and s >= 180:  # woken for the last window, mined throughout
                msg |= {"state": "mining", "hashrate_ths": 200.0, "power_w": 3600.0}
            out.append(msg)
    return out


def _prices() -> list[dict]:
    return [
        price_msg("btc_usd", 100_000.0, T0),
        price_msg("difficulty", 1.2e14, T0),
        price_msg("electricity_usd_mwh", 40.0, T0, site="site-01"),
        price_msg("power_cap_mw", 0.0075, T0, site="site-01"),
    ]


def test_a_window_that_switched_does_not_teach_expected_power(bootstrap: str) -> None:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    make_topics(bootstrap, topics)
    produce(bootstrap, topics.asic, _asic_samples(), "asic_id")
    produce(bootstrap, topics.prices, _prices(), "kind")
    recs = run_once(bootstrap, topics, dwell_s=0, hysteresis=0.0, lateness_s=0).frame("recs")

    third = recs.filter(pl.col("device_id") == "asic-3").sort("window_start")
    assert third["action"].to_list() == ["curtail"] * 4
    assert third["reason"].to_list() == ["power_cap"] * 4
    # Windows 1 and 2 (the ramp and the sleep) keep the nominal draw learnt in window 0;
    # window 3, mined end to end at 3600 W, is learnt.
    assert third["expected_power_w"].to_list() == [3500.0, 3500.0, 3500.0, 3600.0]
    running = recs.filter(pl.col("action") == "mine")
    for _, window in running.group_by("window_start"):
        assert sorted(window["device_id"]) == ["asic-1", "asic-2"]
        assert window["expected_power_w"].sum() <= 7500.0
