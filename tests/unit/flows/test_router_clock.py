"""The router's event-time clock: same inputs, same decisions, however they are delivered."""

from __future__ import annotations

import pickle

import numpy as np
import polars as pl
from prometheus_client import REGISTRY

from flows.profitability.fleet import FleetLogic, FleetState, SiteGroupLogic
from flows.profitability.shard import NEG_INF
from flows.router.clock import RouterClock
from flows.router.router import Router, RouterConfig
from generators.router_sim import SimFleet

T0 = 1_767_225_600_000
SECONDS = 240
N_GPUS = 8


def req_rows(rows: list[dict]) -> pl.DataFrame:
    base = {"v": 1, "customer": "acme", "kind": None, "mem_gb": 10.0, "est_duration_s": 60,
            "max_price_usd_hr": None, "gpus": 1, "priority": 5}
    return pl.DataFrame(
        [{**base, **r} for r in rows],
        schema_overrides={"kind": pl.String, "max_price_usd_hr": pl.Float64},
    )


def partitions(seed: int) -> dict[str, tuple[str, pl.DataFrame]]:
    """input id -> (kind, rows in offset order): two GPU, two request, one price partition.

    GPU reports name random requests, go down now and then and arrive up to 1.5 s out of
    order (within the lateness); a few reports are 30 s late and must be dropped. Many
    rows tie on ts, across partitions too, so only a canonical order gives one outcome.
    """
    rng = np.random.default_rng(seed)
    fleet = SimFleet(N_GPUS, sites=("north", "south"), seed=seed)
    wids = [f"wl-{i:03d}" for i in range(120)]
    frames = []
    for s in range(SECONDS):
        df = fleet.status(T0 + s * 1000).drop("v")
        state = rng.choice(["idle", "busy", "down"], N_GPUS, p=[0.6, 0.37, 0.03])
        named = [wids[i] if st == "busy" else None
                 for i, st in zip(rng.integers(0, len(wids), N_GPUS), state, strict=True)]
        jitter = rng.integers(0, 4, N_GPUS) * 500  # coarse: many reports tie on ts
        frames.append(df.with_columns(pl.Series("state", state.tolist()),
                                      pl.Series("workload_id", named, dtype=pl.String),
                                      pl.col("ts") + jitter))
    gpu = pl.concat(frames)
    late = rng.choice(np.arange(gpu.height // 2, gpu.height), 6, replace=False)
    gpu = gpu.with_columns(
        pl.when(pl.int_range(gpu.height).is_in(late.tolist()))
        .then(pl.col("ts") - 30_000).otherwise(pl.col("ts")).alias("ts")
    )
    reqs = req_rows([
        {"ts": T0 + int(t), "workload_id": w, "priority": int(p), "gpus": int(g)}
        for t, w, p, g in zip(np.sort(rng.integers(0, SECONDS, len(wids))) * 1000, wids,
                              rng.integers(1, 11, len(wids)), rng.choice([1, 1, 2], len(wids)),
                              strict=True)
    ])
    prices = pl.DataFrame({
        "v": 1, "ts": [T0 + i * 30_000 for i in range(SECONDS // 30)],
        "kind": "gpu_spot_usd_hr", "value": [2.0 + 0.1 * i for i in range(SECONDS // 30)],
        "site": None, "model": "H100-SXM",
    }, schema_overrides={"site": pl.String})
    gpu_id = gpu["gpu_id"].str.slice(-1).cast(pl.Int64)
    return {
        "gpu#0": ("gpu", gpu.filter(gpu_id % 2 == 0)),
        "gpu#1": ("gpu", gpu.filter(gpu_id % 2 == 1)),
        "req#0": ("workloads", reqs.filter(pl.int_range(reqs.height) % 2 == 0)),
        "req#1": ("workloads", reqs.filter(pl.int_range(reqs.height) % 2 == 1)),
        "prices#0": ("prices", prices),
    }


def deliver(
    parts: dict[str, tuple[str, pl.DataFrame]], seed: int, max_chunk: int, snapshot_at: int = -1
) -> tuple[pl.DataFrame, list[dict], RouterClock]:
    """Feed the partitions in random chunks and a random interleaving; collect outputs."""
    rng = np.random.default_rng(seed)
    clock = RouterClock.create(Router(RouterConfig(min_runtime_s=20)), tuple(parts))
    offsets = dict.fromkeys(parts, 0)
    events, msgs = [], []
    calls = 0
    while any(offsets[p] < parts[p][1].height for p in parts):
        live = [p for p in parts if offsets[p] < parts[p][1].height]
        p = live[int(rng.integers(0, len(live)))]
        kind, rows = parts[p]
        n = int(rng.integers(1, max_chunk + 1))
        chunk = rows.slice(offsets[p], n)
        offsets[p] += chunk.height
        clock.add_batch(kind, p, chunk, eof=offsets[p] >= rows.height)
        clock.advance()
        calls += 1
        if calls == snapshot_at:
            clock = pickle.loads(pickle.dumps(clock))
        ev, m = clock.router.drain()
        events.append(ev)
        msgs += m
    clock.advance(final=True)
    ev, m = clock.router.drain()
    return pl.concat([*events, ev]), msgs + m, clock


def late_count(kind: str) -> float:
    return REGISTRY.get_sample_value("hcp_router_late_events_total", {"kind": kind}) or 0.0


def test_any_chunking_and_interleaving_gives_the_same_decisions() -> None:
    parts = partitions(seed=5)
    before = late_count("gpu")
    ref_events, ref_msgs, _ = deliver(parts, seed=0, max_chunk=10_000)
    assert late_count("gpu") - before >= 6  # the 30 s late reports were dropped
    states = set(ref_events["to_state"].to_list())
    assert {"assigned", "running", "completed", "queued"} <= states
    assert len(ref_msgs) > 20
    for seed, chunk in ((1, 1), (2, 7), (3, 300)):
        events, msgs, _ = deliver(parts, seed=seed, max_chunk=chunk)
        assert events.equals(ref_events), (seed, chunk)
        assert msgs == ref_msgs, (seed, chunk)


def test_snapshot_mid_stream_resumes_with_the_same_decisions() -> None:
    parts = partitions(seed=9)
    ref_events, ref_msgs, _ = deliver(parts, seed=4, max_chunk=50)
    events, msgs, _ = deliver(parts, seed=4, max_chunk=50, snapshot_at=40)
    assert events.equals(ref_events) and msgs == ref_msgs


def late_commands(op: str) -> float:
    return REGISTRY.get_sample_value("hcp_router_late_commands_total", {"op": op}) or 0.0


def test_a_late_submit_is_applied_never_dropped() -> None:
    clock = RouterClock.create(Router(), ("req#0",))
    before, dropped = late_commands("submit"), late_count("workloads")
    clock.add_batch("workloads", "req#0", req_rows([
        {"ts": T0 + 10_000, "workload_id": "a"},
        {"ts": T0 + 6_000, "workload_id": "on-time"},  # 4 s behind: within the lateness
        {"ts": T0 + 4_000, "workload_id": "late"},  # 6 s behind its partition: late
    ]), eof=True)
    clock.advance(final=True)
    assert late_commands("submit") - before == 1
    assert late_count("workloads") == dropped
    assert set(clock.router.workloads) == {"a", "on-time", "late"}
    assert clock.router.workloads["late"].submit_ts == T0 + 4_000  # its own ts: its age


def test_a_cancel_behind_the_routed_ticks_takes_effect_and_a_replay_is_ignored() -> None:
    clock = RouterClock.create(Router(), ("req#0", "req#1"))
    clock.add_batch("workloads", "req#0", req_rows([
        {"ts": T0, "workload_id": "x", "gpus": 2},  # no GPUs at all: it stays queued
        {"ts": T0 + 20_000, "workload_id": "y"},
    ]))
    clock.add_batch("workloads", "req#1", req_rows([{"ts": T0 + 20_000, "workload_id": "z"}]))
    clock.advance()
    assert clock.done_until > T0 + 500
    routed = clock.done_until
    clock.router.machine.drain()
    before = late_commands("cancel")
    cancel = pl.DataFrame({"v": [1], "ts": [T0 + 500], "workload_id": ["x"],
                           "op": ["cancel"]})
    clock.add_batch("workloads", "req#1", cancel)
    clock.add_batch("workloads", "req#0", req_rows([{"ts": T0, "workload_id": "x", "gpus": 2}]))
    clock.advance(final=True)
    assert late_commands("cancel") - before == 1
    w = clock.router.workloads["x"]
    assert w.state == "cancelled"
    events = clock.router.machine.drain()
    row = events.filter((pl.col("workload_id") == "x") & (pl.col("to_state") == "cancelled"))
    assert row.height == 1 and row["ts"][0] >= routed  # applied at the router's time
    # The replayed submit (same ts and customer) changed nothing.
    assert events.filter((pl.col("workload_id") == "x")
                         & (pl.col("to_state") == "submitted")).height == 0


def test_a_tick_waits_for_the_slowest_input_and_an_idle_one_stops_holding_it() -> None:
    fleet = SimFleet(2)
    clock = RouterClock.create(Router(), ("gpu#0", "req#0"))
    for s in range(20):
        clock.add_batch("gpu", "gpu#0", fleet.status(T0 + s * 1000).drop("v"))
    clock.add_batch("workloads", "req#0", req_rows([{"ts": T0 + 500, "workload_id": "a"}]))
    clock.add_batch("workloads", "req#0", req_rows([]).clear())  # a heartbeat: still live
    assert clock.watermark() == T0 + 500 - 5000
    assert clock.advance() == 0 and "a" not in clock.router.workloads
    clock.add_batch("workloads", "req#0", req_rows([]).clear(), idle=True)
    assert clock.watermark() == T0 + 19_000 - 5000
    assert clock.advance() == 14  # ticks T0 .. T0+13 s, each with GPU reports
    assert clock.router.workloads["a"].state == "assigned"
    assert clock.done_until == T0 + 14_000


def test_recommendations_wait_for_the_fleet_and_apply_from_their_window_end() -> None:
    fleet = SimFleet(2)
    clock = RouterClock.create(Router(), ("gpu#0", "req#0"), gated=True)
    for s in range(30):
        clock.add_batch("gpu", "gpu#0", fleet.status(T0 + s * 1000).drop("v"), eof=s == 29)
    clock.add_batch("workloads", "req#0", req_rows([
        {"ts": T0 + 1_500, "workload_id": "before"},
        {"ts": T0 + 12_500, "workload_id": "after"},
    ]), eof=True)
    assert clock.advance() == 0  # the fleet stage has not said anything yet
    off = pl.DataFrame({"device_id": ["gpu-00000", "gpu-00001"], "device_type": "gpu",
                        "action": "power_down", "window_end": T0 + 10_000})
    clock.add_recs(off)
    clock.add_fleet_wm(T0 + 5_000)
    clock.advance()
    assert clock.done_until == T0 + 6_000  # tick t runs once t <= fleet_wm
    assert clock.router.workloads["before"].state == "assigned"
    clock.add_fleet_wm(T0 + 60_000)
    clock.advance()
    assert clock.done_until == T0 + 30_000
    assert clock.router.workloads["after"].state == "queued"  # both GPUs powering down


def test_a_timer_runs_in_a_tick_without_input() -> None:
    fleet = SimFleet(3)
    clock = RouterClock.create(Router(RouterConfig(assign_timeout_s=30)), ("gpu#0", "req#0"))
    clock.add_batch("gpu", "gpu#0", fleet.status(T0).drop("v"))
    clock.add_batch("workloads", "req#0", req_rows([{"ts": T0 + 200, "workload_id": "lost"}]),
                    eof=True)
    # The GPU reports again only much later; the assignment is never confirmed.
    clock.add_batch("gpu", "gpu#0", fleet.status(T0 + 100_000).drop("v"), eof=True)
    clock.advance()
    events, msgs = clock.router.drain()
    expiry = events.filter(pl.col("reason") == "assign_timeout")
    # Assigned at the end of tick T0 (T0+1 s), due 30 s + 1 ms later: the round at T0+32 s
    # requeues and places it again on another GPU, and so on until no GPU is left that
    # has not failed it.
    assert expiry["ts"].to_list() == [T0 + 32_000, T0 + 63_000, T0 + 94_000]
    assigned = events.filter(pl.col("to_state") == "assigned")
    assert assigned["ts"].to_list() == [T0 + 1_000, T0 + 32_000, T0 + 63_000]
    assert assigned["gpus"].n_unique() == 3  # never the same unresponsive GPU twice
    assert [m["action"] for m in msgs][:3] == ["assign", "preempt", "assign"]


def test_fleet_stage_sends_its_watermark_after_the_recs() -> None:
    group = SiteGroupLogic(("0", "1"), False, FleetState())
    win = pl.DataFrame({"device_id": ["gpu-1"], "device_type": ["gpu"], "site": ["site-01"],
                        "window_end": [T0], "action": ["serve"], "power_w": [690.0],
                        "net_usd_hr": [1.5], "expected_power_w": [700.0],
                        "expected_net_usd_hr": [1.0], "power_cap_mw": [None]},
                       schema_overrides={"power_cap_mw": pl.Float64})
    out, _ = group.on_batch([("0", ("win", "0", T0 - 60_000, win)), ("0", ("wm", "0", T0))])
    assert out == []  # shard 1 has not closed anything
    out, _ = group.on_batch([("0", ("wm", "1", T0))])
    assert [item[0] for item in out] == ["windows", "recs", "win", "wm"]
    assert out[-1] == ("wm", "0", T0)
    fleet = FleetLogic(("0", "1"), False, FleetState())
    got, _ = fleet.on_batch(out[2:])
    assert got == []  # site group 1 has not closed anything
    got, _ = fleet.on_batch([("wm", "1", T0)])
    assert [item[0] for item in got] == ["observed", "recs", "fleet_wm"]
    assert got[-1] == ("fleet_wm", T0)
    out, _ = fleet.on_batch([("wm", "1", T0)])
    assert out == []  # no progress, no repeat
    assert FleetState().emitted_wm == NEG_INF
