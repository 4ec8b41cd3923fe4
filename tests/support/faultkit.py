"""Tools of the fault-test suite: a cuttable TCP proxy, `hcp run` subprocesses, state dumps.

Everything is real: the job runs as its own process (so SIGKILL is a real crash), Redis,
PostgreSQL and the broker are reached through :class:`CutProxy` when a test wants to take
them away, and the final states are read back from the services themselves.

``python -m tests.support.faultkit bench-recovery`` prints the throughput cost of recovery
(events/s of ``hcp run --once`` with and without ``--recovery-dir``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
from confluent_kafka import Producer

from hcp.topics import Topics
from tests.support.flowkit import T0, asic_msg, gpu_msg, make_topics, price_msg, produce

ROOT = Path(__file__).resolve().parent.parent
HCP = str(Path(sys.executable).with_name("hcp"))
PG_ADMIN_DSN = os.environ.get(
    "HCP_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_TABLES = (
    "gpu_metrics",
    "asic_metrics",
    "market_prices",
    "device_windows",
    "recommendations",
    "workload_events",
)


# --- a TCP proxy the test controls ----------------------------------------------------------


class CutProxy:
    """Loopback TCP proxy: forwards to ``target`` until :meth:`cut`, then resets everything.

    While cut, live connections are reset and new ones refused with a RST, which is what
    clients see of a server that died or a network that dropped; :meth:`restore` forwards
    again. ``port`` may be fixed (a broker advertises it before the proxy exists).
    """

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.is_cut = False
        self.cut_seconds = 0.0
        self._cut_at = 0.0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self.is_cut = True
            self._cut_at = time.monotonic()
            conns, self._conns = self._conns, set()
        for conn in conns:
            _reset(conn)

    def restore(self) -> None:
        with self._lock:
            if self.is_cut:
                self.cut_seconds += time.monotonic() - self._cut_at
            self.is_cut = False

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.is_cut:
                _reset(conn)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(conn)
                continue
            with self._lock:
                self._conns.update((conn, upstream))
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or self.is_cut:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            _reset(s)
        with self._lock:
            self._conns.discard(src)
            self._conns.discard(dst)


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0 makes close() send RST, as a dead peer or a closed port answers. The
    # shutdown first: close() alone neither wakes a pipe thread blocked in recv() on this
    # socket nor tells the peer anything while that recv holds the socket open.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_target(url: str) -> tuple[str, int]:
    m = re.match(r"redis://([^:/]+):(\d+)", url)
    assert m, url
    return m.group(1), int(m.group(2))


# --- input -------------------------------------------------------------------------------


@dataclass
class Fleet:
    """Sizes of the simulated fleet the fault tests feed the job."""

    asics: int = 200
    gpus: int = 100
    minutes: int = 4
    step_s: int = 10
    sites: int = 3
    seed: int = 7


def fleet_messages(fleet: Fleet) -> tuple[list[dict], list[dict], list[dict]]:
    """Deterministic telemetry and prices: varied enough that windows and decisions differ."""
    rng = random.Random(fleet.seed)
    asics, gpus, prices = [], [], []
    for s in range(0, fleet.minutes * 60, fleet.step_s):
        ts = T0 + s * 1000
        for a in range(fleet.asics):
            site = f"site-{a % fleet.sites + 1:02d}"
            asics.append(
                asic_msg(
                    f"asic-{a:04d}",
                    ts + rng.randrange(1000),
                    site,
                    hashrate_ths=round(150 + rng.random() * 100, 3),
                    power_w=round(3000 + rng.random() * 1000, 1),
                )
            )
        for g in range(fleet.gpus):
            site = f"site-{g % fleet.sites + 1:02d}"
            state = rng.choice(("busy", "idle", "idle", "down"))
            gpus.append(gpu_msg(f"gpu-{g:04d}", ts + rng.randrange(1000), site, state))
        if s % 30 == 0:
            prices += [
                price_msg("btc_usd", 90_000.0 + rng.random() * 20_000, ts),
                price_msg("difficulty", 1.2e14, ts),
                price_msg("gpu_spot_usd_hr", 1.0 + rng.random() * 2, ts, model="H100-SXM"),
            ]
            for i in range(fleet.sites):
                site = f"site-{i + 1:02d}"
                prices.append(
                    price_msg("electricity_usd_mwh", 20 + rng.random() * 150, ts, site=site)
                )
            prices.append(price_msg("power_cap_mw", 0.2, ts, site="site-01"))
    return asics, gpus, prices


def fill_topics(bootstrap: str, topics: Topics, fleet: Fleet, bad: list[bytes] = ()) -> int:
    """Create the topics and write the fleet's messages (and ``bad`` ones); events written."""
    make_topics(bootstrap, topics)
    asics, gpus, prices = fleet_messages(fleet)
    n = produce_many(bootstrap, topics.asic, asics, "asic_id")
    n += produce_many(bootstrap, topics.gpu, gpus, "gpu_id")
    n += produce_many(bootstrap, topics.prices, prices, "kind")
    if bad:
        n += produce(bootstrap, topics.asic, list(bad), "asic_id")
    return n


