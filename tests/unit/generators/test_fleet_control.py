"""Simulated fleets following commands: ramp delay, seeded rebels and late devices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generators import SimConfig, Simulation
from generators.control import ControlConfig

START_MS = 1_767_225_600_000


def _sim(**control: float) -> Simulation:
    config = SimConfig(
        seed=3, gpus=20, asics=100, duration_s=600, workloads=False,
        control=ControlConfig(**control),
    )
    return Simulation(config)


def _command(device: str, kind: str, action: str, ts: int) -> dict:
    return {"v": 1, "ts": ts, "device_id": device, "device_type": kind, "site": "site-01",
            "action": action}


def _asic_rows(sim: Simulation, first: int, n: int) -> list[dict]:
    rows = []
    for b in sim.blocks(first, n):
        if b.stream == "asic":
            rows += [json.loads(v) for v in b.values]
    return rows


def test_asics_curtail_after_the_ramp_and_rebels_keep_mining() -> None:
    sim = _sim(ramp_s=30, ignore_share=0.1)
    ids = sim.asic.ids
    t = START_MS + 10_000
    sim.control.receive(sim, [_command(a, "asic", "curtail", t) for a in ids], t)
    before = _asic_rows(sim, 10, 30)  # seconds 10..39: still ramping
    assert all(r["state"] != "curtailed" for r in before)
    after = [r for r in _asic_rows(sim, 40, 10) if r["ts"] >= START_MS + 41_000]
    mining = {r["asic_id"] for r in after if r["state"] == "mining"}
    rebels = {ids[i] for i in np.flatnonzero(sim.control.asic_ignores)}
    faulted = {r["asic_id"] for r in after if r["state"] == "fault"}
    assert mining == rebels - faulted
    assert 5 <= len(rebels) <= 15  # 10 % of 100, seeded
    curtailed = [r for r in after if r["state"] == "curtailed"]
    assert curtailed and max(r["power_w"] for r in curtailed) < 40
    # Resume: back to mining one ramp after the mine command.
    t2 = START_MS + 50_000
    sim.control.receive(sim, [_command(a, "asic", "mine", t2) for a in ids], t2)
    resumed = [r for r in _asic_rows(sim, 50, 40) if r["ts"] >= START_MS + 81_000]
    assert {r["state"] for r in resumed} <= {"mining", "fault"}


def test_late_devices_obey_later_and_rebels_are_seeded() -> None:
    sim = _sim(ramp_s=10, ignore_share=0.0, late_share=0.2, late_s=60)
    assert (_sim(late_share=0.2).control.asic_late == sim.control.asic_late).all()
    ids = sim.asic.ids
    t = START_MS
    sim.control.receive(sim, [_command(a, "asic", "curtail", t) for a in ids], t)
    rows = [r for r in _asic_rows(sim, 0, 30) if r["ts"] >= START_MS + 20_000]
    late = {ids[i] for i in np.flatnonzero(sim.control.asic_late)}
    still = {r["asic_id"] for r in rows if r["state"] == "mining"}
    assert still == late - {r["asic_id"] for r in rows if r["state"] == "fault"}
    rows = [r for r in _asic_rows(sim, 30, 45) if r["ts"] >= START_MS + 71_000]
    assert {r["state"] for r in rows} <= {"curtailed", "fault"}


def test_gpus_power_down_to_standby_and_come_back() -> None:
    sim = _sim(ramp_s=5)
    ids = sim.gpu.ids
    idle = [ids[i] for i in np.flatnonzero(sim.gpu.state == 0)]
    t = START_MS
    sim.control.receive(sim, [_command(g, "gpu", "power_down", t) for g in idle], t)
    rows = []
    for b in sim.blocks(0, 20):
        if b.stream == "gpu":
            rows += [json.loads(v) for v in b.values]
    parked = [r for r in rows if r["gpu_id"] in idle and r["ts"] >= START_MS + 6_000]
    assert parked and all(r["state"] == "idle" and r["power_w"] == 10.0 for r in parked)
    sim.control.receive(sim, [_command(g, "gpu", "offer", t) for g in idle], START_MS + 20_000)
    rows = []
    for b in sim.blocks(20, 20):
        if b.stream == "gpu":
            rows += [json.loads(v) for v in b.values]
    back = [r for r in rows if r["gpu_id"] in idle and r["ts"] >= START_MS + 26_000]
    assert all(r["power_w"] > 20.0 for r in back if r["state"] == "idle")


def test_shares_are_checked() -> None:
    with pytest.raises(ValueError, match="ignore-share"):
        ControlConfig(ignore_share=1.5).validate()
    with pytest.raises(ValueError, match="exceed"):
        ControlConfig(ignore_share=0.6, late_share=0.6).validate()
