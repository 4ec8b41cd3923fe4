"""``hcp bench api``: requests/s and latency of ``hcp api`` under wrk, against a reference.

One run, on this machine:

1. a fleet of ``--api-devices`` (310,000) recommendations is written to Redis by the job's
   own Redis sink under a fresh prefix (hashes, stream, site summaries, prices), and the
   same window to a scratch PostgreSQL database (``recommendations``), which also holds the
   API's keys; an embedded broker takes the workload submissions;
2. ``hcp api`` runs as its own process; once its read model has loaded, wrk (Debian's, not
   this project's code) drives each endpoint with ``--api-connections`` (64) connections
   for ``--api-duration-s``: point reads of random devices, recommendations of one site
   (limit 100), workload submissions, and calculate with 1,000 devices;
3. the freshness of the read model: a new window is written through the sink and the time
   until the API serves it is measured;
4. the reference, ``tools/bench/api_reference.py`` (FastAPI + one async ``HGETALL`` per
   request, same uvicorn), is driven the same way for point reads.

Everything is removed afterwards (Redis keys, database, processes). Figures go to stdout
and ``--api-out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psycopg

from api.keys import create_key
from flows.profitability.prices import price_rows
from hcp.config import env_arg, positive_int
from hcp.errors import ConfigError
from hcp.extras import require
from hcp.kafka_admin import ensure_topics
from hcp.topics import Topics
from sinks.postgres.schema import apply_migrations
from sinks.postgres.writer import PgWriter
from sinks.redis.sink import RedisWriter
from tools.bench.redis_sink import next_window, synthetic_recs
from tools.broker import EmbeddedBroker, free_port

__all__ = ["add_api_bench_args", "require_wrk", "run_api_bench"]

LUA = Path(__file__).with_name("wrk") / "api.lua"
WINDOW_END = 1_800_000_000_000
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def add_api_bench_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("hcp bench api")
    env_arg(g, "--api-devices", env="HCP_BENCH_API_DEVICES", default=310_000, type=positive_int,
            help="devices in Redis and PostgreSQL")
    env_arg(g, "--api-duration-s", env="HCP_BENCH_API_DURATION_S", default=10,
            type=positive_int, help="seconds of wrk per endpoint")
    env_arg(g, "--api-connections", env="HCP_BENCH_API_CONNECTIONS", default=64,
            type=positive_int, help="wrk connections")
    env_arg(g, "--api-threads", env="HCP_BENCH_API_THREADS", default=2, type=positive_int,
            help="wrk threads")
    env_arg(g, "--api-out", env="HCP_BENCH_API_OUT", default="bench-results/api.json",
            help="results JSON path")


def _wrk(url: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    cmd = ["wrk", "-t", str(args.api_threads), "-c", str(args.api_connections),
           "-d", f"{args.api_duration_s}s", "--latency", "--timeout", "5s", "-s", str(LUA), url]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env},
                         check=True, timeout=args.api_duration_s + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {
        p: float(v) * _UNITS[u]
        for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": rps,
        "p50_ms": pct.get("50", float("nan")) * 1000,
        "p99_ms": pct.get("99", float("nan")) * 1000,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float, ready: Any = None) -> float:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise ConfigError(f"server exited with {proc.returncode} before answering {url}")
        try:
            r = httpx.get(url, timeout=2)
            if ready is None or ready(r):
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ConfigError(f"{url} did not become ready in {timeout_s:.0f} s")


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _calc_body(n: int) -> bytes:
    rng = np.random.default_rng(1)
    devices = []
    for i in range(n):
        if i % 5 == 0:
            devices.append({"device_type": "gpu", "model": "H100-SXM", "site": "tx-1",
                            "power_w": float(rng.uniform(80, 700)),
                            "busy_fraction": float(rng.uniform(0, 1))})
        else:
            devices.append({"device_type": "asic", "model": "S21", "site": "tx-2",
                            "hashrate_ths": float(rng.uniform(150, 210)),
                            "power_w": float(rng.uniform(3000, 3600))})
    return json.dumps({"devices": devices}).encode()


def _prices() -> pl.DataFrame:
    ts = WINDOW_END - 120_000
    rows = [("btc_usd", 97_000.0, None, None), ("difficulty", 1.1e14, None, None),
            ("gpu_spot_usd_hr", 2.1, None, "H100-SXM")]
    rows += [("electricity_usd_mwh", 40.0 + 10 * i, s, None)
             for i, s in enumerate(("tx-1", "tx-2", "ga-1", "nd-1", "wy-1"))]
    df = pl.DataFrame(
        {"ts": [ts] * len(rows), "kind": [r[0] for r in rows], "value": [r[1] for r in rows],
         "site": [r[2] for r in rows], "model": [r[3] for r in rows]},
        schema={"ts": pl.Int64, "kind": pl.String, "value": pl.Float64, "site": pl.String,
                "model": pl.String},
    )
    return price_rows(df)


def require_wrk() -> None:
    """ConfigError unless the wrk load generator is on PATH."""
    if shutil.which("wrk") is None:
        raise ConfigError("wrk is not installed: apt-get install wrk (Debian package 'wrk')")


def run_api_bench(args: argparse.Namespace) -> int:
    """The whole ``hcp bench api`` run; prints the table, writes the JSON."""
    require_wrk()
    require("httpx", "bench", "hcp bench api")
    say = (lambda *a: None) if getattr(args, "quiet", False) else print
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run = uuid.uuid4().hex[:8]
    prefix = f"bench-api-{run}:"
    admin_dsn = args.pg.rsplit("/", 1)[0] + "/postgres"
    db = f"hcp_bench_api_{run}"
    dsn = f"{args.pg.rsplit('/', 1)[0]}/{db}"
    hcp = str(Path(sys.executable).with_name("hcp"))
    results: dict[str, Any] = {"devices": args.api_devices, "connections": args.api_connections,
                               "duration_s": args.api_duration_s,
                               "loadavg_start": os.getloadavg()[0]}
    procs: list[subprocess.Popen] = []
    writer = RedisWriter(args.redis, prefix)
    tmp = Path(tempfile.mkdtemp(prefix="hcp-bench-api-"))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        with EmbeddedBroker() as broker:
            topics = Topics(prefix=f"bench-api-{run}.")
            ensure_topics(broker.bootstrap, topics.all(), 4)
            say(f"filling Redis ({prefix}) and PostgreSQL ({db}) with "
                f"{args.api_devices:,} devices ...")
            window = synthetic_recs(args.api_devices, WINDOW_END)
            t0 = time.perf_counter()
            writer.write_batch([("recs", window), ("prices", _prices())])
            results["fill_redis_s"] = time.perf_counter() - t0
            apply_migrations(dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                t0 = time.perf_counter()
                PgWriter(conn).write({"recommendations": window})
                results["fill_pg_s"] = time.perf_counter() - t0
                _, key = create_key(conn, "admin", None)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            api = subprocess.Popen(
                [hcp, "--log-level", "WARNING", "api", "--port", str(port),
                 "--bootstrap", broker.bootstrap, "--redis", args.redis, "--pg", dsn,
                 "--redis-prefix", prefix, "--topic-prefix", topics.prefix,
                 "--key-cache-s", "60",
                 # The bench key must not be refused: the bucket is still checked, never empty.
                 "--rate-per-s", "1e9", "--rate-burst", "1000000000"],
                stdout=subprocess.DEVNULL, stderr=open(tmp / "api.log", "wb"),  # noqa: SIM115
            )
            procs.append(api)
            results["read_model_load_s"] = _wait_http(
                f"{url}/api/v1/health", api, 300,
                lambda r: r.json()["read_model"]["ready"]
                and r.json()["read_model"]["devices"] >= args.api_devices,
            )
            results["api_rss_mb"] = _rss_mb(api.pid)
            say(f"hcp api ready in {results['read_model_load_s']:.1f} s "
                f"(RSS {results['api_rss_mb']:.0f} MB); wrk -c {args.api_connections} "
                f"-d {args.api_duration_s}s per endpoint ...")
            (tmp / "workload.json").write_text(json.dumps(
                {"customer": "bench", "priority": 5, "gpus": 1, "mem_gb": 20.0,
                 "est_duration_s": 600}))
            (tmp / "calc.json").write_bytes(_calc_body(1000))
            base = {"HCP_WRK_KEY": key, "HCP_WRK_DEVICES": str(args.api_devices)}
            runs = {
                "GET /api/v1/resources/{id}": {"HCP_WRK_MODE": "resource"},
                "GET /api/v1/recommendations?site=..&limit=100": {
                    "HCP_WRK_MODE": "recommendations"},
                "POST /api/v1/workloads": {"HCP_WRK_MODE": "post",
                                           "HCP_WRK_PATH": "/api/v1/workloads",
                                           "HCP_WRK_BODY": str(tmp / "workload.json")},
                "POST /api/v1/profitability/calculate (1,000 devices)": {
                    "HCP_WRK_MODE": "post", "HCP_WRK_PATH": "/api/v1/profitability/calculate",
                    "HCP_WRK_BODY": str(tmp / "calc.json")},
            }
            endpoints: dict[str, Any] = {}
            for name, env in runs.items():
                endpoints[name] = _wrk(url, {**base, **env}, args)
                say(f"  {name}: {endpoints[name]['requests_per_s']:,.0f} req/s")
            results["endpoints"] = endpoints
            results["errors_by_route"] = _error_counts(url)
            fresh, write_s, seen_s = _freshness(url, key, writer, window, args.api_devices)
            results.update(freshness_s=fresh, freshness_write_s=write_s,
                           freshness_served_after_write_start_s=seen_s)
            say(f"  read model served a new window {seen_s:.2f} s after the sink started "
                f"writing it (write took {write_s:.2f} s; freshness {fresh:.2f} s)")
            _stop(api)
            ref_port = free_port()
            ref = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "tools.bench.api_reference:app",
                 "--port", str(ref_port), "--loop", "uvloop", "--http", "httptools",
                 "--no-access-log", "--log-level", "warning"],
                env={**os.environ, "HCP_REDIS_URL": args.redis, "HCP_REDIS_PREFIX": prefix},
                stdout=subprocess.DEVNULL, stderr=open(tmp / "ref.log", "wb"),  # noqa: SIM115
            )
            procs.append(ref)
            ref_url = f"http://127.0.0.1:{ref_port}"
            _wait_http(f"{ref_url}/api/v1/resources/asic-0000001", ref, 60,
                       lambda r: r.status_code == 200)
            results["reference"] = _wrk(ref_url, {**base, "HCP_WRK_MODE": "resource",
                                                   "HCP_WRK_KEY": ""}, args)
            _stop(ref)
    finally:
        for proc in procs:
            _stop(proc)
        out_dir = Path(args.api_out).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        for log_name in ("api.log", "ref.log"):  # kept for a look at any non-2xx answer
            if (tmp / log_name).exists():
                shutil.copy(tmp / log_name, out_dir / f"bench-{log_name}")
        keys = list(writer.client.scan_iter(f"{prefix}*", count=10_000))
        for i in range(0, len(keys), 10_000):
            writer.client.unlink(*keys[i : i + 10_000])
        writer.close()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()[0]
    point = results["endpoints"]["GET /api/v1/resources/{id}"]
    results["point_read_ratio"] = point["requests_per_s"] / results["reference"]["requests_per_s"]
    print(_table(results))
    out = Path(args.api_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out}")
    return 0


def _error_counts(url: str) -> dict[str, float]:
    """Answers other than 200/202 per route and status, from the API's own /metrics."""
    import httpx

    out = {}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    pattern = r'^hcp_api_requests_total\{method="(\w+)",route="([^"]+)",status="(\d+)"\} (\S+)'
    for method, route, status, n in re.findall(pattern, text, re.M):
        if status not in ("200", "202") and float(n) > 0:
            out[f"{method} {route} {status}"] = float(n)
    return out


