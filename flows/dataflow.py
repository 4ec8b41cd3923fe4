"""The profitability dataflow (SPEC sections 2-4), built from :class:`JobSettings`.

::

    Kafka gpu/asic/prices ──► decode (per fetch) ──┬─► dead letters ──► hcp.dlq
                                                   ├─► raw rows, prices ──► PostgreSQL, Redis
                                                   └─► shard by partition ──► windows + decisions
                          site groups (crc32(site) % shards): power caps ◄──┘
                                 ├─► windows, recs ──► PostgreSQL (from the group's worker)
                                 └─► fleet (the one global step): whole windows sorted by
                                       device id ──► Redis stream + hashes, workload router
                                       ──► compliance: commands (hcp.fleet.commands),
                                           commanded vs observed

Kafka partitions are the unit of parallelism: a shard owns one partition number of the
telemetry topics and every worker Bytewax gives it; prices are broadcast to every shard.
A site group owns a fixed subset of sites (a site is the scope of a power cap). The fleet
step only concatenates and sorts; its cost and why it exists: docs/scale-out.md.

Building the flow does no I/O: partition counts come from a :class:`TopicLayout`, checked
against the broker when the flow runs (flows/layout.py).
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows import metrics
from flows.compliance import ComplianceConfig, ComplianceLogic, ComplianceState
from flows.layout import TopicLayout
from flows.profitability.fleet import (
    FleetLogic,
    FleetState,
    SiteGroupLogic,
    split_by_site_group,
)
from flows.profitability.prices import price_rows
from flows.profitability.shard import ShardConfig, ShardLogic
from flows.router.flow import add_router_branch, router_config, router_inputs
from flows.settings import JobSettings
from flows.source import KafkaBatchSource, SourceBatch
from hcp.shutdown import Shutdown
from hcp.tags import Out
from sinks.assignments import AssignmentSink
from sinks.commands import CommandSink
from sinks.dlq import DlqSink
from sinks.overlap import OverlappedSinks

__all__ = ["TimedLogic", "build_flow"]

log = logging.getLogger(__name__)

RAW_TAG = {"gpu": Out.GPU_RAW, "asic": Out.ASIC_RAW}


class TimedLogic(StatefulBatchLogic):
    """Wraps a step's logic to count its time in ``hcp_stage_seconds{stage}``."""

    def __init__(self, inner: StatefulBatchLogic, stage: str) -> None:
        self.inner = inner
        self._timer = metrics.STAGE_SECONDS.labels(stage)

    def on_batch(self, values: list) -> tuple[list, bool]:
        started = time.perf_counter()
        try:
            return self.inner.on_batch(values)
        finally:
            self._timer.observe(time.perf_counter() - started)

    def on_eof(self) -> tuple[list, bool]:
        started = time.perf_counter()
        try:
            return self.inner.on_eof()
        finally:
            self._timer.observe(time.perf_counter() - started)

    def snapshot(self) -> bytes:
        return self.inner.snapshot()


def _redis_sink(settings: JobSettings, shutdown: Shutdown | None) -> Sink:
    from sinks.redis.sink import RedisSink

    return RedisSink(
        settings.redis,
        prefix=settings.redis_prefix,
        stream_maxlen=settings.stream_maxlen,
        stream_changed_only=settings.redis_stream == "changed",
        shutdown=shutdown,
    )


def _pg_sink(settings: JobSettings, shutdown: Shutdown | None) -> Sink:
    from sinks.postgres.sink import PostgresSink

    return PostgresSink(settings.pg, store_raw=settings.store_raw,
                        connections=settings.pg_connections, shutdown=shutdown)


def _store(
    step_id: str,
    to_redis: Stream[Any],
    to_pg: Stream[Any],
    settings: JobSettings,
    shutdown: Shutdown | None,
) -> None:
    """One output step writing ``to_redis`` to Redis and ``to_pg`` to PostgreSQL at once
    (OverlappedSinks: where a worker holds both writes, they overlap); a store that is
    turned off is left out."""
    sinks: dict[str, Sink] = {}
    addressed = []
    if not settings.no_redis:
        sinks["redis"] = _redis_sink(settings, shutdown)
        addressed.append(op.map(f"{step_id}_redis", to_redis, lambda item: ("redis", item)))
    if not settings.no_pg:
        sinks["pg"] = _pg_sink(settings, shutdown)
        addressed.append(op.map(f"{step_id}_pg", to_pg, lambda item: ("pg", item)))
    if sinks:
        op.output(step_id, op.merge(f"{step_id}_items", *addressed), OverlappedSinks(sinks))


