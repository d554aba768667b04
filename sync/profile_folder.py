"""The control plane's profile folder: forwarded Track events become profile deltas for the fleet.

A thread that, every `interval` seconds, reads the events stored since its cursor (up to `batch`),
folds each user's events into that user's profile (`core/profile_fold.py`) and commits the changed
profiles as one commit of kind "delta" (so every edge gets them like any other delta), then moves its
cursor in the same transaction (`ControlStore.commit_at`, the cursor kept in the control store), so
every event is folded exactly once, also across crashes (order and value counts are not idempotent).
It holds the service's push lock while it reads and commits, so a push never interleaves with a fold.

On a central-tier replica (docs/central.md) the folder works the partitions of the events stream this
replica holds the leases of (`partitions`, `sync/central_partitions.py`): for each, it reads the local
copy's records of that partition after its cursor `profiles.<p>` (a partition that has none yet starts
at the global `profiles` cursor: the upgrade from one folder for every partition), and commits the
changed profiles of all of them in one commit that moves each one's cursor (through the change log, so
every replica takes the cursors with the profiles). Under the lock it checks that no cursor it read
moved meanwhile (another replica's commit for the partition applied here: a lease taken over from a
paused holder), else it drops the batch and reads again; a commit the log refuses because it moved on
(`retry_on`) is made again once this store applied what the log has (`catch_up`), on the profiles as
they are then, without reading the records again. So every event is folded
once whichever replica folds it. It commits at most every `interval` seconds (`pace`: a replica sets
it to 100 ms times the live replicas), so the change log, which every replica's folds go through, takes
about as many fold commits with any number of replicas, and two replicas' folds rarely race.

A stored record it cannot use (`core/forwarded.record_problem`: a wrong type, an oversized key, a time
out of range, bytes that do not decode; `Forward` refuses such records, an older version may have stored
them) is skipped and counted (`skipped`, logged as `forwarded_records_skipped`), and so are the events
of a user whose fold raises (a stored profile that does not decode): the cursor moves past them, so they
never hold up the events behind them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager
from typing import Any, Final

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.exposure import EXPOSURE_KIND
from edgewise.core.forwarded import latest_ms, record_problem
from edgewise.core.profile_fold import fold_profile
from edgewise.sync.control_store import CommitInfo, ControlStore, RecordChange
from edgewise.sync.event_store import EventStore
from edgewise.sync.periodic import Periodic
from edgewise.sync.skipped_records import SkippedRecords

log = logging.getLogger(__name__)

__all__ = ["CURSOR", "ProfileFolder", "folded_upto", "partition_cursor"]

CURSOR: Final = "profiles"
_ATTEMPTS: Final = 5  # commits of one batch the change log may refuse before the tick gives up


def partition_cursor(partition: int) -> str:
    """The name of the folder's cursor of one partition of the events stream."""
    return f"{CURSOR}.{partition}"