def produce_many(bootstrap: str, topic: str, messages: list[dict], key_field: str) -> int:
    """As tests.support.flowkit.produce (same keys and partitions), waiting on a full queue."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for msg in messages:
        key = str(msg.get(key_field, "none")).encode()
        value = json.dumps(msg).encode()
        while True:
            try:
                producer.produce(topic, value, key=key, partition=zlib.crc32(key) % 4)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    return len(messages)


# --- the job as a process ----------------------------------------------------------------


@dataclass
class Job:
    """One ``hcp run`` subprocess; its output goes to ``log``."""

    args: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    offset: int = 0

    def start(self) -> Job:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        out = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        out.write(f"\n==== {' '.join(self.args)}\n".encode())
        out.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [HCP, *self.args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        out.close()
        self.started = time.monotonic()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """What this run (not earlier ones into the same log) printed."""
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")


def frontier(rec_dir: Path) -> int:
    """The furthest epoch any worker closed in a Bytewax recovery dir; -1 before any.

    Bytewax writes a worker's frontier with the snapshots of the epoch it closes, so this
    moving is the sign a snapshot was just written.
    """
    best = -1
    for part in rec_dir.glob("part-*.sqlite3"):
        try:
            conn = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=0.5)
            try:
                value = conn.execute("SELECT max(worker_frontier) FROM fronts").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            continue
        if value is not None:
            best = max(best, int(value))
    return best


KILL_MODES = ("before_first_snapshot", "mid_epoch", "after_snapshot")


def kill_at(
    job: Job, rec_dir: Path, mode: str, rng: random.Random, interval_s: float
) -> str | None:
    """SIGKILL the job at a point of kind ``mode``; the kind it really was, None if it ended.

    - before_first_snapshot: at a random moment of start-up, before this run closed an epoch;
    - mid_epoch: between snapshots, after 1-4 of them;
    - after_snapshot: the moment a snapshot (the 1st to 4th of this run) is seen.
    """
    start = frontier(rec_dir)
    deadline = time.monotonic() + 120
    if mode == "before_first_snapshot":
        at = time.monotonic() + rng.uniform(0.3, 1.5)
        while time.monotonic() < at and job.alive() and frontier(rec_dir) <= start:
            time.sleep(0.01)
        if not job.alive():
            return None
        moved = frontier(rec_dir) > start
        job.kill()
        return "mid_epoch" if moved else mode
    target = start + rng.randint(1, 4)
    while job.alive() and frontier(rec_dir) < target and time.monotonic() < deadline:
        time.sleep(0.005)
    if mode == "mid_epoch":
        time.sleep(interval_s * rng.uniform(0.3, 0.7))
    if not job.alive():
        return None
    job.kill()
    return mode


def job_args(
    bootstrap: str,
    topics: Topics,
    redis_url: str,
    redis_prefix: str,
    pg_dsn: str,
    *extra: str,
    batch_size: int = 200,
    metrics_port: int = 0,
) -> list[str]:
    return [
        "run",
        "--once",
        "--bootstrap",
        bootstrap,
        "--topic-prefix",
        topics.prefix,
        "--redis",
        redis_url,
        "--redis-prefix",
        redis_prefix,
        "--pg",
        pg_dsn,
        "--batch-size",
        str(batch_size),
        "--metrics-port",
        str(metrics_port),
        "--lateness-s",
        "5",
        "--idle-timeout-s",
        "0",
        *extra,
    ]


def scrape(port: int, name: str) -> dict[str, float]:
    """Samples of one metric family from a job's /metrics, by label text."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key[len(name) :]] = float(value)
    return out


