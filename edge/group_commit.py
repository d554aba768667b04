"""Group commit for Track: concurrent calls share one durable LMDB write transaction.

Each `submit` queues its events and blocks until they are committed (fsync'd). One committer thread
takes everything queued (up to `max_events`, whole calls only) into one transaction; calls arriving
while it commits form the next batch. So throughput grows with concurrency instead of collapsing to
one fsync per call, and no call is answered before its events are on disk.

Exposure records of decisions (`note_exposures`, never blocking Decide) ride along in the next
transaction; with no Track call to ride with, they are committed every `exposure_flush_s` at most.
So a crash loses at most that window of exposures (never an acknowledged Track event). A commit that
fails fails its Track calls (they are sent again) and puts its exposures back in the queue. Past
`max_exposures` waiting, new ones are dropped and counted (`exposures_dropped`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.store import Store, TrackResponse

log = logging.getLogger(__name__)

__all__ = ["CommitterClosed", "GroupCommitter"]


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
    ) -> None:
        self._store = store
        self._limits = limits
        self._max_events = max_events
        self._max_wait_s = max_wait_s
        self._queue: list[_Pending] = []
        self._exposures: list[bytes] = []
        self._exposure_flush_s = exposure_flush_s
        self._max_exposures = max_exposures
        self._exposures_since = 0.0  # monotonic time the oldest waiting exposure arrived
        self.exposures_dropped = 0
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
        """Queue exposure records for the outbox; returns at once."""
        if not records:
            return
        with self._cond:
            if self._closed:
                return
            if len(self._exposures) + len(records) > self._max_exposures:
                self.exposures_dropped += len(records)
                return
            if not self._exposures:
                self._exposures_since = time.monotonic()
                self._cond.notify()
            self._exposures.extend(records)

    def close(self) -> None:
        """Commit what is queued, then stop the committer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _requeue(self, exposures: list[bytes]) -> None:
        """Put the exposures of a failed commit back in front of the queue (within `max_exposures`; the
        newest beyond are dropped and counted), to be committed `exposure_flush_s` later at the latest."""
        if not exposures:
            return
        with self._cond:
            waiting = exposures + self._exposures
            if len(waiting) > self._max_exposures:
                self.exposures_dropped += len(waiting) - self._max_exposures
                waiting = waiting[: self._max_exposures]
            if not self._exposures:
                self._exposures_since = time.monotonic()
            self._exposures = waiting

    def _take(self) -> tuple[list[_Pending], list[bytes]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                if self._exposures:
                    left = self._exposures_since + self._exposure_flush_s - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                else:
                    self._cond.wait()
            exposures, self._exposures = self._exposures, []
            if not self._queue:
                return ([], exposures) if exposures else None
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
            return batch, exposures

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            batch, exposures = taken
            events = [e for p in batch for e in p.events]
            try:
                result = self._store.record_events(events, self._limits, exposures)
            except Exception as exc:
                log.error("track_commit_failed", extra={"error": str(exc), "events": len(events)})
                for p in batch:
                    p.finish(error=exc)  # the callers are told (UNAVAILABLE) and send them again
                self._requeue(exposures)  # no caller waits for these: they go with the next commit
                continue
            self.batches += 1
            self.events += len(events)
            offset = 0
            for p in batch:
                flags = result.new[offset : offset + len(p.events)]
                offset += len(p.events)
                accepted = sum(flags)
                p.finish(TrackResponse(accepted, len(flags) - accepted, flags))
