"""Customer quotas in the router: over-quota work waits with reason `quota`, then runs."""

from __future__ import annotations

from generators.router_sim import SimFleet
from tests.unit.flows.test_router_placement import Loop


def test_max_gpus_holds_work_back_and_releases_it() -> None:
    loop = Loop(SimFleet(4), urgent_priority=11)
    quota = {"customer": "acme", "quota_max_gpus": 2, "quota_gpu_hours": None,
             "est_duration_s": 10}
    loop.step(1, [{"workload_id": f"a{i}", **quota} for i in range(3)]
              + [{"workload_id": "b0", "customer": "beta", "est_duration_s": 10}])
    loop.step(1)
    placed = {"assigned", "running"}
    states = {w: loop.state(w) for w in ("a0", "a1", "a2", "b0")}
    assert sorted(s in placed for w, s in states.items() if w != "b0") == [False, True, True]
    assert states["b0"] in placed  # another customer is not held (a GPU is free)
    held = next(w for w in ("a0", "a1", "a2") if states[w] == "queued")
    assert loop.router.workloads[held].pending_reason == "quota"
    for _ in range(40):
        loop.step(1)
        if loop.state(held) in placed:
            break
    assert loop.state(held) in placed
    events = loop.all_events()
    quota_rows = events.filter((events["workload_id"] == held) & (events["reason"] == "quota"))
    assert quota_rows.height == 1


def test_monthly_gpu_hours_hold_new_work_once_spent() -> None:
    loop = Loop(SimFleet(2), urgent_priority=11)
    quota = {"customer": "acme", "quota_max_gpus": None, "quota_gpu_hours": 5 / 3600}
    loop.step(1, [{"workload_id": "first", "est_duration_s": 20, **quota}])
    for _ in range(60):
        loop.step(1)
        if loop.state("first") == "completed":
            break
    assert loop.state("first") == "completed"
    loop.step(1, [{"workload_id": "second", "est_duration_s": 5, **quota}])
    loop.step(1)
    assert loop.state("second") == "queued"
    assert loop.router.workloads["second"].pending_reason == "quota"
    # A raised budget (on the customer's next request) releases it.
    more = {**quota, "quota_gpu_hours": 10.0}
    loop.step(1, [{"workload_id": "third", "est_duration_s": 5, **more}])
    loop.step(1)
    assert loop.state("second") in ("assigned", "running")