# --- databases and state dumps -------------------------------------------------------------


@contextlib.contextmanager
def scratch_databases(n: int) -> Iterator[list[str]]:
    """``n`` fresh PostgreSQL databases, dropped afterwards."""
    names = [f"hcp_fault_{uuid.uuid4().hex[:10]}" for _ in range(n)]
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield [f"{base}/{name}" for name in names]
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_state(url: str, prefix: str) -> dict[str, object]:
    """Every key under ``prefix`` (prefix stripped): hashes, sets, streams with their ids."""
    client = redis.Redis.from_url(url, decode_responses=True)
    state: dict[str, object] = {}
    for key in client.scan_iter(f"{prefix}*", count=10_000):
        name = key[len(prefix) :]
        kind = client.type(key)
        if kind == "hash":
            state[name] = client.hgetall(key)
        elif kind == "set":
            state[name] = sorted(client.smembers(key))
        elif kind == "stream":
            state[name] = client.xrange(key)
        elif name.startswith("snapshot:site:"):  # binary Arrow: compared as its rows
            from sinks.redis.snapshot import decode_snapshot

            with redis.Redis.from_url(url) as raw:
                state[name] = tuple(decode_snapshot(raw.get(key)).rows())
        else:
            state[name] = client.dump(key)
    client.close()
    return state


def pg_state(dsn: str, max_window_end_ms: int | None = None) -> dict[str, list[tuple]]:
    """Every row of every HCP table, as sorted tuples of text.

    ``max_window_end_ms`` keeps only windows (and recommendations) that end by then.
    """
    out: dict[str, list[tuple]] = {}
    with psycopg.connect(dsn) as conn:
        for table in PG_TABLES:
            sql = f"SELECT * FROM {table}"  # fixed table names
            params: tuple = ()
            if max_window_end_ms is not None and table in ("device_windows", "recommendations"):
                sql += " WHERE window_end <= to_timestamp(%s / 1000.0)"
                params = (max_window_end_ms,)
            rows = conn.execute(sql, params).fetchall()
            out[table] = sorted(tuple(str(v) for v in r) for r in rows)
    return out


@dataclass
class Diff:
    """Lost and duplicated output of a run against the uninterrupted reference run."""

    compared: int = 0
    lost: int = 0
    duplicated: int = 0
    changed: int = 0
    detail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.changed == 0


def compare(ref_redis: dict, got_redis: dict, ref_pg: dict, got_pg: dict) -> Diff:
    """Row-level comparison: hash/row/entry missing = lost, extra or repeated = duplicated."""
    d = Diff()
    for key in sorted(set(ref_redis) | set(got_redis)):
        a, b = ref_redis.get(key), got_redis.get(key)
        if key.endswith("recommendations") or (
            isinstance(a, list) and a and isinstance(a[0], tuple)
        ):
            _compare_stream(d, key, a or [], b or [])
            continue
        d.compared += 1
        if b is None:
            d.lost += 1
            d.detail.append(f"redis {key} missing")
        elif a is None:
            d.duplicated += 1
            d.detail.append(f"redis {key} extra")
        elif a != b:
            d.changed += 1
            d.detail.append(f"redis {key} differs")
    for table in PG_TABLES:
        a, b = Counter(ref_pg.get(table, [])), Counter(got_pg.get(table, []))
        d.compared += sum(a.values())
        lost = sum((a - b).values())
        extra = sum((b - a).values())
        d.lost += lost
        d.duplicated += extra
        if lost or extra:
            d.detail.append(f"pg {table}: {lost} lost, {extra} extra")
    return d


def _compare_stream(d: Diff, key: str, a: list, b: list) -> None:
    d.compared += len(a)
    ref = Counter((i, tuple(sorted(f.items()))) for i, f in a)
    got = Counter((i, tuple(sorted(f.items()))) for i, f in b)
    lost, extra = sum((ref - got).values()), sum((got - ref).values())
    # A recommendation twice under different ids is a duplicate even if each id is unique.
    per_rec = Counter((f.get("device_id"), f.get("window_end")) for _, f in b)
    repeats = sum(n - 1 for n in per_rec.values() if n > 1)
    d.lost += lost
    d.duplicated += max(extra, repeats)
    if lost or extra or repeats:
        d.detail.append(f"stream {key}: {lost} lost, {extra} extra, {repeats} repeated")


