"""The workload router in a Bytewax dataflow: a branch for the main job, or its own job.

::

    Kafka workloads/gpu/prices ──► decode ──┬─► router (one stateful step, key "router")
    fleet stage: recs, fleet_wm (optional) ─┘             │
            ("workload_events", df) ◄─────────────────────┤──► Redis hash + stream, PostgreSQL
            ("assignments", [msg])  ◄─────────────────────┘──► hcp.workloads.assignments

The router is one stateful step: it needs the whole fleet and the whole queue to decide,
and at 10,000 GPUs a round takes tens of milliseconds (docs/workloads.md). It routes in
event-time ticks (flows/router/clock.py): a tick runs once the router's watermark, and in
the main job the fleet stage's, has passed it, with its inputs in a canonical order. The
same input topics therefore give the same placements whatever the batch size, the worker
count or the order in which partitions are read.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulBatchLogic

from flows.router.clock import GPU_COLUMNS, RouterClock
from flows.router.router import Router, RouterConfig
from flows.source import KafkaBatchSource, SourceBatch
from hcp.shutdown import Shutdown
from hcp.tags import Out
from sinks.assignments import AssignmentSink

__all__ = [
    "ROUTED_KINDS",
    "RouterLogic",
    "add_router_branch",
    "build_router_flow",
    "router_inputs",
]

log = logging.getLogger(__name__)

ROUTED_KINDS = ("workloads", "gpu", "prices")
_KEY = "router"


class RouterLogic(StatefulBatchLogic[tuple, tuple, bytes]):
    """Feeds tagged items to a :class:`RouterClock` and emits what its ticks decide.

    Items: ``("src", kind, input_id, rows, eof, idle)`` (a source fetch or heartbeat),
    ``("recs", df)`` (recommendations with ``window_end``) and ``("fleet_wm", wm)`` (the
    fleet stage's closed-window boundary). Emits ``("workload_events", df)``,
    ``("assignments", [message, ...])`` and ``("gpu_health", df)`` (cordon changes,
    ``hcp.schemas.GPU_HEALTH_SCHEMA``).
    """

    def __init__(self, clock: RouterClock, shutdown: Shutdown | None = None) -> None:
        self.clock = clock
        self.shutdown = shutdown or Shutdown()

    @property
    def router(self) -> Router:
        return self.clock.router

    def on_batch(self, values: list[tuple]) -> tuple[list[tuple], bool]:
        c = self.clock
        for item in values:
            tag = item[0]
            if tag == "src":
                _, kind, input_id, rows, eof, idle = item
                c.add_batch(kind, input_id, rows, eof, idle)
            elif tag == Out.RECS:
                c.add_recs(item[1])
            elif tag == Out.FLEET_WM:
                c.add_fleet_wm(item[1])
        c.advance()
        return self._drain(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple], bool]:
        # --once: the input is complete, so every remaining tick can run. Not on SIGTERM:
        # the pending inputs stay in the snapshot and run after a resume.
        if not self.shutdown.requested:
            self.clock.advance(final=True)
        return self._drain(), StatefulBatchLogic.RETAIN

    def _drain(self) -> list[tuple]:
        events, msgs = self.clock.router.drain()
        out: list[tuple] = []
        if events.height:
            out.append((Out.WORKLOAD_EVENTS, events))
        if msgs:
            out.append((Out.ASSIGNMENTS, msgs))
        health = self.clock.router.drain_health()
        if health.height:
            out.append((Out.GPU_HEALTH, health))
        reservations = self.clock.router.drain_reservations()
        if reservations.height:
            out.append((Out.RESERVATIONS, reservations))
        return out

    def snapshot(self) -> bytes:
        return pickle.dumps(self.clock, protocol=pickle.HIGHEST_PROTOCOL)


def _router_items(batch: SourceBatch) -> list[tuple[str, tuple]]:
    # Heartbeats too: their eof/idle flags move the router's watermark.
    if batch.kind in ROUTED_KINDS:
        rows = batch.rows
        if batch.kind == "gpu" and rows.height:
            rows = rows.select(c for c in GPU_COLUMNS if c in rows.columns)
        return [(_KEY, ("src", batch.kind, batch.input_id, rows, batch.eof, batch.idle))]
    return []


def _rec_items(item: Any) -> list[tuple[str, tuple]]:
    if not (isinstance(item, tuple) and len(item) == 2):
        return []
    if item[0] == Out.FLEET_WM:
        return [(_KEY, (Out.FLEET_WM, int(item[1])))]
    if item[0] == Out.RECS:
        df = item[1]
        if isinstance(df, pl.DataFrame) and df.height and "action" in df.columns:
            cols = [c for c in ("device_id", "device_type", "action", "window_end")
                    if c in df.columns]
            return [(_KEY, (Out.RECS, df.select(cols)))]
    return []


def router_inputs(source: KafkaBatchSource) -> tuple[str, ...]:
    """The ``topic#partition`` ids of ``source`` that the router reads."""
    out = []
    for part in source.layout_parts():
        kind, topic, p = part.split("|")
        if kind in ROUTED_KINDS:
            out.append(f"{topic}#{p}")
    return tuple(out)


def _find_inputs(batches: Stream[SourceBatch]) -> tuple[str, ...]:
    """The router inputs of the KafkaBatchSource that feeds ``batches``, if there is one.

    Lets ``add_router_branch(batches, recs)`` know every partition from the start, so the
    watermark cannot run ahead of a partition that has not reported yet.
    """
    flow = getattr(getattr(batches, "_scope", None), "flow", None)
    for step in getattr(flow, "substeps", ()):
        source = getattr(step, "source", None)
        down = getattr(getattr(step, "down", None), "stream_id", None)
        if isinstance(source, KafkaBatchSource) and down == batches.stream_id:
            return router_inputs(source)
    return ()


def add_router_branch(
    batches: Stream[SourceBatch],
    recs: Stream[Any] | None = None,
    config: RouterConfig | None = None,
    inputs: tuple[str, ...] | None = None,
    shutdown: Shutdown | None = None,
    idle_timeout_s: float = 0.0,
) -> Stream[tuple]:
    """Add the router to a flow; returns its tagged outputs.

    ``batches`` is a :class:`KafkaBatchSource` stream that includes the ``workloads``,
    ``gpu`` and ``prices`` kinds; ``recs`` is the fleet stage's output: its ``("recs", df)``
    items carry recommendations (``device_id, device_type, action, window_end``), so
    ``power_down`` GPUs get no work, and its ``("fleet_wm", wm)`` items say which windows
    are final. ``inputs`` are the ``topic#partition`` ids to wait for (see
    :func:`router_inputs`); by default they are read from the flow's source. ``shutdown``
    is the run's stop request (a stopped run keeps its pending ticks for a resume).
    ``idle_timeout_s`` is the source's: an input idle through a pause holds the watermark
    that long after the pause ends (flows/progress.py).
    """
    if inputs is None:
        inputs = _find_inputs(batches)
        if not inputs:
            log.warning("router inputs unknown: the watermark waits only for inputs seen")
    items = op.flat_map("router_inputs", batches, _router_items)
    if recs is not None:
        items = op.merge("router_with_recs", items, op.flat_map("router_recs", recs, _rec_items))
    gated = recs is not None

    def build(resume: bytes | None) -> RouterLogic:
        if resume is None:
            clock = RouterClock.create(Router(config), inputs, gated, idle_timeout_s)
            return RouterLogic(clock, shutdown)
        state = pickle.loads(resume)
        if isinstance(state, Router):  # a snapshot from before the tick clock
            state = RouterClock.create(state, inputs, gated, idle_timeout_s)
        return RouterLogic(state, shutdown)

    routed = op.stateful_batch("router", items, build)
    return op.map("untag_router", routed, lambda kv: kv[1])


def router_config(settings: Any) -> RouterConfig:
    """The router's tunables from the job settings (late means the same as in the
    profitability flow: --lateness-s)."""
    return RouterConfig(lateness_ms=settings.lateness_ms,
                        assign_timeout_s=settings.assign_timeout_s,
                        reservations=settings.reservations)


def build_router_flow(settings: Any, config: RouterConfig | None = None) -> Dataflow:
    """A dataflow running only the router, from :class:`flows.settings.JobSettings`."""
    topics = settings.topics
    source = KafkaBatchSource(
        settings.bootstrap,
        {"workloads": topics.workloads, "gpu": topics.gpu, "prices": topics.prices},
        batch_size=settings.batch_size,
        once=settings.once,
        idle_timeout_s=settings.idle_timeout_s,
        linger_s=settings.linger_s,
    )
    flow = Dataflow("hcp_workload_router")
    batches = op.input("kafka", flow, source)
    if config is None:
        # Late means the same here as in the profitability flow: --lateness-s.
        config = router_config(settings)
    out = add_router_branch(
        batches, None, config, router_inputs(source), idle_timeout_s=settings.idle_timeout_s
    )
    dlq = op.flat_map(
        "router_dlq", batches, lambda b: [(Out.DLQ, b.dlq)] if b.dlq.height else []
    )
    everything = op.merge("router_outputs", out, dlq)
    from sinks.dlq import DlqSink

    op.output("dlq_out", everything, DlqSink(settings.bootstrap, topics.dlq))
    op.output("assignments_out", everything, AssignmentSink(settings.bootstrap, topics.assignments))
    if not settings.no_redis:
        from sinks.redis.sink import RedisSink

        op.output("redis_out", everything, RedisSink(settings.redis, prefix=settings.redis_prefix,
                                                     stream_maxlen=settings.stream_maxlen))
    if not settings.no_pg:
        from sinks.postgres.sink import PostgresSink

        op.output("pg_out", everything, PostgresSink(settings.pg, store_raw=False))
    return flow
