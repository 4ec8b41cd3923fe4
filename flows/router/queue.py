"""A 10-level priority queue, FIFO within a level, with aging against starvation.

Each base priority 1..10 has its own list kept in ``(submit_ts, workload_id)`` order, so a
level is FIFO by submit time (a preempted job returns with its original submit time and
so with its age). Aging: at event time ``now`` an entry's effective priority is

    min(10, priority + (now - submit_ts) // aging_ms)

with ``aging_ms`` = :data:`DEFAULT_AGING_S` (120 s) by default: a priority-1 job reaches
priority 10 after 18 minutes of waiting, then it is served before every newer request.
The global order is effective priority (high first), then submit ts, then workload id;
within one level that is plain submit order, so the global order is a 10-way merge of the
level lists, computed lazily at each routing round.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Iterator

__all__ = ["DEFAULT_AGING_S", "LEVELS", "AgingQueue", "effective_priority"]

LEVELS = 10
DEFAULT_AGING_S = 120


def effective_priority(priority: int, submit_ts: int, now: int, aging_ms: int) -> int:
    """The aged priority of one entry (see the module docstring)."""
    waited = max(0, now - submit_ts)
    return min(LEVELS, priority + waited // aging_ms)


class AgingQueue:
    """Queued workload ids in 10 levels; iteration order depends on the event time."""

    def __init__(self, aging_s: float = DEFAULT_AGING_S) -> None:
        if aging_s <= 0:
            msg = f"aging interval must be positive, got {aging_s}"
            raise ValueError(msg)
        self.aging_ms = int(aging_s * 1000)
        self._levels: list[list[tuple[int, str]]] = [[] for _ in range(LEVELS)]
        self._where: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, workload_id: object) -> bool:
        return workload_id in self._where

    def push(self, workload_id: str, priority: int, submit_ts: int) -> None:
        """Queue an entry; a second push of a queued id is an error."""
        if workload_id in self._where:
            msg = f"workload {workload_id} is already queued"
            raise KeyError(msg)
        if not 1 <= priority <= LEVELS:
            msg = f"priority must be 1..{LEVELS}, got {priority}"
            raise ValueError(msg)
        insort(self._levels[priority - 1], (submit_ts, workload_id))
        self._where[workload_id] = (priority, submit_ts)

    def remove(self, workload_id: str) -> None:
        priority, submit_ts = self._where.pop(workload_id)
        level = self._levels[priority - 1]
        i = bisect_left(level, (submit_ts, workload_id))
        del level[i]

    def remove_many(self, workload_ids: list[str]) -> None:
        """Remove several entries with one rebuild per touched level."""
        if len(workload_ids) < 32:
            for wid in workload_ids:
                self.remove(wid)
            return
        touched: set[int] = set()
        for wid in workload_ids:
            priority, _ = self._where.pop(wid)
            touched.add(priority - 1)
        for lvl in touched:
            self._levels[lvl] = [e for e in self._levels[lvl] if e[1] in self._where]

    def level_sizes(self) -> list[int]:
        """Entries per base priority 1..10."""
        return [len(level) for level in self._levels]

    def ordered(self, now: int) -> Iterator[tuple[int, int, str]]:
        """``(effective_priority, submit_ts, workload_id)`` best first, at event time ``now``."""
        aging = self.aging_ms

        def level_iter(prio: int, level: list[tuple[int, str]]) -> Iterator[tuple[int, int, str]]:
            for ts, wid in level:
                waited = now - ts
                eff = prio + (waited // aging if waited > 0 else 0)
                yield (-(eff if eff < LEVELS else LEVELS), ts, wid)

        merged = heapq.merge(
            *(level_iter(p + 1, lvl) for p, lvl in enumerate(self._levels) if lvl)
        )
        for neg_eff, ts, wid in merged:
            yield (-neg_eff, ts, wid)
