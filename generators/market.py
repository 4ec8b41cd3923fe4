"""The market: BTC price, difficulty, block reward, electricity per site, GPU spot rates.

Schedules follow SPEC section 5: ``btc_usd`` every 10 s (a geometric random walk),
``gpu_spot_usd_hr`` every minute (mean-reverting within about 1.7-2.5 $/h),
``electricity_usd_mwh`` every 5 minutes per site (a day shape with a morning and an evening
peak, noise, and rare random spikes to hundreds or thousands of $/MWh),
``block_reward_btc`` every 10 minutes (the 3.125 subsidy plus fees), ``difficulty`` every
hour. Everything is emitted once at the start so a consumer has every price from the
first second. ``power_cap_mw`` comes only from scenario events.

Random draws happen on the schedule whatever a scenario overrides, so a scenario changes
only the values it pins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Market", "MarketParams", "PriceRow"]

# (kind, scope field, scope value, value); scope field is "site", "model" or "".
PriceRow = tuple[str, str, str, float]


@dataclass(frozen=True)
class MarketParams:
    """Starting values and volatilities of the simulated market."""

    btc_usd: float = 100_000.0
    btc_vol_per_10s: float = 4e-4  # ~3.7 % a day
    difficulty: float = 1.3e14
    subsidy_btc: float = 3.125
    fees_btc: float = 0.08
    spot_usd_hr: float = 2.1
    spot_range: tuple[float, float] = (1.7, 2.5)
    electricity_base: tuple[float, float] = (25.0, 36.0)  # $/MWh, per site
    spike_per_interval: float = 0.003  # chance a 5-min interval starts a spike, per site
    spike_usd_mwh: tuple[float, float] = (300.0, 4000.0)
    btc_every_s: int = 10
    spot_every_s: int = 60
    electricity_every_s: int = 300
    reward_every_s: int = 600
    difficulty_every_s: int = 3600


def day_shape(hour: float) -> float:
    """Electricity price multiplier by hour of day: cheap nights, morning and evening peaks."""
    night = 0.8
    morning = 0.35 * math.exp(-(((hour - 8.5) / 1.8) ** 2))
    evening = 0.75 * math.exp(-(((hour - 18.5) / 2.2) ** 2))
    return night + morning + evening


class Market:
    """Market state; :meth:`step` returns the price messages of one simulated second."""

    def __init__(
        self,
        sites: list[str],
        gpu_models: list[str],
        rng: np.random.Generator,
        params: MarketParams | None = None,
        random_spikes: bool = True,
    ) -> None:
        self.params = p = params or MarketParams()
        self.rng = rng
        self.sites = sites
        self.gpu_models = gpu_models
        self.random_spikes = random_spikes
        self.btc = p.btc_usd
        self.difficulty = p.difficulty
        self.reward = p.subsidy_btc + p.fees_btc
        self.spot = {m: p.spot_usd_hr for m in gpu_models}
        self.elec_base = rng.uniform(*p.electricity_base, len(sites))
        self.elec = [0.0] * len(sites)
        self.spike_left = [0] * len(sites)  # intervals left in a random spike
        self.spike_value = [0.0] * len(sites)
        self.elec_override: dict[int, float] = {}
        self.caps: dict[int, float] = {}
        self._lifted: dict[int, float] = {}  # caps just ended, announced once as unlimited
        self._due: set[str] = set()  # price keys to emit this second beyond the schedule

    # -- scenario hooks --------------------------------------------------------------------
    def override_electricity(self, site: int, value: float | None) -> None:
        """Pin a site's electricity price (None: back to the simulated price), now."""
        if value is None:
            self.elec_override.pop(site, None)
        else:
            self.elec_override[site] = value
        self._due.add(f"electricity_usd_mwh:{self.sites[site]}")

    def set_btc(self, value: float) -> None:
        self.btc = value
        self._due.add("btc_usd")

    def set_difficulty(self, value: float) -> None:
        self.difficulty = value
        self._due.add("difficulty")

    def set_power_cap(self, site: int, mw: float) -> None:
        self.caps[site] = mw
        self._due.add(f"power_cap_mw:{self.sites[site]}")

    def clear_power_cap(self, site: int, unlimited_mw: float) -> None:
        """End a cap by announcing a cap no site can reach (SPEC has no 'absent' message)."""
        self.caps.pop(site, None)
        self._due.add(f"power_cap_mw:{self.sites[site]}")
        self._lifted[site] = unlimited_mw

    # -- simulation ------------------------------------------------------------------------
    def step(self, second: int, t_ms: int) -> list[PriceRow]:
        """Advance to ``second`` (since the start) and return the prices to publish."""
        p, rng = self.params, self.rng
        first = second == 0
        due = self._due
        self._due = set()
        btc_tick = second % p.btc_every_s == 0
        if btc_tick and not first and "btc_usd" not in due:
            self.btc *= math.exp(p.btc_vol_per_10s * rng.standard_normal())
        spot_tick = second % p.spot_every_s == 0
        if spot_tick and not first:
            lo, hi = p.spot_range
            for m in self.gpu_models:
                drift = 0.2 * (p.spot_usd_hr - self.spot[m]) + 0.04 * rng.standard_normal()
                self.spot[m] = min(max(self.spot[m] + drift, lo), hi)
        elec_tick = second % p.electricity_every_s == 0
        if elec_tick:
            hour = (t_ms / 3_600_000.0) % 24.0
            shape = day_shape(hour)
            noise = rng.standard_normal(len(self.sites))
            starts = rng.random(len(self.sites))
            sizes = rng.uniform(0.0, 1.0, len(self.sites))
            for i in range(len(self.sites)):
                value = self.elec_base[i] * shape * (1.0 + 0.05 * noise[i])
                if self.spike_left[i] > 0:
                    self.spike_left[i] -= 1
                    value = self.spike_value[i]
                elif self.random_spikes and starts[i] < p.spike_per_interval:
                    lo, hi = p.spike_usd_mwh
                    self.spike_value[i] = lo * (hi / lo) ** sizes[i]  # log-uniform
                    self.spike_left[i] = 1 + int(sizes[i] * 5)
                    value = self.spike_value[i]
                self.elec[i] = max(value, 1.0)
        reward_tick = second % p.reward_every_s == 0
        if reward_tick and not first:
            self.reward = p.subsidy_btc + rng.gamma(4.0, p.fees_btc / 4.0)
        diff_tick = second % p.difficulty_every_s == 0

        rows: list[PriceRow] = []
        if btc_tick or "btc_usd" in due:
            rows.append(("btc_usd", "", "", round(self.btc, 2)))
        if diff_tick or "difficulty" in due:
            rows.append(("difficulty", "", "", float(self.difficulty)))
        if reward_tick:
            rows.append(("block_reward_btc", "", "", round(self.reward, 6)))
        for i, site in enumerate(self.sites):
            if elec_tick or f"electricity_usd_mwh:{site}" in due:
                value = self.elec_override.get(i, self.elec[i])
                rows.append(("electricity_usd_mwh", "site", site, round(value, 2)))
        if spot_tick:
            for m in self.gpu_models:
                rows.append(("gpu_spot_usd_hr", "model", m, round(self.spot[m], 4)))
        lifted = self._lifted
        for i, site in enumerate(self.sites):
            key = f"power_cap_mw:{site}"
            if i in self.caps and (elec_tick or key in due):
                rows.append(("power_cap_mw", "site", site, round(self.caps[i], 4)))
            elif i in lifted and key in due:
                rows.append(("power_cap_mw", "site", site, round(lifted.pop(i), 4)))
        return rows
