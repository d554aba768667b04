"""The fan-out without gRPC, over a real control store: what a subscription sends (a snapshot or the
deltas after the edge's version), the NACK backoff, heartbeats and the cap on full snapshots."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from edgewise.sync.commit_cache import CommitCache
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.sync.fanout import Fanout, SnapshotsBusy
from edgewise.sync.fleet import Fleet
from edgewise.sync.shard import Shard
from edgewise.v1 import sync_pb2

Stream = Generator[sync_pb2.SyncMessage, None, None]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ControlStore]:
    with ControlStore(tmp_path / "control", map_size=1 << 28) as s:
        s.commit([RecordChange("items", "i1", b"item 1"), RecordChange("rules", "rules", b"r")], kind="delta")
        yield s


def for_seconds(seconds: float) -> Callable[[], bool]:
    """A stream's `active`: a test that waits for a message that never comes ends instead of hanging."""
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() < deadline


def next_commit(stream: Stream) -> sync_pb2.Commit:
    """Read up to the next commit marker (skipping chunks and heartbeats)."""
    for message in stream:
        if message.WhichOneof("kind") == "commit":
            return message.commit
    raise AssertionError("the stream ended without a commit")


def test_a_new_edge_gets_a_snapshot_then_each_new_commit_as_a_delta(store: ControlStore) -> None:
    cache, fleet = CommitCache(store), Fleet()
    fanout = Fanout(cache, fleet, heartbeat_seconds=60)
    entry = fleet.connect("e1", "all", "p", 0)
    stream = fanout.stream(entry, Shard(), 0, "", for_seconds(20))
    first = next_commit(stream)
    assert first.snapshot and first.version == store.head_version() and first.changes == 2
    info = store.commit([RecordChange("items", "i2", b"item 2")], kind="delta")
    assert info is not None
    cache.notify()
    delta = next_commit(stream)
    assert not delta.snapshot and (delta.version, delta.changes) == (info.version, 1)
    assert cache.cached() == [(info.version, "all")]
    stream.close()


@pytest.mark.parametrize("case", ["ahead of the head", "another lineage", "current"])
def test_an_edge_gets_a_snapshot_unless_its_version_is_in_this_log(store: ControlStore, case: str) -> None:
    head = store.head_version()
    sent, lineage = {
        "ahead of the head": (head + 5, store.lineage),
        "another lineage": (head, "elsewhere"),
        "current": (head, store.lineage),
    }[case]
    fleet = Fleet()
    fanout = Fanout(CommitCache(store), fleet, heartbeat_seconds=0.05)
    stream = fanout.stream(fleet.connect("e1", "all", "p", sent), Shard(), sent, lineage, for_seconds(20))
    message = next(stream)
    if case == "current":
        assert message.WhichOneof("kind") == "heartbeat" and message.heartbeat.version == head
    else:
        assert message.WhichOneof("kind") == "chunk" and message.chunk.snapshot
    stream.close()


def test_a_nack_of_the_head_gets_a_snapshot_after_a_backoff(store: ControlStore) -> None:
    cache, fleet = CommitCache(store), Fleet()
    fanout = Fanout(cache, fleet, heartbeat_seconds=60)
    head = store.head_version()
    entry = fleet.connect("e1", "all", "p", head)
    stream = fanout.stream(entry, Shard(), head, store.lineage, for_seconds(20))
    fleet.nack(entry, head, "refused")
    started = time.monotonic()
    resent = next_commit(stream)
    assert resent.snapshot and resent.version == head
    assert time.monotonic() - started >= 0.4  # not resent in a tight loop
    stream.close()


def test_full_snapshots_over_the_cap_are_refused_deltas_are_not(store: ControlStore) -> None:
    fleet = Fleet()
    fanout = Fanout(CommitCache(store, chunk_bytes=4), fleet, max_snapshots=1, heartbeat_seconds=0.05)
    head = store.head_version()

    def subscribe(node: str, sent: int) -> Stream:
        entry = fleet.connect(node, "all", "p", sent)
        return fanout.stream(entry, Shard(), sent, store.lineage, for_seconds(20))

    first = subscribe("a", 0)
    assert next(first).WhichOneof("kind") == "chunk"  # mid-snapshot: holds the one slot
    second = subscribe("b", 0)
    started = time.monotonic()
    with pytest.raises(SnapshotsBusy, match="retry with backoff"):
        next(second)
    assert time.monotonic() - started >= 0.9  # it waited a second for a slot
    current = subscribe("c", head)
    assert next(current).WhichOneof("kind") == "heartbeat"
    current.close()
    first.close()  # the slot is free again
    third = subscribe("d", 0)
    assert next(third).WhichOneof("kind") == "chunk"
    third.close()
