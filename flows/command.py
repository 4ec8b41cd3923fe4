"""``hcp run``: the profitability job."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from datetime import timedelta

from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main

from flows.dataflow import build_flow
from flows.settings import JobSettings, add_job_args
from flows.source import request_shutdown
from hcp.errors import HcpError
from hcp.kafka_admin import check_broker, partition_counts

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
            "ends. To scale over processes and hosts use `python -m bytewax.run flows.job` "
            "with the same settings as HCP_* variables."
        ),
    )
    add_job_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = JobSettings.from_args(args)
    check_broker(settings.bootstrap)
    if not settings.no_redis:
        from sinks.redis.sink import check_redis

        check_redis(settings.redis)
    if not settings.no_pg:
        from sinks.postgres.schema import apply_migrations

        apply_migrations(settings.pg)
    flow = build_flow(settings)

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the current batches and stopping", signum)
        request_shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    recovery = None
    if settings.recovery_dir is not None:
        from flows.recovery import prepare_recovery_dir

        t = settings.topics
        parts = partition_counts(settings.bootstrap, [t.gpu, t.asic, t.prices])
        prepare_recovery_dir(settings, parts, settings.recovery_partitions)
        recovery = RecoveryConfig(str(settings.recovery_dir))
    started = time.perf_counter()
    try:
        cli_main(
            flow,
            workers_per_process=settings.workers,
            epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
            recovery_config=recovery,
        )
    except Exception as exc:
        # Bytewax wraps what a step raised; HCP's own errors are one line for the user.
        cause = _hcp_error(exc)
        if cause is None:
            raise
        raise cause from None
    log.info("job finished in %.1f s", time.perf_counter() - started)
    return 0


def _hcp_error(exc: BaseException) -> HcpError | None:
    """The HCP error a step raised, found in the chain of Bytewax's wrapping exceptions."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, HcpError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
