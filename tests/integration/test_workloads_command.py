"""`hcp workloads` reads what the Redis sink wrote from real router events."""

from __future__ import annotations

import zlib

import polars as pl
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from flows.decode import decode_values
from flows.router.router import Router, RouterConfig
from generators.router_sim import SimFleet
from hcp.assignments import apply_assignment
from hcp.kafka_admin import ensure_topics
from hcp.schemas import GPU_HEALTH_SCHEMA, WORKLOAD_FIELDS
from hcp.topics import Topics
from sinks.redis.sink import RedisWriter
from tools.cli import main

T0 = 1_767_225_600_000


def route_some(redis_url: str, prefix: str) -> None:
    """Two GPUs, four requests: the p7 and the first p5 run; the other p5 waits ahead of p2."""
    fleet = SimFleet(2, sites=("north",))
    router = Router(RouterConfig(urgent_priority=11))
    router.on_gpu_status(fleet.status(T0))
    router.on_requests(pl.DataFrame(
        {"v": [1] * 4, "ts": [T0, T0 + 1, T0 + 2, T0 + 3],
         "workload_id": ["run-a", "wait-b", "wait-lo", "run-hi"], "customer": ["c"] * 4,
         "priority": [5, 5, 2, 7], "gpus": [1, 1, 1, 1], "mem_gb": [10.0] * 4,
         "est_duration_s": [3600] * 4}))
    writer = RedisWriter(redis_url, prefix=prefix)
    try:
        for step in range(3):
            now = T0 + 10 + step * 5_000
            router.on_gpu_status(fleet.status(now))
            router.route(now)
            events, msgs = router.drain()
            for m in msgs:
                apply_assignment(fleet, m)
            writer.write_batch([("workload_events", events),
                                ("reservations", router.drain_reservations())])
        writer.write_batch([("gpu_health", pl.DataFrame(
            [("gpu-00099", "north", T0 + 5_000, True, "unresponsive", T0 + 5_000),
             ("gpu-00098", "north", T0 + 5_000, True, "unresponsive", T0 + 5_000),
             ("gpu-00098", "north", T0 + 9_000, False, "reported_work", T0 + 5_000)],
            schema=GPU_HEALTH_SCHEMA, orient="row"))])
    finally:
        writer.close()


def test_workloads_table(redis_url: str, redis_prefix: str, capsys) -> None:
    route_some(redis_url, redis_prefix)
    code = main(["workloads", "--redis", redis_url, "--redis-prefix", redis_prefix])
    out = capsys.readouterr().out
    assert code == 0
    assert "2 queued, 2 running" in out
    queue = out.split("QUEUE")[1].split("RUNNING")[0]
    assert queue.index("wait-b") < queue.index("wait-lo")  # by priority
    running = out.split("RUNNING")[1]
    assert "run-a" in running and "run-hi" in running and "north" in running
    assert "gpu-0000" in running
    # Why each queued workload waits, in the hash and on screen.
    lines = {line.split()[1]: line for line in queue.splitlines()[2:] if line.strip()}
    assert "capacity" in lines["wait-b"] and "capacity" in lines["wait-lo"]
    client = redis.Redis.from_url(redis_url)
    assert client.hget(f"{redis_prefix}workload:wait-b", "pending_reason") == b"capacity"
    assert client.hget(f"{redis_prefix}workload:wait-b", "state") == b"queued"
    assert client.hget(f"{redis_prefix}workload:run-a", "pending_reason") == b""
    assert "pending: 2 capacity" in queue
    # Both wait at the head of the queue with a reservation: the GPUs free up in an hour.
    assert "north in 1h00m" in lines["wait-b"] and "north in 1h00m" in lines["wait-lo"]
    assert "RESERVED" in queue.splitlines()[1]
    fields = client.hmget(f"{redis_prefix}workload:wait-b", "expected_start_ts",
                          "reserved_site", "reserved_gpus")
    assert int(fields[0]) >= T0 + 3_600_000 and fields[1] == b"north"
    assert fields[2].startswith(b"gpu-0000")
    assert client.hget(f"{redis_prefix}workload:run-a", "expected_start_ts") is None
    # Cordoned GPUs: gpu-00099 still, gpu-00098 no longer.
    cordoned = out.split("CORDONED GPUs")[1]
    assert cordoned.startswith(" (1,") and "gpu-00099" in cordoned and "unresponsive" in cordoned
    assert "gpu-00098" not in cordoned
    assert client.hget(f"{redis_prefix}summary:site:north", "n_cordoned") == b"1"


def test_empty_prefix_and_unreachable_redis(redis_url: str, redis_prefix: str, capsys) -> None:
    assert main(["workloads", "--redis", redis_url, "--redis-prefix", redis_prefix]) == 0
    assert "workloads: none" in capsys.readouterr().out
    code = main(["workloads", "--redis", "redis://127.0.0.1:1/0"])
    err = capsys.readouterr().err
    assert code == 1 and "unreachable" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "env"),
    [("--redis", "HCP_REDIS_URL"), ("--redis-prefix", "HCP_REDIS_PREFIX"),
     ("--limit", "HCP_WORKLOADS_LIMIT")],
)
def test_flags_show_their_env_variable(flag: str, env: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["workloads", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert flag in text and f"[env: {env}]" in text


def test_cancel_writes_a_cancel_request(bootstrap: str, topics: Topics, capsys) -> None:
    ensure_topics(bootstrap, [topics.workloads], partitions=3)
    code = main(["workloads", "--redis", "redis://127.0.0.1:1/0", "cancel", "wl-7",
                 "--bootstrap", bootstrap, "--topic-prefix", topics.prefix,
                 "--ts-ms", str(T0)])
    out = capsys.readouterr().out
    part = zlib.crc32(b"wl-7") % 3
    assert code == 0 and f"{topics.workloads}[{part}]" in out
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-cancel"})
    consumer.assign([TopicPartition(topics.workloads, part, 0)])
    msgs = []
    try:
        for _ in range(50):  # until the one message is read (at most ~10 s)
            msgs += [m for m in consumer.consume(1, 0.2) if m.error() is None]
            if msgs:
                break
    finally:
        consumer.close()
    assert [m.key() for m in msgs] == [b"wl-7"]
    rows = decode_values([msgs[0].value()], WORKLOAD_FIELDS).rows
    assert rows.select("op", "workload_id", "ts").row(0) == ("cancel", "wl-7", T0)
    # No such topic (a wrong --topic-prefix): a one-line configuration error, exit 2.
    code = main(["workloads", "cancel", "wl-7", "--bootstrap", bootstrap, "--topic-prefix",
                 "missing-prefix.", "--ts-ms", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err
