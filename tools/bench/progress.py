"""A one-line stderr progress display, redrawn in place at most a few times a second.

No dependency: a carriage return rewrites the line on a terminal, and when stderr is not a
terminal (CI logs) the line is printed at most every few seconds so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Counts items towards an optional total and shows rate and ETA on one line.

    Call :meth:`update` as often as you like; it redraws only when ``interval_s`` has passed.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "events",
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.count = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._interval_s = 0.2 if self._tty else 5.0
        self._start = time.monotonic()
        self._last_draw = 0.0

    def update(self, n: int = 0, *, count: int | None = None) -> None:
        """Add ``n`` items (or set the running ``count``) and redraw when due."""
        self.count = count if count is not None else self.count + n
        now = time.monotonic()
        if self.enabled and now - self._last_draw >= self._interval_s:
            self._last_draw = now
            self._draw(now, final=False)

    def close(self) -> None:
        """Draw the final line and end it with a newline."""
        if self.enabled:
            self._draw(time.monotonic(), final=True)

    def _draw(self, now: float, final: bool) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.count / elapsed
        text = f"{self.label}: {self.count:,} {self.unit}"
        if self.total:
            pct = min(100.0, 100.0 * self.count / self.total)
            width = 24
            filled = int(width * pct / 100)
            text = f"{self.label}: [{'#' * filled}{'.' * (width - filled)}] {pct:5.1f}% " + (
                f"{self.count:,}/{self.total:,} {self.unit}"
            )
            if not final and rate > 0 and self.count < self.total:
                text += f" eta {(self.total - self.count) / rate:,.0f} s"
        text += f" {rate:,.0f}/s {elapsed:,.1f} s"
        if self._tty:
            self.stream.write("\r" + text.ljust(100) + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
