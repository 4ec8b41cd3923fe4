"""The partition layout a dataflow is built for, and where it comes from.

Building a Bytewax dataflow does no I/O (connectors talk to the broker only when run),
but the shape of this one depends on partition counts: one shard per partition number of
the telemetry topics, one site group per shard, one source partition per topic-partition.
So the counts are an input of :func:`flows.dataflow.build_flow`:

- :meth:`TopicLayout.from_settings`: ``--partitions`` / ``HCP_PARTITIONS`` for every topic,
  no I/O; what ``python -m bytewax.run flows.job`` uses;
- :meth:`TopicLayout.from_broker`: the init step of ``hcp run`` (create missing topics with
  ``--partitions``, then read every topic's real count).

Either way the source checks the broker's counts against the layout when the dataflow
starts and stops the job with a one-line error on a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

from flows.settings import JobSettings
from hcp.kafka_admin import ensure_topics

__all__ = ["TopicLayout"]


@dataclass(frozen=True)
class TopicLayout:
    """Partitions per topic name."""

    partitions: dict[str, int]

    @classmethod
    def from_settings(cls, settings: JobSettings) -> TopicLayout:
        """Every topic with ``settings.partitions`` partitions; asks nobody."""
        return cls(dict.fromkeys(settings.topics.all(), settings.partitions))

    @classmethod
    def from_broker(cls, settings: JobSettings) -> TopicLayout:
        """Create missing topics (``settings.partitions`` each), then read every count."""
        return cls(ensure_topics(settings.bootstrap, settings.topics.all(), settings.partitions))

    def shards(self, settings: JobSettings) -> int:
        """Shards (and site groups): the telemetry topics' largest partition count."""
        t = settings.topics
        return max(self.partitions[t.gpu], self.partitions[t.asic])
