"""The real-fleet control loop end to end, every part a real process on real sockets.

    simulated S21s (CGMiner API on TCP) <── hcp collect ──> Kafka telemetry (frames)
         ▲                                                       │
         │ sleep / wakeup                                         ▼
    hcp agent <── hcp.fleet.commands <──────────────── hcp run (2 s windows)
         │                                                       ▲
         └──> hcp.fleet.command_results ─────────────────────────┘ (stored in PostgreSQL)

Ten miners at one site, 3.5 kW each, under a 14.5 kW power cap: the job keeps four mining
and commands six to curtail (reason power_cap); the agent puts those six to sleep through
their own API; the collector reads their power fall to standby; the site's compliance then
shows the commanded share of power (4 / 10) observed, every device in step, and the
compliance report names what the agent did with each command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer

from generators.devices import SimFleet
from hcp.topics import Topics
from tests.support.cleanup import stop_process
from tests.support.clusterkit import ROOT, job_env, start_job, wait_for
from tests.support.flowkit import make_topics
from tools.commands.history import compliance

SITE = "site-e2e"
MINERS = 10
KEEP = 4  # 4 x 3.5 kW fit under the cap, a fifth does not
CAP_MW = 0.0145
IDLE_W = 15.0  # SimMiner's draw asleep


def _feed_prices(bootstrap: str, topic: str, stop: threading.Event) -> None:
    """Fresh prices twice a second, stamped now: the job's event time is the wall clock."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    while not stop.is_set():
        ts = int(time.time() * 1000)
        for kind, value, site in (
            ("btc_usd", 100_000.0, None),
            ("difficulty", 1.2e14, None),
            ("electricity_usd_mwh", 40.0, SITE),
            ("power_cap_mw", CAP_MW, SITE),
        ):
            msg = {"v": 1, "ts": ts, "kind": kind, "value": value}
            if site:
                msg["site"] = site
            producer.produce(topic, json.dumps(msg).encode(), kind.encode())
        producer.flush(10)
        stop.wait(0.5)


def _hcp(env: dict, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tools", *args], env=env, cwd=ROOT,
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def _site_rows(dsn: str, since_ms: int) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT window_start, commanded_kw, observed_kw, noncompliant, devices "
            "FROM site_compliance WHERE site = %s AND window_start >= to_timestamp(%s / 1000.0) "
            "ORDER BY window_start",
            (SITE, since_ms),
        ).fetchall()


def _first_command_ms(dsn: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (EXTRACT(EPOCH FROM min(command_ts)) * 1000)::bigint FROM command_results"
        ).fetchone()
    return row[0] if row else None


@pytest.mark.pg
def test_collector_job_agent_loop_curtails_to_the_commanded_share(
    bootstrap: str, redis_url: str, redis_prefix: str, own_pg_dsn: str, tmp_path: Path
) -> None:
    topics = Topics(prefix=f"e2e{int(time.time() * 1000) % 10**9}.")
    make_topics(bootstrap, topics, partitions=1)
    fleet = SimFleet()
    miners = fleet.add_miners(MINERS, ramp_s=0.2)
    inventory = tmp_path / "site.csv"
    fleet.write_inventory(inventory, site=SITE)
    env = job_env(bootstrap, topics, redis_url, redis_prefix, own_pg_dsn)
    env.update(HCP_IDLE_TIMEOUT_S="1", HCP_LATENESS_S="0.5")
    stop_prices = threading.Event()
    feeder = threading.Thread(
        target=_feed_prices, args=(bootstrap, topics.prices, stop_prices), daemon=True
    )
    feeder.start()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start_job(
            env, "--window-s", "2", "--dwell-s", "0", "--hysteresis", "0",
            "--compliance-grace-s", "2", "--compliance-windows", "2",
            "--max-price-age-s", "30", "--partitions", "1",
        ))
        procs.append(_hcp(env, "collect", "--inventory", str(inventory), "--interval-s", "0.5",
                          log=tmp_path / "collect.log"))
        procs.append(_hcp(env, "agent", "--inventory", str(inventory), "--site", SITE,
                          "--rate-per-minute", "600", log=tmp_path / "agent.log"))

        # The agent answers every first command: six curtails applied, four "mine" that
        # found their miner already mining.
        wait_for(lambda: sum(m.sleeping for m in miners) == MINERS - KEEP, timeout=120, step=0.5)
        wait_for(lambda: _first_command_ms(own_pg_dsn) is not None, timeout=30, step=0.5)
        in_force = _first_command_ms(own_pg_dsn)
        # Judged windows start once the command has had its grace (2 s); two of them.
        wait_for(lambda: len(_site_rows(own_pg_dsn, in_force + 4_000)) >= 2, timeout=60, step=0.5)
    finally:
        stop_prices.set()
        for proc in reversed(procs):
            stop_process(proc)
        fleet.close()
    for proc in procs:
        assert proc.returncode == 0, (tmp_path / "collect.log").read_text()[-2000:]

    full_kw = MINERS * 3.5
    for _start, commanded_kw, observed_kw, noncompliant, devices in _site_rows(
        own_pg_dsn, in_force + 4_000
    ):
        assert devices == MINERS
        assert commanded_kw / full_kw == pytest.approx(KEEP / MINERS)
        # What the collector read: the four kept at full power, six asleep at standby.
        assert observed_kw == pytest.approx(commanded_kw + (MINERS - KEEP) * IDLE_W / 1000,
                                            abs=0.05)
        assert noncompliant == 0
    assert sorted(m.curtail_calls for m in miners) == [0] * KEEP + [1] * (MINERS - KEEP)

    with psycopg.connect(own_pg_dsn) as conn:
        statuses = dict(conn.execute(
            "SELECT status, count(*) FROM command_results WHERE site = %s GROUP BY status",
            (SITE,),
        ).fetchall())
    assert statuses == {"applied": MINERS - KEEP, "unchanged": KEEP}
    with psycopg.connect(own_pg_dsn) as conn:
        report, _, _ = compliance(conn, by="device", site=SITE)
    by_device = {r["device_id"]: r for r in report.iter_rows(named=True)}
    asleep = {m.miner_id for m in miners if m.sleeping}
    assert {d for d, r in by_device.items() if r["last_result"] == "applied"} == asleep
    assert all(r["commands_failed"] == 0 for r in by_device.values())
