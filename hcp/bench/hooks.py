"""The parts of ``hcp bench`` that drive the streaming jobs: HCP, the baseline, latency.

TODO(lead): fill in :func:`run_hcp` and :func:`run_baseline`. Each gets the filled topics
in a :class:`BenchContext` and returns a :class:`JobRun`. ``hcp bench`` catches
``NotImplementedError`` from them and prints "not wired yet", so the rest of the benchmark
(fill, limit, report) works before they are.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import polars as pl

from hcp.topics import Topics

__all__ = ["BenchContext", "JobRun", "run_baseline", "run_hcp", "same_recommendations"]


@dataclass(frozen=True)
class BenchContext:
    """Where the benchmark's data is: filled topics, and fresh Redis / PostgreSQL places."""

    bootstrap: str
    topics: Topics
    events: int  # messages in the input topics, all partitions complete
    redis_url: str
    redis_prefix: str  # fresh per run, e.g. "bench-1a2b3c:"; the hook deletes its keys
    pg_dsn: str
    args: argparse.Namespace  # the full `hcp bench` arguments, for extra knobs


@dataclass
class JobRun:
    """One job's pass over the topics: events in, wall seconds, peak RSS, what it decided.

    ``recommendations`` has at least ``device_id``, ``window_start``, ``window_end``,
    ``action`` and ``reason`` (hcp.schemas.REC_SCHEMA names), one row per device window,
    so HCP and the baseline can be compared with :func:`same_recommendations`.
    """

    events: int
    seconds: float
    peak_rss_mb: float | None = None
    recommendations: pl.DataFrame | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def run_hcp(ctx: BenchContext) -> JobRun:
    """HCP: the flow with ``--once``, every sink on and raw storage off.

    TODO(lead): run the flow in a child process (``hcp.bench.report.run_measured`` gives
    wall time and the peak RSS of its process tree), then read its recommendations back
    (e.g. from PostgreSQL ``recommendations`` or the Redis stream under ctx.redis_prefix).
    """
    raise NotImplementedError("HCP run is not wired into hcp bench yet")


def run_baseline(ctx: BenchContext) -> JobRun:
    """The idiomatic per-event Bytewax version of the same logic.

    TODO(lead): ``KafkaSource``, a per-item ``map`` to decode, Bytewax windowing operators;
    run to the end of the topics and return its recommendations for comparison.
    """
    raise NotImplementedError("baseline run is not wired into hcp bench yet")


_COMPARE_KEYS = ["device_id", "window_start"]
_COMPARE_EXACT = ["window_end", "action", "reason"]
_COMPARE_FLOAT = ["revenue_usd_hr", "cost_usd_hr", "net_usd_hr", "score"]


def same_recommendations(a: pl.DataFrame, b: pl.DataFrame, rel_tol: float = 1e-6) -> bool:
    """True when both runs made the same decision for every device window.

    Actions and reasons must match exactly; money columns present in both frames must
    agree within ``rel_tol`` (the two jobs may sum floats in a different order).
    """
    if a.height != b.height:
        return False
    exact = [c for c in _COMPARE_EXACT if c in a.columns and c in b.columns]
    floats = [c for c in _COMPARE_FLOAT if c in a.columns and c in b.columns]
    cols = _COMPARE_KEYS + exact + floats
    left = a.select(cols).sort(_COMPARE_KEYS)
    right = b.select(cols).sort(_COMPARE_KEYS)
    if not left.select(_COMPARE_KEYS + exact).equals(right.select(_COMPARE_KEYS + exact)):
        return False
    x, y = pl.col("x"), pl.col("y")
    close = ((x - y).abs() <= pl.max_horizontal(x.abs(), y.abs()) * rel_tol + 1e-9) | (
        x.is_nan() & y.is_nan()
    )
    for c in floats:
        pair = pl.DataFrame({"x": left[c], "y": right[c]}).cast(pl.Float64)
        ok = pair.select(((x.is_null() == y.is_null()) & close.fill_null(True)).all()).item()
        if not ok:
            return False
    return True
