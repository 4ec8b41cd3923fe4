"""How fast the console's operations page opens with a full fleet in Redis.

Fills a fresh Redis prefix with one window of ``--devices`` recommendations in the job's
key layout (``rec:{device}`` hashes, the recommendations stream, per-site and fleet
summaries) and a fresh PostgreSQL database with the same window, starts ``hcp api``
on a free port and reports:

- the API's read-model load time (process start to ``/api/v1/health`` ready with every
  device loaded);
- in Debian's Chromium (Playwright), from the sign-in form's submit to the site cards
  rendered with their counts, over ``--runs`` fresh browser profiles, and how long the
  page's ``/api/v1/sites`` and ``/api/v1/sites/history`` requests took.

Every key, the database and the processes are removed at the end. Run it with
``python -m tools.bench.console``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from api.keys import create_key
from hcp.config import positive_int
from hcp.errors import ConfigError
from hcp.kafka_admin import ensure_topics
from hcp.redis_client import redis_client
from hcp.settings import add_settings
from hcp.topics import Topics
from sinks.postgres.schema import apply_migrations
from sinks.postgres.writer import PgWriter
from sinks.redis.sink import RedisWriter
from tools.bench.redis_sink import synthetic_recs
from tools.broker import EmbeddedBroker, free_port

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _wait_ready(url: str, proc: subprocess.Popen, devices: int, timeout_s: float) -> float:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise ConfigError(f"hcp api exited with {proc.returncode}")
        try:
            doc = httpx.get(f"{url}/api/v1/health", timeout=2).json()
            if doc["read_model"]["ready"] and doc["read_model"].get("devices", 0) >= devices:
                return time.monotonic() - started
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise ConfigError(f"the read model did not load {devices:,} devices in {timeout_s:.0f} s")


def _page_loads(url: str, key: str, sites: int, runs: int, chromium: str) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            for _ in range(runs):
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = ctx.new_page()
                page.goto(f"{url}/console/")
                page.fill("input[name=key]", key)
                started = time.perf_counter()
                page.click("button[type=submit]")
                page.wait_for_function(
                    f"document.querySelectorAll('.card.site .n-mine').length === {sites}"
                    " && [...document.querySelectorAll('.card.site .n-mine')]"
                    ".every(e => e.textContent !== '')", timeout=120_000)
                total = time.perf_counter() - started
                # The browser's own timings of the page's two big reads (request start to
                # response end); the history read starts after the cards' data is in.
                page.wait_for_function(
                    "performance.getEntriesByType('resource')"
                    ".some(e => e.name.endsWith('/api/v1/sites/history'))", timeout=120_000)
                timings = page.evaluate(
                    "Object.fromEntries(performance.getEntriesByType('resource')"
                    ".filter(e => e.name.includes('/api/v1/sites'))"
                    ".map(e => [e.name.split('/api/v1')[1],"
                    " (e.responseEnd - e.startTime) / 1000]))")
                out.append({"submit_to_cards_s": total,
                            "sites_s": timings.get("/sites", float("nan")),
                            "history_s": timings.get("/sites/history", float("nan"))})
                ctx.close()
        finally:
            browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.console", description=__doc__)
    parser.add_argument("--devices", type=positive_int, default=310_000,
                        help="recommendations in the window (default 310000)")
    parser.add_argument("--runs", type=positive_int, default=5,
                        help="page loads, each in a fresh browser profile (default 5)")
    parser.add_argument("--chromium", default="/usr/bin/chromium",
                        help="the Chromium executable (default /usr/bin/chromium)")
    add_settings(
        parser, "redis", "pg",
        defaults={"pg": "postgresql://postgres@127.0.0.1:5432/postgres"},
        helps={"redis": "keys go under a fresh prefix, deleted at the end",
               "pg": "a fresh database on that server is made and dropped"},
    )
    args = parser.parse_args(argv)
    run = uuid.uuid4().hex[:8]
    prefix = f"bench-console-{run}:"
    db = f"hcp_bench_console_{run}"
    base = args.pg.rsplit("/", 1)[0]
    dsn = f"{base}/{db}"
    tmp = Path(tempfile.mkdtemp(prefix="hcp-bench-console-"))
    window_end = int(time.time()) // 60 * 60_000
    window = synthetic_recs(args.devices, window_end)
    sites = window["site"].n_unique()
    api: subprocess.Popen | None = None
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        t0 = time.perf_counter()
        RedisWriter(args.redis, prefix).write_batch([("recs", window)])
        fill_redis = time.perf_counter() - t0
        apply_migrations(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            PgWriter(conn).write({"recommendations": window})
            _, key = create_key(conn, "admin", None)
        with EmbeddedBroker() as broker:
            topics = Topics(prefix=f"bench-console-{run}.")
            ensure_topics(broker.bootstrap, topics.all(), 2)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            hcp = str(Path(sys.executable).with_name("hcp"))
            api = subprocess.Popen(
                [hcp, "--log-level", "WARNING", "api", "--port", str(port), "--bootstrap",
                 broker.bootstrap, "--redis", args.redis, "--pg", dsn, "--redis-prefix", prefix,
                 "--topic-prefix", topics.prefix],
                stdout=subprocess.DEVNULL, stderr=(tmp / "api.log").open("wb"),
            )
            load = _wait_ready(url, api, args.devices, 600)
            loads = _page_loads(url, key, sites, args.runs, args.chromium)
    finally:
        if api is not None and api.poll() is None:
            api.terminate()
            api.wait(15)
        client = redis_client(args.redis)
        keys = list(client.scan_iter(f"{prefix}*", count=10_000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    print(f"devices in Redis: {args.devices:,} over {sites} sites (filled in {fill_redis:.1f} s)")
    print(f"API read-model load (start to ready): {load:.1f} s")
    for name in ("submit_to_cards_s", "sites_s", "history_s"):
        values = [r[name] for r in loads]
        print(f"{name}: median {statistics.median(values):.3f} s, "
              f"min {min(values):.3f} s, max {max(values):.3f} s over {len(values)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
