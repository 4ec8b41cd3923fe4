"""The Kafka sink of fleet commands (``hcp.fleet.commands``, docs/control-loop.md).

Takes the ``("commands", df)`` items of the flow's output stream (one row per device whose
recommended action changed, from ``flows/compliance.py``) and produces one message per
row, keyed by device id; every other tag is ignored, like the other sinks do.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaException, Producer

from hcp.commands import encode_command_frame, produce_encoded
from hcp.errors import BrokerUnreachableError
from hcp.kafka_config import kafka_conf
from hcp.tags import Out

__all__ = ["CommandSink"]

log = logging.getLogger(__name__)

Item = tuple[str, Any]


class _CommandPartition(StatelessSinkPartition[Item]):
    def __init__(self, bootstrap: str, topic: str, give_up_after_s: float | None) -> None:
        self._topic = topic
        self._give_up_after_s = give_up_after_s
        # message.timeout.ms 0: librdkafka retries a queued command until the broker is
        # back instead of dropping it after 5 minutes; write_batch waits for that.
        self._producer = Producer(
            {
                **kafka_conf(bootstrap),
                "linger.ms": 5,
                "enable.idempotence": False,
                "message.timeout.ms": 0,
            }
        )

    def write_batch(self, items: list[Item]) -> None:
        msgs = [m for tag, df in items if tag == Out.COMMANDS for m in encode_command_frame(df)]
        if not msgs:
            return
        produce_encoded(self._producer, self._topic, msgs)
        # Wait until delivered: the fleet acts on a command within its ramp delay, and a
        # broker outage holds the job here (backpressure) rather than losing commands.
        started = time.monotonic()
        warned = False
        while left := self._producer.flush(5):
            waited = time.monotonic() - started
            if self._give_up_after_s is not None and waited > self._give_up_after_s:
                msg = f"{left} command messages not delivered to {self._topic} in {waited:.0f} s"
                raise BrokerUnreachableError(msg)
            if not warned:
                warned = True
                log.warning("command sink: %d messages waiting for %s; holding the batch",
                            left, self._topic)
        if warned:
            log.warning("command sink: delivered after %.1f s", time.monotonic() - started)

    def close(self) -> None:
        try:
            self._producer.flush(10)
        except KafkaException as exc:  # closing: report, do not mask the original error
            log.warning("command producer flush on close failed: %s", exc)


class CommandSink(DynamicSink[Item]):
    """Produce fleet commands to Kafka.

    Delivery: at-least-once. A resumed dataflow repeats the commands of its last epoch;
    a command is a target state (not a toggle), so applying it twice changes nothing. While
    the broker is away a batch is held until delivered (``give_up_after_s`` to raise
    instead), like the Redis and PostgreSQL sinks hold theirs.
    """

    def __init__(self, bootstrap: str, topic: str, give_up_after_s: float | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.give_up_after_s = give_up_after_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CommandPartition:
        return _CommandPartition(self.bootstrap, self.topic, self.give_up_after_s)
