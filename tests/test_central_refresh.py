"""Model refresh on the central tier: two replicas (`control serve --nats`) with the refresh on, over a
real 3-server JetStream cluster; the replica holding the jobs lease refreshes, once, and the edge
following the other replica applies it."""

from __future__ import annotations

import itertools
import re
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
from tests.sync_support import following_edge, nats_replicas, versions_reach, wait_for
from tests.test_refresh import REFRESH_FLAGS, decide, track

pytestmark = pytest.mark.slow

OPS = {"EDGEWISE_OPS_TOKEN": "ops-refresh-c"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-refresh-c"}


@pytest.fixture
def replicas(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[Callable[..., Process]]:  # noqa: F811
    with nats_replicas(tmp_path, nats_cluster.url_list, {**OPS, **EDGE}) as start:
        yield start


def _refreshes(replica: Process) -> list[tuple[int, str]]:
    with ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
        return [(c.version, c.description) for c in ops.history(limit=100).commits if c.kind == "refresh"]


def _counted(description: str) -> tuple[int, tuple[int, int]]:
    """(events counted, (first, last) sequence read) of a refresh commit's description."""
    match = re.match(r"refresh popularity: (\d+) events; events (\d+)\.\.(\d+) ", description)
    assert match is not None, description
    return int(match[1]), (int(match[2]), int(match[3]))


def test_one_replica_refreshes_once_and_every_edge_gets_it(
    replicas: Callable[..., Process], edge_factory: Callable[..., EdgeProcess], tmp_path: Path
) -> None:
    metrics = ("--metrics-listen", "127.0.0.1:0")
    a, b = replicas("ra", *REFRESH_FLAGS, *metrics), replicas("rb", *REFRESH_FLAGS, *metrics)
    with ControlClient(a.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
        pushed = ops.push(tiny_bundle(tmp_path / "bundle")).version
    edge = following_edge(edge_factory, tmp_path / "edge", b.address, "edge-c", EDGE)
    wait_for(versions_reach([tmp_path / "edge"], pushed), 30, "the edge at the push")
    track(edge.address, [("purchase", f"u{u}", "i5") for u in range(4)], "buy")
    wait_for(lambda: decide(edge.address, "top")[0] == "i5", 60, "the refreshed popularity on the edge")
    # the four purchases counted once, by one replica (in as many commits as batches reached it)
    popularity = [_counted(d) for _, d in _refreshes(a) if d.startswith("refresh popularity: ")]
    assert sum(n for n, _ in popularity) == 4, popularity
    ranges = sorted(r for _, r in popularity)
    assert all(x[1] < y[0] for x, y in itertools.pairwise(ranges)), ranges
    wait_for(lambda: _refreshes(b) == _refreshes(a), 20, "both replicas with the same refresh commits")
    # the refresh figures are on the /metrics of the replica running the jobs (the one holding the jobs
    # lease, which made the commits), and the other shows none
    runs = {name: _refresh_runs(replica) for name, replica in (("a", a), ("b", b))}
    holders = [name for name, by_model in runs.items() if by_model]
    assert len(holders) == 1, runs
    held = runs[holders[0]]
    assert set(held) == {"popularity", "neighbors"} and held["popularity"] >= 1, runs


def _refresh_runs(replica: Process) -> dict[str, float]:
    """edgewise_control_refresh_runs_total per model on the replica's /metrics."""
    url = f"http://{replica.wait_ready()['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        s.labels["model"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "edgewise_control_refresh_runs_total"
    }
