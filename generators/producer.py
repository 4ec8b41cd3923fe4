"""A confluent-kafka producer tuned for bulk, ordered, checked delivery.

Large batches with lz4 and a long linger keep the broker's per-request cost low; the
idempotent producer keeps each partition in produce order across retries (determinism
needs that). Delivery reports are requested for failures only
(``delivery.report.only.error``): librdkafka still reports every message that fails, and
a message it does not report was delivered. Failures are counted and :meth:`close` raises
if there were any, so a run never ends quietly with missing messages.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from hcp.errors import HcpError
from hcp.kafka_admin import ensure_topics
from hcp.kafka_config import kafka_conf

__all__ = ["BulkProducer", "DeliveryError", "create_topics"]

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 50,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 131_072,  # 128 MB bounds memory whatever the fleet size
    "enable.idempotence": True,
    "message.timeout.ms": 60_000,
    "socket.connection.setup.timeout.ms": 5_000,
    "delivery.report.only.error": True,
}


class DeliveryError(HcpError):
    """Some messages were not delivered to the broker."""


def create_topics(bootstrap: str, topics: list[str], partitions: int) -> dict[str, int]:
    """Create missing topics and return every topic's partition count."""
    return ensure_topics(bootstrap, topics, partitions)


class BulkProducer:
    """Produce parallel lists of keys, values and partitions; count every failure."""

    def __init__(self, bootstrap: str, overrides: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.failed = 0
        self.first_error: str | None = None
        config = {
            **kafka_conf(bootstrap),
            **PRODUCER_DEFAULTS,
            **(overrides or {}),
            "on_delivery": self._on_delivery,
            "logger": log,
        }
        self._producer = Producer(config)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._fail(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def _fail(self, what: str) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = what

    def send(
        self,
        topic: str,
        keys: list[bytes],
        values: list[str] | list[bytes],
        partitions: list[int],
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue every message; when the local queue is full, serve callbacks and retry.

        ``headers``, when given, go on every message (telemetry frames' content type).
        """
        if headers is not None:
            self._send_with_headers(topic, keys, values, partitions, headers)
            return
        produce = self._producer.produce
        poll = self._producer.poll
        for value, key, part in zip(values, keys, partitions, strict=True):
            try:
                produce(topic, value, key, part)
            except KafkaException as exc:  # refused up front, e.g. an unknown partition
                self._fail(f"{topic}[{part}]: {exc.args[0].str()}")
            except BufferError:
                while True:
                    poll(0.05)
                    try:
                        produce(topic, value, key, part)
                        break
                    except BufferError:
                        continue

    def _send_with_headers(
        self,
        topic: str,
        keys: list[bytes],
        values: list[str] | list[bytes],
        partitions: list[int],
        headers: list[tuple[str, bytes]],
    ) -> None:
        # Few, large messages (frames): keyword arguments cost nothing here.
        for value, key, part in zip(values, keys, partitions, strict=True):
            while True:
                try:
                    self._producer.produce(topic, value, key, partition=part, headers=headers)
                    break
                except KafkaException as exc:
                    self._fail(f"{topic}[{part}]: {exc.args[0].str()}")
                    break
                except BufferError:
                    self._producer.poll(0.05)
        # No poll(0) per batch: with the queue full of fresh messages it can take ~100 ms.
        # Failure reports are served while waiting on a full queue, by poll() and at close().

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def close(self, timeout_s: float = 120.0) -> None:
        """Wait for every queued message; raise :class:`DeliveryError` on any failure."""
        left = self._producer.flush(timeout_s)
        if left:
            msg = f"{left} messages still undelivered to {self.bootstrap} after {timeout_s:.0f} s"
            raise DeliveryError(msg)
        if self.failed:
            msg = (
                f"{self.failed} messages failed delivery to {self.bootstrap}; "
                f"first: {self.first_error}"
            )
            raise DeliveryError(msg)
