"""The dead-letter sink: bad input goes to ``hcp.dlq`` with its original bytes.

The record value and key are the original bytes, untouched; where it came from and why it
was rejected travel in headers (``hcp.source.topic``, ``hcp.source.partition``,
``hcp.source.offset``, ``hcp.reason``), the convention Kafka Connect uses for its own dead
letters. Every delivery report is checked: a failed write raises, so the batch is retried
from the last snapshot rather than lost.

A bad row of a telemetry frame (SPEC 1b) is one dead letter of its own: its value is the
row as JSON and header ``hcp.source.row`` its index in the frame, so one source offset can
carry several dead letters.

Replays do not duplicate dead letters: on start each sink partition reads the DLQ topic's
headers once and skips any source position (offset, then row; a whole message counts as
row -1) at or below the highest one already written for that source partition (dead
letters of one source partition are written in that order).
"""

from __future__ import annotations

import logging
import time
import uuid

import polars as pl
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from hcp.kafka_config import kafka_conf
from hcp.tags import Out
from sinks import metrics

__all__ = ["DlqSink"]

log = logging.getLogger(__name__)


class _DlqPartition(StatelessSinkPartition[tuple]):
    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._producer = Producer(
            {**kafka_conf(bootstrap), "linger.ms": 20, "enable.idempotence": False}
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
        rows = pl.concat(frames).with_columns(pl.col("row").fill_null(-1))
        if self._written:
            marks = pl.DataFrame(
                {
                    "topic": [t for t, _ in self._written],
                    "partition": [p for _, p in self._written],
                    "_mark": [o for o, _ in self._written.values()],
                    "_mark_row": [r for _, r in self._written.values()],
                },
                schema={
                    "topic": pl.String,
                    "partition": pl.Int64,
                    "_mark": pl.Int64,
                    "_mark_row": pl.Int64,
                },
            )
            offset, mark = pl.col("offset"), pl.col("_mark")
            rows = (
                rows.join(marks, on=["topic", "partition"], how="left", maintain_order="left")
                .filter(
                    mark.is_null()
                    | (offset > mark)
                    | ((offset == mark) & (pl.col("row") > pl.col("_mark_row")))
                )
                .drop("_mark", "_mark_row")
            )
        for topic, part, offset, reason, key, value, row in rows.iter_rows():
            headers = [
                ("hcp.source.topic", topic.encode()),
                ("hcp.source.partition", str(part).encode()),
                ("hcp.source.offset", str(offset).encode()),
                ("hcp.reason", reason.encode()),
            ]
            if row >= 0:
                headers.append(("hcp.source.row", str(row).encode()))
            self._producer.produce(
                self._topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
            )
        remaining = self._producer.flush(30)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            msg = f"{len(errors)} dead letters failed and {remaining} are undelivered: {errors[:3]}"
            raise RuntimeError(msg)
        metrics.DLQ_WRITTEN.inc(rows.height)
        tops = rows.group_by("topic", "partition").agg(
            pl.struct("offset", "row").sort_by("offset", "row").last().alias("top")
        )
        for topic, part, top in tops.iter_rows():
            mark = (top["offset"], top["row"])
            self._written[(topic, part)] = max(mark, self._written.get((topic, part), (-1, -1)))

    def close(self) -> None:
        self._producer.flush(30)


def _high_marks(bootstrap: str, topic: str) -> dict[tuple[str, int], tuple[int, int]]:
    """Highest source (offset, row) already dead-lettered, per source topic and partition."""
    consumer = Consumer(
        {
            **kafka_conf(bootstrap),
            "group.id": f"hcp-dlq-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 5,
        }
    )
    marks: dict[tuple[str, int], tuple[int, int]] = {}
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
                pos = (int(h["hcp.source.offset"]), int(h.get("hcp.source.row", b"-1")))
                marks[key] = max(marks.get(key, (-1, -1)), pos)
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
