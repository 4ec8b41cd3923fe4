"""``hcp collect`` against protocol-speaking simulators over loopback sockets."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.frames import decode_frame
from generators.devices import SimFleet
from hcp.errors import ConfigError
from hcp.fleet.cgminer import request
from hcp.fleet.collect import Collector
from hcp.fleet.inventory import Device, load_inventory
from hcp.schemas import ASIC_FIELDS, GPU_FIELDS
from hcp.topics import Topics
from tools.cli import main


@pytest.fixture()
def fleet():
    sim = SimFleet()
    yield sim
    sim.close()


def test_round_reports_faults_by_reason_and_stays_on_time(fleet: SimFleet, tmp_path: Path) -> None:
    miners = fleet.add_miners(8, ramp_s=0.0)
    miners[1].fault, miners[2].fault, miners[3].fault = "hang", "reset", "malformed"
    fleet.write_inventory(tmp_path / "inv.csv")
    collector = Collector(load_inventory(tmp_path / "inv.csv"), timeout=0.3, concurrency=4)
    started = time.monotonic()
    result = asyncio.run(collector.poll_round(ts=1_000))
    assert time.monotonic() - started < 0.9  # one timeout wave, not a stall
    assert result.faults == {"timeout": 1, "reset": 1, "malformed": 1}
    by_id = {r["asic_id"]: r for r in result.asic}
    assert len(by_id) == 8
    assert {by_id[m.miner_id]["state"] for m in miners[1:4]} == {"fault"}
    good = by_id[miners[0].miner_id]
    assert good["state"] == "mining"
    assert good["power_w"] == pytest.approx(3500.0)
    assert good["hashrate_ths"] == pytest.approx(200.0)
    assert good["temp_c"] == pytest.approx(66.0)


def test_curtail_lowers_power_seen_by_the_collector(fleet: SimFleet) -> None:
    (miner,) = fleet.add_miners(1, ramp_s=0.2)
    host, port = fleet.addresses[miner.miner_id]
    device = Device(miner.miner_id, "asic", "S21", "site-a", host, port)
    collector = Collector([device], timeout=0.5)

    async def go() -> tuple[dict, dict]:
        before = (await collector.poll_round()).asic[0]
        await request(host, port, "curtail", "sleep")
        await asyncio.sleep(0.3)
        return before, (await collector.poll_round()).asic[0]

    before, after = asyncio.run(go())
    assert before["state"] == "mining" and before["power_w"] > 3000
    assert after["state"] == "curtailed" and after["power_w"] < 50


def test_gpu_hosts_from_dcgm_and_nvidia_smi(fleet: SimFleet, tmp_path: Path) -> None:
    fleet.add_gpu_host("h1", gpus=2, util_pct=90.0, power_w=640.0)
    fleet.write_inventory(tmp_path / "inv.csv")
    smi = tmp_path / "fake-smi"
    smi.write_text("#!/bin/sh\necho 'GPU-aaa, 0, 72.5, 40, 100, 81559'\n")
    smi.chmod(0o755)
    with (tmp_path / "inv.csv").open("a") as f:
        f.write("nvidia-smi,gpu,local,H100-SXM,site-a\n")
        f.write("http://127.0.0.1:1/metrics,gpu,gone,H100-SXM,site-a\n")
    collector = Collector(load_inventory(tmp_path / "inv.csv"), timeout=0.5, smi_command=str(smi))
    result = asyncio.run(collector.poll_round(ts=5))
    by_id = {r["gpu_id"]: r for r in result.gpu}
    assert set(by_id) == {"GPU-h1-0000", "GPU-h1-0001", "GPU-aaa", "gone"}
    assert by_id["GPU-h1-0000"]["power_w"] == 640.0 and by_id["GPU-h1-0000"]["state"] == "busy"
    assert by_id["GPU-h1-0000"]["mem_total_gb"] == pytest.approx(81_559 / 1024)
    assert by_id["GPU-aaa"]["state"] == "idle" and by_id["GPU-aaa"]["power_w"] == 72.5
    assert by_id["gone"]["state"] == "down"
    assert result.faults == {"refused": 1}


def test_inventory_formats_and_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "devices:\n  - {address: 10.0.0.0/30, kind: asic, id: r1, model: S21, site: s1}\n"
        "  - {address: 10.0.1.5:4029, kind: asic, id: x, model: S21, site: s2}\n"
    )
    devs = load_inventory(tmp_path / "a.yaml")
    assert [(d.device_id, d.host, d.port) for d in devs] == [
        ("r1-10-0-0-1", "10.0.0.1", 4028),
        ("r1-10-0-0-2", "10.0.0.2", 4028),
        ("x", "10.0.1.5", 4029),
    ]
    assert [d.device_id for d in load_inventory(tmp_path / "a.yaml", site="s2")] == ["x"]
    (tmp_path / "b.toml").write_text(
        '[[devices]]\naddress="h"\nkind="asic"\nid="t"\nmodel="S21"\nsite="s"\n'
    )
    assert load_inventory(tmp_path / "b.toml")[0].port == 4028
    (tmp_path / "c.csv").write_text("address,kind,id,model,site\nh,fpga,i,m,s\n")
    with pytest.raises(ConfigError, match="kind must be asic or gpu"):
        load_inventory(tmp_path / "c.csv")


def _read_all(bootstrap: str, topic: str) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out, pending, deadline = [], set(meta.partitions), time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for m in consumer.consume(1000, 1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                continue
            out.append(m)
    consumer.close()
    return out


def test_hcp_collect_publishes_contract_frames(
    fleet: SimFleet, tmp_path: Path, bootstrap: str, topics: Topics
) -> None:
    from tests.support.flowkit import make_topics

    make_topics(bootstrap, topics, partitions=2)
    miners = fleet.add_miners(5, ramp_s=0.0)
    miners[4].fault = "hang"
    fleet.add_gpu_host("h1", gpus=2)
    fleet.write_inventory(tmp_path / "inv.csv", site="site-7")
    code = main(
        [
            "collect",
            "--inventory",
            str(tmp_path / "inv.csv"),
            "--rounds",
            "2",
            "--interval-s",
            "0.5",
            "--timeout-s",
            "0.2",
            "--bootstrap",
            bootstrap,
            "--topic-prefix",
            topics.prefix,
        ]
    )
    assert code == 0
    asic = [decode_frame(m.value(), ASIC_FIELDS) for m in _read_all(bootstrap, topics.asic)]
    gpu = [decode_frame(m.value(), GPU_FIELDS) for m in _read_all(bootstrap, topics.gpu)]
    assert [f.error for f in asic + gpu] == [None] * (len(asic) + len(gpu))
    assert sum(f.rows.height for f in asic) == 10 and sum(f.rows.height for f in gpu) == 4
    assert all(not f.bad_row for f in asic + gpu)
    states = [s for f in asic for s in f.rows["state"].to_list()]
    assert states.count("fault") == 2 and states.count("mining") == 8
