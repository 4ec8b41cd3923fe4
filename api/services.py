"""The API's connections and shared state, made once per process by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.auth import KeyCache
from api.metrics import ApiMetrics
from api.pg import PgPool
from api.problems import ProblemError, unavailable
from api.producer import RequestProducer
from api.ratelimit import RateLimiter
from api.read_model import ReadModel, parse_prices
from api.settings import ApiSettings
from hcp.redis_client import async_redis_client
from sinks.postgres.schema import redact_dsn
from sinks.redis.layout import RedisKeys

__all__ = ["Services", "redis_where"]

log = logging.getLogger(__name__)
STOP_STEP_TIMEOUT_S = 5.0


def redis_where(url: str) -> str:
    """The Redis URL without credentials, for messages."""
    return redact_dsn(url) if "@" in url else url


class Services:
    """Redis, PostgreSQL, the broker, the read model, keys and workload owners."""

    def __init__(self, settings: ApiSettings, metrics: ApiMetrics | None = None) -> None:
        self.settings = settings
        self.keys_layout = RedisKeys(settings.redis_prefix)
        t = settings.dependency_timeout_s
        # One quick retry: after an outage every pooled connection is dead, and the first
        # command on each should reconnect rather than answer 503 once Redis is back.
        retry = {
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }
        self.redis = async_redis_client(
            settings.redis,
            socket_timeout=t,
            socket_connect_timeout=t,
            max_connections=256,
            **retry,
        )
        # SSE readers block in XREAD: their own pool, so they never starve point reads.
        self.redis_streams = async_redis_client(
            settings.redis, socket_connect_timeout=t, socket_timeout=t + 5, **retry
        )
        self.pg = PgPool(settings.pg, size=settings.pg_pool, timeout_s=t)
        self.keys = KeyCache(self.pg, settings.key_cache_s)
        self.producer = RequestProducer(
            settings.bootstrap, settings.topics.workloads, settings.produce_timeout_s
        )
        self.read_model = ReadModel(
            async_redis_client(
                settings.redis, socket_timeout=t + 1, socket_connect_timeout=t, **retry
            ),
            self.keys_layout,
        )
        self.metrics = metrics or ApiMetrics()
        self.metrics.watch(lambda: self.read_model.prices, lambda: self.read_model.workloads)
        self.limiter = RateLimiter(settings.rate_per_s, settings.rate_burst,
                                   self.metrics.registry)
        # workload id -> customer, of workloads submitted through the API (api_workloads).
        self.owners: dict[str, str] = {}
        self._owners_seen: Any = None
        self._owner_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.settings.no_read_model:
            self.read_model.start()
        self._owner_task = asyncio.create_task(self._follow_owners(), name="owners")

    async def stop(self) -> None:
        """Close every connection; a step that hangs is named and left behind after 5 s."""
        steps: list[tuple[str, Any]] = [
            ("read model", self.read_model.stop),
            ("read model's Redis", self.read_model.client.aclose),
            ("owner follower", self._stop_owner_task),
            ("PostgreSQL pool", self.pg.close),
            ("Redis", self.redis.aclose),
            ("Redis streams", self.redis_streams.aclose),
            ("Kafka producer", lambda: asyncio.to_thread(self.producer.close)),
        ]
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), STOP_STEP_TIMEOUT_S)
            except TimeoutError:
                # A stop must end: SIGTERM from an orchestrator waits for nothing else.
                log.warning("shutdown: closing the %s took over %.0f s; left behind",
                            name, STOP_STEP_TIMEOUT_S)

    async def _stop_owner_task(self) -> None:
        if self._owner_task is not None:
            self._owner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._owner_task

    # --- Redis state ------------------------------------------------------------------------

    @property
    def redis_where(self) -> str:
        return redis_where(self.settings.redis)

    def redis_down(self, exc: BaseException) -> ProblemError:
        return unavailable("redis", f"{self.redis_where}: {type(exc).__name__}")

    def fresh_model(self) -> ReadModel | None:
        """The read model when it may be served; None when it is off or still loading.

        A 503 when it is older than ``--max-staleness-s`` (Redis unreachable).
        """
        rm = self.read_model
        if self.settings.no_read_model or not rm.ready:
            return None
        age = rm.staleness_s
        if age > self.settings.max_staleness_s:
            raise unavailable(
                "redis", f"{self.redis_where} unreachable; the last state is {age:.0f} s old"
            )
        return rm

    async def prices(self) -> dict[str, dict[str, Any]]:
        rm = self.fresh_model()
        if rm is not None:
            return rm.prices
        try:
            return parse_prices(await self.redis.hgetall(self.keys_layout.prices))
        except (RedisError, OSError) as exc:
            raise self.redis_down(exc) from None

    # --- workload owners ---------------------------------------------------------------------

    async def _follow_owners(self) -> None:
        """Keep ``owners`` current from api_workloads (other API processes submit too)."""
        while True:
            try:
                await self.refresh_owners()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL down: the next pass catches up
                log.debug("owners refresh failed: %s", type(exc).__name__)
            await asyncio.sleep(2.0)

    async def refresh_owners(self) -> None:
        async with self.pg.connection() as conn:
            if self._owners_seen is None:
                cur = await conn.execute(
                    "SELECT workload_id, customer, created_at FROM api_workloads"
                )
            else:
                cur = await conn.execute(
                    "SELECT workload_id, customer, created_at FROM api_workloads "
                    "WHERE created_at >= %s",
                    (self._owners_seen,),
                )
            for wid, customer, created in await cur.fetchall():
                self.owners[wid] = customer
                if self._owners_seen is None or created > self._owners_seen:
                    self._owners_seen = created

    def health_redis_age(self) -> float:
        return time.monotonic() - self.read_model.synced_at
