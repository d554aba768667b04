"""Segments: one working segment of each kind (each with a matching and a non-matching feature view),
per-request memoization, `only`, compile errors with the segment path, and the synthetic bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from feature_source import DAY_MS, HOUR_MS, NOW_MS, DictSource

from edgewise.core.conditions import ConditionError
from edgewise.core.records import Activity
from edgewise.core.segments import SegmentSet, compile_segments
from edgewise.sync.bundle import load_bundle

SEGMENTS: dict[str, Any] = {
    "fashion_browsers": {
        "description": "behavioural: viewed fashion at least 3 times in 7 days",
        "behavior": {"viewed": {"category": "fashion", "min_count": 3, "within_days": 7}},
    },
    "dach": {
        "description": "geographic: in or from Germany, Austria, Switzerland",
        "condition": {
            "$or": [
                {"context.country": {"$in": ["DE", "AT", "CH"]}},
                {"profile.country": {"$in": ["DE", "AT", "CH"]}},
            ]
        },
    },
    "runners": {
        "description": "psychographic: interested in running",
        "condition": {"profile.interests": {"$in": ["sports", "sports/running"]}},
    },
    "mobile_app": {
        "description": "technographic: app users on a phone",
        "condition": {"context.device": "mobile", "profile.app_user": True},
    },
    "young_adults": {
        "description": "demographic",
        "condition": {"profile.age_band": {"$in": ["18-24", "25-34"]}},
    },
    "high_value": {
        "description": "value-based: LTV or RFM",
        "condition": {
            "$or": [{"profile.ltv": {"$gte": 500}}, {"profile.rfm_segment": {"$in": ["champions", "loyal"]}}]
        },
    },
    "gift_seekers": {
        "description": "needs-based",
        "condition": {"profile.needs": {"$elemMatch": {"$eq": "gift"}}},
    },
    "cart_abandoners": {
        "description": "abandoned cart: items in the cart, nothing added or bought for 30 minutes",
        "behavior": {"cart_abandoned": {"idle_minutes": 30}},
    },
    "replenish": {
        "description": "replenishment reminder",
        "behavior": {"replenishment_due": {"default_interval_days": 30}},
    },
    "mobile_fashion_cart": {
        "description": "condition and behaviour together",
        "condition": {"context.device": "mobile"},
        "behavior": {"cart_size": {"$gte": 1}, "viewed": {"category": "fashion", "within_hours": 24}},
    },
}

CATEGORIES = {
    "shoe1": "fashion/shoes",
    "shoe2": "fashion/shoes",
    "dress1": "fashion/dresses",
    "pan": "home/kitchen",
}
FLAGS = {"coffee": {"replenish_days": 14}, "pan": {}}
CATEGORIES_AND_FLAGS = {**CATEGORIES, "coffee": "home/kitchen"}


def view(
    profile: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    activity: Activity | None = None,
) -> DictSource:
    return DictSource(
        {"profile": profile or {}, "context": context or {}},
        now_ms=NOW_MS,
        activity=activity,
        categories=CATEGORIES_AND_FLAGS,
        flags=FLAGS,
    )


def ago(ms: int) -> int:
    return NOW_MS - ms


KINDS = [
    (
        "fashion_browsers",
        view(
            activity=Activity(views=(("shoe1", ago(DAY_MS)), ("shoe2", ago(2 * DAY_MS)), ("dress1", ago(1))))
        ),
        view(
            activity=Activity(views=(("shoe1", ago(DAY_MS)), ("shoe2", ago(9 * DAY_MS)), ("dress1", ago(1))))
        ),
    ),
    ("dach", view(profile={"country": "FR"}, context={"country": "AT"}), view(profile={"country": "FR"})),
    (
        "runners",
        view(profile={"interests": ["books", "sports/running"]}),
        view(profile={"interests": ["sports/cycling"]}),
    ),
    (
        "mobile_app",
        view(profile={"app_user": True}, context={"device": "mobile"}),
        view(profile={"app_user": False}, context={"device": "mobile"}),
    ),
    ("young_adults", view(profile={"age_band": "18-24"}), view(profile={"age_band": "45-54"})),
    ("high_value", view(profile={"ltv": 120.0, "rfm_segment": "champions"}), view(profile={"ltv": 499.99})),
    ("gift_seekers", view(profile={"needs": ["premium", "gift"]}), view(profile={"needs": ["deal_seeker"]})),
    (
        "cart_abandoners",
        view(activity=Activity(cart=(("shoe1", ago(2 * HOUR_MS)),))),
        view(activity=Activity(cart=(("shoe1", ago(2 * HOUR_MS)),), purchases=(("pan", ago(HOUR_MS // 4)),))),
    ),
    (
        "replenish",
        view(activity=Activity(purchases=(("coffee", ago(15 * DAY_MS)),))),
        view(activity=Activity(purchases=(("coffee", ago(10 * DAY_MS)), ("pan", ago(10 * DAY_MS))))),
    ),
    (
        "mobile_fashion_cart",
        view(
            context={"device": "mobile"},
            activity=Activity(views=(("dress1", ago(HOUR_MS)),), cart=(("pan", ago(1)),)),
        ),
        view(context={"device": "mobile"}, activity=Activity(views=(("dress1", ago(HOUR_MS)),))),
    ),
]


@pytest.fixture(scope="module")
def segments() -> SegmentSet:
    return compile_segments(SEGMENTS)


@pytest.mark.parametrize(("segment_id", "member", "outsider"), KINDS, ids=[k[0] for k in KINDS])
def test_one_segment_of_each_kind(
    segments: SegmentSet, segment_id: str, member: DictSource, outsider: DictSource
) -> None:
    assert segments.matches(segment_id, member) is True
    assert segments.matches(segment_id, outsider) is False
    assert segment_id in segments.evaluate(member)
    assert segment_id not in segments.evaluate(outsider)


def test_every_segment_kind_is_covered(segments: SegmentSet) -> None:
    assert {k[0] for k in KINDS} == set(segments.ids)
    assert segments.ids == tuple(SEGMENTS)  # document order
    assert len(segments) == len(SEGMENTS)
    assert segments.segments["dach"].description.startswith("geographic")
    assert segments.segments["cart_abandoners"].has_behavior
    assert not segments.segments["cart_abandoners"].has_condition
    assert segments.segments["mobile_fashion_cart"].has_condition


def test_without_activity_behavioural_segments_do_not_match(segments: SegmentSet) -> None:
    source = view(profile={"country": "DE", "ltv": 900}, context={"device": "mobile"})
    assert segments.evaluate(source) == {"dach", "high_value"}


def test_evaluate_only_reads_what_the_requested_segments_need(segments: SegmentSet) -> None:
    source = view(profile={"country": "DE", "age_band": "18-24"}, context={"country": "DE"})
    assert segments.evaluate(source, only=["young_adults", "runners"]) == {"young_adults"}
    assert set(source.reads) == {("profile", "age_band"), ("profile", "interests")}
    with pytest.raises(KeyError, match="unknown segment 'nope'"):
        segments.evaluate(source, only=["nope"])
    with pytest.raises(KeyError):
        segments.matches("nope", source)
    assert "nope" not in segments
    assert "dach" in segments


def test_memo_evaluates_each_segment_at_most_once(segments: SegmentSet) -> None:
    source = view(profile={"country": "CH", "ltv": 10.0, "rfm_segment": "new"})
    memo = segments.memo(source)
    assert memo.matches("dach") is True
    reads_after_first = len(source.reads)
    assert memo.matches("dach") is True
    assert memo.matches_any(["high_value", "dach"]) is True
    assert memo.matches_all(["dach", "high_value"]) is False
    assert memo.matches("high_value") is False
    assert len(source.reads) == reads_after_first + 2  # high_value once: ltv, rfm_segment
    assert memo.evaluated == {"dach": True, "high_value": False}
    assert memo.matched() == {"dach"}


def test_empty_segments() -> None:
    empty = compile_segments({})
    assert empty.ids == ()
    assert empty.evaluate(view()) == frozenset()


@pytest.mark.parametrize(
    ("doc", "path", "reason"),
    [
        ([], "segments", "must be an object"),
        ({"bad id": {"condition": {"a": 1}}}, "segments.bad id", "invalid segment id"),
        ({"x" * 65: {"condition": {"a": 1}}}, "segments." + "x" * 65, "invalid segment id"),
        ({"s": []}, "segments.s", "must be an object with condition and/or behavior"),
        ({"s": {}}, "segments.s", "needs a condition, a behavior, or both"),
        ({"s": {"description": "only words"}}, "segments.s", "needs a condition, a behavior, or both"),
        ({"s": {"condition": {"a": 1}, "audience": {}}}, "segments.s.audience", "unknown field"),
        ({"s": {"condition": {"a": 1}, "description": 3}}, "segments.s.description", "must be a string"),
        (
            {"cart_abandoners": {"behavior": {"cart_abandoned": {"idle_minutes": "30"}}}},
            "segments.cart_abandoners.behavior.cart_abandoned.idle_minutes",
            "must be a number, got string",
        ),
        (
            {"ok": {"condition": {"a": 1}}, "geo": {"condition": {"profile.country": {"$in": "DE"}}}},
            "segments.geo.condition.profile.country.$in",
            "must be a list of values",
        ),
    ],
)
def test_compile_error_names_the_segment_and_field(doc: Any, path: str, reason: str) -> None:
    with pytest.raises(ConditionError) as raised:
        compile_segments(doc)
    assert raised.value.path == path
    assert reason in raised.value.reason


def test_attribute_segments_split_the_synthetic_bundle(bundle_dir: Path) -> None:
    """The segment documents above use the synthetic bundle's attribute names and values."""
    bundle = load_bundle(bundle_dir)
    segments = compile_segments(SEGMENTS)
    attribute_segments = ["runners", "young_adults", "high_value", "gift_seekers", "dach"]
    counts = dict.fromkeys(attribute_segments, 0)
    for profile in bundle.profiles:
        source = view(profile=profile.attributes, context={"device": "desktop"})
        for segment_id in segments.evaluate(source, only=attribute_segments):
            counts[segment_id] += 1
    for segment_id, count in counts.items():
        assert 0 < count < len(bundle.profiles), (segment_id, count)
