"""A control-plane replica of the central tier: its local control store (`sync/control_store.py`) kept as
the materialized view of the JetStream change log (`sync/central_log.py`), docs/central.md.

Two writers meet in the local store, serialized by LMDB's write lock:

- a commit made here (push, delta, rollback, forget, a job's commit) is computed by the control store as
  in the embedded control plane, and, inside its write transaction, published to the log at the
  store's position (`ControlStore.on_commit`): the transaction commits only once JetStream stored the
  message, with the store's position moved to the message's. A refusal because the log moved on
  (`LogConflict`) aborts it: the caller waits until the follower caught up and makes the commit again on
  the new state (`wait_position`).
- the follower applies every message of the log past the store's position, verbatim
  (`ControlStore.apply_commit`): the version, seqs, time and kind of the replica that made it. Messages
  the store already has (made here) are skipped by position. So every replica holds the same commits at
  the same versions, and an edge can follow any of them.

Rollout state (docs/rollouts.md) travels the same way: a push that starts a canary rollout, or an abort,
publishes the rollout document (and the abort's skip) in its commit's message, a promote in a message
of its own (`ControlStore.on_rollout`), and every replica stores it in the transaction that applies the
message. Before applying a message that carries rollout state, the follower asks the service to hold
every edge at the current head (`hold`), and releases it once the store and the service's rollout gate
have the new state (`rollout_applied`), all under the lock: an edge outside the canary set is never
sent the candidate in between, and a promote, abort or push made under the lock never judges the
rollout by a gate older than the store.

At start (`open`) the cache is checked against the log: a cache of another lineage (another cluster), or
ahead of the log, is rebuilt (emptied and bootstrapped: `CacheMismatch` tells `control serve` to do it);
a cache behind the log's first message (compacted away) or an empty one on a log that was compacted is
bootstrapped from the newest snapshot in the object store, then follows the tail.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final

from edgewise.sync.central_log import (
    CentralLog,
    CommitCompacted,
    LogConflict,
    LogEntry,
    LogUnavailable,
    Snapshot,
)
from edgewise.sync.control_store import (
    CommitInfo,
    ControlStore,
    ControlStoreError,
    RecordChange,
    RolloutWritten,
)

log = logging.getLogger(__name__)

__all__ = ["CacheMismatch", "Replica"]

_IDLE_S: Final = 0.5


class CacheMismatch(RuntimeError):
    """The local cache is not a view of this cluster's log (the message says why): rebuild it."""


