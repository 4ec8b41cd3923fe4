"""Fill a fresh set of topics deterministically for the benchmark.

The events come from the generators' :class:`~generators.simulation.Simulation`: a fleet of
ASICs and GPUs reporting at 1 Hz plus the market, stepped one simulated second at a time
until at least the requested number of events exist. The same seed and sizes give the
same messages in the same partitions in the same order (partitions are ``crc32(key)``,
and the producer is idempotent), so every benchmark run reads the same data. ``progress``
gets the running event count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from hcp.topics import Topics

__all__ = ["FillResult", "FillSpec", "fill_topics", "planned_events"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FillSpec:
    """What to generate. Defaults: the issue's benchmark, 5M events from 310k devices."""

    events: int = 5_000_000
    asics: int = 300_000
    gpus: int = 10_000
    sites: int = 8
    seed: int = 42
    partitions: int = 8
    market: bool = True
    workloads: bool = False

    @property
    def devices(self) -> int:
        return self.asics + self.gpus


@dataclass
class FillResult:
    """Messages produced per topic, the simulated span and the wall time it took."""

    events: int = 0
    seconds: float = 0.0
    simulated_s: int = 0
    start_ms: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _seconds(spec: FillSpec) -> int:
    return max(1, math.ceil(spec.events / max(spec.devices, 1)))


def planned_events(spec: FillSpec) -> int:
    """Telemetry events a fill will produce: whole simulated seconds of the fleet."""
    return _seconds(spec) * spec.devices


def fill_topics(
    bootstrap: str,
    topics: Topics,
    spec: FillSpec | None = None,
    progress: Callable[[int], None] | None = None,
) -> FillResult:
    """Create the input topics and produce at least ``spec.events`` generated events.

    Whole simulated seconds are produced, so the count is rounded up to the next second's
    worth (about ``spec.devices`` events per second plus a few prices). Raises
    :class:`~hcp.errors.HcpError` unless every delivery report succeeds.
    """
    from generators.run import Progress, generate
    from generators.simulation import SimConfig

    spec = spec or FillSpec()
    seconds = _seconds(spec)
    config = SimConfig(
        seed=spec.seed,
        gpus=spec.gpus,
        asics=spec.asics,
        sites=spec.sites,
        duration_s=seconds,
        market=spec.market,
        workloads=spec.workloads,
    )

    def report(p: Progress) -> None:
        if progress:
            progress(p.events)

    summary = generate(config, bootstrap, topics, partitions=spec.partitions, progress=report,
                       progress_interval_s=0.25)
    result = FillResult(events=summary.events, seconds=summary.wall_s, simulated_s=seconds,
                        start_ms=config.start_ms, per_topic=dict(summary.counts))
    if progress:
        progress(result.events)
    log.info("filled %d events (%d simulated s) in %.1f s", result.events, seconds, result.seconds)
    return result
