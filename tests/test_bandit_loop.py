"""Bandit learning end to end: bandit decisions on an edge, clicks, the control plane's learner publishes
new posteriors, and the edge serves with them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgewise.core.store import Store
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess
from tests.sync_support import (
    ControlProcess,
    control_planes,
    ctl,
    pushed_version,
    versions_reach,
    wait_for,
)

OPS = {"EDGEWISE_OPS_TOKEN": "ops-bl-1"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-bl-1"}


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlProcess]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start(None, "--bandit-every-rewards", "5", "--bandit-every-seconds", "0.5")


def _arms(data: Path) -> dict[str, tuple[float, float]]:
    with Store(data, readonly=True) as store, store.read() as view:
        doc: Any = view.rules_doc()
    return {a["id"]: (a["alpha"], a["beta"]) for a in doc["bandits"]["promo_bandit"]["arms"]}


def test_clicks_on_one_arm_raise_its_posterior_on_the_edge(
    control: ControlProcess, edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    version = pushed_version(ctl(control.address, "push", str(bundle_dir), env=OPS))
    os.environ.update(EDGE)
    edge = edge_factory(
        tmp_path / "edge", None, "--control", control.address, "--node-id", "e1", "--workers", "1"
    )
    wait_for(versions_reach([tmp_path / "edge"], version), 20, "edge at the push")
    before = _arms(tmp_path / "edge")
    served: dict[str, int] = {}
    clicked: dict[str, int] = {}
    with grpc.insecure_channel(edge.address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        for n in range(120):
            response = stub.Decide(
                pb.DecideRequest(
                    session_id=f"bl-{n}",
                    consent=["analytics", "personalization"],
                    placements=[pb.PlacementRequest(placement_id="promo_slot")],
                ),
                timeout=10,
            )
            slot = response.placements[0]
            if slot.fallback_reason == pb.FALLBACK_REASON_HOLDOUT:
                continue  # the global holdout gets the default
            assert slot.strategy == "bandit" and slot.experiment_id == "promo_bandit"
            served[slot.variant_id] = served.get(slot.variant_id, 0) + 1
            if slot.variant_id == "gift_wrap" or n % 10 == 0:  # gift_wrap always converts
                clicked[slot.variant_id] = clicked.get(slot.variant_id, 0) + 1
                click = pb.Event(
                    event_id=f"bl-click-{n}",
                    type="click",
                    session_id=f"bl-{n}",
                    decision_id=response.decision_id,
                    placement_id="promo_slot",
                )
                stub.Track(pb.TrackRequest(events=[click], consent=["analytics"]), timeout=10)

    def learned() -> bool:
        after = _arms(tmp_path / "edge")
        seen_alpha = sum(after[a][0] - before[a][0] for a in after)
        seen_beta = sum(after[a][1] - before[a][1] for a in after)
        shown = sum(served.values())
        return seen_alpha == sum(clicked.values()) and seen_beta == shown - sum(clicked.values())

    assert sum(served.values()) > 100
    wait_for(learned, 30, "every impression and click in the edge's posteriors")
    after = _arms(tmp_path / "edge")
    for arm, (alpha, beta) in after.items():
        assert alpha - before[arm][0] == clicked.get(arm, 0)
        assert beta - before[arm][1] == served.get(arm, 0) - clicked.get(arm, 0)
    history = ctl(control.address, "history", env=OPS).stdout
    assert "bandit posteriors" in history