def _freshness(url: str, key: str, writer: RedisWriter, window: pl.DataFrame,
               n: int) -> tuple[float, float, float]:
    """(freshness, write, first served): seconds from the sink finishing a new window to
    the API serving its last device (0 when served before the write returned: the sink
    writes the columnar snapshot before the stream entries and hashes), the sink's write
    time, and seconds from the write's start to the first answer with the new window."""
    import threading

    import httpx

    nxt = next_window(window, seed=7)
    new_end = int(nxt["window_end"][0])
    last = nxt["device_id"].sort()[-1]
    start = time.monotonic()
    done: list[float] = []
    thread = threading.Thread(
        target=lambda: (writer.write_batch([("recs", nxt)]), done.append(time.monotonic()))
    )
    thread.start()
    headers = {"Authorization": f"Bearer {key}"}
    seen = float("inf")
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        while time.monotonic() - start < 120:
            if c.get(f"/api/v1/resources/{last}").json().get("window_end") == new_end:
                seen = time.monotonic()
                break
            time.sleep(0.02)
    thread.join()
    if not done:
        msg = "the sink's write of the freshness window failed"
        raise RuntimeError(msg)
    return max(0.0, seen - done[0]), done[0] - start, seen - start


def _table(r: dict[str, Any]) -> str:
    lines = [
        f"hcp bench api: {r['devices']:,} devices, wrk {r['connections']} connections, "
        f"{r['duration_s']} s per endpoint (load average {r['loadavg_start']:.1f} -> "
        f"{r['loadavg_end']:.1f}; shared machine)",
        f"{'endpoint':<58} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}",
    ]
    rows = [*r["endpoints"].items(), ("reference: FastAPI + HGETALL, GET resources/{id}",
                                       r["reference"])]
    for name, e in rows:
        lines.append(f"{name:<58} {e['requests_per_s']:>9,.0f} {e['p50_ms']:>8.2f} "
                     f"{e['p99_ms']:>8.2f} {e['non_2xx']:>8}")
    if r.get("errors_by_route"):
        lines.append(f"answers other than 200/202: {r['errors_by_route']}")
    lines.append(f"point reads vs reference: {r['point_read_ratio']:.2f}x; read model load "
                 f"{r['read_model_load_s']:.1f} s, RSS {r['api_rss_mb']:.0f} MB, new window "
                 f"served {r['freshness_s']:.2f} s after the sink wrote it")
    return "\n".join(lines)
