"""Router decisions on small fleets driven in event time through the simulated GPU loop."""

from __future__ import annotations

import polars as pl

from flows.router.router import Router, RouterConfig
from generators.router_sim import SimFleet
from hcp.assignments import apply_assignment

T0 = 1_767_225_600_000


def requests(rows: list[dict]) -> pl.DataFrame:
    base = {"v": 1, "customer": "acme", "kind": None, "mem_gb": 10.0, "est_duration_s": 600,
            "max_price_usd_hr": None, "gpus": 1, "priority": 5}
    return pl.DataFrame(
        [{**base, **r} for r in rows],
        schema_overrides={"kind": pl.String, "max_price_usd_hr": pl.Float64},
    )


class Loop:
    """Router + simulated fleet, stepped in event time."""

    def __init__(self, fleet: SimFleet, **cfg: float) -> None:
        self.fleet = fleet
        self.router = Router(RouterConfig(**cfg))
        self.now = T0
        self.events: list[pl.DataFrame] = []
        self.msgs: list[dict] = []
        self.router.on_gpu_status(fleet.status(self.now))

    def step(self, seconds: int = 1, reqs: list[dict] | None = None) -> None:
        self.now += seconds * 1000
        if reqs:
            self.router.on_requests(requests([{"ts": self.now, **r} for r in reqs]))
        self.router.on_gpu_status(self.fleet.status(self.now))
        self.router.route(self.now)
        events, msgs = self.router.drain()
        self.events.append(events)
        self.msgs.extend(msgs)
        for m in msgs:
            apply_assignment(self.fleet, m)

    def state(self, wid: str) -> str | None:
        return self.router.workloads[wid].state

    def all_events(self) -> pl.DataFrame:
        return pl.concat(self.events)


def test_priority_order_honoured_on_one_gpu() -> None:
    loop = Loop(SimFleet(1), urgent_priority=11)  # no preemption here
    loop.step(1, [{"workload_id": "busy", "priority": 1, "est_duration_s": 10}])
    loop.step(1, [{"workload_id": f"p{p}", "priority": p, "est_duration_s": 10}
                  for p in (3, 7, 5)])
    loop.step(1, [{"workload_id": "p7-later", "priority": 7, "est_duration_s": 10},
                  {"workload_id": "p7-a-later", "priority": 7, "est_duration_s": 10}])
    for _ in range(80):
        loop.step(1)
    ev = loop.all_events().filter(pl.col("to_state") == "assigned")
    # Priority first; FIFO within level 7; same submit ts => workload id.
    assert ev["workload_id"].to_list() == ["busy", "p7", "p7-a-later", "p7-later", "p5", "p3"]


def test_multi_gpu_job_lands_on_one_site() -> None:
    fleet = SimFleet(12, sites=("a", "b", "c"))  # 4 GPUs per site
    loop = Loop(fleet)
    # Fill 3 GPUs of site a and 2 of site b: only site c has 3 free GPUs... and site b 2.
    loop.step(1, [{"workload_id": f"f{i}", "est_duration_s": 3600} for i in range(5)])
    taken = {m["gpu_ids"][0] for m in loop.msgs}
    loop.step(1, [{"workload_id": "big", "gpus": 3}])
    (msg,) = [m for m in loop.msgs if m["workload_id"] == "big"]
    sites = {fleet.sites[fleet.index[g]] for g in msg["gpu_ids"]}
    assert len(msg["gpu_ids"]) == 3 and len(sites) == 1
    assert not taken & set(msg["gpu_ids"])
    loop.step(1, [{"workload_id": "too-big", "gpus": 5}])  # no site has 5 GPUs
    assert loop.state("too-big") == "failed"  # unschedulable: no site could ever hold it


def test_memory_fit_respected() -> None:
    fleet = SimFleet(4, sites=("a",))
    fleet.mem_total[:] = [40.0, 40.0, 80.0, 141.0]
    loop = Loop(fleet)
    loop.step(1, [{"workload_id": "m100", "mem_gb": 100.0},
                  {"workload_id": "m60", "mem_gb": 60.0},
                  {"workload_id": "m200", "mem_gb": 200.0}])
    placed = {m["workload_id"]: m["gpu_ids"] for m in loop.msgs}
    assert placed["m100"] == ["gpu-00003"]
    assert placed["m60"] == ["gpu-00002"]
    assert "m200" not in placed and loop.state("m200") == "failed"  # above every GPU


