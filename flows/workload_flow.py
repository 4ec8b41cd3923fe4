"""The workload router in a Bytewax dataflow: a branch for the main job, or its own job.

::

    Kafka workloads/gpu/prices ─► decode ─► router (one stateful step, key "router")
    profitability recs (optional) ───────┘    │
            ("workload_events", df) ◄─────────┤──► Redis hash + stream, PostgreSQL
            ("assignments", [msg])  ◄─────────┘──► hcp.workloads.assignments ──► GPU simulator

The router is one stateful step: it needs the whole fleet and the whole queue to decide,
and at 10,000 GPUs a round takes tens of milliseconds (docs/workloads.md). It routes
once per Bytewax batch, at the event time of the newest input it has seen. Decisions
depend on how inputs interleave across batches, so a replay gives the same kind of
outcome, not necessarily the same placements; the event log records what was decided.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulBatchLogic

from flows.router import Router, RouterConfig
from flows.source import KafkaBatchSource, SourceBatch
from flows.workload_sink import AssignmentSink

__all__ = ["ROUTED_KINDS", "RouterLogic", "add_router_branch", "build_router_flow"]

log = logging.getLogger(__name__)

ROUTED_KINDS = ("workloads", "gpu", "prices")
_KEY = "router"


class RouterLogic(StatefulBatchLogic[tuple, tuple, bytes]):
    """Feeds ``(kind, payload)`` items to a :class:`Router` and routes once per batch.

    ``kind`` is a :class:`SourceBatch` kind (its rows are the payload) or ``"recs"`` (a
    recommendations DataFrame). Emits ``("workload_events", df)`` and
    ``("assignments", [message, ...])``.
    """

    def __init__(self, router: Router) -> None:
        self.router = router

    def on_batch(self, values: list[tuple[str, Any]]) -> tuple[list[tuple], bool]:
        r = self.router
        # Requests, prices and recommendations first, so a request and the telemetry that
        # frees a GPU in the same batch meet in one routing round.
        for kind, payload in values:
            if kind == "workloads":
                r.on_requests(payload)
            elif kind == "prices":
                r.on_prices(payload)
            elif kind == "recs":
                r.on_recommendations(payload)
        for kind, payload in values:
            if kind == "gpu":
                r.on_gpu_status(payload)
        r.route()
        events, msgs = r.drain()
        out: list[tuple] = []
        if events.height:
            out.append(("workload_events", events))
        if msgs:
            out.append(("assignments", msgs))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.router, protocol=pickle.HIGHEST_PROTOCOL)


def _router_items(batch: SourceBatch) -> list[tuple[str, tuple[str, pl.DataFrame]]]:
    if batch.kind in ROUTED_KINDS and batch.rows.height:
        return [(_KEY, (batch.kind, batch.rows))]
    return []


def _rec_items(item: Any) -> list[tuple[str, tuple[str, pl.DataFrame]]]:
    if isinstance(item, tuple) and len(item) == 2 and item[0] == "recs":
        df = item[1]
        if isinstance(df, pl.DataFrame) and df.height and "action" in df.columns:
            return [(_KEY, ("recs", df.select("device_id", "device_type", "action")))]
    return []


def add_router_branch(
    batches: Stream[SourceBatch],
    recs: Stream[Any] | None = None,
    config: RouterConfig | None = None,
) -> Stream[tuple]:
    """Add the router to a flow; returns its tagged outputs.

    ``batches`` is a :class:`KafkaBatchSource` stream that includes the ``workloads``,
    ``gpu`` and ``prices`` kinds; ``recs`` is any stream whose ``("recs", df)`` items carry
    recommendations (``device_id, device_type, action``), so ``power_down`` GPUs get no work.
    """
    inputs = op.flat_map("router_inputs", batches, _router_items)
    if recs is not None:
        inputs = op.merge("router_with_recs", inputs, op.flat_map("router_recs", recs, _rec_items))

    def build(resume: bytes | None) -> RouterLogic:
        router = pickle.loads(resume) if resume is not None else Router(config)
        return RouterLogic(router)

    routed = op.stateful_batch("router", inputs, build)
    return op.map("untag_router", routed, lambda kv: kv[1])


def build_router_flow(settings: Any, config: RouterConfig | None = None) -> Dataflow:
    """A dataflow running only the router, from :class:`flows.settings.JobSettings`."""
    topics = settings.topics
    source = KafkaBatchSource(
        settings.bootstrap,
        {"workloads": topics.workloads, "gpu": topics.gpu, "prices": topics.prices},
        batch_size=settings.batch_size,
        once=settings.once,
        idle_timeout_s=settings.idle_timeout_s,
    )
    flow = Dataflow("hcp_workload_router")
    batches = op.input("kafka", flow, source)
    out = add_router_branch(batches, None, config)
    dlq = op.flat_map(
        "router_dlq", batches, lambda b: [("dlq", b.dlq)] if b.dlq.height else []
    )
    everything = op.merge("router_outputs", out, dlq)
    from sinks.dlq import DlqSink

    op.output("dlq_out", everything, DlqSink(settings.bootstrap, topics.dlq))
    op.output("assignments_out", everything, AssignmentSink(settings.bootstrap, topics.assignments))
    if not settings.no_redis:
        from sinks.redis_sink import RedisSink

        op.output("redis_out", everything, RedisSink(settings.redis, prefix=settings.redis_prefix,
                                                     stream_maxlen=settings.stream_maxlen))
    if not settings.no_pg:
        from sinks.pg_sink import PostgresSink

        op.output("pg_out", everything, PostgresSink(settings.pg, store_raw=False))
    return flow
