"""The workload router: event-time inputs in, workload events and assignments out.

Inputs (polars DataFrames, any batch size): workload requests (``WORKLOAD_FIELDS``), GPU
status (``gpu_id, site, model, state, mem_used_gb, mem_total_gb, temp_c, workload_id, ts``),
market prices (``kind, value, site, model, ts``) and GPU recommendations
(``device_id, action``). :meth:`Router.route` runs one routing round at the event time
``now`` (the latest ``ts`` seen) and :meth:`Router.drain` hands back the workload events
(``WORKLOAD_EVENT_SCHEMA`` rows) and assignment messages (see ``docs/workloads.md``).

Telemetry drives the late states: an assigned workload becomes ``running`` when one of
its GPUs reports its id, ``completed`` when one of its GPUs reports idle after it started,
``failed`` when one of its GPUs goes down while it runs. Assigned work whose GPU goes down
or that no GPU reports within ``assign_timeout_s`` goes back to the queue.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
from prometheus_client import Counter, Gauge

from flows import metrics
from flows.router.classify import classify
from flows.router.fleet import GpuRoster
from flows.router.kernels import (
    DEFAULT_POWER_KW,
    DEFAULT_TEMP_MAX_C,
    assign_greedy,
    gpu_order,
)
from flows.router.preempt import Candidate, choose_victims
from flows.router.queue import DEFAULT_AGING_S, AgingQueue
from flows.router.states import StateMachine, Workload

__all__ = ["Router", "RouterConfig"]

log = logging.getLogger(__name__)

ASSIGNMENTS = Counter("hcp_workload_assignments", "Assignment messages sent", ["action"])
QUEUED = Gauge("hcp_workload_queued", "Workloads waiting in the router queue")


@dataclass(frozen=True)
class RouterConfig:
    """Router tunables; times are event-time seconds."""

    aging_s: float = DEFAULT_AGING_S
    urgent_priority: int = 8
    min_runtime_s: float = 300.0
    temp_max_c: float = DEFAULT_TEMP_MAX_C
    power_kw: float = DEFAULT_POWER_KW
    assign_timeout_s: float = 120.0
    max_preemptions_per_round: int = 32
    # A job that has been at effective priority 10 this long and still does not fit stops
    # backfilling behind it, so it gets GPUs as they free up (None turns the guard off).
    starvation_guard_s: float | None = 1800.0
    # Event-time clock of the dataflow (flows/router/clock.py): routing rounds happen at
    # the end of each tick_ms tick, and inputs further than lateness_ms behind their
    # partition's newest event are dropped (as in the profitability shards).
    tick_ms: int = 1000
    lateness_ms: int = 5000


class Router:
    """Single-threaded router state: the fleet arrays, the queue and every workload."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        self.fleet = GpuRoster()
        self.queue = AgingQueue(self.config.aging_s)
        self.machine = StateMachine()
        self.workloads: dict[str, Workload] = {}
        self.active: dict[str, Workload] = {}  # assigned or running
        self.now = 0
        self._messages: list[dict] = []
        # Base priority of the most urgent job the last round could not place, or 0: while
        # it waits, running work becoming old enough to preempt is a timer.
        self._urgent_waiting = 0

    # -- inputs -------------------------------------------------------------------------
    def _tick(self, ts: int) -> None:
        self.now = max(self.now, int(ts))

    def on_requests(self, df: pl.DataFrame) -> None:
        """Submit and queue each request.

        A known workload id is an invalid transition, unless the request is the same one
        again (same ts and customer: a replayed Kafka message), which is ignored.
        """
        if df.height == 0:
            return
        df = classify(df).sort("ts", maintain_order=True)
        if "max_price_usd_hr" not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("max_price_usd_hr"))
        cols = ("workload_id", "customer", "kind", "priority", "gpus", "mem_gb",
                "est_duration_s", "max_price_usd_hr", "ts")
        for wid, cust, kind, prio, gpus, mem, dur, maxp, ts in zip(
            *(df[c].to_list() for c in cols), strict=True
        ):
            self._tick(ts)
            old = self.workloads.get(wid)
            if old is not None:
                # The same request again (same submit ts) is a source replay after a
                # resume, not a client error: drop it without counting.
                if old.submit_ts != int(ts) or old.customer != cust:
                    self.machine.reject(wid, old.state, "submitted")
                continue
            w = Workload(wid, cust, kind, int(prio), int(gpus), float(mem), int(dur),
                         math.nan if maxp is None else float(maxp), int(ts))
            self.workloads[wid] = w
            self.machine.transition(w, "submitted", ts, reason=kind)
            self.machine.transition(w, "queued", ts)
            self.queue.push(wid, w.priority, w.submit_ts)

    def on_prices(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        df = df.sort("ts", maintain_order=True)
        site = df["site"].to_list() if "site" in df.columns else [None] * df.height
        model = df["model"].to_list() if "model" in df.columns else [None] * df.height
        for kind, value, s, m, ts in zip(
            df["kind"].to_list(), df["value"].to_list(), site, model, df["ts"].to_list(),
            strict=True,
        ):
            self._tick(ts)
            self.fleet.set_price(kind, value, s, m)

    def on_recommendations(self, df: pl.DataFrame) -> None:
        """GPUs recommended ``power_down`` get no new work (running work is left alone)."""
        if df.height == 0:
            return
        if "device_type" in df.columns:
            df = df.filter(pl.col("device_type") == "gpu")
        for dev, action in zip(df["device_id"].to_list(), df["action"].to_list(), strict=True):
            self.fleet.set_recommendation(dev, action)

    def on_gpu_status(self, df: pl.DataFrame) -> None:
        """Apply GPU reports: workload transitions first, then the latest state per GPU."""
        if df.height == 0:
            return
        if "workload_id" not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.String).alias("workload_id"))
        df = df.sort("ts", maintain_order=True)
        idx = self.fleet.indices(df)
        fleet = self.fleet
        reserved = fleet.reserved[idx]
        wl = df["workload_id"].to_list()
        states = df["state"].to_list()
        tss = df["ts"].to_list()
        relevant = np.flatnonzero(reserved | df["workload_id"].is_not_null().to_numpy())
        for r in relevant.tolist():
            g = int(idx[r])
            ts = tss[r]
            holder = fleet.holder[g]
            w = self.active.get(holder) if holder is not None else None
            if w is None:
                continue
            if states[r] == "down":
                if w.state == "running":
                    self._finish(w, "failed", ts, "gpu_down")
                else:
                    self._requeue(w, ts, "gpu_down")
            elif wl[r] == w.workload_id:
                if w.state == "assigned" and ts >= w.assigned_ts:
                    w.running_ts = ts
                    self.machine.transition(w, "running", ts, gpu_ids=self._gpu_ids(w))
            elif (
                wl[r] is None and states[r] == "idle" and w.state == "running"
                and ts > w.running_ts
            ):
                self._finish(w, "completed", ts, "")
        fleet.update_status(df, idx)
        self._tick(max(tss))

    # -- transitions with GPU bookkeeping -------------------------------------------------
    def _gpu_ids(self, w: Workload) -> str:
        return ",".join(self.fleet.ids[g] for g in w.gpu_idx)

    def _release(self, w: Workload) -> None:
        for g in w.gpu_idx:
            if self.fleet.holder[g] == w.workload_id:
                self.fleet.release(g)
        self.active.pop(w.workload_id, None)

    def _finish(self, w: Workload, state: str, ts: int, reason: str) -> None:
        if self.machine.transition(w, state, ts, reason, self._gpu_ids(w)):
            self._release(w)

    def _requeue(self, w: Workload, ts: int, reason: str) -> None:
        if self.machine.transition(w, "queued", ts, reason, self._gpu_ids(w)):
            self._message(w, "preempt")  # cancel the assignment wherever it still stands
            self._release(w)
            w.gpu_idx, w.site = (), ""
            self.queue.push(w.workload_id, w.priority, w.submit_ts)

    def _message(self, w: Workload, action: str) -> None:
        ASSIGNMENTS.labels(action).inc()
        self._messages.append(
            {
                "v": 1,
                "ts": self.now,
                "workload_id": w.workload_id,
                "gpu_ids": [self.fleet.ids[g] for g in w.gpu_idx],
                "site": w.site,
                "est_duration_s": w.est_duration_s,
                "action": action,
                "mem_gb": w.mem_gb,
                "priority": w.priority,
            }
        )

    def _assign(self, w: Workload, gpus: tuple[int, ...]) -> None:
        self.queue.remove(w.workload_id)
        w.gpu_idx = gpus
        w.site = self.fleet.sites[int(self.fleet.site[gpus[0]])]
        w.assigned_ts = self.now
        for g in gpus:
            self.fleet.reserve(g, w.workload_id)
        self.active[w.workload_id] = w
        self.machine.transition(w, "assigned", self.now, gpu_ids=self._gpu_ids(w))
        self._message(w, "assign")
        metrics.ALLOCATIONS.labels(w.kind).inc()

    # -- routing ------------------------------------------------------------------------
    def route(self, now: int | None = None) -> int:
        """One routing round at event time ``now``; returns the number of assignments."""
        if now is not None:
            self._tick(now)
        self._expire_assignments()
        QUEUED.set(len(self.queue))
        self._urgent_waiting = 0
        if not self.queue or len(self.fleet) == 0:
            return 0
        started = time.perf_counter()
        cfg, fleet = self.config, self.fleet
        ordered = list(self.queue.ordered(self.now))
        entries = [self.workloads[wid] for _, _, wid in ordered]
        block = self._starvation_guard(ordered, entries)
        need_gpus = np.fromiter((w.gpus for w in entries), np.int64, len(entries))
        need_mem = np.fromiter((w.mem_gb for w in entries), np.float64, len(entries))
        max_price = np.fromiter((w.max_price_usd_hr for w in entries), np.float64, len(entries))
        n = len(fleet)
        score = fleet.scores(cfg.power_kw)
        order = gpu_order(score, fleet.rank())
        free = fleet.free_mask()
        mem_free = fleet.mem_free()
        temp = fleet.temp[:n]
        spot = fleet.spot()
        site = fleet.site[:n]
        start, gpus = assign_greedy(
            need_gpus, need_mem, max_price, order, free.copy(), mem_free, temp, spot, site,
            score, len(fleet.sites), cfg.temp_max_c, block,
        )
        placed = 0
        unplaced_urgent: list[Workload] = []
        for i, w in enumerate(entries):
            s = int(start[i])
            if s >= 0:
                self._assign(w, tuple(int(g) for g in gpus[s : s + w.gpus]))
                placed += 1
            elif w.priority >= cfg.urgent_priority:
                unplaced_urgent.append(w)
        if unplaced_urgent:
            placed += self._preempt_for(unplaced_urgent, order, score, spot)
            self._urgent_waiting = max(
                (w.priority for w in unplaced_urgent if w.state == "queued"), default=0
            )
        QUEUED.set(len(self.queue))
        metrics.ALLOCATION_SECONDS.observe(time.perf_counter() - started)
        return placed

    def _starvation_guard(
        self, ordered: list[tuple[int, int, str]], entries: list[Workload]
    ) -> np.ndarray:
        """Which entries may block backfilling: fully aged, long waiting, able to fit."""
        block = np.zeros(len(entries), dtype=np.bool_)
        guard = self.config.starvation_guard_s
        if guard is None:
            return block
        limit = int(guard * 1000)
        fleet = self.fleet
        n = len(fleet)
        usable = fleet.usable_mask()
        for i, ((eff, submit_ts, _), w) in enumerate(zip(ordered, entries, strict=True)):
            if eff < 10:
                break  # ordered by effective priority: no fully aged entry follows
            if self.now - submit_ts < limit:
                continue
            fits = usable & (fleet.mem_total[:n] >= w.mem_gb)
            per_site = np.bincount(fleet.site[:n][fits], minlength=len(fleet.sites))
            if per_site.size and per_site.max() >= w.gpus:
                block[i] = True
                break  # one blocker is enough: nothing behind it is placed
        return block

    def next_deadline(self) -> int | None:
        """The earliest event time at which a round could act with no new input, or None.

        Two timers exist: an assignment nobody confirmed expires, and running work becomes
        old enough to preempt for an urgent job that is waiting. Queue aging alone never
        places anything: what did not fit still does not fit on the same free GPUs.
        """
        cfg = self.config
        limit = int(cfg.assign_timeout_s * 1000)
        due = [w.assigned_ts + limit + 1 for w in self.active.values() if w.state == "assigned"]
        urgent = getattr(self, "_urgent_waiting", 0)  # absent in pre-clock snapshots
        if urgent:
            min_run = int(cfg.min_runtime_s * 1000)
            due += [
                w.running_ts + min_run
                for w in self.active.values()
                if w.state == "running" and w.priority < urgent
                and w.running_ts + min_run > self.now
            ]
        return min(due) if due else None

    def _expire_assignments(self) -> None:
        limit = int(self.config.assign_timeout_s * 1000)
        stale = [w for w in self.active.values()
                 if w.state == "assigned" and self.now - w.assigned_ts > limit]
        for w in stale:
            self._requeue(w, self.now, "assign_timeout")

    def _preempt_for(
        self, urgent: list[Workload], order: np.ndarray, score: np.ndarray, spot: np.ndarray
    ) -> int:
        cfg, fleet = self.config, self.fleet
        min_run = int(cfg.min_runtime_s * 1000)
        cands = sorted(
            (
                Candidate(w.workload_id, w.priority, self.now - w.running_ts,
                          int(fleet.site[w.gpu_idx[0]]), w.gpu_idx)
                for w in self.active.values()
                if w.state == "running" and self.now - w.running_ts >= min_run
            ),
            key=lambda c: (c.priority, c.lost_ms, c.workload_id),
        )
        if not cands:
            return 0
        n = len(fleet)
        order_pos = np.empty(n, dtype=np.int64)
        order_pos[order] = np.arange(n)
        temp_ok = fleet.temp[:n] < cfg.temp_max_c
        usable = fleet.usable_mask() & temp_ok
        placed = 0
        for u in urgent[: cfg.max_preemptions_per_round]:
            price_ok = (
                np.ones(n, np.bool_) if math.isnan(u.max_price_usd_hr)
                else ~np.isnan(spot) & (spot <= u.max_price_usd_hr)
            )
            free_ok = fleet.free_mask() & (fleet.mem_free() >= u.mem_gb) & temp_ok & price_ok
            usable_ok = usable & (fleet.mem_total[:n] >= u.mem_gb) & price_ok
            plan = choose_victims(
                u.gpus, u.priority, free_ok, usable_ok, order_pos, fleet.site[:n],
                fleet.sites, cands,
            )
            if plan is None:
                continue
            for c in plan.victims:
                v = self.workloads[c.workload_id]
                reason = f"preempted_by:{u.workload_id}"
                self.machine.transition(v, "preempted", self.now, reason, self._gpu_ids(v))
                self._message(v, "preempt")
                self._release(v)
                v.gpu_idx, v.site = (), ""
                v.preemptions += 1
                self.machine.transition(v, "queued", self.now, "preempted")
                self.queue.push(v.workload_id, v.priority, v.submit_ts)
            gone = {c.workload_id for c in plan.victims}
            cands = [c for c in cands if c.workload_id not in gone]
            self._assign(u, plan.gpus)
            placed += 1
        return placed

    # -- outputs ------------------------------------------------------------------------
    def drain(self) -> tuple[pl.DataFrame, list[dict]]:
        """Workload events and assignment messages produced since the last drain."""
        msgs, self._messages = self._messages, []
        return self.machine.drain(), msgs

    def running_on(self) -> dict[int, str]:
        """GPU index -> the workload the router has running there."""
        return {g: w.workload_id for w in self.active.values() if w.state == "running"
                for g in w.gpu_idx}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.workloads.values():
            out[str(w.state)] = out.get(str(w.state), 0) + 1
        return out

