"""The profitability flow end to end on the embedded broker: a known story, told twice.

Site 1 has three ASICs and two GPUs; its electricity spikes from minute 3 to minute 6.
Site 2 has four ASICs under a 7.5 kW power cap. Every figure is checked against the SPEC
formulas computed here from the very messages that were sent.
"""

from __future__ import annotations

import uuid

import polars as pl
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from prometheus_client import REGISTRY

from hcp.topics import Topics
from tests.support.flowkit import T0, asic_msg, gpu_msg, make_topics, price_msg, produce, run_once

MIN = 60_000
SITE2_HASH = {"asic-21": 190.0, "asic-22": 210.0, "asic-23": 200.0, "asic-24": 205.0}


def electricity(t_ms: int) -> float:
    return 2000.0 if 3 * MIN <= t_ms - T0 < 6 * MIN else 40.0


def story_messages() -> tuple[list[dict], list[dict], list[dict]]:
    asics, gpus, prices = [], [], []
    for s in range(0, 12 * 60, 10):
        ts = T0 + s * 1000
        for a in ("asic-11", "asic-12", "asic-13"):
            asics.append(asic_msg(a, ts, "site-01"))
        for a, h in SITE2_HASH.items():
            asics.append(asic_msg(a, ts, "site-02", hashrate_ths=h))
        gpus.append(gpu_msg("gpu-a", ts, "site-01", "busy"))
        gpus.append(gpu_msg("gpu-b", ts, "site-01", "idle"))
        if s % 30 == 0:
            prices += [
                price_msg("btc_usd", 100_000.0, ts),
                price_msg("difficulty", 1.2e14, ts),
                price_msg("electricity_usd_mwh", electricity(ts), ts, site="site-01"),
                price_msg("electricity_usd_mwh", 40.0, ts, site="site-02"),
                price_msg("power_cap_mw", 0.0075, ts, site="site-02"),
                price_msg("gpu_spot_usd_hr", 2.0, ts, model="H100-SXM"),
            ]
    return asics, gpus, prices


@pytest.fixture(scope="module")
def story(bootstrap: str) -> tuple[Topics, dict]:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    make_topics(bootstrap, topics)
    asics, gpus, prices = story_messages()
    produce(bootstrap, topics.asic, asics, "asic_id")
    produce(bootstrap, topics.gpu, gpus, "gpu_id")
    produce(bootstrap, topics.prices, prices, "kind")
    return topics, {"asics": asics, "gpus": gpus, "prices": prices}


@pytest.fixture(scope="module")
def recs(bootstrap: str, story: tuple[Topics, dict]) -> pl.DataFrame:
    topics, _ = story
    return run_once(bootstrap, topics, dwell_s=300, lateness_s=0).frame("recs")


def actions(recs: pl.DataFrame, device: str) -> list[tuple[str, str]]:
    rows = recs.filter(pl.col("device_id") == device).sort("window_start")
    return list(zip(rows["action"], rows["reason"], strict=True))


def test_every_device_gets_every_window(recs: pl.DataFrame) -> None:
    assert recs.height == 12 * 9
    assert recs.group_by("device_id").len()["len"].to_list() == [12] * 9


def test_spike_curtails_then_resumes_after_dwell(recs: pl.DataFrame) -> None:
    got = actions(recs, "asic-11")
    assert got[:3] == [("mine", "profitable")] * 3
    # The spike's price is first seen as of the end of window [3, 4) min.
    assert got[3:6] == [("curtail", "unprofitable")] * 3
    # Cheap again from window [6, 7), but the switch at 4 min holds until 9 min.
    assert got[6:8] == [("curtail", "hysteresis_hold")] * 2
    assert got[8:] == [("mine", "profitable")] * 4


def test_power_cap_keeps_the_best_devices_under_the_cap(recs: pl.DataFrame) -> None:
    site2 = recs.filter(pl.col("site") == "site-02")
    for _, window in site2.group_by("window_start"):
        running = window.filter(pl.col("action") == "mine")
        assert running["expected_power_w"].sum() <= 7500.0
        assert sorted(running["device_id"]) == ["asic-22", "asic-24"]  # best J/TH first
        capped = window.filter(pl.col("reason") == "power_cap")
        assert sorted(capped["device_id"]) == ["asic-21", "asic-23"]
        assert set(capped["action"]) == {"curtail"}


def test_busy_gpus_serve_idle_gpus_are_offered(recs: pl.DataFrame) -> None:
    assert set(actions(recs, "gpu-a")) == {("serve", "running_workload")}
    assert set(actions(recs, "gpu-b")) == {("offer", "profitable")}


