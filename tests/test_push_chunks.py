"""The Push chunk stream (sync/push_chunks.py): files in order, cut at CHUNK_BYTES, an empty file as one
empty chunk, the description on the first chunk only, progress up to the total."""

from __future__ import annotations

import os
from pathlib import Path

from edgewise.sync.push_chunks import CHUNK_BYTES, bundle_files, file_chunks
from edgewise.v1 import sync_pb2


def test_files_are_cut_and_come_back_whole(tmp_path: Path) -> None:
    big = os.urandom(2 * CHUNK_BYTES + 123)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(big)
    (tmp_path / "a.json").write_bytes(b"")
    exact = os.urandom(CHUNK_BYTES)
    files = [*bundle_files(tmp_path), ("inline.jsonl", exact)]
    assert [rel for rel, _ in files] == ["a.json", "sub/b.bin", "inline.jsonl"]
    seen: list[tuple[int, int]] = []
    chunks = list(file_chunks(sync_pb2.PUSH_KIND_BUNDLE, files, "note", lambda s, t: seen.append((s, t))))
    assert [(c.path, len(c.data)) for c in chunks] == [
        ("a.json", 0),
        ("sub/b.bin", CHUNK_BYTES),
        ("sub/b.bin", CHUNK_BYTES),
        ("sub/b.bin", 123),
        ("inline.jsonl", CHUNK_BYTES),
    ]
    assert b"".join(c.data for c in chunks if c.path == "sub/b.bin") == big
    assert [c.description for c in chunks] == ["note", "", "", "", ""]
    assert {c.kind for c in chunks} == {sync_pb2.PUSH_KIND_BUNDLE}
    total = len(big) + len(exact)
    assert seen[-1] == (total, total) and [s for s, _ in seen] == sorted(s for s, _ in seen)
