"""Canary and shadow rollouts on the control plane's side (docs/rollouts.md), in-process: the canary
choice, the health thresholds, the store's collapsed commits and past views, and a real ControlPlane
service on a real gRPC server whose Subscribe streams this test drives as edges (assembling every commit
with the real `Assembler`, ACKing it, sending heartbeats with ServingStats as edges do)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from edgewise.client import ClientError, ControlClient
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.sync.rollout import (
    CANARY,
    Rollout,
    RolloutError,
    canary_count,
    choose_canary,
    decode_rollout,
    encode_rollout,
)
from edgewise.sync.rollout_health import EdgeServing, RolloutPolicy, rollout_health, unhealthy_reason
from edgewise.sync.wire import Assembler
from edgewise.v1 import sync_pb2, sync_pb2_grpc

# --- pure parts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "edges", "count"),
    [(50, 2, 1), (50, 3, 2), (10, 3, 1), (1, 3, 1), (100, 3, 3), (34, 3, 1), (50, 5, 3), (25, 10, 3)],
)
def test_canary_count_rounds_to_the_nearest_edge_and_is_at_least_one(
    percent: float, edges: int, count: int
) -> None:
    assert canary_count(percent, edges) == count


def test_choose_canary_is_deterministic_and_refuses_an_empty_fleet() -> None:
    nodes = [f"edge-{i}" for i in range(10)]
    first = choose_canary(30, nodes, 7)
    assert len(first) == 3 and set(first) <= set(nodes) and first == tuple(sorted(first))
    assert choose_canary(30, reversed(nodes), 7) == first
    with pytest.raises(RolloutError, match="--canary-nodes"):
        choose_canary(50, [], 1)
    with pytest.raises(RolloutError, match="percentage"):
        canary_count(0, 3)


def test_rollout_document_round_trips() -> None:
    rollout = Rollout(5, 4, CANARY, ("a", "b"), shadow=True, shadow_sample=0.2, started_at_ms=10)
    assert decode_rollout(encode_rollout(rollout)) == rollout
    ended = rollout.ended("aborted", "bad", 20, {"canary": {"edges": 1}}, rollback_version=9)
    assert decode_rollout(encode_rollout(ended)) == ended


def _stats(
    version: int, decisions: int, fallbacks: int, errors: int = 0, p99: int = 1000
) -> sync_pb2.ServingStats:
    return sync_pb2.ServingStats(
        version=version,
        decisions=decisions,
        placements=decisions,
        fallbacks=fallbacks,
        errors=errors,
        latency_p50_us=p99 // 2,
        latency_p99_us=p99,
    )


def _judge(canary: sync_pb2.ServingStats, rest: sync_pb2.ServingStats, policy: RolloutPolicy) -> str | None:
    rollout = Rollout(10, 9, CANARY, ("c",))
    health = rollout_health(rollout, [EdgeServing("c", True, canary), EdgeServing("r", True, rest)])
    return unhealthy_reason(policy, *health)


def test_thresholds() -> None:
    policy = RolloutPolicy(min_decisions=100)
    # not judged before both sides answered min_decisions calls
    assert _judge(_stats(10, 99, 99), _stats(9, 500, 0), policy) is None
    assert _judge(_stats(10, 500, 500), _stats(9, 50, 0), policy) is None
    # every placement falling back
    reason = _judge(_stats(10, 200, 200), _stats(9, 500, 10), policy)
    assert reason is not None and "fallback rate 1.000" in reason
    # within the allowed increase
    assert _judge(_stats(10, 200, 14), _stats(9, 500, 10), policy) is None
    # errors: a canary that fails every call is judged on its calls, not its answered decisions
    reason = _judge(_stats(10, 0, 0, errors=150), _stats(9, 500, 0), policy)
    assert reason is not None and "error rate" in reason
    # latency: over the ratio and over the floor
    reason = _judge(_stats(10, 200, 0, p99=30_000), _stats(9, 500, 0, p99=10_000), policy)
    assert reason is not None and "p99" in reason
    assert _judge(_stats(10, 200, 0, p99=4_000), _stats(9, 500, 0, p99=1_000), policy) is None  # floor
    # a canary edge still serving the base, or a rest edge already on the candidate, is not counted
    rollout = Rollout(10, 9, CANARY, ("c",))
    canary, rest, calls, rest_calls = rollout_health(
        rollout,
        [
            EdgeServing("c", True, _stats(9, 500, 500)),
            EdgeServing("r", True, _stats(10, 500, 0)),
            EdgeServing("gone", False, _stats(9, 500, 0)),
        ],
    )
    assert (canary.edges, rest.edges, calls, rest_calls) == (0, 0, 0, 0)


# --- the store -------------------------------------------------------------------------------------------


def test_collapsed_commit_and_past_views(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "c") as store:
        v1 = store.replace_all(
            [RecordChange("items", "a", b"1"), RecordChange("items", "b", b"1")], kind="push"
        )
        assert v1 is not None
        v2 = store.commit(
            [RecordChange("items", "a", b"candidate"), RecordChange("items", "c", b"new")], kind="delta"
        )
        assert v2 is not None
        v3 = store.rollback(v1.version)
        assert v3 is not None
        info, changes = store.collapsed(v1.version, v3.version)
        assert (info.base_version, info.version, info.changes) == (v1.version, v3.version, 2)
        values = {(c.namespace, c.key): c.value for c in changes}
        assert values == {("items", "a"): b"1", ("items", "c"): None}  # never b"candidate"
        with store.read_at(v2.version) as view:
            assert dict(view.items("items")) == {"a": b"candidate", "b": b"1", "c": b"new"}
        with store.read_at(v1.version) as view:
            assert dict(view.items("items")) == {"a": b"1", "b": b"1"}


# --- the service, with this test as the edges -------------------------------------------------------------


@dataclass
class FakeEdge:
    """A Subscribe stream driven like an edge: applies what arrives to a dict, ACKs each commit, sends
    heartbeats with `serving` (settable) every 0.1 s. `commits`: (version, base_version, snapshot,
    shadow, chunks) of every commit marker, in order."""

    node: str
    address: str
    serving: Callable[[int], sync_pb2.ServingStats | None] = lambda version: None
    state: dict[tuple[str, bytes], bytes] = field(default_factory=dict)
    version: int = 0
    commits: list[tuple[int, int, bool, bool, int]] = field(default_factory=list)
    shadow_chunks: int = 0

    def __post_init__(self) -> None:
        self._out: queue.Queue[sync_pb2.SubscribeRequest | None] = queue.Queue()
        self._stop = threading.Event()
        self._channel = grpc.insecure_channel(self.address)
        self._call = sync_pb2_grpc.ControlPlaneStub(self._channel).Subscribe(self._requests())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._beats = threading.Thread(target=self._beat, daemon=True)
        self._beats.start()

    def _requests(self) -> Iterator[sync_pb2.SubscribeRequest]:
        yield sync_pb2.SubscribeRequest(hello=sync_pb2.Hello(node_id=self.node))
        while (item := self._out.get()) is not None:
            yield item

    def _read(self) -> None:
        assembler = Assembler()
        try:
            for message in self._call:
                kind = message.WhichOneof("kind")
                if kind == "chunk":
                    if message.chunk.shadow:
                        self.shadow_chunks += 1
                    assembler.add(message.chunk)
                elif kind == "commit":
                    commit = message.commit
                    changes = assembler.finish(commit)
                    self.commits.append(
                        (commit.version, commit.base_version, commit.snapshot, commit.shadow, commit.chunks)
                    )
                    if commit.shadow:
                        continue  # a shadow candidate is never applied
                    if commit.snapshot:
                        self.state = {}
                    else:
                        assert commit.base_version == self.version, (self.node, commit, self.version)
                    for namespace, key, value in changes:
                        if value is None:
                            self.state.pop((namespace, key), None)
                        else:
                            self.state[(namespace, key)] = value
                    self.version = commit.version
                    self._out.put(sync_pb2.SubscribeRequest(ack=sync_pb2.Ack(version=commit.version)))
        except grpc.RpcError:
            pass

    def _beat(self) -> None:
        while not self._stop.wait(0.1):
            beat = sync_pb2.Heartbeat(version=self.version, state=sync_pb2.EDGE_STATE_READY)
            stats = self.serving(self.version)
            if stats is not None:
                beat.serving.CopyFrom(stats)
            self._out.put(sync_pb2.SubscribeRequest(heartbeat=beat))

    def applied(self) -> list[int]:
        return [c[0] for c in self.commits if not c[3]]

    def close(self) -> None:
        self._stop.set()
        self._out.put(None)
        self._call.cancel()
        self._channel.close()


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[ControlPlaneService, str]]:
    store = ControlStore(tmp_path / "control")
    policy = RolloutPolicy(min_decisions=100, check_seconds=0.1)
    service = ControlPlaneService(store, heartbeat_seconds=0.2, rollout_policy=policy)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    service.start_background()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        service.stop_background()
        server.stop(0).wait()
        store.close()


def _item(item: str, price: float) -> dict[str, object]:
    return {"op": "upsert", "item": {"id": item, "category": "x/y", "price": price, "regions": ["*"]}}


def test_a_bad_canary_is_aborted_automatically_and_the_rest_never_apply_it(
    control: tuple[ControlPlaneService, str], bundle_dir: Path
) -> None:
    _service, address = control
    ops = ControlClient(address, timeout=30)
    v1 = ops.push(bundle_dir).version
    bad = {"on": False}

    def canary_serving(version: int) -> sync_pb2.ServingStats:  # every placement falls back
        return _stats(version, 300, 300 if bad["on"] else 3)

    def rest_serving(version: int) -> sync_pb2.ServingStats:
        return _stats(version, 300, 3)

    a = FakeEdge("edge-a", address, canary_serving)
    b = FakeEdge("edge-b", address, rest_serving)
    try:
        _wait(lambda: a.version == v1 and b.version == v1, "both edges at v1")
        base_state = dict(b.state)
        pushed = ops.push_delta([_item("canary-item", 2.0)], canary_nodes=["edge-a"])
        v2 = pushed.version
        assert pushed.rollout is not None and pushed.rollout.canary_nodes == ("edge-a",)
        _wait(lambda: a.version == v2, "the canary at v2")
        time.sleep(0.5)
        assert b.version == v1 and b.applied() == [v1]
        status = ops.status()
        assert status.rollout is not None and status.rollout.state == "canary"
        assert {e.node_id: (e.canary, e.lag) for e in status.edges} == {
            "edge-a": (True, 0),
            "edge-b": (False, 0),
        }
        # one rollout at a time; no plain push, no rollback while it runs
        for attempt in (
            lambda: ops.push_delta([_item("x", 1.0)]),
            lambda: ops.push_delta([_item("x", 1.0)], canary_percent=50),
            lambda: ops.rollback(v1),
        ):
            with pytest.raises(ClientError) as refused:
                attempt()
            assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
            assert "promote" in refused.value.details and "abort" in refused.value.details
        bad["on"] = True
        _wait(lambda: (r := ops.status().rollout) is not None and r.state == "aborted", "the automatic abort")
        rollout = ops.status().rollout
        assert rollout is not None
        assert "automatic abort: fallback rate 1.000" in rollout.reason
        assert rollout.canary.fallback_rate == 1.0 and rollout.rest.fallback_rate == 0.01
        v3 = rollout.rollback_version
        _wait(lambda: a.version == v3 and b.version == v3, "both edges at the rollback")
        assert a.state == base_state and b.state == base_state
        assert b.applied() == [v1, v3]  # never v2
        assert (v3, v1, False, False) == b.commits[-1][:4]  # one collapsed commit from the base
        assert a.applied() == [v1, v2, v3]
        # after the rollout, pushes reach everyone again
        v4 = ops.push_delta([_item("after", 3.0)]).version
        _wait(lambda: a.version == v4 and b.version == v4, "both edges at v4")
        with pytest.raises(ClientError) as none:
            ops.promote()
        assert none.value.code is grpc.StatusCode.FAILED_PRECONDITION
    finally:
        a.close()
        b.close()
        ops.close()


def test_shadow_rollout_sends_the_candidate_as_shadow_then_promote_releases_it(
    control: tuple[ControlPlaneService, str], bundle_dir: Path
) -> None:
    service, address = control
    ops = ControlClient(address, timeout=30)
    v1 = ops.push(bundle_dir).version
    a = FakeEdge("edge-a", address)
    b = FakeEdge("edge-b", address)
    old = FakeEdge("edge-old", address)  # reports no ServingStats: an edge that does not know shadows
    try:
        _wait(lambda: all(e.version == v1 for e in (a, b, old)), "the edges at v1")
        b.serving = lambda version: _stats(version, 10, 0)
        _wait(
            lambda: any(e.node_id == "edge-b" and e.serving is not None for e in service.fleet.edges()),
            "edge-b's stats",
        )
        pushed = ops.push_delta(
            [_item("shadow-item", 2.0)], canary_nodes=["edge-a"], shadow=True, shadow_sample=0.25
        )
        v2 = pushed.version
        assert pushed.rollout is not None and pushed.rollout.shadow and pushed.rollout.shadow_sample == 0.25
        _wait(lambda: any(c[3] for c in b.commits), "the shadow candidate on edge-b")
        shadow = next(c for c in b.commits if c[3])
        assert shadow[:4] == (v2, v1, True, True) and shadow[4] > 0 and b.shadow_chunks == shadow[4]
        assert not any(c[3] for c in a.commits)  # the canary serves it: no shadow
        assert b.version == v1 and old.version == v1
        assert not any(c[3] for c in old.commits)  # no ServingStats: no shadow (it could apply it)
        with pytest.raises(ClientError, match="not 99"):
            ops.promote(99)
        done = ops.promote(v2)
        assert done.rollout is not None and done.rollout.state == "promoted"
        _wait(lambda: b.version == v2 and old.version == v2, "edge-b at the promoted version")
        drop = [c for c in b.commits if c[3]][-1]
        assert drop == (v2, 0, True, True, 0)  # the shadow ended: a 0-chunk shadow commit first
        assert b.applied() == [v1, v2] and old.applied() == [v1, v2]
    finally:
        a.close()
        b.close()
        old.close()
        ops.close()


def test_canary_percent_picks_from_connected_edges_and_abort_by_ops(
    control: tuple[ControlPlaneService, str], bundle_dir: Path
) -> None:
    _service, address = control
    ops = ControlClient(address, timeout=30)
    with pytest.raises(ClientError, match="--canary-nodes"):
        ops.push(bundle_dir, canary_percent=50)  # nobody follows yet
    assert ops.history().head_version == 0  # refused: nothing committed
    v1 = ops.push(bundle_dir).version
    edges = [FakeEdge(f"edge-{i}", address) for i in range(3)]
    try:
        _wait(lambda: all(e.version == v1 for e in edges), "three edges at v1")
        pushed = ops.push_delta([_item("p", 2.0)], canary_percent=50)
        assert pushed.rollout is not None and len(pushed.rollout.canary_nodes) == 2
        canary = [e for e in edges if e.node in pushed.rollout.canary_nodes]
        rest = [e for e in edges if e.node not in pushed.rollout.canary_nodes]
        _wait(lambda: all(e.version == pushed.version for e in canary), "the canary at v2")
        done = ops.abort(reason="looked wrong")
        assert done.rollout is not None and done.rollout.reason == "looked wrong"
        _wait(lambda: all(e.version == done.version for e in edges), "every edge at the rollback")
        assert rest[0].applied() == [v1, done.version]
    finally:
        for e in edges:
            e.close()
        ops.close()


def test_a_healthy_canary_is_promoted_after_the_soak_time_when_configured(
    tmp_path: Path, bundle_dir: Path
) -> None:
    store = ControlStore(tmp_path / "control")
    policy = RolloutPolicy(min_decisions=100, check_seconds=0.1, promote_after_seconds=0.5)
    service = ControlPlaneService(store, heartbeat_seconds=0.2, rollout_policy=policy)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    service.start_background()
    ops = ControlClient(address, timeout=30)
    traffic = {"on": False}
    a = FakeEdge("edge-a", address, lambda v: _stats(v, 300 if traffic["on"] else 0, 3))
    b = FakeEdge("edge-b", address, lambda v: _stats(v, 300 if traffic["on"] else 0, 3))
    try:
        v1 = ops.push(bundle_dir).version
        _wait(lambda: a.version == v1 and b.version == v1, "both edges at v1")
        started = time.monotonic()
        v2 = ops.push_delta([_item("good", 2.0)], canary_nodes=["edge-a"]).version
        time.sleep(0.8)  # past the soak time, but not judged yet: no traffic
        rollout = ops.status().rollout
        assert rollout is not None and rollout.state == "canary" and b.version == v1
        traffic["on"] = True
        _wait(lambda: (r := ops.status().rollout) is not None and r.state == "promoted", "the promotion")
        rollout = ops.status().rollout
        assert rollout is not None and rollout.reason.startswith("automatic promotion")
        assert time.monotonic() - started >= 0.5
        _wait(lambda: b.version == v2, "edge-b at the promoted version")
    finally:
        a.close()
        b.close()
        ops.close()
        service.stop_background()
        server.stop(0).wait()
        store.close()
