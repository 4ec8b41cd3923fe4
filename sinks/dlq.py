"""The dead-letter sink: bad input goes to ``hcp.dlq`` with its original bytes.

The record value and key are the original bytes, untouched; where it came from and why it
was rejected travel in headers (``hcp.source.topic``, ``hcp.source.partition``,
``hcp.source.offset``, ``hcp.reason``), the convention Kafka Connect uses for its own dead
letters. Every delivery report is checked: a failed write raises, so the batch is retried
from the last snapshot rather than lost.
"""

from __future__ import annotations

import logging

import polars as pl
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Producer

from flows import metrics

__all__ = ["DlqSink"]

log = logging.getLogger(__name__)


class _DlqPartition(StatelessSinkPartition[tuple]):
    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": False}
        )
        self._errors: list[KafkaError] = []

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._errors.append(err)

    def write_batch(self, items: list[tuple]) -> None:
        frames = [df for tag, df in items if tag == "dlq"]
        if not frames:
            return
        rows = pl.concat(frames)
        for topic, part, offset, reason, key, value in rows.iter_rows():
            self._producer.produce(
                self._topic,
                value=value,
                key=key,
                headers=[
                    ("hcp.source.topic", topic.encode()),
                    ("hcp.source.partition", str(part).encode()),
                    ("hcp.source.offset", str(offset).encode()),
                    ("hcp.reason", reason.encode()),
                ],
                on_delivery=self._on_delivery,
            )
        remaining = self._producer.flush(30)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            msg = f"{len(errors)} dead letters failed and {remaining} are undelivered: {errors[:3]}"
            raise RuntimeError(msg)
        metrics.DLQ_WRITTEN.inc(rows.height)

    def close(self) -> None:
        self._producer.flush(30)


class DlqSink(DynamicSink[tuple]):
    """Writes ``("dlq", df)`` items (hcp.schemas.DLQ_SCHEMA) to the DLQ topic; at-least-once."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DlqPartition:
        return _DlqPartition(self._bootstrap, self._topic)
