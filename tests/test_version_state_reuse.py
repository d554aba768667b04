"""A new version's state keeps the catalog half of the last one when only model arrays changed.

`Store.apply_replicated` records in `meta/catalog` the generation at which items or rules last changed
(with a random token);
`build_state(view, previous)` keeps `previous`'s decoded items, rules and filter index when the catalog is
the same, and its embedding structures when `item_embeddings` is byte for byte the same. Whatever it
keeps, a worker that switched versions this way decides exactly as one that built the new version from
nothing.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import msgpack
import numpy as np

from edgewise.core.decisions import Context, DecideRequest, DecideResponse, PlacementRequest
from edgewise.core.pipeline import Pipeline
from edgewise.core.records import encode_array
from edgewise.core.store import Change, ReadView, Store
from edgewise.core.version_state import VersionState, build_state, check_models
from edgewise.sync.bundle import load_bundle
from edgewise.sync.snapshot import apply_bundle

CONSENT = frozenset({"personalization"})
NOW_MS = 1_795_000_000_000


def _store(tmp_path: Path, bundle_dir: Path) -> Store:
    store = Store(tmp_path / "s", map_size=1 << 30)
    apply_bundle(store, load_bundle(bundle_dir))
    return store


def _requests(bundle_dir: Path) -> list[DecideRequest]:
    with open(bundle_dir / "profiles.jsonl") as f:
        users = [str(json.loads(line)["id"]) for line, _ in zip(f, range(6), strict=False)]
    with open(bundle_dir / "items.jsonl") as f:
        items = [str(json.loads(line)["id"]) for line, _ in zip(f, range(3), strict=False)]
    out = [
        DecideRequest(
            user_id=user,
            consent=CONSENT,
            context=Context(country=country),
            placements=(
                PlacementRequest("home", 10),
                PlacementRequest("pdp_similar", 5, seed_item_ids=(items[i % len(items)],)),
                PlacementRequest("hero_banner"),
            ),
            now_ms=NOW_MS,
        )
        for i, user in enumerate(users)
        for country in ("DE", "US", "")
    ]
    out.append(DecideRequest(session_id="s1", placements=(PlacementRequest("home", 20),), now_ms=NOW_MS))
    return out


def _decisions(store: Store, pipeline: Pipeline, requests: list[DecideRequest]) -> list[DecideResponse]:
    out = []
    with store.read() as view:
        for request in requests:
            decision = pipeline.decide(view, request)
            decision.decision_id = ""
            out.append(decision)
    return out


def _apply(store: Store, changes: list[Change]) -> None:
    with store.read() as view:
        version, info = view.version + 1, view.snapshot_info()
    store.apply_replicated(version, changes, snapshot=False, info=info)


def _state(store: Store, previous: VersionState | None = None) -> VersionState:
    with store.read() as view:
        return build_state(view, previous)


def _reversed_array(store: Store, name: str) -> Change:
    with store.read() as view:
        array = view.array(name)
        assert array is not None
        changed = np.ascontiguousarray(array[::-1])
    return ("models", name.encode(), encode_array(changed))


def _assert_same_as_fresh(store: Store, warm: Pipeline, requests: list[DecideRequest]) -> None:
    assert _decisions(store, warm, requests) == _decisions(store, Pipeline(), requests)


def test_a_models_only_commit_keeps_the_catalog_and_decides_as_a_full_build(
    tmp_path: Path, bundle_dir: Path
) -> None:
    requests = _requests(bundle_dir)
    with _store(tmp_path, bundle_dir) as store:
        warm = Pipeline()
        before = _decisions(store, warm, requests)  # the warm pipeline holds the bundle's state
        old = _state(store)
        manifest = msgpack.packb({"bundle_version": 1, "daily_counts_end_ms": NOW_MS}, use_bin_type=True)
        _apply(
            store,
            [
                _reversed_array(store, "item_popularity"),
                _reversed_array(store, "item_neighbors"),
                ("rules", b"manifest", manifest),  # sent with every refresh: not part of the catalog
            ],
        )
        with store.read() as view:
            assert view.catalog_key() == old.catalog_key != b""
            assert view.generation == old.generation + 1
            check_models(view, embeddings=False)
        new = _state(store, old)
        assert new.item_ids is old.item_ids and new.rules is old.rules and new.filters is old.filters
        assert new.embeddings is old.embeddings and new.int8_embeddings is old.int8_embeddings
        assert new.half_embeddings is old.half_embeddings
        assert new.neighbors is not None and old.neighbors is not None
        assert not np.array_equal(new.neighbors, old.neighbors)
        assert new.generation == old.generation + 1
        after = _decisions(store, warm, requests)
        assert after == _decisions(store, Pipeline(), requests)
        assert after != before  # the new popularity and neighbours are what it decides with


def test_new_embeddings_are_rebuilt_and_the_catalog_kept(tmp_path: Path, bundle_dir: Path) -> None:
    requests = _requests(bundle_dir)
    with _store(tmp_path, bundle_dir) as store:
        warm = Pipeline()
        _decisions(store, warm, requests)
        old = _state(store)
        with store.read() as view:
            embeddings = view.array("item_embeddings")
            assert embeddings is not None
            changed = np.ascontiguousarray(embeddings * np.float32(-1.0))
        _apply(store, [("models", b"item_embeddings", encode_array(changed))])
        new = _state(store, old)
        assert new.item_ids is old.item_ids
        assert new.embeddings is not old.embeddings and new.int8_embeddings is not old.int8_embeddings
        assert new.embeddings is not None
        np.testing.assert_array_equal(new.embeddings, changed)
        _assert_same_as_fresh(store, warm, requests)


def test_an_item_or_rules_change_rebuilds_the_catalog(tmp_path: Path, bundle_dir: Path) -> None:
    requests = _requests(bundle_dir)
    with _store(tmp_path, bundle_dir) as store:
        warm = Pipeline()
        _decisions(store, warm, requests)
        old = _state(store)
        with store.read() as view:
            item_id = old.item_ids[0]
            raw = view._txn.get(item_id.encode(), db=view._dbs["items"])
            assert raw is not None
            record = msgpack.unpackb(bytes(raw), raw=False)
        record["p"] = 12345.0
        record["cat"] = "changed/by/a/delta"
        _apply(store, [("items", item_id.encode(), msgpack.packb(record, use_bin_type=True))])
        with store.read() as view:
            assert view.catalog_key() not in (old.catalog_key, b"")
        new = _state(store, old)
        assert new.item_ids is not old.item_ids
        assert new.prices[0] == np.float32(12345.0) and new.categories[0] == "changed/by/a/delta"
        _assert_same_as_fresh(store, warm, requests)
        with store.read() as view:
            rules = view.rules_doc()
        rules["placements"]["home"]["max_count"] = 7
        rules["placements"]["home"]["default_count"] = 7
        before = _state(store)
        _apply(store, [("rules", b"rules", msgpack.packb(rules, use_bin_type=True))])
        after = _state(store, before)
        assert after.rules is not before.rules and after.catalog_key != before.catalog_key
        _assert_same_as_fresh(store, warm, [DecideRequest(placements=(PlacementRequest("home", 7),))])


def test_another_store_with_the_same_generations_is_not_taken_for_the_same_catalog(
    tmp_path: Path, bundle_dir: Path
) -> None:
    with _store(tmp_path / "a", bundle_dir) as a, _store(tmp_path / "b", bundle_dir) as b:
        state_a = _state(a)
        _apply(b, [_reversed_array(b, "item_popularity")])
        with b.read() as view:
            assert view.generation == state_a.generation + 1
            assert view.catalog_key()[:8] == state_a.catalog_key[:8]  # the same generation...
            assert view.catalog_key() != state_a.catalog_key  # ...but another store's catalog
        assert _state(b, state_a).item_ids is not state_a.item_ids


def test_a_profile_commit_changes_no_generation(tmp_path: Path, bundle_dir: Path) -> None:
    with _store(tmp_path, bundle_dir) as store:
        with store.read() as view:
            generation, catalog = view.generation, view.catalog_key()
            user = json.loads((bundle_dir / "profiles.jsonl").read_text().splitlines()[0])["id"]
            raw = view.profile_bytes(user)
            assert raw is not None
            value = bytes(raw)
        _apply(store, [("profiles", user.encode(), value)])
        with store.read() as view:
            assert (view.generation, view.catalog_key()) == (generation, catalog)


def test_deciding_while_models_flip_never_mixes_versions(tmp_path: Path, bundle_dir: Path) -> None:
    """Threads decide while a writer flips the popularity and neighbours between two contents (each flip a
    new generation, the catalog the same): every decision is the one a fresh pipeline makes for the content
    its view reads, never the other one's or a mix."""
    requests = _requests(bundle_dir)[:6]
    with _store(tmp_path, bundle_dir) as store:
        with store.read() as view:
            original = [
                ("models", name.encode(), encode_array(np.ascontiguousarray(view.array(name))))
                for name in ("item_popularity", "item_neighbors")
            ]
        flipped = [_reversed_array(store, "item_popularity"), _reversed_array(store, "item_neighbors")]
        expected: dict[bytes, list[DecideResponse]] = {}
        for changes in (flipped, original):
            _apply(store, changes)
            with store.read() as view:
                key = _content_key(view)
            expected[key] = _decisions(store, Pipeline(), requests)
        assert len(expected) == 2 and len({str(v) for v in expected.values()}) == 2

        shared = Pipeline()
        stop = threading.Event()
        problems: list[str] = []
        decided = [0]

        def decide() -> None:
            while not stop.is_set():
                with store.read() as view:
                    key = _content_key(view)
                    for i, request in enumerate(requests):
                        decision = shared.decide(view, request)
                        want = expected[key][i]
                        if decision.snapshot_version != view.version or (
                            decision.placements,
                            decision.segments,
                        ) != (want.placements, want.segments):
                            problems.append(f"generation {view.generation}, request {i}")
                decided[0] += 1

        threads = [threading.Thread(target=decide) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for flip in range(30):
                _apply(store, flipped if flip % 2 == 0 else original)
                time.sleep(0.005)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert not problems, problems[:5]
        assert decided[0] > 0


def _content_key(view: ReadView) -> bytes:
    """Which of the two contents a view reads (its popularity array's first bytes)."""
    array = view.array("item_popularity")
    assert array is not None
    return bytes(np.ascontiguousarray(array[:8]).view(np.uint8))
