"""Settings of ``hcp api``: flags, each backed by an ``HCP_*`` variable."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from hcp.config import env_arg, env_flag, non_negative_float, positive_int
from hcp.settings import add_settings, default
from hcp.topics import Topics

__all__ = ["ApiSettings", "add_api_args"]


@dataclass(frozen=True)
class ApiSettings:
    """Everything the app factory needs."""

    host: str = "127.0.0.1"
    port: int = 8080
    bootstrap: str = default("bootstrap")
    redis: str = default("redis")
    pg: str = default("pg")
    redis_prefix: str = default("redis_prefix")
    topic_prefix: str = default("topic_prefix")
    body_limit: int = 4 * 1024 * 1024
    max_staleness_s: float = 10.0
    key_cache_s: float = 5.0
    produce_timeout_s: float = 5.0
    dependency_timeout_s: float = 2.0
    hysteresis: float = default("hysteresis")
    pool_fee: float = default("pool_fee")
    no_read_model: bool = False
    pg_pool: int = 4
    rate_per_s: float = 50.0
    rate_burst: int = 200
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ApiSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})


def add_api_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``hcp api``."""
    group = parser.add_argument_group("server")
    env_arg(group, "--host", env="HCP_API_HOST", default="127.0.0.1", help="address to listen on")
    env_arg(group, "--port", env="HCP_API_PORT", default=8080, type=int, help="port (0: any free)")
    env_arg(group, "--tls-cert", env="HCP_API_TLS_CERT", metavar="PEM",
            help="serve HTTPS with this certificate (chain) file; needs --tls-key")
    env_arg(group, "--tls-key", env="HCP_API_TLS_KEY", metavar="PEM",
            help="the private key of --tls-cert (unencrypted PEM)")
    add_settings(
        parser, "bootstrap", "redis", "pg", "redis_prefix", "topic_prefix", "hysteresis",
        "pool_fee",
        helps={
            "topic_prefix": "workload requests go to <prefix>workloads.requests",
            "hysteresis": "the margin the calculate endpoint decides with (as the job's)",
            "pool_fee": "when a calculate request gives none (as the job's)",
        },
    )
    tuning = parser.add_argument_group("tuning")
    env_arg(
        tuning,
        "--body-limit",
        env="HCP_API_BODY_LIMIT",
        default=4 * 1024 * 1024,
        type=positive_int,
        help="largest request body in bytes; larger ones get 413",
    )
    env_arg(
        tuning,
        "--max-staleness-s",
        env="HCP_API_MAX_STALENESS_S",
        default=10.0,
        type=non_negative_float,
        help="answer 503 instead of in-memory state older than this (Redis unreachable)",
    )
    env_arg(
        tuning,
        "--key-cache-s",
        env="HCP_API_KEY_CACHE_S",
        default=5.0,
        type=non_negative_float,
        help="how long a checked API key is trusted without asking PostgreSQL again",
    )
    env_arg(
        tuning,
        "--produce-timeout-s",
        env="HCP_API_PRODUCE_TIMEOUT_S",
        default=5.0,
        type=non_negative_float,
        help="how long a submission waits for the broker's acknowledgement before 503",
    )
    env_flag(
        tuning,
        "--no-read-model",
        env="HCP_API_NO_READ_MODEL",
        help="read every recommendation from Redis per request instead of the in-process copy",
    )
    # Per-key rate limits (api/ratelimit.py, docs/customers.md).
    env_arg(
        tuning,
        "--rate-per-s",
        env="HCP_API_RATE_PER_S",
        default=50.0,
        type=non_negative_float,
        help="requests a second each API key may make on average (0: no limit); more get 429",
    )
    env_arg(
        tuning,
        "--rate-burst",
        env="HCP_API_RATE_BURST",
        default=200,
        type=positive_int,
        help="requests an API key may make at once before --rate-per-s applies",
    )
