"""The sync stream's framing: commits cut into checksummed chunks, and put back together on the edge.

A commit travels as `Chunk` messages (index 0, 1, ...) followed by one `Commit` marker. A chunk holds
whole changes up to about `chunk_bytes` of values; a value larger than that is cut into parts over
consecutive chunks (every part but the last has `more` set). Each chunk carries the SHA-256 of its
changes, computed by `chunk_digest`: for every change in order, the namespace number (1 byte), the
key's UTF-8 length (4 bytes, big-endian) and bytes, a flags byte (1 = deleted, 2 = more) and the
value's length (4 bytes, big-endian) and bytes. The edge checks every digest, the chunk order and the
change count before it applies anything (`Assembler`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from edgewise.v1 import sync_pb2

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "NAMESPACE_IDS",
    "NAMESPACE_NAMES",
    "Assembler",
    "FramingError",
    "chunk_digest",
    "encode_commit",
]

DEFAULT_CHUNK_BYTES: Final = 1 << 20  # well under gRPC's 4 MiB default message limit
NAMESPACE_IDS: Final = {
    "profiles": sync_pb2.NAMESPACE_PROFILES,
    "items": sync_pb2.NAMESPACE_ITEMS,
    "models": sync_pb2.NAMESPACE_MODELS,
    "rules": sync_pb2.NAMESPACE_RULES,
    "forgotten": sync_pb2.NAMESPACE_FORGOTTEN,
}
NAMESPACE_NAMES: Final = {number: name for name, number in NAMESPACE_IDS.items()}
_HEAD: Final = struct.Struct(">BI")  # namespace number, key length
_FLAGS_LEN: Final = struct.Struct(">BI")  # flags, value length


class FramingError(ValueError):
    """A commit that did not arrive whole: bad digest, chunk out of order, wrong count."""


def chunk_digest(changes: Iterable[sync_pb2.Change]) -> bytes:
    parts: list[bytes] = []
    for change in changes:
        flags = (1 if change.deleted else 0) | (2 if change.more else 0)
        parts += _digested(change.namespace, change.key.encode(), flags, change.value)
    return hashlib.sha256(b"".join(parts)).digest()


def _digested(namespace: int, key: bytes, flags: int, value: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """The bytes one change adds to its chunk's digest (module doc): namespace and key length, key,
    flags and value length, value."""
    return _HEAD.pack(namespace & 0xFF, len(key)), key, _FLAGS_LEN.pack(flags, len(value)), value


def encode_commit(
    commit: sync_pb2.Commit,
    changes: Iterable[tuple[str, str, bytes | None]],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[sync_pb2.SyncMessage]:
    """The messages of one commit: its chunks, then its marker (with `chunks` and `changes` filled in).
    Each change is written once, into its chunk's message (no standalone `Change` copied in, no chunk
    copied into its `SyncMessage`), and the chunk's digest is made from the values as they go in (the
    bytes `chunk_digest` reads back from the chunk)."""
    index = 0
    count = 0
    pending: list[tuple[int, str, bytes, bool, bool]] = []  # namespace, key, value part, deleted, more
    digest: list[bytes] = []
    size = 0

    def flush() -> sync_pb2.SyncMessage:
        nonlocal index, pending, digest, size
        message = sync_pb2.SyncMessage()
        chunk = message.chunk
        chunk.version, chunk.snapshot, chunk.index = commit.version, commit.snapshot, index
        add = chunk.changes.add
        for ns, key, part, deleted, more in pending:
            if deleted:
                add(namespace=ns, key=key, deleted=True)
            else:
                add(namespace=ns, key=key, value=part, more=more)
        chunk.sha256 = hashlib.sha256(b"".join(digest)).digest()
        index += 1
        pending = []
        digest = []
        size = 0
        return message

    for namespace, key, value in changes:
        count += 1
        ns = NAMESPACE_IDS[namespace]
        key_bytes = key.encode()
        if value is None:
            pending.append((ns, key, b"", True, False))
            digest += _digested(ns, key_bytes, 1, b"")
            size += len(key) + 16
        else:
            offset = 0
            while True:
                room = max(chunk_bytes - size, 1)
                part = value[offset : offset + room]
                offset += len(part)
                more = offset < len(value)
                pending.append((ns, key, part, False, more))
                digest += _digested(ns, key_bytes, 2 if more else 0, part)
                size += len(part) + len(key) + 16
                if not more:
                    break
                yield flush()
        if size >= chunk_bytes:
            yield flush()
    if pending or index == 0:
        yield flush()
    marker = sync_pb2.Commit()
    marker.CopyFrom(commit)
    marker.chunks = index
    marker.changes = count
    yield sync_pb2.SyncMessage(commit=marker)


@dataclass(slots=True)
class Assembler:
    """Collects the chunks of one commit; `finish` checks the marker and returns the changes."""

    version: int = 0
    snapshot: bool = False
    next_index: int = 0
    changes: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)
    _parts: list[bytes] = field(default_factory=list)
    _part_key: tuple[int, str] | None = None

    def add(self, chunk: sync_pb2.Chunk) -> None:
        if chunk.index == 0:
            self.reset()
            self.version = chunk.version
            self.snapshot = chunk.snapshot
        elif chunk.version != self.version or chunk.index != self.next_index:
            raise FramingError(
                f"chunk {chunk.index} of version {chunk.version} arrived, expected chunk {self.next_index} "
                f"of version {self.version}"
            )
        if chunk_digest(chunk.changes) != chunk.sha256:
            raise FramingError(f"chunk {chunk.index} of version {chunk.version}: sha256 does not match")
        self.next_index = chunk.index + 1
        for change in chunk.changes:
            name = NAMESPACE_NAMES.get(change.namespace)
            if name is None:
                raise FramingError(f"version {chunk.version}: unknown namespace {change.namespace}")
            ident = (change.namespace, change.key)
            if self._part_key is not None and self._part_key != ident:
                raise FramingError(f"version {chunk.version}: a value cut into parts was not finished")
            if change.deleted:
                self.changes.append((name, change.key.encode(), None))
                continue
            self._parts.append(change.value)
            if change.more:
                self._part_key = ident
                continue
            value = change.value if len(self._parts) == 1 else b"".join(self._parts)
            self._parts = []
            self._part_key = None
            self.changes.append((name, change.key.encode(), value))

    def finish(self, commit: sync_pb2.Commit) -> list[tuple[str, bytes, bytes | None]]:
        """The commit's changes, once its marker agrees with what arrived."""
        if commit.chunks != self.next_index or (commit.chunks and commit.version != self.version):
            raise FramingError(
                f"commit {commit.version}: marker says {commit.chunks} chunks, {self.next_index} arrived"
            )
        if self._part_key is not None:
            raise FramingError(f"commit {commit.version}: its last value was cut short")
        if len(self.changes) != commit.changes:
            raise FramingError(
                f"commit {commit.version}: marker says {commit.changes} changes, {len(self.changes)} arrived"
            )
        changes = self.changes
        self.reset()
        return changes

    def reset(self) -> None:
        self.version = 0
        self.snapshot = False
        self.next_index = 0
        self.changes = []
        self._parts = []
        self._part_key = None
