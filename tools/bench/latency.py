"""Latency: from a window's end, on a simulated clock driven in real time, to its
recommendation being readable in Redis.

The generator runs at a fixed real-time rate, so simulated time ``t`` happens at wall time
``SimClock.wall_of(t)``. A window ``[start, end)`` is over at ``wall_of(end)``; its
recommendations are readable when they appear in the ``{prefix}recommendations`` stream,
whose entry ids are ``{window_end_ms}-{seq}`` (see sinks/redis/layout.py). The watcher
reads that stream as it grows and records, per recommendation, the wall time it was seen
minus ``wall_of(window_end)``. The latency therefore includes the allowed lateness the
flow waits before closing a window: that is the latency a user sees.

What is wired: the clock, the stream watcher and the percentiles. What is not: starting the
flow and the real-time generator (see :func:`measure_latency`, the lead wires it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from hcp.errors import HcpError
from hcp.kafka_config import kafka_conf
from hcp.redis_client import redis_client
from sinks.redis.layout import RedisKeys, stream_last_id

__all__ = [
    "LatencyResult",
    "RateLatency",
    "RecommendationWatcher",
    "SimClock",
    "SnapshotProgressWatcher",
    "StreamProgressWatcher",
    "devices_for_rate",
    "measure_latency",
    "percentiles",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimClock:
    """Maps simulated milliseconds to wall seconds: ``sim0_ms`` happened at ``wall0``."""

    sim0_ms: int
    wall0: float
    speed: float = 1.0

    @classmethod
    def starting_now(cls, sim0_ms: int, speed: float = 1.0) -> SimClock:
        return cls(sim0_ms, time.time(), speed)

    def wall_of(self, sim_ms: int) -> float:
        return self.wall0 + (sim_ms - self.sim0_ms) / 1000.0 / self.speed


@dataclass
class LatencyResult:
    """Per-recommendation latencies in seconds, and how many windows they cover."""

    latencies_s: list[float] = field(default_factory=list)
    windows: int = 0

    @property
    def p50_s(self) -> float | None:
        return percentiles(self.latencies_s)[0]

    @property
    def p99_s(self) -> float | None:
        return percentiles(self.latencies_s)[1]


def percentiles(values: Iterable[float], qs: tuple[float, ...] = (50, 99)) -> list[float | None]:
    """The ``qs`` percentiles of ``values`` (linear interpolation), ``None`` when empty."""
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return [None for _ in qs]
    return [float(v) for v in np.percentile(arr, qs)]


class RecommendationWatcher:
    """Reads the recommendations stream from "now" on, in a thread, timing each entry.

    Start it before the generator so no entry is missed; stop it after the last window
    of interest. Redis calls are plain blocking XREADs with a short block time so ``stop``
    returns promptly.
    """

    def __init__(self, redis_url: str, stream: str, clock: SimClock, batch: int = 50_000) -> None:
        self.client = redis_client(redis_url)
        self.stream = stream
        self.clock = clock
        self.batch = batch
        self.result = LatencyResult()
        self._windows: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-watcher", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> RecommendationWatcher:
        # "$" must be resolved now, not when the thread first reads, or early entries are lost.
        info = self.client.xinfo_stream(self.stream) if self.client.exists(self.stream) else None
        self._last_id = info["last-generated-id"] if info else b"0-0"
        self._thread.start()
        return self

    def stop(self) -> LatencyResult:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        self.result.windows = len(self._windows)
        return self.result

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                reply = self.client.xread({self.stream: self._last_id}, count=self.batch, block=100)
                seen_at = time.time()
                for _stream, entries in reply or []:
                    for entry_id, _fields in entries:
                        window_end = int(entry_id.split(b"-", 1)[0])
                        self._windows.add(window_end)
                        self.result.latencies_s.append(seen_at - self.clock.wall_of(window_end))
                    if entries:
                        self._last_id = entries[-1][0]
        except BaseException as exc:
            self._error = exc


@dataclass
class RateLatency:
    """Latency at one real-time rate: per-recommendation figures, raw and minus lateness."""

    events_per_s: float
    devices: int
    window_s: float
    lateness_s: float
    idle_timeout_s: float
    latencies_s: list[float] = field(default_factory=list, repr=False)
    windows: int = 0
    windows_expected: int = 0
    recommendations: int = 0
    generator_wall_s: float = 0.0
    generator_events: int = 0
    simulated_s: int = 0
    late_events: float | None = None
    readable_via: str = "stream"
    job_timers: dict[str, float | None] = field(default_factory=dict)
    snapshot_latencies_s: list[float] = field(default_factory=list, repr=False)

    @property
    def kept_up(self) -> bool:
        """Did the generator hold the real-time rate (finish within 2 s of schedule)?"""
        return self.generator_wall_s <= self.simulated_s + 2.0

    @property
    def job_kept_up(self) -> bool:
        """Did every measured window reach Redis within one window length of the lateness?

        A job that falls behind shows it as latency beyond a window: it would close each
        window after the next one had already ended.
        """
        p99 = percentiles(self.latencies_s)[1]
        return (
            self.windows >= self.windows_expected
            and p99 is not None
            and p99 <= self.lateness_s + self.window_s
        )

    def summary(self) -> dict:
        p50, p99 = percentiles(self.latencies_s)
        adj = [v - self.lateness_s for v in self.latencies_s]
        a50, a99 = percentiles(adj)
        s50, s99 = percentiles(self.snapshot_latencies_s)
        mx = max(self.latencies_s) if self.latencies_s else None
        rnd = (lambda v: None if v is None else round(v, 4))  # noqa: E731
        return {
            "events_per_s": self.events_per_s,
            "devices": self.devices,
            "measured_events_per_s": round(self.generator_events / self.generator_wall_s, 1)
            if self.generator_wall_s else None,
            "generator_kept_up": self.kept_up,
            "job_kept_up": self.job_kept_up,
            "window_s": self.window_s,
            "lateness_s": self.lateness_s,
            "idle_timeout_s": self.idle_timeout_s,
            "windows": self.windows,
            "windows_expected": self.windows_expected,
            "recommendations": self.recommendations,
            "p50_s": rnd(p50),
            "p99_s": rnd(p99),
            "max_s": rnd(mx),
            "p50_minus_lateness_s": rnd(a50),
            "p99_minus_lateness_s": rnd(a99),
            "late_events": self.late_events,
            "readable_via": self.readable_via,
            "snapshot_p50_s": rnd(s50),
            "snapshot_p99_s": rnd(s99),
            "snapshot_recommendations": len(self.snapshot_latencies_s),
            "job_timers": self.job_timers,
        }


class _PollingWatcher:
    """A thread that calls ``_poll`` every ``interval_s`` until stopped, collecting steps
    ``(wall time seen, window_end, recommendations of that window that became readable)``."""

    def __init__(self, redis_url: str, name: str, interval_s: float) -> None:
        self.client = redis_client(redis_url)
        self.interval_s = interval_s
        self.steps: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._error: BaseException | None = None

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.steps

    def _poll(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self._poll()
        except BaseException as exc:
            self._error = exc


class StreamProgressWatcher(_PollingWatcher):
    """Polls the stream's last id every ``interval_s`` and times each entry's appearance.

    Entry ids are ``{window_end}-{seq}`` with ``seq`` 0..n-1 per window (sinks/redis/recs.py),
    so the last id alone tells how many of a window's recommendations are readable; polling
    it is O(1), where reading every entry back would make the watcher the bottleneck.
    """

    def __init__(self, redis_url: str, stream: str, interval_s: float = 0.01) -> None:
        super().__init__(redis_url, "latency-watcher", interval_s)
        self.stream = stream

    def start(self) -> StreamProgressWatcher:
        self._last = stream_last_id(self.client, self.stream)
        self._thread.start()
        return self

    def _final_seq_before(self, window_end: int) -> tuple[int, int] | None:
        """The last entry with an id below ``window_end``-0, as (ms, seq)."""
        got = self.client.xrevrange(self.stream, max=f"({window_end}-0", count=1)
        if not got:
            return None
        ms, _, seq = got[0][0].decode().partition("-")
        return int(ms), int(seq)

    def _poll(self) -> None:
        now_id = stream_last_id(self.client, self.stream)
        seen = time.time()
        if now_id == self._last:
            return
        last_ms, last_seq = self._last
        if now_id[0] == last_ms:
            self.steps.append((seen, last_ms, now_id[1] - last_seq))
        else:
            # The window moved on: count what the earlier windows got since the
            # last poll, walking back from the new window to the one we knew.
            done: list[tuple[int, int]] = []
            upper = now_id[0]
            while (prev := self._final_seq_before(upper)) is not None:
                if prev[0] <= last_ms:
                    if prev[0] == last_ms and prev[1] > last_seq:
                        done.append((last_ms, prev[1] - last_seq))
                    break
                done.append((prev[0], prev[1] + 1))
                upper = prev[0]
            self.steps.extend((seen, ms, n) for ms, n in reversed(done))
            self.steps.append((seen, now_id[0], now_id[1] + 1))
        self._last = now_id


class SnapshotProgressWatcher(_PollingWatcher):
    """Polls the snapshot index every ``interval_s`` and times each site's new window.

    The index (``snapshot:sites``: site -> newest window_end) moves once a site's columnar
    snapshot is in Redis, which is how the API reads a window and the only sign of it
    under ``--redis-stream changed``. A step counts the site's rows of that window (its
    ``window_end`` column alone is decoded). One writer per site is assumed, as in one
    ``hcp run``: a second write of the same site and window does not move the index.
    """

    def __init__(self, redis_url: str, keys: RedisKeys, interval_s: float = 0.01) -> None:
        super().__init__(redis_url, "snapshot-watcher", interval_s)
        self.keys = keys
        self._known: dict[bytes, int] = {}

    def start(self) -> SnapshotProgressWatcher:
        self._known = {s: int(v) for s, v in self.client.hgetall(self.keys.snapshots).items()}
        self._thread.start()
        return self

    def _rows_of(self, site: bytes, window_end: int) -> int:
        import io

        import polars as pl

        raw = self.client.get(self.keys.snapshot(site.decode()))
        if raw is None:
            return 0
        ends = pl.read_ipc(io.BytesIO(raw), columns=["window_end"])["window_end"]
        return int((ends == window_end).sum())

    def _poll(self) -> None:
        index = self.client.hgetall(self.keys.snapshots)
        seen = time.time()
        for site, value in index.items():
            end = int(value)
            if end > self._known.get(site, -1):
                self._known[site] = end
                self.steps.append((seen, end, self._rows_of(site, end)))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metrics_text(port: int) -> str | None:
    """The job's /metrics page, None while it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def _scrape(port: int, name: str) -> float | None:
    text = _metrics_text(port)
    if text is None:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _scrape_job_timers(port: int) -> dict[str, float | None]:
    """Where the job's time went, from its own /metrics at the end of a run: the latest
    window's decision delay (wall time decided minus its simulated end, see
    :func:`measure_latency`) and the summed seconds of the stages and sink writes."""
    series = {
        "close_delay_s": "hcp_window_close_delay_seconds",
        "redis_write_s": 'hcp_sink_write_seconds_sum{sink="redis"}',
        "postgres_write_s": 'hcp_sink_write_seconds_sum{sink="postgres"}',
        "shards_s": 'hcp_stage_seconds_sum{stage="shards"}',
        "site_groups_s": 'hcp_stage_seconds_sum{stage="site_groups"}',
        "fleet_s": 'hcp_stage_seconds_sum{stage="fleet"}',
        "compliance_s": 'hcp_stage_seconds_sum{stage="compliance"}',
    }
    text = _metrics_text(port)
    if text is None:
        return dict.fromkeys(series)
    values = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        values[name] = value
    out: dict[str, float | None] = {}
    for key, name in series.items():
        raw = values.get(name)
        out[key] = None if raw is None else round(float(raw), 3)
    return out


