"""The workload router: event-time inputs in, workload events and assignments out.

Inputs (polars DataFrames, any batch size): workload requests (``WORKLOAD_FIELDS``), GPU
status (``gpu_id, site, model, state, mem_used_gb, mem_total_gb, temp_c, workload_id, ts``),
market prices (``kind, value, site, model, ts``) and GPU recommendations
(``device_id, action``). :meth:`Router.route` runs one routing round at the event time
``now`` (the latest ``ts`` seen) and :meth:`Router.drain` hands back the workload events
(``WORKLOAD_EVENT_SCHEMA`` rows) and assignment messages (see ``docs/workloads.md``).

Telemetry drives the late states: an assigned workload becomes ``running`` when every one
of its GPUs has reported its id (a GPU that never does gets the miss when the assignment
times out, and the job is placed again without it), ``completed`` when one of its GPUs
reports idle after it started, ``failed`` when one of its GPUs goes down while it runs.
Assigned work whose GPU goes down or that no GPU reports within ``assign_timeout_s`` goes
back to the queue.

A GPU that never starts its assigned work is not offered that workload again, backs off
(``assign_timeout_s`` doubling per miss) and after ``cordon_after`` misses in a row is
cordoned (reason ``unresponsive``) until it reports running work or ``cordon_s`` pass.
Requests with ``op`` = ``cancel`` end a workload in ``cancelled`` from any non-terminal
state; every queued workload carries a pending reason (:mod:`flows.router.pending`).
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
from flows.metrics import GPUS_CORDONED, WORKLOAD_OLDEST_QUEUED_AGE, WORKLOADS_QUEUED
from flows.router.classify import classify
from flows.router.fleet import GpuRoster
from flows.router.kernels import (
    DEFAULT_POWER_KW,
    DEFAULT_TEMP_MAX_C,
    NEVER,
    assign_greedy,
    gpu_order,
)
from flows.router.pending import pending_reasons, unschedulable
from flows.router.preempt import Candidate, choose_victims
from flows.router.queue import AgingQueue
from flows.router.quota import QuotaBook
from flows.router.states import TERMINAL, StateMachine, Workload
from hcp.schemas import GPU_HEALTH_SCHEMA, RESERVATION_SCHEMA

__all__ = ["Router", "RouterConfig"]

log = logging.getLogger(__name__)

ASSIGNMENTS = Counter("hcp_workload_assignments", "Assignment messages sent", ["action"])
# Kept for existing dashboards; hcp_workloads_queued (flows/metrics.py) is the same number.
QUEUED = Gauge("hcp_workload_queued", "Workloads waiting in the router queue")


@dataclass(frozen=True)
class RouterConfig:
    """Router tunables; times are event-time seconds."""

    urgent_priority: int = 8
    min_runtime_s: float = 300.0
    temp_max_c: float = DEFAULT_TEMP_MAX_C
    power_kw: float = DEFAULT_POWER_KW
    assign_timeout_s: float = 120.0
    max_preemptions_per_round: int = 32
    # A job that has been at effective priority 10 this long and still does not fit stops
    # backfilling behind it, so it gets GPUs as they free up (None turns the guard off).
    starvation_guard_s: float | None = 1800.0
    # GPU health: after a GPU misses (never starts) an assignment it gets no new work for
    # assign_timeout_s * 2**(misses - 1); after cordon_after misses in a row it is
    # cordoned for cordon_s, or until it reports running work.
    cordon_after: int = 3
    cordon_s: float = 1800.0
    # Reservations (docs/workloads.md): the first `reservations` requests in queue order
    # that do not fit now reserve the GPUs that free up soonest; work behind them may use
    # those only if it is expected to end first (0 turns reservations off).
    reservations: int = 32
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
        self.queue = AgingQueue()
        self.machine = StateMachine()
        self.workloads: dict[str, Workload] = {}
        self.active: dict[str, Workload] = {}  # assigned or running
        self.now = 0
        self._messages: list[dict] = []
        # Base priority of the most urgent job the last round could not place, or 0: while
        # it waits, running work becoming old enough to preempt is a timer.
        self._urgent_waiting = 0
        # (gpu_id, site, ts, cordoned, reason, since): cordon changes since the last drain.
        self._health: list[tuple[str, str, int, bool, str, int]] = []
        # workload id -> (expected start, site, GPU indices): the reservations in force.
        self.reservations: dict[str, tuple[int, str, tuple[int, ...]]] = {}
        self._reservation_rows: list[tuple[str, int, int | None, str, str]] = []
        self.quota = QuotaBook()  # customer quotas (flows/router/quota.py)
        self.machine.observer = self.quota.on_transition
        self._quota_held: set[str] = set()

    # -- inputs -------------------------------------------------------------------------
    def _tick(self, ts: int) -> None:
        self.now = max(self.now, int(ts))

    def on_requests(self, df: pl.DataFrame) -> None:
        """Submit and queue each request, or cancel (``op`` = ``cancel``), in ts order.

        A known workload id is an invalid transition, unless the request is the same one
        again (same ts and customer: a replayed Kafka message), which is ignored.
        """
        if df.height == 0:
            return
        # ``at_ts`` (flows/router/clock.py): a late command applied at the router's time.
        at = pl.coalesce("at_ts", "ts") if "at_ts" in df.columns else pl.col("ts")
        df = df.with_row_index("_row").with_columns(at.alias("_at")).sort(
            "_at", maintain_order=True)
        cancels: list[tuple[int, int, str]] = []
        if "op" in df.columns:
            is_cancel = pl.col("op") == "cancel"
            cancels = list(zip(*(df.filter(is_cancel)[c].to_list()
                                 for c in ("_at", "_row", "workload_id")), strict=True))
            df = df.filter(~is_cancel.fill_null(False))
        if df.height:
            df = classify(df)
        if "max_price_usd_hr" not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("max_price_usd_hr"))
        if "quota_max_gpus" in df.columns or "quota_gpu_hours" in df.columns:
            self._quota_requests(df)
        cols = ("workload_id", "customer", "kind", "priority", "gpus", "mem_gb",
                "est_duration_s", "max_price_usd_hr", "ts", "_at", "_row")
        ci = 0
        for wid, cust, kind, prio, gpus, mem, dur, maxp, ts, at, row in zip(
            *(df[name].to_list() for name in cols), strict=True
        ):
            while ci < len(cancels) and cancels[ci][:2] < (at, row):
                self._cancel(cancels[ci][2], cancels[ci][0])
                ci += 1
            self._tick(at)
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
            self.machine.transition(w, "submitted", at, reason=kind)
            self.machine.transition(w, "queued", at)
            self.queue.push(wid, w.priority, w.submit_ts)
        for ts, _, wid in cancels[ci:]:
            self._cancel(wid, ts)

    def _quota_requests(self, df: pl.DataFrame) -> None:
        """The quota each request carries becomes its customer's (in ts order)."""
        book = self._quotas()
        none = pl.Series([None] * df.height)
        g = df["quota_max_gpus"] if "quota_max_gpus" in df.columns else none
        h = df["quota_gpu_hours"] if "quota_gpu_hours" in df.columns else none
        for cust, mg, gh in zip(df["customer"].to_list(), g.to_list(), h.to_list(), strict=True):
            book.set(cust, mg, gh)

    def _quotas(self) -> QuotaBook:
        # Routers pickled before quotas existed get an empty book on resume.
        if not hasattr(self, "quota"):
            self.quota = QuotaBook()
            self._quota_held = set()
        self.machine.observer = self.quota.on_transition
        return self.quota

    def _cancel(self, wid: str, ts: int) -> None:
        """End ``wid`` in ``cancelled``: dequeue it or stop it on its GPUs."""
        self._tick(ts)
        w = self.workloads.get(wid)
        if w is None or w.state in TERMINAL:
            if w is None or w.state != "cancelled":  # a replayed cancel changes nothing
                self.machine.reject(wid, None if w is None else w.state, "cancelled")
            return
        if wid in self.queue:
            self.queue.remove(wid)
        gpu_ids = self._gpu_ids(w)
        if w.gpu_idx:
            self._message(w, "cancel")  # the fleet stops it (or drops the assignment)
        if self.machine.transition(w, "cancelled", ts, "cancel_request", gpu_ids):
            self._release(w)
            w.pending_reason = ""

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
                    if g not in w.confirmed:
                        w.confirmed = (*w.confirmed, g)
                    # A job runs when every GPU runs it: one dead agent must not hide.
                    if len(w.confirmed) == len(w.gpu_idx):
                        w.running_ts = ts
                        fleet.busy_until[list(w.gpu_idx)] = ts + w.est_duration_s * 1000
                        self.machine.transition(w, "running", ts, gpu_ids=self._gpu_ids(w))
            elif (
                wl[r] is None and states[r] == "idle" and w.state == "running"
                and ts > w.running_ts
            ):
                self._finish(w, "completed", ts, "")
        fleet.update_status(df, idx)
        self._tick(max(tss))
        # A GPU that reports running work is healthy again: misses forgotten, uncordoned.
        working = np.unique(idx[df["workload_id"].is_not_null().to_numpy()])
        if working.size:
            sick = working[(fleet.misses[working] > 0) | fleet.cordoned[working]]
            for g in sick.tolist():
                if fleet.cordoned[g]:
                    self._set_cordon(g, False, "reported_work")
                fleet.misses[g] = 0
                fleet.hold_until[g] = 0
            if sick.size:  # proven healthy: the work that avoided it may use it again
                healed = set(sick.tolist())
                for _, _, wid in self.queue.ordered():
                    w = self.workloads[wid]
                    if w.avoid and healed.intersection(w.avoid):
                        w.avoid = tuple(g for g in w.avoid if g not in healed)

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
            w.gpu_idx, w.site, w.confirmed = (), "", ()
            self.queue.push(w.workload_id, w.priority, w.submit_ts)

    # -- GPU health ---------------------------------------------------------------------
    def _missed(self, w: Workload) -> None:
        """``w`` timed out unstarted: its GPUs back off or get cordoned; it avoids them."""
        cfg, fleet = self.config, self.fleet
        timeout = int(cfg.assign_timeout_s * 1000)
        # Only the GPUs that never reported it missed; the others proved they work.
        missed = tuple(g for g in w.gpu_idx if g not in w.confirmed)
        for g in missed:
            fleet.misses[g] += 1
            misses = int(fleet.misses[g])
            if misses >= cfg.cordon_after:
                fleet.hold_until[g] = self.now + int(cfg.cordon_s * 1000)
                if not fleet.cordoned[g]:
                    self._set_cordon(g, True, "unresponsive")
            else:
                fleet.hold_until[g] = self.now + timeout * 2 ** (misses - 1)
        w.avoid = tuple(sorted(set(w.avoid) | set(missed)))

    def _set_cordon(self, g: int, on: bool, reason: str) -> None:
        fleet = self.fleet
        fleet.cordoned[g] = on
        if on:
            fleet.cordon_since[g] = self.now
        site = fleet.sites[int(fleet.site[g])]
        self._health.append(
            (fleet.ids[g], site, self.now, on, reason, int(fleet.cordon_since[g]))
        )
        n = len(fleet)
        GPUS_CORDONED.labels(site).set(
            int((fleet.cordoned[:n] & (fleet.site[:n] == fleet.site[g])).sum())
        )

    def _end_cool_offs(self) -> None:
        """Cordoned GPUs whose cool-off passed get work again, on probation: one more miss
        cordons them again."""
        fleet = self.fleet
        n = len(fleet)
        done = np.flatnonzero(fleet.cordoned[:n] & (fleet.hold_until[:n] <= self.now))
        for g in done.tolist():
            self._set_cordon(g, False, "cool_off")
            fleet.misses[g] = max(0, self.config.cordon_after - 1)

    def cordoned(self) -> list[str]:
        """Ids of the GPUs cordoned now."""
        n = len(self.fleet)
        return [self.fleet.ids[g] for g in np.flatnonzero(self.fleet.cordoned[:n]).tolist()]

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
        w.pending_reason = ""
        w.gpu_idx = gpus
        w.site = self.fleet.sites[int(self.fleet.site[gpus[0]])]
        w.assigned_ts = self.now
        for g in gpus:
            self.fleet.reserve(g, w.workload_id)
            self.fleet.busy_until[g] = self.now + w.est_duration_s * 1000
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
        self._end_cool_offs()
        self._urgent_waiting = 0
        if not self.queue or len(self.fleet) == 0:
            if self.reservations:
                none = np.empty(0, np.int64)
                self._set_reservations([], none, none, none)
            self._queue_metrics()
            return 0
        started = time.perf_counter()
        cfg, fleet = self.config, self.fleet
        ordered = list(self.queue.ordered())
        entries = [self.workloads[wid] for _, _, wid in ordered]
        kept = self._fail_unschedulable(entries)
        if len(kept) != len(entries):
            entries = kept
            ordered = [(w.priority, w.submit_ts, w.workload_id) for w in entries]
        kept, self._quota_held = self._quotas().hold(entries, self.active, self.now)
        if self._quota_held:
            entries = kept
            ordered = [(w.priority, w.submit_ts, w.workload_id) for w in entries]
        block = self._starvation_guard(ordered, entries)
        need_gpus = np.fromiter((w.gpus for w in entries), np.int64, len(entries))
        need_mem = np.fromiter((w.mem_gb for w in entries), np.float64, len(entries))
        max_price = np.fromiter((w.max_price_usd_hr for w in entries), np.float64, len(entries))
        avoid_len = np.fromiter((len(w.avoid) for w in entries), np.int64, len(entries))
        avoid_ptr = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum(avoid_len, out=avoid_ptr[1:])
        avoid_gpu = np.fromiter(
            (g for i in np.flatnonzero(avoid_len).tolist() for g in entries[i].avoid),
            np.int64, int(avoid_ptr[-1]),
        )
        n = len(fleet)
        score = fleet.scores(cfg.power_kw)
        order = gpu_order(score, fleet.rank())
        free = self._offerable()
        mem_free = fleet.mem_free()
        temp = fleet.temp[:n]
        spot = fleet.spot()
        site = fleet.site[:n]
        dur_ms = np.fromiter((w.est_duration_s for w in entries), np.int64, len(entries)) * 1000
        avail = fleet.expected_free(self.now, NEVER)
        order_pos = np.empty(n, dtype=np.int64)
        order_pos[order] = np.arange(n)
        by_avail = np.lexsort((order_pos, avail)).astype(np.int64)
        start, gpus, res_start, res_pos, res_gpus = assign_greedy(
            need_gpus, need_mem, max_price, order, free.copy(), mem_free, temp, spot, site,
            score, len(fleet.sites), cfg.temp_max_c, block, avoid_ptr, avoid_gpu,
            dur_ms, avail, by_avail, fleet.mem_total[:n], self.now, cfg.reservations,
        )
        self._set_reservations(entries, res_start, res_pos, res_gpus)
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
            for w in unplaced_urgent:  # placed by preemption: its reservation is over
                if w.state != "queued" and self.reservations.pop(w.workload_id, None):
                    self._reservation_rows.append((w.workload_id, self.now, None, "", ""))
        guarded = np.flatnonzero(block)
        held_back = (
            {w.workload_id for w in entries[int(guarded[0]) + 1 :]} if guarded.size else set()
        )
        # Still queued: the unplaced entries (arrays reused) and any preemption victims.
        left = np.flatnonzero(start < 0)
        if unplaced_urgent:
            left = left[[entries[i].state == "queued" for i in left.tolist()]]
        queued = [entries[i] for i in left.tolist()]
        if len(queued) != len(self.queue):
            seen = {w.workload_id for w in queued}
            extra = [self.workloads[wid] for _, _, wid in self.queue.ordered()
                     if wid not in seen]
            queued += extra
            need_gpus = np.concatenate(
                [need_gpus[left], np.array([w.gpus for w in extra], np.int64)])
            need_mem = np.concatenate(
                [need_mem[left], np.array([w.mem_gb for w in extra], np.float64)])
            max_price = np.concatenate(
                [max_price[left], np.array([w.max_price_usd_hr for w in extra], np.float64)])
            has_avoid = np.concatenate(
                [avoid_len[left] > 0, np.array([bool(w.avoid) for w in extra], np.bool_)])
        else:
            need_gpus, need_mem, max_price = need_gpus[left], need_mem[left], max_price[left]
            has_avoid = avoid_len[left] > 0
        self._update_pending(queued, need_gpus, need_mem, max_price, has_avoid, held_back)
        self._queue_metrics()
        metrics.ALLOCATION_SECONDS.observe(time.perf_counter() - started)
        return placed

    def _set_reservations(
        self, entries: list[Workload], res_start: np.ndarray, res_pos: np.ndarray,
        res_gpus: np.ndarray,
    ) -> None:
        """Keep this round's reservations; record the ones that are new, moved or ended.

        An expected start that moved by less than a minute on the same GPUs is not news
        (work that overran its estimate moves it every round).
        """
        fleet, old = self.fleet, self.reservations
        new: dict[str, tuple[int, str, tuple[int, ...]]] = {}
        for i in np.flatnonzero(res_start >= 0).tolist():
            w = entries[i]
            p = int(res_pos[i])
            gp = tuple(int(g) for g in res_gpus[p : p + w.gpus])
            res = (int(res_start[i]), fleet.sites[int(fleet.site[gp[0]])], gp)
            prev = old.get(w.workload_id)
            if prev is not None and prev[1:] == res[1:] and abs(prev[0] - res[0]) < 60_000:
                res = prev
            else:
                self._reservation_rows.append(
                    (w.workload_id, self.now, res[0], res[1], ",".join(fleet.ids[g] for g in gp))
                )
            new[w.workload_id] = res
        for wid in sorted(old.keys() - new.keys()):
            self._reservation_rows.append((wid, self.now, None, "", ""))
        self.reservations = new

    def drain_reservations(self) -> pl.DataFrame:
        """Reservation changes since the last call (``RESERVATION_SCHEMA`` rows)."""
        rows, self._reservation_rows = self._reservation_rows, []
        return pl.DataFrame(rows, schema=RESERVATION_SCHEMA, orient="row")

    def _offerable(self) -> np.ndarray:
        """GPUs free for new work now: free and neither backing off nor cordoned."""
        return self.fleet.free_mask() & ~self.fleet.held_mask(self.now)

    def _fail_unschedulable(self, entries: list[Workload]) -> list[Workload]:
        """Fail requests no site could ever hold, on their first round; returns the rest."""
        fresh = [w for w in entries if not w.evaluated]
        if not fresh:
            return entries
        fleet = self.fleet
        n = len(fleet)
        never = unschedulable(
            np.fromiter((w.gpus for w in fresh), np.int64, len(fresh)),
            np.fromiter((w.mem_gb for w in fresh), np.float64, len(fresh)),
            fleet.mem_total[:n], fleet.site[:n], len(fleet.sites),
        )
        failed = set()
        for w, bad in zip(fresh, never.tolist(), strict=True):
            w.evaluated = True
            if bad and self.machine.transition(w, "failed", self.now, "unschedulable"):
                self.queue.remove(w.workload_id)
                failed.add(w.workload_id)
        return [w for w in entries if w.workload_id not in failed] if failed else entries

    def _update_pending(
        self, queued: list[Workload], need_gpus: np.ndarray, need_mem: np.ndarray,
        max_price: np.ndarray, has_avoid: np.ndarray, held_back: set[str],
    ) -> None:
        """Give every queued workload its pending reason; record the ones that changed."""
        if not queued:
            return
        cfg, fleet = self.config, self.fleet
        n = len(fleet)
        offer = self._offerable()
        held_idle = fleet.free_mask() & fleet.held_mask(self.now)
        reserved = np.zeros(n, dtype=np.bool_)
        for _, _, gp in self.reservations.values():
            reserved[list(gp)] = True
        holds = np.fromiter((w.workload_id in self.reservations for w in queued), np.bool_,
                            len(queued))
        reasons = pending_reasons(
            need_gpus, need_mem, max_price, has_avoid,
            fleet.usable_mask(), offer, held_idle, fleet.mem_total[:n], fleet.mem_free(),
            fleet.temp[:n], fleet.spot(), fleet.site[:n], fleet.model[:n], len(fleet.sites),
            cfg.temp_max_c, reserved, holds,
        )
        for w, reason in zip(queued, reasons, strict=True):
            if w.workload_id in held_back:
                reason = "starvation_guard"
            if w.workload_id in getattr(self, "_quota_held", ()):
                reason = "quota"
            if reason != w.pending_reason:
                self.machine.pending(w, self.now, reason)

    def _queue_metrics(self) -> None:
        QUEUED.set(len(self.queue))
        WORKLOADS_QUEUED.set(len(self.queue))
        oldest = self.queue.oldest_submit_ts()
        WORKLOAD_OLDEST_QUEUED_AGE.set(0 if oldest is None else max(0, self.now - oldest) / 1000)

    def _starvation_guard(
        self, ordered: list[tuple[int, int, str]], entries: list[Workload]
    ) -> np.ndarray:
        """Which entry may block backfilling: the first in queue order that has waited
        ``starvation_guard_s`` and could fit on an emptied site."""
        block = np.zeros(len(entries), dtype=np.bool_)
        guard = self.config.starvation_guard_s
        if guard is None:
            return block
        limit = int(guard * 1000)
        submit = np.fromiter((e[1] for e in ordered), np.int64, len(ordered))
        waited_long = np.flatnonzero(self.now - submit >= limit)
        if waited_long.size == 0:
            return block
        fleet = self.fleet
        n = len(fleet)
        usable = fleet.usable_mask() & ~fleet.held_mask(self.now)
        cannot: set[tuple[int, float]] = set()  # shapes already found not to fit
        for i in waited_long.tolist():
            w = entries[i]
            if (w.gpus, w.mem_gb) in cannot:
                continue
            fits = usable & (fleet.mem_total[:n] >= w.mem_gb)
            per_site = np.bincount(fleet.site[:n][fits], minlength=len(fleet.sites))
            if per_site.size and per_site.max() >= w.gpus:
                block[i] = True
                break  # one blocker is enough: nothing behind it is placed
            cannot.add((w.gpus, w.mem_gb))
        return block

    def next_deadline(self) -> int | None:
        """The earliest event time at which a round could act with no new input, or None.

        Three timers exist: an assignment nobody confirmed expires, running work becomes
        old enough to preempt for an urgent job that is waiting, and (while work is
        queued) a GPU's back-off or cordon ends. Waiting alone never places anything:
        what did not fit still does not fit on the same free GPUs.
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
        if self.queue:
            n = len(self.fleet)
            hold = self.fleet.hold_until[:n]
            later = hold[hold > self.now]
            if later.size:
                due.append(int(later.min()))
        return min(due) if due else None

    def _expire_assignments(self) -> None:
        limit = int(self.config.assign_timeout_s * 1000)
        stale = [w for w in self.active.values()
                 if w.state == "assigned" and self.now - w.assigned_ts > limit]
        for w in stale:
            self._missed(w)
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
            free_ok = self._offerable() & (fleet.mem_free() >= u.mem_gb) & temp_ok & price_ok
            if u.avoid:
                free_ok[list(u.avoid)] = False
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
                v.gpu_idx, v.site, v.confirmed = (), "", ()
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

    def drain_health(self) -> pl.DataFrame:
        """GPU cordon changes since the last call (``hcp.schemas.GPU_HEALTH_SCHEMA`` rows)."""
        rows, self._health = getattr(self, "_health", []), []
        return pl.DataFrame(rows, schema=GPU_HEALTH_SCHEMA, orient="row")

    def running_on(self) -> dict[int, str]:
        """GPU index -> the workload the router has running there."""
        return {g: w.workload_id for w in self.active.values() if w.state == "running"
                for g in w.gpu_idx}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.workloads.values():
            out[str(w.state)] = out.get(str(w.state), 0) + 1
        return out

