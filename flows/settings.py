"""Settings of the streaming job: ``hcp run`` flags, or HCP_* variables for ``bytewax.run``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from hcp.errors import ConfigError
from hcp.settings import add_settings, default
from hcp.topics import Topics

__all__ = ["JOB_SETTINGS", "JobSettings", "add_job_args"]


@dataclass(frozen=True)
class JobSettings:
    """Everything the profitability job needs to build its dataflow (hcp/settings.py declares
    each knob's flag, variable, default and help once)."""

    bootstrap: str = default("bootstrap")
    redis: str = default("redis")
    pg: str = default("pg")
    topic_prefix: str = default("topic_prefix")
    partitions: int = default("partitions")
    redis_prefix: str = default("redis_prefix")
    window_s: float = default("window_s")
    lateness_s: float = default("lateness_s")
    idle_timeout_s: float = default("idle_timeout_s")
    pool_fee: float = default("pool_fee")
    hysteresis: float = default("hysteresis")
    dwell_s: float = default("dwell_s")
    max_price_age_s: float = default("max_price_age_s")
    compliance_grace_s: float = default("compliance_grace_s")
    compliance_windows: int = default("compliance_windows")
    assign_timeout_s: float = default("assign_timeout_s")
    reservations: int = default("reservations")
    batch_size: int = default("batch_size")
    linger_s: float = default("linger_s")
    stream_maxlen: int = default("stream_maxlen")
    redis_stream: str = default("redis_stream")
    pg_connections: int = default("pg_connections")
    once: bool = default("once")
    store_raw: bool = not default("no_raw")
    no_redis: bool = default("no_redis")
    no_pg: bool = default("no_pg")
    metrics_port: int = default("metrics_port")
    metrics_host: str = default("metrics_host")
    recovery_dir: Path | None = None  # off unless set
    snapshot_interval_s: float = default("snapshot_interval_s")
    recovery_partitions: int = default("recovery_partitions")
    workers: int = default("workers")
    processes: int = default("processes")
    process_id: int | None = default("process_id")
    addresses: str | None = default("addresses")

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

    @property
    def max_price_age_ms(self) -> int:
        return round(self.max_price_age_s * 1000)

    @property
    def compliance_grace_ms(self) -> int:
        return round(self.compliance_grace_s * 1000)

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
        if not self.assign_timeout_s > 0:
            msg = f"--assign-timeout-s must be positive, got {self.assign_timeout_s}"
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


# The flags of `hcp run`, in --help order.
JOB_SETTINGS = (
    "bootstrap", "redis", "pg", "redis_prefix", "topic_prefix", "partitions",
    "window_s", "lateness_s", "idle_timeout_s", "pool_fee", "hysteresis", "dwell_s",
    "max_price_age_s", "compliance_grace_s", "compliance_windows",
    "assign_timeout_s", "reservations", "once", "workers", "batch_size", "linger_s",
    "stream_maxlen", "redis_stream", "pg_connections",
    "metrics_port", "metrics_host", "no_raw", "no_redis", "no_pg", "recovery_dir",
    "snapshot_interval_s", "recovery_partitions", "processes", "process_id", "addresses",
)


def add_job_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``hcp run``; each falls back to the HCP_* variable named in its help."""
    add_settings(parser, *JOB_SETTINGS)
