"""What-if profitability: the job's own kernels applied to devices described by a caller.

``POST /api/v1/profitability/calculate`` asks "what would these machines earn, and what
would the job decide, at these prices?". The answer must be the job's, so this module
calls the very kernels the shards call (:mod:`flows.profitability.kernels`) with the
same constants, as for a device's first window in the job: an ASIC starts in ``mine``
with no previous switch (so no dwell holds it) and expects its own hashrate and power
when it reports mining, else the nominal S21; a GPU is rented at ``rented_power_w``.
The site power cap is not applied: it ranks a whole site, not the devices of one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flows.profitability import kernels as k
from flows.profitability.prices import DEFAULT_BLOCK_REWARD
from flows.profitability.shard import GPU_RENTED_POWER_W, S21_NOMINAL_THS, S21_NOMINAL_W

__all__ = ["GPU_STATE_CODES", "WhatIfPrices", "WhatIfResult", "evaluate", "warm_up"]

GPU_STATE_CODES = {"busy": k.GPU_BUSY, "idle": k.GPU_IDLE, "down": k.GPU_DOWN}


@dataclass(frozen=True)
class WhatIfPrices:
    """Global prices of one call; NaN where unknown (the kernels then answer ``no_price``)."""

    btc_usd: float = np.nan
    difficulty: float = np.nan
    block_reward_btc: float = DEFAULT_BLOCK_REWARD
    pool_fee: float = 0.0


@dataclass(frozen=True)
class WhatIfResult:
    """Per device, in input order: the money (USD/h), score, action and reason."""

    revenue_usd_hr: np.ndarray
    cost_usd_hr: np.ndarray
    net_usd_hr: np.ndarray
    score: np.ndarray
    action: list[str]
    reason: list[str]


def evaluate(
    is_asic: np.ndarray,
    hashrate_ths: np.ndarray,
    power_w: np.ndarray,
    busy_fraction: np.ndarray,
    gpu_state: np.ndarray,
    electricity_usd_mwh: np.ndarray,
    gpu_spot_usd_hr: np.ndarray,
    prices: WhatIfPrices,
    hysteresis: float = 0.05,
) -> WhatIfResult:
    """Run one batch of devices through the job's decision kernels.

    Arrays are per device (float64, NaN for "not given"; ``gpu_state`` int8 codes of
    :data:`GPU_STATE_CODES`). ASIC rows read ``hashrate_ths``, GPU rows ``busy_fraction``
    and ``gpu_state``; both read ``power_w`` and their site's electricity price.
    """
    n = is_asic.shape[0]
    out = np.full((8, n), np.nan)
    action = np.zeros(n, np.int8)
    reason = np.zeros(n, np.int8)
    a = np.nonzero(is_asic)[0]
    g = np.nonzero(~is_asic)[0]
    if a.shape[0]:
        m = a.shape[0]
        a_out = np.zeros((8, m))
        a_action = np.zeros(m, np.int8)
        a_reason = np.zeros(m, np.int8)
        mean_hash = np.ascontiguousarray(hashrate_ths[a])
        mean_power = np.ascontiguousarray(power_w[a])
        k.asic_decisions(
            mean_hash,
            mean_power,
            mean_hash,  # reported while mining: its own figures become the expected ones
            mean_power,
            np.full(m, k.ASIC_MINING, np.int8),  # a what-if asks about a working miner
            np.ascontiguousarray(electricity_usd_mwh[a]),
            np.zeros(m, np.bool_),  # prices given by the caller are never stale
            prices.btc_usd,
            prices.difficulty,
            prices.block_reward_btc,
            prices.pool_fee,
            hysteresis,
            0,
            0,
            np.full(m, k.MINE, np.int8),
            np.full(m, -1, np.int64),
            np.full(m, S21_NOMINAL_THS),
            np.full(m, S21_NOMINAL_W),
            a_out,
            a_action,
            a_reason,
        )
        out[:, a] = a_out
        action[a] = a_action
        reason[a] = a_reason
    if g.shape[0]:
        m = g.shape[0]
        g_out = np.zeros((8, m))
        g_action = np.zeros(m, np.int8)
        g_reason = np.zeros(m, np.int8)
        k.gpu_decisions(
            np.ascontiguousarray(busy_fraction[g]),
            np.ascontiguousarray(power_w[g]),
            np.ascontiguousarray(gpu_state[g]),
            np.ascontiguousarray(gpu_spot_usd_hr[g]),
            np.ascontiguousarray(electricity_usd_mwh[g]),
            np.zeros(m, np.bool_),
            GPU_RENTED_POWER_W,
            g_out,
            g_action,
            g_reason,
        )
        out[:, g] = g_out
        action[g] = g_action
        reason[g] = g_reason
    return WhatIfResult(
        revenue_usd_hr=out[0],
        cost_usd_hr=out[1],
        net_usd_hr=out[2],
        score=out[3],
        action=[k.ACTIONS[i] for i in action],
        reason=[k.REASONS[i] for i in reason],
    )


def warm_up() -> None:
    """Run one device of each type, so the kernels are loaded before the first request."""
    evaluate(
        np.array([True, False]),
        np.array([200.0, np.nan]),
        np.array([3500.0, 700.0]),
        np.array([0.0, 0.5]),
        np.array([k.GPU_IDLE, k.GPU_IDLE], np.int8),
        np.array([50.0, 50.0]),
        np.array([2.0, 2.0]),
        WhatIfPrices(btc_usd=1.0, difficulty=1.0),
    )
