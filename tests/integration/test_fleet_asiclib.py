"""pyasic-rs, unmodified, against the stock-mode simulators over real sockets: it identifies
them as Antminer S21 on stock firmware, its data maps to the contract, and the agent's
curtail through it (set_miner_conf.cgi) lowers the power the collector reads."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import pytest

from generators.devices import SimFleet
from hcp.fleet import asiclib
from hcp.fleet.agent import Agent
from hcp.fleet.collect import Collector
from hcp.fleet.inventory import load_inventory
from hcp.topics import Topics
from tests.integration.test_fleet_agent import _cmd, _drain, _send
from tests.support.flowkit import make_topics


@pytest.fixture()
def fleet():
    # Its own /24 of loopback per test: stock miners bind the real ports 4028 and 80.
    sim = SimFleet(stock_base=f"127.{random.randint(30, 250)}.{random.randint(0, 255)}.1")
    yield sim
    sim.close()


def test_library_identifies_stock_s21(fleet: SimFleet, tmp_path: Path) -> None:
    fleet.add_miners(3, stock=True)
    fleet.write_inventory(tmp_path / "inv.csv")
    devices = load_inventory(tmp_path / "inv.csv")
    assert all(asiclib.library_port(d) for d in devices)
    found = asyncio.run(asiclib.identify(devices))
    assert set(found) == {d.device_id for d in devices}
    for ident in found.values():
        assert ident is not None
        assert (ident.make, ident.model, ident.firmware) == ("Antminer", "S21", "AntMiner Stock")
        assert ident.stock and ident.supports_pause


def test_library_data_maps_to_the_contract(fleet: SimFleet, tmp_path: Path) -> None:
    from pyasic_rs import MinerFactory

    miners = fleet.add_miners(2, stock=True, ramp_s=0.0)
    miners[1].set_sleep(True)
    fleet.write_inventory(tmp_path / "inv.csv")
    devices = load_inventory(tmp_path / "inv.csv")

    async def read() -> list[dict]:
        rows = []
        for d in devices:
            miner = await MinerFactory().get_miner(d.host)
            rows.append(asiclib.row_from_data(d, await miner.get_data(), 1))
        return rows

    mining, asleep = asyncio.run(read())
    assert mining["state"] == "mining"
    assert mining["hashrate_ths"] == pytest.approx(200.0, rel=0.01)
    assert mining["power_w"] == pytest.approx(3500.0)
    assert 40.0 < mining["temp_c"] < 80.0
    assert mining["shares_accepted"] >= 0 and mining["shares_rejected"] >= 0
    assert asleep["state"] == "curtailed"
    assert asleep["hashrate_ths"] == 0.0 and asleep["power_w"] == pytest.approx(15.0)


def test_agent_curtails_through_the_library(
    fleet: SimFleet, tmp_path: Path, bootstrap: str
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}.")
    make_topics(bootstrap, topics, partitions=1)
    miners = fleet.add_miners(4, stock=True, ramp_s=0.2)
    fleet.write_inventory(tmp_path / "inv.csv")
    devices = load_inventory(tmp_path / "inv.csv")
    collector = Collector(devices, timeout=0.5)
    before = asyncio.run(collector.poll_round())
    # Stock firmware: no Power in SUMMARY; the collector reads stats' chain_power.
    assert [r["power_w"] for r in before.asic] == [pytest.approx(3500.0)] * 4

    _send(bootstrap, topics.commands, [_cmd(m.miner_id, "curtail") for m in miners[:2]])
    agent = Agent(bootstrap, topics, "site-a", devices, group=f"lib{uuid.uuid4().hex[:6]}")
    _drain(agent)
    assert agent.counts == {"applied": 2}
    assert [m.switched_via for m in miners] == ["web", "web", "", ""]
    time.sleep(0.3)  # the ramp
    after = asyncio.run(collector.poll_round())
    assert [r["state"] for r in after.asic] == ["curtailed", "curtailed", "mining", "mining"]
    site_before = sum(r["power_w"] for r in before.asic)
    site_after = sum(r["power_w"] for r in after.asic)
    assert site_after == pytest.approx(site_before / 2 + 2 * 15.0, rel=0.01)

    # A replay compares state through the library first: unchanged, nothing switched.
    _send(bootstrap, topics.commands, [_cmd(miners[0].miner_id, "curtail"),
                                       _cmd(miners[0].miner_id, "mine")])
    _drain(agent)
    agent.close()
    assert agent.counts == {"applied": 3, "unchanged": 1}
    assert miners[0].curtail_calls == 2 and not miners[0].sleeping


def test_collector_identifies_at_startup(fleet: SimFleet, tmp_path: Path) -> None:
    fleet.add_miners(2, stock=True)
    fleet.write_inventory(tmp_path / "inv.csv")
    # A third address where nothing answers: the library finds no miner, the collector logs it.
    host = fleet.miners[-1].ip.rsplit(".", 1)[0] + ".250"
    with (tmp_path / "inv.csv").open("a") as inv:
        inv.write(f"{host}:4028,asic,ghost,S21,site-a\n")
    collector = Collector(load_inventory(tmp_path / "inv.csv"), timeout=0.5)
    found = asyncio.run(collector.identify())
    assert found["ghost"] is None
    assert [found[m.miner_id].model for m in fleet.miners] == ["S21", "S21"]
    assert collector.identities == found
