"""The embeddings refresh on the refresh framework's schedule (sync/embedding_refresh_job.py): its commit
on a real control store and event store, the `[refresh] embeddings_*` keys, `control serve` without the
`train` extra, and end to end: Track purchases on a real edge following a real control plane, the
refresh commit in `ctl history`, the edge's arrays and a personalized Decide, then `ctl rollback`; and on
the central tier (two `control serve --nats` replicas), where the jobs lease holder alone retrains."""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgewise.client import ControlClient
from edgewise.core.embedding_slots import GENERATION_MODEL, active_generation
from edgewise.core.store import Store
from edgewise.nats_cluster import NatsCluster
from edgewise.processes import Process, Processes
from edgewise.sync.bundle import load_bundle
from edgewise.sync.bundle_write import write_bundle
from edgewise.sync.changes import bundle_records
from edgewise.sync.control_config import RefreshConfig, load_config
from edgewise.sync.control_serve import add_control_serve_arguments, run_control_serve
from edgewise.sync.control_store import ControlStore
from edgewise.sync.embedding_refresh_job import EmbeddingRefreshJob
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh_jobs import embedding_settings, refresh_jobs
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess
from tests.nats_support import nats_cluster  # noqa: F401  (fixture)
from tests.refresh_support import RULES, T0, event, exposure, tiny_bundle
from tests.sync_support import (
    ControlProcess,
    control_planes,
    following_edge,
    ops_client,
    pushed_edge,
    start_control,
    versions_reach,
    wait_for,
)

OPS = {"EDGEWISE_OPS_TOKEN": "ops-embed-1"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-embed-1"}
N_ITEMS = 6
DIM = 4


def _implicit() -> None:
    pytest.importorskip("implicit", reason="the `train` extra (implicit) is not installed")


# --- the job on real stores -------------------------------------------------------------------------------


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[ControlStore, EventStore]]:
    bundle = load_bundle(tiny_bundle(tmp_path / "bundle"))
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        store.replace_all(bundle_records(bundle), kind="push")
        yield store, events


def _purchases(pairs: list[tuple[str, str]], tag: str, ts: int = T0) -> list[tuple[str, str, bytes]]:
    return [event(f"{tag}{n}", "purchase", user, item, ts + n) for n, (user, item) in enumerate(pairs)]


CO_BOUGHT = [
    ("u0", "i5"),
    *[(f"u{u}", item) for u in (1, 2, 3) for item in ("i5", "i4")],
    *[(f"u{u}", item) for u in (5, 6, 7, 8) for item in ("i0", "i1")],
    *[(f"u{u}", item) for u in (4, 9) for item in ("i2", "i3")],
]
"""Purchases that train every item: u0 bought i5, which u1..u3 bought with i4."""


def test_the_job_commits_a_refresh_once_per_new_item_event(stores: tuple[ControlStore, EventStore]) -> None:
    _implicit()
    store, events = stores
    commits: list[int] = []
    settings = embedding_settings(RefreshConfig(embeddings=True, embeddings_iterations=20))
    job = EmbeddingRefreshJob(
        store,
        events,
        threading.Lock(),
        lambda: commits.append(1),
        settings,
        every=60,
        commit_profiles=4,
        commit_pause=0,
    )
    assert job.run_once() is None  # no events yet
    events.ingest("n1", _purchases(CO_BOUGHT, "p"))
    head = store.head_version()
    info = job.run_once()
    assert info is not None and not isinstance(info, int)
    # the 10 profiles' new vectors in 3 staging commits of at most 4, then the flip
    assert info.kind == "refresh" and commits == [1] * 4
    assert (job.stats.staged, job.stats.commits) == (3, 1)  # the /metrics figures: staging commits, flips
    assert len([c for c in store.history(10) if c.version > head]) == 4
    n = len(CO_BOUGHT)
    assert info.description == (
        f"refresh embeddings: als on {n} events, 10 users, 6 items trained, generation 1; "
        f"events 1..{n} (2025-11-24T16:00:00Z..2025-11-24T16:00:00Z)"
    )
    assert [c.description for c in store.history(4)][1:] == [
        f"refresh embeddings staging: generation 1, batch {b} of 3, {n} profiles"
        for b, n in ((3, 2), (2, 4), (1, 4))
    ]
    changed = {(c.namespace, c.key) for _, changes in store.commits_after(head) for c in changes}
    assert ("models", "item_embeddings") in changed and ("profiles", "u0") in changed
    assert store.cursor("refresh:embeddings") == n
    assert job.run_once() is None  # nothing new: no training, no commit
    events.ingest("n1", [exposure("d1", "u0", "DE", [])])
    assert job.run_once() == n + 1  # an exposure only: the cursor moves, nothing is trained
    assert store.head_version() == info.version
    assert commits == [1] * 4
    job.stop()  # never started; a stopped job commits nothing, even with new events
    events.ingest("n1", _purchases(CO_BOUGHT[1:], "q"))
    assert job.run_once() is None and store.head_version() == info.version


