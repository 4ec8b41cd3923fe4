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
    "NEVER",
    "TEMP_WEIGHT",
    "assign_greedy",
    "gpu_order",
    "gpu_scores",
    "pick_gpus",
    "reserve_gpus",
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


NEVER = np.iinfo(np.int64).max  # a GPU that is not expected to free up (down, unknown)


@njit(cache=True)
def reserve_gpus(
    k: int,
    need_mem: float,
    max_price: float,
    by_avail: np.ndarray,
    avail: np.ndarray,
    mem_cap: np.ndarray,
    spot: np.ndarray,
    site: np.ndarray,
    n_sites: int,
    res_of: np.ndarray,
    avoid: np.ndarray,
    now: int,
    out: np.ndarray,
) -> int:
    """Where ``k`` GPUs of one site free up soonest for a request: the start time, or -1.

    Walks the GPUs in ``by_avail`` order (expected free time, ties by placement order) and
    stops at the first site with ``k`` eligible GPUs (memory capacity, price cap, not
    avoided, not reserved already by a request ahead): those GPUs are written to
    ``out[:k]`` and the time the last of them frees up (at least ``now``) is returned.
    """
    count = np.zeros(n_sites, dtype=np.int64)
    for i in range(by_avail.shape[0]):
        g = by_avail[i]
        if avail[g] == NEVER:
            break
        if res_of[g] >= 0 or need_mem > mem_cap[g]:
            continue
        if not np.isnan(max_price) and (np.isnan(spot[g]) or spot[g] > max_price):
            continue
        skip = False
        for a in range(avoid.shape[0]):
            if avoid[a] == g:
                skip = True
                break
        if skip:
            continue
        s = site[g]
        count[s] += 1
        if count[s] == k:
            n = 0
            for j in range(i + 1):
                h = by_avail[j]
                if site[h] != s or res_of[h] >= 0 or need_mem > mem_cap[h]:
                    continue
                if not np.isnan(max_price) and (np.isnan(spot[h]) or spot[h] > max_price):
                    continue
                bad = False
                for a in range(avoid.shape[0]):
                    if avoid[a] == h:
                        bad = True
                        break
                if not bad:
                    out[n] = h
                    n += 1
            return max(now, avail[g])
    return -1


@njit(cache=True)
def _stricter(
    k: int, mem: float, maxp: float, dur: int, fk: int, fmem: float, fmaxp: float, fdur: int
) -> bool:
    """True when a request (k, mem, maxp, dur) needs at least what a failed one did.

    Duration counts because a shorter job may fit before a reservation starts.
    """
    if k < fk or mem < fmem or dur < fdur:
        return False
    if np.isnan(fmaxp):
        return True
    return not np.isnan(maxp) and maxp <= fmaxp


