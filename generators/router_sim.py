"""A small event-time GPU fleet that obeys assignment messages, for the closed-loop tests and
the router benchmark (the demo uses the generators' fleet through the same interface).

Each GPU runs at most one workload until its ``until_ts_ms``, then reports idle. The fleet
keeps its own record of violations: an ``assign`` to a GPU that still runs another
workload is counted in ``double_assignments`` (the router must never cause one).

GPUs listed in ``unresponsive`` model dead agents: they ignore every ``assign`` and keep
reporting ``idle`` with no workload (each ignored assignment is counted in ``ignored``).
"""

from __future__ import annotations

import numpy as np
import polars as pl

__all__ = ["SimFleet"]


class SimFleet:
    """``n`` GPUs spread round-robin over ``sites``; all H100-class, 80 GB."""

    def __init__(
        self,
        n: int,
        sites: tuple[str, ...] = ("site-a", "site-b"),
        model: str = "H100-SXM",
        mem_total_gb: float = 80.0,
        seed: int = 0,
    ) -> None:
        self.ids = [f"gpu-{i:05d}" for i in range(n)]
        self.index = {g: i for i, g in enumerate(self.ids)}
        self.sites = [sites[i % len(sites)] for i in range(n)]
        self.model = model
        self.mem_total = np.full(n, mem_total_gb)
        self.running: list[str | None] = [None] * n
        self.until = np.zeros(n, dtype=np.int64)
        self.down = np.zeros(n, dtype=np.bool_)
        self.temp = np.random.default_rng(seed).uniform(40.0, 70.0, n)
        self.double_assignments = 0
        self.completed: set[str] = set()
        self.unresponsive: set[str] = set()
        self.ignored: dict[str, int] = {}

    # -- the fleet interface the assignment reader drives ---------------------------------
    def assign(
        self, gpu: str, workload_id: str, until_ts_ms: int, mem_gb: float | None = None
    ) -> None:
        if gpu in self.unresponsive:
            self.ignored[gpu] = self.ignored.get(gpu, 0) + 1
            return
        g = self.index[gpu]
        if self.running[g] is not None and self.running[g] != workload_id:
            self.double_assignments += 1
        self.running[g] = workload_id
        self.until[g] = until_ts_ms

    def release(self, gpu: str, workload_id: str | None = None) -> None:
        g = self.index[gpu]
        if workload_id is not None and self.running[g] != workload_id:
            return  # a late stop for the previous holder: the new work goes on
        self.running[g] = None
        self.until[g] = 0

    # -- the clock ---------------------------------------------------------------------
    def advance(self, ts: int) -> None:
        """Finish every workload whose time is up at ``ts``."""
        for g in np.flatnonzero((self.until > 0) & (self.until <= ts)).tolist():
            wid = self.running[g]
            if wid is not None:
                self.completed.add(wid)
            self.running[g] = None
            self.until[g] = 0

    def status(self, ts: int) -> pl.DataFrame:
        """One telemetry row per GPU at ``ts`` (the GPU telemetry contract's columns)."""
        self.advance(ts)
        for g in np.flatnonzero(self.down).tolist():  # a GPU that goes down loses its work
            self.running[g] = None
            self.until[g] = 0
        n = len(self.ids)
        busy = np.array([w is not None for w in self.running])
        state = np.where(self.down, "down", np.where(busy, "busy", "idle"))
        return pl.DataFrame(
            {
                "v": np.ones(n, dtype=np.int64),
                "ts": np.full(n, ts, dtype=np.int64),
                "gpu_id": self.ids,
                "site": self.sites,
                "model": [self.model] * n,
                "state": state.tolist(),
                "util_pct": np.where(busy, 90.0, 0.0),
                "temp_c": self.temp,
                "power_w": np.where(busy, 650.0, 80.0),
                "mem_used_gb": np.where(busy, 60.0, 0.0),
                "mem_total_gb": self.mem_total,
                "workload_id": [None if d else w for w, d in zip(self.running, self.down,
                                                                  strict=True)],
            },
            schema_overrides={"workload_id": pl.String},
        )
