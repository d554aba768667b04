"""Behavioural windows over live activity, with an explicit decision time and activity timestamps."""

from __future__ import annotations

from typing import Any

import pytest
from feature_source import DAY_MS, HOUR_MS, MINUTE_MS, NOW_MS, DictSource

from edgewise.core.behavior import BEHAVIORS, compile_behavior
from edgewise.core.conditions import ConditionError
from edgewise.core.records import Activity

CATEGORIES = {
    "shoe1": "fashion/shoes",
    "shoe2": "fashion/shoes",
    "dress1": "fashion/dresses",
    "fash": "fashion",
    "lookalike": "fashionista/bags",
    "pan1": "home/kitchen",
    "soap": "beauty/skincare",
    "razor": "beauty/shaving",
    "tv": "electronics/audio",
}
FLAGS = {"soap": {"replenish_days": 30}, "razor": {"replenish_days": 14}, "tv": {}}


def source(activity: Activity | None, now_ms: int = NOW_MS) -> DictSource:
    return DictSource({}, now_ms=now_ms, activity=activity, categories=CATEGORIES, flags=FLAGS)


def ago(ms: int) -> int:
    return NOW_MS - ms


def check(doc: Any, activity: Activity | None) -> bool:
    return compile_behavior(doc)(source(activity))


# --- viewed / purchased ---------------------------------------------------------------------------------

FASHION_3_IN_7 = {"viewed": {"category": "fashion", "min_count": 3, "within_days": 7}}


def test_viewed_category_three_times_in_seven_days() -> None:
    inside = Activity(
        views=(("shoe1", ago(6 * DAY_MS)), ("pan1", ago(DAY_MS)), ("dress1", ago(HOUR_MS)), ("fash", ago(1)))
    )
    assert check(FASHION_3_IN_7, inside) is True
    two_inside = Activity(views=(("shoe1", ago(8 * DAY_MS)), ("dress1", ago(HOUR_MS)), ("fash", ago(1))))
    assert check(FASHION_3_IN_7, two_inside) is False


def test_window_boundary_is_inside() -> None:
    at_boundary = Activity(views=(("shoe1", ago(7 * DAY_MS)), ("dress1", ago(1)), ("fash", ago(0))))
    assert check(FASHION_3_IN_7, at_boundary) is True
    just_outside = Activity(views=(("shoe1", ago(7 * DAY_MS + 1)), ("dress1", ago(1)), ("fash", ago(0))))
    assert check(FASHION_3_IN_7, just_outside) is False


def test_category_means_the_subtree_not_a_prefix() -> None:
    views = Activity(views=(("shoe1", ago(1)), ("lookalike", ago(1)), ("unknown-item", ago(1))))
    assert check({"viewed": {"category": "fashion", "min_count": 2}}, views) is False
    assert check({"viewed": {"category": "fashion", "min_count": 1}}, views) is True
    assert check({"viewed": {"category": "fashion/shoes"}}, views) is True
    assert check({"viewed": {"category": "fashion/shoes/"}}, views) is True
    assert check({"viewed": {"category": "fashion/dresses"}}, views) is False


@pytest.mark.parametrize(
    ("window", "age_ms", "expected"),
    [
        ({"within_minutes": 30}, 30 * MINUTE_MS, True),
        ({"within_minutes": 30}, 30 * MINUTE_MS + 1, False),
        ({"within_hours": 2}, 2 * HOUR_MS, True),
        ({"within_hours": 2}, 2 * HOUR_MS + 1, False),
        ({"within_hours": 1.5}, 90 * MINUTE_MS, True),
        ({"within_days": 1}, DAY_MS + 1, False),
        ({}, 365 * DAY_MS, True),  # no window: all retained activity
    ],
)
def test_viewed_item_windows(window: dict[str, Any], age_ms: int, expected: bool) -> None:
    activity = Activity(views=(("tv", ago(age_ms)),))
    assert check({"viewed": {"item": "tv", **window}}, activity) is expected
    assert check({"viewed": {"item": "pan1", **window}}, activity) is False


def test_viewed_any_item_counts_all_views() -> None:
    activity = Activity(views=(("tv", ago(1)), ("pan1", ago(2)), ("x", ago(3))))
    assert check({"viewed": {"min_count": 3, "within_minutes": 1}}, activity) is True
    assert check({"viewed": {"min_count": 4}}, activity) is False


