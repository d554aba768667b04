"""The decision pipeline in-process, over a real store loaded with a synthetic bundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise.core import version_state
from edgewise.core.decisions import Context, DecideRequest, FallbackReason, PlacementRequest, RequestError
from edgewise.core.pipeline import Pipeline, SnapshotMissing
from edgewise.core.records import ProfileRecord, encode_profile
from edgewise.core.store import ReadView, Store
from edgewise.sync.bundle import Bundle, load_bundle
from edgewise.sync.snapshot import apply_bundle

CONSENT = frozenset({"personalization"})
ALL = (PlacementRequest("home", 10), PlacementRequest("pdp_similar", 5), PlacementRequest("hero_banner"))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[tuple[Store, Bundle]]:
    bundle = load_bundle(bundle_dir)
    store = Store(tmp_path_factory.mktemp("store"), map_size=1 << 30)
    apply_bundle(store, bundle)
    # Two extra profiles: one without an embedding (cold start), one with a vector of the wrong size.
    with store._env.begin(write=True) as txn:  # test-only direct write
        db = store._dbs["profiles"]
        for uid, emb in (("u-cold", None), ("u-bad-dim", np.ones(3, dtype="<f4").tobytes())):
            txn.put(
                uid.encode(), encode_profile(ProfileRecord(uid, 1, {}, {"personalization": 1}, emb)), db=db
            )
    yield store, bundle
    store.close()


def _decide(store: Store, request: DecideRequest, pipeline: Pipeline | None = None) -> Any:
    with store.read() as view:
        return (pipeline or Pipeline()).decide(view, request)


def test_empty_store_is_snapshot_missing(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 26) as store, pytest.raises(SnapshotMissing):
        _decide(store, DecideRequest(placements=ALL))


def test_fallback_reasons(loaded: tuple[Store, Bundle]) -> None:
    store, _ = loaded
    home = (PlacementRequest("home", 5),)
    cases = {
        "u-cold": FallbackReason.COLD_START,
        "u-bad-dim": FallbackReason.MODEL_UNAVAILABLE,
        "no-such-user": FallbackReason.UNKNOWN_USER,
    }
    for user, reason in cases.items():
        out = _decide(store, DecideRequest(user_id=user, consent=CONSENT, placements=home)).placements[0]
        assert out.fallback == reason, user
        assert out.strategy == "popular" and len(out.items) == 5
    hero = _decide(
        store, DecideRequest(placements=(PlacementRequest("hero_banner"),), consent=CONSENT)
    ).placements[0]
    assert hero.fallback == FallbackReason.UNKNOWN_USER and hero.content_id == "hero_default"


def test_items_not_available_in_the_country_are_never_shown(loaded: tuple[Store, Bundle]) -> None:
    store, bundle = loaded
    regions = {i.id: i.regions for i in bundle.items}
    restricted = [i for i, r in regions.items() if "*" not in r]
    assert restricted, "the synthetic bundle should restrict some items"
    for country in ("DE", "US", ""):
        out = _decide(
            store, DecideRequest(context=Context(country=country), placements=(PlacementRequest("home", 50),))
        )
        for item in out.placements[0].items:
            assert "*" in regions[item.id] or country in regions[item.id]


def test_personalized_scores_match_a_numpy_computation(loaded: tuple[Store, Bundle]) -> None:
    store, bundle = loaded
    row = next(j for j, p in enumerate(bundle.profiles) if "personalization" in p.consent)
    user = bundle.profiles[row].id
    assert bundle.user_embeddings is not None
    out = _decide(
        store, DecideRequest(user_id=user, consent=CONSENT, placements=(PlacementRequest("home", 10),))
    )
    scores = bundle.item_embeddings.astype(np.float64) @ bundle.user_embeddings[row].astype(np.float64)
    everywhere = np.array(["*" in i.regions for i in bundle.items])
    expected = np.sort(scores[everywhere])[::-1][:10]
    got = [i.score for i in out.placements[0].items]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_explain_names_the_steps(loaded: tuple[Store, Bundle]) -> None:
    store, bundle = loaded
    user = next(p.id for p in bundle.profiles if "personalization" in p.consent)
    out = _decide(
        store,
        DecideRequest(
            user_id=user, consent=CONSENT, placements=ALL, explain=True, context=Context(country="DE")
        ),
    )
    why = out.explanation
    assert why.user_known and why.personalization_allowed
    assert why.features["context.country"] == "DE"
    assert why.features["profile.embedding"].startswith("dim ")
    by_id = {p.placement_id: p for p in why.placements}
    assert by_id["hero_banner"].unit_id == f"user:{user}"
    assert 0 <= by_id["hero_banner"].bucket < 10_000
    assert by_id["home"].candidates > 0 and by_id["home"].strategy == "embedding"


def test_request_errors_name_the_field(loaded: tuple[Store, Bundle]) -> None:
    store, _ = loaded
    with pytest.raises(RequestError) as err:
        _decide(store, DecideRequest(placements=(PlacementRequest("home"), PlacementRequest("nope"))))
    assert err.value.field == "placements[1].placement_id"
    assert "home" in str(err.value)  # lists the placements that exist


class _SpyView:
    """A ReadView that records which profile and activity keys were read."""

    def __init__(self, view: ReadView) -> None:
        self._view = view
        self.reads: list[str] = []
        self.version = view.version
        self.generation = view.generation

    def profile(self, user_id: str) -> Any:
        self.reads.append(f"profile:{user_id}")
        return self._view.profile(user_id)

    def profile_bytes(self, user_id: str) -> Any:  # what the pipeline's profile cache reads
        self.reads.append(f"profile:{user_id}")
        return self._view.profile_bytes(user_id)

    def activity(self, key: str) -> Any:
        self.reads.append(f"activity:{key}")
        return self._view.activity(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)


_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@settings(
    derandomize=True,
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    user=st.one_of(st.just(""), _ids, st.sampled_from(["u0", "u1", "u2", "u3", "u-cold"])),
    session=st.one_of(st.just(""), _ids),
    consent=st.sets(st.sampled_from(["analytics", "marketing", "ads"])),
    country=st.sampled_from(["", "DE", "FR", "US", "XX"]),
    seeds=st.lists(st.sampled_from(["i1", "i2", "i3", "nope"]), max_size=2),
)
def test_without_consent_the_decision_is_the_anonymous_default_and_no_profile_is_read(
    loaded: tuple[Store, Bundle], user: str, session: str, consent: set[str], country: str, seeds: list[str]
) -> None:
    store, _ = loaded
    pipeline = Pipeline()
    placements = (
        PlacementRequest("home", 8),
        PlacementRequest("pdp_similar", 4, seed_item_ids=tuple(seeds)),
        PlacementRequest("hero_banner"),
        PlacementRequest("deals", 6),
        PlacementRequest("promo_slot"),
    )
    ctx = Context(country=country)
    with store.read() as raw:
        spy = _SpyView(raw)
        out = pipeline.decide(
            spy,
            DecideRequest(
                user_id=user,
                session_id=session,
                consent=frozenset(consent),
                context=ctx,
                placements=placements,
            ),
        )  # type: ignore[arg-type]
        anonymous = pipeline.decide(raw, DecideRequest(context=ctx, placements=placements))
    assert spy.reads == []
    for mine, anon in zip(out.placements, anonymous.placements, strict=True):
        assert [i.id for i in mine.items] == [i.id for i in anon.items]
        assert (mine.content_id, mine.experiment_id, mine.variant_id) == (anon.content_id, "", "")
        assert (mine.strategy, mine.fallback, mine.propensity) == (
            anon.strategy,
            anon.fallback,
            anon.propensity,
        )
        # Whatever needed the user fell back for lack of consent; nothing personal was served.
        assert mine.fallback in (FallbackReason.NO_CONSENT, FallbackReason.NONE)
        if mine.placement_id in ("home", "hero_banner", "promo_slot"):
            assert mine.fallback == FallbackReason.NO_CONSENT


def test_the_version_copies_of_model_arrays_decide_like_the_store_arrays(
    loaded: tuple[Store, Bundle], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Personalized and similar-items decisions (explanations included) are the same whether the
    version state holds its own copies of the float32 embeddings and the neighbor arrays or requests
    read the store's (the matrix, and the neighbor lists' row chunks)."""
    store, bundle = loaded
    users = [p.id for p in bundle.profiles if "personalization" in p.consent][:40]
    seeds = [i.id for i in bundle.items[:40]]
    requests = [
        DecideRequest(
            user_id=u,
            consent=CONSENT,
            placements=ALL if n % 2 else (PlacementRequest("pdp_similar", 5, seed_item_ids=(s,)),),
            explain=True,
        )
        for n, (u, s) in enumerate(zip(users, seeds, strict=True))
    ]
    with_copy = Pipeline()
    with store.read() as view:
        state = with_copy.state(view)
    assert state.embeddings is not None and not state.embeddings.flags.writeable
    np.testing.assert_array_equal(state.embeddings, bundle.item_embeddings)
    assert state.neighbors is not None and state.neighbor_scores is not None
    assert not state.neighbors.flags.writeable and not state.neighbor_scores.flags.writeable
    with store.read() as view:
        np.testing.assert_array_equal(state.neighbors, view.array("item_neighbors"))
    monkeypatch.setattr(version_state, "MODEL_COPY_MAX_BYTES", 0)
    from_store = Pipeline()
    with store.read() as view:
        bare = from_store.state(view)
        assert bare.embeddings is None and bare.neighbors is None and bare.neighbor_scores is None
    for request in requests:
        assert repr(_decide(store, request, with_copy)) == repr(_decide(store, request, from_store))


def test_popularity_is_copied_with_its_order_once_per_version(loaded: tuple[Store, Bundle]) -> None:
    store, _ = loaded
    pipeline = Pipeline()
    first = _decide(store, DecideRequest(placements=(PlacementRequest("home", 10),)), pipeline)
    assert first.placements[0].strategy == "popular"  # anonymous: the default
    with store.read() as view:
        scores, order = pipeline.state(view).derived(("scored", "item_popularity"), lambda: None)
        stored = view.array("item_popularity")
        assert stored is not None
        np.testing.assert_array_equal(scores, stored)
    assert not scores.flags.writeable and order is not None
    assert list(order[:10]) == sorted(range(len(scores)), key=lambda r: (-scores[r], r))[:10]
    again = _decide(store, DecideRequest(placements=(PlacementRequest("home", 10),)), pipeline)
    assert repr(again) == repr(first)
