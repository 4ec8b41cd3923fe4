"""Reading a whole topic for the fleet tests (partition EOF, since Tansu's ListOffsets is wrong)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Message]:
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
    out, pending, deadline = [], set(meta.partitions), time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for m in consumer.consume(1000, 1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                continue
            out.append(m)
    consumer.close()
    return out
