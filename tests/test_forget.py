"""Right to be forgotten: a forget (`ControlClient.forget`, `edgewise ctl forget USER_ID`) removes the user
from the control plane and every edge (profile, live activity, outbox, stored events), and no rollback
or push brings it back."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import msgpack
import pytest

from edgewise.client import ForgetStatus, ForgottenUser
from edgewise.core.store import Store
from edgewise.sync.control_store import ControlStore
from edgewise.sync.event_store import EventStore
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess
from tests.sync_support import (
    ControlProcess,
    control_planes,
    following_edge,
    ops_client,
    versions_reach,
    wait_for,
)

pytestmark = pytest.mark.slow  # a control plane and edge nodes as real processes

OPS = {"EDGEWISE_OPS_TOKEN": "ops-fg-1"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-fg-1"}


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlProcess]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start()


def _edge(edge_factory: Callable[..., EdgeProcess], data: Path, address: str, node: str) -> EdgeProcess:
    return following_edge(edge_factory, data, address, node, EDGE)


def _holds(data: Path, user: str) -> list[str]:
    """What an edge's store still holds of `user`."""
    found = []
    with Store(data, readonly=True) as store, store.read() as view:
        if view.profile(user) is not None:
            found.append("profile")
        if view.activity(f"u:{user}") is not None:
            found.append("activity")
    for _, payload in Store(data, readonly=True).outbox_batch(1_000_000):
        if msgpack.unpackb(payload, raw=False).get("u") == user:
            found.append("outbox")
            break
    return found


def _generation(data: Path) -> int:
    with Store(data, readonly=True) as store, store.read() as view:
        return view.generation


def test_forget_removes_the_user_everywhere_and_rollback_does_not_bring_it_back(
    control: ControlProcess, edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    ops = ops_client(control.address, OPS)
    v1 = ops.push(bundle_dir).version
    datas = [tmp_path / "a", tmp_path / "b"]
    a = _edge(edge_factory, datas[0], control.address, "edge-a")
    b = _edge(edge_factory, datas[1], control.address, "edge-b")
    wait_for(versions_reach(datas, v1), 20, "edges at the push")
    profiles = [json.loads(line) for line in (bundle_dir / "profiles.jsonl").read_text().splitlines()]
    user = next(p["id"] for p in profiles if "personalization" in p["consent"])
    with grpc.insecure_channel(a.address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        events = [pb.Event(event_id=f"fg-{n}", type="view", user_id=user, item_id=f"i{n}") for n in range(5)]
        stub.Track(pb.TrackRequest(events=events, consent=["analytics", "personalization"]), timeout=10)
        stub.Decide(
            pb.DecideRequest(
                user_id=user,
                consent=["analytics", "personalization"],
                placements=[pb.PlacementRequest(placement_id="home")],
            ),
            timeout=10,
        )
    wait_for(lambda: ops.status().events_total >= 6, 20, "events and the exposure upstream")
    assert "activity" in _holds(datas[0], user)

    generations = [_generation(data) for data in datas]
    done = ops.forget(user)
    version = done.version
    assert done.events_removed == 6  # the five views and the exposure
    wait_for(versions_reach(datas, version), 20, "edges at the forget")
    for data in datas:
        assert _holds(data, user) == []
    # A forget changes per-user records only: the edges' workers keep their compiled version state.
    assert [_generation(data) for data in datas] == generations
    forgotten = ops.forget_status()
    assert forgotten == ForgetStatus(users=(ForgottenUser(user, version, ("edge-a", "edge-b"), ()),), total=1)
    assert ops.forget_status(user) == forgotten
    assert ops.forget_status("nobody") == ForgetStatus(users=(), total=1)
    with grpc.insecure_channel(b.address) as channel:
        response = pb_grpc.PersonalizerStub(channel).Decide(
            pb.DecideRequest(
                user_id=user,
                consent=["personalization"],
                placements=[pb.PlacementRequest(placement_id="home")],
            ),
            timeout=10,
        )
    assert response.placements[0].fallback_reason == pb.FALLBACK_REASON_UNKNOWN_USER

    # a rollback to before the forget and a new push of the same bundle do not bring the profile back
    ops.rollback(v1)
    v3 = ops.push(bundle_dir).version
    head = ops.history().head_version
    ops.close()
    wait_for(versions_reach(datas, head), 20, "edges at the rollback and push")
    for data in datas:
        assert _holds(data, user) == []
    assert v3 >= version  # both changed nothing: the forgotten profile was not brought back
    control.stop()
    with ControlStore(control.data) as store:
        with store.read() as view:
            assert view.get("profiles", user) is None
        for _, changes in store.commits_after(0):
            assert all(c.value is None for c in changes if c.namespace == "profiles" and c.key == user)
        assert store.snapshot_versions()  # retained snapshots exist (the rollback above used one)
        assert user in store.forgotten()
    with EventStore(control.data / "events") as events:
        assert all(e.get("u") != user for _, _, e in events.events())
