"""Progress lines for long commands (`bundle synth`, `ctl push`): redrawn in place on a terminal, plain
lines elsewhere.

On a terminal each update overwrites the last one (`\\r`, padded over what it replaces) and `done` ends
the line. Anywhere else (a log file, a pipe, CI output, the journal) a `\\r`-redrawn line would pile up as
one endless line of carriage returns, so each update is a line of its own, at most one per `every`
seconds (the first one and the one `done` is given always go out).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

__all__ = ["PLAIN_EVERY_S", "ProgressLine"]

PLAIN_EVERY_S: Final = 5.0
"""Seconds between two progress lines on a stream that is not a terminal."""


class ProgressLine:
    """`update(message)` as often as wanted; `done(message)` once at the end (a final line)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        every: float = PLAIN_EVERY_S,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.every = every
        self._clock = clock
        self._width = 0  # of the line drawn in place (a terminal)
        self._last: float | None = None  # when the last plain line went out
        self._held: str | None = None  # the newest update not written (plain lines)

    def update(self, message: str) -> None:
        if self.tty:
            self.stream.write("\r" + message.ljust(self._width))
            self._width = len(message)
            self.stream.flush()
            return
        now = self._clock()
        if self._last is not None and now - self._last < self.every:
            self._held = message
            return
        self._last, self._held = now, None
        self.stream.write(message + "\n")
        self.stream.flush()

    def done(self, message: str | None = None) -> None:
        """End the progress: on a terminal the line in place is finished (with `message`, if given);
        elsewhere `message`, else the newest update not written yet, goes out as a line of its own."""
        if self.tty:
            if message is not None:
                self.stream.write("\r" + message.ljust(self._width))
            if self._width or message is not None:
                self.stream.write("\n")
            self._width = 0
        else:
            last = message if message is not None else self._held
            if last is not None:
                self.stream.write(last + "\n")
            self._held = None
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a file
        return False
