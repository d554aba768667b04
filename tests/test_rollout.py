"""Canary rollouts end to end (docs/rollouts.md): a real control plane and real edges as processes,
operated through `ControlClient` and `edgewise ctl`. The canary version reaches only the chosen edges,
promote reaches every edge, abort rolls the canary back while the other edges never apply the candidate
(their store digest and the versions they applied say so), and the rollout survives a control-plane
restart."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from edgewise.client import ClientError
from tests.conftest import EdgeProcess
from tests.nats_support import nats_cluster  # noqa: F401  (fixture)
from tests.rollout_support import item_delta
from tests.sync_support import (
    ControlProcess,
    applied_versions,
    control_planes,
    ctl,
    edge_state,
    following_edge,
    ops_client,
    versions_reach,
    wait_for,
)

pytestmark = pytest.mark.slow  # a control plane and edges as real processes

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-r"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-secret-r"}


@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[Callable[..., ControlProcess]]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start


def _two_edges(
    control: ControlProcess, edge_factory: Callable[..., EdgeProcess], tmp_path: Path, version: int
) -> dict[str, EdgeProcess]:
    edges = {
        node: following_edge(edge_factory, tmp_path / node, control.address, node, EDGE)
        for node in ("edge-a", "edge-b")
    }
    wait_for(versions_reach([tmp_path / n for n in edges], version), 30, "both edges at the first push")
    return edges


def test_canary_nodes_survive_a_restart_and_abort_never_reaches_the_rest(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    control = control_factory()
    with ops_client(control.address, OPS) as ops:
        v1 = ops.push(bundle_dir).version
    edges = _two_edges(control, edge_factory, tmp_path, v1)
    _, base_digest = edge_state(tmp_path / "edge-b")
    with ops_client(control.address, OPS) as ops:
        pushed = ops.push_delta(item_delta(tmp_path / "d.jsonl", "canary-item"), canary_nodes=["edge-a"])
    v2 = pushed.version
    assert pushed.rollout is not None and pushed.rollout.canary_nodes == ("edge-a",)
    wait_for(versions_reach([tmp_path / "edge-a"], v2), 20, "the canary at the candidate")
    candidate_digest = edge_state(tmp_path / "edge-a")[1]
    assert candidate_digest != base_digest

    control.stop(signal.SIGKILL)  # the rollout is in the control store: a restart keeps it
    control = control_factory(control.data, listen=f"127.0.0.1:{control.port}")
    with ops_client(control.address, OPS) as ops:
        wait_for(lambda: len([e for e in ops.status().edges if e.connected]) == 2, 30, "edges back")
        status = ops.status()
        assert status.rollout is not None and status.rollout.state == "canary"
        assert {e.node_id: e.canary for e in status.edges} == {"edge-a": True, "edge-b": False}
        with pytest.raises(ClientError) as refused:
            ops.push_delta(item_delta(tmp_path / "e.jsonl", "other"))
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "ctl promote" in refused.value.details
        time.sleep(1.5)  # heartbeats at 0.5 s: edge-b had every chance to get the candidate
        assert edge_state(tmp_path / "edge-b") == (v1, base_digest)
        aborted = ops.abort(reason="test abort")
    v3 = aborted.version
    assert aborted.rollout is not None and aborted.rollout.state == "aborted"
    assert aborted.rollout.rollback_version == v3 > v2
    wait_for(versions_reach([tmp_path / n for n in edges], v3), 30, "both edges at the rollback")
    assert edge_state(tmp_path / "edge-a") == (v3, base_digest)
    assert edge_state(tmp_path / "edge-b") == (v3, base_digest)
    assert v2 in applied_versions(edges["edge-a"])
    assert v2 not in applied_versions(edges["edge-b"]) and applied_versions(edges["edge-b"])[-1] == v3


def test_canary_percent_then_promote_through_the_cli(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    control = control_factory()
    env = {**OPS}
    ctl(control.address, "push", str(bundle_dir), "--quiet", env=env)
    with ops_client(control.address, OPS) as ops:
        v1 = ops.history().head_version
    edges = _two_edges(control, edge_factory, tmp_path, v1)
    delta = item_delta(tmp_path / "d.jsonl", "p-item")
    done = ctl(control.address, "push-delta", str(delta), "--canary", "50", env=env)
    assert "rollout of version" in done.stdout and "ctl promote" in done.stdout
    with ops_client(control.address, OPS) as ops:
        rollout = ops.status().rollout
    assert rollout is not None and len(rollout.canary_nodes) == 1  # 50% of 2 edges
    (canary,) = rollout.canary_nodes
    (other,) = set(edges) - {canary}
    v2 = rollout.version
    wait_for(versions_reach([tmp_path / canary], v2), 20, "the canary at the candidate")
    time.sleep(1.0)
    assert edge_state(tmp_path / other)[0] == v1
    status = ctl(control.address, "status", env=env).stdout
    assert "[canary]" in status and f"rollout of version {v2} over {v1}: canary" in status
    report = json.loads(ctl(control.address, "report", "--rollout", "--format", "json", env=env).stdout)
    assert report["state"] == "canary" and report["canary_nodes"] == [canary]
    refused = ctl(control.address, "push-delta", str(tmp_path / "d.jsonl"), env=env, check=False)
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
    promoted = ctl(control.address, "promote", env=env)
    assert f"version {v2} promoted" in promoted.stdout
    wait_for(versions_reach([tmp_path / n for n in edges], v2), 20, "every edge at the promoted version")
    assert edge_state(tmp_path / canary)[1] == edge_state(tmp_path / other)[1]
    # the rollout is over: a plain push reaches everyone
    v3_done = ctl(control.address, "push-delta", str(item_delta(tmp_path / "e.jsonl", "q-item")), env=env)
    assert "version" in v3_done.stdout
    with ops_client(control.address, OPS) as ops:
        v3 = ops.history().head_version
        assert ops.status().rollout is not None
    wait_for(versions_reach([tmp_path / n for n in edges], v3), 20, "every edge at the next push")


def test_a_version_that_makes_every_placement_fall_back_is_rolled_back_automatically(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    """Skipped at run time while the edges send no ServingStats in their heartbeats (the edge side of
    issue 21 item 3); tests/test_rollout_control.py drives the same abort through real Subscribe streams."""
    from edgewise.client import EdgeClient, FallbackReason

    control = control_factory(None, "--rollout-min-decisions", "30", "--rollout-check-seconds", "0.2")
    with ops_client(control.address, OPS) as ops:
        v1 = ops.push(bundle_dir).version
    edges = _two_edges(control, edge_factory, tmp_path, v1)
    _, base_digest = edge_state(tmp_path / "edge-b")
    # the bad version: every profile deleted, so every placement for a known user falls back (UNKNOWN_USER)
    users = [
        json.loads(line)["id"] for line in (bundle_dir / "profiles.jsonl").read_text().splitlines() if line
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"op": "delete", "profile": u}) + "\n" for u in users))
    with ops_client(control.address, OPS) as ops:
        v2 = ops.push_delta(bad, canary_nodes=["edge-a"]).version
    wait_for(versions_reach([tmp_path / "edge-a"], v2), 20, "the canary at the bad version")
    clients = {name: EdgeClient(edge.address) for name, edge in edges.items()}
    request = {
        "user_id": "u1",
        "consent": ["personalization"],
        "placements": [{"placement_id": "home", "count": 5}],
    }
    answer = clients["edge-a"].decide(request)
    assert all(p.fallback != FallbackReason.NONE for p in answer.placements), answer  # the canary falls back
    assert all(p.fallback == FallbackReason.NONE for p in clients["edge-b"].decide(request).placements), (
        clients["edge-b"].decide(request),
        answer,
    )
    deadline = time.monotonic() + 30
    rollout = None
    with ops_client(control.address, OPS) as ops:
        while time.monotonic() < deadline:
            for client in clients.values():
                for u in range(10):
                    client.decide({**request, "user_id": f"u{u}"})
            status = ops.status()
            if all(e.serving is None for e in status.edges):
                if time.monotonic() > deadline - 25:  # 5 s of traffic and heartbeats
                    pytest.skip(
                        "edges send no ServingStats in their heartbeats yet (the edge side of issue 21 "
                        "item 3); tests/test_rollout_control.py covers the automatic abort"
                    )
                continue
            rollout = status.rollout
            if rollout is not None and rollout.state == "aborted":
                break
    for client in clients.values():
        client.close()
    assert rollout is not None and rollout.state == "aborted" and "fallback" in rollout.reason
    wait_for(versions_reach([tmp_path / n for n in edges], rollout.rollback_version), 20, "rollback")
    assert edge_state(tmp_path / "edge-b")[1] == base_digest
    assert v2 not in applied_versions(edges["edge-b"])
