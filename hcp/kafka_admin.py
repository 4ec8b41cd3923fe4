"""Broker checks, topic creation and end-of-topic discovery.

Tansu's ListOffsets answers with the last batch's base offset + 1, not the true end, so
:func:`end_offsets` finds each partition's end by fetching with ``enable.partition.eof``.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from hcp.errors import BrokerUnreachableError, HcpError
from hcp.kafka_config import kafka_conf, redact

__all__ = ["check_broker", "end_offsets", "ensure_topics", "partition_counts", "topic_names"]

log = logging.getLogger(__name__)

_HINT = ("set --bootstrap or HCP_KAFKA_BOOTSTRAP to a reachable broker; TLS and SASL "
         "settings come from --kafka-config / HCP_KAFKA_* (docs/security.md)")


def _admin(bootstrap: str, errors: list[str] | None = None) -> AdminClient:
    # log_level 0 keeps librdkafka's per-retry connection errors off stderr: an unreachable
    # broker is reported once, by check_broker, in words that name the flag to change.
    # ``errors`` collects the connection errors so that report can say why (a TLS handshake
    # that fails on the CA, a SASL login refused) rather than only "transport failure".
    conf = {**kafka_conf(bootstrap), "socket.connection.setup.timeout.ms": 3000, "log_level": 0}
    if errors is not None:
        conf["error_cb"] = lambda err: errors.append(err.str())
    return AdminClient(conf)


def _unreachable(bootstrap: str, exc: KafkaException, errors: list[str]) -> BrokerUnreachableError:
    # The last connection error is the most specific; secrets a property holds are masked.
    reason = redact(errors[-1] if errors else exc.args[0].str())
    return BrokerUnreachableError(f"Kafka broker at {bootstrap} is unreachable ({reason}); {_HINT}")


def check_broker(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`BrokerUnreachableError` within ``timeout_s`` if nobody answers."""
    partition_counts(bootstrap, [], timeout_s)


def partition_counts(bootstrap: str, topics: list[str], timeout_s: float = 5.0) -> dict[str, int]:
    """Partitions per existing topic; missing topics are left out."""
    errors: list[str] = []
    admin = _admin(bootstrap, errors)
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        admin.poll(0)  # serves error_cb with the connection errors seen so far
        raise _unreachable(bootstrap, exc, errors) from None
    return {
        t: len(meta.topics[t].partitions)
        for t in topics
        if t in meta.topics and meta.topics[t].error is None
    }


def ensure_topics(
    bootstrap: str, topics: list[str] | dict[str, int], partitions: int = 8, timeout_s: float = 15.0
) -> dict[str, int]:
    """Create the topics that are missing and wait until all are visible.

    ``topics`` is a list (each created with ``partitions``) or a mapping of topic to its
    own partition count. Existing topics keep theirs. Returns every topic's partition count.
    """
    wanted = topics if isinstance(topics, dict) else dict.fromkeys(topics, partitions)
    names = list(wanted)
    existing = partition_counts(bootstrap, names)
    missing = [t for t in names if t not in existing]
    if missing:
        admin = _admin(bootstrap)  # must outlive the futures it hands back
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=wanted[t], replication_factor=1) for t in missing],
            operation_timeout=10,
        )
        for topic, fut in futures.items():
            try:
                fut.result(timeout=timeout_s)
                log.info("created topic %s with %d partitions", topic, wanted[topic])
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    msg = f"cannot create topic {topic} on {bootstrap}: {exc.args[0].str()}"
                    raise HcpError(msg) from None
    # Metadata can lag a create by a moment; wait until every topic is visible.
    deadline = time.monotonic() + timeout_s
    while True:
        counts = partition_counts(bootstrap, names)
        if len(counts) == len(names):
            return counts
        if time.monotonic() > deadline:
            msg = f"topics {sorted(set(names) - set(counts))} are not visible on {bootstrap}"
            raise HcpError(msg)
        time.sleep(0.05)


def split_fetch(batch: list[Message], what: str) -> tuple[list[Message], list[Message]]:
    """A fetched batch as (records, end-of-partition events); any other error raises.

    ``what`` names the reader in the error (``reading hcp.dlq``). Consumers that find a
    partition's end through ``enable.partition.eof`` all need this split; the common case
    of a batch without events costs one pass.
    """
    records = [m for m in batch if m.error() is None]
    if len(records) == len(batch):
        return records, []
    eofs: list[Message] = []
    for m in batch:
        err = m.error()
        if err is None:
            continue
        if err.code() != KafkaError._PARTITION_EOF:
            msg = f"{what}: {err.str()}"
            raise HcpError(msg)
        eofs.append(m)
    return records, eofs


def end_offsets(
    bootstrap: str, topic: str, partitions: int, timeout_s: float = 30.0
) -> dict[int, int]:
    """The offset after the last record of each partition, found by reading to EOF.

    Reads only record metadata; used by ``--once`` runs and tests, not the hot path.
    """
    consumer = Consumer(
        {
            **kafka_conf(bootstrap),
            "group.id": f"hcp-eof-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 5,
        }
    )
    try:
        ends = {p: 0 for p in range(partitions)}
        pending = set(ends)
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(50_000, 0.5):
                err = msg.error()
                if err is None:
                    ends[msg.partition()] = msg.offset() + 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
        return ends
    finally:
        consumer.close()


def topic_names(bootstrap: str, timeout_s: float = 5.0) -> list[str]:
    """Names of every topic on the broker, sorted (for hints such as a mistyped prefix)."""
    try:
        meta = _admin(bootstrap).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        msg = f"Kafka broker at {bootstrap} is unreachable ({exc.args[0].str()}); {_HINT}"
        raise BrokerUnreachableError(msg) from None
    return sorted(meta.topics)
