"""Friction items of issue 18 as users meet them: `hcp broker` (9), the `--once` summary (14),
`hcp record` into an existing recording (15) and the demo's live view and hint (16)."""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from confluent_kafka import Producer

from generators.run import generate
from generators.simulation import SimConfig
from hcp.errors import ConfigError
from hcp.kafka_admin import check_broker, ensure_topics
from hcp.topics import Topics
from tools.demo import _closing_hint, _view
from tools.record.recording import read_manifest, record

START = 1_767_225_600_000


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_broker_command_prints_its_address_and_stops_on_a_signal(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools", "broker", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", address), address
        check_broker(address)  # a real Kafka-protocol answer
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    host, port = address.split(":")
    with socket.socket() as probe:
        assert probe.connect_ex((host, int(port))) != 0  # the broker process is gone too


def test_once_prints_what_it_did(bootstrap: str, topics: Topics) -> None:
    config = SimConfig(seed=5, gpus=2, asics=3, sites=1, start_ms=START, duration_s=120,
                       workloads=False)
    made = generate(config, bootstrap, topics, partitions=1)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topics.gpu, b"not json", b"gpu-x", partition=0)
    assert producer.flush(10) == 0
    done = subprocess.run(
        [sys.executable, "-m", "tools", "run", "--once", "--no-pg", "--no-redis",
         "--metrics-port", "0", "--idle-timeout-s", "1", "--bootstrap", bootstrap,
         "--topic-prefix", topics.prefix],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1]
    gpu = made.counts[topics.gpu] + 1
    events = made.events + 1
    assert line.startswith(f"once: {events:,} events (")
    assert f"telemetry.gpu {gpu:,}" in line
    assert f"telemetry.asic {made.counts[topics.asic]:,}" in line
    assert "10 device windows closed (asic 6, gpu 4)" in line  # 5 devices x 2 minutes
    assert "1 dead letters (telemetry.gpu 1)" in line
    assert "0 late events dropped" in line


def _recorded_topics(bootstrap: str, topics: Topics) -> list[str]:
    ensure_topics(bootstrap, [topics.prices, topics.gpu], partitions=1)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topics.prices, b"{}", b"k", partition=0)
    assert producer.flush(10) == 0
    return [topics.prices, topics.gpu]


def test_record_refuses_or_replaces_an_old_recording(bootstrap: str, topics: Topics,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "rec"
    first = _recorded_topics(bootstrap, topics)
    record(bootstrap, first, out, prefix=topics.prefix)
    assert (out / f"{topics.gpu}.parquet").exists()
    with pytest.raises(ConfigError, match=r"already holds a recording.*--overwrite"):
        record(bootstrap, first[:1], out, prefix=topics.prefix)
    record(bootstrap, first[:1], out, prefix=topics.prefix, overwrite=True)
    # Only the new recording's files remain, so the directory and its manifest agree.
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", f"{topics.prices}.parquet"]
    assert [r.topic for r in read_manifest(out)[1]] == [topics.prices]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not a recording's.*notes\.txt"):
        record(bootstrap, first[:1], out, prefix=topics.prefix, overwrite=True)


def test_demo_view_shows_the_prices_each_window_used(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    p = redis_prefix
    end = START + 60_000
    client.hset(f"{p}summary:fleet", mapping={"window_end": end, "net_usd_hr": 12.5})
    client.hset(f"{p}summary:site:site-01", mapping={"window_end": end, "n_mine": 3,
                                                     "net_usd_hr": 4.0})
    # The newest prices, minutes ahead of the window on screen: not what it decided on.
    client.hset(f"{p}prices", mapping={"btc_usd": 50_000, "electricity_usd_mwh:site-01": 999,
                                       "power_cap_mw:site-01": 0.1})
    used = {"site": "site-01", "btc_usd": "97000", "electricity_usd_mwh": "42.5",
            "power_cap_mw": "0.35", "window_end": str(end)}
    client.xadd(f"{p}recommendations", {**used, "device_id": "asic-1"}, id=f"{end}-0")
    client.xadd(f"{p}recommendations", {**used, "device_id": "asic-2"}, id=f"{end}-1")
    view = _view(client, p, ["site-01"])
    assert "BTC 97,000 $" in view
    assert "electricity   42.5 $/MWh cap 350 kW" in view
    assert "999" not in view and "50,000" not in view


def test_demo_hint_keeps_the_redis_settings() -> None:
    given = argparse.Namespace(redis="redis://127.0.0.1:6380/3", redis_prefix="demo:")
    assert _closing_hint(given) == (
        "hcp recommendations --redis redis://127.0.0.1:6380/3 --redis-prefix demo:"
    )
    plain = argparse.Namespace(redis="redis://127.0.0.1:6379/0", redis_prefix="hcp:")
    assert _closing_hint(plain) == "hcp recommendations"
