"""Helpers for telemetry-frame tests: the same samples as JSON messages or as site frames."""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Iterable

import polars as pl
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from hcp.frames import FRAME_HEADERS, encode_frame, frame_schema
from hcp.schemas import ASIC_FIELDS, GPU_FIELDS, polars_schema

FIELDS = {"asic": ASIC_FIELDS, "gpu": GPU_FIELDS}


def samples_frame(kind: str, messages: list[dict]) -> pl.DataFrame:
    """JSON-style sample dicts as the topic's columns (``v`` dropped: it is metadata)."""
    schema = {k: v for k, v in polars_schema(FIELDS[kind]).items() if k != "v"}
    return pl.DataFrame([{k: m.get(k) for k in schema} for m in messages], schema=schema)


def site_frames(
    kind: str, messages: list[dict], rows_per_frame: int, json_sites: tuple[str, ...] = ()
) -> list[tuple[bytes, bytes, bool]]:
    """(key, value, is_frame) as site collectors send them: ``rows_per_frame`` samples of a
    site per frame, each site in message order, the sites interleaved in time. Sites in
    ``json_sites`` send JSON messages keyed by device instead (one topic, both encodings)."""
    timed: list[tuple[int, int, bytes, bytes, bool]] = []
    by_site: dict[str, list[dict]] = {}
    for m in messages:
        by_site.setdefault(m["site"], []).append(m)
    schema = frame_schema(FIELDS[kind])
    id_field = f"{kind}_id"
    for site, msgs in by_site.items():
        if site in json_sites:
            for m in msgs:
                item = (m[id_field].encode(), json.dumps(m).encode(), False)
                timed.append((m["ts"] // 1000, len(timed), *item))
            continue
        for lo in range(0, len(msgs), rows_per_frame):
            chunk = msgs[lo : lo + rows_per_frame]
            frame = encode_frame(samples_frame(kind, chunk), schema)
            timed.append((chunk[0]["ts"] // 1000, len(timed), site.encode(), frame, True))
    return [(key, value, framed) for _, _, key, value, framed in sorted(timed)]


def produce_frames(
    bootstrap: str, topic: str, items: Iterable[tuple[bytes, bytes, bool]], partitions: int = 4
) -> list[tuple[int, int]]:
    """Write (key, value, is_frame) items, frames with the frame content type, partitioned
    by crc32 of the key; return each one's (partition, offset)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    where: list[tuple[int, int]] = []

    def done(err: object, msg: object, i: int) -> None:
        assert err is None, err
        where[i] = (msg.partition(), msg.offset())  # type: ignore[attr-defined]

    for i, (key, value, framed) in enumerate(items):
        where.append((-1, -1))
        producer.produce(
            topic,
            value,
            key=key,
            partition=zlib.crc32(key) % partitions,
            headers=FRAME_HEADERS if framed else None,
            on_delivery=lambda err, msg, i=i: done(err, msg, i),
        )
    assert producer.flush(30) == 0
    return where


def produce_json(
    bootstrap: str, topic: str, messages: list[dict], key_field: str, partitions: int = 4
) -> int:
    """As tests.support.flowkit.produce, without waiting on a small local queue."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for msg in messages:
        key = str(msg[key_field]).encode()
        while True:
            try:
                producer.produce(
                    topic, json.dumps(msg).encode(), key=key, partition=zlib.crc32(key) % partitions
                )
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    return len(messages)


def read_dead_letters(bootstrap: str, topic: str) -> list[dict]:
    """Every dead letter: its value and decoded headers, in each DLQ partition's order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out, pending = [], set(meta.partitions)
    while pending:
        for m in consumer.consume(1000, 1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                continue
            out.append({"value": m.value(), **{k: v.decode() for k, v in m.headers()}})
    consumer.close()
    return out
