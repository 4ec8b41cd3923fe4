"""``hcp generate``: run the fleet, market and workload simulators into Kafka."""

from __future__ import annotations

import argparse
import math
import sys
from datetime import UTC, datetime

from generators.control import ControlConfig
from generators.run import Progress, generate
from generators.scenario import load_scenario, parse_instant_ms
from generators.simulation import SimConfig
from hcp.config import (
    env_arg,
    env_flag,
    non_negative_float,
)
from hcp.errors import ConfigError
from hcp.settings import SETTINGS, add_settings
from hcp.topics import Topics

__all__ = ["register"]


def _instant(text: str) -> int:
    try:
        return parse_instant_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


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
    add_settings(
        parser,
        "seed", "gpus", "asics", "sites", "duration", "speed", "workload_rate", "scenario",
        helps={"seed": "with --start it also names the run's workload ids (wl-TAG-N)"},
    )
    sim = parser.add_argument_group("simulation")
    env_arg(
        sim,
        "--start",
        env="HCP_START",
        default="2026-01-01T00:00:00Z",
        help="simulated start time, ISO 8601",
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
    add_settings(parser, "ignore_share")
    # The group add_settings made for --ignore-share: the loop's flags stay together.
    ctl = next(g for g in parser._action_groups if g.title == SETTINGS["ignore_share"].group)
    env_flag(
        ctl,
        "--follow-commands",
        env="HCP_FOLLOW_COMMANDS",
        help="close the loop: ASICs curtail/resume and GPUs power down as the job commands "
        "on the fleet commands topic (output then depends on the running job)",
    )
    env_arg(
        ctl,
        "--ramp-s",
        env="HCP_RAMP_S",
        default=30.0,
        type=non_negative_float,
        help="simulated seconds from seeing a command to acting on it",
    )
    env_arg(
        ctl,
        "--late-share",
        env="HCP_LATE_SHARE",
        default=0.0,
        type=non_negative_float,
        help="share of devices (0-1, seeded) that obey --late-s later than the ramp",
    )
    env_arg(
        ctl,
        "--late-s",
        env="HCP_LATE_S",
        default=300.0,
        type=non_negative_float,
        help="extra delay of the late devices, simulated seconds",
    )
    env_arg(
        sim,
        "--progress-interval",
        env="HCP_PROGRESS_INTERVAL",
        default=5.0,
        type=non_negative_float,
        help="seconds between progress lines on stderr (0: none)",
    )
    add_settings(parser, "bootstrap", "topic_prefix", "partitions")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        start_ms = _instant(args.start)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(str(exc)) from None
    sites = [f"site-{i + 1:02d}" for i in range(args.sites)]
    control = None
    if args.follow_commands:
        try:
            control = ControlConfig(
                ramp_s=args.ramp_s,
                ignore_share=args.ignore_share,
                late_share=args.late_share,
                late_s=args.late_s,
            ).validate()
        except ValueError as exc:
            raise ConfigError(f"--{exc}") from None
    scenario = (
        load_scenario(args.scenario, start_ms, sites, args.duration) if args.scenario else None
    )
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
        control=control,
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
