"""Fleet command messages on ``hcp.fleet.commands``: format and a reader for fleet agents.

The job's compliance stage (``flows/compliance.py``) sends one JSON message per device
whose recommended action changed, keyed by device id so one device's commands stay in
order on one partition::

    {"v": 1, "ts": 1767225780000, "device_id": "asic-00007", "device_type": "asic",
     "site": "site-01", "action": "curtail", "reason": "unprofitable",
     "window_start": 1767225720000}

``ts`` is the end of the window the decision was made on (event time). A fleet agent
applies the newest command per device; :class:`CommandReader` polls the topic from its
beginning without a consumer group (simulators, tests), like the assignment reader.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from typing import Any

import polars as pl
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from hcp.kafka_admin import partition_counts
from hcp.kafka_config import kafka_conf

__all__ = [
    "COMMAND_ACTIONS",
    "CommandReader",
    "decode_command",
    "encode_command",
    "encode_command_frame",
    "produce_commands",
    "produce_encoded",
]

log = logging.getLogger(__name__)

COMMAND_ACTIONS = ("mine", "curtail", "serve", "offer", "power_down")
_REQUIRED = ("v", "ts", "device_id", "device_type", "site", "action")
# The columns of a commands frame that make a message (``v`` is added).
_FRAME_FIELDS = ("ts", "device_id", "device_type", "site", "action", "reason", "window_start")


def encode_command(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), sort_keys=True).encode()


def decode_command(raw: bytes) -> dict[str, Any]:
    """Parse and check one message; ValueError names what is wrong."""
    msg = json.loads(raw)
    if not isinstance(msg, dict):
        err = "command message is not a JSON object"
        raise ValueError(err)
    missing = [k for k in _REQUIRED if k not in msg]
    if missing:
        err = f"command message lacks {', '.join(missing)}"
        raise ValueError(err)
    if msg["action"] not in COMMAND_ACTIONS:
        err = f"unknown command action {msg['action']!r}"
        raise ValueError(err)
    return msg


def produce_commands(producer: Producer, topic: str, msgs: Iterable[dict[str, Any]]) -> int:
    """Produce messages keyed by device id."""
    pairs = ((msg["device_id"].encode(), encode_command(msg)) for msg in msgs)
    return produce_encoded(producer, topic, pairs)


def encode_command_frame(df: pl.DataFrame) -> list[tuple[bytes, bytes]]:
    """(key, value) per row of a commands frame: the bytes :func:`encode_command` gives.

    polars encodes the whole frame at once; a job's first window commands every device.
    """
    fields = sorted((*_FRAME_FIELDS, "v"))  # sort_keys order
    encoded = df.select(
        pl.col("device_id"),
        pl.struct([pl.lit(1).alias("v") if f == "v" else pl.col(f) for f in fields])
        .struct.json_encode()
        .alias("value"),
    )
    return [(k.encode(), v.encode()) for k, v in encoded.iter_rows()]


def produce_encoded(producer: Producer, topic: str, pairs: Iterable[tuple[bytes, bytes]]) -> int:
    """Produce encoded (key, value) pairs, waiting out a full local queue."""
    n = 0
    for key, value in pairs:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                # A window of 310,000 devices fills the local queue: let it drain, retry.
                producer.poll(0.05)
        n += 1
    producer.poll(0)
    return n


class CommandReader:
    """Reads the command topic from the start with ``assign()`` (no consumer group).

    ``poll()`` returns the well-formed messages available now, in partition order;
    malformed ones are logged, counted in ``bad`` and skipped.
    """

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 5.0) -> None:
        parts = partition_counts(bootstrap, [topic], timeout_s).get(topic, 1)
        self._consumer = Consumer(
            {
                **kafka_conf(bootstrap),
                "group.id": f"hcp-cmd-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(parts)])
        self.bad = 0

    def poll(self, timeout_s: float = 0.0, max_messages: int = 100_000) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for record in self._consumer.consume(max_messages, timeout_s):
            err = record.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("command topic error: %s", err)
                continue
            try:
                out.append(decode_command(record.value()))
            except (ValueError, TypeError) as exc:
                self.bad += 1
                log.warning("skipping bad command message at offset %s: %s",
                            record.offset(), exc)
        return out

    def close(self) -> None:
        self._consumer.close()
