"""``hcp agent`` against simulated miners: dry run, rate limit, restart without double apply."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from generators.devices import SimFleet
from hcp.commands import produce_commands
from hcp.fleet.agent import Agent, RateLimit
from hcp.fleet.inventory import load_inventory
from hcp.topics import Topics
from tests.support.fleetkit import read_topic
from tests.support.flowkit import make_topics


@pytest.fixture()
def fleet():
    sim = SimFleet()
    yield sim
    sim.close()


def _cmd(device: str, action: str, site: str = "site-a", kind: str = "asic") -> dict:
    return {
        "v": 1,
        "ts": 1_000,
        "device_id": device,
        "device_type": kind,
        "site": site,
        "action": action,
        "reason": "test",
        "window_start": 0,
    }


def _send(bootstrap: str, topic: str, cmds: list[dict]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    produce_commands(producer, topic, cmds)
    assert producer.flush(30) == 0


def _drain(agent: Agent) -> None:
    idle = 0
    while idle < 3:
        idle = 0 if agent.poll(0.5) else idle + 1


def test_rate_limit_is_a_sliding_minute() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    rate = RateLimit(2, clock=lambda: now[0], sleep=sleep)
    assert [rate.wait(), rate.wait()] == [0.0, 0.0]
    now[0] = 10.0
    assert rate.wait() == pytest.approx(50.0)
    assert slept == [pytest.approx(50.0)]


def test_agent_applies_once_and_reports(fleet: SimFleet, tmp_path: Path, bootstrap: str) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}.")
    make_topics(bootstrap, topics, partitions=2)
    miners = fleet.add_miners(3, ramp_s=0.0)
    miners[2].fault = "reset"
    fleet.write_inventory(tmp_path / "inv.csv")
    devices = load_inventory(tmp_path / "inv.csv")
    hook_log = tmp_path / "hook.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$@" >> {hook_log}\n')
    hook.chmod(0o755)
    _send(
        bootstrap,
        topics.commands,
        [
            _cmd(miners[0].miner_id, "curtail"),
            _cmd(miners[1].miner_id, "mine"),
            _cmd(miners[2].miner_id, "curtail"),
            _cmd("nope", "curtail"),
            _cmd(miners[0].miner_id, "curtail", site="other"),
        ],
    )
    garbage = Producer({"bootstrap.servers": bootstrap})
    garbage.produce(topics.commands, b"{not a command", b"x")
    assert garbage.flush(30) == 0

    dry = Agent(bootstrap, topics, "site-a", devices, dry_run=True, group="dry")
    _drain(dry)
    dry.close()
    assert dry.counts == {"skipped_dry_run": 1, "unchanged": 1, "failed": 2, "bad_command": 1}
    assert miners[0].curtail_calls == 0

    group = f"g{uuid.uuid4().hex[:6]}"
    agent = Agent(bootstrap, topics, "site-a", devices, group=group, gpu_hook=str(hook))
    _drain(agent)
    agent.close()
    assert agent.counts == {"applied": 1, "unchanged": 1, "failed": 2, "bad_command": 1}
    assert miners[0].sleeping and miners[0].curtail_calls == 1

    # Restart on the same group: nothing is read again.
    again = Agent(bootstrap, topics, "site-a", devices, group=group)
    _drain(again)
    assert again.counts == {}
    # A replay (a crash before the commit, modelled by a fresh group) compares state first.
    _send(bootstrap, topics.commands, [_cmd("gpuh-0", "power_down", kind="gpu")])
    replay = Agent(bootstrap, topics, "site-a", devices, group="replay")
    _drain(replay)
    replay.close()
    again.close()
    assert miners[0].curtail_calls == 1
    assert replay.counts["unchanged"] == 2

    results = [json.loads(m.value()) for m in read_topic(bootstrap, topics.command_results)]
    reasons = {(r["device_id"], r["status"], r["reason"]) for r in results if r["dry_run"] is False}
    assert (miners[2].miner_id, "failed", "device_reset") in reasons
    assert ("nope", "failed", "unknown_device") in reasons
    assert (miners[0].miner_id, "applied", None) in reasons


def test_agent_curtail_is_seen_by_the_collector(
    fleet: SimFleet, tmp_path: Path, bootstrap: str
) -> None:
    import asyncio

    from hcp.fleet.collect import Collector

    topics = Topics(f"t{uuid.uuid4().hex[:8]}.")
    make_topics(bootstrap, topics, partitions=1)
    miners = fleet.add_miners(4, ramp_s=0.2)
    fleet.write_inventory(tmp_path / "inv.csv")
    devices = load_inventory(tmp_path / "inv.csv")
    collector = Collector(devices, timeout=0.5)
    before = asyncio.run(collector.poll_round())
    _send(bootstrap, topics.commands, [_cmd(m.miner_id, "curtail") for m in miners[:2]])
    agent = Agent(bootstrap, topics, "site-a", devices, group="e2e")
    _drain(agent)
    agent.close()
    after = asyncio.run(collector.poll_round())
    site_before = sum(r["power_w"] for r in before.asic)
    site_after = sum(r["power_w"] for r in after.asic)
    assert [r["state"] for r in after.asic] == ["curtailed", "curtailed", "mining", "mining"]
    # Half the miners asleep: the site draws about half (idle draw stays).
    assert site_after == pytest.approx(site_before / 2 + 2 * 15.0, rel=0.01)
