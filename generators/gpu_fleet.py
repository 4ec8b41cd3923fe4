"""A fleet of H100-SXM GPUs reporting at 1 Hz, stepped for the whole fleet at once.

Each GPU is ``idle``, ``busy`` (running a workload until a known time) or ``down``
(failed, back after a repair time). Background jobs start at random on idle GPUs, so the
fleet looks loaded before any scheduler exists; :meth:`GpuFleet.assign` lets a scheduler
(the workloads closed loop) pin a GPU to one of its workloads instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from generators.keys import gpu_ids, static_frame

__all__ = ["BUSY", "DOWN", "IDLE", "GpuFleet", "GpuParams"]

IDLE, BUSY, DOWN = 0, 1, 2
STATE_NAMES = pl.Series("state", ["idle", "busy", "down"])
_NULL = None


@dataclass(frozen=True)
class GpuParams:
    """Physical and behavioural constants of the simulated GPUs."""

    model: str = "H100-SXM"
    mem_total_gb: float = 80.0
    max_power_w: float = 700.0
    idle_power_w: tuple[float, float] = (60.0, 90.0)
    busy_util_pct: tuple[float, float] = (85.0, 99.0)
    # Background load: an idle GPU starts a job with this chance per second; jobs last
    # exponentially long with this mean. About 60 % busy in the steady state.
    job_start_per_s: float = 1 / 1200
    # False in a closed loop: GPUs then run only the work the router assigns them.
    background_jobs: bool = True
    job_mean_s: float = 1800.0
    fail_per_s: float = 2e-6
    repair_s: tuple[float, float] = (300.0, 1800.0)


class GpuFleet:
    """State arrays for ``n`` GPUs; :meth:`step` advances one simulated second."""

    def __init__(
        self,
        n: int,
        site_index: np.ndarray,
        rng: np.random.Generator,
        start_ms: int,
        params: GpuParams | None = None,
    ) -> None:
        self.n = n
        self.params = p = params or GpuParams()
        self.rng = rng
        self.ids = gpu_ids(n)
        self.site_index = site_index
        self.idle_power = rng.uniform(*p.idle_power_w, n)
        self.state = np.full(n, IDLE, dtype=np.int8)
        self.until_ms = np.zeros(n, dtype=np.int64)  # end of the current busy / down spell
        self.hold_until_ms = np.zeros(n, dtype=np.int64)  # no random transitions before
        self.util_target = rng.uniform(*p.busy_util_pct, n)
        self.job_mem = np.zeros(n)
        # Workload id per GPU, None (JSON null) when not busy. Strings are made once per job
        # start, never per message; the encoder escapes them.
        self.workload: np.ndarray = np.full(n, _NULL, dtype=object)
        self._jobs = 0
        self.temp = np.zeros(n)
        # Start in the steady state: ~60 % busy with a random remaining time, a few down.
        u = rng.random(n)
        busy = (u < 0.6) & p.background_jobs
        down = u > 0.995
        self._start_jobs(np.flatnonzero(busy), start_ms)
        self.state[down] = DOWN
        self.until_ms[down] = start_ms + (rng.uniform(*p.repair_s, int(down.sum())) * 1000).astype(
            np.int64
        )
        self._first = True

    # -- closed-loop API -------------------------------------------------------------------
    def index_of(self, gpu: int | str) -> int:
        """The array index of a GPU given as index or id (``gpu-00001`` is index 0)."""
        idx = int(gpu.rsplit("-", 1)[1]) - 1 if isinstance(gpu, str) else int(gpu)
        if not 0 <= idx < self.n:
            msg = f"no GPU {gpu!r} in a fleet of {self.n}"
            raise IndexError(msg)
        return idx

    def assign(
        self, gpu: int | str, workload_id: str, until_ts_ms: int, mem_gb: float | None = None
    ) -> None:
        """Report ``gpu`` busy with ``workload_id`` until ``until_ts_ms``, then idle.

        The GPU takes no random transitions (background jobs, failures) meanwhile.
        """
        i = self.index_of(gpu)
        self.state[i] = BUSY
        self.workload[i] = workload_id
        self.until_ms[i] = until_ts_ms
        self.hold_until_ms[i] = until_ts_ms
        self.job_mem[i] = (
            min(float(mem_gb), self.params.mem_total_gb)
            if mem_gb is not None
            else 0.6 * self.params.mem_total_gb
        )

    def release(self, gpu: int | str, workload_id: str | None = None) -> None:
        """End the GPU's work now (preempted or finished early): it reports idle.

        With ``workload_id``, only if the GPU still runs that workload: a stop message
        for a previous holder (on another partition, so possibly read after the next
        holder's ``assign``) must not end the new work.
        """
        i = self.index_of(gpu)
        if workload_id is not None and self.workload[i] != workload_id:
            return
        self.state[i] = IDLE
        self.workload[i] = _NULL
        self.until_ms[i] = 0
        self.hold_until_ms[i] = 0

    def force(self, mask: np.ndarray, state: int, until_ms: int, label: str) -> None:
        """Pin the GPUs in ``mask`` to ``state`` until ``until_ms`` (scenario events)."""
        idx = np.flatnonzero(mask)
        self.state[idx] = state
        self.until_ms[idx] = until_ms
        self.hold_until_ms[idx] = until_ms
        self.workload[idx] = label if state == BUSY else _NULL
        if state == BUSY:
            self.job_mem[idx] = self.rng.uniform(20.0, 78.0, idx.size)
            self.util_target[idx] = self.rng.uniform(*self.params.busy_util_pct, idx.size)

    # -- simulation ------------------------------------------------------------------------
    def _start_jobs(self, idx: np.ndarray, t_ms: int) -> None:
        if idx.size == 0:
            return
        p, rng = self.params, self.rng
        self.state[idx] = BUSY
        dur = np.maximum(rng.exponential(p.job_mean_s, idx.size), 120.0)
        self.until_ms[idx] = t_ms + (dur * 1000).astype(np.int64)
        self.job_mem[idx] = rng.uniform(20.0, 78.0, idx.size)
        self.util_target[idx] = rng.uniform(
            p.busy_util_pct[0] + 2, p.busy_util_pct[1] - 1, idx.size
        )
        first = self._jobs + 1
        self._jobs += idx.size
        self.workload[idx] = [f"job-{k:07d}" for k in range(first, first + idx.size)]

    def step(self, t_ms: int, ambient: np.ndarray) -> dict[str, np.ndarray]:
        """Advance to second ``t_ms`` and return this second's dynamic columns."""
        p, rng, n = self.params, self.rng, self.n
        state = self.state
        ended = (state != IDLE) & (self.until_ms <= t_ms)
        if ended.any():
            state[ended] = IDLE
            self.workload[ended] = _NULL
        free = self.hold_until_ms <= t_ms
        u = rng.random(n)
        fail = free & (state != DOWN) & (u < p.fail_per_s)
        start = free & (state == IDLE) & (u > 1.0 - p.job_start_per_s) & p.background_jobs
        if start.any():
            self._start_jobs(np.flatnonzero(start), t_ms)
        if fail.any():
            idx = np.flatnonzero(fail)
            state[idx] = DOWN
            self.workload[idx] = _NULL
            self.until_ms[idx] = t_ms + (rng.uniform(*p.repair_s, idx.size) * 1000).astype(np.int64)

        busy = state == BUSY
        down = state == DOWN
        noise = rng.standard_normal((3, n))
        lo, hi = p.busy_util_pct
        util = np.where(
            busy,
            np.clip(self.util_target + 1.5 * noise[0], lo, hi),
            np.where(down, 0.0, np.abs(noise[0]) * 0.8),
        )
        span = p.max_power_w - 10.0 - self.idle_power
        power = np.where(
            busy,
            np.minimum(
                self.idle_power + span * (util / 100.0) ** 2 + 8.0 * noise[1], p.max_power_w
            ),
            np.where(down, 0.0, self.idle_power + 1.5 * noise[1]),
        )
        amb = ambient[self.site_index]
        target = amb + 45.0 * power / p.max_power_w
        if self._first:
            self.temp = target.copy()
            self._first = False
        self.temp += 0.08 * (target - self.temp) + 0.15 * noise[2]
        mem = np.where(busy, np.minimum(self.job_mem + 0.05 * noise[2], p.mem_total_gb), 0.0)
        mem = np.where(busy | down, mem, 0.45)
        return {
            "state": state.copy(),
            "util_pct": np.round(util, 1),
            "temp_c": np.round(self.temp, 1),
            "power_w": np.round(np.maximum(power, 0.0), 1),
            "mem_used_gb": np.round(mem, 2),
            "workload_id": self.workload.copy(),
        }

    def static_frame(self, sites: list[str]) -> pl.DataFrame:
        """Columns that never change: id, site, model (SPEC field order)."""
        return static_frame("gpu_id", self.ids, self.site_index, sites, self.params.model)

    def frame(
        self, static: pl.DataFrame, ts: np.ndarray, cols: dict[str, np.ndarray]
    ) -> pl.DataFrame:
        """The message columns of a block of seconds, in SPEC field order."""
        return pl.DataFrame(
            {
                "ts": ts,
                **static.to_dict(),
                "state": STATE_NAMES.gather(cols["state"]),
                "util_pct": cols["util_pct"],
                "temp_c": cols["temp_c"],
                "power_w": cols["power_w"],
                "mem_used_gb": cols["mem_used_gb"],
                "mem_total_gb": np.full(ts.size, self.params.mem_total_gb),
                "workload_id": pl.Series(cols["workload_id"].tolist(), dtype=pl.String),
            }
        )
