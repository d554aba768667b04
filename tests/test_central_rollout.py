"""Canary rollouts through the NATS central tier (docs/rollouts.md, "The NATS central tier"): a real
3-server JetStream cluster, two replicas (`control serve --nats`) and edges as real processes, each edge
following one replica. The rollout state travels in the change log, so whichever replica takes the push,
the promote or the abort, every replica's fan-out holds the edges outside the canary set at the base
version; the canary by percent counts the edges of both replicas; the automatic abort judges the edges
of both and runs once; the rollout survives a SIGKILL of the replica that took the push; a shadow pushed
through one replica is decided by the edges of both and summed through either; a promote and an abort
through the two replicas at once end the rollout once."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edgewise.client import ClientError, ControlClient, EdgeClient, FallbackReason
from edgewise.client import Rollout as RolloutStatus
from edgewise.nats_cluster import NatsCluster
from edgewise.processes import Process, Processes
from edgewise.sync.shadow_candidate import read_candidate
from tests.conftest import EdgeProcess
from tests.nats_support import nats_cluster  # noqa: F401  (fixture)
from tests.rollout_support import item_delta
from tests.sync_support import (
    applied_versions,
    ctl,
    edge_state,
    following_edge,
    start_control,
    versions_reach,
    wait_for,
)

pytestmark = pytest.mark.slow  # a NATS cluster, replicas and edges as real processes

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-cr"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-secret-cr", "EDGEWISE_SYNC_HEARTBEAT_SECONDS": "0.3"}
ENV = {**OPS, **EDGE}


def _ops(replica: Process) -> ControlClient:
    return ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=30)


def _replicas(
    processes: Processes, cluster: NatsCluster, tmp_path: Path, *extra: str
) -> tuple[Process, Process]:
    a, b = (
        start_control(processes, tmp_path / name, "--nats", cluster.url_list, *extra, env=ENV)
        for name in ("ra", "rb")
    )
    return a, b


def _edges(
    edge_factory: Callable[..., EdgeProcess], tmp_path: Path, follow: dict[str, str], version: int
) -> dict[str, EdgeProcess]:
    """An edge per node id, following the replica address(es) given for it; once all are at `version`."""
    edges = {n: following_edge(edge_factory, tmp_path / n, to, n, EDGE) for n, to in follow.items()}
    wait_for(versions_reach([tmp_path / n for n in edges], version), 30, "every edge at the first push")
    return edges


def _connected(replica: Process, count: int) -> None:
    """Until the replica's status (the shared fleet) shows `count` connected edges."""

    def check() -> bool:
        with _ops(replica) as ops:
            return len([e for e in ops.status().edges if e.connected]) == count

    wait_for(check, 20, f"{count} edges connected in {replica.address}'s fleet", interval=0.2)


def test_a_canary_pushed_through_one_replica_reaches_only_its_edges_and_a_promote_through_the_other_all(
    tmp_path: Path,
    nats_cluster: NatsCluster,  # noqa: F811
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
) -> None:
    with Processes(tmp_path / "run", env=ENV) as processes:
        a, b = _replicas(processes, nats_cluster, tmp_path)
        with _ops(a) as ops:
            v1 = ops.push(bundle_dir).version
        # edge-0 follows A, edge-1 and edge-2 follow B: 67% of the fleet is 2 edges (of A's alone, 1)
        follow = {"edge-0": a.address, "edge-1": b.address, "edge-2": b.address}
        edges = _edges(edge_factory, tmp_path, follow, v1)
        _connected(a, 3)
        with _ops(a) as ops:
            pushed = ops.push_delta(item_delta(tmp_path / "d.jsonl", "canary-item"), canary_percent=67)
        v2 = pushed.version
        assert pushed.rollout is not None and len(pushed.rollout.canary_nodes) == 2, pushed.rollout
        canary = sorted(pushed.rollout.canary_nodes)
        (other,) = set(edges) - set(canary)
        wait_for(versions_reach([tmp_path / n for n in canary], v2), 20, "the canary edges at the candidate")
        time.sleep(1.0)  # both replicas had every chance to send the candidate to the other edge
        assert edge_state(tmp_path / other)[0] == v1
        with _ops(b) as ops:  # the other replica has the same rollout, from the log
            status = ops.status()
            assert status.rollout is not None and status.rollout.state == "canary"
            assert status.rollout.version == v2 and status.rollout.base_version == v1
            assert {e.node_id for e in status.edges if e.canary} == set(canary)
            text = ctl(b.address, "status", env=OPS).stdout  # the CLI through B, as on the embedded plane
            assert "[canary]" in text and f"rollout of version {v2} over {v1}: canary" in text
            report = json.loads(ctl(b.address, "report", "--rollout", "--format", "json", env=OPS).stdout)
            assert report["state"] == "canary" and report["canary_nodes"] == canary
            promoted = ops.promote()
        assert promoted.rollout is not None and promoted.rollout.state == "promoted"
        wait_for(versions_reach([tmp_path / n for n in edges], v2), 20, "every edge at the promoted version")
        digests = {edge_state(tmp_path / n)[1] for n in edges}
        assert len(digests) == 1
        with _ops(a) as ops:  # promoted for A too: a plain push is taken, and reaches everyone
            wait_for(lambda: (r := ops.status().rollout) is not None and r.state == "promoted", 10, "A")
            v3 = ops.push_delta(item_delta(tmp_path / "e.jsonl", "after-item")).version
        wait_for(versions_reach([tmp_path / n for n in edges], v3), 20, "every edge at the next push")
        assert v2 in applied_versions(edges[other])


