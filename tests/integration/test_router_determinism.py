"""The router in the whole job: the same topics give the same placements however read.

The generators write requests, GPU telemetry and prices for a small fleet with the demo
scenario's bursts of urgent and training work. The job runs over those topics with one
and with two workers and with tiny and huge fetches; every run must emit the same workload
events and the same assignment messages, in the same order.
"""

from __future__ import annotations

import polars as pl
import pytest

from generators.keys import site_ids
from generators.run import generate
from generators.scenario import load_scenario
from generators.simulation import SimConfig
from hcp.topics import Topics
from tests.support.flowkit import T0, CaptureSink, run_once

SITES = 3


def outputs(sink: CaptureSink) -> tuple[pl.DataFrame, list[dict]]:
    events = sink.frame("workload_events")
    msgs = [m for tag, payload in sink.items if tag == "assignments" for m in payload]
    return events, msgs


@pytest.fixture(scope="module")
def generated(bootstrap: str) -> Topics:
    import uuid

    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    scenario = load_scenario("demo", T0, site_ids(SITES))
    config = SimConfig(seed=11, gpus=24, asics=6, sites=SITES, start_ms=T0, duration_s=660,
                       workload_rate=30.0, scenario=scenario)
    generate(config, bootstrap, topics, partitions=4)
    return topics


def test_workers_and_batch_size_do_not_change_placements(
    bootstrap: str, generated: Topics
) -> None:
    base_events, base_msgs = outputs(run_once(bootstrap, generated, batch_size=50_000))
    # The run did real work: placements, an urgent burst, expiries of unconfirmed work.
    assert base_events.height > 0
    states = set(base_events["to_state"].to_list())
    assert {"submitted", "queued", "assigned"} <= states
    assert any(m["action"] == "assign" for m in base_msgs)
    assert base_events.filter(pl.col("priority") == 9).height > 0
    # Open loop: nothing confirms the assignments, so the expiry timer fires too.
    assert "assign_timeout" in set(base_events["reason"].to_list())
    for workers, batch_size in ((2, 50_000), (1, 50), (2, 50)):
        events, msgs = outputs(
            run_once(bootstrap, generated, workers=workers, batch_size=batch_size)
        )
        label = f"workers={workers} batch_size={batch_size}"
        assert events.equals(base_events), label
        assert msgs == base_msgs, label


def test_the_branch_knows_every_partition_from_the_start(
    bootstrap: str, generated: Topics
) -> None:
    """Found from the flow's source, so no partition can be overtaken before it reports."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow

    from flows.router.flow import _find_inputs, router_inputs
    from flows.source import KafkaBatchSource

    source = KafkaBatchSource(bootstrap, {"gpu": generated.gpu, "asic": generated.asic,
                                          "prices": generated.prices,
                                          "workloads": generated.workloads})
    batches = op.input("kafka", Dataflow("find_inputs"), source)
    found = _find_inputs(batches)
    assert found == router_inputs(source)
    assert sorted(found) == sorted(
        f"{t}#{p}" for t in (generated.gpu, generated.prices, generated.workloads)
        for p in range(4)
    )


def test_streaming_run_emits_a_prefix_of_the_once_run(bootstrap: str, generated: Topics) -> None:
    """Without --once the router follows the fleet stage's fleet_wm; a stop keeps the rest."""
    import threading
    import time

    from bytewax.testing import run_main

    from flows.dataflow import build_flow
    from flows.layout import TopicLayout
    from flows.settings import JobSettings
    from hcp.shutdown import Shutdown

    full, _ = outputs(run_once(bootstrap, generated))
    settings = JobSettings(bootstrap=bootstrap, topic_prefix=generated.prefix, once=False,
                           no_redis=True, no_pg=True, metrics_port=0, idle_timeout_s=2)
    sink = CaptureSink()
    shutdown = Shutdown()
    flow = build_flow(settings, extra_sinks=[sink], layout=TopicLayout.from_broker(settings),
                      shutdown=shutdown)
    job = threading.Thread(target=run_main, args=(flow,))
    job.start()
    try:
        deadline = time.monotonic() + 60
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            n = sink.frame("workload_events").height
            if n != last:
                last, stable_since = n, time.monotonic()
            elif n > 0 and time.monotonic() - stable_since > 4:
                break
    finally:
        shutdown.request()
        job.join(60)
    assert not job.is_alive()
    wms = [wm for tag, wm in sink.items if tag == "fleet_wm"]
    assert wms and max(wms) < T0 + 660_000  # the last windows are still open
    events, _ = outputs(sink)
    # Routed while running, up to the fleet's progress; the last ticks wait for more input.
    assert 0 < events.height < full.height
    assert full.head(events.height).equals(events)
