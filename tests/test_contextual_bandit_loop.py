"""Contextual bandit learning end to end: a bundle with a contextual bandit pushed to a real control plane,
a real edge following it serves `edgewise call decide` with a context, clicks come back through
`edgewise call track`, the edge forwards exposures (with their feature vectors) and clicks, and the
control plane's learner publishes each arm's A and b, which reach the edge."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from linear_support import ARMS, add_contextual_bandit

from edgewise.core.linear_bandits import compile_linear_bandit
from edgewise.core.store import Store
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess
from tests.sync_support import ControlProcess, control_planes, ops_client, pushed_edge, wait_for

pytestmark = pytest.mark.slow  # runs a control plane, an edge and the CLI

OPS = {"EDGEWISE_OPS_TOKEN": "ops-cb-1"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-cb-1"}
LEARN_FAST = ("--bandit-every-rewards", "5", "--bandit-every-seconds", "0.5")
DIM = 7  # intercept, device mobile/desktop, channel web/app, profile.age_band=18-24, segment deal_seekers


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlProcess]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start(None, *LEARN_FAST)


def _cli(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "edgewise.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def _vector(device: str, channel: str) -> np.ndarray:
    return np.array(
        [1.0, device == "mobile", device == "desktop", channel == "web", channel == "app", 0.0, 0.0]
    )


def _models(data: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with Store(data, readonly=True) as store, store.read() as view:
        doc: Any = view.rules_doc()
    arms = doc["bandits"]["ctx_bandit"]["arms"]
    return {a["id"]: (np.array(a.get("A", np.eye(DIM))), np.array(a.get("b", np.zeros(DIM)))) for a in arms}


def test_the_control_plane_learns_each_arm_s_model_from_the_edge_s_exposures(
    control: ControlProcess,
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    add_contextual_bandit(bundle)
    data = tmp_path / "edge"
    _, edge = pushed_edge(control.address, edge_factory, bundle, data, "e1", OPS, EDGE)
    served: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    clicked: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    consent = ("--consent", "analytics", "--consent", "personalization")

    # Through the CLI: decide with a context, click what was served.
    for n, (device, channel) in enumerate((("mobile", "web"), ("desktop", "app"))):
        answer = _cli(
            "call", "decide", "--target", edge.address, "--session", f"cb-cli-{n}", *consent,
            "--context", f"device={device}", "--context", f"channel={channel}", "--placement", "ctx_slot",
        )  # fmt: skip
        slot = answer["placements"][0]
        if slot.get("fallbackReason") == "FALLBACK_REASON_HOLDOUT":
            continue  # the global holdout gets the default
        assert slot["strategy"] == "bandit" and slot["experimentId"] == "ctx_bandit"
        assert 0.0 < slot["propensity"] <= 1.0
        served[slot["variantId"]].append(_vector(device, channel))
        _cli(
            "call", "track", "--target", edge.address, "--type", "click", "--session", f"cb-cli-{n}",
            "--decision", answer["decisionId"], "--placement", "ctx_slot", "--consent", "analytics",
        )  # fmt: skip
        clicked[slot["variantId"]].append(_vector(device, channel))

    # More traffic over gRPC: mobile visitors click only "ten_off", desktop ones only "gift_wrap".
    with grpc.insecure_channel(edge.address) as channel_:
        stub = pb_grpc.PersonalizerStub(channel_)
        for n in range(80):
            device, channel = ("mobile", "desktop")[n % 2], ("web", "app")[(n // 2) % 2]
            response = stub.Decide(
                pb.DecideRequest(
                    session_id=f"cb-{n}",
                    consent=["analytics", "personalization"],
                    context=pb.Context(device=device, channel=channel),
                    placements=[pb.PlacementRequest(placement_id="ctx_slot")],
                ),
                timeout=10,
            )
            slot = response.placements[0]
            if slot.fallback_reason == pb.FALLBACK_REASON_HOLDOUT:
                continue
            assert slot.experiment_id == "ctx_bandit"
            x = _vector(device, channel)
            served[slot.variant_id].append(x)
            if (device, slot.variant_id) in (("mobile", "ten_off"), ("desktop", "gift_wrap")):
                clicked[slot.variant_id].append(x)
                click = pb.Event(
                    event_id=f"cb-click-{n}",
                    type="click",
                    session_id=f"cb-{n}",
                    decision_id=response.decision_id,
                    placement_id="ctx_slot",
                )
                stub.Track(pb.TrackRequest(events=[click], consent=["analytics"]), timeout=10)
    assert sum(len(v) for v in served.values()) > 60

    def learned() -> bool:
        models = _models(data)
        for arm in ARMS:
            a, b = models[arm]
            want_a = np.eye(DIM) + sum((np.outer(x, x) for x in served[arm]), np.zeros((DIM, DIM)))
            want_b = sum(clicked[arm], np.zeros(DIM))
            if not (np.allclose(a, want_a) and np.allclose(b, want_b)):
                return False
        return True

    wait_for(learned, 30, "every exposure's x x' in A and every click's x in b, once, on the edge")
    with ops_client(control.address, OPS) as ops:
        assert any("bandit posteriors" in c.description for c in ops.history().commits)
    # The edge serves with the learned models and logs their exact propensities.
    with Store(data, readonly=True) as store, store.read() as view:
        doc: Any = view.rules_doc()
    policy = compile_linear_bandit(doc["bandits"]["ctx_bandit"], "bandits.ctx_bandit")
    expected = dict(zip(ARMS, policy.probabilities(_vector("mobile", "web").tolist()), strict=True))
    assert max(expected.values()) > 0.4  # the learned models no longer give each arm a third
    with grpc.insecure_channel(edge.address) as channel_:
        stub = pb_grpc.PersonalizerStub(channel_)
        for n in range(40):
            slot = stub.Decide(
                pb.DecideRequest(
                    session_id=f"cb-after-{n}",
                    consent=["personalization"],
                    context=pb.Context(device="mobile", channel="web"),
                    placements=[pb.PlacementRequest(placement_id="ctx_slot")],
                ),
                timeout=10,
            ).placements[0]
            if slot.experiment_id == "ctx_bandit":
                assert slot.propensity == pytest.approx(expected[slot.variant_id], rel=1e-6)
