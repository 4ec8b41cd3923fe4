"""Numba kernels of the hot path: pure functions over whole columns.

Each has a plain-Python twin in ``tests/support/kernel_reference.py`` that the property tests
compare it with. Codes for actions and reasons are the indexes of ``ACTIONS`` and
``REASONS``; the flow turns them back into strings once per window, column-wise.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hcp.schemas import ASIC_STATES, GPU_STATES

__all__ = [
    "ACTIONS",
    "ASIC_FIELDS_N",
    "GPU_FIELDS_N",
    "REASONS",
    "accumulate_asic",
    "accumulate_gpu",
    "asic_decisions",
    "asic_switch",
    "gpu_decisions",
    "late_mask",
    "power_cap_keep",
    "usd_per_th_hour",
]

ACTIONS = ("mine", "curtail", "serve", "offer", "power_down")
MINE, CURTAIL, SERVE, OFFER, POWER_DOWN = range(5)
REASONS = (
    "profitable",
    "unprofitable",
    "power_cap",
    "hysteresis_hold",
    "no_price",
    "running_workload",
    "device_down",
    "stale_price",
    "device_fault",
)
(
    PROFITABLE,
    UNPROFITABLE,
    POWER_CAP,
    HYSTERESIS_HOLD,
    NO_PRICE,
    RUNNING_WORKLOAD,
    DEVICE_DOWN,
    STALE_PRICE,
    DEVICE_FAULT,
) = range(9)

# Rows of the per-window accumulator matrices (field x device).
G_COUNT, G_UTIL, G_POWER, G_TEMP, G_BUSY, G_LAST_STATE = range(6)
GPU_FIELDS_N = 6
(
    A_COUNT,
    A_HASH,
    A_POWER,
    A_TEMP,
    A_ACC,
    A_REJ,
    A_HW,
    A_MCOUNT,
    A_MHASH,
    A_MPOWER,
    A_LAST_STATE,
) = range(11)
ASIC_FIELDS_N = 11

# State codes are positions in the contract's state lists, as the shards encode them;
# Numba freezes these module-level ints into the kernels at compile time.
GPU_BUSY, GPU_IDLE, GPU_DOWN = (GPU_STATES.index(s) for s in ("busy", "idle", "down"))
ASIC_MINING, ASIC_CURTAILED, ASIC_FAULT = (
    ASIC_STATES.index(s) for s in ("mining", "curtailed", "fault")
)

TWO_32 = 4294967296.0


@njit(cache=True, nogil=True)
def late_mask(ts: np.ndarray, running_max: int, lateness_ms: int) -> tuple[np.ndarray, int]:
    """Mark events more than ``lateness_ms`` behind their partition's running maximum.

    Depends only on the partition's own order, so the same input gives the same verdicts
    however the partitions interleave.
    """
    late = np.zeros(ts.shape[0], dtype=np.bool_)
    m = running_max
    for i in range(ts.shape[0]):
        t = ts[i]
        if t < m - lateness_ms:
            late[i] = True
        elif t > m:
            m = t
    return late, m


@njit(cache=True, nogil=True)
def accumulate_gpu(
    acc: np.ndarray,
    dev: np.ndarray,
    util: np.ndarray,
    power: np.ndarray,
    temp: np.ndarray,
    state: np.ndarray,
) -> None:
    """Add one window's GPU samples, in partition order, into ``acc[field, device]``."""
    for i in range(dev.shape[0]):
        d = dev[i]
        acc[G_COUNT, d] += 1.0
        acc[G_UTIL, d] += util[i]
        acc[G_POWER, d] += power[i]
        acc[G_TEMP, d] += temp[i]
        if state[i] == GPU_BUSY:
            acc[G_BUSY, d] += 1.0
        acc[G_LAST_STATE, d] = state[i]


@njit(cache=True, nogil=True)
def accumulate_asic(
    acc: np.ndarray,
    dev: np.ndarray,
    hashrate: np.ndarray,
    power: np.ndarray,
    temp: np.ndarray,
    accepted: np.ndarray,
    rejected: np.ndarray,
    hw_errors: np.ndarray,
    state: np.ndarray,
) -> None:
    """Add one window's ASIC samples, in partition order, into ``acc[field, device]``."""
    for i in range(dev.shape[0]):
        d = dev[i]
        acc[A_COUNT, d] += 1.0
        acc[A_HASH, d] += hashrate[i]
        acc[A_POWER, d] += power[i]
        acc[A_TEMP, d] += temp[i]
        acc[A_ACC, d] += accepted[i]
        acc[A_REJ, d] += rejected[i]
        acc[A_HW, d] += hw_errors[i]
        if state[i] == ASIC_MINING:
            acc[A_MCOUNT, d] += 1.0
            acc[A_MHASH, d] += hashrate[i]
            acc[A_MPOWER, d] += power[i]
        acc[A_LAST_STATE, d] = state[i]


