"""The job as users start it: `hcp run`, `python -m bytewax.run flows.job`, signals, /metrics.

Inputs come from the simulators; the figures read back from Redis are checked against the
SPEC formulas computed here from the very messages on the topics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import polars as pl
import pytest
import redis

from generators.run import generate
from generators.scenario import load_scenario
from generators.simulation import SimConfig
from hcp.topics import Topics
from tests.support.generator_helpers import read_topic
from tools.broker import free_port

START = 1_767_225_600_000
MIN = 60_000


def job_env(bootstrap: str, topics: Topics, redis_url: str, prefix: str, pg_dsn: str) -> dict:
    env = dict(os.environ)
    env.update(
        HCP_KAFKA_BOOTSTRAP=bootstrap,
        HCP_TOPIC_PREFIX=topics.prefix,
        HCP_REDIS_URL=redis_url,
        HCP_REDIS_PREFIX=prefix,
        HCP_PG_DSN=pg_dsn,
        HCP_METRICS_PORT="0",
        HCP_LATENESS_S="0",
    )
    return env


@pytest.fixture()
def generated(bootstrap: str, topics: Topics) -> Topics:
    sites = ["site-01", "site-02"]
    config = SimConfig(
        seed=3,
        gpus=6,
        asics=20,
        sites=2,
        start_ms=START,
        duration_s=300,
        scenario=load_scenario("demo", START, sites),
    )
    generate(config, bootstrap, topics, partitions=4)
    return topics


def windows_from_topics(bootstrap: str, topics: Topics) -> pl.DataFrame:
    asics = [
        json.loads(v) for part in read_topic(bootstrap, topics.asic, 4).values() for _, v in part
    ]
    return (
        pl.DataFrame(asics)
        .with_columns((pl.col("ts") // MIN * MIN).alias("window_start"))
        .group_by("asic_id", "window_start")
        .agg(pl.col("hashrate_ths").mean(), pl.col("power_w").mean(), pl.col("site").first())
    )


def price_reader(bootstrap: str, topics: Topics) -> Callable[[str, int], float]:
    rows = [
        json.loads(v) for part in read_topic(bootstrap, topics.prices, 4).values() for _, v in part
    ]

    def as_of(key: str, end: int) -> float:
        best = None
        for r in rows:
            scope = r.get("site") or r.get("model") or ""
            scoped = r["kind"] in ("electricity_usd_mwh", "gpu_spot_usd_hr", "power_cap_mw")
            k = f"{r['kind']}:{scope}" if scoped else r["kind"]
            if k == key and r["ts"] < end and (best is None or r["ts"] >= best[0]):
                best = (r["ts"], r["value"])
        assert best is not None
        return best[1]

    return as_of


def test_hcp_run_once_writes_spec_figures_to_redis(
    bootstrap: str, generated: Topics, redis_url: str, redis_prefix: str, pg_dsn: str
) -> None:
    env = job_env(bootstrap, generated, redis_url, redis_prefix, pg_dsn)
    done = subprocess.run(
        [sys.executable, "-m", "tools", "run", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    expected = windows_from_topics(bootstrap, generated)
    last = expected.filter(pl.col("window_start") == expected["window_start"].max())
    prices_as_of = price_reader(bootstrap, generated)
    assert last.height == 20
    for row in last.iter_rows(named=True):
        rec = client.hgetall(f"{redis_prefix}rec:{row['asic_id']}")
        end = row["window_start"] + MIN
        assert int(rec["window_end"]) == end
        btc = prices_as_of("btc_usd", end)
        diff = prices_as_of("difficulty", end)
        elec = prices_as_of(f"electricity_usd_mwh:{row['site']}", end)
        reward = prices_as_of("block_reward_btc", end)
        revenue = row["hashrate_ths"] * 1e12 * 3600 * reward / (diff * 2**32) * btc
        cost = row["power_w"] / 1e6 * elec
        assert float(rec["revenue_usd_hr"]) == pytest.approx(revenue, rel=1e-9)
        assert float(rec["cost_usd_hr"]) == pytest.approx(cost, rel=1e-9)
        assert float(rec["net_usd_hr"]) == pytest.approx(revenue - cost, rel=1e-9)
        assert rec["action"] in ("mine", "curtail")
    # One stream entry per device and window; the fleet summary adds up the latest window.
    n_windows = expected["window_start"].n_unique()
    assert client.xlen(f"{redis_prefix}recommendations") == 26 * n_windows
    fleet = client.hgetall(f"{redis_prefix}summary:fleet")
    assert int(fleet["devices"]) == 26


def test_bytewax_run_entry_point_with_two_workers(
    bootstrap: str, generated: Topics, redis_url: str, redis_prefix: str, pg_dsn: str
) -> None:
    env = job_env(bootstrap, generated, redis_url, redis_prefix, pg_dsn)
    env.update(HCP_ONCE="1", HCP_NO_PG="1")
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.job", "-w", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(f"{redis_prefix}recommendations") == 26 * 5


def test_streaming_job_serves_metrics_and_stops_cleanly_on_sigterm(
    bootstrap: str, generated: Topics, redis_url: str, redis_prefix: str, pg_dsn: str
) -> None:
    port = free_port()
    env = job_env(bootstrap, generated, redis_url, redis_prefix, pg_dsn)
    env.update(HCP_METRICS_PORT=str(port), HCP_IDLE_TIMEOUT_S="1")
    job = subprocess.Popen(
        [sys.executable, "-m", "tools", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "hcp_recommendations_total" not in body:
            time.sleep(1)
            try:
                body = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                    .read()
                    .decode()
                )
            except OSError:
                continue
        for name in (
            "hcp_events_in_total",
            "hcp_windows_closed_total",
            "hcp_recommendations_total",
            "hcp_btc_usd",
            "hcp_batch_seconds",
            "hcp_sink_write_seconds",
        ):
            assert name in body
        job.send_signal(signal.SIGTERM)
        output, _ = job.communicate(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output[-2000:]
    assert "signal 15" in output


def test_unreachable_broker_is_one_clear_line() -> None:
    port = free_port()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tools", "run", "--bootstrap", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr and "HCP_KAFKA_BOOTSTRAP" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 20
