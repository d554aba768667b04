"""The decision engine end to end in-process: campaigns, segments, consent per field, experiments,
holdout, bandits and item strategies, over a real store loaded with the synthetic bundle."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import rewrite_manifest

from edgewise.core import version_state
from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.decisions import (
    Context,
    DecideRequest,
    FallbackReason,
    PlacementDecision,
    PlacementRequest,
)
from edgewise.core.experiments import FORCE_ATTRIBUTE_PREFIX, assign, in_holdout
from edgewise.core.feature_view import DENIED, FeatureView
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store
from edgewise.core.version_state import VersionState
from edgewise.sync.bundle import Bundle, BundleError, load_bundle
from edgewise.sync.snapshot import apply_bundle

NOW = 1_795_000_000_000  # a fixed decision time (2026-11-18, after the synthetic data ends)
MINUTE = 60_000
DAY = 86_400_000
CONSENT = frozenset({"personalization"})


@pytest.fixture(scope="module")
def engine(
    tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path
) -> Iterator[tuple[Store, Bundle, Pipeline]]:
    bundle = load_bundle(bundle_dir)
    store = Store(tmp_path_factory.mktemp("engine"), map_size=1 << 30)
    apply_bundle(store, bundle)
    yield store, bundle, Pipeline()
    store.close()


def _state(engine: tuple[Store, Bundle, Pipeline]) -> VersionState:
    store, _, pipeline = engine
    with store.read() as view:
        return pipeline.state(view)


def _user(
    engine: tuple[Store, Bundle, Pipeline],
    predicate: Callable[[dict[str, Any]], bool] = lambda a: True,
    *,
    skip: int = 0,
) -> str:
    """A consenting user outside the holdout and outside the home_algo test, matching `predicate`."""
    _, bundle, _ = engine
    rules = _state(engine).rules
    found = 0
    for p in bundle.profiles:
        if "personalization" not in p.consent or in_holdout(rules.holdout, p.id):
            continue
        a = assign(rules.experiments["home_algo"], p.id, {})
        if a is not None and a.variant is not None:
            continue
        if predicate(dict(p.attributes)):
            if found == skip:
                return p.id
            found += 1
    raise AssertionError("no such user in the synthetic bundle")


def _decide(
    engine: tuple[Store, Bundle, Pipeline], *placements: str, **kw: Any
) -> dict[str, PlacementDecision]:
    store, _, pipeline = engine
    kw.setdefault("now_ms", NOW)
    request = DecideRequest(placements=tuple(PlacementRequest(p) for p in placements), **kw)
    with store.read() as view:
        out = pipeline.decide(view, request)
    return {p.placement_id: p for p in out.placements}


def _track(engine: tuple[Store, Bundle, Pipeline], user: str, kind: str, item: str, ts: int) -> None:
    store, _, _ = engine
    event = Event(f"{user}-{kind}-{item}-{ts}", kind, user, "", item, "", "", 0.0, ts)
    store.record_events([event], ActivityLimits())


def _everywhere_items(engine: tuple[Store, Bundle, Pipeline], category_prefix: str = "") -> list[str]:
    _, bundle, _ = engine
    return [i.id for i in bundle.items if "*" in i.regions and i.category.startswith(category_prefix)]


def test_abandoned_cart_campaign(engine: tuple[Store, Bundle, Pipeline]) -> None:
    user = _user(engine)
    a, b = _everywhere_items(engine)[:2]
    _track(engine, user, "add_to_cart", a, NOW - 50 * MINUTE)
    _track(engine, user, "add_to_cart", b, NOW - 40 * MINUTE)
    home = _decide(engine, "home", user_id=user, consent=CONSENT, explain=True)["home"]
    assert home.strategy == "cart"
    assert [i.id for i in home.items] == [b, a]  # most recently added first
    # Ten minutes after the last add, the cart is not abandoned yet: the personal campaign serves.
    early = _decide(engine, "home", user_id=user, consent=CONSENT, now_ms=NOW - 30 * MINUTE)["home"]
    assert early.strategy == "embedding"
    _track(engine, user, "purchase", b, NOW - 5 * MINUTE)
    after_purchase = _decide(engine, "home", user_id=user, consent=CONSENT)["home"]
    assert after_purchase.strategy == "embedding"  # a purchase 5 minutes ago: not idle for 30 minutes


def test_replenishment_campaign(engine: tuple[Store, Bundle, Pipeline]) -> None:
    user = _user(engine, skip=1)
    skincare = _everywhere_items(engine, "beauty/skincare")[0]
    _track(engine, user, "purchase", skincare, NOW - 35 * DAY)
    home = _decide(engine, "home", user_id=user, consent=CONSENT)["home"]
    assert home.strategy == "replenish"
    assert [i.id for i in home.items] == [skincare]
    fresh = _user(engine, skip=2)
    _track(engine, fresh, "purchase", skincare, NOW - 5 * DAY)
    assert _decide(engine, "home", user_id=fresh, consent=CONSENT)["home"].strategy != "replenish"


def test_profile_fields_need_their_own_purpose(engine: tuple[Store, Bundle, Pipeline]) -> None:
    store, bundle, _ = engine
    state = _state(engine)
    assert state.field_purposes["rfm_segment"] == "analytics"
    champion = next(
        p
        for p in bundle.profiles
        if p.attributes.get("rfm_segment") in ("champions", "loyal")
        and {"personalization", "analytics"} <= set(p.consent)
    )
    with store.read() as view:
        profile = view.profile(champion.id)
    for granted, expected in (
        (frozenset({"personalization"}), False),
        (frozenset({"personalization", "analytics"}), True),
    ):
        fv = FeatureView(
            state=state,
            context=Context(),
            now_ms=NOW,
            user_id=champion.id,
            profile=profile,
            activity=None,
            granted=granted,
            record_reads=True,
        )
        memo = state.rules.segments.memo(fv)
        assert memo.matches("high_value") is expected
        assert (fv.reads is not None) and (fv.reads["profile.rfm_segment"] == DENIED) is not expected


def test_holdout_gets_the_default_everywhere(engine: tuple[Store, Bundle, Pipeline]) -> None:
    rules = _state(engine).rules
    user = next(
        p.id for p in engine[1].profiles if "personalization" in p.consent and in_holdout(rules.holdout, p.id)
    )
    out = _decide(engine, "home", "hero_banner", "promo_slot", user_id=user, consent=CONSENT)
    assert {p.fallback for p in out.values()} == {FallbackReason.HOLDOUT}
    assert out["hero_banner"].content_id == "hero_default" and not out["hero_banner"].experiment_id
    anonymous = _decide(engine, "home")["home"]
    assert [i.id for i in out["home"].items] == [i.id for i in anonymous.items]


def test_forced_variant_and_multivariate(engine: tuple[Store, Bundle, Pipeline]) -> None:
    rules = _state(engine).rules
    users = [
        p.id
        for p in engine[1].profiles
        if "personalization" in p.consent and not in_holdout(rules.holdout, p.id)
    ]
    in_mv = next(u for u in users if assign(rules.experiments["hero_test"], u, {}) is None)
    hero = _decide(engine, "hero_banner", user_id=in_mv, consent=CONSENT)["hero_banner"]
    assert hero.experiment_id == "hero_mv"
    color, message = (part.split("=")[1] for part in hero.variant_id.split("|"))
    assert hero.content_id == f"hero_{color}_{message}"
    assert hero.propensity == pytest.approx(0.2 / 4)
    forced = _decide(
        engine,
        "hero_banner",
        user_id=in_mv,
        consent=CONSENT,
        context=Context(attributes={FORCE_ATTRIBUTE_PREFIX + "hero_test": "spring_sale"}),
    )["hero_banner"]
    assert (forced.experiment_id, forced.variant_id, forced.propensity) == ("hero_test", "spring_sale", 1.0)


def test_bandit_propensities_are_the_policy_s(engine: tuple[Store, Bundle, Pipeline]) -> None:
    rules = _state(engine).rules
    policy = rules.bandits["promo_bandit"]
    user = _user(engine, lambda a: "deal_seeker" not in a.get("needs", []))
    seeker = _user(engine, lambda a: "deal_seeker" in a.get("needs", []))
    for who, segment in ((user, None), (seeker, "deal_seekers")):
        expected = dict(
            zip((arm.id for arm in policy.arms(segment)), policy.propensities(segment), strict=True)
        )
        counts: Counter[str] = Counter()
        for _ in range(3000):
            slot = _decide(engine, "promo_slot", user_id=who, consent=CONSENT)["promo_slot"]
            assert slot.strategy == "bandit" and slot.experiment_id == "promo_bandit"
            assert slot.bandit_segment == (segment or "")  # what the exposure record names for learning
            assert slot.propensity == pytest.approx(expected[slot.variant_id])
            counts[slot.variant_id] += 1
        for arm, p in expected.items():
            assert abs(counts[arm] / 3000 - p) < 4 * (p * (1 - p) / 3000) ** 0.5 + 1e-3, (who, arm)


def test_deals_promotions_boosts_and_diversity(engine: tuple[Store, Bundle, Pipeline]) -> None:
    deals = _decide(engine, "deals", explain=True)["deals"]
    assert deals.fallback == FallbackReason.NONE and deals.strategy == "popular"
    promoted = [i for i in deals.items if i.promoted]
    assert promoted and promoted == deals.items[: len(promoted)]
    assert {i.id for i in promoted} <= {"i0", "i1"}
    state = _state(engine)
    organic = [i.id for i in deals.items if not i.promoted]
    tops = Counter(state.categories[state.rows[i]].split("/")[0] for i in organic)
    assert max(tops.values()) <= 2
    store, _, pipeline = engine
    with store.read() as view:
        out = pipeline.decide(
            view, DecideRequest(placements=(PlacementRequest("deals", 20),), explain=True, now_ms=NOW)
        )
    why = out.explanation
    assert why is not None
    parts = {i.id: i.parts for i in why.placements[0].items if i.parts}
    with store.read() as view:
        popularity = view.array("item_popularity")  # no country in the request: the global ranks
        assert popularity is not None
        for item_id, part in parts.items():
            sale = bool(state.flags[state.rows[item_id]].get("sale"))
            assert part["boost"] == (50.0 if sale else 0.0)
            # the ranking used the boosted score: base is the popularity, score base + boost
            assert part["base"] == pytest.approx(float(popularity[state.rows[item_id]]), abs=1e-4)
            assert part["score"] == pytest.approx(part["base"] + part["boost"], abs=1e-4)
    scores = [part["score"] for part in parts.values()]
    assert scores == sorted(scores, reverse=True)


def test_a_flood_of_request_filter_values_keeps_the_derived_values_and_their_bound(
    engine: tuple[Store, Bundle, Pipeline],
) -> None:
    """Caller-chosen filter values (category, tag, flag) must not fill the version's cache of derived
    values: it used to hold one mask per value, up to 4,096, and was then cleared whole, so the
    values every request uses (popularity orders, boost vectors) were rebuilt after every 4,096 new
    filter values. Now a filter value is a lookup in the version's index, nothing is cached for it,
    and the cache stays within its byte bound."""
    store, _, pipeline = engine
    state = _state(engine)
    _decide(engine, "home")  # an anonymous home: the global popularity, with its order, cached
    useful = state.derived(("scored", "item_popularity"), lambda: None)
    assert useful is not None
    kinds = (
        lambda n: ("category", {"category": f"no-such-category/{n}"}),
        lambda n: ("tag", {"tag": f"no-such-tag-{n}"}),
        lambda n: ("flag", {"flag": "sale", "value": f"v{n}"}),
    )
    for n in range(4_200):
        name, params = kinds[n % 3](n)
        ask = PlacementRequest("home", 3, filter=name, filter_params=params)
        with store.read() as view:
            out = pipeline.decide(view, DecideRequest(placements=(ask,), now_ms=NOW))
        assert out.placements[0].items == []  # nothing matches: no items, no error

    def rebuilt() -> None:
        raise AssertionError("the flood of filter values evicted the cached popularity")

    assert state.derived(("scored", "item_popularity"), rebuilt) is useful
    cache = state.derived_cache
    assert 0 < cache.nbytes <= cache.max_bytes == version_state.derived_max_bytes(state.n_items)
    assert len(cache) < 50  # derived values of the rules and strategies, none per filter value


def test_rotation_sinks_items_shown_too_often(engine: tuple[Store, Bundle, Pipeline]) -> None:
    user = _user(engine, skip=3)
    first = [i.id for i in _decide(engine, "home", user_id=user, consent=CONSENT)["home"].items]
    for n in range(8):
        _track(engine, user, "impression", first[0], NOW - (10 - n) * MINUTE)
    rotated = [i.id for i in _decide(engine, "home", user_id=user, consent=CONSENT)["home"].items]
    assert rotated[0] == first[1]
    assert first[0] not in rotated[:-1]
    _track(engine, user, "click", first[0], NOW - MINUTE)  # a click resets the count (and is a view)
    clicked = [i.id for i in _decide(engine, "home", user_id=user, consent=CONSENT)["home"].items]
    assert first[0] not in clicked  # now excluded as recently viewed


def test_home_algorithm_experiment(engine: tuple[Store, Bundle, Pipeline]) -> None:
    rules = _state(engine).rules
    user = next(
        p.id
        for p in engine[1].profiles
        if "personalization" in p.consent
        and not in_holdout(rules.holdout, p.id)
        and (a := assign(rules.experiments["home_algo"], p.id, {})) is not None
        and a.variant is not None
    )
    home = _decide(engine, "home", user_id=user, consent=CONSENT, explain=True)["home"]
    assert home.experiment_id == "home_algo" and home.variant_id in ("embedding", "diverse")
    assert home.propensity == pytest.approx(0.1)
    assert home.strategy == "embedding"


def test_explanation_names_campaign_segments_and_reads(engine: tuple[Store, Bundle, Pipeline]) -> None:
    store, _, pipeline = engine
    user = _user(engine, skip=4)
    request = DecideRequest(
        user_id=user,
        consent=CONSENT,
        explain=True,
        now_ms=NOW,
        context=Context(country="DE", device="mobile"),
        placements=(PlacementRequest("home", 5), PlacementRequest("hero_banner")),
    )
    with store.read() as view:
        why = pipeline.decide(view, request).explanation
    assert why is not None
    home, hero = why.placements
    assert home.campaign == "personal" and home.rule.startswith("campaign personal")
    assert len(home.items) == 5 and all("score" in i.parts for i in home.items)
    assert hero.campaign in ("hero_ab", "hero_multivariate") and hero.experiment_id
    assert 0 <= hero.bucket < 10_000
    assert why.features["context.country"] == "DE"


def _custom_bundle(bundle_dir: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    out = tmp_path / "custom"
    shutil.copytree(bundle_dir, out)
    rules = json.loads((out / "rules.json").read_text())
    edit(rules)
    (out / "rules.json").write_text(json.dumps(rules))
    rewrite_manifest(out)
    return out


def test_channels_and_local_time_schedule(bundle_dir: Path, tmp_path: Path) -> None:
    def edit(rules: dict[str, Any]) -> None:
        rules["placements"]["hero_banner"]["campaigns"].insert(
            0,
            {
                "id": "app_office_hours",
                "priority": 100,
                "channels": ["app"],
                "schedule": {
                    "start": "2026-01-01T00:00:00Z",
                    "local_hours": [9, 17],
                    "days": ["mon", "tue", "wed"],
                },
                "serve": {"content": "hero_spring_sale"},
            },
        )

    bundle = load_bundle(_custom_bundle(bundle_dir, tmp_path, edit))
    with Store(tmp_path / "s", map_size=1 << 30) as store:
        apply_bundle(store, bundle)
        pipeline = Pipeline()

        def hero(channel: str, local_time: str, now_ms: int = NOW) -> PlacementDecision:
            request = DecideRequest(
                session_id="s1",
                consent=CONSENT,
                now_ms=now_ms,
                context=Context(channel=channel, local_time=local_time),
                placements=(PlacementRequest("hero_banner"),),
            )
            with store.read() as view:
                return pipeline.decide(view, request).placements[0]

        monday_10 = "2026-11-23T10:00:00+01:00"
        assert hero("app", monday_10).content_id == "hero_spring_sale"
        assert hero("app", monday_10).strategy == "content"
        assert hero("web", monday_10).strategy == "experiment"
        assert hero("app", "2026-11-23T18:30:00+01:00").strategy == "experiment"  # after hours
        assert hero("app", "2026-11-26T10:00:00+01:00").strategy == "experiment"  # a Thursday
        before_start = 1_700_000_000_000  # 2023: before the campaign's start
        assert hero("app", monday_10, before_start).strategy == "experiment"


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (
            lambda r: r["placements"]["home"]["campaigns"][0].update(audience=["nope"]),
            "placements.home.campaigns[0].audience[0]",
        ),
        (
            lambda r: r["segments"].update(bad={"condition": {"profile.ltv": {"$between": [1, 2]}}}),
            "segments.bad.condition",
        ),
        (
            lambda r: r["placements"]["hero_banner"]["campaigns"].append(
                {"id": "x", "serve": {"bandit": "nope"}}
            ),
            "placements.hero_banner.campaigns[2].serve.bandit",
        ),
        (
            lambda r: r["experiments"]["hero_mv"].update(layer_range=[7000, 10000]),
            "experiments.hero_mv.layer_range",
        ),
        (  # a placement id goes into every exposure record's id: an id, 1..64 characters
            lambda r: r["placements"].update({"home page": r["placements"]["home"]}),
            "placements.home page",
        ),
    ],
)
def test_rules_that_do_not_compile_refuse_the_bundle(
    bundle_dir: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], field: str
) -> None:
    with pytest.raises(BundleError) as err:
        load_bundle(_custom_bundle(bundle_dir, tmp_path, edit))
    assert err.value.file == "rules.json"
    assert str(err.value.field).startswith(field), str(err.value)


def test_propensity_of_an_experiment_matches_the_share_of_units(
    engine: tuple[Store, Bundle, Pipeline],
) -> None:
    counts: Counter[str] = Counter()
    props: dict[str, float] = {}
    for n in range(4000):
        hero = _decide(engine, "hero_banner", session_id=f"s{n}", consent=CONSENT)["hero_banner"]
        counts[f"{hero.experiment_id}/{hero.variant_id}"] += 1
        props[f"{hero.experiment_id}/{hero.variant_id}"] = hero.propensity
    for key, count in counts.items():
        if key.startswith("/"):
            continue  # the holdout
        assert abs(count / 4000 - props[key]) < 4 * np.sqrt(props[key] / 4000) + 0.003, key


def test_trending_decays_daily_counts(engine: tuple[Store, Bundle, Pipeline]) -> None:
    _, bundle, _ = engine
    trending = _decide(engine, "trending")["trending"]
    assert trending.strategy == "trending" and trending.fallback == FallbackReason.NONE
    counts = bundle.extra_models["item_daily_counts"].astype(np.float64)
    days = counts.shape[1]
    age = (NOW // DAY - bundle.daily_counts_end_ms // DAY) + (days - 1 - np.arange(days))
    expected = counts @ np.power(0.5, age / 3.0)
    everywhere = np.array(["*" in i.regions for i in bundle.items])
    expected[~everywhere] = -1
    top = [bundle.items[j].id for j in np.argsort(-expected, kind="stable")[:10]]
    assert [i.id for i in trending.items] == top


def test_popularity_per_country_and_per_segment(engine: tuple[Store, Bundle, Pipeline]) -> None:
    _, bundle, _ = engine
    de = [i.id for i in _decide(engine, "home", context=Context(country="DE"))["home"].items]
    fr = [i.id for i in _decide(engine, "home", context=Context(country="FR"))["home"].items]
    assert de != fr
    scores = bundle.extra_models["item_popularity@country:DE"]
    assert [float(scores[_state(engine).rows[i]]) for i in de] == sorted(
        (float(scores[_state(engine).rows[i]]) for i in de), reverse=True
    )
    fan = _user(engine, lambda a: any(i.startswith("sports") for i in a.get("interests", [])))
    out = _decide(engine, "trending", user_id=fan, consent=CONSENT, explain=True)["trending"]
    assert out.strategy == "popular"
    segment = bundle.extra_models["item_popularity@segment:sports_fans"].astype(np.float64)
    everywhere = np.array(["*" in i.regions for i in bundle.items])
    segment[~everywhere] = -1
    assert [i.id for i in out.items] == [bundle.items[j].id for j in np.argsort(-segment, kind="stable")[:10]]


def test_extra_model_files_are_validated(bundle_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    shutil.copytree(bundle_dir, out)
    (out / "models" / "popularity" / "segment-nobody.npy").write_bytes(
        (out / "models" / "popularity" / "segment-sports_fans.npy").read_bytes()
    )
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["models/popularity/segment-nobody.npy"] = manifest["files"][
        "models/popularity/segment-sports_fans.npy"
    ]
    (out / "manifest.json").write_text(json.dumps(manifest))
    rewrite_manifest(out)
    with pytest.raises(BundleError, match=r"segment-nobody.npy: popularity for unknown segment"):
        load_bundle(out)
    (out / "models" / "popularity" / "segment-nobody.npy").unlink()
    del manifest["files"]["models/popularity/segment-nobody.npy"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    np.save(out / "models" / "item_daily_counts.npy", np.ones((3, 5), dtype=np.float32))
    rewrite_manifest(out)
    with pytest.raises(BundleError, match=r"item_daily_counts.npy: shape must be"):
        load_bundle(out)


def test_similar_items_walk_the_neighbor_lists_then_fill(engine: tuple[Store, Bundle, Pipeline]) -> None:
    store, bundle, pipeline = engine
    assert bundle.item_neighbors is not None and bundle.item_neighbor_scores is not None
    state = _state(engine)
    seed = next(i.id for i in bundle.items if "*" in i.regions)
    row = state.rows[seed]
    everywhere = {i.id for i in bundle.items if "*" in i.regions}
    expected = [bundle.items[r].id for r in bundle.item_neighbors[row] if r >= 0]
    expected = [i for i in expected if i in everywhere][:8]

    def similar(count: int, **ask: Any) -> PlacementDecision:
        request = DecideRequest(
            placements=(PlacementRequest("pdp_similar", count, seed_item_ids=(seed,), **ask),),
            now_ms=NOW,
            explain=True,
        )
        with store.read() as view:
            return pipeline.decide(view, request).placements[0]

    out = similar(8)
    assert out.strategy == "similar" and [i.id for i in out.items] == expected
    # Excluding most neighbors: the list is filled up from embedding similarity, never short.
    many = similar(8, exclude_ids=tuple(expected[:6]))
    assert len(many.items) == 8 and not set(expected[:6]) & {i.id for i in many.items}
    assert [i.id for i in many.items][:2] == expected[6:8]


def test_boosts_add_to_personalized_scores(bundle_dir: Path, tmp_path: Path) -> None:
    def edit(rules: dict[str, Any]) -> None:
        campaign = rules["placements"]["deals"]["campaigns"][0]
        assert campaign["id"] == "deals_for_deal_seekers"
        campaign["audience"] = []
        campaign["serve"] = {"strategy": "personalized", "boosts": [{"flag": "sale", "weight": 0.75}]}

    bundle = load_bundle(_custom_bundle(bundle_dir, tmp_path, edit))
    assert bundle.user_embeddings is not None
    row = next(j for j, p in enumerate(bundle.profiles) if "personalization" in p.consent)
    user = bundle.profiles[row].id
    with Store(tmp_path / "s", map_size=1 << 30) as store:
        apply_bundle(store, bundle)
        request = DecideRequest(
            user_id=user,
            consent=CONSENT,
            placements=(PlacementRequest("deals", 10),),
            explain=True,
            now_ms=NOW,
        )
        with store.read() as view:
            out = Pipeline().decide(view, request)
    placement = out.placements[0]
    assert placement.strategy == "embedding" and len(placement.items) == 10
    sale = np.array([bool(i.flags.get("sale")) for i in bundle.items])
    everywhere = np.array(["*" in i.regions for i in bundle.items])
    scores = bundle.item_embeddings.astype(np.float64) @ bundle.user_embeddings[row].astype(np.float64)
    scores += 0.75 * sale
    expected = np.sort(scores[everywhere])[::-1][:10]
    np.testing.assert_allclose([i.score for i in placement.items], expected, rtol=1e-4, atol=1e-5)
    assert out.explanation is not None
    for item in out.explanation.placements[0].items:
        assert item.parts["boost"] == (0.75 if sale[[i.id for i in bundle.items].index(item.id)] else 0.0)
