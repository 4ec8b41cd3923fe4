"""hcp generate against the real embedded broker: counts, determinism, contract, ranges."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
import uuid

import pytest

from generators import SimConfig, generate
from generators.asic_fleet import AsicParams
from hcp.schemas import ASIC_FIELDS, GPU_FIELDS, PRICE_FIELDS, WORKLOAD_FIELDS
from hcp.topics import Topics
from tests.support.generator_helpers import (
    check_fields,
    crc_partition,
    decoded,
    price_key,
    read_topic,
)
from tools.broker import free_port
from tools.cli import main as hcp_main

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the --start default
ISSUE_ARGS = ["--seed", "7", "--gpus", "10", "--asics", "50", "--duration", "600", "--speed", "max"]


def _fresh() -> Topics:
    return Topics(prefix=f"g{uuid.uuid4().hex[:10]}.")


def _contents(bootstrap: str, topics: Topics) -> dict[str, dict]:
    return {t: read_topic(bootstrap, t) for t in topics.inputs()}


@pytest.fixture(scope="module")
def seed7(bootstrap: str) -> dict[str, dict]:
    """The issue's reference run, through the CLI: --seed 7 --gpus 10 --asics 50 ..."""
    topics = _fresh()
    rc = hcp_main(
        [
            "generate",
            *ISSUE_ARGS,
            "--bootstrap",
            bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--progress-interval",
            "0",
        ]
    )
    assert rc == 0
    return {"topics": topics, **_contents(bootstrap, topics)}


def test_exact_counts(seed7: dict) -> None:
    topics: Topics = seed7["topics"]
    count = {t: sum(len(rows) for rows in seed7[t].values()) for t in topics.inputs()}
    assert count[topics.gpu] == 10 * 600
    assert count[topics.asic] == 50 * 600
    # Market: btc every 10 s, spot every 60 s, electricity x3 every 300 s, reward every
    # 600 s, difficulty every hour, all at t=0.
    assert count[topics.prices] == 60 + 10 + 3 * 2 + 1 + 1
    assert count[topics.workloads] > 0


def test_same_seed_is_byte_identical_other_seed_differs(bootstrap: str, seed7: dict) -> None:
    first: Topics = seed7["topics"]
    again, other = _fresh(), _fresh()
    config = SimConfig(seed=7, gpus=10, asics=50, duration_s=600)
    generate(config, bootstrap, again)  # the Python API must equal the CLI run
    generate(SimConfig(seed=8, gpus=10, asics=50, duration_s=600), bootstrap, other)
    for t_first, t_again, t_other in zip(
        first.inputs(), again.inputs(), other.inputs(), strict=True
    ):
        same = read_topic(bootstrap, t_again)
        assert same == seed7[t_first], f"{t_again} differs from {t_first}"
        if t_first != first.prices:  # prices at t=0 may coincide; telemetry must not
            assert read_topic(bootstrap, t_other) != seed7[t_first]


def test_every_message_matches_spec(seed7: dict) -> None:
    topics: Topics = seed7["topics"]
    specs = {
        topics.gpu: (GPU_FIELDS, "gpu_id"),
        topics.asic: (ASIC_FIELDS, "asic_id"),
        topics.prices: (PRICE_FIELDS, None),
        topics.workloads: (WORKLOAD_FIELDS, "workload_id"),
    }
    for topic, (fields, id_field) in specs.items():
        last_ts: dict[int, int] = {}
        for part, key, msg in decoded(seed7[topic]):
            check_fields(msg, fields)
            assert msg["v"] == 1
            expected_key = msg[id_field].encode() if id_field else price_key(msg)
            assert key == expected_key
            assert part == crc_partition(key)
            assert msg["ts"] >= last_ts.get(part, 0), f"ts went back in {topic}[{part}]"
            last_ts[part] = msg["ts"]
            assert START_MS <= msg["ts"] < START_MS + 600_000


def test_gpu_values_are_realistic(seed7: dict) -> None:
    msgs = [m for _, _, m in decoded(seed7[seed7["topics"].gpu])]
    busy = [m for m in msgs if m["state"] == "busy"]
    idle = [m for m in msgs if m["state"] == "idle"]
    assert busy and idle
    assert all(85.0 <= m["util_pct"] <= 99.0 for m in busy)
    assert all(m["workload_id"] for m in busy)
    assert all(m["workload_id"] is None for m in msgs if m["state"] != "busy")
    assert all(0 < m["power_w"] <= 700.0 for m in busy)
    assert statistics.mean(m["power_w"] for m in busy) > 450
    assert all(55.0 <= m["power_w"] <= 95.0 for m in idle)
    assert all(m["util_pct"] < 5 for m in idle)
    assert all(m["model"] == "H100-SXM" and m["mem_total_gb"] == 80.0 for m in msgs)
    assert all(0 <= m["mem_used_gb"] <= 80.0 for m in msgs)
    assert all(15.0 < m["temp_c"] < 90.0 for m in msgs)
    assert (
        statistics.mean(m["temp_c"] for m in busy) > statistics.mean(m["temp_c"] for m in idle) + 10
    )
    assert {m["site"] for m in msgs} == {"site-01", "site-02", "site-03"}


