"""Redis outages: the sink holds the batch, retries with backoff and writes it all after.

Redis is reached through a loopback TCP proxy this test controls, which first refuses
connections (as a stopped Redis would), then forwards, or cuts a connection midway.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis

from sinks.metrics import SINK_OUTAGES
from sinks.redis.layout import RedisKeys
from sinks.redis.sink import RedisWriter
from tools.bench.redis_sink import synthetic_recs

W = 1_800_000_000_000
pytestmark = pytest.mark.fault


class Proxy:
    """Loopback TCP proxy to Redis: refuses until ``open_at``, can cut one connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open_at = 0.0
        self.cut_after_bytes: int | None = None  # cut the next connection after this many
        self.refused = 0
        self.cuts = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.open_at:
                self.refused += 1
                # RST instead of FIN, as a closed port answers.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                continue
            upstream = socket.create_connection(self.target)
            limit, self.cut_after_bytes = self.cut_after_bytes, None
            threading.Thread(target=self._pipe, args=(conn, upstream, limit), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, conn, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture()
def proxy(redis_url: str) -> Iterator[Proxy]:
    parts = urlsplit(redis_url)
    p = Proxy((parts.hostname or "127.0.0.1", parts.port or 6379))
    yield p
    p.close()


def _via(redis_url: str, proxy: Proxy) -> str:
    parts = urlsplit(redis_url)
    return f"redis://127.0.0.1:{proxy.port}{parts.path}"


def test_outage_holds_the_batch_and_logs_once(redis_url, redis_prefix, proxy, caplog):
    keys = RedisKeys(redis_prefix)
    direct = redis.Redis.from_url(redis_url, decode_responses=True)
    writer = RedisWriter(_via(redis_url, proxy), redis_prefix, chunk_rows=50)
    outages_before = SINK_OUTAGES.labels(sink="redis")._value.get()
    df = synthetic_recs(300, W)
    proxy.open_at = time.monotonic() + 2.0
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sinks.redis.sink"):
        writer.write_batch([("recs", df)])
    took = time.monotonic() - started
    writer.close()
    assert took >= 1.9
    assert proxy.refused >= 3  # backoff 0.2, 0.4, 0.8 ... s within the 2 s outage
    assert direct.xlen(keys.recs_stream) == 300
    assert sum(1 for _ in direct.scan_iter(f"{keys.rec}*")) == 300
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "holding the batch" in messages[0]
    assert "recovered after" in messages[1]
    assert SINK_OUTAGES.labels(sink="redis")._value.get() == outages_before + 1
    direct.close()


def test_connection_cut_mid_window_resumes_without_duplicates(
    redis_url, redis_prefix, proxy, caplog
):
    keys = RedisKeys(redis_prefix)
    direct = redis.Redis.from_url(redis_url, decode_responses=True)
    writer = RedisWriter(_via(redis_url, proxy), redis_prefix, chunk_rows=100)
    writer.write_batch([("recs", synthetic_recs(50, W - 60_000, seed=1))])
    writer.client.connection_pool.disconnect()  # the cut applies to the next connection
    df = synthetic_recs(1_000, W, seed=2)
    # Script loading and XINFO use the pooled connection; the raw pipeline opens a second
    # one, which is cut after about 300 KB of commands (~ a third of the window).
    proxy.cut_after_bytes = 300_000
    with caplog.at_level(logging.WARNING, logger="sinks.redis.sink"):
        writer.write_batch([("recs", df)])
    writer.close()
    assert proxy.cuts == 1
    entries = direct.xrange(keys.recs_stream, min=f"{W}-0")
    assert [e[0] for e in entries] == [f"{W}-{i}" for i in range(1_000)]
    ordered = df.sort("device_id")["device_id"].to_list()
    assert [e[1]["device_id"] for e in entries] == ordered
    assert direct.xlen(keys.recs_stream) == 1_050
    assert sum(1 for _ in direct.scan_iter(f"{keys.rec}*")) == 1_000  # the 50 are among them
    assert any("recovered after" in r.getMessage() for r in caplog.records)
    direct.close()
