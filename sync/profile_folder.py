"""The control plane's profile folder: forwarded Track events become profile deltas for the fleet.

A thread that, every `interval` seconds, reads the events stored since its cursor (up to `batch`),
folds each user's events into that user's profile (`core/profile_fold.py`) and commits the changed
profiles as one commit of kind "delta" (so every edge gets them like any other delta), then moves its
cursor in the same transaction (`ControlStore.commit_at`, the cursor kept in the control store), so
every event is folded exactly once, also across crashes (order and value counts are not idempotent).
It holds the service's push lock while it reads and commits, so a push never interleaves with a fold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Final

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.exposure import EXPOSURE_KIND
from edgewise.core.profile_fold import fold_profile
from edgewise.sync.control_store import CommitInfo, ControlStore, RecordChange
from edgewise.sync.event_store import EventStore
from edgewise.sync.periodic import Periodic

log = logging.getLogger(__name__)

__all__ = ["CURSOR", "ProfileFolder"]

CURSOR: Final = "profiles"


class ProfileFolder:
    def __init__(
        self,
        store: ControlStore,
        events: EventStore,
        lock: AbstractContextManager[object],
        on_commit: Callable[[], None],
        *,
        interval: float = 0.1,
        batch: int = 20_000,
        limits: ActivityLimits | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self._lock = lock
        self._on_commit = on_commit
        self.batch = batch
        self.limits = limits or ActivityLimits()
        self._loop = Periodic("profile-fold", interval, self._tick, "profile_fold_failed")

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

    def _tick(self) -> None:
        while self.fold_once() is not None and not self._loop.stopping:
            pass

    def fold_once(self) -> CommitInfo | int | None:
        """Fold the next batch: its commit, the last sequence folded when no profile changed, or None
        when there was nothing new."""
        rows = self.events.batch_after(self.store.cursor(CURSOR), self.batch)
        if not rows:
            return None
        by_user: dict[str, list[Event]] = {}
        for _, _, record in rows:
            if record.get("k") == EXPOSURE_KIND:
                continue
            event = Event.from_record(record)
            if event.user_id:
                by_user.setdefault(event.user_id, []).append(event)
        last = rows[-1][0]
        with self._lock:
            with self.store.read() as view:
                changes = [
                    RecordChange("profiles", user, new)
                    for user, events in by_user.items()
                    if (new := fold_profile(user, view.get("profiles", user), events, self.limits))
                    is not None
                ]
            info = self.store.commit_at(
                changes, kind="delta", description=f"events folded up to {last}", cursor=CURSOR, position=last
            )
        if info is not None:
            log.info(
                "profiles_folded",
                extra={"version": info.version, "profiles": info.changes, "events_to": last},
            )
            self._on_commit()
            return info
        return last