def _wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"the HCP job of the latency run exited early (code {proc.returncode})"
            raise HcpError(msg)
        if _scrape(port, "hcp_late_events_total") is not None:
            return
        time.sleep(0.2)
    msg = "the HCP job of the latency run did not start within a minute"
    raise HcpError(msg)


def devices_for_rate(events_per_s: float) -> tuple[int, int]:
    """(asics, gpus) reporting at 1 Hz for ``events_per_s``, GPUs 1/31 as in the benchmark."""
    total = max(2, round(events_per_s))
    gpus = max(1, round(total * 10_000 / 310_000))
    return total - gpus, gpus


def measure_latency(
    bootstrap: str,
    redis_url: str,
    pg_dsn: str,
    *,
    events_per_s: float = 50_000,
    window_s: float = 10.0,
    windows: int = 3,
    lateness_s: float = 1.0,
    idle_timeout_s: float = 0.5,
    sites: int = 8,
    drain_s: float = 30.0,
    log_to: TextIO | None = None,
    encoding: str = "json",
    devices: tuple[int, int] | None = None,
    redis_stream: str = "all",
) -> RateLatency:
    """Latency from window end to readable recommendation at a fixed real-time rate.

    Starts ``hcp run`` (streaming, every sink on, raw storage off) on fresh topics, a fresh
    Redis prefix and a fresh database; then the generator at speed 1 in another process
    for ``windows + 1`` windows (the first is warm-up, dropped) plus the lateness and a few
    seconds, timing each recommendation's appearance in ``{prefix}recommendations``.
    ``encoding`` is the generator's (``frames``: site collectors' Arrow frames, SPEC 1b);
    ``devices`` = (asics, gpus) overrides the fleet derived from ``events_per_s``.
    ``redis_stream`` is the job's ``--redis-stream``: with ``all`` the headline times the
    stream entries (and the snapshots beside them); with ``changed`` the stream holds only
    moved decisions, so the headline times the snapshots.
    """
    from tools.bench.hooks import delete_redis_prefix, fresh_database

    run_id = uuid.uuid4().hex[:8]
    prefix = f"lat-{run_id}."
    redis_prefix = f"lat-{run_id}:"
    asics, gpus = devices or devices_for_rate(events_per_s)
    window_ms = round(window_s * 1000)
    sim0_ms = 1_767_225_600_000  # the generator's default start, a window boundary
    seconds = math.ceil((windows + 1) * window_s + lateness_s + 3)
    result = RateLatency(events_per_s, asics + gpus, window_s, lateness_s, idle_timeout_s)
    first_end, last_end = sim0_ms + 2 * window_ms, sim0_ms + (windows + 1) * window_ms
    port = _free_port()
    with fresh_database(pg_dsn, "lat") as dsn:
        job_cmd = [
            sys.executable, "-m", "tools", "run", "--no-raw",
            "--bootstrap", bootstrap, "--topic-prefix", prefix,
            "--redis", redis_url, "--redis-prefix", redis_prefix, "--pg", dsn,
            "--metrics-port", str(port), "--window-s", str(window_s),
            "--lateness-s", str(lateness_s), "--idle-timeout-s", str(idle_timeout_s),
            "--redis-stream", redis_stream,
        ]
        job = subprocess.Popen(job_cmd, stderr=log_to or subprocess.DEVNULL)
        try:
            _wait_ready(port, job)
            time.sleep(2.0)  # consumers assigned, kernels loaded
            keys = RedisKeys(redis_prefix)
            snapshots = SnapshotProgressWatcher(redis_url, keys).start()
            stream = (
                StreamProgressWatcher(redis_url, keys.recs_stream).start()
                if redis_stream == "all" else None
            )
            watcher = stream or snapshots
            gen_cmd = [
                sys.executable, "-m", "tools.bench.latency", "--bootstrap", bootstrap,
                "--topic-prefix", prefix, "--asics", str(asics), "--gpus", str(gpus),
                "--sites", str(sites), "--seconds", str(seconds), "--encoding", encoding,
            ]
            gen = subprocess.run(gen_cmd, capture_output=True, text=True, check=False)
            if gen.returncode != 0:
                msg = f"the real-time generator failed: {gen.stderr.strip().splitlines()[-1:]}"
                raise HcpError(msg)
            report = json.loads(gen.stdout.strip().splitlines()[-1])
            # Wait for the measured windows; a job that fell behind gets up to
            # ``drain_s`` more, so its (large) latency is measured rather than missing.
            deadline = time.monotonic() + lateness_s + idle_timeout_s + 2.0 + drain_s
            time.sleep(lateness_s + idle_timeout_s + 2.0)
            devices = asics + gpus
            while time.monotonic() < deadline and not _complete(watcher.steps, last_end, devices):
                time.sleep(0.5)
            steps = watcher.stop()
            snapshot_steps = snapshots.stop() if stream is not None else steps
            result.late_events = _scrape(port, "hcp_late_events_total")
            result.job_timers = _scrape_job_timers(port)
        finally:
            job.send_signal(signal.SIGTERM)
            try:
                job.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.kill()
                job.wait()
            delete_redis_prefix(redis_url, redis_prefix)
            _delete_topics(bootstrap, prefix)
    clock = SimClock(sim0_ms=sim0_ms, wall0=report["anchor"])
    delay = result.job_timers.pop("close_delay_s", None)
    if delay is not None:
        # The gauge is wall time minus simulated window end: put it on the sim clock.
        result.job_timers["decided_after_window_end_s"] = round(
            delay + sim0_ms / 1000.0 - clock.wall0, 3
        )
    result.readable_via = "stream" if redis_stream == "all" else "snapshot"
    result.windows, result.latencies_s = _latencies(steps, clock, first_end, last_end)
    _, result.snapshot_latencies_s = _latencies(snapshot_steps, clock, first_end, last_end)
    result.windows_expected = windows
    result.recommendations = len(result.latencies_s)
    result.generator_wall_s = report["wall_s"]
    result.generator_events = report["events"]
    result.simulated_s = seconds
    return result


