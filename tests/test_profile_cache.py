"""core.profile_cache: decoded profiles reused only while the stored bytes are the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgewise.core import store as store_mod
from edgewise.core.decisions import Context, DecideRequest, FallbackReason, PlacementRequest
from edgewise.core.pipeline import Pipeline
from edgewise.core.profile_cache import ProfileCache
from edgewise.core.records import ProfileRecord, encode_profile
from edgewise.core.store import Store
from edgewise.sync.bundle import load_bundle
from edgewise.sync.snapshot import apply_bundle

CONSENT = frozenset({"personalization"})


def _put(store: Store, record: ProfileRecord | None, user_id: str = "") -> None:
    """Write (or delete, with None) one profile directly: a delta as the cache sees it."""
    with store._env.begin(write=True) as txn:  # test-only direct write
        db = store._dbs["profiles"]
        if record is None:
            txn.delete(user_id.encode(), db=db)
        else:
            txn.put(record.id.encode(), encode_profile(record), db=db)


def _bump_generation(store: Store) -> None:
    with store._env.begin(write=True) as txn:  # test-only: what a new snapshot does to meta/version
        db = store._dbs["meta"]
        raw = txn.get(store_mod._VERSION_KEY, db=db)
        generation, version = store_mod._GEN_VERSION.unpack(raw) if raw is not None else (0, 0)
        txn.put(store_mod._VERSION_KEY, store_mod._GEN_VERSION.pack(generation + 1, version), db=db)


def _profile(user_id: str, version: int, **attributes: object) -> ProfileRecord:
    embedding = np.arange(4, dtype="<f4").tobytes()
    return ProfileRecord(user_id, version, dict(attributes), {"personalization": 1}, embedding)


def test_a_profile_is_decoded_once_while_its_bytes_are_the_same(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 26) as store:
        _put(store, _profile("u1", 1, country="DE"))
        cache = ProfileCache()
        with store.read() as view:
            first = cache.profile(view, "u1")
            assert first == view.profile("u1")
        with store.read() as view:
            assert cache.profile(view, "u1") is first  # the same object: not decoded again
        _put(store, _profile("u1", 2, country="FR"))  # a delta changes the record
        with store.read() as view:
            changed = cache.profile(view, "u1")
        assert changed is not None and changed.attributes == {"country": "FR"} and changed.version == 2
        _put(store, None, "u1")  # forgotten
        with store.read() as view:
            assert cache.profile(view, "u1") is None
            assert cache.profile(view, "nobody") is None


def test_the_cache_is_bounded_and_emptied_by_a_new_generation(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 26) as store:
        for j in range(5):
            _put(store, _profile(f"u{j}", 1))
        cache = ProfileCache(max_entries=3)
        with store.read() as view:
            for j in range(5):
                assert cache.profile(view, f"u{j}") == view.profile(f"u{j}")
        assert len(cache) == 3
        _bump_generation(store)
        with store.read() as view:
            assert cache.profile(view, "u0") == view.profile("u0")
        assert len(cache) == 1


def test_a_pipeline_never_decides_on_a_stale_profile(tmp_path: Path, bundle_dir: Path) -> None:
    # One Pipeline (one cache) across a change of the user's stored consent and embedding.
    bundle = load_bundle(bundle_dir)
    user = bundle.profiles[0]
    with Store(tmp_path / "s", map_size=1 << 30) as store:
        apply_bundle(store, bundle)
        pipeline = Pipeline()
        request = DecideRequest(
            user_id=user.id,
            consent=CONSENT,
            context=Context(country="DE"),
            placements=(PlacementRequest("home", 5),),
        )

        def home() -> tuple[str, FallbackReason]:
            with store.read() as view:
                out = pipeline.decide(view, request).placements[0]
            return out.strategy, FallbackReason(out.fallback)

        with store.read() as view:
            stored = view.profile(user.id)
        assert stored is not None and stored.embedding
        assert home()[0] == "embedding"
        assert home()[0] == "embedding"  # from the cache
        _put(store, ProfileRecord(user.id, 99, {}, {}, stored.embedding))  # consent withdrawn upstream
        assert home() == ("popular", FallbackReason.NO_CONSENT)
        _put(store, ProfileRecord(user.id, 100, {}, {"personalization": 1}, None))  # no embedding
        assert home()[1] == FallbackReason.COLD_START
