"""Why a queued workload is not placed now (SPEC section 3 ``pending_reason``).

Evaluated after a routing round, on the GPUs still free for new work (idle with no
workload, not down, not ``power_down``, not held by the router, not backing off or
cordoned). The reason is the first constraint, in this order, under which no site has
the ``gpus`` the request needs:

1. ``capacity``: not enough free GPUs on any site; ``gpus_unresponsive`` instead when
   GPUs that are backing off or cordoned (they never started earlier work) would make up
   the difference;
2. ``memory``: free GPUs exist, but too few with ``mem_gb`` of free memory;
3. ``temperature``: of those, too few below ``temp_max_c``;
4. ``price_cap``: of those, too few whose model's spot price is known and at or below
   ``max_price_usd_hr``;
5. otherwise ``capacity`` (it lost the GPUs to work ahead of it in this round), or
   ``gpus_unresponsive`` when the GPUs it would fit on are ones it avoids.

The router sets ``starvation_guard`` itself for work held behind a guarded job.
Vectorised over the queue: free GPUs are grouped by (site, model) with their free memory
sorted, so a request's per-site counts are binary searches, not a scan of the fleet.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PENDING_REASONS", "pending_reasons", "unschedulable"]

PENDING_REASONS = (
    "capacity",
    "gpus_unresponsive",
    "memory",
    "temperature",
    "price_cap",
    "starvation_guard",
)
_CAPACITY, _UNRESPONSIVE, _MEMORY, _TEMPERATURE, _PRICE = range(5)


def _site_max(counts: np.ndarray, group_site: np.ndarray, n_sites: int) -> np.ndarray:
    """Per workload, the largest per-site total of ``counts`` (workloads x groups)."""
    onehot = np.zeros((group_site.shape[0], max(1, n_sites)), dtype=np.float64)
    onehot[np.arange(group_site.shape[0]), group_site] = 1.0
    return (counts @ onehot).max(axis=1) if counts.shape[1] else np.zeros(counts.shape[0])


def pending_reasons(
    need_gpus: np.ndarray,
    need_mem: np.ndarray,
    max_price: np.ndarray,
    has_avoid: np.ndarray,
    offer: np.ndarray,
    held_idle: np.ndarray,
    mem_free: np.ndarray,
    temp: np.ndarray,
    spot: np.ndarray,
    site: np.ndarray,
    model: np.ndarray,
    n_sites: int,
    temp_max: float,
) -> list[str]:
    """The pending reason of each workload (see the module docstring)."""
    nw = need_gpus.shape[0]
    if nw == 0:
        return []
    k = need_gpus.astype(np.float64)
    codes = np.full(nw, _CAPACITY, dtype=np.int64)
    free_site = np.bincount(site[offer], minlength=n_sites)
    most_free = free_site.max() if free_site.size else 0
    with_held = np.bincount(site[offer | held_idle], minlength=n_sites)
    most_with_held = with_held.max() if with_held.size else 0
    short = k > most_free
    codes[short & (k <= most_with_held)] = _UNRESPONSIVE
    rest = np.flatnonzero(~short)
    if rest.size:
        g_idx = np.flatnonzero(offer)
        keys = site[g_idx] * (int(model.max(initial=0)) + 1) + model[g_idx]
        groups, inverse = np.unique(keys, return_inverse=True)
        n_groups = groups.shape[0]
        mem_r, k_r = need_mem[rest], k[rest]
        cap_r = max_price[rest]
        n_mem = np.zeros((rest.size, n_groups))
        n_cool = np.zeros((rest.size, n_groups))
        price_ok = np.zeros((rest.size, n_groups), dtype=np.bool_)
        group_site = np.empty(n_groups, dtype=np.int64)
        cool = temp < temp_max
        for j in range(n_groups):
            members = g_idx[inverse == j]
            group_site[j] = site[members[0]]
            mems = np.sort(mem_free[members])
            n_mem[:, j] = mems.size - np.searchsorted(mems, mem_r, side="left")
            cool_mems = np.sort(mem_free[members[cool[members]]])
            n_cool[:, j] = cool_mems.size - np.searchsorted(cool_mems, mem_r, side="left")
            s = spot[members[0]]
            if not np.isnan(s):
                price_ok[:, j] = np.isnan(cap_r) | (s <= cap_r)
            else:
                price_ok[:, j] = np.isnan(cap_r)
        code_r = np.full(rest.size, _CAPACITY, dtype=np.int64)
        by_mem = _site_max(n_mem, group_site, n_sites) < k_r
        by_temp = _site_max(n_cool, group_site, n_sites) < k_r
        by_price = _site_max(n_cool * price_ok, group_site, n_sites) < k_r
        code_r[by_price] = _PRICE
        code_r[by_temp] = _TEMPERATURE
        code_r[by_mem] = _MEMORY
        fits = ~(by_mem | by_temp | by_price)
        code_r[fits & has_avoid[rest]] = _UNRESPONSIVE
        codes[rest] = code_r
    return [PENDING_REASONS[c] for c in codes.tolist()]


def unschedulable(
    need_gpus: np.ndarray, need_mem: np.ndarray, mem_total: np.ndarray, site: np.ndarray,
    n_sites: int,
) -> np.ndarray:
    """True for requests no site could ever hold: too many GPUs, or memory above all."""
    out = np.zeros(need_gpus.shape[0], dtype=np.bool_)
    for s in range(n_sites):
        mems = np.sort(mem_total[site == s])
        fits = mems.size - np.searchsorted(mems, need_mem, side="left")
        out |= fits >= need_gpus
    return ~out