def test_purchased_within_days() -> None:
    activity = Activity(purchases=(("tv", ago(40 * DAY_MS)), ("soap", ago(10 * DAY_MS))))
    assert check({"purchased": {"min_count": 1, "within_days": 30}}, activity) is True
    assert check({"purchased": {"min_count": 2, "within_days": 30}}, activity) is False
    assert check({"purchased": {"min_count": 2, "within_days": 45}}, activity) is True
    assert check({"purchased": {"category": "beauty", "within_days": 30}}, activity) is True
    assert check({"purchased": {"category": "electronics", "within_days": 30}}, activity) is False
    assert check({"purchased": {"within_days": 30}}, Activity()) is False


# --- cart ------------------------------------------------------------------------------------------------

ABANDONED_30 = {"cart_abandoned": {"idle_minutes": 30}}


def test_cart_abandoned_after_idle_minutes() -> None:
    idle = Activity(cart=(("shoe1", ago(2 * HOUR_MS)), ("dress1", ago(31 * MINUTE_MS))))
    assert check(ABANDONED_30, idle) is True
    busy = Activity(cart=(("shoe1", ago(2 * HOUR_MS)), ("dress1", ago(29 * MINUTE_MS))))
    assert check(ABANDONED_30, busy) is False


def test_cart_abandoned_boundary() -> None:
    assert check(ABANDONED_30, Activity(cart=(("shoe1", ago(30 * MINUTE_MS)),))) is True
    assert check(ABANDONED_30, Activity(cart=(("shoe1", ago(30 * MINUTE_MS - 1)),))) is False


def test_cart_abandoned_needs_a_cart_and_no_recent_purchase() -> None:
    assert check(ABANDONED_30, Activity(purchases=(("tv", ago(DAY_MS)),))) is False
    recent_purchase = Activity(cart=(("shoe1", ago(2 * HOUR_MS)),), purchases=(("tv", ago(10 * MINUTE_MS)),))
    assert check(ABANDONED_30, recent_purchase) is False
    old_purchase = Activity(cart=(("shoe1", ago(2 * HOUR_MS)),), purchases=(("tv", ago(DAY_MS)),))
    assert check(ABANDONED_30, old_purchase) is True


def test_cart_abandoned_uses_the_newest_add_whatever_the_order() -> None:
    out_of_order = Activity(cart=(("dress1", ago(5 * MINUTE_MS)), ("shoe1", ago(2 * HOUR_MS))))
    assert check(ABANDONED_30, out_of_order) is False


def test_cart_size() -> None:
    two = Activity(cart=(("shoe1", ago(1)), ("dress1", ago(1))))
    assert check({"cart_size": {"$gte": 2}}, two) is True
    assert check({"cart_size": {"$gte": 3}}, two) is False
    assert check({"cart_size": 2}, two) is True
    assert check({"cart_size": {"$eq": 0}}, Activity()) is True


# --- replenishment -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days_ago", "expected"),
    [(29, False), (30, True), (60, True), (90, True), (91, False)],
)
def test_replenishment_due_from_the_item_flag(days_ago: int, expected: bool) -> None:
    activity = Activity(purchases=(("soap", ago(days_ago * DAY_MS)),))
    assert check({"replenishment_due": {}}, activity) is expected


def test_replenishment_boundaries_to_the_millisecond() -> None:
    spec: dict[str, Any] = {"replenishment_due": {}}
    assert check(spec, Activity(purchases=(("soap", ago(30 * DAY_MS - 1)),))) is False
    assert check(spec, Activity(purchases=(("soap", ago(90 * DAY_MS + 1)),))) is False


def test_replenishment_default_interval_and_factor() -> None:
    tv_40_days = Activity(purchases=(("tv", ago(40 * DAY_MS)),))
    assert check({"replenishment_due": {}}, tv_40_days) is False  # no flag, no default
    assert check({"replenishment_due": {"default_interval_days": 30}}, tv_40_days) is True
    assert check({"replenishment_due": {"default_interval_days": 50}}, tv_40_days) is False
    soap_100_days = Activity(purchases=(("soap", ago(100 * DAY_MS)),))
    assert check({"replenishment_due": {}}, soap_100_days) is False
    assert check({"replenishment_due": {"max_overdue_factor": 4}}, soap_100_days) is True
    unknown = Activity(purchases=(("gone", ago(40 * DAY_MS)),))
    assert check({"replenishment_due": {"default_interval_days": 30}}, unknown) is False


