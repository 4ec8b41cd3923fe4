"""Customer quotas in the router: work over its customer's quota waits, reason ``quota``.

A quota is at most ``max_gpus`` GPUs held at once (assigned or running) and at most
``gpu_hours`` GPU-hours of running per calendar month (UTC). The API puts the customer's
quota on each submission (``quota_max_gpus``, ``quota_gpu_hours``); the quota in force is
the one of the customer's newest request in event order, so replays decide the same.

Used GPU-hours are counted from the router's own transitions: a run's GPU-time is added
to the month it ends in when it leaves ``running``; running work counts up to now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flows.router.states import Workload

__all__ = ["QuotaBook"]



def _month(ts: int) -> str:
    return str(np.datetime64(int(ts), "ms").astype("datetime64[M]"))


@dataclass
class QuotaBook:
    """Quotas per customer and GPU-milliseconds used per (customer, month)."""

    quotas: dict[str, tuple[int | None, float | None]] = field(default_factory=dict)
    used_ms: dict[tuple[str, str], int] = field(default_factory=dict)

    def set(self, customer: str, max_gpus: object, gpu_hours: object) -> None:
        """The quota a request carries (None or NaN: no limit), in event order."""
        def clean(v: object) -> float | None:
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

        g, h = clean(max_gpus), clean(gpu_hours)
        self.quotas[customer] = (None if g is None else int(g), h)

    def on_transition(self, w: Workload, src: str | None, to_state: str, ts: int) -> None:
        """Called by the state machine: a run that ends adds its GPU-time."""
        if src == "running" and w.running_ts:
            key = (w.customer, _month(ts))
            self.used_ms[key] = self.used_ms.get(key, 0) + max(0, ts - w.running_ts) * w.gpus

    def hold(
        self, entries: list[Workload], active: dict[str, Workload], now: int
    ) -> tuple[list[Workload], set[str]]:
        """Split queue-ordered ``entries`` into those that may be placed and the ids held."""
        if not self.quotas or not any(w.customer in self.quotas for w in entries):
            return entries, set()
        month = _month(now)
        gpus: dict[str, int] = {}
        used: dict[str, int] = {}
        for w in active.values():
            gpus[w.customer] = gpus.get(w.customer, 0) + w.gpus
            if w.state == "running" and w.running_ts:
                used[w.customer] = used.get(w.customer, 0) + max(0, now - w.running_ts) * w.gpus
        kept: list[Workload] = []
        held: set[str] = set()
        for w in entries:
            quota = self.quotas.get(w.customer)
            if quota is None:
                kept.append(w)
                continue
            max_gpus, hours = quota
            have = gpus.get(w.customer, 0)
            spent = used.get(w.customer, 0) + self.used_ms.get((w.customer, month), 0)
            if (max_gpus is not None and have + w.gpus > max_gpus) or (
                hours is not None and spent >= hours * 3_600_000
            ):
                held.add(w.workload_id)
                continue
            gpus[w.customer] = have + w.gpus  # within a round too: one slot, one job
            kept.append(w)
        return kept, held
