"""Folding forwarded events into profiles (core/profile_fold.py) and merging activities."""

from __future__ import annotations

from edgewise.core.activity import ActivityLimits, Event, merge_activity
from edgewise.core.profile_fold import fold_profile
from edgewise.core.records import Activity, ProfileRecord, decode_profile, encode_profile

LIMITS = ActivityLimits()


def _event(n: int, type_: str = "view", item: str = "i1", personalization: bool = True) -> Event:
    return Event(f"e{n}", type_, "u1", "", item, "", "", 0.0, 1_000 + n, True, personalization)


def test_fold_is_idempotent_and_respects_consent() -> None:
    base = encode_profile(ProfileRecord("u1", 0, {"country": "DE"}, {"personalization": 5}, None))
    events = [_event(1), _event(2, "add_to_cart", "i2"), _event(3, "view", "i3")]
    once = fold_profile("u1", base, events, LIMITS)
    assert once is not None
    profile = decode_profile("u1", once)
    assert profile.attributes == {"country": "DE"} and profile.activity is not None
    assert [i for i, _ in profile.activity.views] == ["i1", "i3"] and profile.activity.cart_items() == ("i2",)
    assert fold_profile("u1", once, events, LIMITS) is None  # folding again changes nothing
    assert fold_profile("u1", base, [_event(4, personalization=False)], LIMITS) is None
    denied = encode_profile(ProfileRecord("u1", 0, {}, {"analytics": 5}, None))
    assert fold_profile("u1", denied, events, LIMITS) is None


def test_a_new_user_gets_a_profile_and_plain_profiles_encode_as_before() -> None:
    created = fold_profile("u9", None, [_event(1)], LIMITS)
    assert created is not None
    assert decode_profile("u9", created).consent == {"personalization": 1_001}
    plain = ProfileRecord("u2", 0, {"a": 1}, {}, None)
    assert b"act" not in encode_profile(plain) and decode_profile("u2", encode_profile(plain)) == plain


def test_forwarded_record_round_trip_and_merge() -> None:
    import msgpack

    event = _event(7, "purchase", "i4")
    assert Event.from_record(msgpack.unpackb(event.encode())) == event
    local = Activity(views=(("i1", 10), ("i2", 30)), impressions=(("i9", 2),))
    fleet = Activity(views=(("i1", 20), ("i3", 25)), cart=(("i5", 5),))
    merged = merge_activity(local, fleet, LIMITS)
    assert merged is not None
    assert merged.views == (("i1", 20), ("i3", 25), ("i2", 30))
    assert merged.cart == (("i5", 5),) and merged.impressions == (("i9", 2),)
    assert merge_activity(None, fleet, LIMITS) is fleet and merge_activity(local, None, LIMITS) is local


def test_consent_events_set_the_stored_consent_and_revocation_drops_activity() -> None:
    base = encode_profile(ProfileRecord("u1", 0, {}, {"personalization": 5, "analytics": 5}, None))
    viewed = fold_profile("u1", base, [_event(1)], LIMITS)
    assert viewed is not None
    revoke = Event("c1", "consent", "u1", "", "", "", "", 0.0, 2_000, False, False)
    after = decode_profile("u1", fold_profile("u1", viewed, [revoke, _event(3000)], LIMITS) or b"")
    assert after.consent == {} and after.activity is None  # and the later view did not count
    grant = Event("c2", "consent", "u1", "", "", "", "", 0.0, 4_000, True, True)
    again = decode_profile("u1", fold_profile("u1", encode_profile(after), [grant], LIMITS) or b"")
    assert again.consent == {"personalization": 4_000, "analytics": 4_000}


def test_purchases_update_orders_ltv_and_rfm() -> None:
    from edgewise.core.profile_fold import rfm_segment

    base = encode_profile(
        ProfileRecord("u1", 0, {"orders": 3, "ltv": 480.0, "rfm_segment": "potential"}, {}, None)
    )
    buys = [
        Event(f"p{n}", "purchase", "u1", "", f"i{n}", "", "", 30.0, 5_000 + n, True, False) for n in range(5)
    ]
    after = decode_profile("u1", fold_profile("u1", base, buys, LIMITS) or b"")
    assert after.attributes["orders"] == 8 and after.attributes["ltv"] == 630.0
    assert after.attributes["rfm_segment"] == "champions" and after.attributes["last_order_ms"] == 5_004
    assert (
        after.activity is None and after.consent == {}
    )  # no personalization: no activity, no consent change
    assert [rfm_segment(o, v) for o, v in ((1, 10.0), (4, 50.0), (3, 50.0))] == ["new", "loyal", "potential"]
