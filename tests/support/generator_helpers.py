"""Shared helpers of the generator tests: read topics back, validate against SPEC section 1."""

from __future__ import annotations

import json
import time
import uuid
import zlib
from typing import Any

import polars as pl
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from hcp.schemas import SITE_SCOPED_KINDS, Field

Records = dict[int, list[tuple[bytes, bytes]]]


def read_topic(bootstrap: str, topic: str, partitions: int = 8, timeout_s: float = 30.0) -> Records:
    """Every (key, value) of a topic, per partition in offset order, read to EOF via assign()."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    out: Records = {p: [] for p in range(partitions)}
    pending = set(out)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                if err is None:
                    out[msg.partition()].append((msg.key(), msg.value()))
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                else:
                    raise AssertionError(f"consume error on {topic}: {err}")
        assert not pending, f"{topic}: partitions {pending} never reached EOF"
    finally:
        consumer.close()
    return out


def decoded(records: Records) -> list[tuple[int, bytes, dict[str, Any]]]:
    return [(p, k, json.loads(v)) for p, rows in records.items() for k, v in rows]


def check_fields(msg: dict[str, Any], fields: tuple[Field, ...]) -> None:
    """Assert one decoded message obeys the field specs: presence, type, range, enum."""
    names = {f.name for f in fields}
    unknown = set(msg) - names
    assert not unknown, f"unknown fields {unknown} in {msg}"
    for f in fields:
        if f.name not in msg:
            assert not f.required, f"missing {f.name} in {msg}"
            continue
        value = msg[f.name]
        if value is None:
            assert f.nullable, f"{f.name} is null in {msg}"
            continue
        if f.dtype == pl.Int64:
            assert isinstance(value, int) and not isinstance(value, bool), (f.name, msg)
        elif f.dtype == pl.Float64:
            assert isinstance(value, float), (f.name, msg)  # JSON float, never an int literal
        elif f.dtype == pl.String:
            assert isinstance(value, str), (f.name, msg)
        if f.lo is not None:
            assert value >= f.lo, (f.name, msg)
        if f.hi is not None:
            assert value <= f.hi, (f.name, msg)
        if f.values is not None:
            assert value in f.values, (f.name, msg)


def price_key(msg: dict[str, Any]) -> bytes:
    kind = msg["kind"]
    if kind in SITE_SCOPED_KINDS:
        assert "site" in msg and "model" not in msg, msg
        return f"{kind}:{msg['site']}".encode()
    if kind == "gpu_spot_usd_hr":
        assert "model" in msg and "site" not in msg, msg
        return f"{kind}:{msg['model']}".encode()
    assert "site" not in msg and "model" not in msg, msg
    return kind.encode()


def crc_partition(key: bytes, partitions: int = 8) -> int:
    return zlib.crc32(key) % partitions
