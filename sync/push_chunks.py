"""The chunk stream of a `Push` (sync.proto's PushChunk): a bundle directory's files, or one delta file,
cut into chunks of at most `CHUNK_BYTES`.

Each chunk carries part of one file, files in order (a bundle's sorted by path), its relative path on
every chunk; the first chunk carries the push's description. An empty file is one chunk with no data.
`progress(sent, total)` is called after each chunk is handed to gRPC, with the bytes of file content
sent so far and the total.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from edgewise.v1 import sync_pb2

__all__ = ["CHUNK_BYTES", "Progress", "bundle_files", "file_chunks"]

CHUNK_BYTES: Final = 1 << 20

Progress = Callable[[int, int], None]


def bundle_files(root: Path) -> list[tuple[str, Path]]:
    """(relative path, file) of every file under a bundle directory, sorted by path."""
    return [(p.relative_to(root).as_posix(), p) for p in sorted(p for p in root.rglob("*") if p.is_file())]


def file_chunks(
    kind: sync_pb2.PushKind.ValueType,
    files: list[tuple[str, Path | bytes]],
    description: str,
    progress: Progress | None = None,
    rollout: sync_pb2.PushChunk | None = None,
) -> Iterator[sync_pb2.PushChunk]:
    """The chunks of `files`: (relative path, file on disk or the bytes themselves), in the order given.
    `rollout`: the canary / shadow fields the first chunk carries (docs/rollouts.md)."""
    total = sum(len(f) if isinstance(f, bytes) else f.stat().st_size for _, f in files)
    sent = 0
    first = True
    for rel, source in files:
        for data in _pieces(source):
            chunk = sync_pb2.PushChunk(kind=kind, path=rel, data=data)
            if first:
                if rollout is not None:
                    chunk.MergeFrom(rollout)
                chunk.description = description
                first = False
            sent += len(data)
            if progress is not None:
                progress(sent, total)
            yield chunk


def _pieces(source: Path | bytes) -> Iterator[bytes]:
    """A file's content in pieces of at most CHUNK_BYTES; one empty piece for an empty file."""
    if isinstance(source, bytes):
        yield source[:CHUNK_BYTES]
        for start in range(CHUNK_BYTES, len(source), CHUNK_BYTES):
            yield source[start : start + CHUNK_BYTES]
        return
    with source.open("rb") as fh:
        data = fh.read(CHUNK_BYTES)
        yield data
        while data := fh.read(CHUNK_BYTES):
            yield data