def test_the_schedule_counts_from_the_last_refresh_commit(stores: tuple[ControlStore, EventStore]) -> None:
    _implicit()
    store, events = stores
    settings = embedding_settings(RefreshConfig(embeddings=True, embeddings_iterations=20))

    def job(every: float) -> EmbeddingRefreshJob:
        return EmbeddingRefreshJob(
            store, events, threading.Lock(), lambda: None, settings, every=every, commit_pause=0
        )

    daily = job(86_400)
    assert daily.last_refresh_ms() == 0
    events.ingest("n1", _purchases(CO_BOUGHT, "p"))
    daily._tick()  # no refresh in the log: due at once
    (last,) = [c for c in store.history(5) if c.description.startswith("refresh embeddings:")]
    assert daily.last_refresh_ms() == last.created_at_ms
    events.ingest("n1", _purchases(CO_BOUGHT[1:], "q"))
    daily._tick()
    restarted = job(86_400)  # a restart (or the lease moving) does not restart the clock
    restarted._tick()
    assert store.head_version() == last.version
    job(0.001)._tick()  # due: the new events retrain
    assert store.head_version() > last.version


def test_the_refresh_keys_make_the_job_and_its_settings() -> None:
    config, _ = load_config(
        None,
        {"EDGEWISE_CONTROL_REFRESH_EMBEDDINGS": "true", "EDGEWISE_CONTROL_REFRESH_EMBEDDINGS_METHOD": "bpr"},
        {
            "data.dir": "/srv",
            "refresh.embeddings_every": "1h",
            "refresh.embeddings_half_life": "0",
            "refresh.embeddings_seed": "7",
            "refresh.embeddings_learning_rate": "0.01",
        },
    )
    refresh = config.refresh
    assert refresh.embeddings and refresh.embeddings_every == timedelta(hours=1)
    settings = embedding_settings(refresh)
    assert settings.half_life_days is None  # 0: no decay
    training = settings.training
    assert (training.method, training.seed, training.learning_rate, training.factors) == ("bpr", 7, 0.01, 0)
    assert (training.iterations, training.regularization, training.alpha) == (15, 0.1, 20.0)
    assert embedding_settings(RefreshConfig()).half_life_days == 90.0
    jobs = refresh_jobs(refresh, None, None, threading.Lock(), lambda: None)  # type: ignore[arg-type]
    assert [type(job) for job in jobs] == [EmbeddingRefreshJob]
    assert jobs[0].every == 3600.0 and jobs[0]._loop.interval == 60.0  # checks whether due every minute
    assert refresh_jobs(RefreshConfig(), None, None, threading.Lock(), lambda: None) == []  # type: ignore[arg-type]


