"""Drive a :class:`~generators.simulation.Simulation` into Kafka on a simulated clock.

``speed`` is simulated seconds per wall second (``inf`` = as fast as the broker takes).
At finite speed each block of simulated seconds is released when the wall clock reaches
it, and the run lasts about ``duration / speed`` wall seconds; at ``inf`` blocks are made
as large as ~64k messages allow, which amortises the per-batch polars and Kafka overheads.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from generators.producer import BulkProducer, create_topics
from generators.simulation import STREAMS, SimConfig, Simulation
from hcp.kafka_admin import check_broker
from hcp.topics import Topics

__all__ = ["Progress", "Summary", "generate", "stream_topics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress reports: simulated time reached and messages so far."""

    sim_ts_ms: int
    seconds_done: int
    events: int
    wall_s: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Summary:
    """What a run wrote: messages per topic and the wall time it took."""

    counts: dict[str, int] = field(default_factory=dict)
    seconds: int = 0
    wall_s: float = 0.0

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0

    def line(self) -> str:
        per_topic = ", ".join(f"{t}={n}" for t, n in self.counts.items())
        return (
            f"generated {self.events} events for {self.seconds} simulated s in "
            f"{self.wall_s:.2f} s ({self.events_per_s:,.0f} events/s): {per_topic}"
        )


def stream_topics(topics: Topics) -> dict[str, str]:
    """Simulation stream -> topic name."""
    return dict(
        zip(STREAMS, (topics.gpu, topics.asic, topics.prices, topics.workloads), strict=True)
    )


def _follow(
    bootstrap: str, topics: Topics, then: Callable[[Simulation, int], None] | None
) -> Callable[[Simulation, int], None]:
    """An ``on_second`` hook that applies the router's assignments to the GPU fleet."""
    from hcp.assignments import AssignmentReader

    reader = AssignmentReader(bootstrap, topics.assignments)

    def hook(sim: Simulation, second: int) -> None:
        # Work runs for its full duration from when this simulated second sees it.
        reader.poll(sim.gpu, timeout_s=0, now_ms=sim.config.start_ms + second * 1000)
        if then is not None:
            then(sim, second)

    return hook


def _obey(
    bootstrap: str, topics: Topics, then: Callable[[Simulation, int], None] | None
) -> Callable[[Simulation, int], None]:
    """An ``on_second`` hook that hands the job's fleet commands to the simulation."""
    from hcp.commands import CommandReader

    reader = CommandReader(bootstrap, topics.commands)

    def hook(sim: Simulation, second: int) -> None:
        msgs = reader.poll(timeout_s=0)
        if msgs and sim.control is not None:
            sim.control.receive(sim, msgs, sim.config.start_ms + second * 1000)
        if then is not None:
            then(sim, second)

    return hook


def _block_seconds(config: SimConfig, speed: float, target_rows: int = 65_536) -> int:
    per_second = config.gpus + config.asics
    block = max(1, min(60, target_rows // max(per_second, 1)))
    if math.isfinite(speed):
        # Release data at most ~0.2 wall seconds early.
        block = max(1, min(block, int(speed * 0.2)))
    return block


def generate(
    config: SimConfig,
    bootstrap: str,
    topics: Topics,
    *,
    speed: float = math.inf,
    partitions: int = 8,
    progress: Callable[[Progress], None] | None = None,
    progress_interval_s: float = 5.0,
    on_second: Callable[[Simulation, int], None] | None = None,
    producer_config: dict[str, Any] | None = None,
) -> Summary:
    """Simulate ``config.duration_s`` seconds and write them to ``topics``.

    Raises :class:`~hcp.errors.BrokerUnreachableError` within seconds when nobody answers
    at ``bootstrap``, and :class:`~generators.producer.DeliveryError` if any message failed.
    """
    check_broker(bootstrap)
    names = stream_topics(topics)
    wanted = [names[s] for s in STREAMS]
    counts = create_topics(bootstrap, wanted, partitions)
    sim = Simulation(config, partitions={s: counts[names[s]] for s in STREAMS})
    if config.closed_loop:
        create_topics(bootstrap, [topics.assignments], partitions)
        on_second = _follow(bootstrap, topics, on_second)
    if config.control is not None:
        create_topics(bootstrap, [topics.commands], partitions)
        on_second = _obey(bootstrap, topics, on_second)
    sim.on_second = on_second
    producer = BulkProducer(bootstrap, producer_config)
    summary = Summary(counts={names[s]: 0 for s in STREAMS}, seconds=config.duration_s)
    block = _block_seconds(config, speed)
    wall0 = time.monotonic()
    report_every = min(progress_interval_s, 5.0)
    next_report = wall0 + report_every

    behind_warned = False

    def wait_until(sim_s: float) -> None:
        nonlocal behind_warned
        if not math.isfinite(speed):
            return
        target = wall0 + sim_s / speed
        if not behind_warned and time.monotonic() - target > 2.0:
            behind_warned = True
            log.warning(
                "generation is falling behind --speed %g (%.1f s late); lower it or the fleet",
                speed,
                time.monotonic() - target,
            )
        while (left := target - time.monotonic()) > 0:
            producer.poll(min(left, 0.1))

    for first in range(0, config.duration_s, block):
        seconds = min(block, config.duration_s - first)
        wait_until(first)
        for batch in sim.blocks(first, seconds):
            topic = names[batch.stream]
            producer.send(topic, batch.keys, batch.values, batch.partitions)
            summary.counts[topic] += len(batch.values)
        now = time.monotonic()
        if now >= next_report:
            next_report = now + report_every
            producer.poll()  # serve failure reports during long runs, not only at close
            if progress is not None:
                done = first + seconds
                sim_ms = config.start_ms + done * 1000
                progress(Progress(sim_ms, done, summary.events, now - wall0))
    wait_until(config.duration_s)
    producer.close()
    summary.wall_s = time.monotonic() - wall0
    log.debug("%s", summary.line())
    return summary
