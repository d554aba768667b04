"""An edge token cannot starve the control plane (issue 16, item 4): Subscribe streams are bounded in all
and per per-node token, Forward calls are bounded, edge calls run on pools of their own so ops calls
answer under any edge-side load, a stream whose edge stops reading is closed (freeing its snapshot slot),
and the fleet registry forgets edges gone for long and never holds more than its cap.

In-process servers built like `edgewise control serve` builds its own (`control_grpc_server`), and one
real control plane process for the issue's repro (260 idle streams, then an ops call)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from edgewise.core.activity import Event
from edgewise.sync.admission import OPS_WORKERS, EdgeAdmission, EdgeLimits, control_grpc_server
from edgewise.sync.auth import NodeIdentity, TokenAuth, bearer_metadata, make_interceptors
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.sync.event_store import EventStore
from edgewise.sync.shard import Shard
from edgewise.sync.stalls import StallWatch
from edgewise.v1 import sync_pb2, sync_pb2_grpc
from tests.sync_support import control_planes, ops_client, wait_for

EDGE_TOKEN = "edge-admission-5d1e"
OPS_TOKEN = "ops-admission-93b0"
NODE_TOKEN = "node-n1-admission-7c2a"
EDGE = bearer_metadata(EDGE_TOKEN)
OPS = bearer_metadata(OPS_TOKEN)
NODE = bearer_metadata(NODE_TOKEN)


@dataclass
class Served:
    address: str
    store: ControlStore
    service: ControlPlaneService
    admission: EdgeAdmission
    events: EventStore | None


@contextmanager
def served(
    tmp_path: Path,
    limits: EdgeLimits,
    *,
    events: bool = False,
    fleet_max_entries: int = 10_000,
    write_timeout_seconds: float = 60.0,
    max_snapshots: int = 2,
    chunk_bytes: int = 1 << 20,
) -> Iterator[Served]:
    """A control plane with tokens (shared edge, ops, and node n1's own) on the server and pools
    `edgewise control serve` uses."""
    store = ControlStore(tmp_path / "control")
    event_store = EventStore(tmp_path / "events", map_size=64 << 20) if events else None
    node_tokens = {NODE_TOKEN: NodeIdentity("n1", frozenset({Shard()}))}
    [auth] = make_interceptors([EDGE_TOKEN], [OPS_TOKEN], node_tokens)
    assert isinstance(auth, TokenAuth)
    service = ControlPlaneService(
        store,
        heartbeat_seconds=0.3,
        events=event_store,
        fleet_max_entries=fleet_max_entries,
        write_timeout_seconds=write_timeout_seconds,
        max_snapshots=max_snapshots,
        chunk_bytes=chunk_bytes,
        identity_of=auth.identity,
    )

    def key_of(metadata: object) -> str | None:
        identity = auth.identity(metadata)  # type: ignore[arg-type]
        return identity.node_id if identity is not None else None

    admission = EdgeAdmission(limits, key_of)
    server = control_grpc_server(admission, [auth])
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _DONE.clear()
    try:
        yield Served(f"127.0.0.1:{port}", store, service, admission, event_store)
    finally:
        _DONE.set()
        server.stop(0).wait()
        admission.shutdown()
        if event_store is not None:
            event_store.close()
        store.close()


_DONE = threading.Event()


def _idle(node: str, version: int = 0, lineage: str = "") -> Iterator[sync_pb2.SubscribeRequest]:
    """A hello, then nothing: the request stream stays open until the test ends."""
    yield sync_pb2.SubscribeRequest(hello=sync_pb2.Hello(node_id=node, last_version=version, lineage=lineage))
    _DONE.wait(60)


def _refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_streams_over_the_cap_are_refused_and_ops_calls_answer_meanwhile(tmp_path: Path) -> None:
    # More idle streams than the ops pool has threads: were they on that pool, Status would wait.
    streams = OPS_WORKERS + 8
    with served(tmp_path, EdgeLimits(max_streams=streams)) as s, grpc.insecure_channel(s.address) as ch:
        stub = sync_pb2_grpc.ControlPlaneStub(ch)
        open_ = [stub.Subscribe(_idle(f"e{n}"), metadata=EDGE) for n in range(streams)]
        for call in open_:
            assert next(call).WhichOneof("kind") == "heartbeat"
        assert s.admission.open_streams() == streams
        for n in range(3):
            over = stub.Subscribe(_idle(f"x{n}"), metadata=EDGE, timeout=10)
            refused = _refusal(lambda: next(over))  # noqa: B023
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"sync.max_streams = {streams}" in (refused.details() or "")
        started = time.monotonic()
        status = stub.Status(sync_pb2.StatusRequest(), metadata=OPS, timeout=5)
        assert time.monotonic() - started < 2
        assert len([e for e in status.edges if e.connected]) == streams
        # a stream that ends gives its place to the next
        open_[0].cancel()
        wait_for(lambda: s.admission.open_streams() < streams, 10, "the cancelled stream to end")
        again = stub.Subscribe(_idle("late"), metadata=EDGE, timeout=10)
        assert next(again).WhichOneof("kind") == "heartbeat"
        for call in [*open_, again]:
            call.cancel()


def test_a_per_node_token_has_its_own_stream_cap_the_shared_token_only_the_total(tmp_path: Path) -> None:
    limits = EdgeLimits(max_streams=20, max_streams_per_token=2)
    with served(tmp_path, limits) as s, grpc.insecure_channel(s.address) as ch:
        stub = sync_pb2_grpc.ControlPlaneStub(ch)
        mine = [stub.Subscribe(_idle("n1"), metadata=NODE) for _ in range(2)]
        for call in mine:
            assert next(call).WhichOneof("kind") == "heartbeat"
        third = stub.Subscribe(_idle("n1"), metadata=NODE, timeout=10)
        refused = _refusal(lambda: next(third))
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "sync.max_streams_per_token = 2" in (refused.details() or "")
        assert s.admission.open_streams("n1") == 2
        shared = [stub.Subscribe(_idle(f"s{n}"), metadata=EDGE) for n in range(5)]
        for call in shared:
            assert next(call).WhichOneof("kind") == "heartbeat"
        mine[0].cancel()
        wait_for(lambda: s.admission.open_streams("n1") == 1, 10, "n1's cancelled stream to end")
        again = stub.Subscribe(_idle("n1"), metadata=NODE, timeout=10)
        assert next(again).WhichOneof("kind") == "heartbeat"
        for call in [*mine, *shared, again]:
            call.cancel()


def test_forward_calls_over_the_cap_are_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with served(tmp_path, EdgeLimits(max_forward_calls=2), events=True) as s:
        assert s.events is not None
        release = threading.Event()
        ingest = s.events.ingest

        def slow_ingest(*args: object, **kwargs: object) -> object:
            release.wait(30)
            return ingest(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(s.events, "ingest", slow_ingest)
        event = Event("f1", "view", "u1", "", "i1", "", "", 0.0, time.time_ns() // 1_000_000).encode()
        request = sync_pb2.ForwardRequest(
            node_id="e1", records=[sync_pb2.OutboxRecord(seq=1, kind="event", payload=event)]
        )
        with grpc.insecure_channel(s.address) as ch:
            stub = sync_pb2_grpc.ControlPlaneStub(ch)
            held = [stub.Forward.future(request, metadata=EDGE, timeout=30) for _ in range(2)]
            wait_for(lambda: s.admission.forwards.pending() == 2, 10, "two Forward calls in progress")
            started = time.monotonic()
            refused = _refusal(lambda: stub.Forward(request, metadata=EDGE, timeout=10))
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "events.max_forward_calls = 2" in (refused.details() or "")
            assert time.monotonic() - started < 2
            assert stub.Status(sync_pb2.StatusRequest(), metadata=OPS, timeout=5).events_total == 0
            release.set()
            assert sorted(f.result(timeout=20).accepted for f in held) == [0, 1]


def test_a_stream_whose_edge_stops_reading_is_closed_and_its_snapshot_slot_freed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limits = EdgeLimits()
    with served(tmp_path, limits, write_timeout_seconds=1.0, max_snapshots=1, chunk_bytes=64 << 10) as s:
        # a state far larger than HTTP/2 flow-control windows: a stream nobody reads stays mid-snapshot
        s.store.commit(
            (RecordChange("profiles", f"u{i}", bytes([i % 251]) * 2048) for i in range(20_000)), kind="delta"
        )
        with grpc.insecure_channel(s.address) as ch1, grpc.insecure_channel(s.address) as ch2:
            first = sync_pb2_grpc.ControlPlaneStub(ch1).Subscribe(_idle("slow"), metadata=EDGE)
            assert next(first).WhichOneof("kind") == "chunk"  # then never read on
            wait_for(
                lambda: not any(e.connected for e in s.service.fleet.edges()),
                15,
                "the stalled stream to be closed",
            )
            second = sync_pb2_grpc.ControlPlaneStub(ch2).Subscribe(_idle("next"), metadata=EDGE, timeout=20)
            assert next(second).WhichOneof("kind") == "chunk"  # the snapshot slot is free again
            second.cancel()
            with pytest.raises(grpc.RpcError) as ended:
                for _ in first:
                    pass
            assert ended.value.code() == grpc.StatusCode.CANCELLED
    stalled = [r for r in caplog.records if r.getMessage() == "edge_stream_stalled"]
    assert [getattr(r, "node", None) for r in stalled] == ["slow"]


def test_forwards_under_new_node_ids_cannot_grow_the_fleet_past_its_cap(tmp_path: Path) -> None:
    limits = EdgeLimits()
    with (
        served(tmp_path, limits, events=True, fleet_max_entries=50) as s,
        grpc.insecure_channel(s.address) as ch,
    ):
        stub = sync_pb2_grpc.ControlPlaneStub(ch)
        live = stub.Subscribe(_idle("real-edge"), metadata=EDGE)
        assert next(live).WhichOneof("kind") == "heartbeat"
        for n in range(200):
            stub.Forward(sync_pb2.ForwardRequest(node_id=f"made-up-{n}"), metadata=EDGE, timeout=10)
        status = stub.Status(sync_pb2.StatusRequest(), metadata=OPS, timeout=5)
        names = {e.node_id for e in status.edges}
        assert len(names) == 50
        assert "real-edge" in names  # a connected edge is never dropped
        assert "made-up-199" in names and "made-up-0" not in names  # the longest gone go first
        live.cancel()


@pytest.mark.slow
def test_260_idle_streams_do_not_starve_ops_calls(tmp_path: Path) -> None:
    # The repro against a real control plane with its default settings: 260 Subscribe streams
    # that say hello and then nothing, then `ctl status`.
    env = {"EDGEWISE_EDGE_TOKEN": EDGE_TOKEN, "EDGEWISE_OPS_TOKEN": OPS_TOKEN}
    with control_planes(tmp_path, env) as start:
        control = start()
        with grpc.insecure_channel(control.address) as channel:
            stub = sync_pb2_grpc.ControlPlaneStub(channel)
            calls = [stub.Subscribe(_idle(f"idle-{n}"), metadata=EDGE, timeout=60) for n in range(260)]
            outcomes: list[str] = []

            def first(call: grpc.Call) -> str:
                try:
                    return next(call).WhichOneof("kind")  # type: ignore[call-overload, no-any-return]
                except grpc.RpcError as exc:
                    return f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]

            with futures.ThreadPoolExecutor(16) as pool:
                outcomes = list(pool.map(first, calls, timeout=60))
            try:
                with ops_client(control.address, env, timeout=5) as ops:
                    started = time.monotonic()
                    status = ops.status()
                    assert time.monotonic() - started < 5
                admitted = [o for o in outcomes if o == "heartbeat"]
                refused = [o for o in outcomes if o.startswith("RESOURCE_EXHAUSTED")]
                assert len(admitted) == 256 and len(refused) == 4, outcomes
                assert all("sync.max_streams = 256" in o for o in refused)
                assert len([e for e in status.edges if e.connected]) == 256
            finally:
                _DONE.set()
                for call in calls:
                    call.cancel()


class _Context:
    """The one call of grpc.ServicerContext the stall watch makes."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def test_the_stall_watch_cancels_only_streams_stuck_in_a_send_and_stops_when_idle() -> None:
    watch = StallWatch(0.2)
    stuck, reading, idle = _Context(), _Context(), _Context()
    streams = [watch.watch(c, n) for c, n in ((stuck, "stuck"), (reading, "reading"), (idle, "idle"))]
    streams[0].sending()
    deadline = time.monotonic() + 3
    while not stuck.cancelled.is_set() and time.monotonic() < deadline:
        streams[1].sending()  # sends that complete at once, again and again
        streams[1].sent()
        time.sleep(0.01)
    assert stuck.cancelled.is_set() and not reading.cancelled.is_set() and not idle.cancelled.is_set()
    for stream in streams:
        watch.unwatch(stream)
    wait_for(
        lambda: not any(t.name == "stall-watch" and t.is_alive() for t in threading.enumerate()), 5, "idle"
    )
    again = _Context()
    watch.watch(again, "again").sending()
    assert again.cancelled.wait(3)  # a new watch starts the thread again
