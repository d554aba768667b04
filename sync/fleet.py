"""The control plane's fleet registry: what it knows of every edge that subscribed or forwarded since it
started (node id, shard, applied version, last ACK and NACK, reported state, connection).

`ctl status` and `ctl forget --status` read it (through the service's `Status` and `ForgetStatus`). A
reconnect under the same node id takes the entry over (`connect` gives it a new stream number), and only
the stream that owns it marks it disconnected, so an old stream closing after its replacement opened
changes nothing. A NACK is remembered until its stream takes it (`take_nack`), which then sends a full
snapshot. Thread-safe: the subscription streams, their request readers and `Forward` calls update it
from their own threads.

Entries do not live forever: an edge that is not connected and was last heard of more than
`expire_after_ms` ago is dropped (the `fleet.expire_after` setting; logged as `edge_expired`), and past
`max_entries` entries a new one drops the disconnected entry heard of longest ago (`fleet.max_entries`),
so node ids made up by a caller cannot grow the registry, or `ctl status`, without bound. Connected edges
are never dropped. The entries are kept in the order they were last heard of, so both cost no scan of the
whole registry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from edgewise.v1 import sync_pb2

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_EXPIRE_AFTER_MS", "DEFAULT_MAX_ENTRIES", "MAX_ERROR_CHARS", "EdgeEntry", "Fleet"]

MAX_ERROR_CHARS: Final = 2000
"""A NACK's error is kept up to this many characters."""
DEFAULT_EXPIRE_AFTER_MS: Final = 7 * 86_400_000
DEFAULT_MAX_ENTRIES: Final = 10_000


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class EdgeEntry:
    """One edge as the control plane last heard of it."""

    node_id: str
    shard: str
    peer: str
    applied_version: int = 0
    last_ack_version: int = 0
    last_nack_version: int = 0
    last_error: str = ""
    state: sync_pb2.EdgeState.ValueType = sync_pb2.EDGE_STATE_NOT_SERVING
    connected: bool = False
    last_seen_ms: int = 0
    stream: int = 0  # which subscription owns the entry (a reconnect replaces the old one)
    events_forwarded: int = 0
    nack_pending: bool = False
    serving: sync_pb2.ServingStats | None = None  # from the last heartbeat that had them (never mutated)
    shadow: sync_pb2.ShadowStats | None = None


class Fleet:
    """The registry of edges: updated by subscriptions and forwards, read as a sorted copy.

    `expire_after_ms`: drop a disconnected edge not heard of for this long (0: never); `max_entries`:
    entries kept at most (connected ones beyond it are kept); `clock`: wall-clock milliseconds."""

    def __init__(
        self,
        *,
        expire_after_ms: int = DEFAULT_EXPIRE_AFTER_MS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], int] | None = None,
    ) -> None:
        if max_entries < 1 or expire_after_ms < 0:
            raise ValueError("max_entries must be >= 1 and expire_after_ms >= 0")
        self._lock = threading.Lock()
        self._edges: OrderedDict[str, EdgeEntry] = OrderedDict()  # oldest last_seen_ms first
        self._streams = 0
        self._expire_after_ms = expire_after_ms
        self._max_entries = max_entries
        self._clock = clock or _now_ms

    def _touch(self, entry: EdgeEntry) -> None:
        """`entry` was heard from now: newest in the order (the caller holds the lock)."""
        entry.last_seen_ms = self._clock()
        if self._edges.get(entry.node_id) is entry:
            self._edges.move_to_end(entry.node_id)

    def _add(self, node_id: str, shard: str, peer: str) -> EdgeEntry:
        """A new entry, after expired ones and, at the cap, the longest-gone one made room (lock held)."""
        self._expire()
        if len(self._edges) >= self._max_entries:
            gone = next((e for e in self._edges.values() if not e.connected), None)
            if gone is not None:
                del self._edges[gone.node_id]
        entry = EdgeEntry(node_id, shard, peer)
        self._edges[node_id] = entry
        return entry

    def _expire(self) -> None:
        """Drop the disconnected entries not heard of within `expire_after_ms` (lock held)."""
        if not self._expire_after_ms:
            return
        cutoff = self._clock() - self._expire_after_ms
        expired: list[EdgeEntry] = []
        for entry in self._edges.values():
            if entry.last_seen_ms >= cutoff:
                break  # in last-heard order: every later entry is newer
            if not entry.connected:
                expired.append(entry)
        for entry in expired:
            del self._edges[entry.node_id]
            log.info(
                "edge_expired",
                extra={"node": entry.node_id[:128], "last_seen_ms": entry.last_seen_ms},
            )

    def connect(self, node_id: str, shard: str, peer: str, version: int) -> EdgeEntry:
        """A subscription opened with hello: the edge's entry, now owned by a new stream number."""
        with self._lock:
            self._streams += 1
            entry = self._edges.get(node_id)
            if entry is None:
                entry = self._add(node_id, shard, peer)
            entry.shard = shard
            entry.peer = peer
            entry.applied_version = version
            entry.connected = True
            self._touch(entry)
            entry.stream = self._streams
            entry.nack_pending = False
            return entry

    def disconnect(self, entry: EdgeEntry, stream: int) -> None:
        """Subscription `stream` ended: the entry is disconnected unless a newer stream owns it."""
        with self._lock:
            if entry.stream == stream:
                entry.connected = False

    def ack(self, entry: EdgeEntry, version: int) -> None:
        """The edge applied `version`: it is in contact, so READY, and its last error is cleared."""
        with self._lock:
            self._touch(entry)
            entry.applied_version = version
            entry.last_ack_version = version
            entry.last_error = ""
            entry.state = sync_pb2.EDGE_STATE_READY

    def nack(self, entry: EdgeEntry, version: int, error: str) -> None:
        """The edge refused `version` (nothing of it applied): kept for `take_nack` and for status."""
        with self._lock:
            self._touch(entry)
            entry.last_nack_version = version
            entry.last_error = error[:MAX_ERROR_CHARS]
            entry.nack_pending = True

    def heartbeat(
        self,
        entry: EdgeEntry,
        version: int | None,
        state: sync_pb2.EdgeState.ValueType,
        serving: sync_pb2.ServingStats | None = None,
        shadow: sync_pb2.ShadowStats | None = None,
    ) -> None:
        """The edge's own report of its applied version (None: one not to record), readiness and, when it
        sends them, how the version it serves is doing and its shadow figures (kept as given: the caller
        hands over messages nobody changes afterwards)."""
        with self._lock:
            self._touch(entry)
            if version is not None:
                entry.applied_version = version
            entry.state = state
            entry.serving = serving
            entry.shadow = shadow

    def seen(self, entry: EdgeEntry) -> None:
        """Any other message from the edge."""
        with self._lock:
            self._touch(entry)

    def forwarded(self, node_id: str, accepted: int) -> None:
        """The edge forwarded events, `accepted` of them new (an edge may forward without subscribing)."""
        with self._lock:
            entry = self._edges.get(node_id)
            if entry is None:
                entry = self._add(node_id, "", "")
            entry.events_forwarded += accepted
            self._touch(entry)

    def take_nack(self, entry: EdgeEntry) -> int | None:
        """The version the edge NACKed since the last call, if any."""
        with self._lock:
            if not entry.nack_pending:
                return None
            entry.nack_pending = False
            return entry.last_nack_version

    def edges(self) -> list[EdgeEntry]:
        """A copy of every entry (expired ones dropped first), by node id."""
        with self._lock:
            self._expire()
            return [replace(e) for e in sorted(self._edges.values(), key=lambda e: e.node_id)]