@njit(cache=True, inline="always")
def _takes(i: int, mem: float, maxp: float, end: int, taken: np.ndarray, c_mem: np.ndarray,
           c_spot: np.ndarray, c_res: np.ndarray) -> bool:
    """May a request (mem, maxp) ending at ``end`` take candidate ``i``?"""
    if taken[i] or mem > c_mem[i] or end > c_res[i]:
        return False
    return np.isnan(maxp) or (not np.isnan(c_spot[i]) and c_spot[i] <= maxp)


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
    dur_ms: np.ndarray,
    avail: np.ndarray,
    by_avail: np.ndarray,
    mem_cap: np.ndarray,
    now: int,
    max_res: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Place workloads in the given order, with reservations; ``free`` is updated in place.

    A workload with ``block[w]`` set that cannot be placed stops the round: nothing behind
    it is placed (the router's starvation guard, so small jobs cannot keep taking the GPUs
    a long-waiting large job needs). Workload ``w`` never gets the GPUs
    ``avoid_gpu[avoid_ptr[w]:avoid_ptr[w + 1]]`` (GPUs that never started it before).

    Reservations (Slurm's conservative backfill): each of the first ``max_res`` workloads
    that cannot be placed reserves, with :func:`reserve_gpus`, the one-site GPUs that free
    up soonest (``avail``: expected free time per GPU, ``NEVER`` for none; ``by_avail``
    orders GPUs by it). A workload behind it may take a reserved GPU only if it is expected
    to end (``now + dur_ms``) no later than the reservation starts.

    Returns ``(start, gpus, res_start, res_pos, res_gpus)``: workload ``w`` got
    ``gpus[start[w]:start[w] + need_gpus[w]]`` when ``start[w] >= 0``; it holds a
    reservation from ``res_start[w]`` (``-1``: none) of ``res_gpus[res_pos[w]:...]``.
    Without reservations the result is that of calling :func:`pick_gpus` for each workload
    in turn, made fast by working on a compact, score-ordered copy of the free GPUs and by
    skipping a request that needs at least what an earlier failed request needed (the
    usable set only shrinks within a round).
    """
    nw = need_gpus.shape[0]
    start = np.full(nw, -1, dtype=np.int64)
    res_start = np.full(nw, -1, dtype=np.int64)
    res_pos = np.full(nw, -1, dtype=np.int64)
    gpus = np.empty(max(1, int(need_gpus.sum())), dtype=np.int64)
    res_gpus = np.empty(max(1, int(need_gpus.sum())), dtype=np.int64)
    res_of = np.full(order.shape[0], -1, dtype=np.int64)
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
    c_res = np.full(m, NEVER, dtype=np.int64)  # start of the reservation holding it
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
    fail_dur = np.empty(64, dtype=np.int64)
    n_fail = 0
    n_res = 0
    rpos = 0
    count = np.zeros(n_sites, dtype=np.int64)
    total = np.zeros(n_sites, dtype=np.float64)
    first = np.full(n_sites, -1, dtype=np.int64)
    avoid_gpu_tmp = np.empty(max(1, avoid_gpu.shape[0]), dtype=np.int64)
    pos = 0
    for w in range(nw):
        k = need_gpus[w]
        mem = need_mem[w]
        maxp = max_price[w]
        dur = dur_ms[w]
        end = now + dur
        found = -1
        hidden = 0
        tried = k <= n_free
        if tried:
            for f in range(n_fail):
                if _stricter(k, mem, maxp, dur, fail_k[f], fail_mem[f], fail_maxp[f],
                             fail_dur[f]):
                    tried = False
                    break
        if tried:
            while head < m and taken[head]:
                head += 1
            # Hide this workload's avoided GPUs for its own search only.
            for a in range(avoid_ptr[w], avoid_ptr[w + 1]):
                p = pos_of[avoid_gpu[a]]
                if p >= 0 and not taken[p]:
                    taken[p] = True
                    avoid_gpu_tmp[hidden] = p
                    hidden += 1
            if k == 1:
                for i in range(head, m):
                    if _takes(i, mem, maxp, end, taken, c_mem, c_spot, c_res):
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
                    if count[s] < k and _takes(i, mem, maxp, end, taken, c_mem, c_spot, c_res):
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
                        if c_site[i] == best and _takes(i, mem, maxp, end, taken, c_mem,
                                                        c_spot, c_res):
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
            if n_free == 0 and n_res >= max_res:
                break
            continue
        if tried and hidden == 0 and n_fail < 64:  # failing only for its avoids proves nothing
            fail_k[n_fail] = k
            fail_mem[n_fail] = mem
            fail_maxp[n_fail] = maxp
            fail_dur[n_fail] = dur
            n_fail += 1
        if n_res < max_res:
            t = reserve_gpus(k, mem, maxp, by_avail, avail, mem_cap, spot, site, n_sites,
                             res_of, avoid_gpu[avoid_ptr[w]:avoid_ptr[w + 1]], now,
                             res_gpus[rpos:])
            if t >= 0:
                res_start[w] = t
                res_pos[w] = rpos
                for r in range(rpos, rpos + k):
                    g = res_gpus[r]
                    res_of[g] = w
                    if pos_of[g] >= 0:
                        c_res[pos_of[g]] = t
                rpos += k
                n_res += 1
        if block[w]:
            break
    return start, gpus, res_start, res_pos, res_gpus
