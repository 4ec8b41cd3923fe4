"""Victim selection: which running work to preempt so urgent work fits.

Only work that is running, has a lower base priority than the urgent job, and has run at
least the minimum runtime (anti-thrash) can be a victim. Per site, the urgent job first
takes the site's free feasible GPUs, then victims in "cheapest first" order: lowest
priority, then least run time lost (``now - running_ts``), then workload id, until enough
GPUs are freed. The site whose victim set is cheapest wins: lowest highest-victim
priority, then least total run time lost, then fewest victims, then site name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Candidate", "Preemption", "choose_victims"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A running workload that may be preempted."""

    workload_id: str
    priority: int
    lost_ms: int  # run time thrown away if it is preempted now
    site: int
    gpus: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Preemption:
    """The chosen site, the GPUs the urgent job gets and the victims to stop."""

    site: int
    gpus: tuple[int, ...]
    victims: tuple[Candidate, ...]


def choose_victims(
    k: int,
    priority: int,
    free_ok: np.ndarray,
    usable_ok: np.ndarray,
    order_pos: np.ndarray,
    site: np.ndarray,
    site_names: list[str],
    candidates: list[Candidate],
) -> Preemption | None:
    """The cheapest preemption giving ``k`` one-site GPUs, or None.

    ``free_ok[g]``: GPU ``g`` is free and feasible for the urgent job now; ``usable_ok[g]``:
    it would be feasible once its current work stops. ``order_pos[g]`` is the GPU's position
    in score order (lower is better). ``candidates`` must be sorted cheapest first.
    """
    best: tuple[tuple[int, int, int, str], Preemption] | None = None
    free_by_site: dict[int, list[int]] = {}
    for g in np.flatnonzero(free_ok).tolist():
        free_by_site.setdefault(int(site[g]), []).append(g)
    chosen: dict[int, list[Candidate]] = {}
    freed: dict[int, list[int]] = {}
    for c in candidates:
        if c.priority >= priority:
            break  # sorted by priority: nothing cheaper follows
        have = len(free_by_site.get(c.site, ())) + len(freed.get(c.site, ()))
        if have >= k:
            continue  # this site is already satisfied
        usable = [g for g in c.gpus if usable_ok[g]]
        if not usable:
            continue
        chosen.setdefault(c.site, []).append(c)
        freed.setdefault(c.site, []).extend(usable)
        if have + len(usable) >= k:
            victims = chosen[c.site]
            cost = (
                max(v.priority for v in victims),
                sum(v.lost_ms for v in victims),
                len(victims),
                site_names[c.site],
            )
            if best is None or cost < best[0]:
                free_first = sorted(free_by_site.get(c.site, ()), key=lambda g: order_pos[g])
                rest = sorted(freed[c.site], key=lambda g: order_pos[g])
                gpus = tuple((free_first + rest)[:k])
                best = (cost, Preemption(c.site, gpus, tuple(victims)))
    return None if best is None else best[1]