def test_power_down_gpus_get_no_work_and_cheaper_power_wins() -> None:
    fleet = SimFleet(4, sites=("dear", "cheap"))
    fleet.temp[:] = 50.0
    loop = Loop(fleet)
    loop.router.on_prices(pl.DataFrame({
        "ts": [T0] * 3, "kind": ["gpu_spot_usd_hr", "electricity_usd_mwh", "electricity_usd_mwh"],
        "value": [2.5, 90.0, 30.0], "site": [None, "dear", "cheap"],
        "model": ["H100-SXM", None, None]}))
    cheap = [g for g, s in zip(fleet.ids, fleet.sites, strict=True) if s == "cheap"]
    loop.router.on_recommendations(pl.DataFrame(
        {"device_id": [cheap[0]], "device_type": ["gpu"], "action": ["power_down"]}))
    loop.step(1, [{"workload_id": "w1"}])
    assert loop.msgs[-1]["gpu_ids"] == [cheap[1]]  # cheap power, not the powered-down GPU
    loop.step(1, [{"workload_id": "w2"}, {"workload_id": "w3"}, {"workload_id": "w4"}])
    used = {g for m in loop.msgs for g in m["gpu_ids"]}
    assert cheap[0] not in used
    assert loop.state("w4") == "queued"


def test_price_cap_respected() -> None:
    loop = Loop(SimFleet(2))
    loop.router.on_prices(pl.DataFrame({"ts": [T0], "kind": ["gpu_spot_usd_hr"], "value": [3.0],
                                        "site": [None], "model": ["H100-SXM"]}))
    loop.step(1, [{"workload_id": "cheapskate", "max_price_usd_hr": 2.0},
                  {"workload_id": "ok", "max_price_usd_hr": 3.0}])
    assert loop.state("cheapskate") == "queued" and loop.state("ok") == "assigned"


def test_preemption_picks_cheapest_victim_and_respects_min_runtime() -> None:
    loop = Loop(SimFleet(4, sites=("a",)), min_runtime_s=300)
    loop.step(1, [{"workload_id": "p5-old", "priority": 5, "est_duration_s": 7200},
                  {"workload_id": "p2-old", "priority": 2, "est_duration_s": 7200}])
    loop.step(60, [{"workload_id": "p2-new", "priority": 2, "est_duration_s": 7200},
                   {"workload_id": "p6", "priority": 6, "est_duration_s": 7200}])
    loop.step(1)
    assert all(loop.state(w) == "running" for w in ("p5-old", "p2-old", "p2-new", "p6"))
    # Too soon: p2-new has run ~1 s, below the minimum runtime; nobody may be preempted.
    loop.step(1, [{"workload_id": "urgent1", "priority": 9}])
    assert loop.state("urgent1") == "queued"
    for _ in range(30):
        loop.step(10)  # 300 s later p2-new is preemptable; p2-old lost more run time
    assert loop.state("urgent1") in ("assigned", "running")
    ev = loop.all_events()
    preempted = ev.filter(pl.col("to_state") == "preempted")
    assert preempted["workload_id"].to_list() == ["p2-new"]
    assert preempted["reason"].to_list() == ["preempted_by:urgent1"]
    # The victim is back in the queue with its original age.
    victim = loop.router.workloads["p2-new"]
    assert victim.state == "queued" and victim.submit_ts == T0 + 61_000
    assert loop.fleet.double_assignments == 0
    urgent_gpus = next(m for m in loop.msgs if m["workload_id"] == "urgent1")["gpu_ids"]
    victim_gpus = next(m for m in loop.msgs if m["workload_id"] == "p2-new")["gpu_ids"]
    assert urgent_gpus == victim_gpus


def test_preemption_never_takes_equal_or_higher_priority() -> None:
    loop = Loop(SimFleet(1), min_runtime_s=0)
    loop.step(1, [{"workload_id": "p9", "priority": 9, "est_duration_s": 7200}])
    loop.step(10, [{"workload_id": "u9", "priority": 9}])
    loop.step(10)
    assert loop.state("p9") == "running" and loop.state("u9") == "queued"


def test_gpu_down_fails_running_work_and_requeues_assigned_work() -> None:
    fleet = SimFleet(2, sites=("a",))
    loop = Loop(fleet)
    loop.step(1, [{"workload_id": "r", "est_duration_s": 3600}])
    loop.step(1)
    assert loop.state("r") == "running"
    gpu = fleet.index[loop.msgs[0]["gpu_ids"][0]]
    fleet.down[gpu] = True
    loop.step(1)
    assert loop.state("r") == "failed"
    # An assignment whose GPU dies before it starts goes back to the queue.
    fleet.down[:] = False
    loop.router.on_requests(requests([{"workload_id": "a", "ts": loop.now}]))
    loop.router.route(loop.now)
    _events, msgs = loop.router.drain()
    g = fleet.index[msgs[0]["gpu_ids"][0]]
    fleet.down[g] = True  # the fleet never applied the assignment
    loop.step(1)
    ev = loop.all_events().filter(pl.col("workload_id") == "a")
    moves = list(zip(ev["from_state"], ev["to_state"], ev["reason"], strict=True))
    assert ("assigned", "queued", "gpu_down") in moves
    assert loop.state("a") == "assigned"  # placed again, on the GPU that is still up
    assert loop.router.workloads["a"].gpu_idx != (g,)


