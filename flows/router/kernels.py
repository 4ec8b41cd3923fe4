"""Numba kernels of the workload router: candidate scoring and greedy placement.

Pure functions over numpy arrays (GPUs by dense index, workloads in queue order).

A GPU ``g`` is *feasible* for a workload ``w`` when

- ``free[g]``: the GPU reports idle with no workload, is not down, is not recommended
  ``power_down`` and is not already reserved by the router;
- memory fits: ``mem_gb[w] <= mem_free[g]`` (``mem_gb`` is per GPU);
- temperature headroom: ``temp[g] < temp_max``;
- price: no cap (``max_price[w]`` is NaN), or a known ``spot[g] <= max_price[w]``.

The *score* of a feasible GPU is its expected margin in USD per GPU-hour,
``spot - power_kw * electricity_usd_mwh / 1000 - TEMP_WEIGHT * temp_c``: the spot rate it
earns (0 when unknown), minus the power it burns at its site's electricity price, so for
the same GPU price the cheaper-power site wins; a cooler GPU breaks near-ties. Infeasible
pairs score ``-inf``. Exact ties go to the lower GPU rank (the order of GPU ids).

A job of ``k`` GPUs takes the ``k`` best feasible GPUs of ONE site: the site whose best
``k`` have the highest summed score (ties: the site whose best GPU comes first in score
order). :func:`assign_greedy` places workloads one after the other in queue order, each
taking its GPUs out of the free set before the next one is scored.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "DEFAULT_POWER_KW",
    "DEFAULT_TEMP_MAX_C",
    "TEMP_WEIGHT",
    "assign_greedy",
    "gpu_order",
    "gpu_scores",
    "pick_gpus",
    "score_matrix",
]

DEFAULT_POWER_KW = 0.7  # an H100-SXM at full load
DEFAULT_TEMP_MAX_C = 85.0
# USD/h per degree C: 1e-5 keeps a 60 C spread (0.0006 $/h) below the power-cost gap of a
# 1 $/MWh electricity difference at 0.7 kW (0.0007 $/h), so power price wins over cooling.
TEMP_WEIGHT = 1e-5


@njit(cache=True)
def gpu_scores(
    spot: np.ndarray, elec: np.ndarray, temp: np.ndarray, power_kw: float
) -> np.ndarray:
    """Workload-independent score of every GPU (USD/h margin); NaN prices count as 0."""
    n = spot.shape[0]
    out = np.empty(n, dtype=np.float64)
    for g in range(n):
        s = spot[g]
        e = elec[g]
        if np.isnan(s):
            s = 0.0
        if np.isnan(e):
            e = 0.0
        out[g] = s - power_kw * e / 1000.0 - TEMP_WEIGHT * temp[g]
    return out


@njit(cache=True, inline="always")
def _feasible(
    g: int,
    need_mem: float,
    max_price: float,
    free: np.ndarray,
    mem_free: np.ndarray,
    temp: np.ndarray,
    spot: np.ndarray,
    temp_max: float,
) -> bool:
    if not free[g]:
        return False
    if need_mem > mem_free[g]:
        return False
    if not temp[g] < temp_max:
        return False
    return not (not np.isnan(max_price) and (np.isnan(spot[g]) or spot[g] > max_price))


@njit(cache=True)
def score_matrix(
    need_mem: np.ndarray,
    max_price: np.ndarray,
    free: np.ndarray,
    mem_free: np.ndarray,
    temp: np.ndarray,
    spot: np.ndarray,
    score: np.ndarray,
    temp_max: float,
) -> np.ndarray:
    """Score of every (workload, GPU) pair: the GPU's score when feasible, else -inf."""
    nw = need_mem.shape[0]
    ng = free.shape[0]
    out = np.full((nw, ng), -np.inf)
    for w in range(nw):
        for g in range(ng):
            if _feasible(g, need_mem[w], max_price[w], free, mem_free, temp, spot, temp_max):
                out[w, g] = score[g]
    return out


