"""The job's stop request: one object per run, handed to every step that must honour it.

``hcp run``'s SIGTERM/SIGINT handler calls :meth:`Shutdown.request`; the Kafka source then
ends its partitions so the dataflow drains, the window stages keep their open windows for a
resume instead of flushing them, and the sinks' retry loops stop waiting out an outage (a
stop signal must stop the job within seconds, whatever is down). It lives at the bottom
floor so the sinks can take it, and it is an object rather than a module flag so that two
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

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at once on a stop request; True if one came."""
        return self._event.wait(seconds)
