"""`Pipeline.decide`'s compiled path (core/_decide.pyx) against the Python reference,
`Pipeline._decide_reference`: whole decisions equal (every placement's items with scores to the bit,
content, experiment, variant, propensity, strategy, fallback, campaign, bandit segment; the response's
matched segments), or the same `RequestError`, on the bench mix's requests over the synthetic bundle,
changed by hypothesis (consent, units, contexts, channels, local times, forced variants, placements
with counts and request filters, bandits, the holdout), and on rules with channels, schedules and
excluded segments added to the bundle's."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise.bench import pipeline as bench_pipeline
from edgewise.core.decisions import Context, DecideRequest, DecideResponse, PlacementRequest, RequestError
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store
from edgewise.sync.bundle import load_bundle
from edgewise.sync.snapshot import apply_bundle

PLACEMENTS = ("home", "pdp_similar", "hero_banner", "deals", "trending", "promo_slot", "gated", "timed")


def _rules(doc: dict[str, Any]) -> dict[str, Any]:
    """The bundle's rules plus two placements whose campaigns have channels, schedules and exclusions."""
    doc = {**doc, "placements": dict(doc["placements"])}
    doc["placements"]["gated"] = {
        "kind": "items",
        "default_count": 4,
        "max_count": 12,
        "campaigns": [
            {
                "id": "app_only",
                "priority": 30,
                "channels": ["app"],
                "exclude": ["dach"],
                "serve": {"strategy": "popular", "scope": "country"},
            },
            {
                "id": "evenings",
                "priority": 20,
                "audience": ["mobile_app"],
                "schedule": {"local_hours": [18, 23], "days": ["mon", "tue", "wed", "sat"]},
                "serve": {"strategy": "personalized"},
            },
            {"id": "algo", "priority": 10, "exclude": ["high_value"], "serve": {"experiment": "home_algo"}},
            {
                "id": "not_young",
                "priority": 5,
                "exclude": ["young_adults"],
                "serve": {"strategy": "trending"},
            },
        ],
    }
    doc["placements"]["timed"] = {
        "kind": "content",
        "default_content": "promo_default",
        "campaigns": [
            {
                "id": "night",
                "priority": 5,
                "schedule": {"start": "2026-10-01T00:00:00Z", "local_hours": [22, 6]},
                "serve": {"content": "promo_shipping"},
            },
            {
                "id": "web",
                "channels": ["web"],
                "audience": ["young_adults"],
                "serve": {"content": "promo_ten_off"},
            },
            {"id": "hero", "serve": {"experiment": "hero_mv"}},
        ],
    }
    return doc


@pytest.fixture(scope="module")
def mix(
    tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path
) -> Iterator[tuple[Store, list[DecideRequest]]]:
    bundle = load_bundle(bundle_dir)
    bundle = dataclasses.replace(bundle, rules_doc=_rules(bundle.rules_doc))
    rng = np.random.default_rng(3)
    pop = bench_pipeline.Population.of(bundle, rng)
    requests = bench_pipeline.make_requests(pop, 400, rng)
    store = Store(tmp_path_factory.mktemp("decide"), map_size=1 << 30)
    apply_bundle(store, bundle)
    bench_pipeline.record_activity(store, pop, requests, rng)
    yield store, requests
    store.close()


def _both(store: Store, request: DecideRequest, compiled: Pipeline, reference: Pipeline) -> None:
    """Decide `request` by both paths (bandit draws seeded alike) and compare."""
    answers: list[Any] = []
    for pipeline in (compiled, reference):
        pipeline._scratch.rng = np.random.default_rng(11)
        with store.read() as view:
            try:
                answers.append(pipeline.decide(view, request))
            except RequestError as exc:
                answers.append(("RequestError", exc.field, str(exc)))
    got, expected = answers
    assert got == expected
    if isinstance(got, DecideResponse):  # scores to the bit, not only ==
        for a, b in zip(got.placements, expected.placements, strict=True):
            assert [np.float32(i.score).tobytes() for i in a.items] == [
                np.float32(i.score).tobytes() for i in b.items
            ]