def test_replenishment_flag_wins_over_the_default_and_any_item_may_be_due() -> None:
    activity = Activity(purchases=(("soap", ago(10 * DAY_MS)), ("razor", ago(20 * DAY_MS))))
    assert check({"replenishment_due": {"default_interval_days": 5}}, activity) is True  # razor (14 d)
    assert check({"replenishment_due": {}}, Activity(purchases=(("soap", ago(10 * DAY_MS)),))) is False


def test_replenishment_uses_the_latest_purchase_of_an_item() -> None:
    activity = Activity(purchases=(("soap", ago(5 * DAY_MS)), ("soap", ago(40 * DAY_MS))))
    assert check({"replenishment_due": {}}, activity) is False


# --- without activity, combined, errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        FASHION_3_IN_7,
        {"viewed": {}},
        {"purchased": {}},
        ABANDONED_30,
        {"replenishment_due": {"default_interval_days": 1}},
        {"cart_size": {"$eq": 0}},
    ],
)
def test_without_activity_every_behaviour_is_false(doc: dict[str, Any]) -> None:
    assert check(doc, None) is False


def test_spec_keys_are_anded() -> None:
    doc = {"viewed": {"category": "fashion"}, "cart_abandoned": {"idle_minutes": 30}}
    both = Activity(views=(("shoe1", ago(DAY_MS)),), cart=(("shoe1", ago(DAY_MS)),))
    assert check(doc, both) is True
    assert check(doc, Activity(views=(("shoe1", ago(DAY_MS)),))) is False
    assert set(BEHAVIORS) == {"viewed", "purchased", "cart_abandoned", "replenishment_due", "cart_size"}


@pytest.mark.parametrize(
    ("doc", "path", "reason"),
    [
        ([], "behavior", "must be an object of behaviours"),
        ({}, "behavior", "must name at least one behaviour"),
        ({"visited": {}}, "behavior.visited", "unknown behaviour"),
        ({"viewed": 3}, "behavior.viewed", "must be an object of parameters"),
        ({"viewed": {"categroy": "x"}}, "behavior.viewed.categroy", "unknown parameter"),
        ({"viewed": {"category": ""}}, "behavior.viewed.category", "must be a non-empty string"),
        ({"viewed": {"category": "/"}}, "behavior.viewed.category", "must name a category"),
        ({"viewed": {"category": "a", "item": "b"}}, "behavior.viewed.item", "either category or item"),
        ({"viewed": {"min_count": 0}}, "behavior.viewed.min_count", "integer >= 1"),
        ({"viewed": {"min_count": 2.5}}, "behavior.viewed.min_count", "integer >= 1"),
        ({"viewed": {"within_days": 0}}, "behavior.viewed.within_days", "greater than 0"),
        ({"viewed": {"within_days": "7"}}, "behavior.viewed.within_days", "must be a number, got string"),
        (
            {"viewed": {"within_days": 7, "within_hours": 3}},
            "behavior.viewed.within_days",
            "give one window",
        ),
        ({"purchased": {"within_hours": True}}, "behavior.purchased.within_hours", "must be a number"),
        ({"cart_abandoned": {}}, "behavior.cart_abandoned.idle_minutes", "is required"),
        ({"cart_abandoned": {"idle_minutes": -5}}, "behavior.cart_abandoned.idle_minutes", "greater than 0"),
        (
            {"replenishment_due": {"max_overdue_factor": 0.5}},
            "behavior.replenishment_due.max_overdue_factor",
            "at least 1",
        ),
        (
            {"replenishment_due": {"default_interval_days": 0}},
            "behavior.replenishment_due.default_interval_days",
            "greater than 0",
        ),
        ({"cart_size": "2"}, "behavior.cart_size", "must be an operator object"),
        ({"cart_size": {"$gte": 2, "n": 1}}, "behavior.cart_size", "must be an operator object"),
        ({"cart_size": {"$gtee": 2}}, "behavior.cart_size.$gtee", "unknown operator"),
    ],
)
def test_compile_error_names_the_path(doc: Any, path: str, reason: str) -> None:
    with pytest.raises(ConditionError) as raised:
        compile_behavior(doc)
    assert raised.value.path == path
    assert reason in raised.value.reason
