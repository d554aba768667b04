"""Edges following a list of control-plane replicas (`--control a,b`): one at a time, the next one when it is
lost, resuming from the version applied; forwarding fails over with them, nothing lost or counted twice.

Replicas here are fault proxies (tests/tcp_proxy.py) in front of one control plane: two addresses serving
the same store, which is what a replica list means (two control planes with stores of their own are two
histories, not replicas). The in-process tests run a real ControlPlaneService on a real gRPC server with
the real syncer and forwarder on a real edge store; the slow ones run `edgewise edge serve` and `control
serve` as processes.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from edgewise.client import ControlClient
from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.store import Store
from edgewise.sync.control_replicas import ControlReplicas, loses_replica
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore
from edgewise.sync.edge_forward import OutboxForwarder
from edgewise.sync.edge_sync import EdgeSyncer, SyncTarget
from edgewise.sync.event_store import EventStore
from edgewise.sync.shard import Shard
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from edgewise.v1 import sync_pb2_grpc
from tests.conftest import EdgeProcess
from tests.sync_support import ControlProcess, control_planes, edge_state, ops_client, wait_for
from tests.tcp_proxy import FaultProxy

OPS = {"EDGEWISE_OPS_TOKEN": "ops-rep-1"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-rep-1"}


# --- the replica list -----------------------------------------------------------------------------------


class _Failed(grpc.RpcError):
    """A failed call as gRPC raises it (grpc.RpcError with a code)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def test_replicas_move_round_robin_once_per_loss(caplog: pytest.LogCaptureFixture) -> None:
    replicas = ControlReplicas(["a:1", "b:1", "c:1"])
    assert replicas.current == "a:1" and replicas.switches == 0
    caplog.set_level(logging.WARNING, "edgewise.sync.control_replicas")
    assert replicas.lost("a:1", "UNAVAILABLE", link="sync") == "b:1"
    # The other link saw the same outage: the node already left a:1, nothing changes.
    assert replicas.lost("a:1", "UNAVAILABLE", link="forward") == "b:1"
    assert replicas.switches == 1
    assert replicas.lost("b:1", "x", link="forward") == "c:1"
    assert replicas.lost("c:1", "x", link="sync") == "a:1"  # round robin
    assert replicas.switches == 3
    switched = [r.__dict__ for r in caplog.records if r.getMessage() == "sync_control_switched"]
    assert [(r["from"], r["to"], r["link"], r["switches"]) for r in switched] == [
        ("a:1", "b:1", "sync", 1),
        ("b:1", "c:1", "forward", 2),
        ("c:1", "a:1", "sync", 3),
    ]

    one = ControlReplicas(["a:1"])
    assert one.lost("a:1", "x", link="sync") == "a:1" and one.switches == 0  # as before: retry it
    with pytest.raises(ValueError, match="no control-plane address"):
        ControlReplicas([])
    with pytest.raises(ValueError, match="listed twice"):
        ControlReplicas(["a:1", "a:1"])


def test_only_a_refusal_of_the_request_keeps_the_replica() -> None:
    for code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    ):
        assert loses_replica(_Failed(code)), code
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        assert not loses_replica(_Failed(code)), code
    assert loses_replica(OSError("no such file: ca.pem"))


# --- in process: a real control plane behind two proxies -------------------------------------------------


@dataclass
class Replicated:
    service: ControlPlaneService
    events: EventStore
    address: str  # the control plane itself
    a: FaultProxy
    b: FaultProxy

    @property
    def controls(self) -> tuple[str, str]:
        return self.a.address, self.b.address


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[Replicated]:
    store = ControlStore(tmp_path / "control", map_size=1 << 30)
    events = EventStore(tmp_path / "control" / "events", map_size=1 << 28)
    service = ControlPlaneService(store, heartbeat_seconds=0.2, events=events)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="ctl-rep"))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    a, b = FaultProxy("127.0.0.1", port), FaultProxy("127.0.0.1", port)
    try:
        yield Replicated(service, events, f"127.0.0.1:{port}", a, b)
    finally:
        a.close()
        b.close()
        server.stop(0).wait(5)
        events.close()
        store.close()