def test_assignment_timeout_requeues() -> None:
    fleet = SimFleet(1)
    router = Router(RouterConfig(assign_timeout_s=30))
    router.on_gpu_status(fleet.status(T0))
    router.on_requests(requests([{"workload_id": "lost", "ts": T0}]))
    router.route(T0)
    router.drain()  # the assignment message is never delivered
    router.on_gpu_status(fleet.status(T0 + 31_000))
    router.route()
    events, msgs = router.drain()
    assert events["reason"].to_list()[0] == "assign_timeout"
    # Cancelled; the only GPU never started it, so it is not offered that GPU again.
    assert [m["action"] for m in msgs] == ["preempt"]
    assert router.workloads["lost"].pending_reason == "gpus_unresponsive"


def run_stream(guard: float | None, reservations: int = 0) -> Loop:
    """4 GPUs; a 4-GPU job among same-priority 1-GPU jobs that arrive faster than they run."""
    loop = Loop(SimFleet(4, sites=("a",)), starvation_guard_s=guard, urgent_priority=11,
                reservations=reservations)
    # Staggered durations keep the GPUs from ever freeing together by accident.
    loop.step(1, [{"workload_id": f"s{i}", "est_duration_s": 30 + 15 * i} for i in range(4)])
    loop.step(1, [{"workload_id": "big", "gpus": 4, "priority": 5, "est_duration_s": 60}])
    for i in range(600):
        dur = 50 + 7 * (i % 5)
        loop.step(5, [{"workload_id": f"t{i}", "est_duration_s": dur}] if i % 2 == 0 else None)
        if loop.state("big") == "running":
            break
    return loop


def test_starvation_guard_lets_a_large_job_through() -> None:
    # Without the guard small jobs take every GPU the moment it frees: big never runs.
    assert run_stream(None).state("big") == "queued"
    loop = run_stream(1800)
    assert loop.state("big") == "running"
    started = loop.router.workloads["big"].running_ts - (T0 + 2_000)
    assert 1_800_000 <= started <= 1_800_000 + 120_000  # guard, then one job duration


def test_a_reservation_starts_the_large_job_when_its_gpus_free_up() -> None:
    # With a reservation the 4-GPU job does not wait for the guard: the small jobs behind
    # it may only take GPUs they give back before all four are expected free.
    loop = run_stream(None, reservations=8)
    assert loop.state("big") == "running"
    started = loop.router.workloads["big"].running_ts - (T0 + 2_000)
    assert started <= 120_000  # the four first jobs end within 75 s of each other


def test_snapshot_resume_gives_the_same_decisions() -> None:
    """A pickled router (the Bytewax snapshot) resumes exactly where it was."""
    import pickle

    def drive(loop: Loop, start: int, n: int) -> None:
        for i in range(start, start + n):
            loop.step(7, [{"workload_id": f"w{i}", "priority": 1 + i % 10, "gpus": 1 + i % 3,
                           "est_duration_s": 20 + i % 50}])

    a = Loop(SimFleet(6, sites=("x", "y")), min_runtime_s=10)
    drive(a, 0, 30)
    b = Loop(SimFleet(6, sites=("x", "y")), min_runtime_s=10)
    b.router = pickle.loads(pickle.dumps(a.router))
    b.fleet = pickle.loads(pickle.dumps(a.fleet))
    b.now, b.msgs = a.now, list(a.msgs)
    split = len(a.events)
    drive(a, 30, 40)
    drive(b, 30, 40)
    assert a.msgs == b.msgs
    after = pl.concat(a.events[split:])
    assert after.height > 100 and after.equals(b.all_events())


def test_replayed_request_is_ignored_but_a_reused_id_is_counted() -> None:
    router = Router()
    first = requests([{"workload_id": "w", "ts": T0}])
    router.on_requests(first)
    router.on_requests(first)  # the same message again, as after a resume
    assert router.machine.invalid == 0
    router.on_requests(requests([{"workload_id": "w", "ts": T0 + 5}]))
    assert router.machine.invalid == 1
    events, _ = router.drain()
    assert events["to_state"].to_list() == ["submitted", "queued"]