def test_control_serve_without_the_train_extra_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("implicit", "implicit.cpu", "implicit.cpu.als", "implicit.cpu.bpr"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises
    parser = argparse.ArgumentParser()
    add_control_serve_arguments(parser)
    args = parser.parse_args(["--data", str(tmp_path / "ctl"), "--refresh-embeddings"])
    assert run_control_serve(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgewise control serve: refresh.embeddings: training embeddings needs")
    assert "pip install 'edgewise[train]'" in err
    assert not (tmp_path / "ctl").exists()  # refused before opening anything


# --- end to end: a control plane and an edge, real processes ---------------------------------------------

FOR_YOU = {
    "kind": "items",
    "default_count": 1,
    "default": {"strategy": "popular"},
    "campaigns": [{"id": "personal", "serve": {"strategy": "personalized", "exclude_purchased": True}}],
}


def _bundle(out: Path) -> Path:
    """The refresh tests' tiny bundle with a personalized placement and a vector in every profile."""
    rng = np.random.default_rng(5)
    return write_bundle(
        out,
        version=1,
        schema={"profile_fields": {"country": {"type": "string", "purpose": "personalization"}}},
        items=[
            {"id": f"i{i}", "category": "shop/things", "price": 1.0 + i, "regions": ["*"]}
            for i in range(N_ITEMS)
        ],
        profiles=[
            {
                "id": f"u{u}",
                "attributes": {"country": "DE"},
                "consent": {"personalization": T0 - 86_400_000, "analytics": T0 - 86_400_000},
            }
            for u in range(10)
        ],
        rules={**RULES, "placements": {**RULES["placements"], "foryou": FOR_YOU}},
        item_embeddings=rng.random((N_ITEMS, DIM)).astype(np.float32),
        user_embeddings=rng.random((10, DIM)).astype(np.float32),
        item_popularity=np.arange(N_ITEMS, 0, -1, dtype=np.float32),
    )


def _track(address: str, pairs: list[tuple[str, str]]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        for user in sorted({user for user, _ in pairs}):
            batch = [
                pb.Event(event_id=f"{user}-{item}", type="purchase", user_id=user, item_id=item)
                for who, item in pairs
                if who == user
            ]
            reply = stub.Track(
                pb.TrackRequest(events=batch, consent=["analytics", "personalization"]), timeout=10
            )
            assert reply.accepted == len(batch)


def _for_you(address: str, user: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.PersonalizerStub(channel).Decide(
            pb.DecideRequest(
                user_id=user,
                consent=["personalization"],
                placements=[pb.PlacementRequest(placement_id="foryou")],
            ),
            timeout=10,
        )
    return [item.id for item in response.placements[0].items]


def _edge_model(data: Path) -> tuple[np.ndarray, bytes | None]:
    """The edge's item_embeddings and u0's profile vector, read from outside."""
    with Store(data, readonly=True) as store, store.read() as view:
        items = view.array("item_embeddings")
        profile = view.profile("u0", active_generation(view.array(GENERATION_MODEL)))
        assert items is not None and profile is not None
        # copies: the view's arrays are LMDB's memory, gone once the read ends
        vector = None if profile.embedding is None else bytes(profile.embedding)
        return np.array(items), vector


@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[Callable[..., ControlProcess]]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start


@pytest.mark.slow
@pytest.mark.parametrize("method", ["als", "hybrid"])
def test_purchases_on_an_edge_retrain_its_embeddings_and_roll_back(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    tmp_path: Path,
    method: str,
) -> None:
    if method != "hybrid":  # the hybrid needs NumPy only
        _implicit()
    control = control_factory(
        None,
        "--refresh-embeddings",
        "--refresh-embeddings-every",
        "1s",
        "--refresh-embeddings-method",
        method,
    )
    bundle = _bundle(tmp_path / "bundle")
    pushed, edge = pushed_edge(control.address, edge_factory, bundle, tmp_path / "edge", "edge-e", OPS, EDGE)
    items_before, u0_before = _edge_model(tmp_path / "edge")
    assert u0_before is not None and _for_you(edge.address, "u0") != ["i4"]

    _track(edge.address, CO_BOUGHT)

    def history() -> list[tuple[int, str, str]]:
        with ops_client(control.address, OPS) as ops:
            return [(c.version, c.kind, c.description) for c in ops.history(100).commits]

    def refreshes() -> list[tuple[int, str]]:
        return [(version, description) for version, kind, description in history() if kind == "refresh"]

    # the edge serves u0 what its co-buyers bought (i4; i5 is bought already), from the new vectors
    wait_for(lambda: _for_you(edge.address, "u0") == ["i4"], 60, "the retrained embeddings on the edge", 0.2)
    done = refreshes()
    flips = [d for _, d in done if not d.startswith("refresh embeddings staging: ")]
    assert flips and all(d.startswith(f"refresh embeddings: {method} on ") for d in flips)
    items_after, u0_after = _edge_model(tmp_path / "edge")
    assert items_after.shape == items_before.shape and not np.array_equal(items_after, items_before)
    assert u0_after is not None and u0_after != u0_before
    assert np.argmax(items_after @ np.frombuffer(u0_after, dtype="<f4")) in (4, 5)

    # rolled back like any push: the version before the first embeddings refresh, the bundle's vectors
    first = min(version for version, _ in done)
    before = max(version for version, _, _ in history() if version < first)
    with ops_client(control.address, OPS) as ops:
        rolled = ops.rollback(before).version
    wait_for(versions_reach([tmp_path / "edge"], rolled), 20, "the edge at the rollback")
    items_back, u0_back = _edge_model(tmp_path / "edge")
    np.testing.assert_array_equal(items_back, items_before)
    assert u0_back == u0_before
    assert pushed < first


EVERY_SECOND = ("--refresh-embeddings", "--refresh-embeddings-every", "1s")


@pytest.mark.slow
def test_on_the_central_tier_the_lease_holder_retrains_and_every_replica_gets_it(
    tmp_path: Path,
    nats_cluster: NatsCluster,  # noqa: F811
    edge_factory: Callable[..., EdgeProcess],
) -> None:
    _implicit()
    env = {**OPS, **EDGE}
    with Processes(tmp_path / "run", env=env) as processes:
        a, b = (
            start_control(processes, tmp_path / name, "--nats", nats_cluster.url_list, *EVERY_SECOND, env=env)
            for name in ("ra", "rb")
        )
        with ControlClient(a.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
            pushed = ops.push(_bundle(tmp_path / "bundle")).version
        edge = following_edge(edge_factory, tmp_path / "edge", b.address, "edge-c", EDGE)
        wait_for(versions_reach([tmp_path / "edge"], pushed), 30, "the edge at the push")
        _track(edge.address, CO_BOUGHT)
        wait_for(lambda: _for_you(edge.address, "u0") == ["i4"], 60, "the retrained embeddings", 0.2)

        def refreshes(replica: Process) -> list[tuple[int, str]]:
            with ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
                commits = ops.history(limit=100).commits
            return [
                (c.version, c.description)
                for c in commits
                if c.kind == "refresh" and not c.description.startswith("refresh embeddings staging:")
            ]

        wait_for(lambda: refreshes(a) == refreshes(b), 20, "both replicas with the same refresh commits")
        # one replica trains (the lease holder): each commit read up to a later event than the one before
        ends = [int(d.split("; events ")[1].split(" ")[0].split("..")[1]) for _, d in sorted(refreshes(a))]
        assert ends and all(x < y for x, y in itertools.pairwise(ends)), ends
