"""Control plane and delta sync end to end: real control-plane and edge processes, operated through
`ControlClient`; what `edgewise ctl` prints over it is checked in `test_ctl_prints_what_it_did`."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from edgewise.client import BundleError, ClientError, FleetStatus
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess
from tests.sync_support import (
    ControlProcess,
    control_planes,
    ctl,
    edge_state,
    following_edge,
    ops_client,
    pushed_edge,
    pushed_version,
    versions_reach,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here runs a control plane (and edges) as real processes

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-1"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-secret-1"}


@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[Callable[..., ControlProcess]]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start


def _edge(
    edge_factory: Callable[..., EdgeProcess], data: Path, control: ControlProcess, node: str, *extra: str
) -> EdgeProcess:
    return following_edge(edge_factory, data, control.address, node, EDGE, *extra)


def _following_edge(
    control: ControlProcess,
    edge_factory: Callable[..., EdgeProcess],
    bundle: Path,
    data: Path,
    node: str,
    *extra: str,
) -> tuple[int, EdgeProcess]:
    """Push `bundle`, start an edge following `control`, wait until it applied the push."""
    return pushed_edge(control.address, edge_factory, bundle, data, node, OPS, EDGE, *extra)


def _decide(address: str, user: str) -> pb.DecideResponse:
    with grpc.insecure_channel(address) as channel:
        request = pb.DecideRequest(
            user_id=user,
            consent=["personalization", "analytics"],
            placements=[pb.PlacementRequest(placement_id="home", count=5)],
        )
        return pb_grpc.PersonalizerStub(channel).Decide(request, timeout=10)


def _status(control: ControlProcess) -> FleetStatus:
    with ops_client(control.address, OPS) as ops:
        return ops.status()


def test_push_converges_two_edges_and_delta_reaches_both(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    control = control_factory()
    ops = ops_client(control.address, OPS)
    version = ops.push(bundle_dir).version
    assert version > 0
    edges = [_edge(edge_factory, tmp_path / f"edge{i}", control, f"edge-{i}") for i in range(2)]
    datas = [tmp_path / "edge0", tmp_path / "edge1"]
    wait_for(versions_reach(datas, version), 20, "both edges at the pushed version")
    (v0, d0), (v1, d1) = edge_state(datas[0]), edge_state(datas[1])
    assert v0 == v1 == version and d0 == d1
    a, b = (_decide(e.address, "u1") for e in edges)
    assert a.snapshot_version == b.snapshot_version == version
    assert [i.id for i in a.placements[0].items] == [i.id for i in b.placements[0].items]

    delta = tmp_path / "delta.jsonl"
    delta.write_text(
        json.dumps(
            {
                "op": "upsert",
                "item": {"id": "new-item-1", "category": "home/kitchen", "price": 9.5, "regions": ["*"]},
                "popularity": 1e6,
            }
        )
        + "\n"
    )
    v2 = ops.push_delta(delta).version
    assert v2 > version
    wait_for(versions_reach(datas, v2), 10, "both edges at the delta's version")
    assert edge_state(datas[0]) == edge_state(datas[1])
    status = ops.status()
    assert status.head_version == v2
    rows = {e.node_id: e for e in status.edges}
    assert set(rows) == {"edge-0", "edge-1"}
    for row in rows.values():
        assert row.applied_version == v2 and row.lag == 0 and row.connected
    assert [c.kind for c in ops.history().commits[:2]] == ["delta", "push"]
    ops.close()


def test_invalid_push_changes_nothing_and_names_the_line(
    control_factory: Callable[..., ControlProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    control = control_factory()
    ops = ops_client(control.address, OPS)
    version = ops.push(bundle_dir).version
    delta = tmp_path / "bad.jsonl"
    delta.write_text(
        json.dumps({"op": "delete", "item": "new-item-that-does-not-exist"})
        + "\n"
        + json.dumps({"op": "frobnicate", "item": "x"})
        + "\n"
    )
    with pytest.raises(ClientError) as refused:
        ops.push_delta(delta)
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT and "line 1" in refused.value.details
    assert ops.history().head_version == version
    ops.close()


def test_tokens_are_checked(
    control_factory: Callable[..., ControlProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    control = control_factory()
    no_token = ctl(control.address, "status", env={"EDGEWISE_OPS_TOKEN": ""}, check=False)
    assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stderr
    wrong = ctl(control.address, "status", env={"EDGEWISE_OPS_TOKEN": "nope"}, check=False)
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr
    edge_token = ctl(
        control.address,
        "push",
        str(bundle_dir),
        env={"EDGEWISE_OPS_TOKEN": EDGE["EDGEWISE_EDGE_TOKEN"]},
        check=False,
    )
    assert edge_token.returncode == 1 and "PERMISSION_DENIED" in edge_token.stderr
    assert "ops-secret-1" not in control.logs() and "edge-secret-1" not in control.logs()


def test_ctl_prints_what_it_did(
    control_factory: Callable[..., ControlProcess], bundle_dir: Path, bundle_copy: Path, tmp_path: Path
) -> None:
    """`edgewise ctl` over ControlClient: its wording, its JSON documents and its exit codes."""
    address = control_factory().address
    pushed = ctl(address, "push", str(bundle_dir), "--quiet", "--description", "first", env=OPS)
    assert pushed.stdout.startswith("pushed bundle 1 (300 items, 400 profiles): version ")
    v1 = pushed_version(pushed)
    delta = tmp_path / "d.jsonl"
    delta.write_text(json.dumps({"op": "delete", "profile": "u3"}) + "\n")
    done = ctl(address, "push-delta", str(delta), env=OPS)
    v2 = pushed_version(done)
    assert done.stdout == f"pushed delta d.jsonl: version {v2}, 1 changes\n" and v2 > v1
    rolled = ctl(address, "rollback", str(v1), env=OPS)
    assert rolled.stdout.startswith(f"rolled back to the state of version {v1}: new version ")
    v3 = int(rolled.stdout.split("new version ")[1].split(",")[0])
    assert v3 > v2

    history = json.loads(ctl(address, "history", "--json", env=OPS).stdout)
    assert (history["head_version"], history["snapshot_versions"]) == (v3, [v1, v3])
    assert [c["kind"] for c in history["commits"]] == ["rollback", "delta", "push"]
    assert list(history["commits"][2]) == [
        "version",
        "base_version",
        "kind",
        "changes",
        "created_at_ms",
        "description",
    ]
    table = ctl(address, "history", env=OPS).stdout.splitlines()
    assert table[0].startswith(f"head {v3}; log from ")
    assert table[1].split() == ["version", "kind", "changes", "created", "(UTC)", "description"]
    assert table[-1].split()[:2] == [str(v1), "push"] and table[-1].endswith("  first")
    status = json.loads(ctl(address, "status", "--json", env=OPS).stdout)
    assert status == {"head_version": v3, "events_total": 0, "edges": [], "rollout": None}
    text = ctl(address, "status", env=OPS).stdout
    assert text.startswith(f"head version {v3}; 0 edges; 0 events stored upstream\nnode ")

    forgot = ctl(address, "forget", "u5", env=OPS).stdout
    assert forgot.startswith("forgot u5: version ") and "stored events removed upstream" in forgot
    listing = ctl(address, "forget", "--status", env=OPS).stdout
    assert listing.startswith("1 user forgotten; the newest 1:\nu5: version ")
    assert listing.endswith("; confirmed by -; pending on -\n")
    rows = json.loads(ctl(address, "forget", "--status", "u5", "--json", env=OPS).stdout)
    assert [(r["user_id"], r["confirmed"], r["pending"]) for r in rows] == [("u5", [], [])]
    nobody = ctl(address, "forget", "--status", "nobody", env=OPS).stdout
    assert nobody == "nobody was not forgotten (1 user forgotten in all)\n"

    # refusals: exit 1 and one line on stderr; a bad flag value: argparse's exit 2
    refused = ctl(address, "rollback", "999999", env=OPS, check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("edgewise ctl: FAILED_PRECONDITION: ")
    (bundle_copy / "items.jsonl").write_text('{"id": "a"}\n')
    bad = ctl(address, "push", str(bundle_copy), env=OPS, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("edgewise ctl: push refused, nothing uploaded: ")
    assert "items.jsonl" in bad.stderr and bad.stdout == ""
    missing = ctl(address, "push-delta", str(tmp_path / "nope.jsonl"), env=OPS, check=False)
    assert (missing.returncode, missing.stderr) == (
        1,
        f"edgewise ctl: {tmp_path / 'nope.jsonl'}: no such file\n",
    )
    no_user = ctl(address, "forget", env=OPS, check=False)
    assert (no_user.returncode, no_user.stderr) == (1, "edgewise ctl: forget needs a USER_ID (or --status)\n")
    limit = ctl(address, "forget", "--status", "--limit", "0", env=OPS, check=False)
    assert limit.returncode == 2 and "--limit: must be 1-1000, got 0" in limit.stderr
    assert json.loads(ctl(address, "history", "--json", env=OPS).stdout)["head_version"] > v3  # the forget


def test_restarted_control_plane_resumes_edges_with_deltas(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    control = control_factory()
    _, edge = _following_edge(control, edge_factory, bundle_dir, tmp_path / "edge", "edge-r")
    control.stop(signal.SIGKILL)
    # same port, so the edge's reconnects find it again
    control2 = control_factory(control.data, listen=f"127.0.0.1:{control.port}")
    delta = tmp_path / "d.jsonl"
    delta.write_text(json.dumps({"op": "delete", "profile": "u1"}) + "\n")
    with ops_client(control2.address, OPS) as ops:
        v2 = ops.push_delta(delta).version
    wait_for(versions_reach([tmp_path / "edge"], v2), 40, "edge at the delta after the restart")
    applied = [e for e in edge.log_events() if e.get("event") == "sync_applied"]
    assert applied[0]["snapshot"] is True
    assert all(e["snapshot"] is False for e in applied[1:]) and applied[-1]["version"] == v2
    # u1 is gone from the edge: Decide answers it as an unknown user
    response = _decide(edge.address, "u1")
    assert response.placements[0].fallback_reason == pb.FALLBACK_REASON_UNKNOWN_USER


def test_edge_restart_serves_from_disk_and_resumes(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    control = control_factory()
    version, edge = _following_edge(control, edge_factory, bundle_dir, tmp_path / "edge", "edge-s")
    edge.stop(signal.SIGKILL)
    control.stop(signal.SIGKILL)
    # the control plane is down: the edge still starts and serves its last state from disk
    edge2 = _edge(edge_factory, tmp_path / "edge", control, "edge-s")
    assert _decide(edge2.address, "u2").snapshot_version == version


def test_shard_holds_only_its_profiles(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    from edgewise.core.store import Store
    from edgewise.sync.shard import parse_shard

    control = control_factory()
    _, edge = _following_edge(
        control, edge_factory, bundle_dir, tmp_path / "edge", "edge-half", "--shard", "hash:0-50/100"
    )
    shard = parse_shard("hash:0-50/100")
    users = [f"u{i}" for i in range(400)]
    with Store(tmp_path / "edge", readonly=True) as store, store.read() as view:
        held = {u for u in users if view.profile(u) is not None}
        assert view.count("items") == 300
    assert held == {u for u in users if shard.holds(u, None)}
    outside = next(u for u in users if u not in held)
    response = _decide(edge.address, outside)
    assert response.placements[0].fallback_reason == pb.FALLBACK_REASON_UNKNOWN_USER
    assert _status(control).edges[0].shard == "hash:0-50/100"


def test_rollback_publishes_the_old_state_and_edges_follow(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    control = control_factory()
    ops = ops_client(control.address, OPS)
    v1 = ops.push(bundle_dir).version
    _edge(edge_factory, tmp_path / "edge", control, "edge-rb")
    wait_for(versions_reach([tmp_path / "edge"], v1), 20, "edge at the first push")
    _, digest_v1 = edge_state(tmp_path / "edge")
    delta = tmp_path / "d.jsonl"
    delta.write_text(
        json.dumps({"op": "delete", "profile": "u3"})
        + "\n"
        + json.dumps(
            {"op": "upsert", "item": {"id": "rb-item", "category": "x/y", "price": 1.0, "regions": ["*"]}}
        )
        + "\n"
    )
    v2 = ops.push_delta(delta).version
    wait_for(versions_reach([tmp_path / "edge"], v2), 10, "edge at the delta")
    assert edge_state(tmp_path / "edge")[1] != digest_v1
    v3 = ops.rollback(v1).version
    assert v3 > v2
    wait_for(versions_reach([tmp_path / "edge"], v3), 10, "edge at the rollback")
    assert edge_state(tmp_path / "edge") == (v3, digest_v1)
    history = ops.history()
    assert [c.kind for c in history.commits[:3]] == ["rollback", "delta", "push"]
    assert v1 in history.snapshot_versions
    with pytest.raises(ClientError) as refused:
        ops.rollback(999999)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    ops.close()


def test_bad_bundle_is_refused_before_upload_and_flags_conflict(
    control_factory: Callable[..., ControlProcess], bundle_copy: Path, tmp_path: Path
) -> None:
    control = control_factory()
    (bundle_copy / "items.jsonl").write_text('{"id": "a"}\n')
    with ops_client(control.address, OPS) as ops:
        with pytest.raises(BundleError, match=r"items\.jsonl"):
            ops.push(bundle_copy)
        assert ops.history().head_version == 0
    import subprocess
    import sys

    both = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgewise.cli",
            "edge",
            "serve",
            "--data",
            str(tmp_path / "d"),
            "--bundle",
            str(bundle_copy),
            "--control",
            control.address,
            "--print-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert both.returncode == 2 and "sync.control" in both.stderr


def test_a_new_control_store_gets_a_snapshot_not_deltas(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    """Versions of another control store's history mean nothing: the edge is resent a full snapshot."""
    control = control_factory(tmp_path / "control-a")
    v1, edge = _following_edge(control, edge_factory, bundle_dir, tmp_path / "edge", "edge-l")
    control.stop()
    # store B, same address, same bundle: its head passes v1 with one more delta, so without the lineage
    # check the edge would be sent "the commits after v1" of an unrelated history
    control_b = control_factory(tmp_path / "control-b", listen=f"127.0.0.1:{control.port}")
    ops = ops_client(control_b.address, OPS)
    assert ops.push(bundle_dir).version == v1
    rows = (bundle_dir / "profiles.jsonl").read_text().splitlines()
    v_b = ops.push_delta([{"op": "delete", "profile": "u5"}]).version
    ops.close()
    assert v_b > v1
    wait_for(versions_reach([tmp_path / "edge"], v_b), 30, "edge at store B's head")
    applied = [e for e in edge.log_events() if e.get("event") == "sync_applied"]
    assert applied[1]["snapshot"] is True  # the first commit from store B is a full snapshot
    from edgewise.core.store import Store

    with Store(tmp_path / "edge", readonly=True) as store, store.read() as view:
        assert view.count("profiles") == len(rows) - 1
        assert view.profile("u5") is None
