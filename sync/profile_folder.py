"""The control plane's profile folder: forwarded Track events become profile deltas for the fleet.

A thread that, every `interval` seconds, reads the events stored since its cursor (up to `batch`),
folds each user's events into that user's profile (`core/profile_fold.py`) and commits the changed
profiles as one commit of kind "delta" (so every edge gets them like any other delta), then moves its
cursor in the same transaction (`ControlStore.commit_at`, the cursor kept in the control store), so
every event is folded exactly once, also across crashes (order and value counts are not idempotent).
It holds the service's push lock while it reads and commits, so a push never interleaves with a fold.

A stored record it cannot use (`core/forwarded.record_problem`: a wrong type, an oversized key, a time
out of range, bytes that do not decode; `Forward` refuses such records, an older version may have stored
them) is skipped and counted (`skipped`, logged as `forwarded_records_skipped`), and so are the events
of a user whose fold raises (a stored profile that does not decode): the cursor moves past them, so they
never hold up the events behind them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Final

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.exposure import EXPOSURE_KIND
from edgewise.core.forwarded import latest_ms, record_problem
from edgewise.core.profile_fold import fold_profile
from edgewise.sync.control_store import CommitInfo, ControlStore, RecordChange
from edgewise.sync.event_store import EventStore
from edgewise.sync.periodic import Periodic
from edgewise.sync.skipped_records import SkippedRecords

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
        self.skipped = SkippedRecords("profile_folder")
        self.commits = 0  # commits of folded profiles published since start (for metrics)
        self.profiles = 0  # profile changes they carried
        self._loop = Periodic("profile-fold", interval, self._tick, "profile_fold_failed")

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

    def _tick(self) -> None:
        try:
            while self.fold_once() is not None and not self._loop.stopping:
                pass
        finally:
            self.skipped.flush()

    def fold_once(self) -> CommitInfo | int | None:
        """Fold the next batch: its commit, the last sequence folded when no profile changed, or None
        when there was nothing new."""
        rows = self.events.batch_after(self.store.cursor(CURSOR), self.batch)
        if not rows:
            return None
        latest = latest_ms(time.time_ns() // 1_000_000)
        by_user: dict[str, list[tuple[int, Event]]] = {}
        for seq, _, record in rows:
            if record.get("k") == EXPOSURE_KIND:
                continue
            problem = record_problem(record, latest)
            if problem is not None:
                self.skipped.skip(seq, problem)
                continue
            event = Event.from_record(record)
            if event.user_id:
                by_user.setdefault(event.user_id, []).append((seq, event))
        last = rows[-1][0]
        with self._lock:
            changes = []
            with self.store.read() as view:
                for user, events in by_user.items():
                    new = self._fold(user, view.get("profiles", user), events)
                    if new is not None:
                        changes.append(RecordChange("profiles", user, new))
            info = self.store.commit_at(
                changes, kind="delta", description=f"events folded up to {last}", cursor=CURSOR, position=last
            )
        if info is not None:
            self.commits += 1
            self.profiles += info.changes
            log.info(
                "profiles_folded",
                extra={"version": info.version, "profiles": info.changes, "events_to": last},
            )
            self._on_commit()
            return info
        return last

    def _fold(self, user: str, current: bytes | None, events: list[tuple[int, Event]]) -> bytes | None:
        """`fold_profile` of one user; a fold that raises skips (and counts) the user's events."""
        try:
            return fold_profile(user, current, (e for _, e in events), self.limits)
        except Exception as exc:  # one user's bad state must not stop the fold of everyone else
            for seq, _ in events:
                self.skipped.skip(seq, f"folding into the user's profile failed: {exc!r}")
            return None
