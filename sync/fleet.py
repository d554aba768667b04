"""The control plane's fleet registry: what it knows of every edge that subscribed or forwarded since it
started (node id, shard, applied version, last ACK and NACK, reported state, connection).

`ctl status` and `ctl forget --status` read it (through the service's `Status` and `ForgetStatus`). An
edge's entry lives as long as the process: a reconnect under the same node id takes the entry over
(`connect` gives it a new stream number), and only the stream that owns it marks it disconnected, so an
old stream closing after its replacement opened changes nothing. A NACK is remembered until its stream
takes it (`take_nack`), which then sends a full snapshot. Thread-safe: the subscription streams, their
request readers and `Forward` calls update it from their own threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Final

from edgewise.v1 import sync_pb2

__all__ = ["MAX_ERROR_CHARS", "EdgeEntry", "Fleet"]

MAX_ERROR_CHARS: Final = 2000
"""A NACK's error is kept up to this many characters."""


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


class Fleet:
    """The registry of edges: updated by subscriptions and forwards, read as a sorted copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._edges: dict[str, EdgeEntry] = {}
        self._streams = 0

    def connect(self, node_id: str, shard: str, peer: str, version: int) -> EdgeEntry:
        """A subscription opened with hello: the edge's entry, now owned by a new stream number."""
        with self._lock:
            self._streams += 1
            entry = self._edges.get(node_id)
            if entry is None:
                entry = EdgeEntry(node_id, shard, peer)
                self._edges[node_id] = entry
            entry.shard = shard
            entry.peer = peer
            entry.applied_version = version
            entry.connected = True
            entry.last_seen_ms = _now_ms()
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
            entry.last_seen_ms = _now_ms()
            entry.applied_version = version
            entry.last_ack_version = version
            entry.last_error = ""
            entry.state = sync_pb2.EDGE_STATE_READY

    def nack(self, entry: EdgeEntry, version: int, error: str) -> None:
        """The edge refused `version` (nothing of it applied): kept for `take_nack` and for status."""
        with self._lock:
            entry.last_seen_ms = _now_ms()
            entry.last_nack_version = version
            entry.last_error = error[:MAX_ERROR_CHARS]
            entry.nack_pending = True

    def heartbeat(self, entry: EdgeEntry, version: int, state: sync_pb2.EdgeState.ValueType) -> None:
        """The edge's own report of its applied version and readiness."""
        with self._lock:
            entry.last_seen_ms = _now_ms()
            entry.applied_version = version
            entry.state = state

    def seen(self, entry: EdgeEntry) -> None:
        """Any other message from the edge."""
        with self._lock:
            entry.last_seen_ms = _now_ms()

    def forwarded(self, node_id: str, accepted: int) -> None:
        """The edge forwarded events, `accepted` of them new (an edge may forward without subscribing)."""
        with self._lock:
            entry = self._edges.get(node_id)
            if entry is None:
                entry = EdgeEntry(node_id, "", "")
                self._edges[node_id] = entry
            entry.events_forwarded += accepted
            entry.last_seen_ms = _now_ms()

    def take_nack(self, entry: EdgeEntry) -> int | None:
        """The version the edge NACKed since the last call, if any."""
        with self._lock:
            if not entry.nack_pending:
                return None
            entry.nack_pending = False
            return entry.last_nack_version

    def edges(self) -> list[EdgeEntry]:
        """A copy of every entry, by node id."""
        with self._lock:
            return [replace(e) for e in sorted(self._edges.values(), key=lambda e: e.node_id)]
