"""A 10-level priority queue, FIFO within a level; higher base priority always goes first.

Each base priority 1..10 has its own list kept in ``(submit_ts, workload_id)`` order, so a
level is FIFO by submit time (a preempted or timed-out job returns with its original
submit time and so with its age). The global order is base priority (high first), then
submit ts, then workload id: a 10-way concatenation of the level lists.

Why no cross-level aging: aging that lifts old low-priority work above fresh
high-priority work inverts priorities (a priority-1 job queued an hour earlier went
ahead of a fresh priority-10 one). Age still matters in two bounded ways: it orders each
level (oldest first), and the router's starvation guard (``RouterConfig
.starvation_guard_s``) lets a job that has waited that long stop everything queued behind
it from taking the GPUs it needs, so a large job cannot be starved by backfilled small
ones. Work of a higher base priority is never held back by it (docs/workloads.md).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator

__all__ = ["LEVELS", "AgingQueue"]

LEVELS = 10


class AgingQueue:
    """Queued workload ids in 10 levels, oldest first within a level."""

    def __init__(self) -> None:
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

    def oldest_submit_ts(self) -> int | None:
        """The earliest submit ts of any queued entry (None when empty)."""
        heads = [level[0][0] for level in self._levels if level]
        return min(heads) if heads else None

    def ordered(self) -> Iterator[tuple[int, int, str]]:
        """``(priority, submit_ts, workload_id)`` best first."""
        for p in range(LEVELS, 0, -1):
            for ts, wid in self._levels[p - 1]:
                yield (p, ts, wid)