def test_an_aborted_rollout_survives_a_kill_of_the_replica_that_took_it_and_never_reaches_the_rest(
    tmp_path: Path,
    nats_cluster: NatsCluster,  # noqa: F811
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
) -> None:
    with Processes(tmp_path / "run", env=ENV) as processes:
        a, b = _replicas(processes, nats_cluster, tmp_path)
        with _ops(a) as ops:
            v1 = ops.push(bundle_dir).version
        # edge-a (the canary) follows B; edge-b follows A, then B once A is killed
        follow = {"edge-a": b.address, "edge-b": f"{a.address},{b.address}"}
        edges = _edges(edge_factory, tmp_path, follow, v1)
        _, base_digest = edge_state(tmp_path / "edge-b")
        with _ops(a) as ops:
            pushed = ops.push_delta(item_delta(tmp_path / "d.jsonl", "canary-item"), canary_nodes=["edge-a"])
        v2 = pushed.version
        wait_for(versions_reach([tmp_path / "edge-a"], v2), 20, "the canary (on B) at the candidate")
        assert edge_state(tmp_path / "edge-a")[1] != base_digest

        a.stop(signal.SIGKILL)  # the replica that took the push: the rollout is in the log
        _connected(b, 2)  # edge-b moved to B
        with _ops(b) as ops:
            status = ops.status()
            assert status.rollout is not None and status.rollout.state == "canary"
            assert {e.node_id: e.canary for e in status.edges} == {"edge-a": True, "edge-b": False}
            time.sleep(1.5)  # edge-b on B had every chance to get the candidate
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

        a2 = start_control(
            processes, a.data, "--nats", nats_cluster.url_list, listen=f"127.0.0.1:{a.port}", env=ENV
        )  # back on its cache: it has the abort from the log
        with _ops(a2) as ops:
            rollout = ops.status().rollout
            assert rollout is not None and rollout.state == "aborted" and rollout.reason == "test abort"
            assert ops.history().head_version == v3


def test_a_version_that_makes_every_placement_fall_back_is_aborted_once_whichever_replica_judges(
    tmp_path: Path,
    nats_cluster: NatsCluster,  # noqa: F811
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
) -> None:
    with Processes(tmp_path / "run", env=ENV) as processes:
        judging = ("--rollout-min-decisions", "30", "--rollout-check-seconds", "0.2")
        a, b = _replicas(processes, nats_cluster, tmp_path, *judging)
        with _ops(a) as ops:
            v1 = ops.push(bundle_dir).version
        edges = _edges(edge_factory, tmp_path, {"edge-a": b.address, "edge-b": a.address}, v1)
        _, base_digest = edge_state(tmp_path / "edge-b")
        profiles = (bundle_dir / "profiles.jsonl").read_text().splitlines()
        users = [json.loads(line)["id"] for line in profiles if line]
        bad = tmp_path / "bad.jsonl"  # every profile deleted: every placement for a known user falls back
        bad.write_text("".join(json.dumps({"op": "delete", "profile": u}) + "\n" for u in users))
        with _ops(a) as ops:
            v2 = ops.push_delta(bad, canary_nodes=["edge-a"]).version
        wait_for(versions_reach([tmp_path / "edge-a"], v2), 20, "the canary (on B) at the bad version")
        clients = {name: EdgeClient(edge.address) for name, edge in edges.items()}
        request = {
            "user_id": "u1",
            "consent": ["personalization"],
            "placements": [{"placement_id": "home", "count": 5}],
        }
        assert all(p.fallback != FallbackReason.NONE for p in clients["edge-a"].decide(request).placements)
        assert all(p.fallback == FallbackReason.NONE for p in clients["edge-b"].decide(request).placements)
        rollout = None
        deadline = time.monotonic() + 25
        try:
            with _ops(b) as ops:
                while time.monotonic() < deadline:
                    for client in clients.values():
                        for u in range(10):
                            client.decide({**request, "user_id": f"u{u}"})
                    rollout = ops.status().rollout
                    if rollout is not None and rollout.state == "aborted":
                        break
        finally:
            for client in clients.values():
                client.close()
        assert rollout is not None and rollout.state == "aborted", rollout
        assert rollout.reason.startswith("automatic abort: fallback rate"), rollout.reason
        assert rollout.canary.edges == 1 and rollout.rest.edges == 1  # one edge on each replica
        wait_for(versions_reach([tmp_path / n for n in edges], rollout.rollback_version), 20, "the rollback")
        assert edge_state(tmp_path / "edge-b")[1] == base_digest
        assert v2 not in applied_versions(edges["edge-b"])
        with _ops(a) as ops:  # one abort, whichever replica held the jobs lease
            aborts = [c for c in ops.history(50).commits if c.description.startswith("abort the rollout")]
            assert len(aborts) == 1, aborts


