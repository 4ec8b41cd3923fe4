"""A 100-GPU fleet given 10,000 requests, simulated in event time with completions.

The router, the simulated fleet and the assignment messages form the same closed loop as
the demo. The loop runs twice: calling the router directly every step, and through the
dataflow's event-time clock (ticks as long as the fleet's report interval, behind a 5 s
lateness, as in the job). At the end every request has ended (completed, or failed with
its GPU down), and replaying the event stream shows no GPU ever held by two running
workloads at once.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from flows.router.clock import RouterClock
from flows.router.router import Router, RouterConfig
from generators.router_sim import SimFleet
from hcp.assignments import apply_assignment

T0 = 1_767_225_600_000
N_REQUESTS = 10_000
STEP_MS = 5_000


def make_requests(seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = N_REQUESTS
    arrival = T0 + np.sort(rng.integers(0, 8_000_000, n))
    return pl.DataFrame(
        {
            "v": np.ones(n, dtype=np.int64),
            "ts": arrival,
            "workload_id": [f"wl-{i:05d}" for i in range(n)],
            "customer": rng.choice(["acme", "globex", "initech"], n).tolist(),
            "kind": [None] * n,
            "priority": rng.integers(1, 11, n),
            "gpus": rng.choice([1, 2, 4], n, p=[0.7, 0.2, 0.1]),
            "mem_gb": rng.choice([8.0, 24.0, 70.0], n),
            "est_duration_s": rng.integers(10, 121, n),
            "max_price_usd_hr": [None] * n,
        },
        schema_overrides={"kind": pl.String, "max_price_usd_hr": pl.Float64},
    )


def replay_no_double_running(events: pl.DataFrame) -> int:
    """Walk the events in emission order; count GPUs taken while another job runs there."""
    on_gpu: dict[str, str] = {}
    clashes = 0
    for wid, src, dst, gpus in events.select(
        "workload_id", "from_state", "to_state", "gpus"
    ).iter_rows():
        ids = gpus.split(",") if gpus else []
        if dst == "running":
            for g in ids:
                if g in on_gpu:
                    clashes += 1
                on_gpu[g] = wid
        elif src == "running":
            for g in ids:
                if on_gpu.get(g) == wid:
                    del on_gpu[g]
    return clashes


@pytest.mark.parametrize("driver", ["router", "clock"])
def test_100_gpus_10k_requests_nothing_lost_no_double_booking(driver: str) -> None:
    reqs = make_requests(seed=42)
    fleet = SimFleet(100, sites=("north", "south", "east", "west"), seed=1)
    router = Router(RouterConfig(min_runtime_s=30, tick_ms=STEP_MS))
    clock = RouterClock.create(router, ("requests#0", "gpu#0"))
    ts_col = reqs["ts"].to_numpy()
    events: list[pl.DataFrame] = []
    now, cursor, max_clash_live = T0, 0, 0
    outage = (T0 + 2_000_000, T0 + 2_060_000)  # two GPUs drop out for a minute
    while True:
        now += STEP_MS
        fleet.down[:2] = outage[0] <= now < outage[1]
        end = int(np.searchsorted(ts_col, now, side="right"))
        batch = reqs.slice(cursor, end - cursor)
        cursor = end
        if driver == "router":
            router.on_requests(batch)
            router.on_gpu_status(fleet.status(now))
            router.route(now)
        else:
            clock.add_batch("workloads", "requests#0", batch, eof=cursor == N_REQUESTS)
            clock.add_batch("gpu", "gpu#0", fleet.status(now).drop("v"))
            clock.advance()
        ev, msgs = router.drain()
        events.append(ev)
        for m in msgs:
            apply_assignment(fleet, m, now_ms=now)
        held = [g for w in router.active.values() for g in w.gpu_idx]
        max_clash_live = max(max_clash_live, len(held) - len(set(held)))
        if cursor == N_REQUESTS and not router.queue and not router.active:
            break
        assert now < T0 + 40_000_000, f"did not drain: {router.counts()}"
    all_events = pl.concat(events)
    counts = router.counts()
    assert counts.get("completed", 0) + counts.get("failed", 0) == N_REQUESTS
    failed = all_events.filter(pl.col("to_state") == "failed")
    assert failed["reason"].unique().to_list() in ([], ["gpu_down"])
    last = all_events.group_by("workload_id").agg(pl.col("to_state").last())
    assert last.height == N_REQUESTS  # every request has an event trail
    assert set(last["to_state"].unique().to_list()) <= {"completed", "failed"}
    assert replay_no_double_running(all_events) == 0
    assert max_clash_live == 0 and fleet.double_assignments == 0
    assert router.machine.invalid == 0
    # The loop exercised the interesting paths, not just FIFO.
    assert all_events.filter(pl.col("to_state") == "preempted").height > 0
    assert fleet.completed >= set(
        all_events.filter(pl.col("to_state") == "completed")["workload_id"].to_list()
    )
