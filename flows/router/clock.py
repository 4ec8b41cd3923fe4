"""The router's event-time clock: inputs are buffered by tick and applied in a fixed order.

The router decides from the whole fleet and the whole queue, so a decision depends on
exactly which inputs it has applied. To make placements independent of batch boundaries,
worker count and the interleaving of partitions, :class:`RouterClock` never routes on
arrival. It cuts event time into ticks of ``tick_ms`` and processes tick ``t`` (inputs with
``t <= ts < t + tick_ms``) only once

- the router's watermark ``W`` (flows/progress.py, the rule the profitability shards use:
  the slowest live input's ``max_ts - lateness``; finished inputs do not count, idle ones
  stop holding it back) has reached ``t + tick_ms``, so every input of the tick is here; and
- when it follows the profitability flow, the fleet stage has closed every window ending
  at or before ``t`` (its ``fleet_wm``), so every recommendation for the tick is here.

A tick applies recommendations (by ``window_end``), prices, requests and GPU reports in a
canonical order, then runs one routing round at ``t + tick_ms``. Ticks without input are
skipped unless a router timer (assignment expiry, preemption eligibility) falls in them.
See docs/workloads.md for the exact rules and what remains non-deterministic (idle inputs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from prometheus_client import Counter

from flows.progress import NEG_INF, Progress
from flows.router.router import Router

__all__ = ["GPU_COLUMNS", "RouterClock"]

log = logging.getLogger(__name__)

LATE = Counter(
    "hcp_router_late_events",
    "Router inputs dropped: further than the lateness behind their partition, or in a tick "
    "already routed",
    ["kind"],
)
LATE_COMMANDS = Counter(
    "hcp_router_late_commands",
    "Workload submits and cancels behind the router's watermark, applied at its current "
    "event time instead of being dropped",
    ["op"],
)

# The GPU report columns the router reads; buffering only these keeps pending ticks small.
GPU_COLUMNS = ("ts", "gpu_id", "site", "model", "state", "mem_used_gb", "mem_total_gb",
               "temp_c", "workload_id")
_SORT = {
    "prices": ("ts", "kind", "site", "model", "value"),
    "workloads": ("ts", "workload_id", "customer"),
    "gpu": ("ts", "gpu_id"),
}


@dataclass
class RouterClock:
    """A :class:`Router` behind an event-time tick clock; pickled whole for recovery.

    ``progress`` holds the ``topic#partition`` inputs whose progress bounds the watermark.
    An id not listed at creation is added when it first reports (then the start is only
    as deterministic as the order in which inputs first report). ``gated`` means recommendations and
    ``fleet_wm`` items follow, and ticks wait for the fleet stage.
    """

    router: Router
    progress: Progress
    gated: bool = False
    fleet_wm: int = NEG_INF
    # tick start -> kind -> frames, in arrival order (sorted when the tick runs)
    pending: dict[int, dict[str, list[pl.DataFrame]]] = field(default_factory=dict)
    recs: dict[int, list[pl.DataFrame]] = field(default_factory=dict)  # by window_end
    done_until: int = NEG_INF  # every tick starting before this has run
    max_seen: int = NEG_INF
    ticks_run: int = 0

    @classmethod
    def create(
        cls,
        router: Router,
        inputs: tuple[str, ...] = (),
        gated: bool = False,
        idle_timeout_s: float = 0.0,
    ) -> RouterClock:
        lateness = int(router.config.lateness_ms)
        return cls(router, Progress.create(lateness, inputs, idle_timeout_s), gated)

    @property
    def tick_ms(self) -> int:
        return int(self.router.config.tick_ms)

    # -- inputs -------------------------------------------------------------------------
    def add_batch(
        self, kind: str, input_id: str, rows: pl.DataFrame, eof: bool = False, idle: bool = False
    ) -> None:
        """One source fetch (empty ``rows`` is a heartbeat carrying ``eof``/``idle``)."""
        if rows.height == 0:
            self.progress.observe(input_id, None, eof, idle)
            return
        ts = rows["ts"].to_numpy()
        late = self.progress.observe(input_id, ts, eof, idle)
        # A tick already routed cannot take more input (possible only after an idle
        # input resumed, or at startup when the inputs were not listed).
        late |= ts < self.done_until
        n_late = int(late.sum())
        if n_late and kind == "workloads":
            rows, ts = self._commands_in_time(rows, late)
            n_late = 0
        if n_late:
            LATE.labels(kind).inc(n_late)
            rows = rows.filter(pl.Series(~late))
            ts = ts[~late]
            if rows.height == 0:
                return
        self.max_seen = max(self.max_seen, int(ts.max()))
        if kind == "gpu":
            rows = rows.select(c for c in GPU_COLUMNS if c in rows.columns)
        tick = self.tick_ms
        first, last = int(ts.min()) // tick, int(ts.max()) // tick
        if first == last:
            self.pending.setdefault(first * tick, {}).setdefault(kind, []).append(rows)
            return
        keyed = rows.with_columns(pl.Series("_tick", ts // tick * tick))
        for (start,), part in keyed.partition_by("_tick", as_dict=True,
                                                 maintain_order=True).items():
            self.pending.setdefault(int(start), {}).setdefault(kind, []).append(
                part.drop("_tick")
            )

    def _commands_in_time(
        self, rows: pl.DataFrame, late: np.ndarray
    ) -> tuple[pl.DataFrame, np.ndarray]:
        """Late submits and cancels get ``at_ts``: the first tick not routed yet.

        A command the API answered 202 must never vanish: only telemetry and prices may be
        dropped as late. The row keeps its own ``ts`` (the workload's age, and how a replayed
        duplicate is recognised); ``at_ts`` is when the router applies it.
        """
        ops = rows["op"].fill_null("submit") if "op" in rows.columns else None
        for op in (ops.filter(pl.Series(late)).to_list() if ops is not None
                   else ["submit"] * int(late.sum())):
            LATE_COMMANDS.labels(op).inc()
        ts = rows["ts"].to_numpy()
        # Behind the partition's lateness but in a tick not routed yet: its own tick.
        at_ts = np.where(late, np.maximum(ts, self.done_until), ts)
        return rows.with_columns(pl.Series("at_ts", at_ts, dtype=pl.Int64)), at_ts

    def add_recs(self, df: pl.DataFrame) -> None:
        """Recommendations apply from the first tick starting at or after their window end."""
        if df.height == 0:
            return
        if "window_end" not in df.columns:
            self.recs.setdefault(NEG_INF, []).append(df)
            return
        for (end,), part in df.partition_by("window_end", as_dict=True,
                                            maintain_order=True).items():
            self.recs.setdefault(int(end), []).append(part)

    def add_fleet_wm(self, wm: int) -> None:
        self.fleet_wm = max(self.fleet_wm, int(wm))

    # -- the watermark --------------------------------------------------------------------
    def watermark(self) -> int:
        """The router's event-time progress (flows/progress.py)."""
        return self.progress.watermark()

    # -- running ticks ----------------------------------------------------------------------
    def advance(self, final: bool = False) -> int:
        """Run every tick that is complete; ``final`` runs all that remain. Returns ticks run.

        Nothing runs past the end of the tick holding the newest input seen, so timers
        cannot loop forever after the input ends.
        """
        tick = self.tick_ms
        if self.max_seen == NEG_INF:
            return 0
        limit = (self.max_seen // tick + 1) * tick
        if not final:
            limit = min(limit, self.watermark())
            if self.gated:
                # Tick t needs every window ending at or before t: t <= fleet_wm.
                limit = min(limit, self.fleet_wm + tick if self.fleet_wm > NEG_INF else NEG_INF)
        ran = 0
        while True:
            t = self._next_tick()
            if t is None or t + tick > limit:
                break
            self._run(t)
            ran += 1
        return ran

    def _ceil_tick(self, ts: int) -> int:
        tick = self.tick_ms
        return -(-ts // tick) * tick

    def _next_tick(self) -> int | None:
        tick = self.tick_ms
        cands = []
        if self.pending:
            cands.append(min(self.pending))
        ends = [e for e in self.recs if e > NEG_INF]  # no window_end: applies to the next tick
        if ends:
            cands.append(self._ceil_tick(min(ends)))
        due = self.router.next_deadline()
        if due is not None:
            # The round at a tick's end time e acts on the timer once e >= due.
            cands.append(self._ceil_tick(due) - tick)
        if not cands:
            return None
        t = min(cands)
        if self.done_until > NEG_INF:
            t = max(t, self.done_until)
        return t

    def _run(self, t: int) -> None:
        r = self.router
        tick = self.tick_ms
        for end in sorted(e for e in self.recs if e <= t):
            frames = self.recs.pop(end)
            df = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
            r.on_recommendations(df.sort("device_id", maintain_order=True))
        inputs = self.pending.pop(t, {})
        prices = _canonical(inputs.get("prices"), "prices")
        if prices is not None:
            r.on_prices(prices)
        reqs = _canonical(inputs.get("workloads"), "workloads")
        if reqs is not None:
            r.on_requests(reqs)
        gpu = _canonical(inputs.get("gpu"), "gpu")
        if gpu is not None:
            r.on_gpu_status(gpu)
        r.route(t + tick)
        self.done_until = t + tick
        self.ticks_run += 1

    def backlog(self) -> int:
        """Ticks with buffered input still waiting for the watermark."""
        return len(self.pending)


def _canonical(frames: list[pl.DataFrame] | None, kind: str) -> pl.DataFrame | None:
    """One tick's rows of one kind in an order that does not depend on arrival.

    Frames of one partition arrive in offset order and the sort is stable, so rows that
    tie on every sort key keep their partition's order (a key's messages share a partition).
    """
    if not frames:
        return None
    df = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
    keys = [c for c in _SORT[kind] if c in df.columns]
    return df.sort(keys, nulls_last=True, maintain_order=True)
