"""``hcp demo``: the whole pipeline on this machine, telling the demo scenario's story live.

Starts the embedded broker (unless a bootstrap is configured), creates the PostgreSQL
schema, runs the simulators at a multiple of real time and the streaming job beside them,
and prints what the job decides per site as the scenario's prices move. Exits by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import redis

from generators.run import generate
from generators.scenario import load_scenario
from generators.simulation import SimConfig
from hcp.errors import HcpError, SinkUnavailableError
from hcp.settings import add_settings
from hcp.topics import Topics
from tools.broker import EmbeddedBroker

__all__ = ["register"]

log = logging.getLogger(__name__)

ACTIONS = ("mine", "curtail", "serve", "offer", "power_down")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run broker, simulators and the job together and show the decisions live",
        description=(
            "Run the whole pipeline locally for about a minute: the embedded Kafka broker "
            "(unless --bootstrap/HCP_KAFKA_BOOTSTRAP is set), the fleet and market simulators "
            "playing the bundled demo scenario at --speed times real time, and the streaming "
            "job writing to Redis and PostgreSQL. Prints per-site decisions as they change."
        ),
    )
    add_settings(
        parser,
        "bootstrap", "redis", "pg", "redis_prefix", "topic_prefix",
        "scenario", "duration", "speed", "gpus", "asics", "sites", "workload_rate", "seed",
        defaults={"bootstrap": None, "scenario": "demo", "duration": 1200, "speed": 20.0,
                  "gpus": 24, "workload_rate": 3.0},
        helps={"bootstrap": "unset = start the embedded broker"},
    )
    parser.set_defaults(func=run)


@contextlib.contextmanager
def _broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedBroker() as broker:
        print(f"embedded Kafka broker on {broker.bootstrap}", flush=True)
        yield broker.bootstrap


def run(args: argparse.Namespace) -> int:
    client = redis.Redis.from_url(args.redis, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        msg = f"Redis at {args.redis} is unreachable ({exc}); set --redis or HCP_REDIS_URL"
        raise SinkUnavailableError(msg) from None
    from sinks.postgres.schema import apply_migrations, ensure_database

    ensure_database(args.pg)
    path = apply_migrations(args.pg)
    print(f"PostgreSQL schema ready ({path} path)", flush=True)
    topics = Topics(args.topic_prefix)
    sites = [f"site-{i + 1:02d}" for i in range(args.sites)]
    start_ms = 1_767_225_600_000
    config = SimConfig(
        seed=args.seed,
        gpus=args.gpus,
        asics=args.asics,
        sites=args.sites,
        start_ms=start_ms,
        duration_s=args.duration,
        scenario=load_scenario(args.scenario, start_ms, sites),
        workload_rate=args.workload_rate,
        closed_loop=True,
    )
    with _broker(args.bootstrap) as bootstrap:
        return _play(args, client, bootstrap, topics, config, sites)


def _play(
    args: argparse.Namespace,
    client: redis.Redis,
    bootstrap: str,
    topics: Topics,
    config: SimConfig,
    sites: list[str],
) -> int:
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            summary = generate(config, bootstrap, topics, speed=args.speed)
            print(f"simulators done: {summary.line()}", flush=True)
        except BaseException as exc:  # reported below; the demo must not hang on it
            failure.append(exc)

    # Topics must exist before the job starts; the first simulated second creates them.
    gen = threading.Thread(target=produce, name="simulators", daemon=True)
    gen.start()
    _wait_for_topics(bootstrap, topics, failure)
    env = dict(os.environ)
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hcp",
            "run",
            "--bootstrap",
            bootstrap,
            "--redis",
            args.redis,
            "--pg",
            args.pg,
            "--redis-prefix",
            args.redis_prefix,
            "--topic-prefix",
            args.topic_prefix,
            "--idle-timeout-s",
            "3",
            "--lateness-s",
            "2",
            "--metrics-port",
            "9464",
        ],
        env=env,
    )
    print("streaming job started (metrics on http://127.0.0.1:9464/metrics)", flush=True)
    last_view = ""
    deadline = time.monotonic() + args.duration / args.speed + 45
    try:
        while time.monotonic() < deadline:
            time.sleep(2.0)
            view = _view(client, args.redis_prefix, sites)
            if view and _window(view) != _window(last_view):
                print(view, flush=True)
                last_view = view
            if job.poll() is not None:
                print(f"job exited early with code {job.returncode}", flush=True)
                return 1
            if not gen.is_alive():
                break
        # Let the job fold in the last seconds the simulators wrote.
        time.sleep(6.0)
        view = _view(client, args.redis_prefix, sites)
        if view and _window(view) != _window(last_view):
            print(view, flush=True)
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGTERM)
            try:
                job.wait(timeout=20)
            except subprocess.TimeoutExpired:
                job.kill()
                job.wait()
    if failure:
        raise HcpError(f"simulators failed: {failure[0]}")
    print(f"demo finished; job exit code {job.returncode}. Try `hcp recommendations`.", flush=True)
    # The console is served by the API, which the demo does not start (it opens nothing).
    print(
        "console: `hcp api keys create --role admin`, then `hcp api --redis-prefix "
        f"{args.redis_prefix} --topic-prefix {args.topic_prefix}` and open "
        "http://127.0.0.1:8080/console/ with the key",
        flush=True,
    )
    return 0 if job.returncode == 0 else 1


def _wait_for_topics(bootstrap: str, topics: Topics, failure: list[BaseException]) -> None:
    from hcp.kafka_admin import partition_counts

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not failure:
        if len(partition_counts(bootstrap, topics.inputs())) == len(topics.inputs()):
            return
        time.sleep(0.2)
    if failure:
        raise HcpError(f"simulators failed: {failure[0]}")


def _view(client: redis.Redis, prefix: str, sites: list[str]) -> str:
    """One block per window: per site what the job decided and what it earns."""
    fleet = client.hgetall(f"{prefix}summary:fleet")
    if not fleet:
        return ""
    prices = client.hgetall(f"{prefix}prices")
    end = int(float(fleet.get("window_end", 0)))
    when = datetime.fromtimestamp(end / 1000, UTC).strftime("%H:%M")
    net = float(fleet.get("net_usd_hr", 0))
    lines = [
        f"-- window ending {when} (sim) -- fleet net {net:,.2f} $/h -- "
        f"BTC {float(prices.get('btc_usd', 0)):,.0f} $ -- "
        f"workloads: {_workload_counts(client, prefix)}"
    ]
    for site in sites:
        s = client.hgetall(f"{prefix}summary:site:{site}")
        if not s:
            continue
        counts = " ".join(
            f"{a}={int(float(s.get(f'n_{a}', 0)))}"
            for a in ACTIONS
            if int(float(s.get(f"n_{a}", 0)))
        )
        elec = prices.get(f"electricity_usd_mwh:{site}")
        cap = prices.get(f"power_cap_mw:{site}")
        # A lifted cap is published as one no site can reach (docs/generators.md).
        extra = f" cap {float(cap) * 1000:.0f} kW" if cap and float(cap) < 1.0 else ""
        net = float(s.get("net_usd_hr", 0))
        lines.append(
            f"  {site}: electricity {float(elec or 0):6.1f} $/MWh{extra} | net {net:8.2f} $/h"
            f" | {counts}"
        )
    return "\n".join(lines)


def _workload_counts(client: redis.Redis, prefix: str) -> str:
    states: dict[str, int] = {}
    keys = list(client.scan_iter(f"{prefix}workload:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "state")
    for state in pipe.execute():
        if state:
            states[state] = states.get(state, 0) + 1
    order = ("queued", "assigned", "running", "preempted", "completed", "failed")
    return " ".join(f"{s}={states[s]}" for s in order if states.get(s)) or "none yet"


def _window(view: str) -> str:
    """The window a view shows: print each window once, however often it is polled."""
    return view.split(" (sim)", 1)[0]
