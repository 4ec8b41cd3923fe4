"""``hcp collect``: a site collector polling its devices' own APIs once a round.

ASICs over the CGMiner JSON API (TCP 4028; identified once at startup through pyasic-rs),
GPU hosts from a DCGM exporter's /metrics page
or the local nvidia-smi; publishes the contract's telemetry (frames by default). A device
that does not answer is published as fault/down and counted by reason. Runs until SIGINT or
SIGTERM (or --rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
import time
from pathlib import Path

from hcp.config import env_arg, env_flag, non_negative_int, positive_int, telemetry_encoding
from hcp.settings import add_settings

__all__ = ["register", "run"]

log = logging.getLogger("hcp.collect")


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="poll a site's miners and GPU hosts and publish telemetry",
        description=__doc__,
    )
    env_arg(
        parser,
        "--inventory",
        env="HCP_INVENTORY",
        type=Path,
        required=False,
        help="inventory file (.csv, .yaml, .toml; docs/fleet.md)",
    )
    env_arg(parser, "--site", env="HCP_SITE", help="poll only this site's devices (all when unset)")
    env_arg(
        parser,
        "--interval-s",
        env="HCP_COLLECT_INTERVAL_S",
        default=1.0,
        type=_positive_float,
        help="seconds between round starts",
    )
    env_arg(
        parser,
        "--timeout-s",
        env="HCP_COLLECT_TIMEOUT_S",
        default=0.5,
        type=_positive_float,
        help="per-device answer timeout",
    )
    env_arg(
        parser,
        "--concurrency",
        env="HCP_COLLECT_CONCURRENCY",
        default=512,
        type=positive_int,
        help="devices polled at once",
    )
    env_arg(
        parser,
        "--encoding",
        env="HCP_COLLECT_ENCODING",
        default="frames",
        type=telemetry_encoding,
        help="telemetry encoding: frames (1b) or json (1a)",
    )
    env_arg(
        parser,
        "--rounds",
        env="HCP_COLLECT_ROUNDS",
        default=0,
        type=non_negative_int,
        help="stop after this many rounds (0: run until stopped)",
    )
    env_arg(
        parser,
        "--nvidia-smi",
        env="HCP_NVIDIA_SMI",
        default="nvidia-smi",
        help="command run for inventory rows whose address is nvidia-smi",
    )
    env_arg(
        parser,
        "--metrics-port",
        env="HCP_COLLECT_METRICS_PORT",
        default=0,
        type=non_negative_int,
        help="serve Prometheus metrics on this port (0: off)",
    )
    env_flag(
        parser,
        "--no-identify",
        env="HCP_COLLECT_NO_IDENTIFY",
        help="skip the start-up identification of each miner through pyasic-rs (about 11 ms "
        "of CPU per miner, on its own thread beside the first rounds)",
    )
    add_settings(parser, "bootstrap", "topic_prefix", "metrics_host")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hcp.errors import ConfigError
    from hcp.fleet.collect import Collector, run_on_uvloop
    from hcp.fleet.inventory import load_inventory
    from hcp.fleet.publish import RoundPublisher
    from hcp.topics import Topics

    if args.inventory is None:
        raise ConfigError("--inventory is required (or HCP_INVENTORY)")
    devices = load_inventory(args.inventory, args.site)
    if not devices:
        raise ConfigError(f"inventory {args.inventory} lists no devices for this site")
    from hcp.metrics_http import serve_metrics

    serve_metrics(args.metrics_port, args.metrics_host, "--metrics-port (HCP_COLLECT_METRICS_PORT)")
    collector = Collector(devices, args.timeout_s, args.concurrency, args.nvidia_smi)
    from hcp.fleet import asiclib

    if (not args.no_identify and asiclib.available()
            and any(asiclib.library_port(d) for d in devices)):
        # Identification on its own thread and loop: ~11 ms CPU per miner, so the first
        # rounds at 10,000 miners would otherwise wait ~100 s for it.
        def identify() -> None:
            found = asyncio.run(collector.identify())
            known = sum(1 for i in found.values() if i is not None)
            log.info("pyasic-rs identified %d of %d miners", known, len(found))

        threading.Thread(target=identify, name="identify", daemon=True).start()
    publisher = RoundPublisher(args.bootstrap, Topics(args.topic_prefix), args.encoding)
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    async def loop() -> None:
        start = time.monotonic()
        n = 0
        while not stopping and (args.rounds == 0 or n < args.rounds):
            result = await collector.poll_round()
            queued = time.perf_counter()
            publisher.publish(result.asic, result.gpu)
            log.info(
                "round %d: %d asic, %d gpu rows, faults %s, poll %.3f s, publish %.3f s",
                n,
                len(result.asic),
                len(result.gpu),
                result.faults or "none",
                result.seconds,
                time.perf_counter() - queued,
            )
            n += 1
            # Fixed cadence: the next round starts on the grid, a slow round skips none.
            delay = start + n * args.interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    run_on_uvloop(loop())
    left = publisher.flush()
    if left or publisher.failed:
        log.error("%d telemetry messages undelivered", left + publisher.failed)
        return 1
    return 0