def folded_upto(store: ControlStore, events: EventStore, partitions: Iterable[int]) -> int:
    """The last sequence up to which every stored record of `partitions` is folded (retention deletes no
    record after it): before the first unfolded record of any partition."""
    upto = events.last_seq()
    start = store.cursor(CURSOR)
    for partition in partitions:
        after = events.batch_in(partition, store.cursor(partition_cursor(partition), start), 1)
        if after:
            upto = min(upto, after[0][0] - 1)
    return upto


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
        partitions: Callable[[], Collection[int]] | None = None,
        retry_on: tuple[type[Exception], ...] = (),
        catch_up: Callable[[Exception], object] | None = None,
    ) -> None:
        self.store = store
        self.partitions = partitions  # None: one cursor over every record (the embedded control plane)
        self._retry_on = retry_on
        self._catch_up = catch_up  # after a refused commit: until this store applied what the log has
        self.conflicts = 0  # commits the change log refused because it had moved on (central tier)
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

    def pace(self, interval: float) -> None:
        """Commit at most every `interval` seconds from now on."""
        self._loop.interval = interval

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

    def _tick(self) -> None:
        try:
            while not self._loop.stopping:
                try:
                    done = self.fold_once()
                except self._retry_on as exc:
                    self.conflicts += 1
                    log.info("profile_fold_retry", extra={"error": repr(exc)[:200]})
                    return
                if done is None or (self.partitions is not None and isinstance(done, CommitInfo)):
                    return  # nothing new; or one commit per tick of a replica's partitions
        finally:
            self.skipped.flush()

    def fold_once(self) -> CommitInfo | int | None:
        """Fold the next batch: its commit, the last sequence folded when no profile changed (0: the
        batch was dropped, a cursor moved meanwhile), or None when there was nothing new."""
        if self.partitions is not None:
            return self._fold_partitions(sorted(self.partitions()))
        rows = self.events.batch_after(self.store.cursor(CURSOR), self.batch)
        if not rows:
            return None
        last = rows[-1][0]
        by_user = self._by_user(rows)
        with self._lock:
            info = self.store.commit_at(
                self._changes(by_user),
                kind="delta",
                description=f"events folded up to {last}",
                cursor=CURSOR,
                position=last,
            )
        return self._done(info, last, {"events_to": last, "events": len(rows)})

    def _fold_partitions(self, partitions: list[int]) -> CommitInfo | int | None:
        """`fold_once` over the partitions this replica holds (see the module doc)."""
        if not partitions:
            return None
        start = self.store.cursor(CURSOR)
        read = {p: self.store.cursor(partition_cursor(p), start) for p in partitions}
        share = max(1, self.batch // len(partitions))
        rows: list[tuple[int, str, dict[str, Any]]] = []
        moved: dict[str, int] = {}
        for partition, after in read.items():
            got = self.events.batch_in(partition, after, share)
            if got:
                rows.extend(got)
                moved[partition_cursor(partition)] = got[-1][0]
        if not rows:
            return None
        rows.sort(key=lambda row: row[0])
        last = rows[-1][0]
        by_user = self._by_user(rows)
        for attempt in range(_ATTEMPTS):
            try:
                with self._lock:
                    if any(self.store.cursor(partition_cursor(p), start) != at for p, at in read.items()):
                        log.info("profile_fold_restarted", extra={"partitions": partitions})
                        return 0  # another replica folded some of them meanwhile: read again
                    info = self.store.commit_at(
                        self._changes(by_user),
                        kind="delta",
                        description=f"events folded in partitions {','.join(str(p) for p in partitions)}",
                        cursors=moved,
                    )
                break
            except self._retry_on as exc:
                # another replica's commit came first: once it is applied here, fold the same records
                # again on the profiles as they are then (the cursors are checked again)
                if self._catch_up is None or attempt == _ATTEMPTS - 1:
                    raise
                self.conflicts += 1
                self._catch_up(exc)
        return self._done(info, last, {"events": len(rows), "partitions": sorted(read)})

    def _done(self, info: CommitInfo | None, last: int, extra: dict[str, Any]) -> CommitInfo | int:
        if info is not None:
            self.commits += 1
            self.profiles += info.changes
            log.info("profiles_folded", extra={"version": info.version, "profiles": info.changes, **extra})
            self._on_commit()
            return info
        log.debug("profiles_folded_unchanged", extra=extra)
        return last

    def _by_user(self, rows: list[tuple[int, str, dict[str, Any]]]) -> dict[str, list[tuple[int, Event]]]:
        """The usable events of `rows` by user, in order (what cannot be used is skipped and counted)."""
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
        return by_user

    def _changes(self, by_user: dict[str, list[tuple[int, Event]]]) -> list[RecordChange]:
        """The new profiles of the users in `by_user` (under the lock: read, then committed)."""
        changes = []
        with self.store.read() as view:
            for user, events in by_user.items():
                new = self._fold(user, view.get("profiles", user), events)
                if new is not None:
                    changes.append(RecordChange("profiles", user, new))
        return changes

    def _fold(self, user: str, current: bytes | None, events: list[tuple[int, Event]]) -> bytes | None:
        """`fold_profile` of one user; a fold that raises skips (and counts) the user's events."""
        try:
            return fold_profile(user, current, (e for _, e in events), self.limits)
        except Exception as exc:  # one user's bad state must not stop the fold of everyone else
            for seq, _ in events:
                self.skipped.skip(seq, f"folding into the user's profile failed: {exc!r}")
            return None
