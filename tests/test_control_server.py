"""The ControlPlane service in-process: the cap on concurrent full snapshots, hello validation, records
of forgotten users forwarded after the forget, and the forget status's limits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.v1 import sync_pb2, sync_pb2_grpc


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ControlStore, str]]:
    store = ControlStore(tmp_path / "control")
    # a state far larger than HTTP/2 flow-control windows: a stream nobody reads stays mid-snapshot
    store.commit(
        (RecordChange("profiles", f"u{i}", bytes([i % 251]) * 2048) for i in range(20_000)), kind="delta"
    )
    service = ControlPlaneService(store, max_snapshots=1, heartbeat_seconds=0.5, chunk_bytes=64 << 10)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _DONE.clear()
    try:
        yield store, f"127.0.0.1:{port}"
    finally:
        _DONE.set()
        server.stop(0).wait()
        store.close()


_DONE = threading.Event()
TS = 1_750_000_000_000  # an event time Track accepts (Unix ms, after 2000)


def _hello(node: str, version: int = 0, lineage: str = "") -> Iterator[sync_pb2.SubscribeRequest]:
    yield sync_pb2.SubscribeRequest(hello=sync_pb2.Hello(node_id=node, last_version=version, lineage=lineage))
    _DONE.wait(30)  # keep the request stream open, sending nothing more


def test_a_second_full_snapshot_over_the_cap_is_refused_then_admitted(
    served: tuple[ControlStore, str],
) -> None:
    store, address = served
    with grpc.insecure_channel(address) as ch1, grpc.insecure_channel(address) as ch2:
        first = sync_pb2_grpc.ControlPlaneStub(ch1).Subscribe(_hello("a"))
        assert next(first).WhichOneof("kind") == "chunk"  # streaming its snapshot, then not read on
        second = sync_pb2_grpc.ControlPlaneStub(ch2).Subscribe(_hello("b"), timeout=20)
        with pytest.raises(grpc.RpcError) as refused:
            for _ in second:
                pass
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry with backoff" in (refused.value.details() or "")
        # an edge that is current needs no snapshot and is not held back by the cap
        current = sync_pb2_grpc.ControlPlaneStub(ch2).Subscribe(
            _hello("c", store.head_version(), store.lineage), timeout=20
        )
        assert next(current).WhichOneof("kind") == "heartbeat"
        current.cancel()
        first.cancel()
    with grpc.insecure_channel(address) as ch3:
        third = sync_pb2_grpc.ControlPlaneStub(ch3).Subscribe(_hello("d"), timeout=20)
        assert next(third).WhichOneof("kind") == "chunk"
        third.cancel()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (sync_pb2.SubscribeRequest(ack=sync_pb2.Ack(version=1)), "must start with hello"),
        (sync_pb2.SubscribeRequest(hello=sync_pb2.Hello(node_id="")), "node_id"),
        (
            sync_pb2.SubscribeRequest(
                hello=sync_pb2.Hello(
                    node_id="x", shard=sync_pb2.ShardSelector(hash_space=10, hash_lo=5, hash_hi=2)
                )
            ),
            "hello.shard",
        ),
    ],
)
def test_bad_hello_is_invalid_argument(
    served: tuple[ControlStore, str], request_: sync_pb2.SubscribeRequest, message: str
) -> None:
    _, address = served
    with grpc.insecure_channel(address) as ch:
        call = sync_pb2_grpc.ControlPlaneStub(ch).Subscribe(iter([request_]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            next(call)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (refused.value.details() or "")


def test_records_of_a_forgotten_user_forwarded_after_the_forget_are_dropped(tmp_path: Path) -> None:
    # An edge that has not applied a forget yet still forwards what it queued for that user: the control
    # plane acknowledges those records (so the edge drops them) and does not store them again.
    from edgewise.core.activity import Event
    from edgewise.sync.event_store import EventStore

    store = ControlStore(tmp_path / "control")
    events = EventStore(tmp_path / "events", map_size=64 << 20)
    store.commit([RecordChange("profiles", u, b"\x80") for u in ("u1", "u2")], kind="delta")
    service = ControlPlaneService(store, events=events)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def batch(tag: str, first_seq: int) -> sync_pb2.ForwardRequest:
        """Three events: u1, u2, u1 (each with its own id)."""
        users = ("u1", "u2", "u1")
        records = [
            sync_pb2.OutboxRecord(
                seq=first_seq + n,
                kind="event",
                payload=Event(f"{tag}-{n}", "view", user, "", "i1", "", "", 0.0, TS).encode(),
            )
            for n, user in enumerate(users)
        ]
        return sync_pb2.ForwardRequest(node_id="edge-a", records=records)

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = sync_pb2_grpc.ControlPlaneStub(channel)
            before = stub.Forward(batch("a", 1), timeout=10)
            assert (before.accepted, before.forgotten) == (3, 0)
            assert stub.Forget(sync_pb2.ForgetRequest(user_id="u1"), timeout=10).events_removed == 2
            after = stub.Forward(batch("b", 4), timeout=10)
            assert (after.acked_seq, after.accepted, after.duplicates, after.forgotten) == (6, 1, 0, 2)
        assert sorted(e["u"] for _, _, e in events.events()) == ["u2", "u2"]
    finally:
        server.stop(0).wait()
        events.close()
        store.close()


def test_forget_status_lists_the_newest_forgets_or_one_user_within_a_cap(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control")
    store.commit([RecordChange("profiles", f"u{n}", b"\x80") for n in range(5)], kind="delta")
    service = ControlPlaneService(store)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = sync_pb2_grpc.ControlPlaneStub(channel)
            versions = {
                u: stub.Forget(sync_pb2.ForgetRequest(user_id=u), timeout=10).version
                for u in ("u3", "u0", "u4", "u1")
            }
            newest = stub.ForgetStatus(sync_pb2.ForgetStatusRequest(limit=2), timeout=10)
            assert newest.total == 4
            assert [(u.user_id, u.version) for u in newest.users] == [
                ("u1", versions["u1"]),
                ("u4", versions["u4"]),
            ]
            one = stub.ForgetStatus(sync_pb2.ForgetStatusRequest(user_id="u0"), timeout=10)
            assert [(u.user_id, u.version) for u in one.users] == [("u0", versions["u0"])] and one.total == 4
            assert not stub.ForgetStatus(sync_pb2.ForgetStatusRequest(user_id="u2"), timeout=10).users
            assert (
                len(stub.ForgetStatus(sync_pb2.ForgetStatusRequest(), timeout=10).users) == 4
            )  # default 100
            with pytest.raises(grpc.RpcError) as refused:
                stub.ForgetStatus(sync_pb2.ForgetStatusRequest(limit=5_000), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "5000 is over the cap of 1000" in str(refused.value.details())
    finally:
        server.stop(0).wait()
        store.close()


def test_a_record_that_can_never_be_stored_is_acked_and_dropped_not_refused_forever(tmp_path: Path) -> None:
    # The edge's forwarder sends a refused batch again and again: one bad record must not stop the rest.
    from edgewise.core.activity import Event
    from edgewise.sync.event_store import EventStore

    store = ControlStore(tmp_path / "control")
    events = EventStore(tmp_path / "events", map_size=64 << 20)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(ControlPlaneService(store, events=events), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    good = Event("g1", "view", "u1", "", "i1", "", "", 0.0, TS).encode()
    records = [
        sync_pb2.OutboxRecord(seq=1, kind="event", payload=b"\xc1 not msgpack"),
        sync_pb2.OutboxRecord(seq=2, kind="event", payload=good),
        sync_pb2.OutboxRecord(seq=3, kind="weird", payload=good),
        sync_pb2.OutboxRecord(seq=4, kind="exposure", payload=b"\x80"),  # a map without an id
    ]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = sync_pb2_grpc.ControlPlaneStub(channel).Forward(
                sync_pb2.ForwardRequest(node_id="edge-a", records=records), timeout=10
            )
        assert (reply.acked_seq, reply.accepted, reply.rejected) == (4, 1, 3)
        assert [e["id"] for _, _, e in events.events()] == ["g1"]
    finally:
        server.stop(0).wait()
        events.close()
        store.close()


def test_history_shows_each_commits_number_of_changes(tmp_path: Path) -> None:
    from edgewise.client import ControlClient

    store = ControlStore(tmp_path / "control")
    store.commit(
        [RecordChange("profiles", f"u{n}", b"\x80") for n in range(3)], kind="delta", description="three"
    )
    store.commit([RecordChange("profiles", "u0", None)], kind="delta", description="one")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(ControlPlaneService(store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with ControlClient(f"127.0.0.1:{port}", timeout=10) as client:
            history = client.history()
        assert [(c.description, c.changes) for c in history.commits] == [("one", 1), ("three", 3)]
    finally:
        server.stop(0).wait()
        store.close()


@pytest.mark.slow
def test_ctl_history_prints_each_commits_number_of_changes(tmp_path: Path) -> None:
    from tests.sync_support import ctl

    store = ControlStore(tmp_path / "control")
    store.commit(
        [RecordChange("profiles", f"u{n}", b"\x80") for n in range(3)], kind="delta", description="three"
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(ControlPlaneService(store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        out = ctl(f"127.0.0.1:{port}", "history").stdout.splitlines()
        row = next(line for line in out if line.rstrip().endswith("three"))
        assert row.split()[:3] == ["3", "delta", "3"], out
    finally:
        server.stop(0).wait()
        store.close()