@njit(cache=True, nogil=True)
def _score(revenue: float, cost: float) -> float:
    if np.isnan(revenue) or np.isnan(cost):
        return np.nan
    if revenue > 0:
        return (revenue - cost) / revenue * 100.0
    if cost > 0:
        return -100.0
    return 0.0


@njit(cache=True, nogil=True)
def _put_figures(
    out: np.ndarray,
    i: int,
    revenue: float,
    cost: float,
    e_rev: float,
    e_cost: float,
    power_w: float,
) -> None:
    """Row ``i`` of the figures both device types report (see ``asic_decisions``)."""
    out[0, i] = revenue
    out[1, i] = cost
    out[2, i] = revenue - cost
    out[3, i] = _score(revenue, cost)
    out[4, i] = e_rev
    out[5, i] = e_cost
    out[6, i] = e_rev - e_cost
    out[7, i] = power_w


@njit(cache=True, nogil=True)
def usd_per_th_hour(
    btc_usd: float, difficulty: float, block_reward: float, pool_fee: float
) -> float:
    """Mining revenue of 1 TH/s for one hour (contract section 2), NaN without a price."""
    return 1e12 * 3600.0 * block_reward / (difficulty * TWO_32) * btc_usd * (1.0 - pool_fee)


@njit(cache=True, nogil=True)
def asic_switch(
    cur: int,
    last_switch: int,
    e_net: float,
    e_rev: float,
    hysteresis: float,
    dwell_ms: int,
    window_end: int,
) -> tuple[int, int, int]:
    """The mine/curtail rule of one ASIC (contract section 3), the only copy of it.

    Switch only when the expected net passes the margin in the new direction and the
    dwell time since the last switch has passed. Returns (action, reason, last switch).
    """
    if np.isnan(e_net):
        return cur, NO_PRICE, last_switch
    margin = hysteresis * e_rev
    want = cur
    if cur == MINE and e_net < -margin:
        want = CURTAIL
    elif cur == CURTAIL and e_net > margin:
        want = MINE
    if want != cur:
        if last_switch < 0 or window_end - last_switch >= dwell_ms:
            return want, (PROFITABLE if want == MINE else UNPROFITABLE), window_end
        return cur, HYSTERESIS_HOLD, last_switch
    if (cur == MINE and e_net >= 0) or (cur == CURTAIL and e_net <= 0):
        return cur, (PROFITABLE if cur == MINE else UNPROFITABLE), last_switch
    return cur, HYSTERESIS_HOLD, last_switch


@njit(cache=True, nogil=True)
def asic_decisions(
    mean_hash: np.ndarray,
    mean_power: np.ndarray,
    mining_hash: np.ndarray,
    mining_power: np.ndarray,
    last_state: np.ndarray,
    electricity: np.ndarray,
    stale: np.ndarray,
    btc_usd: float,
    difficulty: float,
    block_reward: float,
    pool_fee: float,
    hysteresis: float,
    dwell_ms: int,
    window_end: int,
    action: np.ndarray,
    last_switch: np.ndarray,
    exp_hash: np.ndarray,
    exp_power: np.ndarray,
    out: np.ndarray,
    out_action: np.ndarray,
    out_reason: np.ndarray,
) -> None:
    """Profitability and mine/curtail decisions of one window's ASICs (SPEC 2 and 3).

    ``mining_hash``/``mining_power`` are the means of a window whose every sample was
    `mining` (NaN otherwise: a window that switched is no mining window); they update the
    expected hashrate and power. An ASIC whose
    last sample is ``fault`` is curtailed (``device_fault``), as a down GPU is powered
    down: it earns nothing, and under a power cap it must not take budget from working
    miners; its mine/curtail state is left as it was for when it recovers. ``action``,
    ``last_switch``, ``exp_hash`` and ``exp_power`` are the devices' decision state,
    updated in place. ``out`` rows: revenue, cost, net, score, expected revenue, cost,
    net, power.

    ``stale`` marks devices whose BTC price or electricity is older than the allowed price
    age (a feed is down): with prices known, they keep their last action and never switch
    on such a price (reason ``stale_price``), and their decision state stays as it was.
    """
    usd_per_th_hr = usd_per_th_hour(btc_usd, difficulty, block_reward, pool_fee)
    for i in range(mean_hash.shape[0]):
        if not np.isnan(mining_hash[i]) and mining_hash[i] > 0:
            exp_hash[i] = mining_hash[i]
            exp_power[i] = mining_power[i]
        elec = electricity[i]
        revenue = mean_hash[i] * usd_per_th_hr
        cost = mean_power[i] / 1e6 * elec
        e_rev = exp_hash[i] * usd_per_th_hr
        e_cost = exp_power[i] / 1e6 * elec
        e_net = e_rev - e_cost
        _put_figures(out, i, revenue, cost, e_rev, e_cost, exp_power[i])
        if last_state[i] == ASIC_FAULT:
            out_action[i] = CURTAIL
            out_reason[i] = DEVICE_FAULT
            continue
        if stale[i] and not np.isnan(e_net):
            out_action[i] = action[i]
            out_reason[i] = STALE_PRICE
            continue
        a, reason, switched = asic_switch(
            action[i], last_switch[i], e_net, e_rev, hysteresis, dwell_ms, window_end
        )
        action[i] = a
        last_switch[i] = switched
        out_action[i] = a
        out_reason[i] = reason


