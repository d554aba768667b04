"""The fan-out of commits to subscribed edges: what each subscription sends next, and when.

An edge that says hello with its last applied version gets the commits after it as deltas while the
change log holds them; else (its version is 0, ahead of the head, older than the log, or of another
lineage) a full snapshot of the head first, then the tail. After a NACK it gets a full snapshot of the
head: at once when there is a newer version than the one refused, else after a backoff that doubles with
every NACK in a row up to a minute (a corrupted chunk heals on the retry; a commit the edge cannot apply
is not resent in a tight loop). At most `max_snapshots` full snapshots stream at once: a subscription
that waits a second for a slot gets `SnapshotsBusy` (the service answers RESOURCE_EXHAUSTED and the edge
retries with backoff); one that needs only deltas is never held back by the cap. A subscription with
nothing to send gets a heartbeat every `heartbeat_seconds`.

Rollouts (docs/rollouts.md; `sync/rollout_gate.py` plans each turn): an edge outside the canary set of
the rollout in progress is sent nothing past the rollout's base version (a full snapshot it needs is of
that version), and, for a shadow rollout, once it is caught up and once it has reported ServingStats (so
it is of a release that keeps a shadow candidate apart instead of applying it), the candidate as a shadow
snapshot; when
the shadow ends (promote or abort) it gets a shadow commit with 0 chunks to drop the candidate. An edge at
the base version of an aborted candidate moves to the rollback's version by one collapsed commit, never
applying the candidate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import Final

from edgewise.sync.commit_cache import CommitCache, HeadMoved
from edgewise.sync.control_store import ControlStoreError, LogCompacted
from edgewise.sync.fleet import EdgeEntry, Fleet
from edgewise.sync.rollout_gate import RolloutGate
from edgewise.sync.shard import Shard
from edgewise.v1 import sync_pb2

log = logging.getLogger(__name__)

__all__ = ["POLL_SECONDS", "Fanout", "SnapshotsBusy"]

POLL_SECONDS: Final = 0.25
"""How often a subscription looks for commits written by another process."""
MAX_NACK_BACKOFF_SECONDS: Final = 60.0


class SnapshotsBusy(Exception):
    """Every full-snapshot slot stayed taken for a second."""


class Fanout:
    def __init__(
        self,
        cache: CommitCache,
        fleet: Fleet,
        *,
        max_snapshots: int = 2,
        heartbeat_seconds: float = 5.0,
        gate: RolloutGate | None = None,
    ) -> None:
        self.cache = cache
        self.store = cache.store
        self.fleet = fleet
        self.gate = gate if gate is not None else RolloutGate(cache.store)
        self.heartbeat_seconds = heartbeat_seconds
        self._snapshots = threading.BoundedSemaphore(max_snapshots)

    def stream(
        self, entry: EdgeEntry, shard: Shard, sent: int, lineage: str, active: Callable[[], bool]
    ) -> Generator[sync_pb2.SyncMessage, None, None]:
        """The messages for the edge of `entry`, whose last applied version is `sent` (of `lineage`),
        while `active()`. Raises `SnapshotsBusy` when it needs a full snapshot and finds no slot."""
        store = self.store
        head = store.head_version()
        need_snapshot = (
            sent == 0 or sent > head or sent < store.log_start_version() or lineage != store.lineage
        )
        retry_at = 0.0
        nack_backoff = 0.5
        last_beat = 0.0
        shadow_held = 0  # the shadow candidate this stream sent the edge (0: none)
        shadow_failed = 0  # a candidate whose state could not be rebuilt (not tried again)
        while active():
            # The head before the plan, and nothing past `target` sent: a commit that starts a rollout is
            # visible only once the gate holds the edges back (RolloutGate.hold), so a plan read after
            # the head covers every version up to it.
            head = store.head_version()
            plan = self.gate.plan(entry.node_id)
            target = head if plan.limit is None else min(head, plan.limit)
            if shadow_held and shadow_held != plan.shadow_version:
                yield self.cache.shadow_drop(shadow_held)  # the shadow ended: promoted or aborted
                shadow_held = 0
            nacked = self.fleet.take_nack(entry)
            if nacked is not None:
                need_snapshot = True
                retry_at = 0.0 if target > nacked else time.monotonic() + nack_backoff
                nack_backoff = min(nack_backoff * 2, MAX_NACK_BACKOFF_SECONDS)
            if need_snapshot and target > 0 and time.monotonic() >= retry_at:
                if not self._snapshots.acquire(timeout=1.0):
                    raise SnapshotsBusy("too many full snapshots streaming; retry with backoff")
                try:
                    sent = yield from self.cache.snapshot(shard, plan.limit, upto=target)
                    need_snapshot = False
                except HeadMoved:  # nothing sent yet: plan again
                    continue
                except ControlStoreError as exc:  # the base version cannot be rebuilt any more
                    log.error("rollout_base_unavailable", extra={"node": entry.node_id, "error": str(exc)})
                    retry_at = time.monotonic() + MAX_NACK_BACKOFF_SECONDS  # until promote or abort
                finally:
                    self._snapshots.release()
                last_beat = time.monotonic()
                continue
            if not need_snapshot and target > sent:
                try:
                    sent = yield from self._deltas(entry, shard, sent, target, plan.skips, active)
                except LogCompacted:
                    need_snapshot = True
                last_beat = time.monotonic()
                continue
            if (
                plan.shadow_version
                and plan.shadow_version not in (shadow_held, shadow_failed)
                and not need_snapshot
                and entry.serving is not None  # a release that knows shadow commits (it reports stats)
            ):
                if not self._snapshots.acquire(timeout=1.0):
                    raise SnapshotsBusy("too many full snapshots streaming; retry with backoff")
                try:
                    yield from self.cache.snapshot(
                        shard, plan.shadow_version, shadow_sample=plan.shadow_sample, shadow_base=target
                    )
                    shadow_held = plan.shadow_version
                except ControlStoreError as exc:  # the candidate's state cannot be rebuilt: no shadow
                    log.error("shadow_unavailable", extra={"node": entry.node_id, "error": str(exc)})
                    shadow_failed = plan.shadow_version
                finally:
                    self._snapshots.release()
                last_beat = time.monotonic()
                continue
            if time.monotonic() - last_beat >= self.heartbeat_seconds:
                last_beat = time.monotonic()
                yield sync_pb2.SyncMessage(heartbeat=sync_pb2.Heartbeat(version=target, sent_at_ms=_now_ms()))
            self.cache.wait(POLL_SECONDS)

    def _deltas(
        self,
        entry: EdgeEntry,
        shard: Shard,
        sent: int,
        limit: int,
        skips: dict[int, int],
        active: Callable[[], bool],
    ) -> Generator[sync_pb2.SyncMessage, None, int]:
        """The commits after `sent` up to `limit`, an aborted candidate replaced by its collapsed commit;
        returns the version sent last."""
        for info, changes in self.store.commits_after(sent):
            if not active() or entry.nack_pending or info.version > limit:
                break
            skip_to = skips.get(sent)
            if skip_to is not None and info.version <= skip_to:
                collapsed, net = self.store.collapsed(sent, skip_to)
                yield from self.cache.encoded(collapsed, net, shard, tag="#collapsed")
                return skip_to
            yield from self.cache.encoded(info, changes, shard)
            sent = info.version
        return sent


def _now_ms() -> int:
    return int(time.time() * 1000)