def _cut(proxy: FaultProxy) -> None:
    """The replica behind `proxy` goes away: live connections reset, new ones refused."""
    proxy.set_refuse(True)
    proxy.drop_all()


def _delta(n: int) -> list[dict[str, object]]:
    item = {"id": f"new-item-{n}", "category": "home/kitchen", "price": 9.5 + n, "regions": ["*"]}
    return [{"op": "upsert", "item": item, "popularity": 1e6}]


def _subscribed(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The versions edges said they had when they subscribed (the control plane's `edge_subscribed`)."""
    return [r.__dict__["version"] for r in caplog.records if r.getMessage() == "edge_subscribed"]


def test_the_syncer_moves_to_the_next_replica_and_resumes_from_its_version(
    replicated: Replicated, bundle_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ops = ControlClient(replicated.address, timeout=60)
    v1 = ops.push(bundle_dir).version
    with Store(tmp_path / "edge") as store:
        target = SyncTarget(replicated.controls, "edge-r", Shard(), heartbeat_seconds=0.5)
        syncer = EdgeSyncer(store, target)
        syncer.start()
        try:
            assert syncer.wait_for_version(lambda v: v >= v1, 30)
            assert (
                syncer.following == replicated.a.address and store.snapshot_info().control == syncer.following
            )
            _cut(replicated.a)
            v2 = ops.push_delta(_delta(1)).version
            assert syncer.wait_for_version(lambda v: v >= v2, 10)
            assert syncer.replicas.current == syncer.following == replicated.b.address
            assert syncer.replicas.switches == 1
            info = store.snapshot_info()
            assert info.control == replicated.b.address and info.commit_kind == "delta"
            # It said it had v1 to the next replica, which sent v2 alone: no snapshot.
            assert _subscribed(caplog) == [0, v1]
            applied = [r.__dict__ for r in caplog.records if r.getMessage() == "sync_applied"]
            assert [(e["version"], e["snapshot"], e["control"]) for e in applied] == [
                (v1, True, replicated.a.address),
                (v2, False, replicated.b.address),
            ]

            # The first replica comes back: the node stays where it is (every replica serves the same log).
            replicated.a.set_refuse(False)
            v3 = ops.push_delta(_delta(2)).version
            assert syncer.wait_for_version(lambda v: v >= v3, 10)
            time.sleep(0.5)
            assert syncer.following == replicated.b.address and syncer.replicas.switches == 1
            # Until the one it follows goes: then round robin, back to the first.
            _cut(replicated.b)
            v4 = ops.push_delta(_delta(3)).version
            assert syncer.wait_for_version(lambda v: v >= v4, 10)
            assert syncer.following == replicated.a.address and syncer.replicas.switches == 2
            assert _subscribed(caplog) == [0, v1, v3]
        finally:
            syncer.stop()
        ops.close()


@pytest.mark.slow
def test_a_silent_replica_is_left_after_silence_seconds(
    replicated: Replicated, bundle_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The proxy holds every byte both ways, connections open: no reset, no refusal, only silence (a
    # replica hung, or a network black hole). The control plane heartbeats every 0.2 s.
    caplog.set_level(logging.INFO)
    ops = ControlClient(replicated.address, timeout=60)
    v1 = ops.push(bundle_dir).version
    with Store(tmp_path / "edge") as store:
        target = SyncTarget(
            replicated.controls, "edge-s", Shard(), heartbeat_seconds=0.5, silence_seconds=1.0
        )
        syncer = EdgeSyncer(store, target)
        syncer.start()
        try:
            assert syncer.wait_for_version(lambda v: v >= v1, 30)
            time.sleep(1.5)  # heartbeats alone keep a quiet stream alive: no switch
            assert syncer.replicas.switches == 0
            replicated.a.stall()
            started = time.monotonic()
            v2 = ops.push_delta(_delta(1)).version
            assert syncer.wait_for_version(lambda v: v >= v2, 10)
            assert time.monotonic() - started < 4.0
            assert syncer.following == replicated.b.address and syncer.replicas.switches == 1
            assert _subscribed(caplog) == [0, v1]
            lost = [r.__dict__ for r in caplog.records if r.getMessage() == "sync_control_switched"]
            assert lost[0]["error"] == "no message for 1 s" and lost[0]["link"] == "sync"
        finally:
            syncer.stop()
            replicated.a.unstall()
        ops.close()


def _queue_events(store: Store, prefix: str, count: int) -> None:
    events = [
        Event(f"{prefix}-{n}", "view", f"u{n % 7}", "", "i1", "", "", 0.0, 1_750_000_000_000)
        for n in range(count)
    ]
    store.record_events(events, ActivityLimits())


@pytest.mark.slow
def test_a_batch_whose_ack_was_lost_is_counted_once_at_the_next_replica(
    replicated: Replicated, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The first replica stores the batch, its ACK never comes back (the proxy holds the replies): the
    # forwarder gives up on it at its deadline, moves to the next replica and sends the batch again there.
    # The replicas share the event store, which keeps one copy per event id: stored once, answered as
    # duplicates, deleted from the outbox.
    caplog.set_level(logging.INFO)
    with Store(tmp_path / "edge") as store:
        _queue_events(store, "warm", 5)
        target = SyncTarget(replicated.controls, "edge-f", Shard())
        forwarder = OutboxForwarder(store, target, timeout=1.0)
        forwarder.start()
        try:
            # A first batch through the first replica: its connection is up (HTTP/2 settings exchanged).
            wait_for(lambda: store.outbox_pending() == 0, 10, "the first batch forwarded")
            assert replicated.events.count() == 5 and forwarder.forwarded == 5
            replicated.a.hold_replies(True)
            _queue_events(store, "lost-ack", 40)
            wait_for(lambda: replicated.events.count() == 45, 10, "the first replica storing the batch")
            assert store.outbox_pending() == 40  # not acknowledged: still queued
            wait_for(lambda: store.outbox_pending() == 0, 10, "the batch acknowledged by the next replica")
            assert replicated.events.count() == 45
            assert forwarder.replicas.current == replicated.b.address and forwarder.replicas.switches == 1
            resumed = [r.__dict__ for r in caplog.records if r.getMessage() == "outbox_forwarding"]
            assert resumed[0]["duplicates"] == 40 and resumed[0]["control"] == replicated.b.address
            # More events go on to the next replica, each stored once.
            _queue_events(store, "after", 25)
            wait_for(lambda: store.outbox_pending() == 0, 10, "the next batch forwarded")
            assert replicated.events.count() == 70 and forwarder.forwarded == 5 + 25
        finally:
            forwarder.stop()
            replicated.a.hold_replies(False)


@pytest.mark.slow
def test_the_syncer_follows_when_the_forwarder_moved_the_node(
    replicated: Replicated, bundle_dir: Path, tmp_path: Path
) -> None:
    # Both links follow one replica: the forwarder losing it (its ACKs held) moves the syncer too.
    ops = ControlClient(replicated.address, timeout=60)
    v1 = ops.push(bundle_dir).version
    with Store(tmp_path / "edge") as store:
        target = SyncTarget(replicated.controls, "edge-both", Shard(), heartbeat_seconds=0.5)
        replicas = ControlReplicas(target.controls)
        forwarder = OutboxForwarder(store, target, replicas=replicas, timeout=1.0)
        syncer = EdgeSyncer(store, target, replicas=replicas, on_connected=forwarder.wake)
        syncer.start()
        forwarder.start()
        try:
            assert syncer.wait_for_version(lambda v: v >= v1, 30)
            assert syncer.following == replicated.a.address
            # The first replica's answers are held: the syncer's stream goes quiet (its silence limit, 30 s,
            # is far), the forwarder's call runs into its deadline (1 s), which moves the node on.
            replicated.a.hold_replies(True)
            _queue_events(store, "both", 10)
            wait_for(lambda: store.outbox_pending() == 0, 10, "the events forwarded via the next replica")
            wait_for(lambda: syncer.following == replicated.b.address, 5, "the syncer on the next replica")
            v2 = ops.push_delta(_delta(1)).version
            assert syncer.wait_for_version(lambda v: v >= v2, 10)
            assert replicas.switches == 1 and replicated.events.count() == 10
        finally:
            forwarder.stop()
            syncer.stop()
            replicated.a.hold_replies(False)
        ops.close()


# --- real processes --------------------------------------------------------------------------------------


@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[Callable[..., ControlProcess]]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start


def _track(address: str, ids: list[str]) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        events = [
            pb.Event(event_id=i, type="view", user_id=f"u{n % 50}", item_id=f"i{n % 30}")
            for n, i in enumerate(ids)
        ]
        consent = ["analytics", "personalization"]
        return int(stub.Track(pb.TrackRequest(events=events, consent=consent), timeout=10).accepted)


def _metrics(edge: EdgeProcess) -> dict[str, float]:
    import urllib.request

    serving = next(e for e in edge.log_events() if e.get("event") == "serving")
    with urllib.request.urlopen(f"http://{serving['metrics']}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("edgewise_sync_control"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.mark.slow
def test_an_edge_fails_over_to_the_next_replica_without_a_snapshot_and_forwards_once(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    control = control_factory()
    with FaultProxy("127.0.0.1", control.port) as a, FaultProxy("127.0.0.1", control.port) as b:
        ops = ops_client(control.address, OPS)
        v1 = ops.push(bundle_dir).version
        for key, value in EDGE.items():
            monkeypatch.setenv(key, value)
        edge = edge_factory(
            tmp_path / "edge",
            None,
            *("--control", f"{a.address},{b.address}", "--node-id", "edge-p", "--workers", "1"),
            *("--metrics-listen", "127.0.0.1:0"),
        )
        assert _track(edge.address, [f"before-{n}" for n in range(100)]) == 100
        wait_for(lambda: ops.status().events_total == 100, 20, "the events before the cut upstream")

        _cut(a)
        started = time.monotonic()
        v2 = ops.push_delta(_delta(1)).version
        wait_for(
            lambda: _applied(edge, v2) is not None, 10, "the edge applying the push via the next replica"
        )
        took = time.monotonic() - started
        applied = _applied(edge, v2)
        assert applied is not None and applied["snapshot"] is False and applied["control"] == b.address
        # It told the next replica the version it had applied last (v1, or a later commit of the profile
        # folder, which folds the events forwarded), and got the commits after it: no snapshot.
        logged = edge.log_events()
        at = next(
            n
            for n, e in enumerate(logged)
            if e.get("event") == "sync_connected" and e["control"] == b.address
        )
        had = [e["version"] for e in logged[:at] if e.get("event") == "sync_applied"][-1]
        assert logged[at]["resume_from"] == had >= v1
        subscribed = [e["version"] for e in control.log_events() if e.get("event") == "edge_subscribed"]
        assert subscribed == [0, had]
        snapshots = [e["snapshot"] for e in logged if e.get("event") == "sync_applied"]
        assert snapshots[0] is True and not any(snapshots[1:])  # the first snapshot was the only one

        assert _track(edge.address, [f"after-{n}" for n in range(100)]) == 100
        wait_for(lambda: ops.status().events_total == 200, 20, "the events after the cut upstream")
        time.sleep(0.5)
        status = ops.status()
        assert status.events_total == 200  # none lost, none counted twice
        (node,) = [e for e in status.edges if e.node_id == "edge-p"]
        assert node.applied_version >= v2 and node.connected  # the folder commits profiles as events arrive
        wait_for(
            lambda: _metrics(edge).get(f'edgewise_sync_control_info{{control="{b.address}"}}') == 1,
            5,
            "the metrics naming the replica followed",
        )
        assert _metrics(edge)["edgewise_sync_control_switches_total"] == 1
        # `edge status` beside it (the node's flags): the replicas configured, the one it applied from.
        status_cmd = [
            sys.executable,
            "-m",
            "edgewise.cli",
            "edge",
            "status",
            "--data",
            str(tmp_path / "edge"),
        ]
        shown = subprocess.run(
            [*status_cmd, "--control", f"{a.address},{b.address}", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        report = json.loads(shown.stdout)
        assert report["sync_control"] == [a.address, b.address] and report["snapshot"]["control"] == b.address
        ops.close()
    print(f"failover: push -> applied via the next replica in {took:.2f} s")


def _applied(edge: EdgeProcess, version: int) -> dict[str, object] | None:
    return next(
        (e for e in edge.log_events() if e.get("event") == "sync_applied" and e.get("version") == version),
        None,
    )


@pytest.mark.slow
def test_a_bad_control_entry_exits_2_naming_it(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "edgewise.cli", "edge", "serve", "--data", str(tmp_path / "d")]
    done = subprocess.run(
        [*cmd, "--control", "127.0.0.1:50061,ctl-b"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert (
        'sync.control = ["127.0.0.1:50061", "ctl-b"] (from --control): entry "ctl-b": must be HOST:PORT'
        in (done.stderr)
    )
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**_env(), "EDGEWISE_SYNC_CONTROL": "a:1, a:1"},
    )
    assert done.returncode == 2 and 'entry "a:1" is listed twice' in done.stderr, done.stderr
    printed = subprocess.run(
        [*cmd, "--control", "a:1,b:2", "--print-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert 'sync.control = ["a:1", "b:2"]' in printed.stdout
    assert json.dumps("a:1") in printed.stdout


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


@pytest.mark.slow
def test_every_replica_down_then_back_resumes_without_a_snapshot_and_forwards_once(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two addresses of one control plane (a proxy, and its own port); the control plane is killed with
    # SIGKILL, so both are gone: the edge goes round the list with a growing backoff, keeps serving and
    # queues its events; the control plane restarts on its data and port, and the edge resumes from its
    # version and drains its outbox, every event stored once.
    control = control_factory()
    with FaultProxy("127.0.0.1", control.port) as a:
        with ops_client(control.address, OPS) as ops:
            v1 = ops.push(bundle_dir).version
        for key, value in EDGE.items():
            monkeypatch.setenv(key, value)
        edge = edge_factory(
            tmp_path / "edge",
            None,
            *("--control", f"{a.address},{control.address}", "--node-id", "edge-k", "--workers", "1"),
        )
        assert _track(edge.address, [f"up-{n}" for n in range(50)]) == 50
        with ops_client(control.address, OPS) as ops:
            wait_for(lambda: ops.status().events_total == 50, 20, "the first events upstream")
        control.stop(signal.SIGKILL)
        killed_at = time.time()
        assert _track(edge.address, [f"down-{n}" for n in range(50)]) == 50  # serving on, queued
        time.sleep(1.5)  # rounds of the list
        had, _ = edge_state(tmp_path / "edge")  # v1, or later: the folder commits profiles as events arrive
        restarted = control_factory(listen=control.address)
        with ops_client(restarted.address, OPS) as ops:
            wait_for(lambda: ops.status().events_total == 100, 30, "the queued events upstream")
            v2 = ops.push_delta(_delta(1)).version
            wait_for(lambda: _applied(edge, v2) is not None, 30, "the edge applying the next push")
            time.sleep(0.5)
            assert ops.status().events_total == 100  # none lost, none counted twice
    applied = _applied(edge, v2)
    assert applied is not None and applied["snapshot"] is False
    subscribed = [e["version"] for e in restarted.log_events() if e.get("event") == "edge_subscribed"]
    assert subscribed and set(subscribed) == {had} and had >= v1  # resumed from its version
    switched = [e for e in edge.log_events() if e.get("event") == "sync_control_switched"]
    assert len(switched) >= 2  # it went round the list
    # Whichever link got through first woke the other: both back within moments, not a backoff apart.
    back = [
        float(e["ts"])
        for e in edge.log_events()
        if e.get("event") in ("sync_connected", "outbox_forwarding") and float(e["ts"]) > killed_at
    ]
    assert len(back) >= 2 and back[1] - back[0] < 1.5, back
    assert {e["to"] for e in switched} == {a.address, control.address}
