"""Model refresh end to end: Track on a real edge following a real control plane, the forwarded events
refreshed into popularity, neighbours and new items, the refresh commits applied on the edge (its
Decide shows them), and a refresh rolled back like any push."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess
from tests.refresh_support import tiny_bundle
from tests.sync_support import (
    ControlProcess,
    control_planes,
    ops_client,
    pushed_edge,
    versions_reach,
    wait_for,
)

OPS = {"EDGEWISE_OPS_TOKEN": "ops-refresh-1"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-refresh-1"}
REFRESH_FLAGS = (
    "--refresh-popularity",
    "--refresh-popularity-every",
    "1s",
    "--refresh-new-items",
    "--refresh-new-item-min-users",
    "2",
    "--refresh-neighbors",
    "--refresh-neighbors-every",
    "1s",
)


@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[Callable[..., ControlProcess]]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start


def track(address: str, events: list[tuple[str, str, str]], tag: str) -> None:
    """Track (type, user, item) events on the edge, with the analytics purpose (so they are forwarded)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        batch = [
            pb.Event(event_id=f"{tag}-{n}", type=kind, user_id=user, item_id=item)
            for n, (kind, user, item) in enumerate(events)
        ]
        reply = stub.Track(
            pb.TrackRequest(events=batch, consent=["analytics", "personalization"]), timeout=10
        )
        assert reply.accepted == len(batch)


def decide(address: str, placement: str, *, seeds: tuple[str, ...] = ()) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.PersonalizerStub(channel).Decide(
            pb.DecideRequest(
                session_id="watcher",
                consent=["personalization"],
                placements=[pb.PlacementRequest(placement_id=placement, seed_item_ids=list(seeds))],
            ),
            timeout=10,
        )
    return [item.id for item in response.placements[0].items]


def _refreshes(control: ControlProcess) -> list[tuple[int, str]]:
    with ops_client(control.address, OPS) as ops:
        return [(c.version, c.description) for c in ops.history(50).commits if c.kind == "refresh"]


@pytest.mark.slow
def test_tracked_events_refresh_the_models_an_edge_serves(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    tmp_path: Path,
) -> None:
    control = control_factory(None, *REFRESH_FLAGS)
    bundle = tiny_bundle(tmp_path / "bundle")
    pushed, edge = pushed_edge(control.address, edge_factory, bundle, tmp_path / "edge", "edge-r", OPS, EDGE)
    assert decide(edge.address, "top") == ["i0", "i1", "i2"]
    assert decide(edge.address, "sim", seeds=("i3",))[0] == "i4"  # the bundle's neighbour

    # purchases of the least popular item, and i3 viewed together with i1 by three users
    track(edge.address, [("purchase", f"u{u}", "i5") for u in range(4)], "buy")
    track(
        edge.address,
        [(kind, f"u{u}", item) for u in (6, 7, 8) for kind, item in (("view", "i3"), ("view", "i1"))],
        "co",
    )
    wait_for(lambda: decide(edge.address, "top")[0] == "i5", 30, "the refreshed popularity on the edge")
    wait_for(
        lambda: decide(edge.address, "sim", seeds=("i3",))[0] == "i1",
        30,
        "the refreshed neighbours on the edge",
    )
    refreshes = _refreshes(control)
    assert any(d.startswith("refresh popularity: ") for _, d in refreshes)
    assert any(d.startswith("refresh neighbors: ") for _, d in refreshes)

    # an item the catalog does not have: a row once two users had it, then servable
    track(edge.address, [("view", "u1", "fresh"), ("view", "u2", "fresh")], "new")
    wait_for(lambda: any("1 new items" in d for _, d in _refreshes(control)), 30, "the new item's commit")
    track(edge.address, [("purchase", f"u{u}", "fresh") for u in range(9)], "hot")
    wait_for(lambda: decide(edge.address, "top")[0] == "fresh", 30, "the new item served")

    # a refresh rolls back like any push: back to the bundle's popularity
    with ops_client(control.address, OPS) as ops:
        rolled = ops.rollback(pushed).version
    wait_for(versions_reach([tmp_path / "edge"], rolled), 20, "the edge at the rollback")
    assert decide(edge.address, "top") == ["i0", "i1", "i2"]
    assert decide(edge.address, "sim", seeds=("i3",))[0] == "i4"
