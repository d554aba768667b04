"""`encode_commit` (sync/wire.py) writes each change once into its chunk and digests the values as they
go in: its messages are byte for byte those of the message-by-message construction it replaced (a
standalone `Change` per value copied into a `Chunk`, the digest read back from the chunk's changes,
the chunk copied into its `SyncMessage`), kept here as the reference."""

from __future__ import annotations

from collections.abc import Iterator

from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise.sync.wire import NAMESPACE_IDS, chunk_digest, encode_commit
from edgewise.v1 import sync_pb2


def _reference(
    commit: sync_pb2.Commit, changes: list[tuple[str, str, bytes | None]], chunk_bytes: int
) -> Iterator[sync_pb2.SyncMessage]:
    index = count = size = 0
    pending: list[sync_pb2.Change] = []

    def flush() -> sync_pb2.SyncMessage:
        nonlocal index, pending, size
        chunk = sync_pb2.Chunk(version=commit.version, snapshot=commit.snapshot, index=index, changes=pending)
        chunk.sha256 = chunk_digest(chunk.changes)
        index, pending, size = index + 1, [], 0
        return sync_pb2.SyncMessage(chunk=chunk)

    for namespace, key, value in changes:
        count += 1
        ns = NAMESPACE_IDS[namespace]
        if value is None:
            pending.append(sync_pb2.Change(namespace=ns, key=key, deleted=True))
            size += len(key) + 16
        else:
            offset = 0
            while True:
                part = value[offset : offset + max(chunk_bytes - size, 1)]
                offset += len(part)
                more = offset < len(value)
                pending.append(sync_pb2.Change(namespace=ns, key=key, value=part, more=more))
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
    marker.chunks, marker.changes = index, count
    yield sync_pb2.SyncMessage(commit=marker)


changes_strategy = st.lists(
    st.tuples(
        st.sampled_from(sorted(NAMESPACE_IDS)),
        st.text(min_size=1, max_size=12),  # no surrogates: a key is valid UTF-8
        st.one_of(st.none(), st.binary(max_size=3000)),
    ),
    max_size=40,
)


@settings(max_examples=examples(300), deadline=None)
@given(changes_strategy, st.integers(min_value=1, max_value=5000), st.booleans())
def test_messages_are_those_of_the_reference(
    changes: list[tuple[str, str, bytes | None]], chunk_bytes: int, snapshot: bool
) -> None:
    commit = sync_pb2.Commit(version=42, base_version=7, snapshot=snapshot, kind="refresh", lineage="l")
    got = [m.SerializeToString() for m in encode_commit(commit, changes, chunk_bytes=chunk_bytes)]
    assert got == [m.SerializeToString() for m in _reference(commit, changes, chunk_bytes)]