@st.composite
def _changed(draw: st.DrawFn, requests: list[DecideRequest]) -> DecideRequest:
    request = draw(st.sampled_from(requests))
    context = request.context
    if draw(st.booleans()):
        context = dataclasses.replace(
            context,
            channel=draw(st.sampled_from(["", "web", "app", "kiosk"])),
            device=draw(st.sampled_from(["", "mobile", "desktop"])),
            country=draw(st.sampled_from(["", "DE", "US", "FR", "at"])),
            local_time=draw(
                st.sampled_from(["", "2026-11-02T19:30:00+01:00", "2026-11-07T23:10:00Z", "not a time"])
            ),
            attributes=draw(
                st.sampled_from(
                    [
                        {},
                        {"edgewise.force.hero_test": "spring_sale"},
                        {"edgewise.force.hero_test": "no_such_variant"},
                        {"edgewise.force.home_algo": "diverse"},
                    ]
                )
            ),
        )
    placements = request.placements
    if draw(st.booleans()):
        asks = []
        for pid in draw(st.lists(st.sampled_from(PLACEMENTS), min_size=1, max_size=5)):
            ask = PlacementRequest(pid, draw(st.integers(0, 14)))
            if draw(st.integers(0, 9)) == 0:
                name = draw(st.sampled_from(["flag", "nope"]))
                ask = dataclasses.replace(ask, filter=name, filter_params={"flag": "sale"})
            asks.append(ask)
        if draw(st.integers(0, 19)) == 0:
            asks.append(PlacementRequest("no_such_placement"))
        if draw(st.integers(0, 19)) == 0:
            asks.append(PlacementRequest("home", 10**30))  # no C integer holds it: the reference's error
        placements = tuple(asks) if draw(st.booleans()) else asks  # type: ignore[assignment]
    consent = draw(st.sampled_from([request.consent, frozenset(), frozenset({"personalization"})]))
    user_id, session_id = request.user_id, request.session_id
    if draw(st.integers(0, 4)) == 0:
        user_id, session_id = draw(
            st.sampled_from([("", ""), ("", "s-1"), ("u-nobody", ""), (user_id, "s-2")])
        )
    now_ms = request.now_ms + draw(st.sampled_from([0, 3_600_000, -40 * 86_400_000]))
    return dataclasses.replace(
        request,
        user_id=user_id,
        session_id=session_id,
        context=context,
        consent=consent,
        placements=placements,
        now_ms=draw(st.sampled_from([now_ms, 0])),
    )


def test_the_mix_decides_the_same_by_both_paths(mix: tuple[Store, list[DecideRequest]]) -> None:
    store, requests = mix
    compiled, reference = Pipeline(), Pipeline(compiled=False)
    for request in requests:
        _both(store, request, compiled, reference)


@settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_changed_requests_decide_the_same_by_both_paths(
    mix: tuple[Store, list[DecideRequest]], data: st.DataObject
) -> None:
    store, requests = mix
    _both(store, data.draw(_changed(requests)), Pipeline(), Pipeline(compiled=False))


def test_the_compiled_path_answers_the_common_request_and_leaves_the_rest(
    mix: tuple[Store, list[DecideRequest]],
) -> None:
    store, requests = mix
    pipeline = Pipeline()
    with store.read() as view:
        state = pipeline.state(view)
        from edgewise.core._decide import DecidePlan
        from edgewise.core.item_ranking import rank_items

        plan = DecidePlan(state)
        decide = pipeline._decider.decide
        assert decide(view, state, plan, requests[0], rank_items) is not None
        for left in (
            dataclasses.replace(requests[0], explain=True),
            dataclasses.replace(requests[0], placements=(PlacementRequest("no_such_placement"),)),
            dataclasses.replace(requests[0], placements=(PlacementRequest("home", 51),)),
        ):
            assert decide(view, state, plan, left, rank_items) is None
        explained = pipeline.decide(view, dataclasses.replace(requests[0], explain=True))
        assert explained.explanation is not None  # the reference answered
        with pytest.raises(RequestError, match="unknown placement"):
            pipeline.decide(view, dataclasses.replace(requests[0], placements=(PlacementRequest("nope"),)))


def test_a_context_without_a_country_or_time_and_every_placement(
    mix: tuple[Store, list[DecideRequest]],
) -> None:
    store, _ = mix
    compiled, reference = Pipeline(), Pipeline(compiled=False)
    for consent in (frozenset(), frozenset({"personalization"})):
        request = DecideRequest(
            user_id="u1",
            context=Context(channel="app"),
            consent=consent,
            placements=tuple(PlacementRequest(pid) for pid in PLACEMENTS),
        )
        _both(store, request, compiled, reference)


def test_a_feature_class_with_other_slots_is_refused_when_the_decider_is_made() -> None:
    from edgewise.core._decide import Decider
    from edgewise.core.feature_view import FeatureView
    from edgewise.core.item_ranking import Scratch, Shopper
    from edgewise.core.segments import SegmentMemo

    class Wider(FeatureView):
        __slots__ = ("extra",)

    def nothing() -> None:
        return None

    Decider(None, Scratch(), None, nothing, nothing, nothing, FeatureView, SegmentMemo, Shopper)
    for view, memo in ((Wider, SegmentMemo), (FeatureView, Wider)):
        with pytest.raises(TypeError, match="expected a __slots__ class"):
            Decider(None, Scratch(), None, nothing, nothing, nothing, view, memo, Shopper)
