"""Pending reasons, priority order that age cannot invert, and unschedulable requests."""

from __future__ import annotations

import polars as pl

from generators.router_sim import SimFleet
from tests.unit.flows.test_router_placement import T0, Loop, run_stream


def prices(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([{"site": None, "model": None, **r} for r in rows],
                        schema_overrides={"site": pl.String, "model": pl.String})


def reason(loop: Loop, wid: str) -> str:
    return loop.router.workloads[wid].pending_reason


def test_capacity_memory_temperature_and_price_cap() -> None:
    fleet = SimFleet(5, sites=("a",))
    fleet.mem_total[:] = [80.0, 80.0, 40.0, 40.0, 141.0]
    fleet.temp[:] = 50.0
    fleet.down[4] = True  # the only GPU with more than 80 GB is down
    loop = Loop(fleet, urgent_priority=11)
    loop.router.on_prices(prices([{"ts": T0, "kind": "gpu_spot_usd_hr", "value": 3.0,
                                   "model": "H100-SXM"}]))
    # The two 80 GB GPUs are taken by long jobs; only 40 GB GPUs stay free.
    loop.step(1, [{"workload_id": f"big-{i}", "mem_gb": 70.0, "est_duration_s": 3600}
                  for i in range(2)])
    loop.step(1, [{"workload_id": "needs-60", "mem_gb": 60.0},
                  {"workload_id": "needs-120", "mem_gb": 120.0},
                  {"workload_id": "cheap", "mem_gb": 10.0, "max_price_usd_hr": 2.0},
                  {"workload_id": "three", "gpus": 3, "mem_gb": 10.0}])
    # The GPUs that could hold it are busy: it waits for capacity.
    assert loop.state("needs-60") == "queued" and reason(loop, "needs-60") == "capacity"
    # Only a down GPU has the memory (not unschedulable: it may come back).
    assert loop.state("needs-120") == "queued" and reason(loop, "needs-120") == "memory"
    # Every GPU costs more than its cap, free or not: it waits for the price.
    assert loop.state("cheap") == "queued" and reason(loop, "cheap") == "price_cap"
    assert reason(loop, "three") == "capacity"  # 2 free, it needs 3 (the site has 4 up)
    # The free GPUs run hot: a request that fits them otherwise waits for temperature.
    fleet.temp[2:4] = 90.0
    loop.step(1, [{"workload_id": "hot", "mem_gb": 10.0}])
    assert reason(loop, "hot") == "temperature"
    assert reason(loop, "cheap") == "price_cap"  # price comes first: it is not about heat
    # The reasons reach the event stream as queued -> queued rows.
    rows = loop.all_events().filter((pl.col("from_state") == "queued")
                                    & (pl.col("to_state") == "queued"))
    got = sorted(zip(rows["workload_id"].to_list(), rows["reason"].to_list(), strict=True))
    assert got == [("cheap", "price_cap"), ("hot", "temperature"), ("needs-120", "memory"),
                   ("needs-60", "capacity"), ("three", "capacity")]
    # A change is recorded once, not every round.
    for _ in range(5):
        loop.step(1)
    again = loop.all_events().filter((pl.col("from_state") == "queued")
                                     & (pl.col("to_state") == "queued"))
    assert again.height == rows.height, again


def test_fresh_top_priority_goes_before_an_hour_of_aged_low_priority_work() -> None:
    loop = Loop(SimFleet(1, sites=("a",)), urgent_priority=11)
    loop.step(1, [{"workload_id": "long", "priority": 1, "est_duration_s": 3700}])
    loop.step(1, [{"workload_id": f"old-{i}", "priority": p, "est_duration_s": 60}
                  for i, p in enumerate((1, 1, 4, 9))])
    for _ in range(60):  # an hour of waiting
        loop.step(60)
    loop.step(1, [{"workload_id": "fresh-10", "priority": 10, "est_duration_s": 60}])
    assert loop.state("fresh-10") == "queued" and reason(loop, "fresh-10") == "capacity"
    for _ in range(40):
        loop.step(5)
        if loop.state("fresh-10") != "queued":
            break
    assert loop.state("fresh-10") == "assigned"  # first on the freed GPU
    assert all(loop.state(f"old-{i}") == "queued" for i in range(4))
    # Then by base priority, oldest first within a level.
    order = []
    for _ in range(200):
        loop.step(5)
        order += [m["workload_id"] for m in loop.msgs[-1:] if m["action"] == "assign"
                  and m["workload_id"] not in order and m["workload_id"].startswith("old")]
    assert order == ["old-3", "old-2", "old-0", "old-1"]


def test_starvation_guard_holds_back_work_behind_a_large_job() -> None:
    loop = run_stream(1800)
    assert loop.state("big") == "running"
    held = loop.all_events().filter(pl.col("reason") == "starvation_guard")
    assert held.height > 0 and "big" not in held["workload_id"].to_list()


def test_requests_that_can_never_fit_fail_unschedulable() -> None:
    fleet = SimFleet(16, sites=("a", "b"))  # 8 GPUs per site, 80 GB each
    loop = Loop(fleet)
    loop.step(1, [{"workload_id": "twelve", "gpus": 12},
                  {"workload_id": "hundred-gb", "mem_gb": 100.0},
                  {"workload_id": "eight", "gpus": 8},
                  {"workload_id": "eight-more", "gpus": 8},
                  {"workload_id": "eight-again", "gpus": 8}])
    events = loop.all_events()
    failed = events.filter(pl.col("to_state") == "failed")
    assert sorted(failed["workload_id"].to_list()) == ["hundred-gb", "twelve"]
    assert set(failed["reason"].to_list()) == {"unschedulable"}
    assert set(failed["from_state"].to_list()) == {"queued"}
    # Fits a site once free: waits for capacity instead of failing.
    # (same ts: placed in workload id order, so "eight-more" is the one left)
    assert loop.state("eight-more") == "queued" and reason(loop, "eight-more") == "capacity"
