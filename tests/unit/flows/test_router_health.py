"""GPUs that never start work: back-off, cordon `unresponsive`, no spinning, work moves on."""

from __future__ import annotations

import polars as pl

from flows.metrics import GPUS_CORDONED
from generators.router_sim import SimFleet
from tests.unit.flows.test_router_placement import T0, Loop

TIMEOUT_S = 120


def even_fleet(n: int, sites: tuple[str, ...] = ("a", "b")) -> SimFleet:
    """``n`` GPUs at one temperature, so placement order is GPU id order."""
    fleet = SimFleet(n, sites=sites)
    fleet.temp[:] = 50.0
    return fleet


def assigns(loop: Loop) -> list[tuple[int, str, str]]:
    """(ts, workload, gpu) of every assign message."""
    return [(m["ts"], m["workload_id"], g) for m in loop.msgs if m["action"] == "assign"
            for g in m["gpu_ids"]]


def test_work_leaves_dead_gpus_within_two_timeouts_and_they_get_cordoned() -> None:
    fleet = even_fleet(8)
    dead = {"gpu-00000", "gpu-00001"}  # first in placement order: they get work first
    fleet.unresponsive = set(dead)
    loop = Loop(fleet)
    submitted: dict[str, int] = {}
    for i in range(40):  # a request every 30 s for 20 minutes, each running 2 minutes
        wid = f"w{i:02d}"
        loop.step(30, [{"workload_id": wid, "est_duration_s": 120}])
        submitted[wid] = loop.now
    for _ in range(60):
        loop.step(5)
    events = loop.all_events()
    running = {r["workload_id"]: r["ts"] for r in events.filter(
        pl.col("to_state") == "running").iter_rows(named=True)}
    # Every request runs, each within two timeouts of its submission (plus the 30 s step).
    assert set(running) == set(submitted)
    assert max(running[w] - submitted[w] for w in submitted) <= (2 * TIMEOUT_S + 30) * 1000
    pairs = [(w, g) for _, w, g in assigns(loop)]
    assert len(pairs) == len(set(pairs))  # never the same workload on the same GPU twice
    # 3 misses in a row cordon a GPU: each dead GPU got at most 3 assignments, ever.
    to_dead = [g for _, _, g in assigns(loop) if g in dead]
    assert all(to_dead.count(g) <= 3 for g in dead)
    assert sorted(loop.router.cordoned()) == sorted(dead)
    assert GPUS_CORDONED.labels("a")._value.get() == 1  # gpu-00000 is on site a
    assert GPUS_CORDONED.labels("b")._value.get() == 1
    health = loop.router.drain_health()
    assert sorted(health["gpu_id"].to_list()) == sorted(dead)
    assert health["reason"].unique().to_list() == ["unresponsive"]
    assert fleet.double_assignments == 0


def test_all_gpus_dead_nothing_spins_and_the_queue_says_why() -> None:
    fleet = even_fleet(4)
    fleet.unresponsive = set(fleet.ids)
    loop = Loop(fleet)
    loop.step(1, [{"workload_id": f"w{i}", "priority": 1 + i % 10} for i in range(10)])
    for _ in range(720):  # one hour in 5 s steps
        loop.step(5)
    times = [ts for ts, _, _ in assigns(loop)]
    per_minute = pl.Series([(t - T0) // 60_000 for t in times]).value_counts()
    # Each GPU: misses at 2, 6 and 12 minutes (back-off 2 then 4 minutes), then a 30 min
    # cordon, one probation assignment, cordoned again: 4 assignments an hour, not 30.
    assert len(times) <= 4 * 4
    assert per_minute["count"].max() <= 4
    queued = [w for w in loop.router.workloads.values() if w.state == "queued"]
    assert len(queued) == 10
    assert {w.pending_reason for w in queued} == {"gpus_unresponsive"}
    assert len(loop.router.cordoned()) == 4


def test_a_gpu_that_runs_work_again_is_uncordoned() -> None:
    fleet = even_fleet(1, sites=("a",))
    fleet.unresponsive = {"gpu-00000"}
    loop = Loop(fleet, cordon_after=1)
    loop.step(1, [{"workload_id": "first"}])
    for _ in range(30):
        loop.step(5)
    assert loop.router.cordoned() == ["gpu-00000"]
    assert loop.router.workloads["first"].pending_reason == "gpus_unresponsive"
    fleet.unresponsive.clear()  # the agent is fixed; the work of someone else shows up
    fleet.assign("gpu-00000", "outside-job", loop.now + 10_000)
    loop.step(1)
    assert loop.router.cordoned() == []
    for _ in range(5):
        loop.step(5)
    assert loop.state("first") == "running"  # proven healthy: no longer avoided
    reasons = loop.router.drain_health()["reason"].to_list()
    assert reasons == ["unresponsive", "reported_work"]


def test_cordon_ends_after_the_cool_off() -> None:
    fleet = even_fleet(1, sites=("a",))
    fleet.unresponsive = {"gpu-00000"}
    loop = Loop(fleet, cordon_after=1, cordon_s=600)
    loop.step(1, [{"workload_id": "a"}])
    loop.step(TIMEOUT_S + 1)
    assert loop.router.cordoned() == ["gpu-00000"]
    loop.step(1, [{"workload_id": "b"}])
    assert loop.router.workloads["b"].pending_reason == "gpus_unresponsive"
    loop.step(600)
    assert loop.router.cordoned() == []
    assert loop.state("b") == "assigned"  # probation: offered work again


def test_a_four_gpu_job_with_one_dead_gpu_is_seen_and_placed_again_without_it() -> None:
    fleet = even_fleet(6, sites=("a",))
    dead = "gpu-00001"  # among the first four in placement order
    fleet.unresponsive = {dead}
    loop = Loop(fleet)
    loop.step(1, [{"workload_id": "big", "gpus": 4, "est_duration_s": 600}])
    first = [g for _, w, g in assigns(loop) if w == "big"]
    assert dead in first and len(first) == 4
    for _ in range(TIMEOUT_S // 5 + 6):  # one assign timeout and a little more
        loop.step(5)
    w = loop.router.workloads["big"]
    events = loop.all_events().filter(pl.col("workload_id") == "big")
    # Three GPUs reported it, one never did: not running; the timeout requeued it.
    assert "assign_timeout" in events["reason"].to_list()
    assert int(loop.router.fleet.misses[loop.router.fleet.index[dead]]) == 1
    assert all(int(loop.router.fleet.misses[loop.router.fleet.index[g]]) == 0
               for g in first if g != dead)
    second = [g for _, wid, g in assigns(loop) if wid == "big"][4:]
    assert len(second) == 4 and dead not in second
    for _ in range(6):
        loop.step(5)
    assert w.state == "running"
    requeued = events.filter(pl.col("reason") == "assign_timeout")["ts"][0]
    running = loop.all_events().filter((pl.col("workload_id") == "big")
                                       & (pl.col("to_state") == "running"))
    assert running.height == 1 and running["ts"][0] > requeued  # never on the first placement
