"""Attribution of outcomes to exposures (edgewise.core.attribution): decision id, windows, item level,
ordering, deduplication, and the bounded streaming `Attributor`."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from edgewise.core.attribution import (
    DEFAULT_WINDOWS_MS,
    Attributed,
    Attributor,
    Exposure,
    Outcome,
    attribute,
)

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_700_000_000_000


def exp(
    decision_id: str,
    ts: int,
    *,
    unit: str = "u1",
    placement: str = "home_hero",
    items: tuple[str, ...] = (),
    variant: str = "a",
    session: str = "",
) -> Exposure:
    return Exposure(decision_id, unit, placement, "camp", "exp1", variant, 0.5, items, ts, session=session)


def out(
    event_id: str,
    ts: int,
    *,
    type: str = "click",
    unit: str = "u1",
    decision_id: str = "",
    placement: str = "home_hero",
    item_id: str = "",
    value: float = 0.0,
    session: str = "",
) -> Outcome:
    return Outcome(event_id, type, unit, decision_id, placement, item_id, value, ts, session=session)


def one(
    outcome: Outcome, exposures: list[Exposure], windows: Mapping[str, int] = DEFAULT_WINDOWS_MS
) -> Attributed:
    result = attribute([outcome], exposures, windows)
    assert len(result) == 1
    return result[0]


def test_default_windows() -> None:
    assert DEFAULT_WINDOWS_MS == {"click": 30 * MIN, "add_to_cart": DAY, "purchase": 7 * DAY}


@pytest.mark.parametrize(
    ("type_", "window"), [("click", 30 * MIN), ("add_to_cart", DAY), ("purchase", 7 * DAY)]
)
def test_window_boundaries_are_inclusive(type_: str, window: int) -> None:
    exposures = [exp("d1", T0)]
    at_edge = one(out("e1", T0 + window, type=type_), exposures)
    assert at_edge.how == "placement" and at_edge.exposure == exposures[0]
    assert at_edge.latency_ms == window
    past = one(out("e2", T0 + window + 1, type=type_), exposures)
    assert past.how == "unattributed" and past.exposure is None
    same_ms = one(out("e3", T0, type=type_), exposures)
    assert same_ms.exposure == exposures[0]


def test_custom_windows_and_unknown_type() -> None:
    exposures = [exp("d1", T0)]
    assert one(out("e1", T0 + 2 * MIN), exposures, windows={"click": MIN}).how == "unattributed"
    assert one(out("e1", T0 + 2 * MIN), exposures, windows={"click": 5 * MIN}).how == "placement"
    assert one(out("e2", T0 + MIN, type="dismiss"), exposures).how == "unattributed"
    # an explicit decision id still attributes a type without a window
    assert one(out("e3", T0 + MIN, type="dismiss", decision_id="d1"), exposures).how == "decision_id"


def test_latest_exposure_of_the_placement_wins() -> None:
    exposures = [exp("d1", T0), exp("d2", T0 + 5 * MIN), exp("d3", T0 + 6 * MIN, placement="pdp_recs")]
    got = one(out("e1", T0 + 10 * MIN), exposures)
    assert got.exposure is not None and got.exposure.decision_id == "d2"
    other = one(out("e2", T0 + 10 * MIN, placement="pdp_recs"), exposures)
    assert other.exposure is not None and other.exposure.decision_id == "d3"
    nothing = one(out("e3", T0 + 10 * MIN, placement="cart_recs"), exposures)
    assert nothing.how == "unattributed"
    no_placement = one(out("e4", T0 + 10 * MIN, placement=""), exposures)
    assert no_placement.how == "unattributed"


def test_decision_id_wins_over_recency() -> None:
    exposures = [exp("d1", T0, variant="a"), exp("d2", T0 + 5 * MIN, variant="b")]
    got = one(out("e1", T0 + 10 * MIN, decision_id="d1"), exposures)
    assert got.how == "decision_id"
    assert got.exposure is not None and got.exposure.decision_id == "d1" and got.variant == "a"
    # and beyond the window, too: the caller named the decision
    late = one(out("e2", T0 + 3 * HOUR, decision_id="d1"), exposures)
    assert late.how == "decision_id" and late.experiment == "exp1"
    # even for another unit (the user logged in between exposure and outcome)
    other_unit = one(out("e3", T0 + MIN, decision_id="d1", unit="u-other"), exposures)
    assert other_unit.how == "decision_id"


def test_unknown_decision_id_falls_back_to_recency() -> None:
    exposures = [exp("d1", T0), exp("d2", T0 + 5 * MIN)]
    got = one(out("e1", T0 + 10 * MIN, decision_id="nope"), exposures)
    assert got.how == "placement"
    assert got.exposure is not None and got.exposure.decision_id == "d2"


def test_exposure_after_the_outcome_is_never_used() -> None:
    exposures = [exp("d1", T0 + 10 * MIN), exp("d0", T0 - MIN)]
    got = one(out("e1", T0), exposures)
    assert got.exposure is not None and got.exposure.decision_id == "d0"
    # even when named by decision id: it falls back to the earlier exposure
    named = one(out("e2", T0, decision_id="d1"), exposures)
    assert named.how == "placement"
    assert named.exposure is not None and named.exposure.decision_id == "d0"
    assert one(out("e3", T0), [exp("d1", T0 + 1)]).how == "unattributed"


def test_item_level_match() -> None:
    exposures = [
        exp("d1", T0, placement="pdp_recs", items=("sku1", "sku2")),
        exp("d2", T0 + HOUR, placement="home_recs", items=("sku3",)),
        exp("d3", T0 + 2 * HOUR, placement="pdp_recs", items=("sku4",)),
    ]
    # the purchase of sku2 goes to the exposure that showed it, even though the placement was shown later
    buy = one(
        out("p1", T0 + DAY, type="purchase", placement="pdp_recs", item_id="sku2", value=30.0), exposures
    )
    assert buy.how == "item"
    assert buy.exposure is not None and buy.exposure.decision_id == "d1"
    assert buy.outcome.value == 30.0
    # an item no exposure showed: the latest exposure of the placement the event names
    other = one(out("p2", T0 + DAY, type="purchase", placement="pdp_recs", item_id="sku9"), exposures)
    assert other.how == "placement"
    assert other.exposure is not None and other.exposure.decision_id == "d3"
    # neither: unattributed
    none = one(out("p3", T0 + DAY, type="purchase", placement="", item_id="sku9"), exposures)
    assert none.how == "unattributed"
    # the item match ignores the event's placement
    cross = one(out("p4", T0 + DAY, type="purchase", placement="pdp_recs", item_id="sku3"), exposures)
    assert cross.exposure is not None and cross.exposure.decision_id == "d2"
    # latest exposure showing the item wins
    again = [*exposures, exp("d4", T0 + 3 * HOUR, placement="cart_recs", items=("sku2",))]
    latest = one(out("p5", T0 + DAY, type="purchase", item_id="sku2"), again)
    assert latest.exposure is not None and latest.exposure.decision_id == "d4"


def test_item_outside_window_falls_back_to_placement() -> None:
    exposures = [
        exp("d1", T0, placement="pdp_recs", items=("sku1",)),
        exp("d2", T0 + 25 * MIN, placement="pdp_recs", items=("sku2",)),
    ]
    click = one(out("c1", T0 + 31 * MIN, placement="pdp_recs", item_id="sku1"), exposures)
    assert click.how == "placement"
    assert click.exposure is not None and click.exposure.decision_id == "d2"


def test_decision_with_several_placements() -> None:
    exposures = [
        exp("d1", T0, placement="home_hero"),
        exp("d1", T0, placement="home_recs", items=("sku1",)),
    ]
    by_placement = one(out("e1", T0 + MIN, decision_id="d1", placement="home_recs"), exposures)
    assert by_placement.exposure is not None and by_placement.exposure.placement == "home_recs"
    by_item = one(out("e2", T0 + MIN, decision_id="d1", placement="", item_id="sku1"), exposures)
    assert by_item.exposure is not None and by_item.exposure.placement == "home_recs"
    first = one(out("e3", T0 + MIN, decision_id="d1", placement=""), exposures)
    assert first.exposure is not None and first.exposure.placement == "home_hero"


def test_units_and_sessions() -> None:
    exposures = [exp("d1", T0, unit="s-9", session="s-9"), exp("d2", T0 + MIN, unit="u2")]
    # another user's exposure is never used
    assert one(out("e1", T0 + 2 * MIN, unit="u1"), exposures).how == "unattributed"
    # logged in after the exposure: the outcome names the user and the session
    got = one(out("e2", T0 + 2 * MIN, unit="u1", session="s-9"), exposures)
    assert got.exposure is not None and got.exposure.decision_id == "d1"
    assert one(out("e3", T0 + 2 * MIN, unit="u2"), exposures).how == "placement"


def test_each_outcome_once_and_order_independent() -> None:
    rng = random.Random(4)
    exposures = [
        exp(f"d{i}", T0 + i * 7 * MIN, unit=f"u{i % 3}", items=(f"sku{i % 5}",), placement=f"p{i % 2}")
        for i in range(40)
    ]
    exposures.append(exposures[3])  # a repeated exposure
    outcomes = [
        out(
            f"e{i}",
            T0 + rng.randrange(0, 300 * MIN),
            type=rng.choice(["click", "add_to_cart", "purchase"]),
            unit=f"u{rng.randrange(3)}",
            placement=f"p{rng.randrange(2)}",
            item_id=rng.choice(["", "sku1", "sku4"]),
            decision_id=rng.choice(["", "", "d5", "zz"]),
        )
        for i in range(60)
    ]
    outcomes.append(outcomes[10])  # a retried outcome
    expected = attribute(outcomes, exposures)
    assert len(expected) == 60
    assert len({a.outcome.event_id for a in expected}) == 60
    for _ in range(5):
        rng.shuffle(exposures)
        rng.shuffle(outcomes)
        assert attribute(outcomes, exposures) == expected
    for a in expected:
        if a.exposure is not None:
            assert a.exposure.timestamp_ms <= a.outcome.timestamp_ms
            assert a.how != "unattributed"
        else:
            assert a.how == "unattributed"
    assert [a.outcome.timestamp_ms for a in expected] == sorted(a.outcome.timestamp_ms for a in expected)


def test_ties_in_time_are_deterministic() -> None:
    exposures = [exp("dB", T0), exp("dA", T0)]
    first = one(out("e1", T0 + MIN), exposures)
    second = one(out("e1", T0 + MIN), list(reversed(exposures)))
    assert first == second
    assert first.exposure is not None and first.exposure.decision_id == "dB"  # the larger key is "latest"


# --- streaming ------------------------------------------------------------------------------------


def test_attributor_matches_batch_in_time_order() -> None:
    rng = random.Random(12)
    events: list[tuple[int, int, Exposure | Outcome]] = []
    for i in range(300):
        ts = T0 + rng.randrange(0, 3 * DAY)
        unit = f"u{rng.randrange(20)}"
        if rng.random() < 0.5:
            items = tuple(f"sku{rng.randrange(30)}" for _ in range(3))
            events.append((ts, 0, exp(f"d{i}", ts, unit=unit, items=items, placement=f"p{rng.randrange(3)}")))
        else:
            events.append(
                (
                    ts,
                    1,
                    out(
                        f"e{i}",
                        ts,
                        type=rng.choice(["click", "add_to_cart", "purchase"]),
                        unit=unit,
                        placement=f"p{rng.randrange(3)}",
                        item_id=f"sku{rng.randrange(30)}",
                        decision_id=f"d{rng.randrange(300)}" if rng.random() < 0.2 else "",
                    ),
                )
            )
    events.sort(key=lambda e: (e[0], e[1]))  # exposures before outcomes of the same millisecond
    streaming = Attributor(max_per_unit=1_000)
    got: list[Attributed] = []
    for _, _, ev in events:
        if isinstance(ev, Exposure):
            streaming.add_exposure(ev)
        else:
            a = streaming.add_outcome(ev)
            assert a is not None
            got.append(a)
    batch = attribute(
        [e for _, _, e in events if isinstance(e, Outcome)],
        [e for _, _, e in events if isinstance(e, Exposure)],
    )
    key = {a.outcome.event_id: a for a in batch}
    assert len(got) == len(batch)
    assert all(key[a.outcome.event_id] == a for a in got)
    assert any(a.how == "item" for a in got) and any(a.how == "decision_id" for a in got)


def test_attributor_dedupes_and_handles_late_exposures() -> None:
    att = Attributor()
    att.add_exposure(exp("d2", T0 + 5 * MIN))
    att.add_exposure(exp("d1", T0))  # out of order: kept sorted
    att.add_exposure(exp("d1", T0))  # repeated
    assert att.exposures_held() == 2
    a = att.add_outcome(out("e1", T0 + 3 * MIN))
    assert a is not None and a.exposure is not None and a.exposure.decision_id == "d1"
    assert att.add_outcome(out("e1", T0 + 3 * MIN)) is None  # never twice


def test_attributor_memory_is_bounded() -> None:
    att = Attributor(max_per_unit=5, max_units=10, max_decisions=20, max_events=50)
    for i in range(1_000):
        att.add_exposure(exp(f"d{i}", T0 + i * MIN, unit=f"u{i % 37}"))
        att.add_outcome(out(f"e{i}", T0 + i * MIN, unit=f"u{i % 37}"))
    assert att.units_held() <= 10
    assert att.exposures_held() <= 50
    assert att.decisions_held() <= 20
    per_unit = Attributor(max_per_unit=3)
    for i in range(100):
        per_unit.add_exposure(exp(f"d{i}", T0 + i))
    assert per_unit.exposures_held() == 3
    got = per_unit.add_outcome(out("e", T0 + 200))
    assert got is not None and got.exposure is not None and got.exposure.decision_id == "d99"


def test_attributor_prunes_beyond_the_largest_window() -> None:
    att = Attributor()
    att.add_exposure(exp("old", T0))
    att.add_exposure(exp("new", T0 + 8 * DAY))
    assert att.exposures_held() == 1
    # the decision index still resolves an explicit decision id
    a = att.add_outcome(out("e1", T0 + 8 * DAY, decision_id="old"))
    assert a is not None and a.how == "decision_id"
    with pytest.raises(ValueError):
        Attributor(max_per_unit=0)
