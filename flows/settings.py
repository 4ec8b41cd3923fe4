"""Settings of the streaming job: ``hcp run`` flags, or HCP_* variables for ``bytewax.run``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from hcp.config import (
    add_connection_args,
    add_topic_args,
    env_arg,
    env_flag,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from hcp.errors import ConfigError
from hcp.topics import Topics

__all__ = ["JobSettings", "add_job_args"]


@dataclass(frozen=True)
class JobSettings:
    """Everything the profitability job needs to build its dataflow."""

    bootstrap: str = "127.0.0.1:9092"
    redis: str = "redis://127.0.0.1:6379/0"
    pg: str = "postgresql://127.0.0.1:5432/hcp"
    topic_prefix: str = "hcp."
    partitions: int = 8
    redis_prefix: str = "hcp:"
    window_s: float = 60.0
    lateness_s: float = 5.0
    idle_timeout_s: float = 30.0
    pool_fee: float = 0.0
    hysteresis: float = 0.05
    dwell_s: float = 600.0
    batch_size: int = 50_000
    linger_s: float = 0.1
    stream_maxlen: int = 1_000_000
    once: bool = False
    store_raw: bool = True
    no_redis: bool = False
    no_pg: bool = False
    metrics_port: int = 9464
    metrics_host: str = "127.0.0.1"
    recovery_dir: Path | None = None
    snapshot_interval_s: float = 10.0
    recovery_partitions: int = 8
    workers: int = 1
    processes: int = 1
    process_id: int | None = None
    addresses: str | None = None

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def window_ms(self) -> int:
        return round(self.window_s * 1000)

    @property
    def lateness_ms(self) -> int:
        return round(self.lateness_s * 1000)

    @property
    def dwell_ms(self) -> int:
        return round(self.dwell_s * 1000)

    def validate(self) -> JobSettings:
        if self.window_ms < 1000 or 86_400_000 % self.window_ms != 0:
            msg = f"--window-s must divide a day into whole windows of >= 1 s, got {self.window_s}"
            raise ConfigError(msg)
        if not 0 <= self.pool_fee < 1:
            msg = f"--pool-fee must be in [0, 1), got {self.pool_fee}"
            raise ConfigError(msg)
        if not 0 <= self.hysteresis < 1:
            msg = f"--hysteresis must be in [0, 1), got {self.hysteresis}"
            raise ConfigError(msg)
        if (self.process_id is None) != (self.addresses is None):
            msg = "--process-id and --addresses go together (one cluster member per host)"
            raise ConfigError(msg)
        if self.process_id is not None and not 0 <= self.process_id < len(self.address_list):
            msg = (
                f"--process-id {self.process_id} is not in 0..{len(self.address_list) - 1} "
                f"(one per address in --addresses)"
            )
            raise ConfigError(msg)
        return self

    @property
    def address_list(self) -> list[str]:
        """The cluster's ``host:port`` addresses, process 0 first (empty: no cluster)."""
        if self.addresses is None:
            return []
        text = self.addresses
        if Path(text).is_file():  # an addresses file: one host:port a line
            text = Path(text).read_text().replace("\n", ";")
        return [a.strip() for a in text.split(";") if a.strip()]

    @property
    def total_workers(self) -> int:
        """Workers over every process of the cluster."""
        processes = len(self.address_list) or self.processes
        return processes * self.workers

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> JobSettings:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names}
        if hasattr(args, "no_raw"):
            values["store_raw"] = not args.no_raw
        if values.get("recovery_dir") is not None:
            values["recovery_dir"] = Path(values["recovery_dir"])
        return cls(**values).validate()

    @classmethod
    def from_env(cls) -> JobSettings:
        """Settings from HCP_* variables alone, for ``python -m bytewax.run flows.job``."""
        parser = argparse.ArgumentParser(add_help=False)
        add_job_args(parser)
        return cls.from_args(parser.parse_args([]))


