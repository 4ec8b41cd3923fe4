"""``hcp run``: the profitability job, in one process or as a Bytewax cluster."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from datetime import timedelta

from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main

from flows.dataflow import build_flow
from flows.layout import TopicLayout
from flows.lifecycle import Shutdown
from flows.settings import JobSettings, add_job_args
from hcp.kafka_admin import check_broker

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the profitability job (Kafka -> windows, decisions -> Redis, PostgreSQL)",
        description=(
            "Read GPU and ASIC telemetry and market prices from Kafka, window them in event "
            "time, decide per device and write recommendations to Redis and history to "
            "PostgreSQL. Runs until SIGTERM/SIGINT, or with --once until the topics' current "
            "ends. --processes N runs a Bytewax cluster of N processes on this host; "
            "--process-id/--addresses make this process one member of a multi-host cluster "
            "(docs/scale-out.md)."
        ),
    )
    add_job_args(parser)
    parser.set_defaults(func=run)


def prepare(settings: JobSettings) -> TopicLayout:
    """The run's init step, all of its I/O: broker, topics, schema, recovery directory."""
    check_broker(settings.bootstrap)
    if not settings.no_pg:
        from sinks.postgres.schema import apply_migrations

        apply_migrations(settings.pg)
    layout = TopicLayout.from_broker(settings)
    if settings.recovery_dir is not None:
        from flows.recovery import prepare_recovery_dir

        prepare_recovery_dir(settings, layout.partitions, settings.recovery_partitions)
    return layout


def run(args: argparse.Namespace) -> int:
    settings = JobSettings.from_args(args)
    if settings.processes > 1 and settings.process_id is None:
        from flows.cluster import supervise

        prepare(settings)
        return supervise(settings)
    layout = prepare(settings)
    shutdown = Shutdown()
    flow = build_flow(settings, layout=layout, shutdown=shutdown)

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the current batches and stopping", signum)
        shutdown.request()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    recovery = None
    if settings.recovery_dir is not None:
        recovery = RecoveryConfig(str(settings.recovery_dir))
    cluster: dict[str, object] = {}
    if settings.process_id is not None:
        cluster = {"process_id": settings.process_id, "addresses": settings.address_list}
        log.info("process %d of a %d-process cluster", settings.process_id,
                 len(settings.address_list))
    started = time.perf_counter()
    cli_main(
        flow,
        workers_per_process=settings.workers,
        epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
        recovery_config=recovery,
        **cluster,  # type: ignore[arg-type]
    )
    log.info("job finished in %.1f s", time.perf_counter() - started)
    return 0
