"""The streaming source behind the broker: fetches that queued up while the job was busy.

When the job falls behind, librdkafka holds several fetch responses for a partition. With
end-of-partition events on, each of them ended in one, and a batch gathered across them
carried events among its messages: the whole batch went down the decoder's strict path,
several times slower, and a job at 50k events/s fell further behind with every window
(docs/architecture.md). A streaming job does not ask for those events.
"""

from __future__ import annotations

import json
import time

from confluent_kafka import Producer

from flows import metrics
from flows.source import _BatchPartition
from hcp.topics import Topics
from tests.support.flowkit import asic_msg, make_topics

T0 = 1_767_225_600_000


def _strict_batches(topic: str) -> float:
    return metrics.DECODE_STRICT.labels(topic)._value.get()


def _read_all(part: _BatchPartition, want: int, timeout_s: float = 20.0) -> int:
    got, deadline = 0, time.monotonic() + timeout_s
    while got < want and time.monotonic() < deadline:
        for batch in part.next_batch():
            got += batch.rows.height + batch.dlq.height
        time.sleep(0.01)
    return got


def test_fetches_that_queued_up_while_behind_take_the_batch_decoder(
    bootstrap: str, topics: Topics
) -> None:
    make_topics(bootstrap, topics, partitions=1)
    part = _BatchPartition(
        bootstrap, "asic", topics.asic, 0, None, batch_size=100_000, once=False,
        idle_timeout_s=0.0,
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    sent = 0
    # Three bursts, each fetched (and, with end-of-partition events on, ended) before the
    # next: the job has not asked for any of them yet, as when it is busy closing a window.
    for burst in range(3):
        for i in range(500):
            msg = asic_msg(f"asic-{i:04d}", T0 + burst * 1000 + i)
            producer.produce(topics.asic, json.dumps(msg).encode(), partition=0)
            sent += 1
        assert producer.flush(10) == 0
        time.sleep(0.6)
    before = _strict_batches(topics.asic)
    assert _read_all(part, sent) == sent
    assert _strict_batches(topics.asic) == before  # nothing bad, so no strict batch
    assert metrics.BAD_INPUT.labels(topics.asic, "not_json")._value.get() == 0
