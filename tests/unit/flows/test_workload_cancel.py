"""Cancellation: the message format, decoding, and `cancelled` from every non-terminal state."""

from __future__ import annotations

import json
import zlib

import polars as pl
import pytest

from flows.decode import decode_values
from flows.router.states import ALLOWED, TERMINAL, StateMachine
from generators.router_sim import SimFleet
from hcp.schemas import WORKLOAD_FIELDS
from hcp.workload_requests import cancel_message, partition_for, submit_message
from tests.unit.flows.test_router_placement import T0, Loop

SUBMIT = {"workload_id": "wl-1", "customer": "acme", "priority": 5, "gpus": 1,
          "mem_gb": 10.0, "est_duration_s": 60}


def cancel_rows(wid: str, ts: int) -> pl.DataFrame:
    return decode_values([cancel_message(wid, ts)], WORKLOAD_FIELDS).rows


def test_messages_and_partition() -> None:
    assert json.loads(cancel_message("wl-1", T0)) == {
        "v": 1, "ts": T0, "op": "cancel", "workload_id": "wl-1"}
    body = json.loads(submit_message({**SUBMIT, "max_price_usd_hr": None}, T0))
    assert body == {"v": 1, "ts": T0, "op": "submit", **SUBMIT}
    assert partition_for("wl-1", 8) == zlib.crc32(b"wl-1") % 8
    with pytest.raises(ValueError, match="unknown workload request fields: colour"):
        submit_message({**SUBMIT, "colour": "red"}, T0)


@pytest.mark.parametrize("strict_path", [False, True])
def test_decoding_cancel_and_submit(strict_path: bool) -> None:
    values = [cancel_message("wl-1", T0), submit_message(SUBMIT, T0),
              json.dumps({**SUBMIT, "v": 1, "ts": T0}).encode(),  # no op: a submit
              b'{"v": 1, "ts": 5, "op": "delete", "workload_id": "x"}',
              b'{"v": 1, "ts": 5, "op": "cancel"}',
              b'{"v": 1, "ts": 5, "workload_id": "x"}']
    if strict_path:
        values.append(b"not json")  # one unparsable message sends the batch down the slow path
    out = decode_values(values, WORKLOAD_FIELDS)
    assert out.rows["op"].to_list() == ["cancel", "submit", None]
    assert out.rows["customer"].to_list() == [None, "acme", "acme"]
    assert out.bad_reason[:3] == ["out_of_range:op", "missing_field:workload_id",
                                  "missing_field:customer"]


def test_every_non_terminal_state_may_be_cancelled() -> None:
    for state in ("submitted", "queued", "assigned", "running", "preempted"):
        assert (state, "cancelled") in ALLOWED
    assert "cancelled" in TERMINAL
    assert not any(src == "cancelled" for src, _ in ALLOWED)
    assert StateMachine  # rows: see the router tests below


def test_cancel_from_queued_assigned_and_running_frees_the_gpus() -> None:
    fleet = SimFleet(2, sites=("a",))
    fleet.temp[:] = 50.0  # placement in GPU id order: "run" on gpu-00000, "stuck" on 00001
    fleet.unresponsive = {"gpu-00001"}  # never starts it: stays assigned
    loop = Loop(fleet, urgent_priority=11)
    loop.step(1, [{"workload_id": "run", "est_duration_s": 3600},
                  {"workload_id": "stuck", "est_duration_s": 3600}])
    loop.step(1, [{"workload_id": "wait", "est_duration_s": 3600}])
    loop.step(1)
    assert [loop.state(w) for w in ("run", "stuck", "wait")] == ["running", "assigned", "queued"]
    for wid in ("wait", "stuck", "run"):
        loop.router.on_requests(cancel_rows(wid, loop.now))
        loop.step(1)
        assert loop.state(wid) == "cancelled"
    events = loop.all_events().filter(pl.col("to_state") == "cancelled")
    assert dict(zip(events["workload_id"], events["from_state"], strict=True)) == {
        "wait": "queued", "stuck": "assigned", "run": "running"}
    assert set(events["reason"]) == {"cancel_request"}
    cancels = [m for m in loop.msgs if m["action"] == "cancel"]
    assert [m["workload_id"] for m in cancels] == ["stuck", "run"]  # queued had no GPUs
    assert fleet.running == [None, None]  # the fleet stopped the work
    assert loop.router.fleet.holder == [None, None] and not loop.router.active
    assert loop.router.queue.level_sizes() == [0] * 10
    loop.step(1, [{"workload_id": "next"}])
    assert loop.state("next") == "assigned"  # the freed GPU takes new work


def test_cancel_after_the_end_or_for_nobody_is_counted_and_a_replay_is_not() -> None:
    loop = Loop(SimFleet(1), urgent_priority=11)
    loop.step(1, [{"workload_id": "quick", "est_duration_s": 2}])
    for _ in range(5):
        loop.step(1)
    assert loop.state("quick") == "completed"
    machine = loop.router.machine
    before = machine.invalid
    loop.router.on_requests(cancel_rows("quick", loop.now))
    loop.router.on_requests(cancel_rows("nobody", loop.now))
    assert machine.invalid == before + 2
    loop.step(1, [{"workload_id": "gone"}])
    loop.router.on_requests(cancel_rows("gone", loop.now))
    loop.router.on_requests(cancel_rows("gone", loop.now))  # replayed: no change, not counted
    assert loop.state("gone") == "cancelled" and machine.invalid == before + 2


def test_cancel_in_the_same_batch_as_its_submit() -> None:
    loop = Loop(SimFleet(1), urgent_priority=11)
    both = decode_values([submit_message({**SUBMIT, "workload_id": "x"}, loop.now + 1),
                          cancel_message("x", loop.now + 1)], WORKLOAD_FIELDS).rows
    loop.router.on_requests(both)
    assert loop.state("x") == "cancelled"
    assert loop.router.machine.drain()["to_state"].to_list() == [
        "submitted", "queued", "cancelled"]


def test_a_late_stop_for_the_previous_holder_does_not_end_new_work() -> None:
    """preempt(victim) read after assign(urgent) on the same GPU: the urgent work goes on."""
    import numpy as np

    from generators.gpu_fleet import GpuFleet
    from hcp.assignments import apply_assignment

    def msg(action: str, wid: str) -> dict:
        return {"v": 1, "ts": T0, "workload_id": wid, "gpu_ids": ["gpu-00001"],
                "site": "a", "est_duration_s": 600, "action": action}

    sim = SimFleet(2, sites=("a",))
    gpus = GpuFleet(2, np.zeros(2, dtype=np.int64), np.random.default_rng(0), T0)
    for fleet, running in ((sim, lambda: sim.running[1]),
                           (gpus, lambda: gpus.workload[gpus.index_of("gpu-00001")])):
        apply_assignment(fleet, msg("assign", "victim"))
        apply_assignment(fleet, msg("assign", "urgent"))
        apply_assignment(fleet, msg("preempt", "victim"))  # late, from another partition
        assert running() == "urgent"
        apply_assignment(fleet, msg("cancel", "urgent"))
        assert running() is None
