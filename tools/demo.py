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
import socket
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
from hcp.config import DEFAULT_PG, DEFAULT_REDIS, env_arg, positive_int
from hcp.errors import HcpError, SinkUnavailableError
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
    env_arg(
        parser,
        "--bootstrap",
        env="HCP_KAFKA_BOOTSTRAP",
        default=None,
        help="Kafka bootstrap; unset = start the embedded broker",
    )
    env_arg(parser, "--redis", env="HCP_REDIS_URL", default=DEFAULT_REDIS, help="Redis URL")
    env_arg(parser, "--pg", env="HCP_PG_DSN", default=DEFAULT_PG, help="PostgreSQL DSN")
    env_arg(
        parser,
        "--redis-prefix",
        env="HCP_REDIS_PREFIX",
        default="hcp:",
        help="prefix of the Redis keys the demo's job writes",
    )
    env_arg(
        parser,
        "--topic-prefix",
        env="HCP_TOPIC_PREFIX",
        default="hcp.",
        help="prefix of the topic names",
    )
    env_arg(
        parser,
        "--scenario",
        env="HCP_SCENARIO",
        default="demo",
        help="scenario file, or the name of a bundled one",
    )
    env_arg(
        parser,
        "--duration",
        env="HCP_DURATION",
        default=1200,
        type=positive_int,
        help="simulated seconds",
    )
    env_arg(
        parser,
        "--speed",
        env="HCP_DEMO_SPEED",
        default=20.0,
        type=float,
        help="simulated seconds per wall second",
    )
    env_arg(parser, "--gpus", env="HCP_GPUS", default=24, type=positive_int, help="GPUs")
    env_arg(
        parser,
        "--workload-rate",
        env="HCP_WORKLOAD_RATE",
        default=3.0,
        type=float,
        help="workload requests per simulated minute",
    )
    env_arg(parser, "--asics", env="HCP_ASICS", default=50, type=positive_int, help="ASICs")
    env_arg(parser, "--sites", env="HCP_SITES", default=3, type=positive_int, help="sites")
    env_arg(parser, "--seed", env="HCP_SEED", default=7, type=int, help="random seed")
    env_arg(
        parser,
        "--api-port",
        env="HCP_API_PORT",
        default=8080,
        type=int,
        help="port of the HTTP API the demo starts (a free one when taken; -1: no API)",
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
    api = _start_api(args, bootstrap)
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
        if api is not None and api.poll() is None:
            api.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                api.wait(timeout=10)
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
    return 0 if job.returncode == 0 else 1


def _start_api(args: argparse.Namespace, bootstrap: str) -> subprocess.Popen | None:
    """Start `hcp api` beside the job and print its URL and a fresh admin key."""
    if args.api_port < 0:
        return None
    import psycopg

    from api.keys import create_key
    from tools.broker import free_port

    port = args.api_port if not _port_taken(args.api_port) else free_port()
    with psycopg.connect(args.pg, autocommit=True) as conn:
        key_id, key = create_key(conn, "admin", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "--log-level", "WARNING", "api", "--port", str(port),
         "--bootstrap", bootstrap, "--redis", args.redis, "--pg", args.pg,
         "--redis-prefix", args.redis_prefix, "--topic-prefix", args.topic_prefix],
    )
    url = f"http://127.0.0.1:{port}"
    print(f"HTTP API on {url} (docs {url}/docs); admin key {key_id} for this demo:", flush=True)
    print(f"  curl -H 'Authorization: Bearer {key}' {url}/api/v1/sites", flush=True)
    return proc


def _port_taken(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return True
    return False


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
