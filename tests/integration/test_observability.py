"""Dashboards that cannot lie: every panel query, run for real against the job it watches.

One live run per module: the simulators write 10 minutes of the demo scenario (at 60x, so
about 10 s) while the job runs, a real
Prometheus (Debian's binary, free port, temp TSDB, 1 s scrapes) scrapes the streaming job
(`hcp run`) while it processes them into a fresh PostgreSQL database, then every PromQL
target of deploy/grafana/dashboards goes through Prometheus's HTTP API and every SQL target
(Grafana macros expanded the documented way) runs against that database.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from generators.run import generate
from generators.scenario import load_scenario
from generators.simulation import SimConfig
from hcp.topics import Topics
from tests.conftest import PG_ADMIN_DSN
from tests.support.cleanup import delete_prefixes, stop_process
from tests.support.flowkit import make_topics, produce
from tests.support.generator_helpers import read_topic
from tests.support.promkit import PromServer, expand_sql_macros, prometheus_server
from tools.broker import free_port
from tools.dashboards import render_all, render_pictures

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DURATION_S = 600
DEVICES = 6 + 20
WINDOWS = DURATION_S // 60
SPEED = 60.0  # simulated seconds per wall second

# Metrics that another branch sets (issue 11, the workload router): their queries must be
# valid PromQL now; that they return data is that branch's to prove.
WAITING_FOR_BRANCH = {
    "hcp_gpus_cordoned": "issue 11 (router: GPU heartbeats)",
    "hcp_workloads_queued": "issue 11 (router: queue gauges)",
    "hcp_workload_oldest_queued_age_seconds": "issue 11 (router: queue gauges)",
}


@dataclass
class Live:
    prom: PromServer
    pg_dsn: str
    metrics_text: str
    started: float
    sent: dict[str, int]
    topics: Topics


def _targets(kind: str) -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, format, query) for every target of one datasource type."""
    out = []
    for path in sorted(BOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["type"] == kind:
                    query = target["expr"] if kind == "prometheus" else target["rawSql"]
                    out.append((board["title"], panel["title"], target.get("format", ""), query))
    return out


def _sample(text: str, name: str, label_value: str) -> float:
    """The value of ``name`` whose labels contain ``label_value``, from a /metrics scrape."""
    for line in text.splitlines():
        if line.startswith(name + "{") and f'"{label_value}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} sample for {label_value}")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@pytest.fixture(scope="module")
def live(
    bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("observability")
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    sites = ["site-01", "site-02"]
    config = SimConfig(seed=5, gpus=6, asics=20, sites=2, start_ms=START, duration_s=DURATION_S,
                       scenario=load_scenario("demo", START, sites))
    make_topics(bootstrap, topics, partitions=4)

    db = f"hcp_obs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    pg_dsn = f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{db}"
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    port = free_port()
    env = dict(os.environ)
    env.update(
        HCP_KAFKA_BOOTSTRAP=bootstrap, HCP_TOPIC_PREFIX=topics.prefix, HCP_REDIS_URL=redis_url,
        HCP_REDIS_PREFIX=prefix, HCP_PG_DSN=pg_dsn, HCP_METRICS_PORT=str(port),
        HCP_LATENESS_S="0", HCP_IDLE_TIMEOUT_S="1", HCP_RECOVERY_DIR=str(tmp / "recovery"),
    )
    started = time.time()
    job = None
    try:
        with prometheus_server(tmp, [f"127.0.0.1:{port}"], RULES) as prom:
            job = subprocess.Popen(
                [sys.executable, "-m", "tools", "run"], env=env,
                stdout=(tmp / "job.log").open("w"),
                stderr=subprocess.STDOUT,
            )
            # Live: 10 simulated minutes in about 10 s, so Prometheus sees the job work.
            summary = generate(config, bootstrap, topics, speed=SPEED, partitions=4)
            sent = dict(summary.counts)
            # Bad input, so the dead-letter panels have something true to show.
            produce(bootstrap, topics.gpu, [b"not json", b"{\"v\": 1}"], "gpu_id")
            produce(bootstrap, topics.prices, [b"\xff\xfe"], "kind")
            deadline = time.monotonic() + 60
            # A live job closes a window once the data passes its end: all but the last.
            want = DEVICES * (WINDOWS - 1)
            while prom.scalar("sum(hcp_recommendations_total)") != want or not prom.query(
                "hcp_consumer_lag"
            ):
                assert job.poll() is None, (tmp / "job.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (
                    f"job did not reach {want} recommendations with consumer lag in 60 s: "
                    f"recommendations {prom.scalar('sum(hcp_recommendations_total)')}, "
                    f"lag series {len(prom.query('hcp_consumer_lag'))}, "
                    f"up {prom.query('up')}\n" + (tmp / "job.log").read_text()[-3000:]
                )
                time.sleep(1)
            time.sleep(3)  # a few more scrapes of the settled job
            yield Live(prom, pg_dsn, _scrape(port), started, sent, topics)
    finally:
        if job is not None:
            stop_process(job)
        delete_prefixes(redis_url, prefix)
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_job_metrics_pass_promtool_check_metrics(live: Live) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run `make system-deps`"
    done = subprocess.run([promtool, "check", "metrics"], input=live.metrics_text,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    assert "hcp_watermark_seconds" in live.metrics_text
    assert "hcp_price{" not in live.metrics_text and "hcp_watermark_ms" not in live.metrics_text


def test_consumer_lag_has_a_sample_per_input_partition(live: Live) -> None:
    series = live.prom.query("hcp_consumer_lag")
    seen = {(s["metric"]["topic"], s["metric"]["partition"]) for s in series}
    for topic in (live.topics.gpu, live.topics.asic, live.topics.prices):
        assert {(topic, str(p)) for p in range(4)} <= seen
    # Everything was read: the job catches up on every partition. librdkafka reports lag
    # every stats interval and Prometheus scrapes every second, so a loaded machine may show
    # the last non-zero sample for a few seconds.
    deadline = time.monotonic() + 30
    while any(float(s["value"][1]) != 0 for s in series) and time.monotonic() < deadline:
        time.sleep(1)
        series = live.prom.query("hcp_consumer_lag")
    assert all(float(s["value"][1]) == 0 for s in series), series


def test_every_promql_panel_returns_data(live: Live) -> None:
    empty, waiting = [], []
    end = time.time()
    for board, title, _fmt, expr in _targets("prometheus"):
        # Grafana: $__rate_interval = max($__interval + scrape interval, 4 x scrape interval);
        # with a 1 s scrape and a 5 s step that is 6 s.
        query = expr.replace("$__rate_interval", "6s")
        assert "$__" not in query
        result = live.prom.query_range(query, live.started, end, 1)
        blocker = next((b for m, b in WAITING_FOR_BRANCH.items() if m in expr), None)
        if blocker:
            waiting.append((board, title, blocker))
            continue
        values = [float(v) for s in result for _, v in s["values"]]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{board} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert {b for _, _, b in waiting} <= set(WAITING_FOR_BRANCH.values())


def test_every_sql_panel_returns_rows(live: Live) -> None:
    start = datetime.fromtimestamp(START / 1000, UTC)
    end = start + timedelta(seconds=DURATION_S + 3600)
    empty = []
    with psycopg.connect(live.pg_dsn) as conn:
        for board, title, fmt, raw in _targets("grafana-postgresql-datasource"):
            cur = conn.execute(expand_sql_macros(raw, start, end))
            rows = cur.fetchall()
            columns = [c.name for c in cur.description]
            if fmt == "time_series":
                assert columns[0] == "time", f"{board} / {title}: first column must be time"
            if not rows or all(v is None for v in rows[0]):
                empty.append(f"{board} / {title}")
    assert not empty, "SQL panels without rows:\n" + "\n".join(empty)


def test_dashboards_show_what_the_history_holds(live: Live, bootstrap: str) -> None:
    """Figures on the PromQL panels equal the same figures in PostgreSQL."""
    with psycopg.connect(live.pg_dsn) as conn:
        latest = conn.execute(
            "SELECT site, sum(net_usd_hr), max(power_cap_mw) FROM recommendations "
            "WHERE window_end = (SELECT max(window_end) FROM recommendations) GROUP BY site"
        ).fetchall()
        actions = dict(conn.execute(
            "SELECT action, count(*) FROM recommendations "
            "WHERE window_end = (SELECT max(window_end) FROM recommendations) GROUP BY action"
        ).fetchall())
    assert latest
    for site, net, cap in latest:
        shown = live.prom.scalar(f'hcp_site_net_usd_per_hour{{site="{site}"}}')
        assert shown == pytest.approx(net, rel=1e-9, abs=1e-9)
        shown_cap = live.prom.scalar(f'hcp_site_power_cap_watts{{site="{site}"}}')
        assert shown_cap == (None if cap is None else pytest.approx(cap * 1e6))
    for action, n in actions.items():
        assert live.prom.scalar(f'sum(hcp_site_devices{{action="{action}"}})') == n
    gpu_in = live.prom.scalar(f'sum(hcp_events_in_total{{topic="{live.topics.gpu}"}})')
    on_topic = sum(len(v) for v in read_topic(bootstrap, live.topics.gpu, partitions=4).values())
    assert on_topic == live.sent[live.topics.gpu] + 2
    # Live, end-of-partition events sit between messages; they are not counted as events.
    assert gpu_in == on_topic
    assert gpu_in == _sample(live.metrics_text, "hcp_events_in_total", live.topics.gpu)
    assert live.prom.scalar("sum(hcp_bad_input_total)") == 3


def test_committed_dashboards_equal_the_generated_ones() -> None:
    rendered = render_all()
    assert sorted(rendered) == sorted(p.name for p in BOARDS.glob("*.json"))
    for name, text in rendered.items():
        assert (BOARDS / name).read_text() == text, f"{name}: run python -m tools.dashboards"
    for name, svg in render_pictures(rendered).items():
        picture = ROOT / "docs" / "dashboards" / name
        assert picture.read_text() == svg, f"{name}: run python -m tools.dashboards"


def test_alert_rules_evaluate_on_the_live_series(live: Live) -> None:
    """The rule files load into the real Prometheus and evaluate without errors on real data;
    a healthy run fires none of them (for: clauses keep short blips pending at most)."""
    groups = live.prom.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 8
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    firing = [a for a in live.prom.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, firing
