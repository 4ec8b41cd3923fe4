"""Failures injected into the real sinks through their public ``before_commit`` hook."""

from __future__ import annotations

import psycopg

__all__ = ["InjectedFaultError", "fail_once_before_commit"]


class InjectedFaultError(psycopg.OperationalError):
    """A failure between writing a batch's rows and committing them (retried like a lost link)."""


class fail_once_before_commit:  # noqa: N801 - used like a function
    """A ``before_commit`` hook that fails the first commit attempt of batch ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.fired = False

    def __call__(self, batch: int) -> None:
        if batch == self.n and not self.fired:
            self.fired = True
            msg = f"injected failure before committing batch {batch}"
            raise InjectedFaultError(msg)
