"""Large commits in the central tier (docs/central.md, "Large commits"): a commit whose changes are over
`INLINE_BYTES` (512 KiB) goes to the object store `EDGEWISE_SNAPSHOTS` as `commit.<position>.<id>`, the
log message naming it. A real 3-server cluster, two replicas, an edge following each.

- A push of a bundle of several MiB through replica A: applied by replica B from the object store, and
  by the edges of both, with the same digest.
- Compaction (the snapshots after later pushes) deletes the object once the log no longer holds its
  message; a forget (which compacts the log to a snapshot of the state after it) deletes the objects of
  every large commit before it: the user's profile is in none of them any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgewise.client import ControlClient
from edgewise.nats_cluster import NatsCluster
from edgewise.offline.synth import synth_bundle
from edgewise.processes import Process
from tests.conftest import EdgeProcess
from tests.nats_support import nats_cluster  # noqa: F401  (fixture)
from tests.sync_support import (
    edge_state,
    following_edge,
    nats_replicas,
    versions_reach,
    wait_for,
)

pytestmark = pytest.mark.slow

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-l"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-secret-l"}


@pytest.fixture
def replicas(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[Callable[..., Process]]:  # noqa: F811
    with nats_replicas(tmp_path, nats_cluster.url_list, {**OPS, **EDGE}, timeout=60) as start:
        yield start


def _ops(replica: Process) -> ControlClient:
    return ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=120)


def _head(replica: Process) -> int:
    with _ops(replica) as ops:
        return ops.history(limit=1).commits[0].version


def _objects(cluster: NatsCluster) -> dict[str, str]:
    """The large-commit objects in the snapshot store: name -> the id its chunks are stored under."""

    async def read() -> dict[str, str]:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(cluster.urls)
        try:
            store = await nc.jetstream().object_store("EDGEWISE_SNAPSHOTS")
            try:
                infos = await store.list()
            except NotFoundError:
                infos = []
            return {i.name: i.nuid for i in infos if i.name.startswith("commit.") and not i.deleted}
        finally:
            await nc.close()

    return asyncio.run(read())


def _chunks_stored(cluster: NatsCluster, nuid: str) -> bool:
    """Whether the snapshot store's stream still holds any chunk of the object stored under `nuid`."""

    async def read() -> bool:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(cluster.urls)
        try:
            await nc.jetstream().get_last_msg("OBJ_EDGEWISE_SNAPSHOTS", f"$O.EDGEWISE_SNAPSHOTS.C.{nuid}")
            return True
        except NotFoundError:
            return False
        finally:
            await nc.close()

    return asyncio.run(read())


def test_a_large_commit_reaches_every_replica_and_edge_and_leaves_with_compaction_and_forget(
    replicas: Callable[..., Process],
    edge_factory: Callable[..., EdgeProcess],
    nats_cluster: NatsCluster,  # noqa: F811
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    big = synth_bundle(tmp_path / "big", users=8000, items=1000, seed=3)  # about 3.3 MiB of changes
    a, b = replicas("ra"), replicas("rb")
    with _ops(a) as ops:
        first = ops.push(bundle_dir).version
    datas = [tmp_path / "edge-a", tmp_path / "edge-b"]
    following_edge(edge_factory, datas[0], a.address, "edge-a", EDGE)
    following_edge(edge_factory, datas[1], b.address, "edge-b", EDGE)
    wait_for(versions_reach(datas, first), 60, "both edges at the first push")

    with _ops(a) as ops:
        version = ops.push(big).version
    objects = _objects(nats_cluster)
    assert len(objects) == 1, objects  # the changes went to the object store, named by their log position
    (nuid,) = objects.values()
    assert _chunks_stored(nats_cluster, nuid)
    wait_for(lambda: _head(b) == version, 60, "replica B at the large commit")
    wait_for(versions_reach(datas, version), 90, "both edges at the large commit")
    assert edge_state(datas[0]) == edge_state(datas[1])
    assert edge_state(datas[0])[0] == version

    # later pushes: their snapshots compact the log past the large commit, and its object goes
    with _ops(a) as ops:
        ops.push(bundle_dir)
        ops.push(bundle_dir)
    wait_for(lambda: not _objects(nats_cluster), 60, "the large commit's object deleted by compaction")
    assert not _chunks_stored(nats_cluster, nuid)

    # a forget compacts the log to the state after it: no large commit before it keeps the profile
    with _ops(b) as ops:
        again = ops.push(big).version
    objects = _objects(nats_cluster)
    assert len(objects) == 1, objects
    (nuid,) = objects.values()
    with _ops(a) as ops:
        ops.forget("u17")
    assert _objects(nats_cluster) == {}  # gone by the time the forget is answered
    assert not _chunks_stored(nats_cluster, nuid)  # the chunks purged, not only the name marked deleted
    head = _head(a)
    assert head > again
    wait_for(lambda: _head(b) == head, 60, "replica B at the forget")
    wait_for(versions_reach(datas, head), 90, "both edges at the forget")
    assert edge_state(datas[0]) == edge_state(datas[1])
