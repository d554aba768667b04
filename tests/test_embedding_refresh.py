"""sync/embedding_refresh.py against real parts: an edge's LMDB store records Track events, its outbox
forwarder sends them over gRPC to an in-process control plane, which stores them in its event store
(LMDB); the refresh trains on that store and its changes are committed to the control store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import msgpack
import numpy as np
import pytest

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.embedding_training import TrainingSettings
from edgewise.core.records import check_profile, decode_array, decode_item, decode_profile, encode_array
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import REPLICATED, ReadView, Store
from edgewise.core.version_state import build_state
from edgewise.offline.synth import synth_bundle
from edgewise.sync.bundle import load_bundle
from edgewise.sync.changes import bundle_records
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import CommitInfo, ControlStore, RecordChange
from edgewise.sync.edge_forward import OutboxForwarder
from edgewise.sync.edge_sync import SyncTarget
from edgewise.sync.embedding_refresh import (
    CatalogChanged,
    EmbeddingRefreshSettings,
    _one_blas_thread,
    refresh_changes,
    train_refresh,
)
from edgewise.sync.embedding_refresh_job import EmbeddingRefreshJob
from edgewise.sync.event_store import EventStore
from edgewise.sync.shard import Shard
from edgewise.v1 import sync_pb2_grpc

pytest.importorskip("implicit", reason="the `train` extra (implicit) is not installed")

DIM = 8
ITEMS = 60
GROUPS = 3
NOW_MS = 1_765_000_000_000
SETTINGS = EmbeddingRefreshSettings(training=TrainingSettings(iterations=30), half_life_days=None)


@dataclass
class Plane:
    store: ControlStore
    events: EventStore
    address: str


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    """A control plane holding a synthetic bundle, with an event store, serving gRPC on port 0."""
    bundle = load_bundle(synth_bundle(tmp_path / "bundle", users=90, items=ITEMS, seed=3, dim=DIM))
    store = ControlStore(tmp_path / "control")
    store.commit(bundle_records(bundle), kind="push", description="bundle")
    events = EventStore(tmp_path / "events", map_size=64 << 20)
    service = ControlPlaneService(store, events=events)
    server = grpc.server(ThreadPoolExecutor(4))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Plane(store, events, f"127.0.0.1:{port}")
    finally:
        server.stop(0).wait()
        events.close()
        store.close()


def _rows(store: ControlStore) -> dict[str, int]:
    with store.read() as view:
        return {key: decode_item(key, raw).row for key, raw in view.items("items")}


def _profiles(store: ControlStore) -> list[str]:
    with store.read() as view:
        return sorted(key for key, _ in view.items("profiles"))


def load_edge(store: ControlStore, path: Path) -> Store:
    """An edge store holding the control plane's current state, as a synced snapshot."""
    edge = Store(path, map_size=1 << 28)
    with store.read() as view:
        records = [(ns, key.encode(), value) for ns in REPLICATED for key, value in view.items(ns)]
        version = view.version
    edge.apply_replicated(version, records, snapshot=True, info=SnapshotInfo(version=version))
    return edge


def apply_on_edge(edge: Store, version: int, changes: list[RecordChange]) -> None:
    def check(view: ReadView) -> None:
        for change in changes:
            if change.namespace == "profiles" and change.value is not None:
                check_profile(change.key, change.value)
        build_state(view)

    records = [(c.namespace, c.key.encode(), c.value) for c in changes]
    edge.apply_replicated(version, records, snapshot=False, info=SnapshotInfo(version=version), check=check)


def _group(row: int) -> int:
    return row * GROUPS // ITEMS


def forward(plane: Plane, edge_dir: Path, events: list[Event]) -> None:
    """Track the events on a real edge store and let its forwarder send them to the control plane."""
    with Store(edge_dir) as store:
        store.record_events(events, ActivityLimits(), now_ms=NOW_MS)
        forwarder = OutboxForwarder(store, SyncTarget((plane.address,), "edge-1", Shard()), timeout=5.0)
        forwarder.start()
        try:
            deadline = time.monotonic() + 20
            while store.outbox_pending() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.outbox_pending() == 0, forwarder.last_error
        finally:
            forwarder.stop()