def gpu_order(score: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """GPU indices by score (best first), ties by rank (GPU id order)."""
    return np.lexsort((rank, -score)).astype(np.int64)


@njit(cache=True)
def pick_gpus(
    k: int,
    need_mem: float,
    max_price: float,
    order: np.ndarray,
    free: np.ndarray,
    mem_free: np.ndarray,
    temp: np.ndarray,
    spot: np.ndarray,
    site: np.ndarray,
    score: np.ndarray,
    n_sites: int,
    temp_max: float,
    out: np.ndarray,
) -> bool:
    """Write the best feasible one-site set of ``k`` GPUs into ``out[:k]``; False if none."""
    if k == 1:
        for i in range(order.shape[0]):
            g = order[i]
            if _feasible(g, need_mem, max_price, free, mem_free, temp, spot, temp_max):
                out[0] = g
                return True
        return False
    count = np.zeros(n_sites, dtype=np.int64)
    total = np.zeros(n_sites, dtype=np.float64)
    first = np.full(n_sites, -1, dtype=np.int64)
    for i in range(order.shape[0]):
        g = order[i]
        s = site[g]
        if count[s] < k and _feasible(g, need_mem, max_price, free, mem_free, temp, spot, temp_max):
            if count[s] == 0:
                first[s] = i
            count[s] += 1
            total[s] += score[g]
    best = -1
    for s in range(n_sites):
        if count[s] == k and (
            best < 0
            or total[s] > total[best]
            or (total[s] == total[best] and first[s] < first[best])
        ):
            best = s
    if best < 0:
        return False
    n = 0
    for i in range(first[best], order.shape[0]):
        g = order[i]
        if site[g] == best and _feasible(
            g, need_mem, max_price, free, mem_free, temp, spot, temp_max
        ):
            out[n] = g
            n += 1
            if n == k:
                break
    return True


@njit(cache=True)
def _stricter(k: int, mem: float, maxp: float, fk: int, fmem: float, fmaxp: float) -> bool:
    """True when a request (k, mem, maxp) needs at least what a failed one (fk, ...) did."""
    if k < fk or mem < fmem:
        return False
    if np.isnan(fmaxp):
        return True
    return not np.isnan(maxp) and maxp <= fmaxp


@njit(cache=True)
def assign_greedy(
    need_gpus: np.ndarray,
    need_mem: np.ndarray,
    max_price: np.ndarray,
    order: np.ndarray,
    free: np.ndarray,
    mem_free: np.ndarray,
    temp: np.ndarray,
    spot: np.ndarray,
    site: np.ndarray,
    score: np.ndarray,
    n_sites: int,
    temp_max: float,
    block: np.ndarray,
    avoid_ptr: np.ndarray,
    avoid_gpu: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Place workloads in the given order; ``free`` is updated in place.

    A workload with ``block[w]`` set that cannot be placed stops the round: nothing behind
    it is placed (the router's starvation guard, so small jobs cannot keep taking the GPUs
    a long-waiting large job needs). Workload ``w`` never gets the GPUs
    ``avoid_gpu[avoid_ptr[w]:avoid_ptr[w + 1]]`` (GPUs that never started it before).

    Returns ``(start, gpus)``: workload ``w`` got ``gpus[start[w]:start[w] + need_gpus[w]]``
    when ``start[w] >= 0``, nothing when ``start[w] == -1``. Same result as calling
    :func:`pick_gpus` for each workload in turn, made fast by working on a compact,
    score-ordered copy of the free GPUs and by skipping a request that needs at least
    what an earlier failed request needed (the free set only shrinks within a round).
    """
    nw = need_gpus.shape[0]
    start = np.full(nw, -1, dtype=np.int64)
    gpus = np.empty(max(1, int(need_gpus.sum())), dtype=np.int64)
    # Compact candidate list: free, cool enough GPUs in score order.
    m = 0
    for i in range(order.shape[0]):
        g = order[i]
        if free[g] and temp[g] < temp_max:
            m += 1
    c_gpu = np.empty(m, dtype=np.int64)
    c_mem = np.empty(m, dtype=np.float64)
    c_spot = np.empty(m, dtype=np.float64)
    c_site = np.empty(m, dtype=np.int64)
    c_score = np.empty(m, dtype=np.float64)
    pos_of = np.full(order.shape[0], -1, dtype=np.int64)
    j = 0
    for i in range(order.shape[0]):
        g = order[i]
        if free[g] and temp[g] < temp_max:
            pos_of[g] = j
            c_gpu[j] = g
            c_mem[j] = mem_free[g]
            c_spot[j] = spot[g]
            c_site[j] = site[g]
            c_score[j] = score[g]
            j += 1
    taken = np.zeros(m, dtype=np.bool_)
    head = 0  # every candidate before head is taken
    n_free = m
    fail_k = np.empty(64, dtype=np.int64)
    fail_mem = np.empty(64, dtype=np.float64)
    fail_maxp = np.empty(64, dtype=np.float64)
    n_fail = 0
    count = np.zeros(n_sites, dtype=np.int64)
    total = np.zeros(n_sites, dtype=np.float64)
    first = np.full(n_sites, -1, dtype=np.int64)
    avoid_gpu_tmp = np.empty(max(1, avoid_gpu.shape[0]), dtype=np.int64)
    pos = 0
    for w in range(nw):
        k = need_gpus[w]
        mem = need_mem[w]
        maxp = max_price[w]
        if k > n_free:
            if block[w]:
                break
            continue
        skip = False
        for f in range(n_fail):
            if _stricter(k, mem, maxp, fail_k[f], fail_mem[f], fail_maxp[f]):
                skip = True
                break
        if skip:
            if block[w]:
                break
            continue
        while head < m and taken[head]:
            head += 1
        # Hide this workload's avoided GPUs for its own search only (head already moved).
        hidden = 0
        for a in range(avoid_ptr[w], avoid_ptr[w + 1]):
            p = pos_of[avoid_gpu[a]]
            if p >= 0 and not taken[p]:
                taken[p] = True
                avoid_gpu_tmp[hidden] = p
                hidden += 1
        found = -1
        if k == 1:
            for i in range(head, m):
                if not taken[i] and mem <= c_mem[i] and (
                    np.isnan(maxp) or (not np.isnan(c_spot[i]) and c_spot[i] <= maxp)
                ):
                    found = i
                    break
            if found >= 0:
                taken[found] = True
                gpus[pos] = c_gpu[found]
                free[c_gpu[found]] = False
        else:
            count[:] = 0
            total[:] = 0.0
            first[:] = -1
            full = 0
            for i in range(head, m):
                s = c_site[i]
                if count[s] < k and not taken[i] and mem <= c_mem[i] and (
                    np.isnan(maxp) or (not np.isnan(c_spot[i]) and c_spot[i] <= maxp)
                ):
                    if count[s] == 0:
                        first[s] = i
                    count[s] += 1
                    total[s] += c_score[i]
                    if count[s] == k:
                        full += 1
                        if full == n_sites:
                            break
            best = -1
            for s in range(n_sites):
                if count[s] == k and (
                    best < 0
                    or total[s] > total[best]
                    or (total[s] == total[best] and first[s] < first[best])
                ):
                    best = s
            if best >= 0:
                found = first[best]
                n = 0
                for i in range(first[best], m):
                    if c_site[i] == best and not taken[i] and mem <= c_mem[i] and (
                        np.isnan(maxp) or (not np.isnan(c_spot[i]) and c_spot[i] <= maxp)
                    ):
                        taken[i] = True
                        gpus[pos + n] = c_gpu[i]
                        free[c_gpu[i]] = False
                        n += 1
                        if n == k:
                            break
        for a in range(hidden):
            taken[avoid_gpu_tmp[a]] = False
        if found >= 0:
            start[w] = pos
            pos += k
            n_free -= k
            if n_free == 0:
                break
        else:
            if block[w]:
                break
            if hidden == 0 and n_fail < 64:  # failing only for its own avoids proves nothing
                fail_k[n_fail] = k
                fail_mem[n_fail] = mem
                fail_maxp[n_fail] = maxp
                n_fail += 1
    return start, gpus
