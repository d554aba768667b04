"""The fleet registry without gRPC: what ACKs, NACKs, heartbeats, reconnects and forwards leave in it,
as `ctl status` and `ctl forget --status` read it."""

from __future__ import annotations

import time

from edgewise.sync.fleet import MAX_ERROR_CHARS, Fleet
from edgewise.v1 import sync_pb2


def test_a_new_edge_is_connected_not_serving_at_its_hello_version() -> None:
    fleet = Fleet()
    before = int(time.time() * 1000)
    entry = fleet.connect("e1", "region:DE", "peer-1", 7)
    [row] = fleet.edges()
    assert (row.node_id, row.shard, row.peer, row.applied_version) == ("e1", "region:DE", "peer-1", 7)
    assert row.connected and row.state == sync_pb2.EDGE_STATE_NOT_SERVING
    assert row.last_ack_version == row.last_nack_version == 0 and row.last_error == ""
    assert row.last_seen_ms >= before
    assert fleet.take_nack(entry) is None


def test_ack_makes_the_edge_ready_and_clears_its_last_error() -> None:
    fleet = Fleet()
    entry = fleet.connect("e1", "all", "p", 0)
    fleet.nack(entry, 3, "chunk 0 of version 3: sha256 does not match")
    fleet.ack(entry, 4)
    [row] = fleet.edges()
    assert (row.applied_version, row.last_ack_version, row.last_nack_version) == (4, 4, 3)
    assert row.last_error == "" and row.state == sync_pb2.EDGE_STATE_READY


def test_a_nack_is_taken_once_and_its_error_kept_bounded() -> None:
    fleet = Fleet()
    entry = fleet.connect("e1", "all", "p", 2)
    fleet.nack(entry, 3, "x" * (MAX_ERROR_CHARS + 500))
    assert entry.nack_pending
    [row] = fleet.edges()
    assert row.last_nack_version == 3 and row.applied_version == 2
    assert len(row.last_error) == MAX_ERROR_CHARS
    assert fleet.take_nack(entry) == 3
    assert fleet.take_nack(entry) is None
    fleet.nack(entry, 5, "refused")
    fleet.nack(entry, 6, "refused again")
    assert fleet.take_nack(entry) == 6  # the newest NACK since the last take


def test_a_heartbeat_reports_version_and_state() -> None:
    fleet = Fleet()
    entry = fleet.connect("e1", "all", "p", 0)
    fleet.heartbeat(entry, 9, sync_pb2.EDGE_STATE_STALE)
    [row] = fleet.edges()
    assert (row.applied_version, row.state, row.last_ack_version) == (9, sync_pb2.EDGE_STATE_STALE, 0)


def test_a_reconnect_takes_the_entry_over_and_the_old_stream_closing_changes_nothing() -> None:
    fleet = Fleet()
    old = fleet.connect("e1", "all", "p1", 3)
    old_stream = old.stream
    fleet.nack(old, 4, "bad")
    new = fleet.connect("e1", "hash:0-50/100", "p2", 5)
    assert new is old and new.stream != old_stream
    assert fleet.take_nack(new) is None  # a new stream starts over (it sends what the edge needs)
    fleet.disconnect(new, old_stream)
    [row] = fleet.edges()
    assert row.connected and (row.shard, row.peer, row.applied_version) == ("hash:0-50/100", "p2", 5)
    fleet.disconnect(new, new.stream)
    assert not fleet.edges()[0].connected


def test_forwards_count_per_edge_also_for_edges_that_never_subscribed() -> None:
    fleet = Fleet()
    fleet.forwarded("only-forwards", 10)
    fleet.forwarded("only-forwards", 5)
    entry = fleet.connect("subscribed", "all", "p", 1)
    fleet.forwarded("subscribed", 2)
    rows = {e.node_id: e for e in fleet.edges()}
    assert rows["only-forwards"].events_forwarded == 15 and not rows["only-forwards"].connected
    assert rows["subscribed"].events_forwarded == 2 and entry.events_forwarded == 2


def test_edges_are_sorted_copies() -> None:
    fleet = Fleet()
    for node in ("c", "a", "b"):
        fleet.connect(node, "all", "p", 1)
    rows = fleet.edges()
    assert [e.node_id for e in rows] == ["a", "b", "c"]
    rows[0].applied_version = 99
    rows[0].connected = False
    assert fleet.edges()[0].applied_version == 1 and fleet.edges()[0].connected


class Clock:
    """Wall-clock milliseconds a test moves on by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_edges_gone_for_longer_than_the_expiry_are_dropped_connected_ones_never() -> None:
    clock = Clock()
    fleet = Fleet(expire_after_ms=60_000, clock=clock)
    gone = fleet.connect("gone", "all", "p", 3)
    fleet.disconnect(gone, gone.stream)
    fleet.forwarded("forward-only", 2)
    silent = fleet.connect("silent-but-connected", "all", "p", 3)
    clock.now += 30_000
    back = fleet.connect("back", "all", "p", 3)
    fleet.disconnect(back, back.stream)
    clock.now += 40_000  # 70 s after the first three were heard of, 40 s after "back"
    assert [e.node_id for e in fleet.edges()] == ["back", "silent-but-connected"]
    fleet.disconnect(silent, silent.stream)
    clock.now += 30_000
    assert fleet.edges() == []
    # a node that comes back gets a fresh entry
    fleet.connect("gone", "all", "p", 5)
    assert [(e.node_id, e.applied_version) for e in fleet.edges()] == [("gone", 5)]


def test_an_expiry_of_zero_keeps_every_entry() -> None:
    clock = Clock()
    fleet = Fleet(expire_after_ms=0, clock=clock)
    fleet.forwarded("e1", 1)
    clock.now += 10**12
    assert [e.node_id for e in fleet.edges()] == ["e1"]


def test_past_the_cap_a_new_entry_drops_the_disconnected_one_heard_of_longest_ago() -> None:
    clock = Clock()
    fleet = Fleet(max_entries=3, clock=clock)
    connected = fleet.connect("connected", "all", "p", 1)
    for name in ("a", "b"):
        clock.now += 1
        fleet.forwarded(name, 1)
    clock.now += 1
    fleet.seen(connected)
    fleet.forwarded("a", 1)  # heard of again: now b is the longest gone
    fleet.forwarded("c", 1)
    assert [e.node_id for e in fleet.edges()] == ["a", "c", "connected"]
    fleet.forwarded("d", 1)
    assert [e.node_id for e in fleet.edges()] == ["c", "connected", "d"]
    # only connected entries left to drop: the registry holds them all beyond the cap
    full = Fleet(max_entries=2, clock=clock)
    for name in ("x", "y", "z"):
        full.connect(name, "all", "p", 1)
    assert [e.node_id for e in full.edges()] == ["x", "y", "z"]
