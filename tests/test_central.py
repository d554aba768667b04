"""The central tier's change log (docs/central.md): control-plane replicas (`control serve --nats`) over a
real 3-server JetStream cluster (tests/nats_support.py), real edges following them.

- Two replicas taking pushes at the same time: one total order of versions, the same history on both,
  no push lost.
- An edge following replica B applies a push made through replica A; edges following different
  replicas hold the same version and digest.
- A replica started later bootstraps from the newest snapshot in the object store plus the tail of the
  log (after compaction dropped the log's start) and serves the same state.
- Bad input: a NATS URL that does not answer, a stream created with settings the tier cannot use, a data
  directory holding an embedded control plane's store: exit 2 with a message; a replica cache of another
  cluster: rebuilt.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgewise.client import ControlClient, PushResult
from edgewise.nats_cluster import NatsCluster
from edgewise.processes import Process, Processes
from tests.conftest import EdgeProcess
from tests.nats_support import nats_cluster  # noqa: F401  (fixture)
from tests.sync_support import (
    edge_state,
    following_edge,
    nats_replicas,
    start_control,
    versions_reach,
    wait_for,
)

pytestmark = pytest.mark.slow

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-c"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-secret-c"}


@pytest.fixture
def replicas(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[Callable[..., Process]]:  # noqa: F811
    """A starter of replicas on the test's cluster (`start(name, *extra)`, data under tmp_path/name)."""
    with nats_replicas(tmp_path, nats_cluster.url_list, {**OPS, **EDGE}) as start:
        yield start


def _ops(replica: Process) -> ControlClient:
    return ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60)


def _item_delta(i: int) -> list[dict[str, object]]:
    return [
        {
            "op": "upsert",
            "item": {"id": f"new-{i}", "category": "home/kitchen", "price": 1.0 + i, "regions": ["*"]},
        }
    ]


def _history(replica: Process) -> list[tuple[int, int, str, str]]:
    with _ops(replica) as ops:
        return [(c.version, c.base_version, c.kind, c.description) for c in ops.history(limit=100).commits]


