"""`hcp api` with each dependency taken away and given back: 503, then recovery, no restart.

Redis, PostgreSQL and the broker are reached through loopback proxies the test cuts
(tests/support/faultkit.py), so the shared services keep running for everyone else.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from api.settings import ApiSettings
from hcp.kafka_admin import ensure_topics
from hcp.topics import Topics
from tests.support.apikit import LiveApi, make_key, wait_for
from tests.support.faultkit import CutProxy, redis_target
from tools.broker import EmbeddedBroker, free_port

pytestmark = pytest.mark.fault

PASSWORD = "s3cret-pw-123"
WORKLOAD = {"customer": "acme", "priority": 5, "gpus": 1, "mem_gb": 1.0, "est_duration_s": 9}


@pytest.fixture()
def proxied(redis_url: str, own_pg_dsn: str, redis_prefix: str) -> Iterator[tuple]:
    pg_dsn = own_pg_dsn
    broker_port = free_port()
    broker_proxy = CutProxy(("127.0.0.1", broker_port))
    redis_proxy = CutProxy(redis_target(redis_url))
    pg_proxy = CutProxy(("127.0.0.1", 5432))
    db = pg_dsn.rsplit("/", 1)[1]
    # trust auth ignores the password; it is there to prove it never leaks.
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{pg_proxy.port}/{db}"
    admin = make_key(pg_dsn, "admin")
    with EmbeddedBroker(port=broker_port, advertised_port=broker_proxy.port) as broker:
        topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
        ensure_topics(broker.bootstrap, topics.all(), 1)
        db_index = redis_url.rsplit("/", 1)[1]
        settings = ApiSettings(
            bootstrap=broker_proxy.address, redis=f"redis://{redis_proxy.address}/{db_index}",
            pg=dsn, redis_prefix=redis_prefix, topic_prefix=topics.prefix,
            max_staleness_s=1.0, key_cache_s=60.0, produce_timeout_s=2.0,
            dependency_timeout_s=1.0,
        )
        redis.Redis.from_url(redis_url).hset(
            f"{redis_prefix}workload:wl-x", mapping={"workload_id": "wl-x", "state": "queued"}
        )
        with LiveApi(settings) as api:
            api.wait_ready()
            yield api, admin, {"redis": redis_proxy, "postgresql": pg_proxy,
                               "broker": broker_proxy}
    for proxy in (broker_proxy, redis_proxy, pg_proxy):
        proxy.close()


def _is_503(r, dependency: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == 503, r.text
    doc = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert doc["dependency"] == dependency and "\n" not in doc["detail"]
    assert PASSWORD not in r.text and "Traceback" not in r.text


def test_each_dependency_down_gives_503_and_recovers(proxied: tuple) -> None:
    api, admin, proxies = proxied
    with api.client(admin) as c:
        assert c.get("/api/v1/resources/dev-1").status_code == 404  # key now cached
        assert c.post("/api/v1/workloads", json=WORKLOAD).status_code == 202

        proxies["redis"].cut()
        wait_for(lambda: c.get("/api/v1/resources/dev-1").status_code == 503, 10)
        _is_503(c.get("/api/v1/resources/dev-1"), "redis")
        _is_503(c.get("/api/v1/workloads/wl-x"), "redis")
        _is_503(c.get("/api/v1/stream/workloads"), "redis")
        assert c.get("/api/v1/prices/history").status_code == 200  # PostgreSQL still serves
        health = c.get("/api/v1/health").json()
        assert health["status"] == "degraded" and not health["dependencies"]["redis"]["ok"]
        proxies["redis"].restore()
        wait_for(lambda: c.get("/api/v1/resources/dev-1").status_code == 404, 15)
        r = c.get("/api/v1/workloads/wl-x")
        assert r.json().get("state") == "queued", r.text

        proxies["postgresql"].cut()
        _is_503(c.get("/api/v1/prices/history"), "postgresql")
        _is_503(c.get("/api/v1/profitability/dev-1"), "postgresql")
        assert c.get("/api/v1/resources/dev-1").status_code == 404  # Redis still serves
        health = c.get("/api/v1/health").json()
        assert not health["dependencies"]["postgresql"]["ok"]
        assert PASSWORD not in str(health)
        proxies["postgresql"].restore()
        wait_for(lambda: c.get("/api/v1/prices/history").status_code == 200, 15)

        proxies["broker"].cut()
        started = time.monotonic()
        _is_503(c.post("/api/v1/workloads", json=WORKLOAD), "broker")
        assert time.monotonic() - started < 6
        proxies["broker"].restore()
        wait_for(lambda: c.post("/api/v1/workloads", json=WORKLOAD).status_code == 202, 20, 0.5)
        assert c.get("/api/v1/health").json()["status"] == "ok"
