"""The count of stored records a consumer of the event store (profile folder, bandit learner) skipped
because it could not use them (`core/forwarded.record_problem`), with a rate-limited log line.

The first skip logs `forwarded_records_skipped` at once; later ones at most once per `every` seconds
(`flush`, called after each batch, writes the ones still unlogged once the interval has passed). Each line
carries the consumer, the total skipped since start, how many since the last line, and the sequence
number and problem of the last one: what an operator needs to find the records in the event store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

__all__ = ["LOG_EVERY_SECONDS", "SkippedRecords"]

LOG_EVERY_SECONDS: Final = 10.0


class SkippedRecords:
    def __init__(
        self, consumer: str, *, every: float = LOG_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.consumer = consumer
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._total = 0
        self._unlogged = 0
        self._last: tuple[int, str] = (0, "")
        self._logged_at: float | None = None

    @property
    def total(self) -> int:
        """Records skipped since start."""
        return self._total

    def skip(self, seq: int, problem: str) -> None:
        """Count one skipped record (its sequence number in the event store and what is wrong with it)."""
        with self._lock:
            self._total += 1
            self._unlogged += 1
            self._last = (seq, problem)
            if self._logged_at is None:
                self._log()

    def flush(self) -> None:
        """Log the skips not logged yet, when the last line is `every` seconds old."""
        with self._lock:
            if self._unlogged and (self._logged_at is None or self._clock() - self._logged_at >= self.every):
                self._log()

    def _log(self) -> None:
        seq, problem = self._last
        log.warning(
            "forwarded_records_skipped",
            extra={
                "consumer": self.consumer,
                "skipped_total": self._total,
                "skipped": self._unlogged,
                "seq": seq,
                "error": problem[:300],
            },
        )
        self._unlogged = 0
        self._logged_at = self._clock()
