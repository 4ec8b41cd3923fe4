"""A fleet of Antminer S21s reporting at 1 Hz, stepped for the whole fleet at once.

An S21 hashes about 200 TH/s at about 3500 W (17.5 J/TH). Shares follow the pool's share
difficulty: a miner at ``H`` TH/s finds ``H * 1e12 / (share_difficulty * 2**32)`` shares
per second on average (Poisson); a small fraction is rejected, and hardware errors are
rare. States: ``mining``, ``curtailed`` (hashboards off: ~0 TH/s, control board power only)
and ``fault`` (rare, repaired after a while).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from generators.keys import asic_ids, static_frame

__all__ = ["CURTAILED", "FAULT", "MINING", "AsicFleet", "AsicParams"]

MINING, CURTAILED, FAULT = 0, 1, 2
STATE_NAMES = pl.Series("state", ["mining", "curtailed", "fault"])


@dataclass(frozen=True)
class AsicParams:
    """Physical and behavioural constants of the simulated miners."""

    model: str = "S21"
    hashrate_ths: float = 200.0
    j_per_th: float = 17.5
    share_difficulty: float = 16384.0
    reject_rate: float = 0.005
    hw_errors_per_s: float = 0.02
    fault_per_s: float = 3e-6
    repair_s: tuple[float, float] = (600.0, 3600.0)
    curtailed_power_w: float = 20.0
    fault_power_w: float = 80.0

    @property
    def nominal_power_w(self) -> float:
        return self.hashrate_ths * self.j_per_th


class AsicFleet:
    """State arrays for ``n`` miners; :meth:`step` advances one simulated second."""

    def __init__(
        self,
        n: int,
        site_index: np.ndarray,
        rng: np.random.Generator,
        start_ms: int,
        params: AsicParams | None = None,
    ) -> None:
        self.n = n
        self.params = p = params or AsicParams()
        self.rng = rng
        self.ids = asic_ids(n)
        self.site_index = site_index
        self.nominal_ths = rng.normal(p.hashrate_ths, 3.0, n)
        self.nominal_w = self.nominal_ths * rng.normal(p.j_per_th, 0.3, n)
        self.state = np.full(n, MINING, dtype=np.int8)
        self.until_ms = np.zeros(n, dtype=np.int64)  # end of a fault or forced state
        faulted = rng.random(n) < 0.002
        self.state[faulted] = FAULT
        self.until_ms[faulted] = start_ms + (
            rng.uniform(*p.repair_s, int(faulted.sum())) * 1000
        ).astype(np.int64)
        self.forced = np.zeros(n, dtype=bool)
        self.temp = np.zeros(n)
        self._first = True

    def set_state(self, mask: np.ndarray, state: int, until_ms: int) -> None:
        """Pin the miners in ``mask`` to ``state`` until ``until_ms`` (curtail, restart)."""
        self.state[mask] = state
        self.until_ms[mask] = until_ms
        self.forced[mask] = True

    def step(self, t_ms: int, ambient: np.ndarray) -> dict[str, np.ndarray]:
        """Advance to second ``t_ms`` and return this second's dynamic columns."""
        p, rng, n = self.params, self.rng, self.n
        state = self.state
        ended = (self.until_ms <= t_ms) & ((state != MINING) | self.forced)
        if ended.any():
            state[ended] = MINING
            self.forced[ended] = False
        u = rng.random(n)
        fault = (state == MINING) & ~self.forced & (u < p.fault_per_s)
        if fault.any():
            idx = np.flatnonzero(fault)
            state[idx] = FAULT
            self.until_ms[idx] = t_ms + (rng.uniform(*p.repair_s, idx.size) * 1000).astype(np.int64)
        mining = state == MINING
        noise = rng.standard_normal((2, n)).astype(np.float64)
        rel = 1.0 + 0.015 * noise[0]
        hashrate = np.where(mining, self.nominal_ths * rel, 0.0)
        idle_w = np.where(state == FAULT, p.fault_power_w, p.curtailed_power_w)
        power = np.where(
            mining,
            self.nominal_w * (1.0 + 0.4 * (rel - 1.0)) + 6.0 * noise[1],
            idle_w + 2.0 * noise[1],
        )
        rate = hashrate * (1e12 / (p.share_difficulty * 2.0**32))
        accepted = rng.poisson(rate * (1.0 - p.reject_rate))
        rejected = rng.poisson(rate * p.reject_rate)
        hw = rng.poisson(np.where(mining, p.hw_errors_per_s, 0.0))
        amb = ambient[self.site_index]
        target = amb + 42.0 * power / p.nominal_power_w
        if self._first:
            self.temp = target.copy()
            self._first = False
        self.temp += 0.05 * (target - self.temp) + 0.1 * noise[1]
        return {
            "state": state.copy(),
            "hashrate_ths": np.round(hashrate, 2),
            "power_w": np.round(np.maximum(power, 0.0), 1),
            "temp_c": np.round(self.temp, 1),
            "shares_accepted": accepted,
            "shares_rejected": rejected,
            "hw_errors": hw,
        }

    def static_frame(self, sites: list[str]) -> pl.DataFrame:
        """Columns that never change: id, site, model (SPEC field order)."""
        return static_frame("asic_id", self.ids, self.site_index, sites, self.params.model)

    def frame(
        self, static: pl.DataFrame, ts: np.ndarray, cols: dict[str, np.ndarray]
    ) -> pl.DataFrame:
        """The message columns of a block of seconds, in SPEC field order."""
        return pl.DataFrame(
            {
                "ts": ts,
                **static.to_dict(),
                "state": STATE_NAMES.gather(cols["state"]),
                "hashrate_ths": cols["hashrate_ths"],
                "power_w": cols["power_w"],
                "temp_c": cols["temp_c"],
                "shares_accepted": cols["shares_accepted"],
                "shares_rejected": cols["shares_rejected"],
                "hw_errors": cols["hw_errors"],
            }
        )
