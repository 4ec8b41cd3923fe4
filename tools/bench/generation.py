"""Generation benchmark: events/s of ``hcp generate --speed max`` into a real broker.

``python -m tools.bench.generation`` starts the embedded broker (unless ``--bootstrap`` or
``HCP_KAFKA_BOOTSTRAP`` names one), writes a fresh topic set, and prints one line with the
events, wall time and events/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from generators.run import generate
from generators.simulation import SimConfig
from hcp.topics import Topics
from tools.broker import EmbeddedBroker

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.generation", description=__doc__)
    parser.add_argument("--gpus", type=int, default=5000)
    parser.add_argument("--asics", type=int, default=300_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("HCP_KAFKA_BOOTSTRAP"),
        help="broker to use; default: start the embedded one [env: HCP_KAFKA_BOOTSTRAP]",
    )
    args = parser.parse_args(argv)
    config = SimConfig(seed=args.seed, gpus=args.gpus, asics=args.asics, duration_s=args.duration)
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:8]}.")
    broker = None if args.bootstrap else EmbeddedBroker().start()
    before = os.times()
    try:
        bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        summary = generate(config, bootstrap, topics, partitions=args.partitions)
    finally:
        if broker is not None:
            broker.stop()
    after = os.times()
    # CPU seconds show what bounds the run on a shared machine: the generator process
    # (Python + librdkafka threads) and the embedded broker (a child, counted once reaped).
    own = after.user + after.system - before.user - before.system
    child = after.children_user + after.children_system
    child -= before.children_user + before.children_system
    broker_cpu = f", broker CPU {child:.1f} s" if broker is not None else ""
    print(
        f"bench-gen: --gpus {args.gpus} --asics {args.asics} --duration {args.duration} "
        f"--speed max: {summary.events} events in {summary.wall_s:.2f} s = "
        f"{summary.events_per_s:,.0f} events/s (generator CPU {own:.1f} s{broker_cpu}; "
        f"load average {os.getloadavg()[0]:.1f})",
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
