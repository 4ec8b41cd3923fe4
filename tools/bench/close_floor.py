"""The floor of a window close: what its Redis and PostgreSQL writes must cost, vs HCP's.

    .venv/bin/python -m tools.bench.close_floor --devices 310000 [--windows 3]

One process, one run, interleaved per window so machine noise hits both sides alike:

- HCP: the job's history step (:class:`sinks.overlap.OverlappedSinks` over the Redis and
  PostgreSQL sinks) writes one window of recommendations to Redis and the same window's
  recommendations and device windows to PostgreSQL, exactly as ``hcp run`` closes it.
  Window 0 writes full hashes; later windows are what a live fleet sends next
  (:func:`tools.bench.redis_sink.next_window`), the steady state.
- Floor, Redis: the very RESP bytes HCP sent for that window (recorded beforehand under
  another prefix of the same length, so every length stays right), written down one raw
  socket while another thread reads and counts the replies: ``redis-benchmark -P`` style,
  no packing, no parsing. It is what Redis needs to execute those commands.
- Floor, PostgreSQL: ``COPY`` of the same rows, their CSV built beforehand, into a fresh
  database with the same migrations, one transaction per window.

Both floors run at once in two threads, as HCP's two sinks do. Printed per window: wall
seconds, this process's CPU seconds, Redis server CPU seconds (INFO cpu) and the ratio
HCP / floor. Keys go under fresh prefixes and the databases are dropped afterwards.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import polars as pl
import psycopg
import redis
from psycopg import sql

from hcp.config import positive_int
from hcp.redis_client import redis_client
from hcp.schemas import WINDOW_SCHEMA
from hcp.settings import add_settings
from sinks.overlap import OverlappedSinks
from sinks.postgres.schema import apply_migrations
from sinks.postgres.sink import PostgresSink
from sinks.postgres.writer import PgWriter
from sinks.redis import resp
from sinks.redis.sink import RedisSink
from tools.bench.hooks import delete_redis_prefix, fresh_database
from tools.bench.redis_sink import next_window, synthetic_recs

__all__ = ["main", "window_rows_for"]

_T0 = 1_800_000_000_000


def window_rows_for(recs: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Device windows (WINDOW_SCHEMA) of the devices and window of ``recs``."""
    rng = np.random.default_rng(seed)
    n = recs.height
    gpu = (recs["device_type"] == "gpu").to_numpy()
    power = np.where(gpu, rng.normal(650, 30, n), rng.normal(3_500, 50, n))
    hashrate = np.where(gpu, np.nan, rng.normal(200, 5, n))
    frame = pl.DataFrame(
        {
            "device_id": recs["device_id"],
            "device_type": recs["device_type"],
            "site": recs["site"],
            "model": recs["model"],
            "window_start": recs["window_start"],
            "window_end": recs["window_end"],
            "samples": np.full(n, 60, dtype=np.int64),
            "util_pct": np.where(gpu, rng.uniform(0, 100, n), np.nan),
            "power_w": power,
            "temp_c": rng.normal(65, 3, n),
            "hashrate_ths": hashrate,
            "shares_accepted": rng.integers(500, 900, n),
            "shares_rejected": rng.integers(0, 10, n),
            "hw_errors": rng.integers(0, 5, n),
            "busy_fraction": np.where(gpu, rng.uniform(0, 1, n), np.nan),
            "j_per_th": power / hashrate,
            "reject_rate": rng.uniform(0, 0.01, n),
        }
    )
    return frame.fill_nan(None).cast(WINDOW_SCHEMA)  # type: ignore[arg-type]


@dataclass
class Recorded:
    """The raw payloads HCP submitted for one window, with their reply counts."""

    payloads: list[tuple[bytes, int, int]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p, _, _ in self.payloads)


def record_payloads(url: str, prefix: str, windows: list[pl.DataFrame]) -> list[Recorded]:
    """Write ``windows`` through HCP's Redis sink under ``prefix``, keeping each RESP payload."""
    recorded: list[Recorded] = []
    original = resp.RawPipeline.submit

    def keep(self: resp.RawPipeline, payload: resp.Payload, n_replies: int, n_lines: int) -> None:
        recorded[-1].payloads.append((bytes(payload), n_replies, n_lines))
        original(self, payload, n_replies, n_lines)

    part = RedisSink(url, prefix).build("record", 0, 1)
    resp.RawPipeline.submit = keep  # type: ignore[method-assign]
    try:
        for df in windows:
            recorded.append(Recorded())
            part.write_batch([("recs", df)])
    finally:
        resp.RawPipeline.submit = original  # type: ignore[method-assign]
        part.close()
    return recorded


def redis_floor(url: str, payloads: list[tuple[bytes, int, int]]) -> float:
    """Seconds to pipeline ``payloads`` down one socket and read every reply line."""
    parsed = urlparse(url)
    sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379))
    try:
        if parsed.path.strip("/"):
            sock.sendall(resp.header(2, "SELECT", parsed.path.strip("/")).encode())
            sock.recv(64)
        want = sum(n_lines for _, _, n_lines in payloads)
        started = time.perf_counter()
        sender = threading.Thread(target=lambda: [sock.sendall(p) for p, _, _ in payloads])
        sender.start()
        lines, tail = 0, b""
        while lines < want:
            chunk = sock.recv(1 << 20)
            if not chunk:
                msg = "Redis closed the connection"
                raise redis.ConnectionError(msg)
            joined = tail + chunk
            lines += joined.count(b"\r\n") - tail.count(b"\r\n")
            tail = joined[-1:]
        took = time.perf_counter() - started
        sender.join()
        return took
    finally:
        sock.close()


