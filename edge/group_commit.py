"""Group commit for Track: concurrent calls share one durable LMDB write transaction.

Each `submit` queues its events and blocks until they are committed (fsync'd). One committer thread
takes everything queued (up to `max_events`, whole calls only) into one transaction; calls arriving
while it commits form the next batch. So throughput grows with concurrency instead of collapsing to
one fsync per call, and no call is answered before its events are on disk.

Exposure records of decisions ride along in the next transaction; with no Track call to ride with, they
are committed every `exposure_flush_s` at most. So a crash loses at most that window of exposures (never
an acknowledged Track event). Decide hands its records over with `note_exposures`: an append to a
bounded deque of bytes, no lock, no wake-up (the committer looks every `exposure_flush_s`), never a
write of its own. (Queueing the decisions instead and building the records on the committer's thread was
measured: the decisions' objects, kept alive until the next flush, made the cyclic collector's passes
cost every stage of every call more than building the records on Decide's thread costs; BENCHMARKS.md.)
Exposures never cost a Track call its commit: when a commit with both does not fit in the store
(`StoreFull`), the events are committed again alone and the exposures dropped. A commit that fails fails
its Track calls (their callers are told, and send them again) and drops its exposures: they are not put
back, so a store that cannot take them (full, or failing) is never asked again and again for the same
records (which spun the committer, and kept `close` from ending). Dropped exposures are counted by
reason (`exposures_dropped_by`, and `on_exposures_dropped` for the node's metrics): `queue_full` (past
`max_exposures` records waiting), `store_full`, `commit_failed`. A full store is logged as `store_full`
(a warning at most every `STORE_FULL_LOG_EVERY_S`, with the counts since the last one), other failures
as `track_commit_failed`.

After a commit found the store full, the commits of the next `FULL_BACKOFF_S` are not tried: their calls
fail at once with `StoreFull`. A flood of Track calls retried at once would otherwise take every page
housekeeping frees (a write transaction needs free pages even to delete) before housekeeping's own next
step, and the store would stay full for as long as the flood lasts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.store import Store, StoreFull, TrackResponse
from edgewise.edge.stage_times import COMMIT, StageTimes, now_ns

log = logging.getLogger(__name__)

__all__ = [
    "EXPOSURE_DROP_REASONS",
    "FULL_BACKOFF_S",
    "STORE_FULL_LOG_EVERY_S",
    "CommitterClosed",
    "GroupCommitter",
]

EXPOSURE_DROP_REASONS: Final = ("queue_full", "store_full", "commit_failed")
STORE_FULL_LOG_EVERY_S: Final = 10.0
FULL_BACKOFF_S: Final = 0.5  # after a full store, commits wait this long (housekeeping steps every 0.2 s)


class CommitterClosed(RuntimeError):
    """The node is shutting down: the events were not stored."""


class _Pending:
    """One submitted call: its events, and a lock the committer releases once they are committed.

    A bare lock, not a concurrent.futures.Future: the committer thread wakes every waiting call of a
    batch, and Future.set_result's condition bookkeeping in Python was most of its time."""

    __slots__ = ("_done", "error", "events", "result")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self.result: TrackResponse | None = None
        self.error: BaseException | None = None
        self._done = threading.Lock()
        self._done.acquire()

    def finish(self, result: TrackResponse | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self._done.release()

    def wait(self, timeout: float | None) -> TrackResponse:
        if not self._done.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"events not committed within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class GroupCommitter:
    def __init__(
        self,
        store: Store,
        limits: ActivityLimits,
        *,
        max_events: int = 256,
        max_wait_s: float = 0.0,
        exposure_flush_s: float = 0.2,
        max_exposures: int = 100_000,
        on_exposures_dropped: Callable[[str, int], None] | None = None,
        stages: StageTimes | None = None,
    ) -> None:
        self._store = store
        self._limits = limits
        self._max_events = max_events
        self._max_wait_s = max_wait_s
        self._queue: list[_Pending] = []
        # Exposure records waiting: extended by Decide without a lock (deque.extend and popleft are
        # atomic under the GIL), drained by the committer.
        self._exposures: deque[bytes] = deque()
        self._drop_lock = threading.Lock()  # the drop counters, off the hot path
        self._exposure_flush_s = exposure_flush_s
        self._max_exposures = max_exposures
        self._exposures_taken = 0.0  # monotonic time the committer last took the exposures waiting
        self.exposures_dropped_by = dict.fromkeys(EXPOSURE_DROP_REASONS, 0)
        self._on_exposures_dropped = on_exposures_dropped
        self._stages = stages  # benchmarks: the committer's CPU per commit (edge/stage_times.py)
        self._full_logged_at: float | None = None
        self._full_until = 0.0  # monotonic time before which commits are not tried (the store was full)
        self._full_error = ""  # why the store was full
        self._full_unlogged = [0, 0, 0]  # since the last store_full line: commits, events, exposures
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0
        self.events = 0
        self._thread = threading.Thread(target=self._run, name="track-commit", daemon=True)
        self._thread.start()

    def submit(self, events: Sequence[Event], timeout: float | None = None) -> TrackResponse:
        """Store `events` durably; return once committed (raises on failure or shutdown)."""
        pending = _Pending(events)
        with self._cond:
            if self._closed:
                raise CommitterClosed("shutting down")
            self._queue.append(pending)
            self._cond.notify()
        return pending.wait(timeout)

    def note_exposures(self, records: Sequence[bytes]) -> None:
        """Queue exposure records for the outbox; returns at once, takes no lock (the committer takes
        them within `exposure_flush_s`). Past `max_exposures` waiting they are dropped and counted
        (`queue_full`)."""
        if not records or self._closed:
            return
        if len(self._exposures) + len(records) > self._max_exposures:
            self._dropped("queue_full", len(records))
            return
        self._exposures.extend(records)

    @property
    def exposures_dropped(self) -> int:
        """Exposure records dropped since start, for every reason."""
        return sum(self.exposures_dropped_by.values())

    def close(self) -> None:
        """Commit what is queued (one attempt each), then stop the committer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _dropped(self, reason: str, count: int) -> None:
        if not count:
            return
        with self._drop_lock:  # request threads (queue_full) and the committer
            self.exposures_dropped_by[reason] += count
            if self._on_exposures_dropped is not None:
                self._on_exposures_dropped(reason, count)

    def _take(self) -> tuple[list[_Pending], list[bytes]] | None:
        """The next batch: Track calls waiting (whole calls, up to `max_events`) with every exposure
        waiting; exposures alone once per `exposure_flush_s`; None once closed with nothing left."""
        with self._cond:
            while not self._queue and not self._closed:
                if not self._exposures:
                    self._cond.wait(self._exposure_flush_s)  # note_exposures does not wake us
                    continue
                left = self._exposures_taken + self._exposure_flush_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._exposures_taken = time.monotonic()
            waiting = self._exposures
            exposures = [waiting.popleft() for _ in range(len(waiting))]
            if self._queue:
                return self._batch(), exposures
            return ([], exposures) if exposures else None

    def _batch(self) -> list[_Pending]:
        """Track calls of the queue for one commit (called holding the condition)."""
        if self._max_wait_s > 0 and not self._closed:
            deadline = time.monotonic() + self._max_wait_s
            while sum(len(p.events) for p in self._queue) < self._max_events and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        batch: list[_Pending] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].events) <= self._max_events):
            pending = self._queue.pop(0)
            batch.append(pending)
            size += len(pending.events)
        return batch

    def _commit(self, events: list[Event], exposures: list[bytes]) -> TrackResponse:
        """One commit of `events` with `exposures`; when both do not fit, the events alone (the exposures
        dropped). Raises when the events cannot be stored; the exposures are dropped then too."""
        if time.monotonic() < self._full_until:
            full = StoreFull(self._full_error)
            self._dropped("store_full", len(exposures))
            self._note_full(full, len(events), len(exposures))
            raise full
        retry_alone = bool(events and exposures)
        try:
            return self._record(events, exposures, events_refused=not retry_alone)
        except StoreFull:
            if not retry_alone:
                raise
        return self._record(events, [], events_refused=True)  # Track does not wait for room for exposures

    def _record(self, events: list[Event], exposures: list[bytes], *, events_refused: bool) -> TrackResponse:
        """`Store.record_events`; on failure the exposures are dropped and counted, and it is logged
        (`events_refused`: whether a failure refuses the events, or they are tried again alone)."""
        try:
            return self._store.record_events(events, self._limits, exposures)
        except StoreFull as exc:
            self._dropped("store_full", len(exposures))
            self._note_full(exc, len(events) if events_refused else 0, len(exposures))
            if events_refused:
                self._full_until = time.monotonic() + FULL_BACKOFF_S
                self._full_error = f"{exc} (commits wait {FULL_BACKOFF_S} s for housekeeping)"
            raise
        except Exception as exc:
            self._dropped("commit_failed", len(exposures))
            log.error(
                "track_commit_failed",
                extra={"error": str(exc), "events": len(events), "exposures_dropped": len(exposures)},
            )
            raise

    def _note_full(self, exc: StoreFull, events_refused: int, exposures_dropped: int) -> None:
        """Log `store_full` at most every STORE_FULL_LOG_EVERY_S, with what was refused since the last."""
        unlogged = self._full_unlogged
        unlogged[0] += 1
        unlogged[1] += events_refused
        unlogged[2] += exposures_dropped
        now = time.monotonic()
        if self._full_logged_at is not None and now - self._full_logged_at < STORE_FULL_LOG_EVERY_S:
            return
        commits, refused, dropped = unlogged
        log.warning(
            "store_full",
            extra={
                "error": f"{exc}: Track is answered RESOURCE_EXHAUSTED until housekeeping has freed room",
                "commits_refused": commits,
                "events_refused": refused,
                "exposures_dropped": dropped,
            },
        )
        self._full_unlogged = [0, 0, 0]
        self._full_logged_at = now

    def _run(self) -> None:
        stages = self._stages
        while (taken := self._take()) is not None:
            t = now_ns() if stages is not None else 0
            batch, exposures = taken
            events = [e for p in batch for e in p.events]
            try:
                result = self._commit(events, exposures)
            except Exception as exc:
                for p in batch:
                    p.finish(error=exc)  # the callers are told and send them again
                continue
            finally:
                if stages is not None:
                    stages.add(COMMIT, t)
            self.batches += 1
            self.events += len(events)
            offset = 0
            for p in batch:
                flags = result.new[offset : offset + len(p.events)]
                offset += len(p.events)
                accepted = sum(flags)
                p.finish(TrackResponse(accepted, len(flags) - accepted, flags))