def add_job_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``hcp run``; each falls back to the HCP_* variable named in its help."""
    add_connection_args(parser)
    add_topic_args(parser)
    env_arg(
        parser,
        "--redis-prefix",
        env="HCP_REDIS_PREFIX",
        default="hcp:",
        help="prefix of every Redis key the job writes",
    )
    g = parser.add_argument_group("event time and decisions")
    env_arg(
        g,
        "--window-s",
        env="HCP_WINDOW_S",
        default=60.0,
        type=non_negative_float,
        help="tumbling window length in seconds of event time",
    )
    env_arg(
        g,
        "--lateness-s",
        env="HCP_LATENESS_S",
        default=5.0,
        type=non_negative_float,
        help="allowed lateness: events further behind their partition are counted and dropped",
    )
    env_arg(
        g,
        "--idle-timeout-s",
        env="HCP_IDLE_TIMEOUT_S",
        default=30.0,
        type=non_negative_float,
        help="wall seconds after which a silent partition stops holding windows open",
    )
    env_arg(
        g,
        "--pool-fee",
        env="HCP_POOL_FEE",
        default=0.0,
        type=non_negative_float,
        help="mining pool fee as a fraction of revenue",
    )
    env_arg(
        g,
        "--hysteresis",
        env="HCP_HYSTERESIS",
        default=0.05,
        type=non_negative_float,
        help="ASIC switch margin as a fraction of expected revenue",
    )
    env_arg(
        g,
        "--dwell-s",
        env="HCP_DWELL_S",
        default=600.0,
        type=non_negative_float,
        help="minimum event-time seconds between two ASIC switches",
    )
    r = parser.add_argument_group("running")
    env_flag(
        r,
        "--once",
        env="HCP_ONCE",
        help="process the topics up to their current ends, close every window, flush, exit",
    )
    env_arg(
        r,
        "--workers",
        env="HCP_WORKERS",
        default=1,
        type=positive_int,
        help="Bytewax worker threads in this process",
    )
    env_arg(
        r,
        "--processes",
        env="HCP_PROCESSES",
        default=1,
        type=positive_int,
        help="run the job as a Bytewax cluster of this many processes on this host "
        "(each with --workers threads); hcp run supervises them",
    )
    env_arg(
        r,
        "--process-id",
        env="HCP_PROCESS_ID",
        default=None,
        type=non_negative_int,
        help="this process's index in a multi-host cluster (with --addresses; "
        "docs/scale-out.md)",
    )
    env_arg(
        r,
        "--addresses",
        env="HCP_ADDRESSES",
        default=None,
        help="every cluster process's host:port, separated by ';', or a file with one a "
        "line; process 0 first",
    )
    env_arg(
        r,
        "--batch-size",
        env="HCP_BATCH_SIZE",
        default=50_000,
        type=positive_int,
        help="most messages taken from one partition per fetch",
    )
    env_arg(
        r,
        "--linger-s",
        env="HCP_LINGER_S",
        default=0.1,
        type=non_negative_float,
        help="longest a partition gathers live messages before handing them on as one batch",
    )
    env_arg(
        r,
        "--stream-maxlen",
        env="HCP_STREAM_MAXLEN",
        default=1_000_000,
        type=positive_int,
        help="approximate MAXLEN of the Redis recommendation stream",
    )
    env_arg(
        r,
        "--metrics-port",
        env="HCP_METRICS_PORT",
        default=9464,
        type=int,
        help="port of the Prometheus /metrics endpoint; 0 turns it off",
    )
    env_arg(
        r,
        "--metrics-host",
        env="HCP_METRICS_HOST",
        default="127.0.0.1",
        help="address the /metrics endpoint listens on (0.0.0.0 in a container)",
    )
    env_flag(
        r,
        "--no-raw",
        env="HCP_NO_RAW",
        help="do not store raw GPU and ASIC telemetry in PostgreSQL (prices are always kept)",
    )
    env_flag(r, "--no-redis", env="HCP_NO_REDIS", help="do not write to Redis")
    env_flag(r, "--no-pg", env="HCP_NO_PG", help="do not write to PostgreSQL")
    env_arg(
        r,
        "--recovery-dir",
        env="HCP_RECOVERY_DIR",
        default=None,
        help="Bytewax recovery directory; resume from its snapshots (off when unset)",
    )
    env_arg(
        r,
        "--snapshot-interval-s",
        env="HCP_SNAPSHOT_INTERVAL_S",
        default=10.0,
        type=non_negative_float,
        help="seconds between recovery snapshots",
    )
    env_arg(
        r,
        "--recovery-partitions",
        env="HCP_RECOVERY_PARTITIONS",
        default=8,
        type=positive_int,
        help="recovery partitions made in a new --recovery-dir: the most workers, over all "
        "processes, the job may ever resume with",
    )
