"""The process-wide stop request: set by ``hcp run``'s SIGTERM/SIGINT handler.

Kept here, at the bottom floor, so that every layer can honour it: the Kafka source ends
its partitions, and the sinks' retry loops stop waiting out an outage (a stop signal must
stop the job within seconds, whatever is down).
"""

from __future__ import annotations

import threading

__all__ = ["request", "requested", "reset", "wait"]

_STOP = threading.Event()


def requested() -> bool:
    """Whether a stop was requested."""
    return _STOP.is_set()


def request() -> None:
    _STOP.set()


def reset() -> None:
    """Forget an earlier request: for a process that runs the flow again (tests)."""
    _STOP.clear()


def wait(seconds: float) -> bool:
    """Sleep up to ``seconds``, waking at once on a stop request; True if one came."""
    return _STOP.wait(seconds)
