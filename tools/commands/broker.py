"""``hcp broker``: a standalone embedded Kafka-protocol broker for local runs.

Starts the Tansu broker of :mod:`tools.broker` on loopback, prints its bootstrap address
on stdout (one line, so scripts can read it) and keeps it up until SIGINT or SIGTERM.
Topics live in memory and are gone when it stops.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

from hcp.config import env_arg
from hcp.errors import BrokerUnreachableError, ConfigError
from tools.broker import EmbeddedBroker

__all__ = ["register", "run"]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        msg = f"expected a TCP port number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    if not 0 <= value <= 65535:
        msg = f"expected a TCP port in 0..65535, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "broker",
        help="run a standalone embedded Kafka-protocol broker (in memory) until stopped",
        description=__doc__,
    )
    env_arg(
        parser,
        "--port",
        env="HCP_BROKER_PORT",
        default=9092,
        type=_port,
        help="loopback port to listen on; 0 picks a free one",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Checked first: the start-up probe would take whatever already listens for the broker.
    if args.port and _port_in_use(args.port):
        msg = f"port {args.port} is already in use; pick another with --port (0: any free one)"
        raise ConfigError(msg)
    broker = EmbeddedBroker(port=args.port or None).start()
    try:
        print(broker.bootstrap, flush=True)
        print(
            f"broker on {broker.bootstrap}; use --bootstrap {broker.bootstrap} or "
            f"HCP_KAFKA_BOOTSTRAP={broker.bootstrap}; Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.running:
                msg = f"the broker on {broker.bootstrap} exited on its own"
                raise BrokerUnreachableError(msg)
    finally:
        broker.stop()
    return 0


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
