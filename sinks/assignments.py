"""The Kafka sink of the router's assignment messages (``hcp.workloads.assignments``).

Takes the tagged items of the flow's output stream and produces the ``("assignments",
[message, ...])`` ones, keyed by workload id so one workload's messages stay in order on
one partition; every other tag is ignored, like the Redis and PostgreSQL sinks do.
"""

from __future__ import annotations

import logging
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaException, Producer

from hcp.assignments import produce_assignments
from hcp.errors import BrokerUnreachableError
from hcp.kafka_config import kafka_conf
from hcp.tags import Out

__all__ = ["AssignmentSink"]

log = logging.getLogger(__name__)

Item = tuple[str, Any]


class _AssignmentPartition(StatelessSinkPartition[Item]):
    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._producer = Producer(
            {**kafka_conf(bootstrap), "linger.ms": 5, "enable.idempotence": False}
        )

    def write_batch(self, items: list[Item]) -> None:
        msgs = [m for tag, payload in items if tag == Out.ASSIGNMENTS for m in payload]
        if not msgs:
            return
        produce_assignments(self._producer, self._topic, msgs)
        # Flush per batch: the simulator acts on these within a second of event time.
        left = self._producer.flush(10)
        if left:
            msg = f"{left} assignment messages not delivered to {self._topic}"
            raise BrokerUnreachableError(msg)

    def close(self) -> None:
        try:
            self._producer.flush(10)
        except KafkaException as exc:  # closing: report, do not mask the original error
            log.warning("assignment producer flush on close failed: %s", exc)


class AssignmentSink(DynamicSink[Item]):
    """Produce the router's assignment messages to Kafka.

    Delivery: at-least-once. A resumed dataflow repeats the messages of its last epoch in
    their original order; a repeated ``assign`` sets the same GPUs to the same workload
    and end time again, so the fleet ends in the state the router's snapshot expects.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AssignmentPartition:
        return _AssignmentPartition(self.bootstrap, self.topic)
