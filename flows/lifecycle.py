"""The job's stop request: one object per run, handed to every step that must see it.

A SIGTERM/SIGINT handler calls :meth:`Shutdown.request`; the sources then end their
partitions so the dataflow drains, and the window stages keep their open windows for a
resume instead of flushing them. It is an object rather than a module flag so that two
flows in one process (tests) or two runs in a row never share a stop request.
"""

from __future__ import annotations

import threading

__all__ = ["Shutdown"]


class Shutdown:
    """A thread-safe stop flag for one run of the job."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self) -> None:
        self._event.set()

