"""The router's view of the GPU fleet: numpy arrays by dense GPU index, plus prices.

GPUs get a dense index the first time they report; arrays grow by doubling. Each array
holds the latest report by event time (an older report never overwrites a newer one).
``holder[g]`` is the workload the router gave GPU ``g`` to (assigned or running), the only
source of truth for "who has this GPU" on the router side.

Health (docs/workloads.md, "GPUs that never start work"): ``misses[g]`` counts the
assignments in a row that GPU ``g`` never started; it gets no new work before
``hold_until[g]`` (a back-off, or the cool-off of a cordon), and ``cordoned[g]`` is set
from ``cordon_since[g]`` until it reports running work or the cool-off passes.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from flows.router.kernels import gpu_scores

__all__ = ["BUSY", "DOWN", "IDLE", "UNKNOWN", "GpuRoster"]

log = logging.getLogger(__name__)

UNKNOWN, IDLE, BUSY, DOWN = 0, 1, 2, 3
_STATE_CODE = {"idle": IDLE, "busy": BUSY, "down": DOWN}


class GpuRoster:
    """Latest status of every GPU seen, spot prices per model, electricity per site."""

    def __init__(self, capacity: int = 64) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.sites: list[str] = []
        self.site_index: dict[str, int] = {}
        self.models: list[str] = []
        self.model_index: dict[str, int] = {}
        self.holder: list[str | None] = []
        self.reported: list[str | None] = []
        self.spot_by_model: dict[str, float] = {}
        self.elec_by_site: dict[str, float] = {}
        # Recommendations for GPUs not seen yet: applied when they first report.
        self._pending_power_down: dict[str, bool] = {}
        self._rank: np.ndarray | None = None
        self._alloc(capacity)

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "site", None)
        n = len(self.ids)

        def grow(name: str, dtype: type, fill: float | int | bool) -> None:
            arr = np.full(cap, fill, dtype=dtype)
            if old is not None:
                arr[:n] = getattr(self, name)[:n]
            setattr(self, name, arr)

        grow("site", np.int64, 0)
        grow("model", np.int64, 0)
        grow("state", np.int8, UNKNOWN)
        grow("busy_wl", np.bool_, False)  # the GPU reports some workload id
        grow("mem_used", np.float64, 0.0)
        grow("mem_total", np.float64, 0.0)
        grow("temp", np.float64, 0.0)
        grow("last_ts", np.int64, -1)
        grow("power_down", np.bool_, False)
        grow("reserved", np.bool_, False)
        grow("misses", np.int64, 0)
        grow("hold_until", np.int64, 0)
        grow("cordoned", np.bool_, False)
        grow("cordon_since", np.int64, 0)
        grow("busy_until", np.int64, 0)  # expected end of the router's work on it (0: none)

    def __len__(self) -> int:
        return len(self.ids)

    def _intern(self, names: list[str], index: dict[str, int], name: str) -> int:
        i = index.get(name)
        if i is None:
            i = index[name] = len(names)
            names.append(name)
        return i

    def ensure(self, gpu_id: str, site: str, model: str) -> int:
        """Dense index of ``gpu_id``, registering it on first sight."""
        g = self.index.get(gpu_id)
        if g is not None:
            return g
        g = len(self.ids)
        if g >= self.site.shape[0]:
            self._alloc(2 * self.site.shape[0])
        self.ids.append(gpu_id)
        self.index[gpu_id] = g
        self.holder.append(None)
        self.reported.append(None)
        self.site[g] = self._intern(self.sites, self.site_index, site)
        self.model[g] = self._intern(self.models, self.model_index, model)
        self.power_down[g] = self._pending_power_down.pop(gpu_id, False)
        self._rank = None
        return g

    def indices(self, df: pl.DataFrame) -> np.ndarray:
        """Dense index of each row's GPU (registering new ones)."""
        return np.fromiter(
            (
                self.ensure(gid, site, model)
                for gid, site, model in zip(
                    df["gpu_id"].to_list(), df["site"].to_list(), df["model"].to_list(),
                    strict=True,
                )
            ),
            dtype=np.int64,
            count=df.height,
        )

    def update_status(self, df: pl.DataFrame, idx: np.ndarray) -> None:
        """Apply the newest row per GPU (``df`` sorted by ts, ``idx`` its dense indices)."""
        # Last row per GPU wins: reverse, keep the first occurrence.
        rev = idx[::-1]
        _, first = np.unique(rev, return_index=True)
        rows = (len(idx) - 1 - first).astype(np.int64)
        g = idx[rows]
        ts = df["ts"].to_numpy()[rows]
        newer = ts >= self.last_ts[g]
        rows, g, ts = rows[newer], g[newer], ts[newer]
        states = df["state"].to_list()
        wids = df["workload_id"].to_list() if "workload_id" in df.columns else [None] * df.height
        self.state[g] = np.array([_STATE_CODE.get(states[r], UNKNOWN) for r in rows], np.int8)
        self.busy_wl[g] = np.array([wids[r] is not None for r in rows], np.bool_)
        for r, gg in zip(rows.tolist(), g.tolist(), strict=True):
            self.reported[gg] = wids[r]
        self.mem_used[g] = df["mem_used_gb"].to_numpy()[rows]
        self.mem_total[g] = df["mem_total_gb"].to_numpy()[rows]
        self.temp[g] = df["temp_c"].to_numpy()[rows]
        self.last_ts[g] = ts

    def set_price(self, kind: str, value: float, site: str | None, model: str | None) -> None:
        if kind == "gpu_spot_usd_hr" and model is not None:
            self.spot_by_model[model] = float(value)
        elif kind == "electricity_usd_mwh" and site is not None:
            self.elec_by_site[site] = float(value)

    def set_recommendation(self, device_id: str, action: str) -> None:
        g = self.index.get(device_id)
        if g is None:
            self._pending_power_down[device_id] = action == "power_down"
        else:
            self.power_down[g] = action == "power_down"

    def reserve(self, g: int, workload_id: str) -> None:
        self.holder[g] = workload_id
        self.reserved[g] = True

    def release(self, g: int) -> None:
        self.holder[g] = None
        self.reserved[g] = False
        self.busy_until[g] = 0

    def expected_free(self, now: int, never: int) -> np.ndarray:
        """When each GPU is expected to take new work: ``now`` if free, else the expected
        end of the router's work on it or of its back-off / cordon; ``never`` for GPUs down,
        powering down, unknown or busy with work the router does not know."""
        n = len(self.ids)
        out = np.full(n, never, dtype=np.int64)
        usable = self.usable_mask()
        out[usable] = now
        held = self.reserved[:n]
        out[held] = np.maximum(self.busy_until[:n][held], now)
        unknown = usable & ~held & self.busy_wl[:n]
        out[unknown] = never
        hold = usable & (self.hold_until[:n] > now)
        out[hold] = np.maximum(out[hold], self.hold_until[:n][hold])
        out[~usable] = never
        return out

    # -- arrays for the kernels --------------------------------------------------------
    def rank(self) -> np.ndarray:
        """Rank of each GPU id in sorted order: deterministic tie-breaks by GPU id."""
        if self._rank is None or self._rank.shape[0] != len(self.ids):
            order = np.argsort(np.array(self.ids, dtype=object), kind="stable")
            rank = np.empty(len(self.ids), dtype=np.int64)
            rank[order] = np.arange(len(self.ids))
            self._rank = rank
        return self._rank

    def free_mask(self) -> np.ndarray:
        n = len(self.ids)
        return (
            (self.state[:n] == IDLE)
            & ~self.busy_wl[:n]
            & ~self.power_down[:n]
            & ~self.reserved[:n]
        )

    def held_mask(self, now: int) -> np.ndarray:
        """GPUs backing off or cordoned at event time ``now``: offered no new work."""
        return self.hold_until[: len(self.ids)] > now

    def usable_mask(self) -> np.ndarray:
        """GPUs that could take work once emptied: known, not down, not powering down."""
        n = len(self.ids)
        return (self.state[:n] != UNKNOWN) & (self.state[:n] != DOWN) & ~self.power_down[:n]

    def mem_free(self) -> np.ndarray:
        n = len(self.ids)
        return self.mem_total[:n] - self.mem_used[:n]

    def spot(self) -> np.ndarray:
        by_model = np.array(
            [self.spot_by_model.get(m, np.nan) for m in self.models] or [np.nan], np.float64
        )
        return by_model[self.model[: len(self.ids)]]

    def elec(self) -> np.ndarray:
        by_site = np.array(
            [self.elec_by_site.get(s, np.nan) for s in self.sites] or [np.nan], np.float64
        )
        return by_site[self.site[: len(self.ids)]]

    def scores(self, power_kw: float) -> np.ndarray:
        n = len(self.ids)
        return gpu_scores(self.spot(), self.elec(), self.temp[:n], power_kw)