def record_figures(config: object, name: str, figures: dict) -> Path:
    """Show the figures in pytest's output (with or without ``-s``) and keep them in JSON.

    The JSON file is ``$HCP_FAULT_FIGURES`` if set, else ``fault-figures.json`` in
    pytest's base temp directory; its path is shown with the figures.
    """
    factory = config._tmp_path_factory  # type: ignore[attr-defined]
    default = Path(factory.getbasetemp()) / "fault-figures.json"
    path = Path(os.environ.get("HCP_FAULT_FIGURES", str(default)))
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = figures
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    line = f"FAULT-FIGURES {name}: {json.dumps(figures, sort_keys=True)} ({path})"
    capture = config.pluginmanager.get_plugin("capturemanager")  # type: ignore[attr-defined]
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)
    return path


# --- bench-recovery -----------------------------------------------------------------------


def bench_recovery(fleet: Fleet, intervals: list[float], repeat: int) -> dict[str, object]:
    """events/s of ``hcp run --once`` over the same topics, without and with recovery.

    Time is the job's own "job finished in" figure (the dataflow, without interpreter
    start-up); the best of ``repeat`` runs per mode counts, as the machine is shared.
    """
    from tools.broker import EmbeddedBroker

    topics = Topics(prefix=f"b{uuid.uuid4().hex[:8]}.")
    redis_url = os.environ.get("HCP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    modes = [("without", None)] + [(f"with_snapshot_{i:g}s", i) for i in intervals]
    seconds: dict[str, list[float]] = {name: [] for name, _ in modes}
    with (
        EmbeddedBroker() as broker,
        scratch_databases(repeat * len(modes)) as dsns,
        tempfile.TemporaryDirectory() as tmp,
    ):
        events = fill_topics(broker.bootstrap, topics, fleet)
        fresh = iter(dsns)  # every run writes into empty tables, as the first run of a job
        for i in range(repeat):
            for name, interval in modes:
                dsn = next(fresh)
                prefix = f"bench{uuid.uuid4().hex[:6]}:"
                extra: list[str] = []
                if interval is not None:
                    extra = ["--snapshot-interval-s", str(interval),
                             "--recovery-dir", f"{tmp}/rec-{name}-{i}"]
                args = job_args(
                    broker.bootstrap, topics, redis_url, prefix, dsn, *extra, batch_size=50_000
                )
                job = Job(args, Path(tmp) / "bench.log").start()
                rc = job.wait(900)
                out = job.output()
                if rc != 0:
                    raise SystemExit(f"hcp run failed ({rc}):\n{out[-3000:]}")
                m = re.search(r"job finished in ([0-9.]+) s", out)
                seconds[name].append(float(m.group(1)) if m else time.monotonic() - job.started)
                _drop_prefix(redis_url, prefix)
    result: dict[str, object] = {"events": events, "seconds": seconds}
    for stat, pick in (("best", min), ("median", statistics.median)):
        base = events / pick(seconds["without"])
        result[f"without_events_per_s_{stat}"] = round(base)
        for name, _ in modes[1:]:
            rate = events / pick(seconds[name])
            result[f"{name}_events_per_s_{stat}"] = round(rate)
            result[f"{name}_cost_pct_{stat}"] = round(100 * (1 - rate / base), 1)
    return result


def _drop_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{prefix}*", count=10_000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.faultkit")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench-recovery", help="events/s of hcp run --once with/without recovery")
    b.add_argument("--asics", type=int, default=2000)
    b.add_argument("--gpus", type=int, default=1000)
    b.add_argument("--minutes", type=int, default=20)
    b.add_argument(
        "--snapshot-interval-s", type=float, nargs="+", default=[10.0, 1.0],
        help="snapshot intervals to measure (default: 10 = hcp run's default, and 1)",
    )
    b.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    fleet = Fleet(asics=args.asics, gpus=args.gpus, minutes=args.minutes)
    print(json.dumps(bench_recovery(fleet, args.snapshot_interval_s, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
