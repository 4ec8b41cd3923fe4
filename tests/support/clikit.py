"""The real `hcp` command line as deployment manifests drive it: a container's argv and
environment parsed by tools.cli's own parser, and the HCP_* variables a subcommand reads.
"""

from __future__ import annotations

import argparse
import os
import re

from tools.cli import build_parser

_ENV = re.compile(r"\[env: (HCP_[A-Z0-9_]+)\]")


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def env_names(command: str) -> set[str]:
    """Every HCP_* variable `hcp COMMAND` reads (each flag's help names it as [env: ...])."""
    sub = _subparser(build_parser(), command)
    return {name for action in sub._actions for name in _ENV.findall(action.help or "")}


def parse(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    """``hcp ARGV`` parsed with exactly ``env`` as its HCP_* environment (as in the container).

    The parser reads HCP_* variables when it is built, so it is built inside the patched
    environment; the caller's own HCP_* variables are hidden.
    """
    saved = dict(os.environ)
    try:
        for name in [k for k in os.environ if k.startswith("HCP_")]:
            del os.environ[name]
        os.environ.update(env)
        return build_parser().parse_args(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
