"""The central tier's fleet (docs/central.md): every replica's edges, so `ctl status` and `ctl forget
--status` show the same fleet whichever replica answers.

Each replica keeps its own registry (`sync/fleet.py`) of the edges subscribed or forwarding to it, and
every `PUBLISH_S` puts each entry in the KV bucket `EDGEWISE_FLEET` (key: `edge.<hex of the node id>`,
value: msgpack of the entry, its `serving` and `shadow` figures as their protobuf bytes, the replica's id
and the time it was published). `edges()` merges the local
registry with the bucket: per node, the entry heard of last; an entry another replica stopped refreshing
for `STALE_S` (the replica died) shows as disconnected. The rollout watch reads the canary and the other
edges' figures from there, whichever replica they follow (docs/rollouts.md).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Final

import msgpack

from edgewise.sync.fleet import EdgeEntry, Fleet
from edgewise.sync.nats_bridge import NatsBridge
from edgewise.v1 import sync_pb2

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

__all__ = ["FLEET_BUCKET", "FleetShare", "decode_entry", "encode_entry"]

FLEET_BUCKET: Final = "EDGEWISE_FLEET"
PUBLISH_S: Final = 1.0
STALE_S: Final = 5.0
_FIELDS: Final = [f.name for f in dataclasses.fields(EdgeEntry)]
_MESSAGES: Final[dict[str, type[sync_pb2.ServingStats] | type[sync_pb2.ShadowStats]]] = {
    "serving": sync_pb2.ServingStats,
    "shadow": sync_pb2.ShadowStats,
}  # kept as their protobuf bytes


def encode_entry(entry: EdgeEntry, replica_id: str, now_ms: int) -> bytes:
    """An edge's entry as the bucket holds it."""
    doc: dict[str, object] = {name: getattr(entry, name) for name in _FIELDS if name not in _MESSAGES}
    for name in _MESSAGES:
        stats = getattr(entry, name)
        doc[name] = None if stats is None else stats.SerializeToString()
    doc["replica"], doc["published_ms"] = replica_id, now_ms
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


def decode_entry(raw: bytes) -> tuple[EdgeEntry, str, int]:
    """(the entry, the replica that published it, when) from the bucket."""
    doc = msgpack.unpackb(raw, raw=False)
    fields = {name: doc[name] for name in _FIELDS if name in doc and name not in _MESSAGES}
    entry = EdgeEntry(**fields)
    for name, message in _MESSAGES.items():
        if doc.get(name) is not None:
            setattr(entry, name, message.FromString(doc[name]))
    return entry, str(doc.get("replica", "")), int(doc.get("published_ms", 0))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class FleetShare:
    def __init__(self, bridge: NatsBridge, fleet: Fleet, replica_id: str, *, replicas: int = 3) -> None:
        self.bridge = bridge
        self.fleet = fleet
        self.replica_id = replica_id
        self.replicas = replicas
        self._kv: KeyValue | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-share", daemon=True)
        self._cache: tuple[float, list[EdgeEntry]] = (0.0, [])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    async def _bucket(self) -> KeyValue:
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BucketNotFoundError, NotFoundError

        if self._kv is None:
            try:
                self._kv = await self.bridge.js.key_value(FLEET_BUCKET)
            except (BucketNotFoundError, NotFoundError):
                self._kv = await self.bridge.js.create_key_value(
                    KeyValueConfig(bucket=FLEET_BUCKET, replicas=self.replicas, storage=StorageType.FILE)
                )
        return self._kv

    async def _publish(self, entries: list[EdgeEntry]) -> None:
        kv = await self._bucket()
        now = _now_ms()
        for entry in entries:
            await kv.put(f"edge.{entry.node_id.encode().hex()}", encode_entry(entry, self.replica_id, now))

    def _run(self) -> None:
        while not self._stop.wait(PUBLISH_S):
            try:
                self.bridge.run(self._publish(self.fleet.edges()), 10.0)
            except Exception as exc:
                log.info("fleet_publish_failed", extra={"error": repr(exc)[:200]})

    async def _read(self) -> list[EdgeEntry]:
        from nats.js.errors import NoKeysError

        kv = await self._bucket()
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        out = []
        now = _now_ms()
        for key in keys:
            entry = await kv.get(key)
            if not entry.value:
                continue
            shared, replica, published_ms = decode_entry(entry.value)
            stale = replica != self.replica_id and now - published_ms > STALE_S * 1000
            if stale:
                shared.connected = False
            out.append(shared)
        return out

    def edges(self) -> list[EdgeEntry]:
        """This replica's edges and every other replica's, the entry heard of last per node, by node id."""
        merged = {e.node_id: e for e in self.fleet.edges()}
        at, cached = self._cache
        if time.monotonic() - at > 0.5:
            try:
                cached = self.bridge.run(self._read(), 5.0)
                self._cache = (time.monotonic(), cached)
            except Exception as exc:
                log.info("fleet_read_failed", extra={"error": repr(exc)[:200]})
        for entry in cached:
            mine = merged.get(entry.node_id)
            if mine is None or (entry.last_seen_ms > mine.last_seen_ms and not mine.connected):
                merged[entry.node_id] = entry
        return [merged[k] for k in sorted(merged)]
