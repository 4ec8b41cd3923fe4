"""The workload state machine: allowed paths, rejected transitions and their counter."""

from __future__ import annotations

import math

import pytest
from prometheus_client import REGISTRY

from flows.router.states import ALLOWED, STATES, StateMachine, Workload
from hcp.schemas import WORKLOAD_EVENT_SCHEMA


def new(wid: str = "w1") -> Workload:
    return Workload(wid, "acme", "batch", 5, 1, 10.0, 60, math.nan, 1000)


def counter(src: str, dst: str) -> float:
    value = REGISTRY.get_sample_value(
        "hcp_workload_invalid_transitions_total", {"from_state": src, "to_state": dst}
    )
    return value or 0.0


def test_happy_path_and_preemption_cycle_emit_rows() -> None:
    sm, w = StateMachine(), new()
    path = ["submitted", "queued", "assigned", "running", "preempted", "queued", "assigned",
            "running", "completed"]
    for i, state in enumerate(path):
        assert sm.transition(w, state, 1000 + i, gpu_ids="g1")
    events = sm.drain()
    assert events.schema == WORKLOAD_EVENT_SCHEMA
    assert events["to_state"].to_list() == path
    assert events["from_state"].to_list() == [None, *path[:-1]]
    assert sm.invalid == 0 and sm.drain().height == 0


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (["submitted", "queued"], "running"),  # must be assigned first
        (["submitted", "queued", "assigned", "running", "completed"], "queued"),  # terminal
        (["submitted", "queued", "assigned"], "preempted"),  # only running work is preempted
        (["submitted"], "submitted"),  # a duplicate request
    ],
)
def test_invalid_transitions_rejected_and_counted(path: list[str], bad: str) -> None:
    sm, w = StateMachine(), new()
    for state in path:
        assert sm.transition(w, state, 1)
    before = counter(path[-1], bad)
    assert not sm.transition(w, bad, 2)
    assert w.state == path[-1]  # unchanged
    assert sm.invalid == 1
    assert counter(path[-1], bad) == before + 1
    assert sm.drain().height == len(path)  # no row for the rejected move


def test_every_pair_outside_the_table_is_rejected() -> None:
    for src in (None, *STATES):
        for dst in STATES:
            sm, w = StateMachine(), new()
            w.state = src
            assert sm.transition(w, dst, 1) == ((src, dst) in ALLOWED)
