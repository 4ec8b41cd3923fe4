"""Produce workload requests and wait for the broker's acknowledgement.

One librdkafka producer per process, polled by a daemon thread; each produce resolves an
asyncio future from the delivery callback, so a handler answers 202 only after the broker
acknowledged (``acks=all``), or 503 when it did not within ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from confluent_kafka import KafkaException, Producer

from api.problems import ProblemError, unavailable
from hcp.kafka_config import kafka_conf
from hcp.workload_requests import partition_for, request_key

__all__ = ["RequestProducer"]

log = logging.getLogger(__name__)


def _on_error(err: object) -> None:
    log.debug("broker: %s", err)


class RequestProducer:
    """Produces to one topic; :meth:`send` returns once the message is durable.

    Messages are keyed by the workload id and go to :func:`partition_for`'s partition.
    """

    def __init__(self, bootstrap: str, topic: str, timeout_s: float) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer = Producer(
            {
                **kafka_conf(bootstrap),
                "acks": "all",
                "enable.idempotence": False,
                "linger.ms": 1,
                "message.timeout.ms": max(1000, int(timeout_s * 1000)),
                "socket.connection.setup.timeout.ms": 2000,
                "reconnect.backoff.max.ms": 1000,
                # librdkafka logs each failed connect otherwise; /api/v1/health and the
                # 503 bodies say when the broker is away.
                "log_level": 0,
                "error_cb": _on_error,
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="api-producer", daemon=True)
        self._thread.start()
        self._health: tuple[float, str | None] = (0.0, None)
        # Every producer puts a workload's messages on partition_for's partition, so a
        # cancel is read after its submit (hcp/workload_requests.py).
        self._partitions: int | None = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, key: str, value: bytes) -> None:
        """Produce and wait for the acknowledgement; a 503 ProblemError when it does not come."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def delivered(err: object, _msg: object) -> None:
            def settle() -> None:
                if done.done():
                    return
                if err is None:
                    done.set_result(None)
                else:
                    done.set_exception(unavailable("broker", f"not acknowledged: {err}"))

            loop.call_soon_threadsafe(settle)

        if self._partitions is None:
            self._partitions = await asyncio.to_thread(self._partition_count)
        extra = {"partition": partition_for(key, self._partitions)} if self._partitions else {}
        try:
            self._producer.produce(
                self.topic, value, key=request_key(key), on_delivery=delivered, **extra
            )
        except (BufferError, KafkaException) as exc:
            raise unavailable("broker", f"cannot queue the message: {exc}") from None
        try:
            await asyncio.wait_for(done, self.timeout_s + 1)
        except TimeoutError:
            raise unavailable("broker", f"no acknowledgement within {self.timeout_s:g} s") from None
        except ProblemError:
            raise

    def _partition_count(self) -> int | None:
        """Partitions of the requests topic; None (ask again next time) when unknown."""
        try:
            meta = self._producer.list_topics(self.topic, timeout=self.timeout_s)
        except KafkaException:
            return None
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return None
        return len(topic.partitions)

    def check(self, timeout_s: float = 1.0) -> str | None:
        """None when the broker answers a metadata request, else why not (cached 1 s)."""
        at, reason = self._health
        if time.monotonic() - at < 1.0:
            return reason
        try:
            meta = self._producer.list_topics(timeout=timeout_s)
            reason = None if meta.brokers else "no broker in the metadata"
        except KafkaException as exc:
            reason = f"{self.bootstrap}: {exc.args[0].str() if exc.args else exc}"
        self._health = (time.monotonic(), reason)
        return reason

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._producer.flush(1)
