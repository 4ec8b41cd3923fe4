"""The ``hcp`` command: one subcommand per module, each registering its own parser.

A subcommand module exposes ``register(subparsers)``; the parser it adds sets
``func=<callable(args) -> int>``. Keeping parsers next to the code they drive keeps this
file a table of contents.

This is also the one place where failures become exit codes: every error ends as one line
on stderr, exit 2 for a usage or configuration mistake and 1 for a runtime failure
(:func:`describe_error`), never a traceback (``--log-level DEBUG`` logs it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from hcp.config import env_arg
from hcp.errors import ConfigError, HcpError
from hcp.kafka_config import CONFIG_ENV, check_kafka_config

__all__ = ["HcpArgumentParser", "build_parser", "describe_error", "main"]

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
    "tools.commands.audit",
    "tools.record.command",
    "tools.commands.broker",
    "tools.bench.command",
    "tools.backtest.command",
    "tools.commands.collect",
    "tools.commands.agent",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXIT_RUNTIME = 1
EXIT_USAGE = 2

log = logging.getLogger("hcp")


class HcpArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, like every other HCP error."""

    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block first; one line naming the fix reads better
        # in a terminal and in a log, and `--help` is one flag away.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        # Module docstrings double as descriptions; show their RST literals as plain quotes.
        return super().format_help().replace("``", "`")


def log_level(text: str) -> str:
    """Parse ``--log-level``: one of the standard logging level names, any case."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        msg = f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return level


def _package_version() -> str:
    try:
        return version("hcp")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _add_log_level(parser: argparse.ArgumentParser, top: bool) -> None:
    if top:
        env_arg(
            parser,
            "--log-level",
            env="HCP_LOG_LEVEL",
            default="INFO",
            type=log_level,
            help=f"logging level, one of {', '.join(LOG_LEVELS)}; also accepted after the "
            "subcommand",
        )
    else:
        # SUPPRESS: a subcommand only overrides the top-level value when given there.
        parser.add_argument(
            "--log-level",
            type=log_level,
            default=argparse.SUPPRESS,
            help="logging level (same as before the subcommand) [env: HCP_LOG_LEVEL]",
        )


def _add_kafka_config(parser: argparse.ArgumentParser, top: bool) -> None:
    # One declared setting for every Kafka client (hcp/kafka_config.py); docs/security.md.
    text = ("librdkafka .properties file applied to every Kafka client (TLS, SASL ...); "
            "HCP_KAFKA_<PROP> variables add or override properties, see docs/security.md")
    if top:
        env_arg(parser, "--kafka-config", env="HCP_KAFKA_CONFIG", metavar="FILE", help=text)
    else:
        parser.add_argument("--kafka-config", metavar="FILE", default=argparse.SUPPRESS,
                            help=f"{text} [env: HCP_KAFKA_CONFIG]")


def _subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share one parser
                found.append(sub)
                found.extend(_subcommand_parsers(sub))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = HcpArgumentParser(
        prog="hcp",
        description=(
            "HCP, the hybrid compute streaming pipeline: simulators, the streaming job and "
            "the tools around it. Every flag also reads an HCP_* environment variable."
        ),
    )
    parser.add_argument("--version", action="version", version=f"hcp {_package_version()}")
    _add_log_level(parser, top=True)
    _add_kafka_config(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for sub in _subcommand_parsers(parser):
        if "--log-level" not in sub._option_string_actions:
            _add_log_level(sub, top=False)
        if "--kafka-config" not in sub._option_string_actions:
            _add_kafka_config(sub, top=False)
    return parser


def describe_error(exc: BaseException) -> tuple[int, str] | None:
    """Exit code and one-line message for an error a user can cause, else ``None``.

    Lower-level errors are mapped here once, so the code below the CLI raises what it
    naturally raises (``OSError`` from a file, ``redis`` and ``psycopg`` errors) and still
    reaches the user as one line. Errors re-raised by Bytewax from a worker carry the
    original as their cause, so the whole chain is searched.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        described = _describe_one(current)
        if described is not None:
            return described
        current = current.__cause__ or current.__context__
    return None


def _describe_one(exc: BaseException) -> tuple[int, str] | None:
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, HcpError):
        return EXIT_RUNTIME, str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return EXIT_RUNTIME, f"{exc.strerror}{where}"
    if isinstance(exc, json.JSONDecodeError):
        return EXIT_RUNTIME, f"invalid JSON: {exc}"
    return _describe_redis(exc)


def _describe_redis(exc: BaseException) -> tuple[int, str] | None:
    redis_errors = sys.modules.get("redis.exceptions")
    if redis_errors is None or not isinstance(exc, redis_errors.RedisError):
        return None
    if isinstance(exc, redis_errors.ResponseError):
        # e.g. "DB index is out of range": the URL names something the server lacks.
        return EXIT_USAGE, f"Redis refused the request: {exc} (check --redis / HCP_REDIS_URL)"
    return EXIT_RUNTIME, f"Redis: {exc}"


def _broken_pipe() -> int:
    # The reader (`| head`) has all it wanted: that is not an error worth a message. Point
    # stdout at /dev/null so the interpreter's final flush does not raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_RUNTIME


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except HcpError as exc:  # a bad HCP_* variable is found while building parsers
        print(f"hcp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.kafka_config:
            # Through the environment, so Bytewax processes started by `hcp run` see it too.
            os.environ[CONFIG_ENV] = args.kafka_config
        check_kafka_config()
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _broken_pipe()
    except Exception as exc:
        described = describe_error(exc)
        if described is None:
            # A bug, not a user mistake: still one line, the traceback only on request.
            log.debug("unexpected error", exc_info=True)
            described = (
                EXIT_RUNTIME,
                f"unexpected {type(exc).__name__}: {exc} (--log-level DEBUG shows where)",
            )
        code, message = described
        one_line = " ".join(message.split())
        print(f"hcp {args.command}: error: {one_line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
