"""The ``hcp`` command: one subcommand per module, each registering its own parser.

A subcommand module exposes ``register(subparsers)``; the parser it adds sets
``func=<callable(args) -> int>``. Keeping parsers next to the code they drive keeps this
file a table of contents.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hcp.errors import HcpError

__all__ = ["build_parser", "main"]

# Order is the order of `hcp --help`.
SUBCOMMAND_MODULES = [
    "generators.command",
    "flows.command",
    "tools.demo",
    "tools.commands.recommendations",
    "tools.commands.workloads",
    "tools.commands.history",
    "tools.commands.db",
    "api.command",
    "tools.record.command",
    "tools.bench.command",
]

log = logging.getLogger("hcp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcp",
        description=(
            "HCP, the hybrid compute streaming pipeline: simulators, the streaming job and "
            "the tools around it. Every flag also reads an HCP_* environment variable."
        ),
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except HcpError as exc:  # a bad HCP_* variable is found while building parsers
        print(f"hcp: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except HcpError as exc:
        print(f"hcp {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
