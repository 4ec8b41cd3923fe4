"""``hcp agent``: a site's command agent, applying hcp.fleet.commands to its devices.

ASIC curtail/mine through pyasic-rs pause/resume (miners at port 4028; elsewhere the
CGMiner API's LuxOS curtail sleep|wakeup), GPU serve/offer/power_down
through --gpu-hook (run as: CMD ACTION DEVICE_ID SITE). One result per command on
hcp.fleet.command_results. Runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from hcp.config import env_arg, env_flag, non_negative_int, positive_int
from hcp.settings import add_settings

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="apply a site's fleet commands to its miners and GPU hosts",
        description=__doc__,
    )
    env_arg(
        parser,
        "--inventory",
        env="HCP_AGENT_INVENTORY",
        type=Path,
        help="inventory file (.csv, .yaml, .toml; docs/fleet.md)",
    )
    env_arg(parser, "--site", env="HCP_AGENT_SITE",
            help="the site whose commands this agent applies")
    env_flag(
        parser,
        "--dry-run",
        env="HCP_AGENT_DRY_RUN",
        help="check and report every command without switching any device",
    )
    env_arg(
        parser,
        "--rate-per-minute",
        env="HCP_AGENT_RATE_PER_MINUTE",
        default=60,
        type=positive_int,
        help="most devices switched in any minute at this site",
    )
    env_arg(
        parser,
        "--gpu-hook",
        env="HCP_AGENT_GPU_HOOK",
        help="command run for GPU actions as: CMD ACTION DEVICE_ID SITE (exit 0 = applied)",
    )
    env_arg(
        parser,
        "--metrics-port",
        env="HCP_AGENT_METRICS_PORT",
        default=0,
        type=non_negative_int,
        help="serve Prometheus metrics (hcp_agent_*) on this port (0: off)",
    )
    add_settings(parser, "bootstrap", "topic_prefix", "metrics_host")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hcp.errors import ConfigError
    from hcp.fleet.agent import Agent
    from hcp.fleet.inventory import load_inventory
    from hcp.topics import Topics

    if args.inventory is None or not args.site:
        raise ConfigError(
            "--inventory and --site are required (or HCP_AGENT_INVENTORY, HCP_AGENT_SITE)"
        )
    devices = load_inventory(args.inventory, args.site)
    from hcp.metrics_http import serve_metrics

    serve_metrics(args.metrics_port, args.metrics_host, "--metrics-port (HCP_AGENT_METRICS_PORT)")
    agent = Agent(
        args.bootstrap,
        Topics(args.topic_prefix),
        args.site,
        devices,
        dry_run=args.dry_run,
        rate_per_minute=args.rate_per_minute,
        gpu_hook=args.gpu_hook,
    )
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stopping:
            agent.poll(1.0)
    finally:
        agent.close()
    return 0
