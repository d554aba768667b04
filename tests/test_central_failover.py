"""Edges following a list of NATS replicas fail over between them (docs/central.md, "A replica killed"):
a real 3-server JetStream cluster, 2 replicas, 2 edges with `--control a,b` (one with A first, one with B
first). A replica killed with SIGKILL: the edge that followed it switches to the other one and applies the
next push without a full snapshot (every replica holds the same commits at the same versions in the
cluster's lineage, so the other one resumes the edge from the version it applied), and its forwarding
moves along: every acknowledged event stored once, through either replica. An edge ahead of the replica
it moves to (that replica paused) resumes there too. `edgewise demo --nats` shows the same failover.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edgewise.client import ControlClient
from edgewise.nats_cluster import NatsCluster
from edgewise.processes import Process, Processes
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess
from tests.nats_support import nats_cluster, require_nats  # noqa: F401  (fixture)
from tests.sync_support import following_edge, start_control, versions_reach, wait_for

pytestmark = pytest.mark.slow

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-fo"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-secret-fo"}


def _ops(replica: Process) -> ControlClient:
    return ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=30)


def _track(address: str, ids: list[str]) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        events = [
            pb.Event(event_id=i, type="view", user_id=f"u{n % 40}", item_id=f"i{n % 30}")
            for n, i in enumerate(ids)
        ]
        return int(stub.Track(pb.TrackRequest(events=events, consent=["analytics"]), timeout=10).accepted)


def _events_total(replica: Process) -> int:
    with _ops(replica) as ops:
        return ops.status().events_total


def _applied(edge: EdgeProcess) -> list[dict[str, object]]:
    return [e for e in edge.log_events() if e.get("event") == "sync_applied"]


def test_an_edge_fails_over_to_the_other_replica_without_a_snapshot_and_forwards_once(
    tmp_path: Path,
    nats_cluster: NatsCluster,  # noqa: F811
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
) -> None:
    env = {**OPS, **EDGE}
    with Processes(tmp_path / "run", env=env) as processes:
        a, b = (
            start_control(processes, tmp_path / name, "--nats", nats_cluster.url_list, env=env)
            for name in ("ra", "rb")
        )
        with _ops(a) as ops:
            v1 = ops.push(bundle_dir).version
        datas = [tmp_path / "edge0", tmp_path / "edge1"]
        lists = [f"{a.address},{b.address}", f"{b.address},{a.address}"]
        edges = [following_edge(edge_factory, datas[i], lists[i], f"edge-{i}", EDGE) for i in range(2)]
        wait_for(versions_reach(datas, v1), 30, "both edges at the first push")
        assert _track(edges[0].address, [f"before-{n}" for n in range(100)]) == 100  # forwarded to A
        wait_for(lambda: _events_total(b) == 100, 20, "the events before the kill stored")

        a.stop(signal.SIGKILL)
        started = time.monotonic()
        with _ops(b) as ops:
            v2 = ops.push_delta(
                [
                    {
                        "op": "upsert",
                        "item": {"id": "it-x", "category": "home", "price": 2.0, "regions": ["*"]},
                    }
                ],
                name="after-kill.jsonl",
            ).version
        wait_for(versions_reach(datas, v2), 15, "both edges at the push after the kill")
        took = time.monotonic() - started
        assert took < 10, took

        # Edge 0 moved to B, told it the version it had applied, and got the commits after it: the first
        # snapshot (at start) was the only one.
        applied = _applied(edges[0])
        assert applied[0]["snapshot"] is True and not any(e["snapshot"] for e in applied[1:]), applied
        last = next(e for e in applied if e["version"] == v2)
        assert last["control"] == b.address
        logged = edges[0].log_events()
        connected = [e for e in logged if e.get("event") == "sync_connected"]
        assert [e["control"] for e in connected] == [a.address, b.address]
        assert connected[1]["resume_from"] >= v1
        assert not any(e["snapshot"] for e in _applied(edges[1])[1:])  # the edge on B never moved

        assert _track(edges[0].address, [f"after-{n}" for n in range(100)]) == 100  # forwarded to B now
        wait_for(lambda: _events_total(b) == 200, 20, "the events after the kill stored")

        a2 = start_control(
            processes, a.data, "--nats", nats_cluster.url_list, listen=f"127.0.0.1:{a.port}", env=env
        )  # back on its cache: the same count through it
        wait_for(lambda: _events_total(a2) == 200, 20, "the restarted replica counting the same events")
        time.sleep(1.0)
        assert _events_total(a2) == _events_total(b) == 200  # none lost, none counted twice


def test_an_edge_ahead_of_the_replica_it_moves_to_waits_for_the_log_rather_than_a_snapshot(
    tmp_path: Path,
    nats_cluster: NatsCluster,  # noqa: F811
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
) -> None:
    # Replica B is paused (SIGSTOP) while a push goes through A and the edge applies it; A is killed and
    # B resumed: the edge says to B it has a version B's store has not applied yet. B waits for its log
    # follower rather than sending a full snapshot of its older head.
    env = {**OPS, **EDGE}
    with Processes(tmp_path / "run", env=env) as processes:
        a, b = (
            start_control(processes, tmp_path / name, "--nats", nats_cluster.url_list, env=env)
            for name in ("ra", "rb")
        )
        with _ops(a) as ops:
            v1 = ops.push(bundle_dir).version
        data = tmp_path / "edge"
        edge = following_edge(edge_factory, data, f"{a.address},{b.address}", "edge-ahead", EDGE)
        wait_for(versions_reach([data], v1), 30, "the edge at the first push")
        time.sleep(0.5)
        os.kill(b.pid, signal.SIGSTOP)
        try:
            with _ops(a) as ops:
                v2 = ops.push_delta(
                    [
                        {
                            "op": "upsert",
                            "item": {"id": "it-y", "category": "home", "price": 3.0, "regions": ["*"]},
                        }
                    ],
                    name="while-b-paused.jsonl",
                ).version
            wait_for(versions_reach([data], v2), 15, "the edge at the push through A")
            a.stop(signal.SIGKILL)
            time.sleep(0.5)  # the edge is connecting to B, which cannot answer yet
        finally:
            os.kill(b.pid, signal.SIGCONT)
        with _ops(b) as ops:
            v3 = ops.push_delta(
                [
                    {
                        "op": "upsert",
                        "item": {"id": "it-z", "category": "home", "price": 4.0, "regions": ["*"]},
                    }
                ],
                name="after-a-killed.jsonl",
            ).version
        wait_for(versions_reach([data], v3), 20, "the edge at the push through B")
        applied = _applied(edge)
        assert applied[0]["snapshot"] is True and not any(e["snapshot"] for e in applied[1:]), applied
        subscribed = [e for e in b.log_events() if e.get("event") == "edge_subscribed"]
        assert subscribed and subscribed[-1]["version"] >= v2


def test_the_nats_demo_shows_the_killed_replicas_edge_failing_over() -> None:
    require_nats()
    done = subprocess.run(
        [sys.executable, "-m", "edgewise.cli", "demo", "--nats"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "edge-a failed over to replica B (" in out and "NOT moved" not in out, out
    assert "full snapshots after the first: 0; identical data: yes" in out, out
    assert "(500 distinct ids: counted once)" in out, out
    # a canary pushed through replica A reaches edge-a only, and a promote through replica B every edge
    canary = out.split("\n7. A canary rollout")[1].split("after the promotion: ")
    assert "edge-a at version" in canary[0] and "edge-b still at version" in canary[0], out
    assert "NO" not in canary[0] and "promoted: every edge gets it now" in canary[0], out
    assert canary[1].startswith("yes"), out
