"""Row chunks of the large model arrays (`model_rows`): rebuilt with their records, read by rows.

The pipeline reads a seed's neighbor lists through `ReadView.rows` when `VersionState.chunked_models`
says the chunks were cut from the current records; otherwise (a store written before chunks existed,
or chunks that do not match) it reads the whole arrays. Either way the decisions are the same.
"""

from __future__ import annotations

from pathlib import Path

import lmdb
import numpy as np

from edgewise.core.decisions import Context, DecideRequest, PlacementRequest
from edgewise.core.pipeline import Pipeline
from edgewise.core.records import encode_array
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import REPLICATED, ROW_CHUNKED, ROWS_PER_CHUNK, Store
from edgewise.core.version_state import build_state
from edgewise.sync.bundle import load_bundle
from edgewise.sync.snapshot import apply_bundle

NAMES = sorted(ROW_CHUNKED)


def _applied(tmp_path: Path, bundle_dir: Path) -> Store:
    store = Store(tmp_path / "s", map_size=1 << 30)
    apply_bundle(store, load_bundle(bundle_dir))
    return store


def _decisions(store: Store, seeds: list[str]) -> list[list[str]]:
    pipeline = Pipeline()
    out = []
    for seed in seeds:
        request = DecideRequest(
            user_id="",
            session_id="s1",
            context=Context(country="DE"),
            placements=(PlacementRequest("pdp_similar", 8, seed_item_ids=(seed,)),),
            now_ms=1_795_000_000_000,
        )
        with store.read() as view:
            decision = pipeline.decide(view, request)
        placement = decision.placements[0]
        assert placement.strategy == "similar" and placement.items  # the neighbor lists were read
        out.append([i.id for i in placement.items])
    return out


def test_rows_equal_the_arrays_rows(tmp_path: Path, bundle_dir: Path) -> None:
    with _applied(tmp_path, bundle_dir) as store, store.read() as view:
        for name in NAMES:
            assert view.chunks_match(name)
            whole = view.array(name)
            assert whole is not None and whole.shape[0] > ROWS_PER_CHUNK
            n = whole.shape[0]
            for rows in ([0], [n - 1], [ROWS_PER_CHUNK - 1, ROWS_PER_CHUNK, 3], list(range(0, n, 37))):
                got = view.rows(name, rows)
                assert got is not None
                np.testing.assert_array_equal(got, whole[rows])
            assert view.rows(name, [n]) is None  # out of range: read the whole array instead
            assert view.rows(name, [0, n + ROWS_PER_CHUNK]) is None
        assert build_state(view).chunked_models == ROW_CHUNKED


def test_a_delta_recuts_the_chunks_and_a_removed_array_loses_them(tmp_path: Path, bundle_dir: Path) -> None:
    with _applied(tmp_path, bundle_dir) as store:
        with store.read() as view:
            old = view.array("item_neighbors")
            assert old is not None
            new = np.ascontiguousarray(old[::-1])
        store.apply_replicated(
            2, [("models", b"item_neighbors", encode_array(new))], snapshot=False, info=SnapshotInfo()
        )
        with store.read() as view:
            assert view.chunks_match("item_neighbors")
            got = view.rows("item_neighbors", [0, 5, new.shape[0] - 1])
            assert got is not None
            np.testing.assert_array_equal(got, new[[0, 5, new.shape[0] - 1]])
        store.apply_replicated(
            3, [("models", b"item_neighbor_scores", None)], snapshot=False, info=SnapshotInfo()
        )
        with store.read() as view:
            assert not view.chunks_match("item_neighbor_scores")
            assert view.rows("item_neighbor_scores", [0]) is None
            assert build_state(view).chunked_models == frozenset({"item_neighbors"})


def test_chunks_that_do_not_match_their_record_are_not_used(tmp_path: Path, bundle_dir: Path) -> None:
    with _applied(tmp_path, bundle_dir) as store:
        with store.read() as view:
            seeds = list(build_state(view).item_ids[:25])
        expected = _decisions(store, seeds)
        path = store.path
    # As an older edgewise would: the record rewritten without re-cutting its chunks.
    env = lmdb.open(str(path), max_dbs=16, map_size=1 << 30)
    with env.begin(write=True) as txn:
        models = env.open_db(b"models", txn=txn)
        buf = txn.get(b"item_neighbor_scores", db=models)
        txn.put(b"item_neighbor_scores", bytes(buf) + b"", db=models)
        rows_db = env.open_db(b"model_rows", txn=txn)
        txn.delete(b"item_neighbor_scores\0meta", db=rows_db)  # no record of the cut
    env.close()
    with Store(path, map_size=1 << 30) as store:
        with store.read() as view:
            assert not view.chunks_match("item_neighbor_scores")
            assert build_state(view).chunked_models == frozenset({"item_neighbors"})
        assert _decisions(store, seeds) == expected  # the whole arrays: the same decisions


def test_read_only_open_of_a_store_without_model_rows(tmp_path: Path) -> None:
    path = tmp_path / "old"
    path.mkdir()
    env = lmdb.open(str(path), max_dbs=16, map_size=1 << 26)
    for name in (*REPLICATED, "activity", "events", "outbox", "meta"):
        env.open_db(name.encode())
    env.close()
    with Store(path, readonly=True) as store, store.read() as view:
        assert not view.chunks_match("item_neighbors")
        assert view.rows("item_neighbors", [0]) is None


def test_a_synced_snapshot_cuts_the_chunks(tmp_path: Path, bundle_dir: Path) -> None:
    # The edge's syncer applies a control plane snapshot with apply_replicated(snapshot=True).
    with _applied(tmp_path, bundle_dir) as source, source.read() as view:
        changes = []
        for namespace in REPLICATED:
            with view._txn.cursor(db=view._dbs[namespace]) as cursor:
                changes += [(namespace, bytes(k), bytes(v)) for k, v in cursor]
        whole = view.array("item_neighbors")
        assert whole is not None
        expected = np.array(whole[[1, 2, 3]])
    with Store(tmp_path / "edge", map_size=1 << 30) as edge:
        edge.apply_replicated(7, changes, snapshot=True, info=SnapshotInfo())
        with edge.read() as view:
            assert build_state(view).chunked_models == ROW_CHUNKED
            got = view.rows("item_neighbors", [1, 2, 3])
            assert got is not None
            np.testing.assert_array_equal(got, expected)
