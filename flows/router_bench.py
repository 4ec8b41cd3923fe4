"""Routing throughput: ``python -m flows.router_bench [--gpus N] [--queued N] [--rounds N]``.

Builds a fleet of ``--gpus`` GPUs over 10 sites and a queue of ``--queued`` requests (70 %
one GPU, 20 % two, 10 % four; mixed memory and price caps), then times routing rounds:

- round 0 starts from an idle fleet (placements dominate);
- each later round completes 10 % of the running work through GPU telemetry, submits as
  many new requests, and routes again with the queue still about ``--queued`` deep
  (the steady state: most of the queue does not fit and is scanned anyway).

A *decision* is one queued workload considered in a round (placed or left queued). The
numbers include queue ordering, the Numba kernel, event rows and assignment messages, not
Kafka. The kernel is compiled (and cached) before timing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from flows.router import Router, RouterConfig
from flows.router_sim import SimFleet
from flows.workload_assignments import apply_assignment

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


def run(gpus: int, queued: int, rounds: int, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    sites = tuple(f"site-{i}" for i in range(10))
    fleet = SimFleet(gpus, sites=sites, seed=seed)
    router = Router(RouterConfig(min_runtime_s=300))
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
        if r > 0:
            running = [w for w in router.active.values() if w.state == "running"]
            for w in running[: max(1, len(running) // 10)]:
                for g in w.gpu_idx:
                    fleet.release(fleet.ids[g])
            fresh = queued - len(router.queue)
            router.on_requests(_requests(rng, submitted, fresh, now))
            submitted += fresh
        router.on_gpu_status(fleet.status(now))
        depth = len(router.queue)
        t = time.perf_counter()
        placed = router.route(now)
        events, msgs = router.drain()
        elapsed = time.perf_counter() - t
        for m in msgs:
            apply_assignment(fleet, m)
        router.on_gpu_status(fleet.status(now + 1_000))  # the new work reports running
        out.append({"round": r, "queued": depth, "placed": placed, "seconds": elapsed,
                    "decisions_per_s": depth / elapsed, "events": events.height})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.router_bench", description=__doc__)
    parser.add_argument("--gpus", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(200, 200, 2, args.seed)  # compile and warm up
    rows = run(args.gpus, args.queued, args.rounds, args.seed)
    print(f"router bench: {args.gpus} GPUs, {args.queued} queued requests")
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
