"""Publish a collector round as contract telemetry: frames (1b, key = site) or JSON (1a)."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
from confluent_kafka import Producer

from hcp.frames import FRAME_HEADERS, encode_frames, frame_schema
from hcp.kafka_config import kafka_conf
from hcp.schemas import ASIC_FIELDS, GPU_FIELDS, SCHEMA_VERSION, polars_schema
from hcp.topics import Topics

__all__ = ["RoundPublisher"]


class RoundPublisher:
    """One Kafka producer; ``publish`` queues a round, ``flush`` waits for delivery."""

    def __init__(self, bootstrap: str, topics: Topics, encoding: str = "frames") -> None:
        self.topics = topics
        self.encoding = encoding
        self.failed = 0
        self._producer = Producer(kafka_conf(bootstrap, {
            "linger.ms": 20,
            "compression.type": "lz4",
            "enable.idempotence": True,
        }))

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1

    def _send(self, topic: str, fields: tuple, id_key: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.encoding == "json":
            for row in rows:
                value = json.dumps({"v": SCHEMA_VERSION, **row})
                self._producer.produce(
                    topic, value, row[id_key].encode(), on_delivery=self._on_delivery
                )
            return
        schema = polars_schema(fields)
        frame = pl.DataFrame(rows, schema={k: v for k, v in schema.items() if k != "v"})
        for site, part in frame.group_by("site", maintain_order=True):
            for value in encode_frames(part, frame_schema(fields)):
                self._producer.produce(
                    topic,
                    value,
                    str(site[0]).encode(),
                    headers=FRAME_HEADERS,
                    on_delivery=self._on_delivery,
                )

    def publish(self, asic: list[dict[str, Any]], gpu: list[dict[str, Any]]) -> None:
        self._send(self.topics.asic, ASIC_FIELDS, "asic_id", asic)
        self._send(self.topics.gpu, GPU_FIELDS, "gpu_id", gpu)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for delivery; the number of messages still undelivered."""
        return self._producer.flush(timeout)
