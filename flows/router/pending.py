"""Why a queued workload is not placed now (SPEC section 3 ``pending_reason``).

Evaluated after a routing round. The reason is the first of these checks under which no
site has the ``gpus`` the request needs:

Against every *usable* GPU (known, not down, not recommended ``power_down``), busy or not,
so the answer does not flip as work comes and goes:

1. ``memory``: too few GPUs with ``mem_gb`` of memory in total;
2. ``price_cap``: of those, too few whose model's spot price is known and at or below
   ``max_price_usd_hr`` (it waits for the price, not for GPUs to free up).

Against the GPUs free for new work now (idle with no workload, not held by the router,
not backing off or cordoned):

3. ``capacity``: too few free GPUs that fit (memory, price); ``gpus_unresponsive``
   instead when GPUs that are backing off or cordoned (they never started earlier work)
   would make up the difference;
4. ``temperature``: enough fit, but too few of them below ``temp_max_c``;
5. ``reserved_for_higher_priority``: enough free GPUs fit, but only with GPUs reserved
   for work ahead of it, and it would not end before that reservation starts (the head of
   the queue that holds a reservation keeps ``capacity`` or ``gpus_unresponsive``);
6. otherwise ``capacity`` (work ahead of it took the GPUs in this round), or
   ``gpus_unresponsive`` when the GPUs it would fit on are ones it avoids.

The router sets ``starvation_guard`` itself for work held behind a guarded job.
Vectorised over the queue: GPUs are grouped by (site, model) with their memory sorted, so
a request's per-site counts are binary searches, not a scan of the fleet.
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
    "reserved_for_higher_priority",
    "quota",  # set by the router: over its customer's quota (flows/router/quota.py)
)
_CAPACITY, _UNRESPONSIVE, _MEMORY, _TEMPERATURE, _PRICE = range(5)
_RESERVED = 6


def _fit_per_site(
    mask: np.ndarray, mem: np.ndarray, need_mem: np.ndarray, max_price: np.ndarray,
    spot: np.ndarray, site: np.ndarray, model: np.ndarray, n_sites: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per workload, the best site's count of ``mask`` GPUs with ``mem >= need_mem``, and
    the same count among those whose price is within the workload's cap."""
    nw = need_mem.shape[0]
    g_idx = np.flatnonzero(mask)
    if g_idx.size == 0:
        return np.zeros(nw), np.zeros(nw)
    keys = site[g_idx] * (int(model.max(initial=0)) + 1) + model[g_idx]
    groups, inverse = np.unique(keys, return_inverse=True)
    per_site_mem = np.zeros((nw, max(1, n_sites)))
    per_site_price = np.zeros((nw, max(1, n_sites)))
    no_cap = np.isnan(max_price)
    for j in range(groups.shape[0]):
        members = g_idx[inverse == j]
        mems = np.sort(mem[members])
        n = mems.size - np.searchsorted(mems, need_mem, side="left")
        s = int(site[members[0]])
        price = spot[members[0]]
        ok = no_cap if np.isnan(price) else no_cap | (price <= max_price)
        per_site_mem[:, s] += n
        per_site_price[:, s] += n * ok
    return per_site_mem.max(axis=1), per_site_price.max(axis=1)


def pending_reasons(
    need_gpus: np.ndarray,
    need_mem: np.ndarray,
    max_price: np.ndarray,
    has_avoid: np.ndarray,
    usable: np.ndarray,
    offer: np.ndarray,
    held_idle: np.ndarray,
    mem_total: np.ndarray,
    mem_free: np.ndarray,
    temp: np.ndarray,
    spot: np.ndarray,
    site: np.ndarray,
    model: np.ndarray,
    n_sites: int,
    temp_max: float,
    reserved: np.ndarray | None = None,
    holds: np.ndarray | None = None,
) -> list[str]:
    """The pending reason of each workload (see the module docstring).

    ``reserved`` marks the GPUs reserved this round, ``holds`` the workloads holding a
    reservation.
    """
    nw = need_gpus.shape[0]
    if nw == 0:
        return []
    k = need_gpus.astype(np.float64)
    args = (spot, site, model, n_sites)
    total_mem, total_price = _fit_per_site(usable, mem_total, need_mem, max_price, *args)
    _, free_fit = _fit_per_site(offer, mem_free, need_mem, max_price, *args)
    _, with_held = _fit_per_site(offer | held_idle, mem_free, need_mem, max_price, *args)
    _, cool_fit = _fit_per_site(offer & (temp < temp_max), mem_free, need_mem, max_price, *args)
    codes = np.where(has_avoid, _UNRESPONSIVE, _CAPACITY)
    if reserved is not None and reserved.any():
        _, open_fit = _fit_per_site(offer & ~reserved & (temp < temp_max), mem_free,
                                    need_mem, max_price, *args)
        held_back = (cool_fit >= k) & (open_fit < k)
        if holds is not None:
            held_back &= ~holds
        codes[held_back] = _RESERVED
    codes[cool_fit < k] = _TEMPERATURE
    short = free_fit < k
    codes[short] = np.where(with_held[short] >= k[short], _UNRESPONSIVE, _CAPACITY)
    codes[total_price < k] = _PRICE
    codes[total_mem < k] = _MEMORY
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
