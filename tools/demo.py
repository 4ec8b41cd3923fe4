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
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import redis

from generators.control import ControlConfig
from generators.run import generate
from generators.scenario import load_scenario
from generators.simulation import SimConfig
from hcp.config import env_arg
from hcp.errors import HcpError, SinkUnavailableError
from hcp.redis_client import redis_client, safe_url
from hcp.settings import add_settings, default
from hcp.topics import Topics
from tools.broker import EmbeddedBroker, free_port

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
        "ignore_share",
        defaults={"bootstrap": None, "scenario": "demo", "duration": 1200, "speed": 20.0,
                  "gpus": 24, "workload_rate": 3.0, "ignore_share": 0.1},
        helps={"bootstrap": "unset = start the embedded broker"},
    )
    env_arg(
        parser,
        "--api-port",
        env="HCP_DEMO_API_PORT",
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
    client = redis_client(args.redis, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        where = safe_url(args.redis)
        msg = f"Redis at {where} is unreachable ({exc}); set --redis or HCP_REDIS_URL"
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
        # The fleet follows the job's commands (a few rebels), so curtailing shows up as
        # a drop in the site's observed power.
        control=ControlConfig(ignore_share=args.ignore_share),
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
    metrics_port = _metrics_port()
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools",
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
            # The router decides about a window plus the job's wall-clock lag (times the
            # speed-up) behind the simulator, so give GPUs that long to start work.
            "--assign-timeout-s",
            str(_assign_timeout_s(args.speed)),
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
    )
    print(
        f"streaming job started (metrics on http://127.0.0.1:{metrics_port}/metrics)", flush=True
    )
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
    print(
        f"demo finished; job exit code {job.returncode}. Try `{_closing_hint(args)}`.",
        flush=True,
    )
    return 0 if job.returncode == 0 else 1


def _assign_timeout_s(speed: float) -> float:
    """120 s of event time plus 10 wall seconds of job lag at ``speed``."""
    return 120.0 + 10.0 * (speed if speed != float("inf") else 60.0)


def _metrics_port(preferred: int = 9464) -> int:
    """The usual /metrics port, or a free one: `hcp run` refuses a port it cannot bind."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def _start_api(args: argparse.Namespace, bootstrap: str) -> subprocess.Popen | None:
    """Start `hcp api` beside the job and print its URL and a fresh admin key."""
    if args.api_port < 0:
        return None
    import psycopg

    from api.keys import create_key
    port = args.api_port if not _port_taken(args.api_port) else free_port()
    with psycopg.connect(args.pg, autocommit=True) as conn:
        key_id, key = create_key(conn, "admin", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools", "--log-level", "WARNING", "api", "--port", str(port),
         "--bootstrap", bootstrap, "--redis", args.redis, "--pg", args.pg,
         "--redis-prefix", args.redis_prefix, "--topic-prefix", args.topic_prefix],
    )
    url = f"http://127.0.0.1:{port}"
    print(f"HTTP API on {url} (docs {url}/docs); admin key {key_id} for this demo:", flush=True)
    print(f"  curl -H 'Authorization: Bearer {key}' {url}/api/v1/sites", flush=True)
    print(f"console: {url}/console/ (sign in with the key above; nothing is opened)", flush=True)
    return proc


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
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
    """One block per window: per site what the job decided, the prices it decided on and
    what it earns.

    Prices and caps come from that window's recommendations (each carries the prices it
    used), not from the ``prices`` hash: that holds the newest prices, which at a
    simulated speed of 20x are often minutes ahead of the window being shown.
    """
    fleet = client.hgetall(f"{prefix}summary:fleet")
    if not fleet:
        return ""
    end = int(float(fleet.get("window_end", 0)))
    btc, used = _window_prices(client, prefix, end)
    when = datetime.fromtimestamp(end / 1000, UTC).strftime("%H:%M")
    net = float(fleet.get("net_usd_hr", 0))
    lines = [
        f"-- window ending {when} (sim) -- fleet net {net:,.2f} $/h -- "
        f"BTC {btc or 0:,.0f} $ -- "
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
        elec, cap = used.get(site, (None, None))
        # A lifted cap is published as one no site can reach (docs/generators.md).
        extra = f" cap {cap * 1000:.0f} kW" if cap is not None and cap < 1.0 else ""
        net = float(s.get("net_usd_hr", 0))
        lines.append(
            f"  {site}: electricity {elec or 0:6.1f} $/MWh{extra} | net {net:8.2f} $/h"
            f" | {counts}{_power(client, prefix, site)}"
        )
    return "\n".join(lines)


def _power(client: redis.Redis, prefix: str, site: str) -> str:
    """Commanded vs observed power of the site's latest judged window, and its rebels."""
    c = client.hgetall(f"{prefix}compliance:site:{site}")
    if not c:
        return ""
    flagged = int(float(c.get("flagged") or 0))
    rebels = f", {flagged} not following" if flagged else ""
    return (
        f" | power {float(c.get('observed_kw') or 0):6.1f} kW"
        f" (commanded {float(c.get('commanded_kw') or 0):6.1f}{rebels})"
    )


def _window_prices(
    client: redis.Redis, prefix: str, end_ms: int
) -> tuple[float | None, dict[str, tuple[float | None, float | None]]]:
    """BTC price and per-site (electricity, power cap) the window ending ``end_ms`` used.

    Read from the window's entries in the recommendation stream (ids ``{end_ms}-{seq}``);
    the first device of a site that saw a price speaks for the site, as every device of a
    site decides on the same prices.
    """
    btc: float | None = None
    used: dict[str, tuple[float | None, float | None]] = {}
    for _id, rec in client.xrange(f"{prefix}recommendations", str(end_ms), str(end_ms)):
        btc = btc if btc is not None else _number(rec.get("btc_usd"))
        site = rec.get("site", "")
        elec, cap = used.get(site, (None, None))
        used[site] = (
            elec if elec is not None else _number(rec.get("electricity_usd_mwh")),
            cap if cap is not None else _number(rec.get("power_cap_mw")),
        )
    return btc, used


def _number(text: str | None) -> float | None:
    """A stream field as a float; the sink writes a missing price as ``""``."""
    return float(text) if text else None


def _closing_hint(args: argparse.Namespace) -> str:
    """The command to look at the results, with the Redis settings the demo used."""
    flags = []
    if args.redis != default("redis"):
        flags += ["--redis", args.redis]
    if args.redis_prefix != default("redis_prefix"):
        flags += ["--redis-prefix", args.redis_prefix]
    return shlex.join(["hcp", "recommendations", *flags])


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
