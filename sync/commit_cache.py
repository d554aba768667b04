"""The control plane's commit cache: commits encoded for the wire once per shard, full snapshots of the
head, and the subscriptions waiting for the next commit.

A commit's messages (`sync.wire.encode_commit`) depend only on the commit and on the shard they are for,
so `encoded` builds them once and every subscription of that shard that needs them shares them (protobuf
messages are not changed after encoding; each stream serializes its own copy). The cache keeps the most
recently used commits, bounded by the bytes of their changes (`budget_bytes`; a commit over the budget is
encoded for each stream and not kept). `snapshot` streams the whole state of one read view for a shard
and keeps nothing.

Subscriptions wait in `wait` until `notify`, which this process calls after every commit it writes and
after an edge NACKs; `wait` also returns after its timeout, so a commit another process wrote to the
store is seen within that time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator, Iterator

from edgewise.sync.control_store import CommitInfo, ControlStore, RecordChange
from edgewise.sync.shard import Shard
from edgewise.sync.wire import DEFAULT_CHUNK_BYTES, encode_commit
from edgewise.v1 import sync_pb2

__all__ = ["SNAPSHOT_NAMESPACES", "CommitCache", "HeadMoved", "commit_proto"]

SNAPSHOT_NAMESPACES = ("rules", "models", "items", "profiles", "forgotten")
"""What a full snapshot holds, in the order it is sent."""


def commit_proto(info: CommitInfo, lineage: str = "") -> sync_pb2.Commit:
    return sync_pb2.Commit(
        version=info.version,
        base_version=info.base_version,
        changes=info.changes,
        kind=info.kind,
        lineage=lineage,
        created_at_ms=info.created_at_ms,
        description=info.description,
    )


class HeadMoved(Exception):
    """A snapshot of the head was asked for no newer than a version, and the head is past it already."""


class CommitCache:
    def __init__(
        self,
        store: ControlStore,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        budget_bytes: int = 256 << 20,
    ) -> None:
        self.store = store
        self.budget_bytes = budget_bytes
        self._chunk_bytes = chunk_bytes
        # encoded commits by (version, shard), least recently used first, with the bytes of their changes
        self._entries: OrderedDict[tuple[int, str], tuple[list[sync_pb2.SyncMessage], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition()

    @property
    def cached_bytes(self) -> int:
        """The bytes of the changes of the commits kept (never more than `budget_bytes`)."""
        with self._lock:
            return self._bytes

    def cached(self) -> list[tuple[int, str]]:
        """The (version, shard) of every commit kept, least recently used first."""
        with self._lock:
            return list(self._entries)

    def encoded(
        self, info: CommitInfo, changes: list[RecordChange], shard: Shard, *, tag: str = ""
    ) -> list[sync_pb2.SyncMessage]:
        """A commit's messages for one shard (chunks, then the commit marker), encoded once and shared.
        `tag` keeps apart commits that share a version (the collapsed commit past an aborted rollout)."""
        key = (info.version, shard.text() + tag)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                return cached[0]
        messages = list(
            encode_commit(
                commit_proto(info, self.store.lineage),
                _for_shard(shard, changes),
                chunk_bytes=self._chunk_bytes,
            )
        )
        size = sum(len(c.key) + len(c.value or b"") + 32 for c in changes)
        with self._lock:
            if key not in self._entries and size <= self.budget_bytes:
                self._entries[key] = (messages, size)
                self._bytes += size
                while self._bytes > self.budget_bytes:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._bytes -= dropped
        return messages

    def snapshot(
        self,
        shard: Shard,
        at: int | None = None,
        *,
        shadow_sample: float = 0.0,
        shadow_base: int = 0,
        upto: int | None = None,
    ) -> Generator[sync_pb2.SyncMessage, None, int]:
        """A full snapshot for one shard of the head (`at` None) or of the older version `at` (an edge
        held at a rollout's base version), read from one read view held while it streams; returns the
        version it holds. `shadow_sample` > 0: a shadow candidate (Commit.shadow, Chunk.shadow) that the
        edge decides that share of requests with and never serves (docs/rollouts.md), over the version
        `shadow_base` the edge serves meanwhile. `upto`: HeadMoved, before anything is sent, when the head
        is past it (a commit landed since the caller planned, maybe a rollout's candidate)."""
        context = self.store.read() if at is None else self.store.read_at(at)
        with context as view:
            version = view.version
            if upto is not None and version > upto:
                raise HeadMoved(f"the head is at version {version}, past {upto}")
            newest = self.store.history(1)
            shadow = shadow_sample > 0
            commit = sync_pb2.Commit(
                version=version,
                snapshot=True,
                kind="snapshot",
                created_at_ms=newest[0].created_at_ms if newest else 0,
                description=f"{'shadow candidate' if shadow else 'full snapshot'} at version {version}",
                lineage=self.store.lineage,
                shadow=shadow,
                shadow_sample=shadow_sample,
                base_version=shadow_base if shadow else 0,
            )

            def records() -> Iterator[tuple[str, str, bytes | None]]:
                for namespace in SNAPSHOT_NAMESPACES:
                    for key, value in view.items(namespace):
                        if namespace != "profiles" or shard.holds(key, value):
                            yield namespace, key, value

            for message in encode_commit(commit, records(), chunk_bytes=self._chunk_bytes):
                if shadow and message.WhichOneof("kind") == "chunk":
                    message.chunk.shadow = True
                yield message
        return version

    def shadow_drop(self, version: int) -> sync_pb2.SyncMessage:
        """The shadow commit with 0 chunks that tells an edge to drop its candidate `version`."""
        return sync_pb2.SyncMessage(
            commit=sync_pb2.Commit(
                version=version,
                snapshot=True,
                shadow=True,
                kind="snapshot",
                description=f"drop the shadow candidate {version}",
                lineage=self.store.lineage,
            )
        )

    def notify(self) -> None:
        """Wake every subscription waiting: there is a new commit, or an edge NACKed."""
        with self._changed:
            self._changed.notify_all()

    def wait(self, timeout: float) -> None:
        """Until the next `notify`, at most `timeout` seconds."""
        with self._changed:
            self._changed.wait(timeout)


def _for_shard(shard: Shard, changes: list[RecordChange]) -> Iterator[tuple[str, str, bytes | None]]:
    """A commit's changes as one shard's edge needs them: profiles outside the shard are left out, or
    sent as deletes for region shards (a profile that moved to another region must leave the edge)."""
    for c in changes:
        if c.namespace != "profiles" or shard.everything or shard.holds(c.key, c.value):
            yield c.namespace, c.key, c.value
        elif shard.regions:
            yield c.namespace, c.key, None
