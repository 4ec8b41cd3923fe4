"""A stop signal always stops the job; a Redis URL that Redis refuses fails in one line.

Outages are real here: a loopback port nobody listens on refuses every connection, as a
stopped Redis or PostgreSQL would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from hcp.errors import SinkUnavailableError
from hcp.shutdown import Shutdown
from hcp.topics import Topics
from sinks.postgres.sink import PostgresSink
from sinks.redis.sink import RedisWriter
from tests.support.flowkit import T0, make_topics, price_msg, produce
from tools.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
HCP = [sys.executable, "-m", "tools.cli"]


def _hcp(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*HCP, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )


def _error_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("hcp run: error:")]


def test_a_redis_db_index_out_of_range_fails_fast_in_one_line(
    bootstrap: str, topics: Topics
) -> None:
    started = time.monotonic()
    proc = _hcp("run", "--once", "--no-pg", "--bootstrap", bootstrap, "--topic-prefix",
                topics.prefix, "--redis", "redis://127.0.0.1:6379/99", "--metrics-port", "0")
    out, _ = proc.communicate(timeout=60)
    text = out.decode()
    assert proc.returncode == 2, text  # a configuration mistake
    assert time.monotonic() - started < 30
    (line,) = _error_lines(text)
    assert "DB index is out of range" in line and "--redis" in line
    assert "Traceback" not in text


def test_a_stop_signal_during_a_redis_outage_stops_the_job(
    bootstrap: str, topics: Topics
) -> None:
    make_topics(bootstrap, topics)
    produce(bootstrap, topics.prices, [price_msg("btc_usd", 1e5, T0)], "kind")
    down = f"redis://127.0.0.1:{free_port()}/7"  # nobody listens: every connect is refused
    proc = _hcp("run", "--no-pg", "--bootstrap", bootstrap, "--topic-prefix", topics.prefix,
                "--redis", down, "--metrics-port", "0")
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(ln.decode() for ln in proc.stdout), daemon=True  # type: ignore[union-attr]
    )
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("holding the batch and retrying" in ln for ln in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        time.sleep(1.0)  # well into the backoff
        os.kill(proc.pid, signal.SIGTERM)
        stopped = time.monotonic()
        rc = proc.wait(30)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(5)
    text = "".join(lines)
    assert took < 10, text
    assert rc == 1, text
    (line,) = _error_lines(text)
    assert "stopped while Redis" in line and "not written" in line
    assert "Traceback (most recent call last)" not in text


@pytest.mark.parametrize("sink", ["redis", "postgres"])
def test_a_stop_request_ends_a_sink_retry_loop_within_a_second(sink: str) -> None:
    port = free_port()  # refused: an outage that never ends
    rows = pl.DataFrame({"ts": [T0], "kind": ["btc_usd"], "scope": [""], "key": ["btc_usd"],
                         "value": [1e5]})
    shutdown = Shutdown()
    if sink == "redis":
        writer = RedisWriter(f"redis://127.0.0.1:{port}/0", backoff_max_s=5.0, shutdown=shutdown)
        write = writer.write_batch
    else:
        part = PostgresSink(f"postgresql://postgres@127.0.0.1:{port}/x", migrate=False,
                            backoff_max_s=5.0, shutdown=shutdown).build("pg", 0, 1)
        write = part.write_batch
    raised: list[BaseException] = []

    def run() -> None:
        try:
            write([("prices", rows)])
        except BaseException as exc:  # handed to the test thread
            raised.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(2.0)  # a few retries: the backoff has grown past a second
    assert t.is_alive(), raised
    shutdown.request()
    requested = time.monotonic()
    t.join(5)
    took = time.monotonic() - requested
    assert not t.is_alive()
    assert took < 1.0
    assert len(raised) == 1 and isinstance(raised[0], SinkUnavailableError)
    assert "stopped while" in str(raised[0])
