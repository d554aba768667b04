"""Rate-limited log lines: at most one line per key per interval, the next line counting the ones left out.

A caller that can be made to log once per request (a refused call, a stream over a cap) logs through a
`LogLimiter`: `limiter.warning("call_refused", key, extra)` writes the line when the key's last line is
at least `interval` seconds old, with `"suppressed": N` the number of lines of that key not written
since; otherwise it only counts. So a flood of refusals costs one line a second per key, and the sum over
the lines written of (1 + suppressed) is the number of events. Keys should come from a small set (a
status code, a reason), never from what a caller sends. Thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final

__all__ = ["DEFAULT_INTERVAL_SECONDS", "LogLimiter"]

DEFAULT_INTERVAL_SECONDS: Final = 1.0


class LogLimiter:
    """One line per key per `interval` seconds on `logger`; see the module docstring."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # key -> clock() of its last line
        self._suppressed: dict[str, int] = {}  # key -> lines not written since

    def take(self, key: str) -> int | None:
        """The number of lines of `key` suppressed since its last one, if a line may be written now
        (which resets the count); None if this one is suppressed (and counted)."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)

    def log(self, level: int, event: str, key: str, extra: Mapping[str, object]) -> bool:
        """Log `event` with `extra` (and `suppressed`) unless `key` logged within the interval; whether
        the line was written."""
        suppressed = self.take(key)
        if suppressed is None:
            return False
        self._logger.log(level, event, extra={**extra, "suppressed": suppressed})
        return True

    def warning(self, event: str, key: str, extra: Mapping[str, object]) -> bool:
        return self.log(logging.WARNING, event, key, extra)
