"""The workload state machine of SPEC section 3, and the event rows it emits.

Allowed transitions (anything else is rejected, logged and counted in
``hcp_workload_invalid_transitions_total``)::

    (new)     -> submitted
    submitted -> queued | failed          failed: the request can never be placed
    queued    -> assigned
    queued    -> failed                   unschedulable: no site could ever hold it
    assigned  -> running                  every GPU of the assignment reports the workload id
    assigned  -> queued                   GPU down, or no report within the assign timeout:
                                          it never started, so it goes back with its age
    running   -> completed                a GPU of the job reports idle after it ran
    running   -> failed                   a GPU of the job goes down
    running   -> preempted -> queued      urgent work took its GPUs; it keeps its submit ts
    any non-terminal state -> cancelled   an ``op: cancel`` request

``completed``, ``failed`` and ``cancelled`` are terminal. A queued workload's pending
reason is not a transition: :meth:`StateMachine.pending` records a ``queued -> queued``
row whose reason is the new pending reason (so it reaches the event stream and Redis).
A second request with a known workload id is an invalid ``<state> -> submitted``
transition. Every valid transition becomes one row of
:data:`hcp.schemas.WORKLOAD_EVENT_SCHEMA`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl
from prometheus_client import Counter

from hcp.schemas import WORKLOAD_EVENT_SCHEMA

__all__ = [
    "ALLOWED",
    "INVALID_TRANSITIONS",
    "STATES",
    "TERMINAL",
    "StateMachine",
    "Workload",
]

log = logging.getLogger(__name__)

STATES = ("submitted", "queued", "assigned", "running", "completed", "failed", "preempted",
          "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
ALLOWED: frozenset[tuple[str | None, str]] = frozenset(
    {
        (None, "submitted"),
        ("submitted", "queued"),
        ("submitted", "failed"),
        ("queued", "assigned"),
        ("assigned", "running"),
        ("assigned", "queued"),
        ("running", "completed"),
        ("running", "failed"),
        ("running", "preempted"),
        ("preempted", "queued"),
        ("queued", "failed"),
        *((s, "cancelled") for s in ("submitted", "queued", "assigned", "running", "preempted")),
    }
)

INVALID_TRANSITIONS = Counter(
    "hcp_workload_invalid_transitions",
    "Workload state transitions rejected by the state machine",
    ["from_state", "to_state"],
)


@dataclass(slots=True)
class Workload:
    """One request and where it stands; ``submit_ts`` is kept across preemptions (its age)."""

    workload_id: str
    customer: str
    kind: str
    priority: int
    gpus: int
    mem_gb: float
    est_duration_s: int
    max_price_usd_hr: float  # NaN when the request sets no cap
    submit_ts: int
    state: str | None = None
    gpu_idx: tuple[int, ...] = ()
    site: str = ""
    assigned_ts: int = 0
    running_ts: int = 0
    preemptions: int = 0
    # GPUs that never started this workload: it is not offered to them again.
    avoid: tuple[int, ...] = ()
    # GPUs of the assignment that reported the workload: it runs once all of them have.
    confirmed: tuple[int, ...] = ()
    pending_reason: str = ""  # why it is not placed now (queued only)
    evaluated: bool = False  # checked once against the fleet for `unschedulable`
    queued_ts: int = -1  # when it last entered the queue
    extra: dict[str, str] = field(default_factory=dict)


class StateMachine:
    """Applies transitions to :class:`Workload` records and collects their event rows."""

    def __init__(self) -> None:
        self.invalid = 0
        # Called as observer(w, from_state, to_state, ts) on each valid transition (quotas).
        self.observer: Callable[[Workload, str | None, str, int], None] | None = None
        self._rows: list[tuple[str, int, str | None, str, int, str, str, str]] = []

    def transition(
        self,
        w: Workload,
        to_state: str,
        ts: int,
        reason: str = "",
        gpu_ids: str = "",
    ) -> bool:
        """Move ``w`` to ``to_state``; False (and counted) when the move is not allowed."""
        src = w.state
        if (src, to_state) not in ALLOWED:
            self.invalid += 1
            INVALID_TRANSITIONS.labels(str(src), to_state).inc()
            log.warning(
                "invalid workload transition %s: %s -> %s (%s)",
                w.workload_id, src, to_state, reason,
            )
            return False
        w.state = to_state
        if getattr(self, "observer", None) is not None:
            self.observer(w, src, to_state, int(ts))
        if to_state == "queued":
            w.queued_ts = int(ts)
        self._rows.append(
            (w.workload_id, int(ts), src, to_state, int(w.priority), gpu_ids, w.site, reason)
        )
        return True

    def reject(self, workload_id: str, from_state: str | None, to_state: str) -> None:
        """Count a transition that has no record to act on (e.g. a duplicate request)."""
        self.invalid += 1
        INVALID_TRANSITIONS.labels(str(from_state), to_state).inc()
        log.warning("invalid workload transition %s: %s -> %s", workload_id, from_state, to_state)

    def pending(self, w: Workload, ts: int, reason: str) -> None:
        """Record a queued workload's new pending reason as a ``queued -> queued`` row.

        A reason found in the round in which the workload (re-)entered the queue is
        recorded 1 ms later, so its row never shares the (workload_id, ts, to_state) key of
        the row that queued it (the PostgreSQL upsert key).
        """
        w.pending_reason = reason
        ts = int(ts) + 1 if int(ts) <= w.queued_ts else int(ts)
        self._rows.append((w.workload_id, ts, "queued", "queued", int(w.priority), "",
                           "", reason))

    def backlog(self) -> int:
        """Event rows not drained yet."""
        return len(self._rows)

    def drain(self) -> pl.DataFrame:
        """The event rows since the last drain, in the order they happened."""
        rows, self._rows = self._rows, []
        return pl.DataFrame(rows, schema=WORKLOAD_EVENT_SCHEMA, orient="row")
