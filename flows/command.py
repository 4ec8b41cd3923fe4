"""``hcp run``: the profitability job, in one process or as a Bytewax cluster."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections import Counter
from datetime import timedelta

from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main

from flows import metrics
from flows.dataflow import build_flow
from flows.layout import TopicLayout
from flows.router import clock as router_clock
from flows.settings import JobSettings, add_job_args
from hcp.config import redis_url
from hcp.errors import ConfigError
from hcp.kafka_admin import check_broker, partition_counts, topic_names
from hcp.redis_client import redis_client
from hcp.shutdown import Shutdown

__all__ = ["RunTotals", "register"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the profitability job (Kafka -> windows, decisions -> Redis, PostgreSQL)",
        description=(
            "Read GPU and ASIC telemetry and market prices from Kafka, window them in event "
            "time, decide per device and write recommendations to Redis and history to "
            "PostgreSQL. Runs until SIGTERM/SIGINT, or with --once until the topics' current "
            "ends and then prints a summary (events per topic, windows, dead letters, late "
            "events). With --once, input topics that do not exist under --topic-prefix are an "
            "error; without it they are created and the job waits for producers. "
            "--processes N runs a Bytewax cluster of N processes on this host; "
            "--process-id/--addresses make this process one member of a multi-host cluster "
            "(docs/scale-out.md)."
        ),
    )
    add_job_args(parser)
    parser.set_defaults(func=run)


def prepare(settings: JobSettings) -> TopicLayout:
    """The run's init step, all of its I/O: checks, topics, schema, recovery directory."""
    # Everything that can be checked locally is checked before the job touches a service,
    # so a typo fails in one line instead of inside a Bytewax worker.
    if not settings.no_redis:
        _check_redis(settings.redis)
    if settings.recovery_dir is not None:
        from flows.recovery import check_recovery_dir

        check_recovery_dir(settings.recovery_dir)
    check_broker(settings.bootstrap)
    _check_input_topics(settings)
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
    endpoint = metrics.MetricsEndpoint(settings.metrics_port, settings.metrics_host)
    if settings.processes > 1 and settings.process_id is None:
        from flows.cluster import supervise

        prepare(settings)
        return supervise(settings)  # each member serves its own /metrics
    shutdown = Shutdown()

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the current batches and stopping", signum)
        shutdown.request()

    # Before /metrics answers: a supervisor that sees the endpoint up may stop the job at
    # once, and a SIGTERM during schema setup or flow building must still stop it cleanly.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    layout = prepare(settings)
    endpoint.serve_now()
    flow = build_flow(settings, layout=layout, shutdown=shutdown, metrics_endpoint=endpoint)
    recovery = None
    if settings.recovery_dir is not None:
        recovery = RecoveryConfig(str(settings.recovery_dir))
    cluster: dict[str, object] = {}
    if settings.process_id is not None:
        cluster = {"process_id": settings.process_id, "addresses": settings.address_list}
        log.info("process %d of a %d-process cluster", settings.process_id,
                 len(settings.address_list))
    before = RunTotals.now()
    started = time.perf_counter()
    cli_main(
        flow,
        workers_per_process=settings.workers,
        epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
        recovery_config=recovery,
        **cluster,  # type: ignore[arg-type]
    )
    seconds = time.perf_counter() - started
    log.info("job finished in %.1f s", seconds)
    if not settings.once:
        return 0
    totals = RunTotals.now() - before
    print(totals.summary(settings, seconds))
    if totals.events == 0:
        print(
            f"hcp run: warning: read no events: the input topics under --topic-prefix "
            f"{settings.topic_prefix!r} are empty",
            file=sys.stderr,
        )
    return 0


