"""The sync stream's framing (sync/wire.py) and shard selectors (sync/shard.py)."""

from __future__ import annotations

import random

import msgpack
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise.core.bucketing import murmur3_32
from edgewise.sync.shard import Shard, ShardError, parse_shard
from edgewise.sync.wire import Assembler, FramingError, encode_commit
from edgewise.v1 import sync_pb2

_NS = ("profiles", "items", "models", "rules")

changes_strategy = st.lists(
    st.tuples(
        st.sampled_from(_NS),
        st.text(alphabet="abcdef0123456789", min_size=1, max_size=12),
        st.one_of(st.none(), st.binary(max_size=3000)),
    ),
    max_size=40,
)


def _roundtrip(
    changes: list[tuple[str, str, bytes | None]], chunk_bytes: int, snapshot: bool = False
) -> tuple[list[sync_pb2.SyncMessage], list[tuple[str, bytes, bytes | None]]]:
    commit = sync_pb2.Commit(version=42, base_version=7, snapshot=snapshot, kind="delta")
    messages = list(encode_commit(commit, changes, chunk_bytes=chunk_bytes))
    assembler = Assembler()
    out: list[tuple[str, bytes, bytes | None]] = []
    for m in messages:
        if m.WhichOneof("kind") == "chunk":
            assembler.add(m.chunk)
        else:
            out = assembler.finish(m.commit)
    return messages, out


@settings(max_examples=examples(200), deadline=None)
@given(changes_strategy, st.integers(min_value=1, max_value=5000))
def test_commit_roundtrips_through_chunks(
    changes: list[tuple[str, str, bytes | None]], chunk_bytes: int
) -> None:
    messages, out = _roundtrip(changes, chunk_bytes)
    assert out == [(ns, key.encode(), value) for ns, key, value in changes]
    marker = messages[-1].commit
    assert marker.version == 42 and marker.base_version == 7
    assert marker.changes == len(changes)
    assert marker.chunks == len(messages) - 1


def test_large_value_is_cut_into_parts_under_the_chunk_size() -> None:
    big = random.Random(1).randbytes(5 << 20)
    messages, out = _roundtrip([("models", "item_embeddings", big), ("items", "i1", b"x")], 1 << 20)
    assert out == [("models", b"item_embeddings", big), ("items", b"i1", b"x")]
    assert all(m.ByteSize() < (1 << 20) + 4096 for m in messages)
    assert len(messages) >= 6


def test_corrupted_chunk_is_refused() -> None:
    commit = sync_pb2.Commit(version=3)
    messages = list(encode_commit(commit, [("items", "a", b"1" * 100)], chunk_bytes=64))
    chunk = messages[0].chunk
    chunk.changes[0].value = b"2" + chunk.changes[0].value[1:]
    with pytest.raises(FramingError, match="sha256"):
        Assembler().add(chunk)


def test_missing_chunk_and_wrong_count_are_refused() -> None:
    commit = sync_pb2.Commit(version=3)
    messages = list(encode_commit(commit, [("items", str(i), b"v" * 50) for i in range(10)], chunk_bytes=64))
    assert len(messages) > 3
    assembler = Assembler()
    assembler.add(messages[0].chunk)
    with pytest.raises(FramingError, match="expected chunk 1"):
        assembler.add(messages[2].chunk)
    assembler = Assembler()
    for m in messages[:-2]:
        assembler.add(m.chunk)
    with pytest.raises(FramingError, match="marker says"):
        assembler.finish(messages[-1].commit)


def test_empty_commit_still_has_one_chunk() -> None:
    messages, out = _roundtrip([], 1024)
    assert out == [] and len(messages) == 2


def test_parse_shard_forms_and_errors() -> None:
    assert parse_shard("all").everything
    assert parse_shard("hash:0-50/100") == Shard(hash_space=100, hash_lo=0, hash_hi=50)
    assert parse_shard("region:DE, AT").regions == frozenset({"DE", "AT"})
    assert parse_shard("hash:10-20/100").text() == "hash:10-20/100"
    for bad in ("hash:50-10/100", "hash:0-200/100", "region:", "everything", "region:a b"):
        with pytest.raises(ShardError):
            parse_shard(bad)


def test_hash_shards_partition_users() -> None:
    halves = [parse_shard("hash:0-50/100"), parse_shard("hash:50-100/100")]
    users = [f"u{i}" for i in range(2000)]
    held = [[u for u in users if s.holds(u, None)] for s in halves]
    assert sorted(held[0] + held[1]) == sorted(users)
    assert 800 < len(held[0]) < 1200
    assert all(murmur3_32(u.encode(), 0) % 100 < 50 for u in held[0])


def test_region_shard_reads_region_else_country() -> None:
    shard = parse_shard("region:DE")

    def profile(attributes: dict[str, object]) -> bytes:
        return bytes(msgpack.packb({"s": 1, "v": 0, "a": attributes, "c": {}, "e": None}))

    assert shard.holds("u", profile({"country": "DE"}))
    assert shard.holds("u", profile({"region": "DE", "country": "FR"}))
    assert not shard.holds("u", profile({"country": "FR"}))
    assert shard.holds("u", None)  # deletes reach every edge
    assert Shard.from_proto(shard.to_proto()) == shard
