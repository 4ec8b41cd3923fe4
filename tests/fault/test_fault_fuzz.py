"""Fuzzer: thousands of malformed messages of every kind, mixed with valid ones.

Every bad message must reach the DLQ topic exactly once, with its original bytes, its
source topic/partition/offset and the reason the decoder gives for its kind of damage; the
valid messages must give exactly the windows a run over the valid messages alone gives;
``hcp_bad_input_total`` must rise by the number of bad messages sent. The job runs in this
process (as tests/integration/test_flow_e2e.py does) so the counter is read from the very registry
its /metrics endpoint serves.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
import zlib
from collections import Counter

import polars as pl
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from prometheus_client import REGISTRY

from hcp.schemas import ASIC_FIELDS, GPU_FIELDS, PRICE_FIELDS, Field
from hcp.topics import Topics
from tests.support.faultkit import Fleet, fleet_messages, record_figures
from tests.support.flowkit import make_topics, run_once

pytestmark = pytest.mark.fault

N_BAD = 3000
FLEET = Fleet(asics=100, gpus=50, minutes=3)
SEED = int(os.environ.get("HCP_FAULT_SEED", str(time.time_ns() % 1_000_000)))
# Kinds of damage, with weights: oversized values are few because each is > 64 KiB.
KINDS = {
    "not_json": 10, "not_object": 10, "missing_field": 12, "wrong_type": 12,
    "out_of_range": 12, "unknown_version": 8, "oversized": 1, "null_value": 8,
    "bad_utf8": 8, "truncated": 10,
}
FIELDS = {"asic": ASIC_FIELDS, "gpu": GPU_FIELDS, "prices": PRICE_FIELDS}


def damage(kind: str, msg: dict, fields: tuple[Field, ...], rng: random.Random) -> tuple:
    """A damaged copy of ``msg`` as (value bytes or None, the reason the decoder must give)."""
    if kind == "not_json":
        return rng.choice([b"hello", b"{'v': 1}", b"<xml/>", b"{,}", b"nan nan"]), "not_json"
    if kind == "not_object":
        return json.dumps(rng.choice([[1, 2], 42, "text", 1.5, [msg]])).encode(), "not_object"
    if kind == "null_value":
        return None, "null_value"
    if kind == "oversized":
        return json.dumps({**msg, "pad": "x" * 70_000}).encode(), "oversized"
    if kind == "bad_utf8":
        return json.dumps(msg).encode().replace(b'"v"', b'"v\xff\xfe"', 1), "not_utf8"
    if kind == "truncated":
        raw = json.dumps(msg).encode()
        return raw[: rng.randrange(1, len(raw) - 1)], "not_json"
    if kind == "unknown_version":
        return json.dumps({**msg, "v": rng.choice([0, 2, 99])}).encode(), "unsupported_version"
    bad = dict(msg)
    if kind == "missing_field":
        f = rng.choice([f for f in fields if f.required and not f.nullable])
        if rng.random() < 0.5:
            del bad[f.name]
        else:
            bad[f.name] = None
        return json.dumps(bad).encode(), f"missing_field:{f.name}"
    if kind == "wrong_type":
        f = rng.choice([f for f in fields if f.name != "v" and f.name in msg])
        bad[f.name] = rng.choice([{"x": 1}, [1], True]) if f.dtype == pl.String else "abc"
        return json.dumps(bad).encode(), f"wrong_type:{f.name}"
    assert kind == "out_of_range"
    f = rng.choice([f for f in fields if f.name != "v" and (f.lo is not None or f.values)])
    if f.values:
        bad[f.name] = "bogus"
    elif f.hi is not None and rng.random() < 0.5:
        bad[f.name] = f.hi * 2 + 1
    else:
        bad[f.name] = f.lo - 1
    if f.dtype == pl.Int64:
        bad[f.name] = int(bad[f.name]) if not isinstance(bad[f.name], str) else bad[f.name]
    return json.dumps(bad).encode(), f"out_of_range:{f.name}"


def write_mixed(bootstrap: str, clean: Topics, fuzzed: Topics, rng: random.Random) -> dict:
    """Valid messages to both topic sets; bad ones spliced into ``fuzzed`` only.

    Returns the bad messages by (topic, partition, offset): (value, reason, kind).
    """
    asics, gpus, prices = fleet_messages(FLEET)
    valid = {"asic": (asics, "asic_id"), "gpu": (gpus, "gpu_id"), "prices": (prices, "kind")}
    names = list(KINDS)
    weights = [KINDS[k] for k in names]
    plan = []  # (kind of topic, damage kind, template)
    for _ in range(N_BAD):
        topic_kind = rng.choice(list(valid))
        msgs = valid[topic_kind][0]
        plan.append((topic_kind, rng.choices(names, weights)[0], rng.choice(msgs)))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "message.max.bytes": 2_000_000})
    sent: dict[tuple[str, int, int], tuple] = {}
    failures: list = []

    def report(meta: tuple):
        def cb(err: KafkaError | None, msg: object) -> None:
            if err is not None:
                failures.append(err)
            elif meta is not None:
                sent[(msg.topic(), msg.partition(), msg.offset())] = meta  # type: ignore[attr-defined]
        return cb

    for topic_kind, (msgs, key_field) in valid.items():
        bads = [p for p in plan if p[0] == topic_kind]
        # Spread the bad ones between valid ones, keeping the valid ones in their order.
        slots = sorted(rng.randrange(len(msgs) + 1) for _ in bads)
        out: list = []
        j = 0
        for i, msg in enumerate(msgs):
            while j < len(slots) and slots[j] == i:
                out.append(bads[j])
                j += 1
            out.append(msg)
        out.extend(bads[j:])
        for topics in (clean, fuzzed):
            topic = getattr(topics, topic_kind)
            for item in out:
                if isinstance(item, dict):
                    key = str(item[key_field]).encode()
                    producer.produce(topic, json.dumps(item).encode(), key=key,
                                     partition=zlib.crc32(key) % 4, on_delivery=report(None))
                elif topics is fuzzed:
                    _, kind, template = item
                    value, reason = damage(kind, template, FIELDS[topic_kind], rng)
                    key = f"fuzz-{rng.randrange(10**6)}".encode()
                    producer.produce(topic, value, key=key, partition=rng.randrange(4),
                                     on_delivery=report((value, reason, kind)))
            producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures[:3]
    return sent


def read_dlq(bootstrap: str, topic: str) -> list[tuple]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
        "enable.partition.eof": True, "enable.auto.commit": False,
    })
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out, pending = [], set(meta.partitions)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for m in consumer.consume(10_000, 0.5):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                continue
            h = {k: v.decode() for k, v in m.headers()}
            out.append(((h["hcp.source.topic"], int(h["hcp.source.partition"]),
                         int(h["hcp.source.offset"])), h["hcp.reason"], m.value()))
    consumer.close()
    assert not pending, "DLQ not read to its end"
    return out


def _bad_total(topics: Topics) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name != "hcp_bad_input":
            continue
        for s in metric.samples:
            if s.name == "hcp_bad_input_total" and s.labels.get("topic", "").startswith(
                topics.prefix
            ):
                total += s.value
    return total


def test_thousands_of_malformed_messages_are_dead_lettered_once_and_valid_ones_count(
    bootstrap: str, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED)
    clean = Topics(prefix=f"z{uuid.uuid4().hex[:10]}.")
    fuzzed = Topics(prefix=f"z{uuid.uuid4().hex[:10]}.")
    make_topics(bootstrap, clean)
    make_topics(bootstrap, fuzzed)
    sent = write_mixed(bootstrap, clean, fuzzed, rng)
    assert len(sent) == N_BAD
    before = _bad_total(fuzzed)
    got = run_once(bootstrap, fuzzed, batch_size=500)
    counted = _bad_total(fuzzed) - before
    want = run_once(bootstrap, clean, batch_size=500)
    dead = read_dlq(bootstrap, fuzzed.dlq)
    where = Counter(d[0] for d in dead)
    wrong_reason = [(w, r, sent[w][1]) for w, r, _ in dead if w in sent and sent[w][1] != r]
    wrong_bytes = [w for w, _, v in dead if w in sent and sent[w][0] != v]
    key = ["window_start", "device_id"]
    got_recs, want_recs = got.frame("recs").sort(key), want.frame("recs").sort(key)
    record_figures(request.config, "fuzz", {
        "seed": SEED, "bad_sent": len(sent), "dead_lettered": len(dead),
        "dead_lettered_once": sum(1 for n in where.values() if n == 1),
        "kinds": dict(Counter(v[2] for v in sent.values())),
        "bad_input_metric_rise": counted, "recommendations": got_recs.height,
    })
    assert set(where) == set(sent), (set(sent) - set(where), set(where) - set(sent))
    assert max(where.values()) == 1
    assert not wrong_reason, wrong_reason[:10]
    assert not wrong_bytes, wrong_bytes[:10]
    assert counted == len(sent)
    assert got_recs.height == FLEET.minutes * (FLEET.asics + FLEET.gpus)
    assert got_recs.equals(want_recs)
    assert got.frame("windows").sort(key).equals(want.frame("windows").sort(key))
    assert read_dlq(bootstrap, clean.dlq) == []
