"""The commit cache without gRPC, over a real control store: each commit encoded once per shard and
shared, shards filtered, the cache bounded by bytes (least recently used out first), full snapshots,
and the wait that a commit's notify ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from edgewise.sync.commit_cache import CommitCache
from edgewise.sync.control_store import CommitInfo, ControlStore, RecordChange
from edgewise.sync.shard import Shard, parse_shard
from edgewise.sync.wire import Assembler
from edgewise.v1 import sync_pb2

MAP_SIZE = 1 << 28


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ControlStore]:
    with ControlStore(tmp_path / "control", map_size=MAP_SIZE) as s:
        yield s


def profile(region: str) -> bytes:
    return msgpack.packb({"a": {"region": region}}, use_bin_type=True)


def commit(store: ControlStore, *changes: RecordChange) -> tuple[CommitInfo, list[RecordChange]]:
    info = store.commit(changes, kind="delta")
    assert info is not None
    [(found, stored)] = [c for c in store.commits_after(info.base_version) if c[0].version == info.version]
    assert found == info
    return info, stored


def decoded(
    messages: list[sync_pb2.SyncMessage],
) -> tuple[sync_pb2.Commit, list[tuple[str, str, bytes | None]]]:
    """The commit marker and the changes, put back together as the edge does."""
    assembler = Assembler()
    for message in messages[:-1]:
        assert message.WhichOneof("kind") == "chunk"
        assembler.add(message.chunk)
    marker = messages[-1]
    assert marker.WhichOneof("kind") == "commit"
    changes = assembler.finish(marker.commit)
    return marker.commit, [(ns, key.decode(), value) for ns, key, value in changes]


def test_a_commit_is_encoded_once_per_shard_and_shared(store: ControlStore) -> None:
    info, changes = commit(
        store, RecordChange("items", "i1", b"item"), RecordChange("profiles", "u1", profile("DE"))
    )
    cache = CommitCache(store)
    everything = cache.encoded(info, changes, Shard())
    assert cache.encoded(info, changes, Shard()) is everything
    de = cache.encoded(info, changes, parse_shard("region:DE"))
    assert de is not everything
    assert cache.cached() == [(info.version, "all"), (info.version, "region:DE")]
    marker, got = decoded(everything)
    assert (marker.version, marker.base_version, marker.kind, marker.lineage) == (
        info.version,
        info.base_version,
        "delta",
        store.lineage,
    )
    assert marker.created_at_ms == info.created_at_ms and not marker.snapshot
    assert got == [(c.namespace, c.key, c.value) for c in changes]


def test_each_shard_gets_its_profiles_and_region_shards_a_delete_for_the_others(store: ControlStore) -> None:
    commit(store, RecordChange("profiles", "gone", profile("FR")))
    info, changes = commit(
        store,
        RecordChange("rules", "rules", b"r"),
        RecordChange("profiles", "de-user", profile("DE")),
        RecordChange("profiles", "fr-user", profile("FR")),
        RecordChange("profiles", "gone", None),
    )
    cache = CommitCache(store)
    _, de = decoded(cache.encoded(info, changes, parse_shard("region:DE")))
    assert de == [
        ("rules", "rules", b"r"),
        ("profiles", "de-user", profile("DE")),
        ("profiles", "fr-user", None),  # moved out of the region: it must leave a DE edge
        ("profiles", "gone", None),  # a delete: every edge drops what it does not hold
    ]
    half = parse_shard("hash:0-50/100")
    _, hashed = decoded(cache.encoded(info, changes, half))
    kept = [c.key for c in changes if c.namespace == "profiles" and half.holds(c.key, c.value)]
    assert [key for ns, key, _ in hashed if ns == "profiles"] == kept  # the others are left out
    assert ("rules", "rules", b"r") in hashed


def test_the_cache_is_bounded_by_bytes_least_recently_used_out_first(store: ControlStore) -> None:
    # each commit: one change of 8 + 60 + 32 = 100 bytes as the cache counts them
    commits = [commit(store, RecordChange("items", f"item-{n:03d}", bytes([n]) * 60)) for n in range(3)]
    cache = CommitCache(store, budget_bytes=250)
    for info, changes in commits[:2]:
        cache.encoded(info, changes, Shard())
    assert cache.cached_bytes == 200
    first, _, third = (info.version for info, _ in commits)
    kept = cache.encoded(*commits[0], Shard())  # a hit: now the most recently used
    cache.encoded(*commits[2], Shard())
    assert cache.cached() == [(first, "all"), (third, "all")]  # the second went out, not the first
    assert cache.cached_bytes == 200
    assert cache.encoded(*commits[0], Shard()) is kept
    big_info, big_changes = commit(store, RecordChange("items", "big", b"x" * 300))
    messages = cache.encoded(big_info, big_changes, Shard())
    assert decoded(messages)[1] == [("items", "big", b"x" * 300)]  # sent, but over the budget: not kept
    assert cache.cached() == [(third, "all"), (first, "all")] and cache.cached_bytes == 200


def test_a_snapshot_holds_the_head_for_the_shard(store: ControlStore) -> None:
    commit(
        store,
        RecordChange("rules", "rules", b"r"),
        RecordChange("items", "i1", b"item"),
        RecordChange("models", "m", b"model"),
        RecordChange("profiles", "de-user", profile("DE")),
        RecordChange("profiles", "fr-user", profile("FR")),
    )
    head, _ = commit(store, RecordChange("items", "i2", b"item 2"))
    cache = CommitCache(store, chunk_bytes=16)
    messages: list[sync_pb2.SyncMessage] = []
    snapshot = cache.snapshot(parse_shard("region:DE"))
    try:
        while True:
            messages.append(next(snapshot))
    except StopIteration as done:
        assert done.value == head.version
    marker, got = decoded(messages)
    assert marker.snapshot and marker.version == head.version and marker.lineage == store.lineage
    assert marker.created_at_ms == head.created_at_ms
    assert len(messages) > 3  # chunked at 16 bytes of values
    assert got == [
        ("rules", "rules", b"r"),
        ("models", "m", b"model"),
        ("items", "i1", b"item"),
        ("items", "i2", b"item 2"),
        ("profiles", "de-user", profile("DE")),  # outside the region: left out, not deleted
    ]
    assert cache.cached() == []  # snapshots are not kept


def test_wait_ends_at_notify_or_at_its_timeout(store: ControlStore) -> None:
    cache = CommitCache(store)
    started = time.monotonic()
    cache.wait(0.05)
    assert 0.04 <= time.monotonic() - started < 5
    woken = threading.Event()

    def waiter() -> None:
        cache.wait(30)
        woken.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not woken.is_set() and time.monotonic() < deadline:
        cache.notify()  # until the waiter is in its wait
        woken.wait(0.05)
    assert woken.is_set()
    thread.join(5)
