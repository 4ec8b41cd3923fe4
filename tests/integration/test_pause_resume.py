"""A producer pause on real topics: in-order data written after it is never late.

The job runs without --once. The producers write minutes 0-2, pause for longer than the
idle timeout (every input goes idle), then resume with minutes 2-6, the GPU topic about a
second before the others, as partitions do when collectors restart one by one. The first
partition back must not close the windows the others have not delivered yet.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import polars as pl
from bytewax.testing import run_main
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from flows.dataflow import build_flow
from flows.layout import TopicLayout
from flows.settings import JobSettings
from hcp.shutdown import Shutdown
from hcp.topics import Topics
from tests.support.flowkit import (
    T0,
    CaptureSink,
    asic_msg,
    gpu_msg,
    make_topics,
    price_msg,
    produce,
)

MIN = 60_000
GPUS = [f"gpu-{i}" for i in range(6)]
ASICS = [f"asic-{i}" for i in range(6)]
IDLE_S = 3.0


def _late() -> float:
    return sum(
        REGISTRY.get_sample_value(name, {"kind": kind}) or 0.0
        for name in ("hcp_late_events_total", "hcp_router_late_events_total")
        for kind in ("gpu", "asic", "prices", "workloads")
    )


def _minutes(first: int, last: int) -> tuple[list[dict], list[dict], list[dict]]:
    gpus, asics, prices = [], [], []
    for s in range(first * 60, last * 60, 10):
        ts = T0 + s * 1000
        gpus += [gpu_msg(g, ts) for g in GPUS]
        asics += [asic_msg(a, ts) for a in ASICS]
        if s % 30 == 0:
            prices += [
                price_msg("btc_usd", 100_000.0, ts),
                price_msg("difficulty", 1.2e14, ts),
                price_msg("electricity_usd_mwh", 40.0, ts, site="site-01"),
                price_msg("gpu_spot_usd_hr", 2.0, ts, model="H100-SXM"),
            ]
    return gpus, asics, prices


def _produce_prices(bootstrap: str, topic: str, prices: list[dict]) -> None:
    # Round-robin, so that every price partition takes part in the pause.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, msg in enumerate(prices):
        producer.produce(topic, json.dumps(msg).encode(), key=msg["kind"].encode(), partition=i % 4)
    assert producer.flush(30) == 0


def _wait(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_a_producer_pause_drops_no_in_order_data(bootstrap: str, topics: Topics) -> None:
    make_topics(bootstrap, topics)
    settings = JobSettings(
        bootstrap=bootstrap,
        topic_prefix=topics.prefix,
        no_redis=True,
        no_pg=True,
        metrics_port=0,
        lateness_s=5.0,
        idle_timeout_s=IDLE_S,
        partitions=4,
    )
    sink = CaptureSink()
    shutdown = Shutdown()
    flow = build_flow(settings, extra_sinks=[sink], shutdown=shutdown,
                      layout=TopicLayout.from_broker(settings))
    late_before = _late()
    job = threading.Thread(target=run_main, args=(flow,), daemon=True)
    job.start()

    def windows() -> pl.DataFrame:
        recs = sink.frame("windows")
        return recs if recs.height else pl.DataFrame({"window_start": [], "device_id": []})

    try:
        gpus, asics, prices = _minutes(0, 2)
        produce(bootstrap, topics.gpu, gpus, "gpu_id")
        produce(bootstrap, topics.asic, asics, "asic_id")
        _produce_prices(bootstrap, topics.prices, prices)
        # Window 0 closes once every input is past it (or idle): the job has read phase one.
        _wait(lambda: windows().height >= len(GPUS) + len(ASICS), 60)
        assert windows().height, "window 0 never closed"
        time.sleep(IDLE_S + 2.0)  # the pause: every input goes idle
        gpus, asics, prices = _minutes(2, 6)
        produce(bootstrap, topics.gpu, gpus, "gpu_id")
        time.sleep(1.0)  # the GPU partitions are back first
        produce(bootstrap, topics.asic, asics, "asic_id")
        _produce_prices(bootstrap, topics.prices, prices)
        # Windows 0-4 close (window 5 waits for later data); all devices in each.
        expected = 5 * (len(GPUS) + len(ASICS))
        _wait(lambda: windows().height >= expected, 30)
        time.sleep(IDLE_S + 1.0)  # nothing more comes: no late drop, no duplicate window
    finally:
        shutdown.request()
        job.join(30)
    assert not job.is_alive()
    recs = windows()
    late = _late() - late_before
    assert late == 0, f"{late} events dropped as late; window rows: {recs.height}"
    per_window = recs.group_by("window_start").agg(
        pl.col("device_id").n_unique().alias("devices"), pl.len().alias("rows"),
        pl.col("samples").sum().alias("samples"),
    ).sort("window_start")
    assert per_window["window_start"].to_list() == [T0 + m * MIN for m in range(5)]
    assert per_window["devices"].to_list() == [len(GPUS) + len(ASICS)] * 5
    assert per_window["rows"].to_list() == [len(GPUS) + len(ASICS)] * 5
    # Every sample of every device in every window: 6 per minute each.
    assert per_window["samples"].to_list() == [6 * (len(GPUS) + len(ASICS))] * 5