def test_asic_values_are_realistic(seed7: dict) -> None:
    msgs = [m for _, _, m in decoded(seed7[seed7["topics"].asic])]
    mining = [m for m in msgs if m["state"] == "mining"]
    assert len(mining) > 0.95 * len(msgs)
    assert 195 < statistics.mean(m["hashrate_ths"] for m in mining) < 205
    assert 3400 < statistics.mean(m["power_w"] for m in mining) < 3600
    assert all(150 < m["hashrate_ths"] < 250 for m in mining)
    # Shares per second follow the hashrate at the pool's share difficulty.
    p = AsicParams()
    expected = (
        statistics.mean(m["hashrate_ths"] for m in mining) * 1e12 / (p.share_difficulty * 2**32)
    )
    shares = [m["shares_accepted"] + m["shares_rejected"] for m in mining]
    assert abs(statistics.mean(shares) - expected) < 0.05 * expected
    rejected = sum(m["shares_rejected"] for m in mining)
    assert 0 < rejected < 0.02 * sum(shares)
    hw = sum(m["hw_errors"] for m in mining)
    assert 0 < hw < 0.1 * len(mining)
    for m in msgs:
        if m["state"] != "mining":
            assert m["hashrate_ths"] == 0.0 and m["shares_accepted"] == 0
            assert m["power_w"] < 200


def test_market_values_are_realistic(seed7: dict) -> None:
    msgs = [m for _, _, m in decoded(seed7[seed7["topics"].prices])]
    by_kind: dict[str, list[dict]] = {}
    for m in msgs:
        by_kind.setdefault(m["kind"], []).append(m)
    btc = [m["value"] for m in by_kind["btc_usd"]]
    assert [m["ts"] for m in by_kind["btc_usd"]] == [START_MS + i * 10_000 for i in range(60)]
    assert all(90_000 < v < 110_000 for v in btc)
    assert len(set(btc)) > 30  # it walks
    assert all(1.7 <= m["value"] <= 2.5 for m in by_kind["gpu_spot_usd_hr"])
    assert all(m["model"] == "H100-SXM" for m in by_kind["gpu_spot_usd_hr"])
    elec = by_kind["electricity_usd_mwh"]
    assert {m["site"] for m in elec} == {"site-01", "site-02", "site-03"}
    assert statistics.median(m["value"] for m in elec) < 60
    assert all(m["value"] > 5 for m in elec)
    assert by_kind["block_reward_btc"][0]["value"] >= 3.125
    assert 1e14 <= by_kind["difficulty"][0]["value"] <= 1.5e14
    assert "power_cap_mw" not in by_kind  # only scenarios cap power


