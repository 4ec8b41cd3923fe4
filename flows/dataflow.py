"""The profitability dataflow (SPEC sections 2-4), built from :class:`JobSettings`.

::

    Kafka gpu/asic/prices ──► decode (per fetch) ──┬─► dead letters ──► hcp.dlq
                                                   ├─► raw rows, prices ──► PostgreSQL, Redis
                                                   └─► shard by partition ──► windows + decisions
                                                          ──► fleet: all shards, power caps
                                                                ──► Redis, PostgreSQL
                                                                ──► compliance: commands
                                                                    (hcp.fleet.commands),
                                                                    commanded vs observed

Kafka partitions are the unit of parallelism: a shard owns one partition number of the
telemetry topics and every worker Bytewax gives it; prices are broadcast to every shard.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink

from flows import metrics
from flows.compliance import ComplianceConfig, ComplianceLogic, ComplianceState
from flows.profitability.fleet import FleetLogic, FleetState
from flows.profitability.prices import price_rows
from flows.profitability.shard import ShardConfig, ShardLogic
from flows.router.flow import add_router_branch, router_inputs
from flows.router.router import RouterConfig
from flows.settings import JobSettings
from flows.source import KafkaBatchSource, SourceBatch, shutdown_requested
from hcp.kafka_admin import ensure_topics
from hcp.tags import Out
from sinks.assignments import AssignmentSink
from sinks.commands import CommandSink
from sinks.dlq import DlqSink

__all__ = ["build_flow"]

log = logging.getLogger(__name__)

RAW_TAG = {"gpu": Out.GPU_RAW, "asic": Out.ASIC_RAW}


def build_flow(settings: JobSettings, extra_sinks: Iterable[Sink] = ()) -> Dataflow:
    """The dataflow for ``settings``; ``extra_sinks`` also receive every tagged output."""
    metrics.configure(settings.metrics_port, settings.metrics_host)
    topics = settings.topics
    # A fresh deployment may start the job before any producer: create what is missing.
    ensure_topics(settings.bootstrap, topics.all(), settings.partitions)
    source = KafkaBatchSource(
        settings.bootstrap,
        {
            "gpu": topics.gpu,
            "asic": topics.asic,
            "prices": topics.prices,
            "workloads": topics.workloads,
        },
        batch_size=settings.batch_size,
        once=settings.once,
        idle_timeout_s=settings.idle_timeout_s,
        linger_s=settings.linger_s,
    )
    parts = source.partitions
    n_shards = max(parts[topics.gpu], parts[topics.asic])
    shard_ids = tuple(str(s) for s in range(n_shards))
    price_inputs = tuple(f"{topics.prices}#{p}" for p in range(parts[topics.prices]))

    def shard_inputs(shard: int) -> tuple[str, ...]:
        own = [
            f"{t}#{p}"
            for t in (topics.gpu, topics.asic)
            for p in range(parts[t])
            if p % n_shards == shard
        ]
        return (*own, *price_inputs)

    flow = Dataflow("hcp_profitability")
    batches = op.input("kafka", flow, source)

    def route(batch: SourceBatch) -> list[tuple[str, tuple[str, SourceBatch]]]:
        if batch.kind == "prices":
            return [(s, (s, batch)) for s in shard_ids]
        if batch.kind == "workloads":
            return []  # the router's input only
        shard = str(batch.partition % n_shards)
        return [(shard, (shard, batch))]

    keyed = op.flat_map("route_to_shards", batches, route)

    def shard_config(shard: str) -> ShardConfig:
        return ShardConfig(
            window_ms=settings.window_ms,
            lateness_ms=settings.lateness_ms,
            pool_fee=settings.pool_fee,
            hysteresis=settings.hysteresis,
            dwell_ms=settings.dwell_ms,
            max_price_age_ms=settings.max_price_age_ms,
            flush_on_eof=settings.once and not shutdown_requested(),
            inputs=shard_inputs(int(shard)),
        )

    def build_shard(resume: bytes | None) -> ShardLogic:
        state = pickle.loads(resume) if resume is not None else None
        return ShardLogic(shard_config, state)

    windows = op.stateful_batch("shards", keyed, build_shard)
    to_fleet = op.map("to_fleet", windows, lambda kv: ("fleet", kv[1]))

    def build_fleet(resume: bytes | None) -> FleetLogic:
        state = pickle.loads(resume) if resume is not None else FleetState()
        return FleetLogic(shard_ids, settings.once and not shutdown_requested(), state)

    decided = op.stateful_batch("fleet", to_fleet, build_fleet)
    recs = op.map("untag_fleet", decided, lambda kv: kv[1])

    # The control loop (docs/control-loop.md): commands for the fleet, and how it obeyed.
    def build_compliance(resume: bytes | None) -> ComplianceLogic:
        state = pickle.loads(resume) if resume is not None else ComplianceState()
        config = ComplianceConfig(
            window_ms=settings.window_ms,
            grace_ms=settings.compliance_grace_ms,
            flag_windows=settings.compliance_windows,
        )
        return ComplianceLogic(config, state)

    to_compliance = op.map("to_compliance", recs, lambda item: ("fleet", item))
    judged = op.stateful_batch("compliance", to_compliance, build_compliance)
    control = op.map("untag_compliance", judged, lambda kv: kv[1])

    def side_outputs(batch: SourceBatch) -> list[tuple]:
        out: list[tuple] = []
        if batch.dlq.height:
            out.append((Out.DLQ, batch.dlq))
        if batch.rows.height:
            if batch.kind == "prices":
                rows = price_rows(batch.rows)
                metrics.set_prices(rows)
                out.append((Out.PRICES, rows))
            elif batch.kind in ("gpu", "asic") and settings.store_raw and not settings.no_pg:
                out.append((RAW_TAG[batch.kind], batch.rows))
        return out

    side = op.flat_map("side_outputs", batches, side_outputs)
    # The router places AI work on GPUs; it reads the recommendations so that GPUs told to
    # power down get no work (docs/workloads.md).
    router_config = RouterConfig(lateness_ms=settings.lateness_ms,
                                 assign_timeout_s=settings.assign_timeout_s)
    routed = add_router_branch(batches, recs, router_config, router_inputs(source))
    everything = op.merge("outputs", recs, side, routed, control)
    op.output("dlq_out", everything, DlqSink(settings.bootstrap, topics.dlq))
    op.output("assignments_out", everything, AssignmentSink(settings.bootstrap, topics.assignments))
    op.output("commands_out", everything, CommandSink(settings.bootstrap, topics.commands))
    if not settings.no_redis:
        from sinks.redis.sink import RedisSink

        op.output(
            "redis_out",
            everything,
            RedisSink(
                settings.redis, prefix=settings.redis_prefix, stream_maxlen=settings.stream_maxlen
            ),
        )
    if not settings.no_pg:
        from sinks.postgres.sink import PostgresSink

        op.output("pg_out", everything, PostgresSink(settings.pg, store_raw=settings.store_raw))
    for i, sink in enumerate(extra_sinks):
        op.output(f"extra_out_{i}", everything, sink)
    return flow
