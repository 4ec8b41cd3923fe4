"""``hcp generate``: run the fleet, market and workload simulators into Kafka."""

from __future__ import annotations

import argparse
import math
import sys
from datetime import UTC, datetime

from generators.run import Progress, generate
from generators.scenario import load_scenario, parse_instant_ms
from generators.simulation import ENCODINGS, SimConfig
from hcp.config import (
    add_connection_args,
    add_topic_args,
    env_arg,
    env_flag,
    non_negative_float,
    non_negative_int,
    positive_int,
    speed_value,
)
from hcp.errors import ConfigError
from hcp.topics import Topics

__all__ = ["register"]


def _instant(text: str) -> int:
    try:
        return parse_instant_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _encoding(text: str) -> str:
    if text not in ENCODINGS:
        msg = f"must be one of {', '.join(ENCODINGS)}, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="simulate GPUs, ASICs, the market and workload requests into Kafka",
        description=(
            "Simulate a fleet of H100 GPUs and S21 miners (1 Hz telemetry each), the market "
            "(BTC, difficulty, block reward, electricity per site, GPU spot rates, power caps) "
            "and workload requests, on a simulated clock, into the HCP input topics. "
            "The same seed and flags give byte-identical topics."
        ),
    )
    sim = parser.add_argument_group("simulation")
    env_arg(sim, "--seed", env="HCP_SEED", default=7, type=int, help="random seed")
    env_arg(sim, "--gpus", env="HCP_GPUS", default=10, type=non_negative_int, help="GPUs")
    env_arg(sim, "--asics", env="HCP_ASICS", default=50, type=non_negative_int, help="ASICs")
    env_arg(
        sim, "--sites", env="HCP_SITES", default=3, type=positive_int, help="sites (site-01 ...)"
    )
    env_arg(
        sim,
        "--start",
        env="HCP_START",
        default="2026-01-01T00:00:00Z",
        help="simulated start time, ISO 8601",
    )
    env_arg(
        sim,
        "--duration",
        env="HCP_DURATION",
        default=600,
        type=positive_int,
        help="simulated seconds to generate",
    )
    env_arg(
        sim,
        "--speed",
        env="HCP_SPEED",
        default="1",
        type=speed_value,
        help="simulated seconds per wall second: 1 = real time, N = N x faster, max = unthrottled",
    )
    env_arg(
        sim,
        "--workload-rate",
        env="HCP_WORKLOAD_RATE",
        default=6.0,
        type=non_negative_float,
        help="workload requests per simulated minute (Poisson)",
    )
    env_arg(
        sim,
        "--scenario",
        env="HCP_SCENARIO",
        help="scenario JSON file, or the name of a bundled one (e.g. demo)",
    )
    env_arg(
        sim,
        "--encoding",
        env="HCP_ENCODING",
        default="json",
        type=_encoding,
        help="telemetry encoding: json = one message per sample keyed by device; frames = "
        "Arrow IPC frames keyed by site, as site collectors send them (each under 1 MiB)",
    )
    env_flag(sim, "--no-market", env="HCP_NO_MARKET", help="do not publish market prices")
    env_flag(sim, "--no-workloads", env="HCP_NO_WORKLOADS", help="no random workload requests")
    env_flag(
        sim,
        "--follow-assignments",
        env="HCP_FOLLOW_ASSIGNMENTS",
        help="close the loop: GPUs run the work the router assigns on the assignments topic "
        "(output then depends on the running job, so it is no longer reproducible)",
    )
    env_arg(
        sim,
        "--progress-interval",
        env="HCP_PROGRESS_INTERVAL",
        default=5.0,
        type=non_negative_float,
        help="seconds between progress lines on stderr (0: none)",
    )
    add_connection_args(parser)
    add_topic_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        start_ms = _instant(args.start)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(str(exc)) from None
    sites = [f"site-{i + 1:02d}" for i in range(args.sites)]
    scenario = load_scenario(args.scenario, start_ms, sites) if args.scenario else None
    config = SimConfig(
        seed=args.seed,
        gpus=args.gpus,
        asics=args.asics,
        sites=args.sites,
        start_ms=start_ms,
        duration_s=args.duration,
        workload_rate=args.workload_rate,
        market=not args.no_market,
        workloads=not args.no_workloads,
        scenario=scenario,
        closed_loop=args.follow_assignments,
        encoding=args.encoding,
    )
    interval = args.progress_interval
    topics = Topics(prefix=args.topic_prefix)
    summary = generate(
        config,
        args.bootstrap,
        topics,
        speed=args.speed,
        partitions=args.partitions,
        progress=_print_progress if interval > 0 else None,
        progress_interval_s=interval if interval > 0 else math.inf,
    )
    print(summary.line(), file=sys.stderr)
    return 0


def _print_progress(p: Progress) -> None:
    stamp = datetime.fromtimestamp(p.sim_ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(
        f"simulated {stamp} (+{p.seconds_done} s): {p.events} events, "
        f"{p.events_per_s:,.0f} events/s",
        file=sys.stderr,
        flush=True,
    )
