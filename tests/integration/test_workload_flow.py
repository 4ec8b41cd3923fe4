"""The router as a Bytewax dataflow over the embedded broker, Redis and the assignment topic."""

from __future__ import annotations

import json

import redis
from bytewax.testing import run_main
from confluent_kafka import Producer

from flows.router.flow import build_router_flow
from flows.settings import JobSettings
from generators.router_sim import SimFleet
from hcp.assignments import decode_assignment
from hcp.kafka_admin import end_offsets, ensure_topics
from hcp.topics import Topics
from hcp.workload_requests import cancel_message

T0 = 1_767_225_600_000


def read_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    from confluent_kafka import Consumer, TopicPartition

    ends = end_offsets(bootstrap, topic, partitions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-read",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[bytes] = []
    try:
        while len(out) < sum(ends.values()):
            for m in consumer.consume(1000, 1.0):
                if m.error() is None:
                    out.append(m.value())
    finally:
        consumer.close()
    return out


def test_router_flow_end_to_end(
    bootstrap: str, topics: Topics, redis_url: str, redis_prefix: str
) -> None:
    ensure_topics(bootstrap, topics.all(), partitions=2)
    fleet = SimFleet(4, sites=("north", "south"))
    producer = Producer({"bootstrap.servers": bootstrap})
    for step in range(3):
        for row in fleet.status(T0 + step * 1000).to_dicts():
            producer.produce(topics.gpu, key=row["gpu_id"].encode(), value=json.dumps(row))
    producer.produce(topics.prices, key=b"gpu_spot_usd_hr:H100-SXM", value=json.dumps(
        {"v": 1, "ts": T0, "kind": "gpu_spot_usd_hr", "value": 2.5, "model": "H100-SXM"}))
    for i, (prio, gpus) in enumerate([(3, 1), (9, 2), (5, 1), (1, 1), (5, 12), (1, 1)]):
        req = {"v": 1, "ts": T0 + 500 + i, "workload_id": f"wl-{i}", "customer": "acme",
               "priority": prio, "gpus": gpus, "mem_gb": 20.0, "est_duration_s": 600}
        producer.produce(topics.workloads, key=req["workload_id"].encode(), value=json.dumps(req))
    producer.produce(topics.workloads, key=b"bad", value=b'{"v": 1, "ts": "soon"}')
    # Cancel wl-0 after it was assigned (its GPU goes to wl-3, the oldest waiting p1).
    producer.produce(topics.workloads, key=b"wl-0", value=cancel_message("wl-0", T0 + 1500))
    producer.flush(10)

    settings = JobSettings(bootstrap=bootstrap, topic_prefix=topics.prefix, once=True,
                           no_pg=True, redis=redis_url, redis_prefix=redis_prefix,
                           metrics_port=0, idle_timeout_s=0)
    run_main(build_router_flow(settings))

    msgs = [decode_assignment(v) for v in read_all(bootstrap, topics.assignments, 2)]
    placed = {m["workload_id"]: m for m in msgs if m["action"] == "assign"}
    # 4 GPUs: the p9 2-GPU job, wl-2 and wl-0 fit; wl-0 is cancelled, wl-3 gets its GPU.
    assert sorted(placed) == ["wl-0", "wl-1", "wl-2", "wl-3"]
    assert len(placed["wl-1"]["gpu_ids"]) == 2
    (cancel,) = [m for m in msgs if m["action"] == "cancel"]
    assert cancel["workload_id"] == "wl-0" and cancel["gpu_ids"] == placed["wl-0"]["gpu_ids"]
    assert placed["wl-3"]["gpu_ids"] == placed["wl-0"]["gpu_ids"]
    client = redis.Redis.from_url(redis_url)

    def field(wid: str, name: str) -> bytes | None:
        return client.hget(f"{redis_prefix}workload:{wid}", name)

    for wid in ("wl-1", "wl-2", "wl-3"):
        assert field(wid, "state") == b"assigned"
    assert (field("wl-0", "state"), field("wl-0", "reason")) == (b"cancelled", b"cancel_request")
    assert (field("wl-4", "state"), field("wl-4", "reason")) == (b"failed", b"unschedulable")
    assert (field("wl-5", "state"), field("wl-5", "pending_reason")) == (b"queued", b"capacity")
    assert client.xlen(f"{redis_prefix}workloads") >= 3 * len(placed)
    assert len(read_all(bootstrap, topics.dlq, 2)) == 1  # the bad request


def test_branch_honours_power_down_recommendations() -> None:
    """add_router_branch in a flow fed by testing sources: recs reach the router."""
    import bytewax.operators as op
    import polars as pl
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource

    from flows.router.flow import add_router_branch
    from flows.source import SourceBatch
    from hcp.schemas import DLQ_SCHEMA

    fleet = SimFleet(2, sites=("north",))
    empty = pl.DataFrame(schema=DLQ_SCHEMA)
    gpu = SourceBatch("gpu", "g", 0, fleet.status(T0).drop("v"), empty, 1)
    req = pl.DataFrame({"v": [1, 1], "ts": [T0 + 10, T0 + 11], "workload_id": ["a", "b"],
                        "customer": ["c", "c"], "priority": [5, 5], "gpus": [1, 1],
                        "mem_gb": [8.0, 8.0], "est_duration_s": [60, 60]})
    work = SourceBatch("workloads", "w", 0, req, empty, 2)
    recs = ("recs", pl.DataFrame({"device_id": ["gpu-00000"], "device_type": ["gpu"],
                                  "action": ["power_down"], "window_end": [T0]}))
    # The recommendation arrives last, but its window ended at T0: it applies from the first
    # tick, before any routing round, because with recs the router waits for the fleet.
    flow2 = Dataflow("router_branch_test")
    merged = op.input("all", flow2, TestingSource([gpu, work, recs]))
    b = op.filter("batches_only", merged, lambda x: isinstance(x, SourceBatch))
    r = op.filter("recs_only", merged, lambda x: isinstance(x, tuple))
    out2: list = []
    op.output("out", add_router_branch(b, r), TestingSink(out2))
    run_main(flow2)
    msgs = [m for tag, payload in out2 if tag == "assignments" for m in payload]
    assert [m["gpu_ids"] for m in msgs] == [["gpu-00001"]]  # gpu-00000 is powering down
    events = pl.concat([p for tag, p in out2 if tag == "workload_events"])
    assert events.filter(pl.col("workload_id") == "b")["to_state"].to_list()[-1] == "queued"