def test_scenario_events_appear_at_their_times(bootstrap: str, tmp_path) -> None:
    scenario = tmp_path / "story.json"
    scenario.write_text(
        """{"random_spikes": false, "events": [
        {"type": "electricity", "site": "site-01", "from": 120, "to": 420, "value": 900.0},
        {"type": "btc_price", "at": "2026-01-01T00:03:20Z", "value": 60000},
        {"type": "power_cap", "site": "site-02", "from": 60, "to": 305, "fraction": 0.5},
        {"type": "workload_burst", "at": 90, "count": 25, "kind": "inference", "priority": 9},
        {"type": "gpu_state", "site": "site-01", "from": 30, "to": 400, "state": "busy",
         "workload_id": "pinned"},
        {"type": "asic_state", "site": "site-03", "from": 100, "to": 200, "state": "curtailed"}
        ]}"""
    )
    topics = _fresh()
    rc = hcp_main(
        [
            "generate",
            "--seed",
            "3",
            "--gpus",
            "6",
            "--asics",
            "12",
            "--duration",
            "480",
            "--speed",
            "max",
            "--no-workloads",
            "--scenario",
            str(scenario),
            "--bootstrap",
            bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--progress-interval",
            "0",
        ]
    )
    assert rc == 0
    at = lambda s: START_MS + s * 1000  # noqa: E731
    prices = [m for _, _, m in decoded(read_topic(bootstrap, topics.prices))]
    elec1 = {
        m["ts"]: m["value"]
        for m in prices
        if m["kind"] == "electricity_usd_mwh" and m["site"] == "site-01"
    }
    assert elec1[at(120)] == 900.0 and elec1[at(300)] == 900.0
    assert elec1[at(0)] < 100 and elec1[at(420)] < 100
    btc = {m["ts"]: m["value"] for m in prices if m["kind"] == "btc_usd"}
    assert btc[at(200)] == 60000.0 and btc[at(190)] > 80000
    assert all(v < 62000 for ts, v in btc.items() if ts > at(200))
    caps = {m["ts"]: m["value"] for m in prices if m["kind"] == "power_cap_mw"}
    assert set(caps) == {at(60), at(300), at(305)}
    nameplate = 2 * 700e-6 + 4 * 3500e-6  # site-02: 2 of 6 GPUs, 4 of 12 ASICs
    assert caps[at(60)] == pytest.approx(nameplate * 0.5, rel=0.05)
    assert caps[at(305)] > 2 * nameplate  # lifted: a cap nothing can reach
    work = [m for _, _, m in decoded(read_topic(bootstrap, topics.workloads))]
    assert len(work) == 25
    assert all(
        at(90) <= m["ts"] < at(91) and m["kind"] == "inference" and m["priority"] == 9 for m in work
    )
    gpus = [m for _, _, m in decoded(read_topic(bootstrap, topics.gpu)) if m["site"] == "site-01"]
    pinned = [m for m in gpus if at(30) <= m["ts"] < at(400)]
    assert pinned and all(m["state"] == "busy" and m["workload_id"] == "pinned" for m in pinned)
    assert all(m["workload_id"] != "pinned" for m in gpus if m["ts"] >= at(400) or m["ts"] < at(30))
    asics = [m for _, _, m in decoded(read_topic(bootstrap, topics.asic)) if m["site"] == "site-03"]
    during = [m for m in asics if at(100) <= m["ts"] < at(200)]
    assert during and all(m["state"] == "curtailed" and m["hashrate_ths"] == 0.0 for m in during)
    assert all(m["power_w"] < 50 for m in during)
    assert all(m["state"] == "mining" for m in asics if at(200) <= m["ts"] < at(260))


def test_unreachable_broker_fails_fast_with_a_clear_message() -> None:
    address = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tools", "generate", "--bootstrap", address, "--duration", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - began
    assert proc.returncode == 1
    assert elapsed < 15
    last = proc.stderr.strip().splitlines()[-1]
    assert address in last and "HCP_KAFKA_BOOTSTRAP" in last and "--bootstrap" in last
    assert "Traceback" not in proc.stderr


def test_speed_paces_the_simulated_clock(bootstrap: str) -> None:
    summary = generate(
        SimConfig(seed=1, gpus=5, asics=5, duration_s=30), bootstrap, _fresh(), speed=10.0
    )
    assert summary.counts and summary.events >= 300
    assert 2.9 <= summary.wall_s <= 5.0, summary.wall_s
    assert math.isclose(summary.seconds, 30)


def test_existing_topics_keep_their_partition_count(bootstrap: str) -> None:
    from generators.producer import create_topics

    topics = _fresh()
    create_topics(bootstrap, topics.inputs(), partitions=3)
    summary = generate(
        SimConfig(seed=5, gpus=4, asics=4, duration_s=20, market=False, workloads=False),
        bootstrap,
        topics,
        partitions=8,
    )
    assert summary.counts[topics.prices] == 0 and summary.counts[topics.workloads] == 0
    records = read_topic(bootstrap, topics.gpu, partitions=3)
    assert sum(len(r) for r in records.values()) == 80
    for part, key, _ in decoded(records):
        assert part == crc_partition(key, 3)


def test_failed_deliveries_are_counted_and_fail_the_run(bootstrap: str) -> None:
    from generators.producer import BulkProducer, DeliveryError, create_topics

    topic = _fresh().gpu
    create_topics(bootstrap, [topic], partitions=2)
    producer = BulkProducer(bootstrap, {"message.timeout.ms": 3000})
    producer.send(topic, [b"a", b"b", b"c"], ["{}", "{}", "{}"], [0, 7, 1])  # 7 does not exist
    with pytest.raises(DeliveryError, match=r"1 messages failed .*\[7\]"):
        producer.close(timeout_s=20)
    assert sum(len(r) for r in read_topic(bootstrap, topic, partitions=2).values()) == 2