def csv_of(writer: PgWriter, table: str, frame: pl.DataFrame) -> bytes:
    """The CSV HCP's fast path COPYs for ``frame`` into ``table`` (times as ISO UTC)."""
    info = writer.table(table)
    prepared = writer.prepare(table, frame)
    times = [
        pl.from_epoch(pl.col(c), time_unit="ms").dt.replace_time_zone("UTC").alias(c)
        for c, t in zip(info.columns, info.types, strict=True)
        if t == "timestamp with time zone"
    ]
    buf = io.BytesIO()
    prepared.with_columns(times).write_csv(buf, include_header=False)
    return buf.getvalue()


def pg_floor(conn: psycopg.Connection, writer: PgWriter, copies: dict[str, bytes]) -> float:
    """Seconds to COPY prepared CSV into each table, in one transaction."""
    started = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        for table, data in copies.items():
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in writer.table(table).columns)
            stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
                sql.Identifier(table), cols
            )
            with cur.copy(stmt) as copy:
                copy.write(data)
    return time.perf_counter() - started


def _both(jobs: dict[str, Callable[[], Any]]) -> tuple[float, dict[str, float]]:
    """Run the jobs at once in threads; wall seconds and each job's own seconds."""
    took: dict[str, float] = {}
    errors: list[BaseException] = []

    def run(name: str, job: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            job()
        except BaseException as exc:
            errors.append(exc)
        took[name] = time.perf_counter() - t0

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, took


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _prefix() -> str:
    return f"floor{uuid.uuid4().hex[:8]}:"  # every prefix the same length


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.close_floor",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(parser, "redis")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL server (fresh databases are made and dropped)")
    parser.add_argument("--devices", type=positive_int, default=310_000, help="rows per window")
    parser.add_argument("--windows", type=positive_int, default=3,
                        help="windows to close (the first full, the rest live updates)")
    args = parser.parse_args(argv)

    windows = [synthetic_recs(args.devices, _T0)]
    for i in range(1, args.windows):
        windows.append(next_window(windows[-1], seed=i))
    device_windows = [window_rows_for(w, seed=i) for i, w in enumerate(windows)]
    client = redis_client(args.redis)
    rec_prefix, hcp_prefix, floor_prefix = _prefix(), _prefix(), _prefix()
    load = os.getloadavg()
    print(f"devices={args.devices} windows={args.windows} "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    with ExitStack() as stack:
        hcp_db = stack.enter_context(fresh_database(args.pg, "closehcp"))
        floor_db = stack.enter_context(fresh_database(args.pg, "closefloor"))
        stack.callback(delete_redis_prefix, args.redis, rec_prefix)
        stack.callback(delete_redis_prefix, args.redis, hcp_prefix)
        stack.callback(delete_redis_prefix, args.redis, floor_prefix)
        apply_migrations(hcp_db)
        apply_migrations(floor_db)
        floor_conn = stack.enter_context(psycopg.connect(floor_db, autocommit=True))
        floor_writer = PgWriter(floor_conn)
        # Untimed: compile the packer, record the bytes the floor replays, build its CSV.
        recorded = record_payloads(args.redis, rec_prefix, windows)
        delete_redis_prefix(args.redis, rec_prefix)
        copies = [
            {"recommendations": csv_of(floor_writer, "recommendations", recs),
             "device_windows": csv_of(floor_writer, "device_windows", wins)}
            for recs, wins in zip(windows, device_windows, strict=True)
        ]
        hcp = OverlappedSinks({
            "redis": RedisSink(args.redis, hcp_prefix),
            "pg": PostgresSink(hcp_db, store_raw=False),
        }).build("close_floor", 0, 1)
        stack.callback(hcp.close)
        old, new = rec_prefix.encode(), floor_prefix.encode()
        ratios = []
        for i, (recs, wins) in enumerate(zip(windows, device_windows, strict=True)):
            kind = "full" if i == 0 else "live"
            items = [("redis", ("recs", recs)), ("pg", ("recs", recs)), ("pg", ("windows", wins))]
            cpu0, rcpu0, t0 = time.process_time(), _redis_cpu(client), time.perf_counter()
            hcp.write_batch(items)
            hcp_s = time.perf_counter() - t0
            hcp_cpu, hcp_rcpu = time.process_time() - cpu0, _redis_cpu(client) - rcpu0
            payloads = [(p.replace(old, new), n, k) for p, n, k in recorded[i].payloads]
            cpu0, rcpu0 = time.process_time(), _redis_cpu(client)
            floor_s, parts = _both({
                "redis": lambda p=payloads: redis_floor(args.redis, p),
                "pg": lambda c=copies[i]: pg_floor(floor_conn, floor_writer, c),
            })
            floor_cpu, floor_rcpu = time.process_time() - cpu0, _redis_cpu(client) - rcpu0
            ratios.append(hcp_s / floor_s)
            load = os.getloadavg()[0]
            print(f"window {i} ({kind}, {recorded[i].nbytes / 1e6:,.0f} MB RESP): "
                  f"HCP {hcp_s:.2f} s (cpu {hcp_cpu:.2f} s, Redis cpu {hcp_rcpu:.2f} s) | "
                  f"floor {floor_s:.2f} s (Redis {parts['redis']:.2f} s, COPY {parts['pg']:.2f} s;"
                  f" cpu {floor_cpu:.2f} s, Redis cpu {floor_rcpu:.2f} s) | "
                  f"ratio {hcp_s / floor_s:.2f} | load {load:.2f}", flush=True)
        live = ratios[1:] or ratios
        print(f"ratio HCP/floor: full {ratios[0]:.2f}, live mean {sum(live) / len(live):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
