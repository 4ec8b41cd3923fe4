"""Latency: from a window's end, on a simulated clock driven in real time, to its
recommendation being readable in Redis.

The generator runs at a fixed real-time rate, so simulated time ``t`` happens at wall time
``SimClock.wall_of(t)``. A window ``[start, end)`` is over at ``wall_of(end)``; its
recommendations are readable when they appear in the ``{prefix}recommendations`` stream,
whose entry ids are ``{window_end_ms}-{seq}`` (see sinks/redis_layout.py). The watcher
reads that stream as it grows and records, per recommendation, the wall time it was seen
minus ``wall_of(window_end)``. The latency therefore includes the allowed lateness the
flow waits before closing a window: that is the latency a user sees.

What is wired: the clock, the stream watcher and the percentiles. What is not: starting the
flow and the real-time generator (see :func:`measure_latency`, the lead wires it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import redis

__all__ = ["LatencyResult", "RecommendationWatcher", "SimClock", "measure_latency", "percentiles"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimClock:
    """Maps simulated milliseconds to wall seconds: ``sim0_ms`` happened at ``wall0``."""

    sim0_ms: int
    wall0: float
    speed: float = 1.0

    @classmethod
    def starting_now(cls, sim0_ms: int, speed: float = 1.0) -> SimClock:
        return cls(sim0_ms, time.time(), speed)

    def wall_of(self, sim_ms: int) -> float:
        return self.wall0 + (sim_ms - self.sim0_ms) / 1000.0 / self.speed


@dataclass
class LatencyResult:
    """Per-recommendation latencies in seconds, and how many windows they cover."""

    latencies_s: list[float] = field(default_factory=list)
    windows: int = 0

    @property
    def p50_s(self) -> float | None:
        return percentiles(self.latencies_s)[0]

    @property
    def p99_s(self) -> float | None:
        return percentiles(self.latencies_s)[1]


def percentiles(values: Iterable[float], qs: tuple[float, ...] = (50, 99)) -> list[float | None]:
    """The ``qs`` percentiles of ``values`` (linear interpolation), ``None`` when empty."""
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return [None for _ in qs]
    return [float(v) for v in np.percentile(arr, qs)]


class RecommendationWatcher:
    """Reads the recommendations stream from "now" on, in a thread, timing each entry.

    Start it before the generator so no entry is missed; stop it after the last window
    of interest. Redis calls are plain blocking XREADs with a short block time so ``stop``
    returns promptly.
    """

    def __init__(self, redis_url: str, stream: str, clock: SimClock, batch: int = 50_000) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.stream = stream
        self.clock = clock
        self.batch = batch
        self.result = LatencyResult()
        self._windows: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-watcher", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> RecommendationWatcher:
        # "$" must be resolved now, not when the thread first reads, or early entries are lost.
        info = self.client.xinfo_stream(self.stream) if self.client.exists(self.stream) else None
        self._last_id = info["last-generated-id"] if info else b"0-0"
        self._thread.start()
        return self

    def stop(self) -> LatencyResult:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        self.result.windows = len(self._windows)
        return self.result

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                reply = self.client.xread({self.stream: self._last_id}, count=self.batch, block=100)
                seen_at = time.time()
                for _stream, entries in reply or []:
                    for entry_id, _fields in entries:
                        window_end = int(entry_id.split(b"-", 1)[0])
                        self._windows.add(window_end)
                        self.result.latencies_s.append(seen_at - self.clock.wall_of(window_end))
                    if entries:
                        self._last_id = entries[-1][0]
        except BaseException as exc:
            self._error = exc


def measure_latency(
    bootstrap: str,
    redis_url: str,
    *,
    events_per_s: float = 350_000,
    windows: int = 3,
    redis_prefix: str = "hcp:",
) -> LatencyResult:
    """p50 / p99 from window end to readable recommendation at a fixed real-time rate.

    TODO(lead): wire to the flow. The intended sequence:
      1. pick a fresh topic prefix and Redis prefix; start the flow (not ``--once``) in a
         subprocess on them, every sink on, raw storage off;
      2. ``clock = SimClock.starting_now(sim0_ms)`` with ``sim0_ms`` the generator's start
         (aligned so the first window is complete), and start
         ``RecommendationWatcher(redis_url, RedisKeys(redis_prefix).recs_stream, clock)``;
      3. run the generators' real-time producer at ``events_per_s`` (device counts chosen
         so that 1 Hz per device gives that rate: 300,000 ASICs + 10,000 GPUs ~ 310k/s)
         for ``windows`` windows plus the allowed lateness;
      4. ``watcher.stop()`` gives the latencies; drop the first window (warm-up), stop
         the flow, return.
    """
    raise NotImplementedError("latency measurement is not wired to the flow yet")