def _check_redis(url: str) -> None:
    """A malformed URL or a database the server lacks is a config error; an outage is not."""
    import redis

    try:
        redis_url(url)
    except argparse.ArgumentTypeError as exc:
        msg = f"--redis (HCP_REDIS_URL): {exc}"
        raise ConfigError(msg) from None
    client = redis_client(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.ResponseError as exc:
        # e.g. "DB index is out of range": retrying would never help.
        msg = f"Redis refused the connection settings of --redis (HCP_REDIS_URL): {exc}"
        raise ConfigError(msg) from None
    except redis.RedisError as exc:
        # Unreachable now: the sink waits it out, as for an outage during the run.
        log.warning("Redis is not answering yet (%s); the job retries while it runs", exc)
    finally:
        client.close()


def _check_input_topics(settings: JobSettings) -> None:
    """Refuse (``--once``) or flag (streaming) input topics missing under the prefix.

    Missing topics are usually a mistyped ``--topic-prefix``: ``--once`` would read nothing
    and create empty topics, so it stops; a streaming job may legitimately start before its
    producers, so it creates them and says so.
    """
    t = settings.topics
    wanted = [t.gpu, t.asic, t.prices]
    existing = partition_counts(settings.bootstrap, wanted)
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return
    hint = _prefix_hint(settings)
    if settings.once and len(missing) == len(wanted):
        msg = (
            f"no input topics under --topic-prefix {settings.topic_prefix!r} on "
            f"{settings.bootstrap} (looked for {', '.join(wanted)}){hint}"
        )
        raise ConfigError(msg)
    log.warning(
        "input topics %s do not exist yet: creating them and waiting for producers%s",
        ", ".join(missing),
        hint,
    )


def _prefix_hint(settings: JobSettings) -> str:
    suffix = settings.topics.gpu[len(settings.topic_prefix) :]
    found = [n[: -len(suffix)] for n in topic_names(settings.bootstrap) if n.endswith(suffix)]
    if not found:
        return ""
    shown = ", ".join(repr(p) for p in found[:5])
    return f"; prefixes with data topics on this broker: {shown}"


class RunTotals:
    """In-process totals of the job's counters, to summarise one ``--once`` run."""

    def __init__(self, values: Counter[tuple[str, str]]) -> None:
        self.values = values

    @classmethod
    def now(cls) -> RunTotals:
        values: Counter[tuple[str, str]] = Counter()
        for name, metric, label in (
            ("events", metrics.EVENTS_IN, "topic"),
            ("windows", metrics.WINDOWS_CLOSED, "device_type"),
            ("dead", metrics.BAD_INPUT, "topic"),
            ("late", metrics.LATE_EVENTS, "kind"),
            ("late_router", router_clock.LATE, "kind"),
            ("late_commands", router_clock.LATE_COMMANDS, "op"),
        ):
            for family in metric.collect():
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        values[(name, sample.labels.get(label, ""))] += sample.value
        # Every late drop in one count: the profitability shards' and the router's.
        for (name, label), v in list(values.items()):
            if name == "late_router":
                values[("late", f"router {label}")] += v
        return cls(values)

    def __sub__(self, other: RunTotals) -> RunTotals:
        diff = Counter(self.values)
        diff.subtract(other.values)
        return RunTotals(diff)

    def total(self, name: str) -> int:
        return int(sum(v for (n, _), v in self.values.items() if n == name))

    @property
    def events(self) -> int:
        return self.total("events")

    def _parts(self, name: str, strip: str = "") -> str:
        parts = sorted(
            (label.removeprefix(strip), int(v))
            for (n, label), v in self.values.items()
            if n == name and v
        )
        return f" ({', '.join(f'{label} {v:,}' for label, v in parts)})" if parts else ""

    def summary(self, settings: JobSettings, seconds: float) -> str:
        """One line: events per topic, windows per device type, dead letters, late events."""
        prefix = settings.topic_prefix
        return (
            f"once: {self.events:,} events{self._parts('events', prefix)}; "
            f"{self.total('windows'):,} device windows closed{self._parts('windows')}; "
            f"{self.total('dead'):,} dead letters{self._parts('dead', prefix)}; "
            f"{self.total('late'):,} late events dropped{self._parts('late')}; "
            f"{self.total('late_commands'):,} late workload commands applied at the "
            f"router's time{self._parts('late_commands')}; "
            f"{seconds:.1f} s"
        )