@njit(cache=True, nogil=True)
def gpu_decisions(
    busy_fraction: np.ndarray,
    mean_power: np.ndarray,
    last_state: np.ndarray,
    spot: np.ndarray,
    electricity: np.ndarray,
    stale: np.ndarray,
    rented_power_w: float,
    out: np.ndarray,
    out_action: np.ndarray,
    out_reason: np.ndarray,
) -> None:
    """Profitability and serve/offer/power_down decisions of one window's GPUs.

    A GPU whose last sample is busy keeps serving; one that is down is powered down;
    an idle one is offered when renting it at the spot rate, drawing ``rented_power_w``,
    would earn more than its power costs. An idle GPU whose spot rate or electricity is
    older than the allowed price age (``stale``) is offered as without prices, with reason
    ``stale_price``: a stale price never powers a GPU down.
    """
    for i in range(busy_fraction.shape[0]):
        revenue = spot[i] * busy_fraction[i]
        cost = mean_power[i] / 1e6 * electricity[i]
        e_rev = spot[i]
        e_cost = rented_power_w / 1e6 * electricity[i]
        e_net = e_rev - e_cost
        _put_figures(out, i, revenue, cost, e_rev, e_cost, rented_power_w)
        state = last_state[i]
        if state == GPU_DOWN:
            out_action[i] = POWER_DOWN
            out_reason[i] = DEVICE_DOWN
        elif state == GPU_BUSY:
            out_action[i] = SERVE
            out_reason[i] = RUNNING_WORKLOAD
        elif np.isnan(e_net):
            out_action[i] = OFFER
            out_reason[i] = NO_PRICE
        elif stale[i]:
            out_action[i] = OFFER
            out_reason[i] = STALE_PRICE
        elif e_net > 0:
            out_action[i] = OFFER
            out_reason[i] = PROFITABLE
        else:
            out_action[i] = POWER_DOWN
            out_reason[i] = UNPROFITABLE


@njit(cache=True, nogil=True)
def power_cap_keep(
    site: np.ndarray,
    cap_w: np.ndarray,
    running: np.ndarray,
    power_w: np.ndarray,
    net: np.ndarray,
) -> np.ndarray:
    """Which running devices a site's power cap keeps running.

    Rows must be grouped by site and, within a site, ranked best first (expected net per
    kWh, ties by device id). Running devices are kept while their summed power fits the
    cap and their net is positive; from the first that does not, the rest stop. A NaN
    cap means no cap. Devices that are not running are never "kept" nor counted.
    """
    n = site.shape[0]
    keep = np.zeros(n, dtype=np.bool_)
    used = 0.0
    full = False
    for i in range(n):
        if i == 0 or site[i] != site[i - 1]:
            used = 0.0
            full = False
        if not running[i]:
            continue
        if np.isnan(cap_w[i]):
            keep[i] = True
            continue
        if not full and net[i] > 0 and used + power_w[i] <= cap_w[i]:
            used += power_w[i]
            keep[i] = True
        else:
            full = True
    return keep
