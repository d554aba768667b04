"""New items' counts across a killed control plane, with real processes (docs/refresh.md, "New items"):
the embedded control plane killed and started again over its data, and a central-tier replica holding
the jobs lease killed so that the other one takes it (and rebuilds the counts from its events)."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgewise.client import ControlClient
from edgewise.nats_cluster import NatsCluster
from edgewise.processes import Process
from tests.conftest import EdgeProcess
from tests.nats_support import nats_cluster  # noqa: F401  (fixture)
from tests.refresh_support import tiny_bundle
from tests.sync_support import (
    ControlProcess,
    control_planes,
    following_edge,
    nats_replicas,
    pushed_edge,
    versions_reach,
    wait_for,
)
from tests.test_refresh import REFRESH_FLAGS, track

pytestmark = pytest.mark.slow

OPS = {"EDGEWISE_OPS_TOKEN": "ops-new-items"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-new-items"}
METRICS = ("--metrics-listen", "127.0.0.1:0")


def _descriptions(address: str) -> list[str]:
    with ControlClient(address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
        return [c.description for c in ops.history(limit=100).commits if c.kind == "refresh"]


def _new_items(address: str) -> bool:
    return any("new items" in d for d in _descriptions(address))


def _popularity_refreshed(address: str) -> bool:
    return any(d.startswith("refresh popularity: ") for d in _descriptions(address))


def test_the_counts_survive_a_killed_control_plane(
    tmp_path: Path, edge_factory: Callable[..., EdgeProcess]
) -> None:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        control: ControlProcess = start(None, *REFRESH_FLAGS)
        bundle = tiny_bundle(tmp_path / "bundle")
        _, edge = pushed_edge(control.address, edge_factory, bundle, tmp_path / "e1", "edge-1", OPS, EDGE)
        # one unit names the unknown item (with a known one, so the refresh commits)
        track(edge.address, [("view", "u1", "fresh"), ("purchase", "u1", "i5")], "one")
        wait_for(lambda: _popularity_refreshed(control.address), 30, "the first unit's events refreshed")
        assert not _new_items(control.address)
        control.stop(signal.SIGKILL)
        edge.stop()
        control = start(None, *REFRESH_FLAGS)
        edge = following_edge(edge_factory, tmp_path / "e2", control.address, "edge-2", EDGE)
        wait_for(lambda: bool(_descriptions(control.address)), 10, "the history after the restart")
        track(edge.address, [("view", "u2", "fresh")], "two")
        # min users 2: the unit before the kill still counts
        wait_for(lambda: _new_items(control.address), 30, "the new item's row after the restart")


@pytest.fixture
def replicas(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[Callable[..., Process]]:  # noqa: F811
    with nats_replicas(tmp_path, nats_cluster.url_list, {**OPS, **EDGE}) as start:
        yield start


def _refresh_runs(replica: Process) -> float:
    url = f"http://{replica.wait_ready()['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "edgewise_control_refresh_runs_total" and s.labels.get("model") == "popularity"
    )


def test_a_replica_taking_the_jobs_lease_rebuilds_the_counts(
    replicas: Callable[..., Process], edge_factory: Callable[..., EdgeProcess], tmp_path: Path
) -> None:
    a = replicas("ra", *REFRESH_FLAGS, *METRICS)
    wait_for(lambda: _refresh_runs(a) > 0, 20, "replica a holding the jobs lease")
    b = replicas("rb", *REFRESH_FLAGS, *METRICS)
    with ControlClient(a.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
        pushed = ops.push(tiny_bundle(tmp_path / "bundle")).version
    edge = following_edge(edge_factory, tmp_path / "edge", b.address, "edge-c", EDGE)
    wait_for(versions_reach([tmp_path / "edge"], pushed), 30, "the edge at the push")
    track(edge.address, [("view", "u1", "fresh"), ("purchase", "u1", "i5")], "one")
    # a's refresh commit (its cursor past the first unit's events) reached b through the log
    wait_for(lambda: _popularity_refreshed(b.address), 30, "the first unit's events refreshed")
    assert _refresh_runs(b) == 0 and not _new_items(b.address)
    a.stop(signal.SIGKILL)
    wait_for(lambda: _refresh_runs(b) > 0, 30, "replica b taking the jobs lease")
    track(edge.address, [("view", "u2", "fresh")], "two")
    wait_for(lambda: _new_items(b.address), 30, "the new item's row from b")
    assert any(e.get("event") == "new_items_rebuilt" for e in b.log_events()), b.log_tail()
