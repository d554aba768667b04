"""The central tier's work over forwarded events (docs/central.md): every replica keeps a local copy of the
events stream; one replica at a time learns bandit posteriors from it (the profile folder works the
partitions each replica holds the leases of: `sync/central_partitions.py`).

- `EventsFollower`: follows the events stream (`sync/central_events.py`) into the replica's local event
  store under the stream's sequence numbers (de-duplicated by id), and records its place (`stream`
  cursor of the event store); Report, and the jobs, read that copy, so they give the same figures on
  every replica.
- `JobsLease`: a lease in the KV bucket `EDGEWISE_LEASES` (key `jobs`, TTL `LEASE_S`): the replica holding
  it runs the jobs one replica runs at a time, the bandit learner (`on_gain`), renewing it every second;
  one that cannot renew stops them (`on_loss`), and another takes the lease over once it expired, within
  `LEASE_S` + 1 s of the holder's death. `lease_bucket` opens (or creates) the bucket.

Effects exactly once: the learner (and the folder) commit through the change log with their cursor in the
commit (`ControlStore.commit_at` -> the log message's cursors -> every replica's store), and a commit is
taken by the log only at the position its state was read at. A new holder resumes from the cursor the
last commit set; two holders at once (a lease expired while its holder was paused) cannot both fold the
same events: the second one's commit is refused, and it folds again from the cursor it then reads.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from edgewise.sync.central_events import CentralEvents, StoredRecord
from edgewise.sync.event_store import EventStore
from edgewise.sync.nats_bridge import NatsBridge

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

__all__ = ["FOLLOW_CURSOR", "LEASE_BUCKET", "LEASE_S", "EventsFollower", "JobsLease", "lease_bucket"]

FOLLOW_CURSOR: Final = "stream"
LEASE_BUCKET: Final = "EDGEWISE_LEASES"
LEASE_S: Final = 3.0
_BATCH: Final = 1000


async def lease_bucket(bridge: NatsBridge, *, replicas: int, lease_s: float = LEASE_S) -> KeyValue:
    """The KV bucket `EDGEWISE_LEASES` (created when missing): every key in it expires `lease_s` after it
    was last written."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BucketNotFoundError, NotFoundError

    try:
        return await bridge.js.key_value(LEASE_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return await bridge.js.create_key_value(
            KeyValueConfig(bucket=LEASE_BUCKET, ttl=lease_s, replicas=replicas, storage=StorageType.FILE)
        )


class EventsFollower:
    """The events stream into the local event store (see the module doc)."""

    def __init__(self, events: CentralEvents, store: EventStore) -> None:
        self.events = events
        self.store = store
        self._inbox: queue.Queue[StoredRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="events-follower", daemon=True)
        self._stop_follow: Callable[[], None] | None = None
        self.applied = threading.Condition()

    def start(self) -> None:
        self._thread.start()
        self._stop_follow = self.events.follow(self.store.cursor(FOLLOW_CURSOR) + 1, self._inbox.put)

    def stop(self) -> None:
        if self._stop_follow is not None:
            self._stop_follow()
        self._inbox.put(None)
        self._thread.join(5.0)

    def position(self) -> int:
        return self.store.cursor(FOLLOW_CURSOR)

    def _run(self) -> None:
        while True:
            first = self._inbox.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._inbox.put(None)
                    break
                batch.append(item)
            try:
                self.store.ingest(
                    [node for _, node, _, _, _ in batch],
                    [(kind, event_id, payload) for _, _, kind, event_id, payload in batch],
                    seqs=[seq for seq, *_ in batch],
                )
                self.store.set_cursor(FOLLOW_CURSOR, batch[-1][0])
            except Exception as exc:  # the local copy: logged; the records come again after a restart
                log.error("events_follow_failed", extra={"error": repr(exc)[:300], "records": len(batch)})
            with self.applied:
                self.applied.notify_all()


class JobsLease:
    """Who runs the folder and the learner (see the module doc)."""

    def __init__(
        self,
        bridge: NatsBridge,
        on_gain: Callable[[], None],
        on_loss: Callable[[], None],
        *,
        replicas: int = 3,
        lease_s: float = LEASE_S,
    ) -> None:
        self.bridge = bridge
        self.on_gain = on_gain
        self.on_loss = on_loss
        self.replicas = replicas
        self.lease_s = lease_s
        self.holder_id = uuid.uuid4().hex
        self.held = False
        self._revision = 0
        self._kv: KeyValue | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobs-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)
        if self.held:
            self.held = False
            self.on_loss()
            try:  # let another replica take over at once
                kv = self._kv
                if kv is not None:
                    self.bridge.run(kv.delete("jobs", last=self._revision), 3.0)
            except Exception as exc:
                log.info("lease_release_failed", extra={"error": repr(exc)[:200]})

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await lease_bucket(self.bridge, replicas=self.replicas, lease_s=self.lease_s)
        return self._kv

    async def _try(self) -> bool:
        kv = await self._bucket()
        value = self.holder_id.encode()
        if self.held:
            self._revision = await kv.update("jobs", value, last=self._revision)
        else:
            self._revision = await kv.create("jobs", value)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.bridge.run(self._try(), self.lease_s)
            except Exception:
                ok = False
            if ok and not self.held:
                self.held = True
                log.info("jobs_lease_gained", extra={"holder": self.holder_id})
                self.on_gain()
            elif not ok and self.held:
                self.held = False
                log.warning("jobs_lease_lost", extra={"holder": self.holder_id})
                self.on_loss()
            self._stop.wait(self.lease_s / 3)
