"""Assignment messages on ``hcp.workloads.assignments``: format, producer and fleet reader.

The router writes one JSON message per decision, keyed by workload id::

    {"v": 1, "ts": 1767225600000, "workload_id": "wl-42", "gpu_ids": ["gpu-3", "gpu-4"],
     "site": "site-a", "est_duration_s": 600, "action": "assign"}

Optional extra fields: ``mem_gb`` (per GPU) and ``priority``. ``action`` is ``assign``
(run the workload on every listed GPU until ``ts + est_duration_s * 1000``),
``preempt`` (stop it on every listed GPU now; also used to cancel an assignment that never
started) or ``cancel`` (the workload was cancelled: stop it on every listed GPU now; a
fleet treats it like ``preempt``). A GPU simulator closes the loop with
:func:`apply_assignment` (one message) or :class:`AssignmentReader` (poll the topic), given
a fleet object with ``assign(gpu_id, workload_id, until_ts_ms, mem_gb=None)`` and, for
preemption, ``release(gpu_id, workload_id=None)``: given the workload id, it stops only
that workload (``release(gpu_id)`` is called when it takes no ``workload_id``, and
``assign(gpu_id, None, ts)`` when it has no ``release``). ``generators.gpu_fleet.GpuFleet``
offers both.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from hcp.kafka_admin import partition_counts
from hcp.kafka_config import kafka_conf

__all__ = [
    "ACTIONS",
    "AssignmentReader",
    "Fleet",
    "apply_assignment",
    "decode_assignment",
    "encode_assignment",
    "produce_assignments",
]

log = logging.getLogger(__name__)

ACTIONS = ("assign", "preempt", "cancel")
_REQUIRED = ("v", "ts", "workload_id", "gpu_ids", "site", "est_duration_s", "action")


class Fleet(Protocol):
    """What a GPU fleet must offer to obey assignments."""

    def assign(
        self, gpu: str, workload_id: str, until_ts_ms: int, mem_gb: float | None = None
    ) -> None: ...


def encode_assignment(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), sort_keys=True).encode()


def decode_assignment(raw: bytes) -> dict[str, Any]:
    """Parse and check one message; ValueError names what is wrong."""
    msg = json.loads(raw)
    if not isinstance(msg, dict):
        err = "assignment message is not a JSON object"
        raise ValueError(err)
    missing = [k for k in _REQUIRED if k not in msg]
    if missing:
        err = f"assignment message lacks {', '.join(missing)}"
        raise ValueError(err)
    if msg["action"] not in ACTIONS:
        err = f"unknown assignment action {msg['action']!r}"
        raise ValueError(err)
    if not isinstance(msg["gpu_ids"], list) or not msg["gpu_ids"]:
        err = "assignment message has no gpu_ids"
        raise ValueError(err)
    return msg


def apply_assignment(fleet: Any, msg: dict[str, Any], now_ms: int | None = None) -> None:
    """Turn one message into calls on ``fleet``.

    An ``assign`` runs for ``est_duration_s`` from ``ts``, or from ``now_ms`` (the fleet's
    own clock) when the message arrives later than that: the router decides in event time,
    a little behind the newest telemetry, and work that "ended" before it reached the GPU
    would never be seen running.
    """
    if msg["action"] == "assign":
        start = int(msg["ts"]) if now_ms is None else max(int(msg["ts"]), int(now_ms))
        until = start + int(msg["est_duration_s"]) * 1000
        mem = msg.get("mem_gb")
        for gpu in msg["gpu_ids"]:
            if mem is None:
                fleet.assign(gpu, msg["workload_id"], until)
            else:
                fleet.assign(gpu, msg["workload_id"], until, mem_gb=float(mem))
        return
    # preempt and cancel: stop the work now, but only the named workload's. Messages are
    # keyed by workload id, so a stop for a GPU's previous holder can arrive after the
    # assign of its next one (another partition); it must not end the new work.
    release = getattr(fleet, "release", None)
    for gpu in msg["gpu_ids"]:
        if release is None:
            fleet.assign(gpu, None, int(msg["ts"]))
        elif _takes_workload_id(type(fleet)):
            release(gpu, workload_id=msg["workload_id"])
        else:
            release(gpu)


@functools.lru_cache(maxsize=64)
def _takes_workload_id(fleet_type: type) -> bool:
    try:
        return "workload_id" in inspect.signature(getattr(fleet_type, "release", None)).parameters
    except (TypeError, ValueError):
        return False


def produce_assignments(producer: Producer, topic: str, msgs: Iterable[dict[str, Any]]) -> int:
    """Produce messages keyed by workload id (one partition per workload keeps its order)."""
    n = 0
    for msg in msgs:
        producer.produce(topic, key=msg["workload_id"].encode(), value=encode_assignment(msg))
        n += 1
    producer.poll(0)
    return n


class AssignmentReader:
    """Reads the assignment topic from the start with ``assign()`` (no consumer group).

    ``poll(fleet)`` applies every message available now and returns how many it applied;
    malformed messages are logged and skipped (they come from our own router).
    """

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 5.0) -> None:
        parts = partition_counts(bootstrap, [topic], timeout_s).get(topic, 1)
        self._consumer = Consumer(
            {
                **kafka_conf(bootstrap),
                "group.id": f"hcp-assign-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(parts)])
        self.bad = 0

    def poll(
        self,
        fleet: Any,
        timeout_s: float = 0.05,
        max_messages: int = 10_000,
        now_ms: int | None = None,
    ) -> int:
        """Apply what is there; ``now_ms`` is the fleet's clock (see :func:`apply_assignment`)."""
        applied = 0
        for record in self._consumer.consume(max_messages, timeout_s):
            err = record.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("assignment topic error: %s", err)
                continue
            try:
                apply_assignment(fleet, decode_assignment(record.value()), now_ms)
                applied += 1
            except (ValueError, KeyError, TypeError) as exc:
                self.bad += 1
                log.warning("skipping bad assignment message at offset %s: %s",
                            record.offset(), exc)
        return applied

    def close(self) -> None:
        self._consumer.close()
