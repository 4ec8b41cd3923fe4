"""Assignment messages: the format, the Kafka round trip and the fleets they drive."""

from __future__ import annotations

import time

import numpy as np
import pytest

from generators.gpu_fleet import GpuFleet
from generators.router_sim import SimFleet
from hcp.assignments import (
    AssignmentReader,
    apply_assignment,
    decode_assignment,
    encode_assignment,
)
from hcp.kafka_admin import ensure_topics
from hcp.topics import Topics
from sinks.assignments import AssignmentSink

T0 = 1_767_225_600_000


def msg(action: str, wid: str, gpus: list[str], ts: int = T0, dur: int = 60) -> dict:
    return {"v": 1, "ts": ts, "workload_id": wid, "gpu_ids": gpus, "site": "site-a",
            "est_duration_s": dur, "action": action}


def test_round_trip_and_validation() -> None:
    m = msg("assign", "w1", ["gpu-00001"])
    assert decode_assignment(encode_assignment(m)) == m
    with pytest.raises(ValueError, match="lacks"):
        decode_assignment(b'{"v": 1}')
    with pytest.raises(ValueError, match="unknown assignment action"):
        decode_assignment(encode_assignment({**m, "action": "explode"}))
    with pytest.raises(ValueError, match="no gpu_ids"):
        decode_assignment(encode_assignment({**m, "gpu_ids": []}))


def test_apply_drives_the_generators_gpu_fleet() -> None:
    fleet = GpuFleet(4, np.zeros(4, dtype=np.int64), np.random.default_rng(0), T0)
    apply_assignment(fleet, {**msg("assign", "w1", ["gpu-00001", "gpu-00002"]), "mem_gb": 30.0})
    assert list(fleet.workload[:2]) == ["w1", "w1"]
    assert fleet.until_ms[0] == T0 + 60_000 and fleet.job_mem[0] == 30.0
    apply_assignment(fleet, msg("preempt", "w1", ["gpu-00001", "gpu-00002"]))
    assert fleet.workload[0] != "w1" and fleet.until_ms[0] == 0


def test_a_late_assignment_runs_its_whole_duration_from_the_fleet_clock() -> None:
    fleet = SimFleet(2)
    # The router decided at T0; the fleet gets the message 30 s later (the router's lag).
    apply_assignment(fleet, msg("assign", "w1", ["gpu-00000"], dur=10), now_ms=T0 + 30_000)
    assert fleet.until[0] == T0 + 40_000
    assert fleet.status(T0 + 35_000)["workload_id"][0] == "w1"  # seen running, not skipped
    apply_assignment(fleet, msg("assign", "w2", ["gpu-00001"], dur=10), now_ms=T0 - 5_000)
    assert fleet.until[1] == T0 + 10_000  # never earlier than the message's own ts


def test_fleet_without_release_gets_assign_none() -> None:
    calls = []

    class AssignOnly:
        def assign(self, gpu, workload_id, until_ts_ms):
            calls.append((gpu, workload_id, until_ts_ms))

    apply_assignment(AssignOnly(), msg("assign", "w1", ["g1"]))
    apply_assignment(AssignOnly(), msg("preempt", "w1", ["g1"], ts=T0 + 5))
    assert calls == [("g1", "w1", T0 + 60_000), ("g1", None, T0 + 5)]


def test_sink_to_reader_through_kafka(bootstrap: str, topics: Topics) -> None:
    ensure_topics(bootstrap, [topics.assignments], partitions=3)
    part = AssignmentSink(bootstrap, topics.assignments).build("assignments_out", 0, 1)
    fleet = SimFleet(6)
    sent = [msg("assign", f"w{i}", [fleet.ids[i]], dur=30 + i) for i in range(6)]
    sent.append(msg("preempt", "w5", [fleet.ids[5]], ts=T0 + 1))
    part.write_batch([("workload_events", None), ("assignments", sent[:4]),
                      ("assignments", sent[4:])])
    part.close()
    reader = AssignmentReader(bootstrap, topics.assignments)
    try:
        applied, deadline = 0, time.monotonic() + 20
        while applied < len(sent) and time.monotonic() < deadline:
            applied += reader.poll(fleet, timeout_s=0.5)
    finally:
        reader.close()
    assert applied == len(sent) and reader.bad == 0
    # Keyed by workload id, so w5's assign comes before its preempt on one partition.
    assert fleet.running == ["w0", "w1", "w2", "w3", "w4", None]
    assert fleet.until[2] == T0 + 32_000