def test_a_shadow_rollout_through_one_replica_is_decided_by_the_edges_of_both(
    tmp_path: Path,
    nats_cluster: NatsCluster,  # noqa: F811
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
) -> None:
    with Processes(tmp_path / "run", env=ENV) as processes:
        a, b = _replicas(processes, nats_cluster, tmp_path)
        with _ops(a) as ops:
            v1 = ops.push(bundle_dir).version
        edges = _edges(edge_factory, tmp_path, {"edge-a": a.address, "edge-b": b.address}, v1)
        _connected(a, 2)
        with _ops(a) as ops:  # a shadow alone: every edge stays at v1 and decides every request with v2 too
            pushed = ops.push_delta(
                item_delta(tmp_path / "d.jsonl", "shadow-item"), shadow=True, shadow_sample=1.0
            )
        v2 = pushed.version
        assert pushed.rollout is not None and pushed.rollout.shadow and pushed.rollout.canary_nodes == ()
        wait_for(
            lambda: all((c := read_candidate(tmp_path / n)) is not None and c.version == v2 for n in edges),
            20,
            "both edges holding the candidate",
        )
        for edge in edges.values():
            wait_for(
                lambda: any(e.get("event") == "shadow_opened" for e in edge.log_events()),  # noqa: B023
                10,
                "the edge's worker opening the candidate",
            )
        request = {"consent": ["personalization"], "placements": [{"placement_id": "home", "count": 5}]}
        for edge in edges.values():
            with EdgeClient(edge.address) as client:
                for u in range(20):
                    assert client.decide({**request, "user_id": f"u{u}"}).snapshot_version == v1

        def summed() -> int:  # through the replica that did not take the push: both edges' figures
            with _ops(b) as ops:
                rollout = ops.status().rollout
            return 0 if rollout is None else rollout.shadow_stats.sampled

        wait_for(lambda: summed() == 40, 20, "both edges' shadow decisions summed", interval=0.3)
        assert all(edge_state(tmp_path / n)[0] == v1 for n in edges)
        with _ops(b) as ops:
            promoted = ops.promote()
        assert promoted.rollout is not None and promoted.rollout.shadow_stats.sampled == 40
        wait_for(versions_reach([tmp_path / n for n in edges], v2), 20, "every edge at the promoted version")
        wait_for(
            lambda: all(read_candidate(tmp_path / n) is None for n in edges), 10, "the candidates dropped"
        )


def _rollout_on(replica: Process) -> RolloutStatus | None:
    with _ops(replica) as ops:
        return ops.status().rollout


def _promote_and_abort_at_once(a: Process, b: Process) -> dict[str, object]:
    """A promote through `a` and an abort through `b` at the same time: what each answered."""
    results: dict[str, object] = {}

    def end(name: str, replica: Process) -> None:
        with _ops(replica) as ops:
            try:
                results[name] = ops.promote() if name == "promote" else ops.abort(reason="race")
            except ClientError as exc:
                results[name] = exc

    threads = [threading.Thread(target=end, args=(n, r)) for n, r in (("promote", a), ("abort", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_a_promote_and_an_abort_through_two_replicas_at_once_end_the_rollout_once(
    tmp_path: Path,
    nats_cluster: NatsCluster,  # noqa: F811
    bundle_dir: Path,
) -> None:
    with Processes(tmp_path / "run", env=ENV) as processes:
        a, b = _replicas(processes, nats_cluster, tmp_path)
        with _ops(a) as ops:
            ops.push(bundle_dir)
        for round_ in range(3):
            with _ops(a) as ops:  # a canary of an edge not connected yet: allowed, it gets it when it comes
                delta = item_delta(tmp_path / "d.jsonl", f"item-{round_}")
                v = ops.push_delta(delta, canary_nodes=["x"]).version
            wait_for(lambda: getattr(_rollout_on(b), "version", 0) == v, 10, "the rollout on B")  # noqa: B023
            results = _promote_and_abort_at_once(a, b)
            refused = [r for r in results.values() if isinstance(r, ClientError)]
            assert len(results) == 2 and len(refused) == 1, results
            assert refused[0].code is grpc.StatusCode.FAILED_PRECONDITION
            assert "no rollout in progress" in refused[0].details
            state = "aborted" if isinstance(results["promote"], ClientError) else "promoted"
            for replica in (a, b):
                wait_for(
                    lambda r=replica, s=state: getattr(_rollout_on(r), "state", "") == s,  # type: ignore[misc]
                    10,
                    f"the rollout {state} on both replicas",
                )