def build_flow(
    settings: JobSettings,
    extra_sinks: Iterable[Sink] = (),
    *,
    layout: TopicLayout | None = None,
    shutdown: Shutdown | None = None,
    metrics_endpoint: metrics.MetricsEndpoint | None = None,
) -> Dataflow:
    """The dataflow for ``settings``; ``extra_sinks`` also receive every tagged output.

    ``layout`` defaults to ``--partitions`` for every topic; ``shutdown`` is the run's stop
    request: pass the one your signal handler sets (by default nothing can stop it early);
    ``metrics_endpoint`` is started by the first source partition if not already serving.
    """
    layout = layout or TopicLayout.from_settings(settings)
    shutdown = shutdown or Shutdown()
    topics = settings.topics
    source = KafkaBatchSource(
        settings.bootstrap,
        {
            "gpu": topics.gpu,
            "asic": topics.asic,
            "prices": topics.prices,
            "workloads": topics.workloads,
            "command_results": topics.command_results,
        },
        batch_size=settings.batch_size,
        once=settings.once,
        idle_timeout_s=settings.idle_timeout_s,
        linger_s=settings.linger_s,
        partitions={t: layout.partitions[t] for t in topics.inputs()},
        optional=("command_results",),
        shutdown=shutdown,
        metrics_endpoint=metrics_endpoint
        or metrics.MetricsEndpoint(settings.metrics_port, settings.metrics_host),
    )
    parts = source.partitions
    n_shards = layout.shards(settings)
    shard_ids = tuple(str(s) for s in range(n_shards))
    group_ids = shard_ids  # one site group per shard: as parallel as the input
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
        if batch.kind in ("workloads", "command_results"):
            return []  # the router's input; the agents' results go to PostgreSQL only
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
            flush_on_eof=settings.once,
            inputs=shard_inputs(int(shard)),
            idle_timeout_s=settings.idle_timeout_s,
            counts_late_prices=shard == shard_ids[0],
        )

    def build_shard(resume: bytes | None) -> TimedLogic:
        state = pickle.loads(resume) if resume is not None else None
        return TimedLogic(ShardLogic(shard_config, state, shutdown), "shards")

    windows = op.stateful_batch("shards", keyed, build_shard)

    def to_groups(kv: tuple[str, tuple]) -> list[tuple[str, tuple]]:
        item = kv[1]
        if item[0] == "win":
            _, shard, start, df = item
            return [
                (str(g), (str(g), ("win", shard, start, part)))
                for g, part in split_by_site_group(df, n_shards)
            ]
        return [(g, (g, item)) for g in group_ids]  # ("wm", shard, W): every group

    grouped = op.flat_map("to_site_groups", windows, to_groups)

    def build_group(resume: bytes | None) -> TimedLogic:
        state = pickle.loads(resume) if resume is not None else FleetState()
        return TimedLogic(SiteGroupLogic(shard_ids, settings.once, state, shutdown), "site_groups")

    capped = op.map("untag_site_groups", op.stateful_batch("site_groups", grouped, build_group),
                    lambda kv: kv[1])
    # The groups' windows and recs go to PostgreSQL from the workers that made them.
    group_rows = op.filter("group_rows", capped, lambda item: item[0] in (Out.WINDOWS, Out.RECS))
    to_fleet = op.filter_map(
        "to_fleet", capped, lambda item: ("fleet", item) if item[0] in ("win", "wm") else None
    )

    def build_fleet(resume: bytes | None) -> TimedLogic:
        state = pickle.loads(resume) if resume is not None else FleetState()
        return TimedLogic(FleetLogic(group_ids, settings.once, state, shutdown), "fleet")

    decided = op.stateful_batch("fleet", to_fleet, build_fleet)
    recs = op.map("untag_fleet", decided, lambda kv: kv[1])
    # A window's close gets its own output step, built before the control loop and the
    # router that also read it: a worker runs its steps in the order they were built, so
    # the window reaches Redis before those steps take their turn (about 1 s sooner at
    # 310,000 devices). The groups' device windows and recommendations go to PostgreSQL
    # in the same step, at the same time as the Redis write, not after the router's turn.
    _store("close_out", recs, group_rows, settings, shutdown)

    # The control loop (docs/control-loop.md): commands for the fleet, and how it obeyed.
    def build_compliance(resume: bytes | None) -> TimedLogic:
        state = pickle.loads(resume) if resume is not None else ComplianceState()
        config = ComplianceConfig(
            window_ms=settings.window_ms,
            grace_ms=settings.compliance_grace_ms,
            flag_windows=settings.compliance_windows,
        )
        return TimedLogic(ComplianceLogic(config, state), "compliance")

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
            elif batch.kind == "command_results":
                out.append((Out.COMMAND_RESULTS, batch.rows))
            elif batch.kind in ("gpu", "asic") and settings.store_raw and not settings.no_pg:
                out.append((RAW_TAG[batch.kind], batch.rows))
        return out

    side = op.flat_map("side_outputs", batches, side_outputs)
    # The router places AI work on GPUs; it reads the recommendations so that GPUs told to
    # power down get no work (docs/workloads.md).
    routed = add_router_branch(
        batches,
        recs,
        router_config(settings),
        router_inputs(source),
        shutdown,
        idle_timeout_s=settings.idle_timeout_s,
    )
    # Metering (docs/customers.md): usage per workload and minute from the transitions.
    from flows.metering import add_metering

    metered = add_metering(batches, routed)
    routed = op.merge("routed_and_metered", routed, metered)
    # Redis took whole windows in the close step above (one ordered stream writer), and
    # PostgreSQL each group's rows where they are (keyed upserts, any order); the rest here.
    to_redis = op.merge("redis_outputs", side, routed, control)
    to_pg = op.merge("pg_outputs", side, routed, control)
    group_windows = op.filter("group_windows", group_rows, lambda item: item[0] == Out.WINDOWS)
    everything = op.merge("outputs", recs, group_windows, side, routed, control)
    op.output("dlq_out", side, DlqSink(settings.bootstrap, topics.dlq))
    op.output("assignments_out", routed, AssignmentSink(settings.bootstrap, topics.assignments))
    op.output("commands_out", control, CommandSink(settings.bootstrap, topics.commands))
    _store("history_out", to_redis, to_pg, settings, shutdown)
    for i, sink in enumerate(extra_sinks):
        op.output(f"extra_out_{i}", everything, sink)
    return flow