def test_figures_equal_the_spec_formulas(recs: pl.DataFrame, story: tuple[Topics, dict]) -> None:
    _, sent = story
    raw = pl.DataFrame(sent["asics"]).with_columns(
        (pl.col("ts") // MIN * MIN).alias("window_start")
    )
    expected = raw.group_by("asic_id", "window_start").agg(
        pl.col("hashrate_ths").mean(), pl.col("power_w").mean(), pl.col("site").first()
    )
    got = recs.filter(pl.col("device_type") == "asic").join(
        expected, left_on=["device_id", "window_start"], right_on=["asic_id", "window_start"]
    )
    assert got.height == 12 * 7
    for row in got.iter_rows(named=True):
        elec = electricity(row["window_end"] - 30_000) if row["site"] == "site-01" else 40.0
        revenue = row["hashrate_ths"] * 1e12 * 3600 * 3.125 / (1.2e14 * 2**32) * 100_000.0
        cost = row["power_w"] / 1e6 * elec
        assert row["electricity_usd_mwh"] == elec
        assert row["revenue_usd_hr"] == pytest.approx(revenue, rel=1e-12)
        assert row["cost_usd_hr"] == pytest.approx(cost, rel=1e-12)
        assert row["net_usd_hr"] == pytest.approx(revenue - cost, rel=1e-9)
        assert row["score"] == pytest.approx((revenue - cost) / revenue * 100, rel=1e-9)
        assert row["btc_usd"] == 100_000.0 and row["difficulty"] == 1.2e14
    gpu = recs.filter(pl.col("device_id") == "gpu-a").sort("window_start")
    assert gpu["revenue_usd_hr"].to_list() == [2.0] * 12  # spot x busy fraction 1
    assert gpu["gpu_spot_usd_hr"].to_list() == [2.0] * 12


def test_same_topics_give_identical_recommendations_with_one_and_two_workers(
    bootstrap: str, story: tuple[Topics, dict], recs: pl.DataFrame
) -> None:
    topics, _ = story
    again = run_once(bootstrap, topics, dwell_s=300, lateness_s=0).frame("recs")
    two = run_once(bootstrap, topics, workers=2, dwell_s=300, lateness_s=0).frame("recs")
    key = ["window_start", "device_id"]
    assert again.sort(key).equals(recs.sort(key))
    assert two.sort(key).equals(recs.sort(key))


def _counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def read_dlq(bootstrap: str, topic: str) -> list[dict]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(4)])
    out, eof = [], set()
    while len(eof) < 4:
        for m in consumer.consume(1000, 1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            out.append({"value": m.value(), **{k: v.decode() for k, v in m.headers()}})
    consumer.close()
    return out


def test_bad_and_late_input_is_dead_lettered_or_counted_and_the_job_goes_on(
    bootstrap: str, topics: Topics
) -> None:
    make_topics(bootstrap, topics)
    good = [asic_msg("asic-1", T0 + s * 1000) for s in range(0, 120, 10)]
    bad = [b"not json", b'{"v": 1}', b"[1]", b'{"v":1,"ts":"soon"}']
    # Same key as asic-1 so it lands in the same partition, after newer events: late.
    late = asic_msg("asic-1", T0 + 1000, temp_c=99.0)
    produce(bootstrap, topics.asic, [*good, late], "asic_id")
    produce(bootstrap, topics.asic, bad, "asic_id")
    produce(bootstrap, topics.prices, [price_msg("btc_usd", 1e5, T0)], "kind")
    before_bad = sum(
        _counter("hcp_bad_input_total", topic=topics.asic, reason=r)
        for r in ("not_json", "missing_field:ts", "not_object", "wrong_type:ts")
    )
    before_late = _counter("hcp_late_events_total", kind="asic")
    out = run_once(bootstrap, topics, lateness_s=5)
    recs = out.frame("recs")
    assert recs.height == 2 and set(recs["reason"]) == {"no_price"}
    windows = out.frame("windows").sort("window_start")
    assert windows["samples"].to_list() == [6, 6]  # the late sample is not counted in
    assert windows["temp_c"].to_list() == [60.0, 60.0]
    dead = read_dlq(bootstrap, topics.dlq)
    assert sorted(d["hcp.reason"] for d in dead) == sorted(
        ["not_json", "missing_field:ts", "not_object", "wrong_type:ts"]
    )
    assert {d["value"] for d in dead} == set(bad)
    assert all(d["hcp.source.topic"] == topics.asic for d in dead)
    after_bad = sum(
        _counter("hcp_bad_input_total", topic=topics.asic, reason=r)
        for r in ("not_json", "missing_field:ts", "not_object", "wrong_type:ts")
    )
    assert after_bad - before_bad == 4
    assert _counter("hcp_late_events_total", kind="asic") - before_late == 1


def test_replaying_the_same_topics_adds_no_dead_letters(bootstrap: str, topics: Topics) -> None:
    make_topics(bootstrap, topics)
    produce(bootstrap, topics.asic, [b"nope", asic_msg("asic-1", T0), b"[]"], "asic_id")
    run_once(bootstrap, topics)
    first = read_dlq(bootstrap, topics.dlq)
    run_once(bootstrap, topics)
    assert len(first) == 2
    assert len(read_dlq(bootstrap, topics.dlq)) == 2
