"""A faulted ASIC is curtailed (device_fault) and takes no power-cap budget."""

from __future__ import annotations

import polars as pl

from hcp.topics import Topics
from tests.support.flowkit import T0, asic_msg, make_topics, price_msg, produce, run_once


def test_a_faulted_asic_under_a_power_cap(bootstrap: str, topics: Topics) -> None:
    make_topics(bootstrap, topics)
    asics, prices = [], []
    for s in range(0, 3 * 60, 10):
        ts = T0 + s * 1000
        # First by device id, so before the fix it took the cap's budget on the tie.
        asics.append(asic_msg("asic-30", ts, "site-03", state="fault", hashrate_ths=0.0,
                              power_w=100.0, shares_accepted=0, shares_rejected=0))
        asics.append(asic_msg("asic-31", ts, "site-03"))
        asics.append(asic_msg("asic-32", ts, "site-03"))
        if s % 30 == 0:
            prices += [
                price_msg("btc_usd", 100_000.0, ts),
                price_msg("difficulty", 1.2e14, ts),
                price_msg("electricity_usd_mwh", 40.0, ts, site="site-03"),
                price_msg("power_cap_mw", 0.0075, ts, site="site-03"),  # room for two miners
            ]
    produce(bootstrap, topics.asic, asics, "asic_id")
    produce(bootstrap, topics.prices, prices, "kind")
    recs = run_once(bootstrap, topics).frame("recs").sort("window_start", "device_id")
    got = recs.group_by("device_id").agg(pl.col("action").unique(), pl.col("reason").unique())
    by_id = {r["device_id"]: (r["action"], r["reason"]) for r in got.iter_rows(named=True)}
    assert by_id["asic-30"] == (["curtail"], ["device_fault"])
    assert by_id["asic-31"] == (["mine"], ["profitable"])
    assert by_id["asic-32"] == (["mine"], ["profitable"])
    assert recs.height == 3 * 3  # windows 0-2 (--once closes the last), three ASICs each
