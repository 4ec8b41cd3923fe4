"""``hcp bench soak``: the live path for a long time, sampled every minute.

One streaming ``hcp run`` (every sink on, raw telemetry off as in the throughput bench) reads
a real-time generator at ``--rate`` events/s for ``--minutes``. Every ``--sample-s`` the soak
samples what could grow without bound: the job's RSS (its process tree), how far its
watermark trails the simulated clock, librdkafka's consumer lag, the window-end-to-Redis
delay of the windows closed since the last sample, the bytes and keys under the run's Redis
prefix, and the run's PostgreSQL database. The verdict looks at the trend of each series
over the last third of the run: a bounded series is flat there (within a tolerance);
history in PostgreSQL is expected to grow, but by the same bytes per minute.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from hcp.config import env_arg
from hcp.errors import ConfigError, HcpError
from hcp.extras import require
from hcp.redis_client import redis_client
from tools.bench.latency import (
    SimClock,
    StreamProgressWatcher,
    _delete_topics,
    _free_port,
    _scrape,
    _wait_ready,
    devices_for_rate,
    percentiles,
)
from tools.bench.report import _descendants, _status_kb, machine_info

__all__ = ["SoakSample", "add_soak_args", "run_soak", "verdict"]

SIM0_MS = 1_767_225_600_000  # the generator's default start, a window boundary
# Noise floors under which a change between thirds is not growth, whatever its ratio.
FLOORS = {"rss_mb": 64.0, "redis_bytes": 8 * 1024**2, "redis_keys": 64,
          "watermark_lag_s": 5.0, "close_p99_s": 2.0}
GROWTH_TOLERANCE = 0.05  # change over the last third within 5% of its mean (+ the floor)


@dataclass
class SoakSample:
    """One sample; ``None`` where the source had nothing yet (e.g. no window closed)."""

    t_s: float
    rss_mb: float
    watermark_lag_s: float | None
    consumer_lag: float | None
    windows: int
    close_p50_s: float | None
    close_p99_s: float | None
    redis_keys: int
    redis_bytes: int
    recs_stream_len: int
    pg_bytes: int
    late_events: float | None


@dataclass
class SoakResult:
    minutes: float
    rate: float
    devices: int
    window_s: float
    lateness_s: float
    command: str
    machine: dict[str, Any]
    samples: list[SoakSample] = field(default_factory=list)
    generator_events: int = 0
    generator_wall_s: float = 0.0
    verdict: dict[str, Any] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)
    started_at: float = 0.0  # wall time the sampling clock starts (epoch s)
    clock_shift_s: float = 0.0  # the generator's real start minus started_at, taken off


def _shift_to_anchor(samples: list[SoakSample], shift_s: float) -> None:
    """Re-base the live figures on the generator's own clock once it has reported it.

    While running, simulated second 0 is assumed to happen when sampling starts; the
    generator really starts a little later (its imports), which inflates every delay and
    lag by the same ``shift_s``.
    """
    for s in samples:
        if s.watermark_lag_s is not None:
            s.watermark_lag_s = round(s.watermark_lag_s - shift_s, 2)
        if s.close_p50_s is not None:
            s.close_p50_s = round(s.close_p50_s - shift_s, 3)
        if s.close_p99_s is not None:
            s.close_p99_s = round(s.close_p99_s - shift_s, 3)


def _tree_rss_mb(pid: int) -> float:
    return sum(_status_kb(p, "VmRSS:") for p in [pid, *_descendants(pid)]) / 1024


def _redis_usage(client: redis.Redis, prefix: str) -> tuple[int, int]:
    """(keys, bytes) under ``prefix``: MEMORY USAGE of each key, so a shared server is fine."""
    keys = 0
    total = 0
    batch: list[bytes] = []

    def flush() -> int:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key)
        got = sum(v or 0 for v in pipe.execute())
        batch.clear()
        return got

    for key in client.scan_iter(match=f"{prefix}*", count=10_000):
        keys += 1
        batch.append(key)
        if len(batch) >= 5_000:
            total += flush()
    if batch:
        total += flush()
    return keys, total


def _pg_bytes(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def _window_delays(
    steps: list[tuple[float, int, int]], clock: SimClock, done: set[int], devices: int,
) -> list[float]:
    """Per-recommendation delays of the windows that became complete since the last call."""
    per_window: dict[int, list[tuple[float, int]]] = {}
    for seen, end, n in steps:
        if end not in done:
            per_window.setdefault(end, []).append((seen, n))
    delays: list[float] = []
    for end, got in sorted(per_window.items()):
        if sum(n for _s, n in got) < devices:
            continue  # still being written
        done.add(end)
        for seen, n in got:
            delays.extend([seen - clock.wall_of(end)] * n)
    return delays


def _series(samples: list[SoakSample], name: str) -> list[float]:
    return [float(v) for s in samples if (v := getattr(s, name)) is not None]


def _trend(t: list[float], y: list[float]) -> float:
    """Least-squares change of ``y`` over the span of ``t``."""
    n = len(t)
    mt, my = sum(t) / n, sum(y) / n
    var = sum((a - mt) ** 2 for a in t)
    if var == 0:
        return 0.0
    slope = sum((a - mt) * (b - my) for a, b in zip(t, y, strict=True)) / var
    return slope * (t[-1] - t[0])


def verdict(samples: list[SoakSample]) -> dict[str, Any]:
    """Per series: its trend over the last third of the run, and whether it is bounded.

    The last third rather than the whole run: the first two thirds hold the warm-up (the
    JIT, the first windows, a Redis stream filling to its MAXLEN), which is not growth. A
    series is bounded when its least-squares change over the last third stays within
    ``GROWTH_TOLERANCE`` of its mean there plus the series' noise floor.
    """
    out: dict[str, Any] = {}
    for name, floor in FLOORS.items():
        pairs = [(s.t_s, float(v)) for s in samples if (v := getattr(s, name)) is not None]
        if len(pairs) < 3:
            out[name] = {"bounded": None, "why": f"{len(pairs)} samples, need 3"}
            continue
        last = pairs[len(pairs) - max(3, len(pairs) // 3):]
        t, y = [p[0] for p in last], [p[1] for p in last]
        mean = sum(y) / len(y)
        change = _trend(t, y)
        out[name] = {"last_third_mean": round(mean, 3), "last_third_change": round(change, 3),
                     "bounded": change <= GROWTH_TOLERANCE * abs(mean) + floor}
    # History grows by design; what must hold is a steady rate (bytes per minute).
    pg = _series(samples, "pg_bytes")
    t = _series(samples, "t_s")
    if len(pg) >= 4:
        third = len(pg) // 3
        rate_mid = (pg[2 * third - 1] - pg[third]) / max(t[2 * third - 1] - t[third], 1e-9)
        rate_last = (pg[-1] - pg[2 * third]) / max(t[-1] - t[2 * third], 1e-9)
        steady = rate_last <= rate_mid * 1.25 + 1024 * 1024 / 60  # +1 MB/min of noise
        out["pg_bytes"] = {"middle_mb_per_min": round(rate_mid * 60 / 1024**2, 3),
                           "last_mb_per_min": round(rate_last * 60 / 1024**2, 3),
                           "bounded": None, "steady_growth": steady}
    flags = [v["bounded"] for k, v in out.items() if k != "pg_bytes"]
    steady = out.get("pg_bytes", {}).get("steady_growth", True)
    out["nothing_grows_without_bound"] = (
        None if None in flags else all(flags) and bool(steady)
    )
    return out


def _command(cmd: list[str], log_to: Any) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_to, text=True)


def run_soak(args: argparse.Namespace) -> SoakResult:
    """Run the soak; prints one progress line per sample to stderr."""
    from sinks.redis.layout import RedisKeys
    from tools.bench.hooks import delete_redis_prefix, fresh_database
    from tools.broker import EmbeddedBroker

    seconds = math.ceil(args.minutes * 60)
    if seconds < 3 * args.sample_s:
        msg = (f"--minutes {args.minutes:g} gives fewer than 3 samples of --sample-s "
               f"{args.sample_s:g}; the verdict needs at least 3")
        raise ConfigError(msg)
    asics, gpus = devices_for_rate(args.rate)
    result = SoakResult(minutes=args.minutes, rate=args.rate, devices=asics + gpus,
                        window_s=args.soak_window_s, lateness_s=args.soak_lateness_s,
                        command="hcp " + " ".join(sys.argv[1:]), machine=machine_info())
    run_id = uuid.uuid4().hex[:8]
    prefix, redis_prefix = f"soak-{run_id}.", f"soak-{run_id}:"
    port = _free_port()
    log_path = Path(args.soak_out).with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker() if args.broker == "embedded" else None
    bootstrap = broker.__enter__().bootstrap if broker else args.bootstrap
    client = redis_client(args.redis)
    try:
        with fresh_database(args.pg, "soak") as dsn, log_path.open("w") as log_to:
            job = subprocess.Popen([
                sys.executable, "-m", "tools", "run", "--no-raw",
                "--bootstrap", bootstrap, "--topic-prefix", prefix,
                "--redis", args.redis, "--redis-prefix", redis_prefix, "--pg", dsn,
                "--metrics-port", str(port), "--window-s", str(args.soak_window_s),
                "--lateness-s", str(args.soak_lateness_s), "--idle-timeout-s", "0.5",
            ], stderr=log_to)
            try:
                _wait_ready(port, job)
                time.sleep(2.0)
                watcher = StreamProgressWatcher(
                    args.redis, RedisKeys(redis_prefix).recs_stream
                ).start()
                gen = _command([
                    sys.executable, "-m", "tools.bench.latency", "--bootstrap", bootstrap,
                    "--topic-prefix", prefix, "--asics", str(asics), "--gpus", str(gpus),
                    "--sites", "8", "--seconds", str(seconds), "--encoding", args.soak_encoding,
                ], log_to)
                _sample_loop(args, result, job, gen, watcher, client, redis_prefix, dsn, port)
                out, _ = gen.communicate(timeout=120)
                if gen.returncode != 0:
                    msg = f"the real-time generator failed (exit {gen.returncode}); see {log_path}"
                    raise HcpError(msg)
                report = json.loads(out.strip().splitlines()[-1])
                result.generator_events = report["events"]
                result.generator_wall_s = report["wall_s"]
                watcher.stop()
                result.clock_shift_s = round(report["anchor"] - result.started_at, 3)
                _shift_to_anchor(result.samples, result.clock_shift_s)
            finally:
                job.send_signal(signal.SIGTERM)
                try:
                    job.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    job.kill()
                    job.wait()
                delete_redis_prefix(args.redis, redis_prefix)
                _delete_topics(bootstrap, prefix)
    finally:
        if broker:
            broker.__exit__(None, None, None)
    result.verdict = verdict(result.samples)
    return result


def _sample_loop(
    args: argparse.Namespace, result: SoakResult, job: subprocess.Popen,
    gen: subprocess.Popen, watcher: StreamProgressWatcher, client: redis.Redis,
    redis_prefix: str, dsn: str, port: int,
) -> None:
    """Sample until the generator ends; the job dying ends the soak with an error."""
    start = result.started_at = time.time()
    # The generator starts producing second 0 about now; the clock only needs to be good to
    # a fraction of a second for lag and delays measured in seconds.
    clock = SimClock(sim0_ms=SIM0_MS, wall0=start)
    done: set[int] = set()
    next_at = start + args.sample_s
    while gen.poll() is None:
        time.sleep(max(0.0, min(1.0, next_at - time.time())))
        if job.poll() is not None:
            msg = f"the job exited during the soak (code {job.returncode})"
            raise HcpError(msg)
        if time.time() < next_at:
            continue
        next_at += args.sample_s
        delays = _window_delays(list(watcher.steps), clock, done, result.devices)
        p50, p99 = percentiles(delays)
        watermark = _scrape(port, "hcp_watermark_seconds")
        now_sim_s = (SIM0_MS / 1000) + (time.time() - start)
        keys, used = _redis_usage(client, redis_prefix)
        sample = SoakSample(
            t_s=round(time.time() - start, 1),
            rss_mb=round(_tree_rss_mb(job.pid), 1),
            watermark_lag_s=round(now_sim_s - watermark, 2) if watermark else None,
            consumer_lag=_scrape(port, "hcp_consumer_lag"),
            windows=len(done),
            close_p50_s=None if p50 is None else round(p50, 3),
            close_p99_s=None if p99 is None else round(p99, 3),
            redis_keys=keys, redis_bytes=used,
            recs_stream_len=client.xlen(f"{redis_prefix}recommendations"),
            pg_bytes=_pg_bytes(dsn), late_events=_scrape(port, "hcp_late_events_total"),
        )
        result.samples.append(sample)
        result.load_average.append(round(_load1(), 2))
        print(f"soak {sample.t_s / 60:5.1f} min: RSS {sample.rss_mb:,.0f} MB, watermark lag "
              f"{sample.watermark_lag_s} s, windows {sample.windows}, close p99 "
              f"{sample.close_p99_s} s, Redis {keys:,} keys {used / 1024**2:,.1f} MB, "
              f"PostgreSQL {sample.pg_bytes / 1024**2:,.1f} MB, load {_load1():.2f}",
              file=sys.stderr, flush=True)


def _load1() -> float:
    import os

    return os.getloadavg()[0]


def write_soak_chart(result: SoakResult, path: Path) -> None:
    """Four panels over time: RSS, watermark lag and close p99, Redis bytes, PostgreSQL."""
    matplotlib = require("matplotlib", "bench", "the soak chart")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s / 60 for s in result.samples]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), dpi=100, sharex=True)
    panels = [
        (axes[0][0], "job RSS (MB)", [("RSS", [s.rss_mb for s in result.samples])]),
        (axes[0][1], "seconds", [
            ("watermark lag", [s.watermark_lag_s for s in result.samples]),
            ("window close p99", [s.close_p99_s for s in result.samples]),
        ]),
        (axes[1][0], "Redis under the prefix (MB)",
         [("bytes", [s.redis_bytes / 1024**2 for s in result.samples])]),
        (axes[1][1], "PostgreSQL database (MB)",
         [("size", [s.pg_bytes / 1024**2 for s in result.samples])]),
    ]
    for ax, label, lines in panels:
        for name, ys in lines:
            ax.plot(t, [math.nan if y is None else y for y in ys], marker=".", label=name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend()
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    ok = result.verdict.get("nothing_grows_without_bound")
    fig.suptitle(f"hcp bench soak: {result.rate:,.0f} events/s, {result.minutes:g} min; "
                 f"nothing grows without bound: {ok}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def soak_main(args: argparse.Namespace) -> int:
    result = run_soak(args)
    out = Path(args.soak_out)
    out.write_text(json.dumps(asdict(result), indent=2) + "\n")
    chart = out.with_suffix(".png")
    try:
        write_soak_chart(result, chart)
    except ConfigError as exc:  # no matplotlib: the JSON is the result, the chart a picture
        print(f"chart skipped: {exc}", file=sys.stderr)
        chart = None
    for name, v in result.verdict.items():
        if isinstance(v, dict):
            print(f"{name:16} {json.dumps(v)}")
    print(f"(the live lines assumed the generator started with sampling; the JSON's figures "
          f"are re-based on its clock, {result.clock_shift_s:+.2f} s)")
    ok = result.verdict["nothing_grows_without_bound"]
    print(f"nothing grows without bound: {ok}")
    print(f"results: {out}" + (f"  chart: {chart}" if chart else ""))
    return 0 if ok else 1


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_soak_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("soak (hcp bench soak)")
    env_arg(g, "--minutes", env="HCP_SOAK_MINUTES", default=30.0, type=_positive_float,
            help="how long the generator runs in real time")
    env_arg(g, "--rate", env="HCP_SOAK_RATE", default=50_000.0, type=_positive_float,
            help="events/s of the real-time generator (devices at 1 Hz)")
    env_arg(g, "--sample-s", env="HCP_SOAK_SAMPLE_S", default=60.0, type=_positive_float,
            help="seconds between samples")
    env_arg(g, "--soak-window-s", env="HCP_SOAK_WINDOW_S", default=60.0, type=_positive_float,
            help="--window-s of the soaked job")
    env_arg(g, "--soak-lateness-s", env="HCP_SOAK_LATENESS_S", default=1.0,
            type=_positive_float, help="--lateness-s of the soaked job")
    env_arg(g, "--soak-encoding", env="HCP_SOAK_ENCODING", default="json",
            choices=("json", "frames"), help="telemetry encoding of the generator")
    env_arg(g, "--soak-out", env="HCP_SOAK_OUT", default="bench-results/soak.json",
            help="results JSON (the chart goes beside it as .png, the job's log as .log)")
