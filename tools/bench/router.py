"""Routing throughput: ``python -m tools.bench.router [--gpus N] [--queued N] [--rounds N]``.

Builds a fleet of ``--gpus`` GPUs over 10 sites and a queue of ``--queued`` requests (70 %
one GPU, 20 % two, 10 % four; mixed memory and price caps), then times routing rounds:

- round 0 starts from an idle fleet (placements dominate);
- each later round completes 10 % of the running work through GPU telemetry, submits as
  many new requests, and routes again with the queue still about ``--queued`` deep
  (the steady state: most of the queue does not fit and is scanned anyway).

A *decision* is one queued workload considered in a round (placed or left queued). The
numbers include queue ordering, the Numba kernel, event rows and assignment messages, not
Kafka. The kernel is compiled (and cached) before timing.

``--clock`` drives the same rounds through the dataflow's event-time clock
(:class:`flows.router.clock.RouterClock`, one 10 s tick per round), so each timing also
covers buffering the round's GPU reports and requests, sorting them into canonical order
and applying them: the whole cost of one tick as the job pays it. New work then shows as
running one round later, so round 1 frees nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from flows.router.clock import RouterClock
from flows.router.router import Router, RouterConfig
from generators.router_sim import SimFleet
from hcp.assignments import apply_assignment

T0 = 1_767_225_600_000


def _requests(rng: np.random.Generator, start: int, n: int, ts: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "v": np.ones(n, dtype=np.int64),
            "ts": np.full(n, ts, dtype=np.int64),
            "workload_id": [f"wl-{i:07d}" for i in range(start, start + n)],
            "customer": ["bench"] * n,
            "kind": [None] * n,
            "priority": rng.integers(1, 11, n),
            "gpus": rng.choice([1, 2, 4], n, p=[0.7, 0.2, 0.1]),
            "mem_gb": rng.choice([8.0, 24.0, 70.0], n),
            "est_duration_s": rng.integers(60, 3600, n),
            "max_price_usd_hr": np.where(rng.random(n) < 0.3, 2.5, np.nan),
        },
        schema_overrides={"kind": pl.String},
    ).with_columns(pl.col("max_price_usd_hr").fill_nan(None))


def run(
    gpus: int, queued: int, rounds: int, seed: int = 0, clock: bool = False
) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    sites = tuple(f"site-{i}" for i in range(10))
    fleet = SimFleet(gpus, sites=sites, seed=seed)
    router = Router(RouterConfig(min_runtime_s=300, tick_ms=10_000))
    ticks = RouterClock.create(router, ("gpu#0", "requests#0"))
    prices = pl.DataFrame(
        {"ts": [T0] * 11, "kind": ["gpu_spot_usd_hr"] + ["electricity_usd_mwh"] * 10,
         "value": [2.2, *rng.uniform(30, 90, 10).round(1).tolist()],
         "site": [None, *sites], "model": ["H100-SXM"] + [None] * 10}
    )
    router.on_prices(prices)
    now = T0
    router.on_gpu_status(fleet.status(now))
    router.on_requests(_requests(rng, 0, queued, now))
    submitted = queued
    out = []
    for r in range(rounds):
        now += 10_000
        fresh_reqs = None
        if r > 0:
            running = [w for w in router.active.values() if w.state == "running"]
            for w in running[: max(1, len(running) // 10)]:
                for g in w.gpu_idx:
                    fleet.release(fleet.ids[g])
            fresh = queued - len(router.queue)
            fresh_reqs = _requests(rng, submitted, fresh, now)
            submitted += fresh
        status = fleet.status(now)
        if clock:
            depth = len(router.queue) + (fresh_reqs.height if fresh_reqs is not None else 0)
            t = time.perf_counter()
            ticks.add_batch("gpu", "gpu#0", status.drop("v"))
            if fresh_reqs is not None:
                ticks.add_batch("workloads", "requests#0", fresh_reqs)
            ticks.advance(final=True)
            events, msgs = router.drain()
            elapsed = time.perf_counter() - t
            placed = sum(m["action"] == "assign" for m in msgs)
        else:
            if fresh_reqs is not None:
                router.on_requests(fresh_reqs)
            router.on_gpu_status(status)
            depth = len(router.queue)
            t = time.perf_counter()
            placed = router.route(now)
            events, msgs = router.drain()
            elapsed = time.perf_counter() - t
        for m in msgs:
            apply_assignment(fleet, m)
        if not clock:
            router.on_gpu_status(fleet.status(now + 1_000))  # the new work reports running
        out.append({"round": r, "queued": depth, "placed": placed, "seconds": elapsed,
                    "decisions_per_s": depth / elapsed, "events": events.height})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.router", description=__doc__)
    parser.add_argument("--gpus", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", action="store_true",
                        help="route through the event-time clock, inputs included")
    args = parser.parse_args(argv)
    run(200, 200, 2, args.seed, args.clock)  # compile and warm up
    rows = run(args.gpus, args.queued, args.rounds, args.seed, args.clock)
    via = "through the event-time clock" if args.clock else "router.route only"
    print(f"router bench: {args.gpus} GPUs, {args.queued} queued requests, {via}")
    print(f"{'round':>5} {'queued':>7} {'placed':>7} {'seconds':>8} {'decisions/s':>12}")
    for row in rows:
        print(f"{row['round']:>5} {row['queued']:>7} {row['placed']:>7} "
              f"{row['seconds']:>8.3f} {row['decisions_per_s']:>12,.0f}")
    steady = rows[1:] or rows
    total = sum(r["queued"] for r in steady) / sum(r["seconds"] for r in steady)
    print(f"steady state: {total:,.0f} routing decisions/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
