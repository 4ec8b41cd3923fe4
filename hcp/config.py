"""Command-line flags that fall back to ``HCP_*`` environment variables.

Every flag is declared through :func:`env_arg`, so its ``--help`` line always names the
variable it reads, in the same ``[env: NAME]`` form Bytewax's own ``bytewax.run`` uses.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from typing import Any

from hcp.errors import ConfigError

__all__ = [
    "ENCODINGS",
    "env_arg",
    "env_flag",
    "mask_secrets",
    "non_negative_float",
    "non_negative_int",
    "positive_int",
    "redis_url",
    "speed_value",
    "telemetry_encoding",
]


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def env_arg(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *flags: str,
    env: str,
    default: Any = None,
    type: Callable[[str], Any] = str,
    help: str,
    **kwargs: Any,
) -> None:
    """Add a flag whose default comes from ``env`` when that variable is set.

    The environment value goes through the same ``type`` converter as a flag value, so a bad
    ``HCP_*`` variable fails with the same clear message as a bad flag.
    """
    raw = os.environ.get(env)
    if raw is not None and raw != "":
        try:
            default = type(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            msg = f"environment variable {env}={raw!r} is invalid: {exc}"
            raise ConfigError(msg) from exc
    shown = "" if default is None else f" (default: {mask_secrets(str(default))})"
    parser.add_argument(
        *flags, default=default, type=type, help=f"{help}{shown} [env: {env}]", **kwargs
    )


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_KV_PASSWORD = re.compile(r"(\b(?:ssl)?password\s*=\s*)\S+", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with URL passwords and ``password=`` values replaced by ``***``.

    A default read from ``HCP_REDIS_URL`` or ``HCP_PG_DSN`` is shown in ``--help``; the
    password it may carry must not be.
    """
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def env_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    *,
    env: str,
    help: str,
) -> None:
    """Add an on/off switch that is also on when ``env`` is ``1``, ``true``, ``yes`` or ``on``.

    ``0``, ``false``, ``no``, ``off`` or an empty value mean off; anything else is a
    configuration error rather than a silent "off".
    """
    raw = os.environ.get(env, "").strip().lower()
    if raw not in _TRUE | _FALSE:
        msg = f"environment variable {env}={raw!r} is invalid: expected 1/0, true/false, yes/no"
        raise ConfigError(msg)
    default = raw in _TRUE
    parser.add_argument(flag, action="store_true", default=default, help=f"{help} [env: {env}]")


def _int_at_least(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        msg = f"expected a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    if value < lowest:
        msg = f"expected a number >= {lowest}, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def positive_int(text: str) -> int:
    """Parse an integer that must be at least 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """Parse an integer that must be at least 0."""
    return _int_at_least(text, 0)


def non_negative_float(text: str) -> float:
    """Parse a float that must be >= 0."""
    try:
        value = float(text)
    except ValueError as exc:
        msg = f"expected a number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    if not value >= 0:
        msg = f"expected a number >= 0, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def speed_value(text: str) -> float:
    """Parse ``--speed``: a positive factor of real time, or ``max`` (returned as ``inf``)."""
    if text.strip().lower() == "max":
        return float("inf")
    try:
        value = float(text)
    except ValueError as exc:
        msg = f"expected a positive number or 'max', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    if not value > 0:
        msg = f"expected a positive number or 'max', got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


# Telemetry encodings a producer may use (SPEC 1 and 1b).
ENCODINGS = ("json", "frames")


def _one_of(text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        msg = f"must be one of {', '.join(choices)}, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def telemetry_encoding(text: str) -> str:
    """``json`` or ``frames``."""
    return _one_of(text, ENCODINGS)


STREAM_MODES = ("all", "changed")


def stream_mode(text: str) -> str:
    """``all`` or ``changed`` (what the Redis recommendation stream carries)."""
    return _one_of(text, STREAM_MODES)


def redis_url(text: str) -> str:
    """Check a Redis URL's form (scheme, port, database number) without connecting.

    The message never repeats the URL: it may carry a password.
    """
    from urllib.parse import urlsplit

    from redis.connection import parse_url

    try:
        parse_url(text)
        parts = urlsplit(text)
        db = parts.path.strip("/") if parts.scheme in ("redis", "rediss") else ""
    except ValueError as exc:
        msg = f"not a Redis URL: {exc} (e.g. redis://127.0.0.1:6379/0)"
        raise argparse.ArgumentTypeError(msg) from None
    if db and not db.isdigit():
        msg = f"the Redis database must be a number, got {db!r} (e.g. redis://127.0.0.1:6379/0)"
        raise argparse.ArgumentTypeError(msg)
    return text

