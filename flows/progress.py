"""Event-time progress: the one watermark rule of the profitability shards and the router.

Each input is one Kafka topic-partition (``topic#partition``). Its *mark* is its largest
event time minus the allowed lateness; an event further behind its own partition's
maximum than that is late. The watermark ``W`` is what every window or tick ending at or
before it can rely on:

- an input that has ended (``eof``, ``--once``) no longer counts;
- an input that is *live* (reporting data, or silent for less than the idle timeout)
  holds ``W`` at its mark: ``W`` is the slowest live input's mark;
- an input the source reports *idle* (silent for ``--idle-timeout-s`` while the broker
  answers) stops holding ``W``, so an empty or abandoned partition cannot stall the job;
- when every input is idle (the producers paused), ``W`` is the furthest idle mark: nothing
  is on its way, so every window already covered closes;
- **a pause ends for everyone at once**: the first data after a spell in which every input
  was idle does not let the others' idleness stand. Each input that went quiet with the
  pause holds ``W`` at its own mark again until it delivers data, or is still idle the
  idle timeout after the resume (seen at any input's report). Producers resume their
  partitions a few fetches apart; without this rule the first partition back would close
  the windows that the others have not delivered yet, and their in-order data would be
  dropped as late. An input "went quiet with the pause" if its last data came at most the
  idle timeout before the last data of any input (or no input has delivered any yet, as
  at a job's start). One that was already idle before, such as a price partition that
  gets a price a minute, did not hold ``W`` before the pause and does not after it:
  holding it made every resume wait the idle timeout, which is every second for a fleet
  that reports in per-second bursts (docs/benchmark.md).

The rule depends on wall-clock silence only through the idle flags; with no idle input the
watermark depends on the input alone (docs/architecture.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from flows.profitability import kernels as k

__all__ = ["NEG_INF", "POS_INF", "InputProgress", "Progress"]

NEG_INF = -(2**62)
POS_INF = 2**62


@dataclass
class InputProgress:
    """What one input has told: its largest event time, whether it ended or went idle."""

    max_ts: int = NEG_INF
    eof: bool = False
    idle: bool = False
    # Idle during a pause that has since ended: holds the watermark until it qualifies again.
    held: bool = False
    # Wall-clock time of its last data (snapshots from before this field read the default).
    last_data_at: float = -math.inf

    @property
    def counts_idle(self) -> bool:
        return self.idle and not self.held


@dataclass
class Progress:
    """Per-input progress and the watermark; pickled whole inside its owner's state.

    ``inputs`` lists the ids expected from the start; an id not listed is added when it
    first reports. ``idle_timeout_s`` is the source's ``--idle-timeout-s``: how long after a
    resume a silent input must go on reporting idle before it stops holding again.
    """

    lateness_ms: int
    idle_timeout_s: float = 0.0
    inputs: dict[str, InputProgress] = field(default_factory=dict)
    paused: bool = False  # every live input counted idle at the last report
    resumed_at: float = 0.0  # wall-clock time of the first data after the last pause

    @classmethod
    def create(
        cls, lateness_ms: int, inputs: tuple[str, ...] = (), idle_timeout_s: float = 0.0
    ) -> Progress:
        return cls(int(lateness_ms), float(idle_timeout_s), {i: InputProgress() for i in inputs})

    def expect(self, input_id: str) -> None:
        """Count ``input_id`` from now on even before it reports."""
        self.inputs.setdefault(input_id, InputProgress())

    def observe(
        self,
        input_id: str,
        ts: np.ndarray | None,
        eof: bool = False,
        idle: bool = False,
        now: float | None = None,
    ) -> np.ndarray | None:
        """Take one fetch (``ts`` of its rows, in offset order) or heartbeat (``ts`` None).

        Returns the late mask of ``ts`` (events further than the lateness behind their
        input's running maximum), or None for a heartbeat.
        """
        now = time.time() if now is None else now
        inp = self.inputs.setdefault(input_id, InputProgress())
        inp.eof = inp.eof or eof
        has_data = ts is not None and ts.shape[0] > 0
        if has_data and self.paused:
            # The first data after a pause: every input that went quiet with it holds again.
            self.paused = False
            self.resumed_at = now
            last_data_at = max((i.last_data_at for i in self.inputs.values()), default=-math.inf)
            quiet_from = last_data_at - self.idle_timeout_s
            for other in self.inputs.values():
                other.held = (
                    other.idle
                    and not other.eof
                    and (other.last_data_at >= quiet_from or last_data_at == -math.inf)
                )
        if has_data:
            inp.last_data_at = now
        inp.idle = idle and not has_data
        if has_data:
            inp.held = False
        if now - self.resumed_at >= self.idle_timeout_s:
            # Still idle the idle timeout after the resume: silent all along, so let go. Any
            # input's report may tell, or the hold would last up to a heartbeat longer.
            for other in self.inputs.values():
                if other.held and other.idle:
                    other.held = False
        live = [i for i in self.inputs.values() if not i.eof]
        if live and all(i.counts_idle for i in live):
            self.paused = True
        if ts is None:
            return None
        late, inp.max_ts = k.late_mask(ts, inp.max_ts, self.lateness_ms)
        return late

    def watermark(self) -> int:
        """The slowest holding input's mark; see the module docstring for the rule."""
        marks, idle_marks = [], []
        for inp in self.inputs.values():
            if inp.eof:
                continue
            mark = inp.max_ts - self.lateness_ms if inp.max_ts > NEG_INF else NEG_INF
            (idle_marks if inp.counts_idle else marks).append(mark)
        if marks:
            return min(marks)
        if idle_marks:
            return max(idle_marks)  # every live input is idle: nothing is on its way
        return POS_INF
