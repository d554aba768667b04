"""The control plane's event retention: stored events and exposures older than the retention are deleted.

A thread that, every `interval` seconds, deletes from the event store (oldest first, in batches of one
write transaction each) the records whose time is more than `retain_ms` before now, and only those the
profile folder has already folded (its cursor, kept in the control store): a folder that fell behind
loses nothing. Reports (`ctl report`) and the bandit learner's re-read on restart see only what is kept.
Each pass that deletes something logs `events_expired` with the count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from edgewise.sync.control_store import ControlStore
from edgewise.sync.event_store import EventStore
from edgewise.sync.periodic import Periodic
from edgewise.sync.profile_folder import CURSOR as FOLDER_CURSOR

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_RETAIN_MS", "EventRetention"]

DEFAULT_RETAIN_MS: Final = 90 * 86_400_000
BATCH: Final = 20_000


class EventRetention:
    def __init__(
        self,
        store: ControlStore,
        events: EventStore,
        retain_ms: int,
        *,
        interval: float = 60.0,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        folded: Callable[[], int] | None = None,
    ) -> None:
        if retain_ms <= 0:
            raise ValueError(f"retain_ms must be positive, got {retain_ms}")
        self.store = store
        self.events = events
        self.retain_ms = retain_ms
        self._clock_ms = clock_ms
        # the last sequence up to which every record is folded (a central-tier replica's folder keeps one
        # cursor per partition: `profile_folder.folded_upto`); by default the folder's cursor
        self._folded = folded or (lambda: store.cursor(FOLDER_CURSOR))
        self.expired = 0  # records deleted since start
        self._loop = Periodic("event-retention", interval, self._tick, "event_retention_failed")

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

    def _tick(self) -> None:
        self.expire_once()

    def expire_once(self) -> int:
        """Delete every record past the retention that the folder has folded; return how many."""
        cutoff = self._clock_ms() - self.retain_ms
        upto = self._folded()
        removed = 0
        while not self._loop.stopping:
            batch = self.events.expire(cutoff, upto, BATCH)
            removed += batch
            if batch < BATCH:
                break
        if removed:
            self.expired += removed
            log.info("events_expired", extra={"records": removed, "older_than_ms": cutoff})
        return removed