class Replica:
    """The follower of the change log and the publisher of local commits (see the module doc)."""

    def __init__(self, store: ControlStore, central: CentralLog) -> None:
        self.store = store
        self.central = central
        self.notify: Callable[[], None] = lambda: None  # wakes the subscriptions after an applied commit
        self.hold: Callable[[int], None] = lambda version: None  # before a message with rollout state
        self.rollout_applied: Callable[[], None] = lambda: None  # after it (applied or not)
        # Held by whoever prepares a local commit (the service's push lock): a delta is validated on a read
        # view, then committed; a commit of another replica applied in between would be overwritten.
        self.lock: threading.Lock = threading.Lock()
        self._inbox: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self._applied = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="log-follower", daemon=True)
        self._stop_follow: Callable[[], None] | None = None
        self._stopping = threading.Event()
        self.failed: str | None = None  # why the follower stopped, if it did
        self._snapshot_lock = threading.Lock()

    # -- start -----------------------------------------------------------------------------------------

    def open(self) -> None:
        """Check the cache against the log, bootstrap it when needed, and take over publishing the store's
        commits (CacheMismatch: rebuild the cache and call again)."""
        lineage = self.central.open()
        first, last = self.central.bounds()
        position = self.store.replicated_position()
        has_state = position > 0 or self.store.head_version() > 0
        if has_state and self.store.lineage != lineage:
            raise CacheMismatch(
                f"the cache at {self.store.path} is of lineage {self.store.lineage}, the cluster's log of "
                f"{lineage}: it was built from another cluster (or is an embedded control plane's store)"
            )
        if position > last:
            raise CacheMismatch(
                f"the cache at {self.store.path} is at log position {position}, ahead of the log "
                f"({last}): the stream was recreated"
            )
        if position < first - 1:
            snapshot = self.central.newest_snapshot()
            if snapshot is None or snapshot.position < first - 1:
                raise CacheMismatch(
                    f"the log starts at position {first} and no snapshot covers what was compacted before it"
                )
            self._install(snapshot)
        elif not has_state:
            self.store.adopt_lineage(lineage)
        self.store.on_commit = self._publish
        self.store.on_rollout = self._publish_rollout

    def _install(self, snapshot: Snapshot) -> None:
        self.store.install_snapshot(
            lineage=snapshot.lineage,
            commits=snapshot.commits,
            records=snapshot.records,
            forgotten=snapshot.forgotten,
            position=snapshot.position,
            cursors=snapshot.cursors,
            rollout=snapshot.rollout,
        )
        log.info(
            "replica_bootstrapped",
            extra={"position": snapshot.position, "version": self.store.head_version()},
        )

    def start(self, catch_up_s: float = 60.0) -> None:
        """Follow the log from the store's position (after `open`), and return once the store holds what
        the log held at the call (so a replica serves the cluster's head from its first answer), or after
        `catch_up_s` with a warning."""
        self._thread.start()
        self._stop_follow = self.central.follow(self.store.replicated_position() + 1, self._deliver)
        _, last = self.central.bounds()
        if not self.wait_position(last, catch_up_s):
            log.warning(
                "replica_behind_at_start",
                extra={"position": self.store.replicated_position(), "log_end": last, "error": self.failed},
            )

    def stop(self) -> None:
        self._stopping.set()
        if self._stop_follow is not None:
            self._stop_follow()
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(5.0)

    # -- publishing (inside the store's write transaction) ----------------------------------------------

    def _publish(
        self,
        info: CommitInfo,
        changes: list[RecordChange],
        position: int,
        cursors: dict[str, int],
        rollout: RolloutWritten | None = None,
    ) -> int:
        try:
            return self.central.append(info, changes, position, cursors, rollout=rollout)
        except (LogConflict, LogUnavailable):
            raise
        except Exception as exc:  # TimeoutError is an OSError: never let it read as a bad pushed file
            raise LogUnavailable(f"JetStream did not store the commit: {type(exc).__name__}: {exc}") from exc

    def _publish_rollout(self, doc: bytes, skip: tuple[int, int] | None, position: int) -> int:
        try:
            return self.central.append_rollout((doc, skip), position)
        except (LogConflict, LogUnavailable):
            raise
        except Exception as exc:
            raise LogUnavailable(f"JetStream did not store the rollout: {type(exc).__name__}: {exc}") from exc

    # -- following --------------------------------------------------------------------------------------

    def _deliver(self, position: int, data: bytes) -> None:
        self._inbox.put((position, data))  # on the loop thread: never block it

    def _run(self) -> None:
        while not self._stopping.is_set():
            item = self._inbox.get()
            if item is None:
                return
            position, data = item
            try:
                applied = self._apply(position, data)
            except (ControlStoreError, ValueError, KeyError, TypeError) as exc:
                self.failed = str(exc)
                log.error("replica_diverged", extra={"position": position, "error": str(exc)})
                return
            except Exception as exc:  # the log or the object store did not answer: try this one again
                log.warning("replica_apply_retry", extra={"position": position, "error": repr(exc)[:300]})
                time.sleep(_IDLE_S)
                self._inbox.queue.appendleft(item)
                continue
            if applied:
                self.notify()
            with self._applied:
                self._applied.notify_all()

    def _apply(self, position: int, data: bytes) -> bool:
        current = self.store.replicated_position()
        if position <= current:
            return False  # made here, or delivered again after the consumer was recreated
        if position > current + 1:
            snapshot = self.central.newest_snapshot()
            if snapshot is None or snapshot.position < position - 1:
                raise ControlStoreError(
                    f"the log skips from position {current} to {position} and no snapshot covers the gap"
                )
            self._install_held(snapshot)
            if position <= snapshot.position:
                return True
        try:
            entry: LogEntry = self.central.decode(position, data)
        except CommitCompacted:  # a large commit's object went with a compaction past it: a snapshot has it
            snapshot = self.central.newest_snapshot()
            if snapshot is None or snapshot.position < position:
                raise ControlStoreError(
                    f"log position {position} was compacted and no snapshot covers it"
                ) from None
            self._install_held(snapshot)
            return True
        if entry.lineage != self.store.lineage:
            raise ControlStoreError(f"log position {position} is of lineage {entry.lineage}, not ours")
        if entry.rollout is None:
            assert entry.info is not None  # a message without a commit carries rollout state
            with self.lock:
                return self.store.apply_commit(entry.info, entry.changes, position, entry.cursors)
        # Under the lock (the service's push lock) until the gate has the new state too: a promote, abort
        # or push that waited for the lock judges the rollout by the gate, which must not lag the store.
        with self.lock:
            self.hold(self.store.head_version())
            try:
                if entry.info is None:
                    doc, skip = entry.rollout
                    return self.store.apply_rollout(doc, skip, position)
                return self.store.apply_commit(
                    entry.info, entry.changes, position, entry.cursors, rollout=entry.rollout
                )
            finally:
                self.rollout_applied()

    def _install_held(self, snapshot: Snapshot) -> None:
        """Install a snapshot while serving (its rollout record with it): the edges held at the head, and
        the lock held, until the service's gate has the new rollout state."""
        with self.lock:
            self.hold(self.store.head_version())
            try:
                self._install(snapshot)
            finally:
                self.rollout_applied()

    def wait_position(self, position: int, timeout: float) -> bool:
        """Until the store is at log position `position` or later; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._applied:
            while self.store.replicated_position() < position:
                left = deadline - time.monotonic()
                if left <= 0 or self.failed is not None:
                    return False
                self._applied.wait(min(left, _IDLE_S))
        return True

    def wait_version(self, version: int, timeout: float) -> bool:
        """Until the store's head is at `version` or later; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._applied:
            while self.store.head_version() < version:
                left = deadline - time.monotonic()
                if left <= 0 or self.failed is not None:
                    return False
                self._applied.wait(min(left, _IDLE_S))
        return True

    # -- snapshots --------------------------------------------------------------------------------------

    def write_snapshot(self, keep: int = 2) -> int:
        """Put the store's full state in the object store (for bootstrap and compaction), keeping the
        newest `keep` snapshots and the log after the oldest of them; its position."""
        with self._snapshot_lock:  # an older image is never stored after a newer one was
            position, commits, forgotten, records, cursors, rollout = self.store.replica_image()
            self.central.put_snapshot(
                Snapshot(
                    position=position,
                    lineage=self.store.lineage,
                    commits=commits,
                    forgotten=forgotten,
                    records=records,
                    cursors=cursors,
                    rollout=rollout,
                ),
                keep=keep,
            )
        log.info("snapshot_written", extra={"position": position, "records": len(records), "keep": keep})
        return position