def test_two_replicas_pushing_at_once_make_one_order_and_edges_follow_either(
    replicas: Callable[..., Process],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    a, b = replicas("ra"), replicas("rb")
    with _ops(a) as ops:
        first = ops.push(bundle_dir).version
    edge_b = following_edge(edge_factory, tmp_path / "edge-b", b.address, "edge-b", EDGE)
    edge_a = following_edge(edge_factory, tmp_path / "edge-a", a.address, "edge-a", EDGE)
    datas = [tmp_path / "edge-a", tmp_path / "edge-b"]
    wait_for(versions_reach(datas, first), 30, "the edge following B at the push made through A")

    results: dict[int, PushResult] = {}
    errors: list[BaseException] = []

    def push(i: int) -> None:
        try:
            with _ops(a if i % 2 else b) as ops:
                results[i] = ops.push_delta(_item_delta(i), name=f"d{i}.jsonl")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    versions = sorted(r.version for r in results.values())
    assert len(set(versions)) == 6 and versions[0] > first

    head = versions[-1]
    wait_for(lambda: _history(a)[0][0] == head and _history(b)[0][0] == head, 20, "both replicas at the head")
    history = _history(a)
    assert history == _history(b)
    # one unbroken chain: every commit continues the one before it, each delta once
    chain = list(reversed(history))
    assert all(later[1] == earlier[0] for earlier, later in itertools.pairwise(chain))
    assert sorted(d for _, _, kind, d in history if kind == "delta") == sorted(
        f"d{i}.jsonl" for i in range(6)
    )
    assert {v for v, *_ in history} >= set(versions)

    wait_for(versions_reach(datas, head), 30, "both edges at the head")
    assert edge_state(datas[0]) == edge_state(datas[1])
    assert edge_state(datas[0])[0] == head
    with _ops(b) as ops:
        status = ops.status()
    assert status.head_version == head

    def fleet(replica: Process) -> dict[str, int]:
        with _ops(replica) as ops:
            return {e.node_id: e.applied_version for e in ops.status().edges}

    # the same fleet through either replica: each one's edges and the other's
    want = {"edge-a": head, "edge-b": head}
    wait_for(lambda: fleet(a) == want and fleet(b) == want, 20, "both edges in the status of both replicas")
    assert edge_a.address and edge_b.address


def test_a_new_replica_bootstraps_from_a_snapshot_and_the_tail(
    replicas: Callable[..., Process],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    a = replicas("ra")
    with _ops(a) as ops:
        ops.push(bundle_dir)
        ops.push_delta(_item_delta(1), name="d1.jsonl")
        ops.rollback(ops.history().commits[-1].version)  # a second full snapshot: the log is compacted
        head = ops.push_delta(_item_delta(2), name="d2.jsonl").version
    wait_for(
        lambda: len([e for e in a.log_events() if e.get("event") == "snapshot_written"]) >= 2, 20, "snapshots"
    )
    c = replicas("rc")
    assert _history(c)[0][0] == head
    assert any(e.get("event") == "replica_bootstrapped" for e in c.log_events())
    following_edge(edge_factory, tmp_path / "edge-a", a.address, "edge-a", EDGE)
    following_edge(edge_factory, tmp_path / "edge-c", c.address, "edge-c", EDGE)
    datas = [tmp_path / "edge-a", tmp_path / "edge-c"]
    wait_for(versions_reach(datas, head), 30, "edges of A and C at the head")
    assert edge_state(datas[0]) == edge_state(datas[1])


# --- bad input -------------------------------------------------------------------------------------


def _serve(data: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "edgewise.cli",
        "control",
        "serve",
        "--data",
        str(data),
        "--listen",
        "127.0.0.1:0",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def test_a_nats_url_that_does_not_answer_stops_the_start(tmp_path: Path) -> None:
    from tests.nats_support import require_nats

    require_nats()
    done = _serve(tmp_path / "r", "--nats", "nats://127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    assert "no NATS server answers at nats://127.0.0.1:9" in done.stderr


def test_a_stream_with_wrong_settings_stops_the_start(nats_cluster: NatsCluster, tmp_path: Path) -> None:  # noqa: F811
    async def create() -> None:
        import nats
        from nats.js.api import StreamConfig

        nc = await nats.connect(nats_cluster.urls)
        try:
            await nc.jetstream().add_stream(
                StreamConfig(
                    name="EDGEWISE_LOG", subjects=["edgewise.log.commit"], max_age=3600, num_replicas=3
                )
            )
        finally:
            await nc.close()

    asyncio.run(create())
    done = _serve(tmp_path / "r", "--nats", nats_cluster.url_list)
    assert done.returncode == 2, done.stderr
    assert "EDGEWISE_LOG exists with settings the control plane cannot use" in done.stderr
    assert "max_age = 3600" in done.stderr


def test_an_embedded_store_is_never_taken_as_a_cache(
    nats_cluster: NatsCluster,  # noqa: F811
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    from edgewise.sync.bundle import load_bundle
    from edgewise.sync.changes import bundle_records
    from edgewise.sync.control_store import ControlStore

    with ControlStore(tmp_path / "embedded") as store:
        store.replace_all(bundle_records(load_bundle(bundle_dir)), kind="push")
    done = _serve(tmp_path / "embedded", "--nats", nats_cluster.url_list)
    assert done.returncode == 2, done.stderr
    assert "holds an embedded control plane's store" in done.stderr
    with ControlStore(tmp_path / "embedded") as store:
        assert store.head_version() > 0


def test_a_cache_from_another_cluster_is_rebuilt(
    replicas: Callable[..., Process],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    with (
        NatsCluster(tmp_path / "other", size=1).start() as other,
        Processes(tmp_path / "run-other") as processes,
    ):
        stray = start_control(
            processes, tmp_path / "ra", "--nats", other.url_list, "--nats-replicas", "1", env=OPS
        )
        with _ops(stray) as ops:
            ops.push(bundle_dir)
            ops.push_delta(_item_delta(7), name="stray.jsonl")
        stray.stop()
    b = replicas("rb")
    with _ops(b) as ops:
        head = ops.push(bundle_dir).version
    a = replicas("ra")  # its cache holds the other cluster's commits
    assert any(e.get("event") == "replica_cache_rebuilt" for e in a.log_events())
    wait_for(lambda: _history(a) == _history(b), 20, "the rebuilt replica at B's history")
    assert _history(a)[0][0] == head
    assert json.dumps(_history(a)).count("stray.jsonl") == 0


# --- forwarded events in JetStream ------------------------------------------------------------------


def _track_views(address: str, ids: list[str]) -> int:
    import grpc

    from edgewise.v1 import personalizer_pb2 as pb
    from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        accepted = 0
        for start in range(0, len(ids), 50):
            events = [
                pb.Event(event_id=i, type="view", user_id=f"u{n % 50}", item_id=f"i{n % 30}")
                for n, i in enumerate(ids[start : start + 50], start)
            ]
            accepted += stub.Track(pb.TrackRequest(events=events, consent=["analytics"]), timeout=10).accepted
        return accepted


def _buy(address: str, user: str, ids: list[str]) -> None:
    import grpc

    from edgewise.v1 import personalizer_pb2 as pb
    from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        events = [pb.Event(event_id=i, type="purchase", user_id=user, item_id="i1", value=12.5) for i in ids]
        pb_grpc.PersonalizerStub(channel).Track(
            pb.TrackRequest(events=events, consent=["analytics"]), timeout=10
        )


def _orders(data: Path, user: str) -> int:
    from edgewise.core.store import Store

    with Store(data, readonly=True) as store, store.read() as view:
        profile = view.profile(user)
        return int(profile.attributes.get("orders", 0)) if profile is not None else -1


def _events_total(replica: Process) -> int:
    with _ops(replica) as ops:
        return ops.status().events_total


def test_forwarded_events_are_stored_once_and_folded_once_whichever_replica_takes_them(
    nats_cluster: NatsCluster,  # noqa: F811
    replicas: Callable[..., Process],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    import signal

    metrics = ("--metrics-listen", "127.0.0.1:0")
    a, b = replicas("ra", *metrics), replicas("rb", *metrics)
    with _ops(a) as ops:
        version = ops.push(bundle_dir).version
    edge_a = following_edge(edge_factory, tmp_path / "edge-a", a.address, "edge-a", EDGE)
    edge_b = following_edge(edge_factory, tmp_path / "edge-b", b.address, "edge-b", EDGE)
    datas = [tmp_path / "edge-a", tmp_path / "edge-b"]
    wait_for(versions_reach(datas, version), 30, "edges at the push")
    ids = [f"ev-{n}" for n in range(300)]
    assert _track_views(edge_a.address, ids) == 300
    assert _track_views(edge_b.address, ids[:100] + [f"evb-{n}" for n in range(100)]) == 200
    wait_for(lambda: _events_total(a) == 400 and _events_total(b) == 400, 30, "400 events in the stream")

    user = "u7"
    before = _orders(datas[1], user)
    _buy(edge_a.address, user, [f"buy-{n}" for n in range(4)])
    wait_for(lambda: _orders(datas[1], user) == before + 4, 20, "the purchases folded, seen on edge b")
    # edge a follows the other replica: the fold commit reaches it through that replica's log follower
    wait_for(lambda: _orders(datas[0], user) == before + 4, 20, "the purchases folded, seen on edge a")
    # the replicas' /metrics show the folds (whichever replica folded: the sum of both), and the backlogs
    # per partition of the partitions each works: together every partition once, nothing left to read
    scraped = [_scrape(a), _scrape(b)]
    assert sum(m["edgewise_control_folds_total"] for m in scraped) >= 1, scraped
    assert sum(m["edgewise_control_folded_profiles_total"] for m in scraped) >= 1, scraped
    assert all("edgewise_control_bandit_publishes_total" in m for m in scraped)

    def backlogs() -> list[dict[str, float]]:
        return [_labelled(r, "edgewise_control_fold_backlog_records", "partition") for r in (a, b)]

    wait_for(
        lambda: (
            sorted(p for b in backlogs() for p in b) == sorted(str(p) for p in range(8))
        ),  # the default `nats.partitions`
        20,
        "each partition's fold backlog on the replica that works it",
    )
    wait_for(lambda: all(v == 0 for b in backlogs() for v in b.values()), 20, "nothing left to fold")
    learners = [_labelled(r, "edgewise_control_learner_backlog_records", "partition") for r in (a, b)]
    assert all(v >= 0 for b in learners for v in b.values()), learners

    # the replica folding (the jobs lease holder) dies: the other one takes over, folds the rest once
    holder, other, other_edge = (a, b, 1) if _holds_lease(a) else (b, a, 0)
    assert _holds_lease(other) is False
    holder.stop(signal.SIGKILL)
    survivor_edge = edge_b if other_edge == 1 else edge_a
    _buy(survivor_edge.address, user, [f"buy-{n}" for n in range(4, 6)])
    wait_for(lambda: _orders(datas[other_edge], user) == before + 6, 30, "the later purchases folded once")
    wait_for(lambda: _holds_lease(other), 10, "the survivor holding the jobs lease")
    import time

    time.sleep(1.5)
    assert _orders(datas[other_edge], user) == before + 6
    assert _events_total(other) == 406

    # forget deletes the user's stored records in the stream too
    with _ops(other) as ops:
        forgotten = ops.forget(user)
    assert forgotten.events_removed >= 6
    assert _events_total(other) == 406 - forgotten.events_removed
    # ... and no message of the change log, no snapshot holds the user's profile any more
    assert _profile_copies(nats_cluster, user) == (0, 0)
    with _ops(other) as ops:  # the log still takes commits after its compaction
        ops.push_delta(_item_delta(9), name="after-forget.jsonl")


def _scrape(replica: Process) -> dict[str, float]:
    """The replica's /metrics, each family's samples summed by name."""
    url = f"http://{replica.wait_ready()['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def _labelled(replica: Process, name: str, label: str) -> dict[str, float]:
    """One family's samples on the replica's /metrics, by the value of `label`."""
    url = f"http://{replica.wait_ready()['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        sample.labels[label]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def _holds_lease(replica: Process) -> bool:
    gained = lost = 0
    for event in replica.log_events():
        if event.get("event") == "jobs_lease_gained":
            gained += 1
        elif event.get("event") == "jobs_lease_lost":
            lost += 1
    return gained > lost


def _profile_copies(cluster: NatsCluster, user: str) -> tuple[int, int]:
    """(log messages, snapshots) in JetStream holding a value of `user`'s profile."""
    import msgpack

    async def read() -> tuple[int, int]:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(cluster.urls)
        try:
            js = nc.jetstream()
            info = await js.stream_info("EDGEWISE_LOG")
            in_log = 0
            for seq in range(int(info.state.first_seq), int(info.state.last_seq) + 1):
                try:
                    raw = await js.get_msg("EDGEWISE_LOG", seq)
                except NotFoundError:
                    continue
                doc = msgpack.unpackb(raw.data or b"", raw=False)
                in_log += any(n == "profiles" and k == user and v is not None for n, k, v in doc.get("c", []))
            objects = await js.object_store("EDGEWISE_SNAPSHOTS")
            in_snapshots = 0
            for entry in await objects.list():
                if entry.name and entry.name.startswith("snapshot.") and not entry.deleted:
                    got = await objects.get(entry.name)
                    records = msgpack.unpackb(got.data or b"", raw=False)["records"]
                    in_snapshots += any(n == "profiles" and k == user for n, k, _ in records)
            return in_log, in_snapshots
        finally:
            await nc.close()

    return asyncio.run(read())
