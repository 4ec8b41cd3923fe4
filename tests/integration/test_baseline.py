"""The per-event Bytewax baseline decides exactly as HCP does, on the same topics."""

from __future__ import annotations

import uuid
from pathlib import Path

import polars as pl
import pytest

from hcp.topics import Topics
from tests.integration.test_flow_e2e import story_messages
from tests.support.flowkit import make_topics, produce, run_once
from tools.bench.baseline.flow import build_baseline_flow
from tools.bench.baseline.logic import BaselineConfig, check_message
from tools.bench.hooks import same_recommendations


def _baseline(bootstrap: str, topics: Topics, out: Path, **kw: object) -> tuple[pl.DataFrame, dict]:
    from bytewax.testing import run_main

    stats: dict = {}
    run_main(build_baseline_flow(bootstrap, topics, out, stats=stats, **kw))  # type: ignore[arg-type]
    return pl.read_parquet(out), stats


def test_story_same_recommendations_as_hcp(bootstrap: str, tmp_path: Path) -> None:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    make_topics(bootstrap, topics)
    asics, gpus, prices = story_messages()
    produce(bootstrap, topics.asic, asics, "asic_id")
    produce(bootstrap, topics.gpu, [*gpus, b"{not json", b'{"v": 1}'], "gpu_id")
    produce(bootstrap, topics.prices, prices, "kind")
    hcp = run_once(bootstrap, topics, dwell_s=300, lateness_s=0).frame("recs")
    base, stats = _baseline(bootstrap, topics, tmp_path / "recs.parquet",
                            cfg=BaselineConfig(dwell_ms=300_000), lateness_s=0)
    assert stats["bad_input_gpu"] == 2
    assert base.height == hcp.height == 12 * 9
    # The story exercises every kind of decision: the spike, the dwell and the power cap.
    assert {"curtail", "mine", "serve", "offer"} <= set(base["action"])
    assert {"power_cap", "hysteresis_hold", "unprofitable"} <= set(base["reason"])
    assert same_recommendations(hcp, base)
    # Every column of the recommendation, not only the compared ones, agrees.
    joined = hcp.join(base, on=["device_id", "window_start"], suffix="_b")
    for col in ("site", "model", "device_type", "btc_usd", "electricity_usd_mwh",
                "power_cap_mw", "expected_net_usd_hr", "expected_power_w", "gpu_spot_usd_hr"):
        a, b = joined[col], joined[f"{col}_b"]
        assert a.cast(pl.String).fill_null("-").to_list() == b.cast(pl.String).fill_null(
            "-").to_list(), col


def test_generated_scenario_same_recommendations_as_hcp(bootstrap: str, tmp_path: Path) -> None:
    from generators.run import generate
    from generators.scenario import load_scenario
    from generators.simulation import SimConfig

    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    start_ms = SimConfig().start_ms
    sites = ["site-01", "site-02", "site-03"]
    config = SimConfig(seed=5, gpus=12, asics=40, sites=3, duration_s=15 * 60, workloads=False,
                       scenario=load_scenario("demo", start_ms, sites))
    generate(config, bootstrap, topics, partitions=4)
    hcp = run_once(bootstrap, topics).frame("recs")
    base, stats = _baseline(bootstrap, topics, tmp_path / "recs.parquet")
    assert not any(k.startswith("late_") for k in stats)
    assert base.height == hcp.height >= 52 * 15
    assert len(set(base["action"])) >= 3
    assert "power_cap" in set(base["reason"])
    assert same_recommendations(hcp, base)
    # And one changed decision is noticed.
    flipped = base.with_columns(
        pl.when(pl.int_range(pl.len()) == 7)
        .then(pl.when(pl.col("action") == "curtail").then(pl.lit("mine")).otherwise(
            pl.lit("curtail")))
        .otherwise(pl.col("action"))
        .alias("action")
    )
    assert not same_recommendations(hcp, flipped)


@pytest.mark.parametrize(
    ("kind", "raw", "reason"),
    [
        ("gpu", b"{oops", "not_json"),
        ("gpu", b"[1]", "not_object"),
        ("asic", b'{"v": 2, "ts": 1}', "unsupported_version"),
        ("prices", b'{"v": 1, "ts": 5, "kind": "electricity_usd_mwh", "value": 3}',
         "missing_field:site"),
        ("prices", b'{"v": 1, "ts": 5, "kind": "btc_usd", "value": -3}', "out_of_range:value"),
        ("prices", b'{"v": 1, "ts": true, "kind": "btc_usd", "value": 3}', "wrong_type:ts"),
    ],
)
def test_check_message_rejects_bad_input(kind: str, raw: bytes, reason: str) -> None:
    assert check_message(kind, raw) == (None, reason)


def test_check_message_accepts_a_price() -> None:
    msg, reason = check_message("prices", b'{"v": 1, "ts": 5, "kind": "btc_usd", "value": 3}')
    assert reason is None
    assert msg["value"] == 3