def planted_events(plane: Plane, users: list[str]) -> tuple[list[Event], dict[str, int]]:
    """User j belongs to group j % GROUPS and buys / views a random half of that group's items."""
    rng = np.random.default_rng(0)
    by_row = {row: item for item, row in _rows(plane.store).items()}
    events, group_of = [], {}
    for j, user in enumerate(users):
        group = j % GROUPS
        group_of[user] = group
        members = [row for row in by_row if _group(row) == group]
        for n, row in enumerate(rng.choice(members, size=len(members) // 2, replace=False)):
            kind = "purchase" if n % 3 == 0 else "view"
            ts = NOW_MS - int(rng.integers(0, 86_400_000))
            events.append(
                Event(f"{user}-{n}", kind, user, "s", by_row[int(row)], "", "", 1.0, ts, True, True)
            )
    return events, group_of


def test_refresh_from_forwarded_events(plane: Plane, tmp_path: Path) -> None:
    profiles = _profiles(plane.store)
    seen = profiles[:60]  # the rest keep a vector of the bundle's model
    events, group_of = planted_events(plane, seen)
    # noise the refresh must not train on: no personalization purpose, an item not in the catalog
    events.append(Event("np-1", "purchase", seen[0], "s", "p-unknown", "", "", 1.0, NOW_MS, True, True))
    events += [
        Event(f"nopz-{n}", "purchase", seen[1], "s", "x", "", "", 1.0, NOW_MS, True, False) for n in range(3)
    ]
    forward(plane, tmp_path / "edge", events)
    assert plane.events.count() == len(events)

    with plane.store.read() as view:
        before = {key: raw for key, raw in view.items("profiles")}
        trained = train_refresh(view, plane.events, SETTINGS, now_ms=NOW_MS)
    assert trained is not None
    assert trained.events == len(events) - 4 and trained.unknown_items == 1
    assert set(trained.user_vectors) == set(seen)
    edge = load_edge(plane.store, tmp_path / "edge-follower")
    with plane.store.read() as view:
        changes = refresh_changes(view, trained)
    info = plane.store.commit(changes, kind="delta", description="embeddings refresh")
    assert info is not None
    # an edge applies the delta with the checks its syncer runs (profiles decode, the state builds)
    with edge:
        apply_on_edge(edge, info.version, changes)
        with edge.read() as edge_view:
            state = build_state(edge_view)
            assert state.embeddings is not None and state.embeddings.shape == (ITEMS, DIM)
            assert state.embedding_generation == 1  # the refresh's, switched on with its item vectors
            profile = edge_view.profile(seen[0], state.embedding_generation)
            assert profile is not None and profile.embedding == trained.user_vectors[seen[0]].tobytes()

    rows = _rows(plane.store)
    with plane.store.read() as view:
        items = decode_array(view.get("models", "item_embeddings") or b"")
        after = {key: raw for key, raw in view.items("profiles")}
    assert items.shape == (ITEMS, DIM) and items.dtype == np.float32
    # every profile still decodes and differs from before only in its vector slots (`e`, `eg`, `n`, `ng`),
    # the bundle's vector kept as generation 0's
    slot_keys = {"e", "eg", "n", "ng"}
    for user, raw in after.items():
        old, new = msgpack.unpackb(before[user]), msgpack.unpackb(raw)
        assert {k: v for k, v in old.items() if k not in slot_keys} == {
            k: v for k, v in new.items() if k not in slot_keys
        }
        assert decode_profile(user, raw, 0).embedding == decode_profile(user, before[user]).embedding
        profile = decode_profile(user, raw, 1)
        assert profile.embedding is None or len(profile.embedding) == 4 * DIM
    # the planted groups come back through the stored records: each seen user's top items are its group's
    hits = 0
    for user in seen:
        vector = np.frombuffer(decode_profile(user, after[user], 1).embedding or b"", dtype="<f4")
        top = np.argsort(-(items @ vector))[:5]
        hits += sum(_group(int(r)) == group_of[user] for r in top)
    assert hits / (5 * len(seen)) >= 0.9
    assert len(rows) == ITEMS
    # the users without events kept a vector, carried into the new space (or had none)
    unseen = [user for user in profiles if user not in trained.user_vectors]
    assert unseen and all(after[u] != before[u] for u in unseen if decode_profile(u, before[u]).embedding)


def test_catalog_change_between_training_and_writing_is_refused(plane: Plane, tmp_path: Path) -> None:
    users = _profiles(plane.store)[:30]
    events, _ = planted_events(plane, users)
    forward(plane, tmp_path / "edge", events)
    with plane.store.read() as view:
        trained = train_refresh(view, plane.events, SETTINGS, now_ms=NOW_MS)
    assert trained is not None
    wider = encode_array(np.zeros((ITEMS, DIM + 1), dtype=np.float32))
    plane.store.commit([RecordChange("models", "item_embeddings", wider)], kind="push")
    with plane.store.read() as view, pytest.raises(CatalogChanged):
        refresh_changes(view, trained)


def test_nothing_to_train_is_no_refresh(plane: Plane) -> None:
    with plane.store.read() as view:
        assert train_refresh(view, plane.events, SETTINGS, now_ms=NOW_MS) is None
    assert _job(plane).run_once() is None


def _job(plane: Plane) -> EmbeddingRefreshJob:
    return EmbeddingRefreshJob(
        plane.store,
        plane.events,
        threading.Lock(),
        lambda: None,
        SETTINGS,
        every=60,
        commit_profiles=PER_COMMIT,
        commit_pause=0,
    )


PER_COMMIT = 64


def test_one_call_trains_and_commits_under_the_lock(plane: Plane, tmp_path: Path) -> None:
    users = _profiles(plane.store)[:30]
    events, _ = planted_events(plane, users)
    forward(plane, tmp_path / "edge", events)
    head = plane.store.head_version()
    info = _job(plane).run_once()
    assert isinstance(info, CommitInfo) and info.kind == "refresh"
    commit, *staged = [c for c in plane.store.history(limit=100) if c.version > head]
    assert commit.version == info.version and commit.description.startswith("refresh embeddings: als")
    # the flip: the item vectors and their generation; before it, the profiles' vectors of generation 1 in
    # paced commits of at most PER_COMMIT: the 30 seen users + the other profiles carrying a vector
    # (synthetic profiles all do)
    assert info.changes == 2 and "generation 1" in commit.description
    n = len(_profiles(plane.store))
    assert len(staged) == -(-n // PER_COMMIT) and sum(c.changes for c in staged) == n
    assert all(c.kind == "refresh" and c.changes <= PER_COMMIT for c in staged)
    assert all(c.description.startswith("refresh embeddings staging: generation 1, batch ") for c in staged)


def test_the_carry_runs_on_one_blas_thread_and_leaves_blas_as_it_was() -> None:
    """A staging commit's carry product (sync/embedding_refresh.py) holds BLAS to one thread, so numpy's
    OpenBLAS workers do not spin on the other cores after it, and gives the limit back."""
    threadpoolctl = pytest.importorskip("threadpoolctl")  # comes with implicit (the `train` extra)

    def blas_threads() -> list[int]:
        return [int(p["num_threads"]) for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    with _one_blas_thread():
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before
