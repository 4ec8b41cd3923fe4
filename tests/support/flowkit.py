"""Helpers for end-to-end flow tests: write known messages, run the job once, collect output."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable

import polars as pl
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import cluster_main, run_main
from confluent_kafka import Producer

from flows.dataflow import build_flow
from flows.layout import TopicLayout
from flows.settings import JobSettings
from hcp.kafka_admin import ensure_topics
from hcp.topics import Topics

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[dict | bytes],
    key_field: str,
    partitions: int = 4,
) -> int:
    """Write messages keyed by ``key_field``, partitioned by crc32 of the key."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    n = 0
    for msg in messages:
        if isinstance(msg, bytes):
            key, value = b"bad", msg
        else:
            key = str(msg.get(key_field, "none")).encode()
            value = json.dumps(msg).encode()
        producer.produce(topic, value, key=key, partition=zlib.crc32(key) % partitions)
        n += 1
    assert producer.flush(30) == 0
    return n


def asic_msg(asic: str, ts: int, site: str = "site-01", **over: object) -> dict:
    msg = {
        "v": 1,
        "ts": ts,
        "asic_id": asic,
        "site": site,
        "model": "S21",
        "state": "mining",
        "hashrate_ths": 200.0,
        "power_w": 3500.0,
        "temp_c": 60.0,
        "shares_accepted": 10,
        "shares_rejected": 1,
        "hw_errors": 0,
    }
    msg.update(over)
    return msg


def gpu_msg(gpu: str, ts: int, site: str = "site-01", state: str = "busy", **over: object) -> dict:
    msg = {
        "v": 1,
        "ts": ts,
        "gpu_id": gpu,
        "site": site,
        "model": "H100-SXM",
        "state": state,
        "util_pct": 92.0 if state == "busy" else 0.0,
        "temp_c": 65.0,
        "power_w": 650.0 if state == "busy" else 80.0,
        "mem_used_gb": 40.0,
        "mem_total_gb": 80.0,
        "workload_id": "wl-1" if state == "busy" else None,
    }
    msg.update(over)
    return msg


def price_msg(kind: str, value: float, ts: int, **scope: str) -> dict:
    return {"v": 1, "ts": ts, "kind": kind, "value": value, **scope}


class CaptureSink(DynamicSink):
    """Keeps every tagged output of the flow in memory, in arrival order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, pl.DataFrame]] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition:
        sink = self

        class _Part(StatelessSinkPartition):
            def write_batch(self, items: list) -> None:
                sink.items.extend(items)

        return _Part()

    def frame(self, tag: str) -> pl.DataFrame:
        frames = [df for t, df in self.items if t == tag]
        return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def make_topics(bootstrap: str, topics: Topics, partitions: int = 4) -> None:
    ensure_topics(bootstrap, topics.all(), partitions)


def run_once(bootstrap: str, topics: Topics, workers: int = 1, **overrides: object) -> CaptureSink:
    """Run the job with --once semantics in this process and return what it emitted."""
    settings = JobSettings(
        bootstrap=bootstrap,
        topic_prefix=topics.prefix,
        once=True,
        no_redis=True,
        no_pg=True,
        metrics_port=0,
        **overrides,  # type: ignore[arg-type]
    )
    sink = CaptureSink()
    flow = build_flow(settings, extra_sinks=[sink], layout=TopicLayout.from_broker(settings))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return sink
