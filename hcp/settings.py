"""Every setting shared by more than one entry point, declared once.

A :class:`Setting` holds a knob's flag, ``HCP_*`` variable, default, parser and help. The job
(``hcp run`` and ``python -m bytewax.run flows.job``), the simulators, the demo, the
read-only commands and the benchmark baseline all add their flags with
:func:`add_settings`, so a knob cannot drift between them. A command may start a knob at
another default (the demo runs 24 GPUs for 20 minutes), never redeclare it. Settings that
only one command knows stay next to that command, declared once there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hcp.config import (
    env_arg,
    env_flag,
    non_negative_float,
    non_negative_int,
    positive_int,
    redis_url,
    speed_value,
    stream_mode,
    telemetry_encoding,
)

__all__ = ["SETTINGS", "Setting", "add_settings", "default"]


@dataclass(frozen=True)
class Setting:
    """One knob: ``--flag`` and ``HCP_*`` variable, its parser, default and help text."""

    name: str
    env: str
    default: Any
    help: str
    type: Callable[[str], Any] = str
    group: str = "settings"
    switch: bool = False  # an on/off flag: present = on; the variable takes 1/0, true/false

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_CONN = "connections"
_TOPICS = "topics"
_TIME = "event time and decisions"
_RUN = "running"
_SIM = "simulation"
_CONTROL = "control loop (docs/control-loop.md)"
_CLUSTER = "cluster"

SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        # Where the services are.
        Setting("bootstrap", "HCP_KAFKA_BOOTSTRAP", "127.0.0.1:9092",
                "Kafka bootstrap servers, host:port[,host:port]", group=_CONN),
        Setting("redis", "HCP_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis URL", redis_url,
                _CONN),
        Setting("pg", "HCP_PG_DSN", "postgresql://127.0.0.1:5432/hcp", "PostgreSQL DSN",
                group=_CONN),
        Setting("redis_prefix", "HCP_REDIS_PREFIX", "hcp:",
                "prefix of every Redis key HCP writes and reads", group=_CONN),
        Setting("topic_prefix", "HCP_TOPIC_PREFIX", "hcp.",
                "prefix of every topic name (the contract's names use 'hcp.')", group=_TOPICS),
        Setting("partitions", "HCP_PARTITIONS", 8, "partitions of topics created when missing",
                positive_int, group=_TOPICS),
        # Event time and decisions (docs/contract.md sections 2 and 3).
        Setting("window_s", "HCP_WINDOW_S", 60.0,
                "tumbling window length in seconds of event time", non_negative_float, _TIME),
        Setting("lateness_s", "HCP_LATENESS_S", 5.0,
                "allowed lateness: events further behind their partition are counted and dropped",
                non_negative_float, _TIME),
        Setting("idle_timeout_s", "HCP_IDLE_TIMEOUT_S", 30.0,
                "wall seconds after which a silent partition stops holding windows open",
                non_negative_float, _TIME),
        Setting("pool_fee", "HCP_POOL_FEE", 0.0, "mining pool fee as a fraction of revenue",
                non_negative_float, _TIME),
        Setting("hysteresis", "HCP_HYSTERESIS", 0.05,
                "ASIC switch margin as a fraction of expected revenue", non_negative_float, _TIME),
        Setting("dwell_s", "HCP_DWELL_S", 600.0,
                "minimum event-time seconds between two ASIC switches", non_negative_float, _TIME),
        Setting("max_price_age_s", "HCP_MAX_PRICE_AGE_S", 900.0,
                "stale-price fail-safe: a decision whose electricity, BTC or GPU spot price is "
                "older than this (event-time seconds) keeps its last action, reason "
                "stale_price; 0 turns it off", non_negative_float, _TIME),
        # The control loop (docs/control-loop.md).
        Setting("compliance_grace_s", "HCP_COMPLIANCE_GRACE_S", 60.0,
                "event-time seconds a command is in force before the device is judged on it",
                non_negative_float, _CONTROL),
        Setting("compliance_windows", "HCP_COMPLIANCE_WINDOWS", 3,
                "consecutive judged windows out of step after which a device is flagged",
                positive_int, _CONTROL),
        Setting("ignore_share", "HCP_IGNORE_SHARE", 0.0,
                "share of simulated devices (0-1, seeded) that ignore every fleet command",
                non_negative_float, _CONTROL),
        Setting("assign_timeout_s", "HCP_ASSIGN_TIMEOUT_S", 120.0,
                "event-time seconds a GPU has to start assigned work before the work is "
                "requeued and the GPU backs off; keep it above the lag between the router "
                "and the fleet", non_negative_float, _TIME),
        Setting("reservations", "HCP_RESERVATIONS", 32,
                "how many queue heads that do not fit now reserve the GPUs that free up "
                "soonest; work behind them may use those only if it ends first (0 = off, "
                "docs/workloads.md)", non_negative_int, _TIME),
        # Running the job.
        Setting("once", "HCP_ONCE", False,
                "process the topics up to their current ends, close every window, flush, exit",
                group=_RUN, switch=True),
        Setting("workers", "HCP_WORKERS", 1, "Bytewax worker threads in this process",
                positive_int, _RUN),
        Setting("batch_size", "HCP_BATCH_SIZE", 50_000,
                "most messages taken from one partition per fetch", positive_int, _RUN),
        Setting("linger_s", "HCP_LINGER_S", 0.1,
                "longest a partition gathers live messages before handing them on as one batch",
                non_negative_float, _RUN),
        Setting("stream_maxlen", "HCP_STREAM_MAXLEN", 1_000_000,
                "approximate MAXLEN of the Redis recommendation stream", positive_int, _RUN),
        Setting("redis_stream", "HCP_REDIS_STREAM", "all",
                "what the Redis recommendation stream carries: 'all' (every device every "
                "window) or 'changed' (only devices whose action or reason changed, and new "
                "devices; the per-site snapshots still hold every device: docs/contract.md "
                "section 7)", stream_mode, _RUN),
        Setting("pg_connections", "HCP_PG_CONNECTIONS", 2,
                "PostgreSQL connections per worker: a batch of 100,000 rows or more (a fleet's "
                "window close) writes its tables over this many at once, each table in one "
                "transaction; 1 writes every batch in one transaction", positive_int, _RUN),
        Setting("metrics_port", "HCP_METRICS_PORT", 9464,
                "port of the Prometheus /metrics endpoint; 0 turns it off", int, _RUN),
        Setting("metrics_host", "HCP_METRICS_HOST", "127.0.0.1",
                "address the /metrics endpoint listens on (0.0.0.0 in a container)", group=_RUN),
        Setting("no_raw", "HCP_NO_RAW", False,
                "do not store raw GPU and ASIC telemetry in PostgreSQL (prices are always kept)",
                group=_RUN, switch=True),
        Setting("no_redis", "HCP_NO_REDIS", False, "do not write to Redis", group=_RUN,
                switch=True),
        Setting("no_pg", "HCP_NO_PG", False, "do not write to PostgreSQL", group=_RUN,
                switch=True),
        Setting("recovery_dir", "HCP_RECOVERY_DIR", None,
                "Bytewax recovery directory; resume from its snapshots (off when unset)",
                group=_RUN),
        Setting("snapshot_interval_s", "HCP_SNAPSHOT_INTERVAL_S", 10.0,
                "seconds between recovery snapshots", non_negative_float, _RUN),
        Setting("recovery_partitions", "HCP_RECOVERY_PARTITIONS", 8,
                "recovery partitions made in a new --recovery-dir: the most workers, over all "
                "processes, the job may ever resume with", positive_int, _RUN),
        # The job as a Bytewax cluster (docs/scale-out.md).
        Setting("processes", "HCP_PROCESSES", 1,
                "run the job as a Bytewax cluster of this many processes on this host "
                "(each with --workers threads); hcp run supervises them", positive_int,
                _CLUSTER),
        Setting("process_id", "HCP_PROCESS_ID", None,
                "this process's index in a multi-host cluster (with --addresses)",
                non_negative_int, _CLUSTER),
        Setting("addresses", "HCP_ADDRESSES", None,
                "every cluster process's host:port, separated by ';', or a file with one a "
                "line; process 0 first", group=_CLUSTER),
        # The simulated fleet and market (generators/).
        Setting("seed", "HCP_SEED", 7, "random seed", non_negative_int, _SIM),
        Setting("gpus", "HCP_GPUS", 10, "GPUs", non_negative_int, _SIM),
        Setting("asics", "HCP_ASICS", 50, "ASICs", non_negative_int, _SIM),
        Setting("sites", "HCP_SITES", 3, "sites (site-01 ...)", positive_int, _SIM),
        Setting("duration", "HCP_DURATION", 600, "simulated seconds", positive_int, _SIM),
        Setting("speed", "HCP_SPEED", 1.0,
                "simulated (or recorded) seconds per wall second, or 'max' for as fast as possible",
                speed_value, _SIM),
        Setting("workload_rate", "HCP_WORKLOAD_RATE", 6.0,
                "workload requests per simulated minute", non_negative_float, _SIM),
        Setting("scenario", "HCP_SCENARIO", None,
                "scenario file (docs/generators.md), or the name of a bundled one", group=_SIM),
        Setting("encoding", "HCP_ENCODING", "json",
                "telemetry encoding: json = one message per sample keyed by device; frames = "
                "Arrow IPC frames keyed by site, as site collectors send them (SPEC 1b, each "
                "under 1 MiB)", telemetry_encoding, _SIM),
        Setting("quiet", "HCP_QUIET", False, "no progress lines on stderr", group=_RUN,
                switch=True),
    )
}


def default(name: str) -> Any:
    """The declared default of a setting (for dataclasses that carry settings)."""
    return SETTINGS[name].default


def add_settings(
    parser: argparse.ArgumentParser,
    *names: str,
    defaults: dict[str, Any] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """Add the flags of ``names`` to ``parser``, grouped as declared.

    ``defaults`` starts some knobs at another value for this command; ``helps`` adds a
    command-specific note to a flag's help (what the knob means here).
    """
    defaults = defaults or {}
    helps = helps or {}
    groups = {g.title: g for g in parser._action_groups}
    for name in names:
        s = SETTINGS[name]
        group = groups.get(s.group) or groups.setdefault(
            s.group, parser.add_argument_group(s.group)
        )
        text = s.help + (f"; {helps[name]}" if name in helps else "")
        if s.switch:
            env_flag(group, s.flag, env=s.env, help=text)
        else:
            env_arg(group, s.flag, env=s.env, default=defaults.get(name, s.default),
                    type=s.type, help=text)