def _latencies(
    steps: list[tuple[float, int, int]], clock: SimClock, first_end: int, last_end: int
) -> tuple[int, list[float]]:
    """(windows seen, one latency per recommendation) of the measured windows' steps."""
    seen_windows: set[int] = set()
    out: list[float] = []
    for seen, window_end, n in steps:
        if first_end <= window_end <= last_end:
            seen_windows.add(window_end)
            out.extend([seen - clock.wall_of(window_end)] * n)
    return len(seen_windows), out


def _complete(steps: list[tuple[float, int, int]], last_end: int, devices: int) -> bool:
    """Has every device's recommendation for the last measured window been written?"""
    return sum(n for _seen, end, n in list(steps) if end == last_end) >= devices


def _delete_topics(bootstrap: str, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    from hcp.topics import Topics

    try:
        admin = AdminClient(kafka_conf(bootstrap))
        futures = admin.delete_topics(Topics(prefix).all(), operation_timeout=10)
        for fut in futures.values():
            with contextlib.suppress(Exception):
                fut.result(timeout=10)
    except Exception as exc:  # cleanup only; the topics are uniquely named
        log.debug("could not delete latency topics: %s", exc)


def _generator_main(argv: list[str] | None = None) -> int:
    """Child process of :func:`measure_latency`: the generator at speed 1.

    Prints one JSON line: the wall time (epoch s) at which simulated second 0 was due
    (the earliest of ``hook time - s``, since the producer can only be late), the wall
    seconds and the events produced.
    """
    import argparse

    from generators.run import generate
    from generators.simulation import SimConfig
    from hcp.topics import Topics

    p = argparse.ArgumentParser(prog="python -m tools.bench.latency")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic-prefix", required=True)
    p.add_argument("--asics", type=int, required=True)
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--sites", type=int, default=8)
    p.add_argument("--seconds", type=int, required=True)
    p.add_argument("--encoding", default="json", choices=("json", "frames"))
    args = p.parse_args(argv)
    anchors: list[float] = []

    def hook(_sim: object, second: int) -> None:
        anchors.append(time.time() - second)

    config = SimConfig(seed=42, gpus=args.gpus, asics=args.asics, sites=args.sites,
                       duration_s=args.seconds, workloads=False, encoding=args.encoding)
    summary = generate(config, args.bootstrap, Topics(args.topic_prefix), speed=1.0,
                       on_second=hook)
    print(json.dumps({"anchor": min(anchors), "wall_s": summary.wall_s,
                      "events": summary.events}))
    return 0


if __name__ == "__main__":
    sys.exit(_generator_main())
