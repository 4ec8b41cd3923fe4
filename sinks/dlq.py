"""The dead-letter sink: bad input goes to ``hcp.dlq`` with its original bytes.

The record value and key are the original bytes, untouched; where it came from and why it
was rejected travel in headers (``hcp.source.topic``, ``hcp.source.partition``,
``hcp.source.offset``, ``hcp.reason``), the convention Kafka Connect uses for its own dead
letters. Every delivery report is checked: a failed write raises, so the batch is retried
from the last snapshot rather than lost.

Replays do not duplicate dead letters: on start each sink partition reads the DLQ topic's
headers once and skips any source offset at or below the highest one already written for
that source partition (dead letters of one source partition are written in offset order).
"""

from __future__ import annotations

import logging
import time
import uuid

import polars as pl
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from hcp.tags import Out
from sinks import metrics

__all__ = ["DlqSink"]

log = logging.getLogger(__name__)


class _DlqPartition(StatelessSinkPartition[tuple]):
    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": False}
        )
        self._errors: list[KafkaError] = []
        self._written = _high_marks(bootstrap, topic)

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._errors.append(err)

    def write_batch(self, items: list[tuple]) -> None:
        frames = [df for tag, df in items if tag == Out.DLQ]
        if not frames:
            return
        rows = pl.concat(frames)
        if self._written:
            marks = pl.DataFrame(
                {
                    "topic": [t for t, _ in self._written],
                    "partition": [p for _, p in self._written],
                    "_mark": list(self._written.values()),
                },
                schema={"topic": pl.String, "partition": pl.Int64, "_mark": pl.Int64},
            )
            rows = (
                rows.join(marks, on=["topic", "partition"], how="left", maintain_order="left")
                .filter(pl.col("_mark").is_null() | (pl.col("offset") > pl.col("_mark")))
                .drop("_mark")
            )
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
        tops = rows.group_by("topic", "partition").agg(pl.col("offset").max())
        for topic, part, top in tops.iter_rows():
            self._written[(topic, part)] = max(top, self._written.get((topic, part), -1))

    def close(self) -> None:
        self._producer.flush(30)


def _high_marks(bootstrap: str, topic: str) -> dict[tuple[str, int], int]:
    """Highest source offset already dead-lettered, per source topic and partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"hcp-dlq-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 5,
        }
    )
    marks: dict[tuple[str, int], int] = {}
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return marks
        pending = set(meta.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in pending])
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for m in consumer.consume(10_000, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                    continue
                h = dict(m.headers() or [])
                key = (h["hcp.source.topic"].decode(), int(h["hcp.source.partition"]))
                marks[key] = max(marks.get(key, -1), int(h["hcp.source.offset"]))
    finally:
        consumer.close()
    return marks


class DlqSink(DynamicSink[tuple]):
    """Writes ``("dlq", df)`` items (hcp.schemas.DLQ_SCHEMA) to the DLQ topic; at-least-once."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DlqPartition:
        return _DlqPartition(self._bootstrap, self._topic)
