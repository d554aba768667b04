"""The compiled shape check of decoded (item, number) pairs against its Python reference, and what a
decoded activity keeps or converts."""

from __future__ import annotations

from typing import Any

import msgpack
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise.core._records import well_typed_pairs
from edgewise.core.records import Activity, _well_typed_pairs_py, decode_activity, encode_activity


class _Str(str):
    pass


class _Int(int):
    pass


atoms = st.one_of(
    st.text(max_size=5),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(allow_nan=False),
    st.none(),
    st.binary(max_size=3),
    st.text(max_size=3).map(_Str),
    st.integers(0, 9).map(_Int),
)
pairs = st.one_of(
    st.tuples(st.text(max_size=5), st.integers()),  # the well-typed shape, often
    st.tuples(atoms, atoms),
    st.tuples(atoms),
    st.tuples(atoms, atoms, atoms),
    st.lists(atoms, min_size=2, max_size=2),
    atoms,
)
values = st.one_of(
    st.lists(pairs, max_size=8).map(tuple),
    st.lists(st.tuples(st.text(max_size=5), st.integers()), max_size=8).map(tuple),
    st.lists(pairs, max_size=8),
    atoms,
)


@settings(max_examples=examples(2_000), deadline=None)
@given(values)
def test_the_compiled_check_agrees_with_the_reference(value: Any) -> None:
    assert well_typed_pairs(value) == _well_typed_pairs_py(value)


def test_edge_cases() -> None:
    assert well_typed_pairs(()) and well_typed_pairs((("i1", 5),))
    assert not well_typed_pairs([("i1", 5)])  # a list, not a tuple
    assert not well_typed_pairs((["i1", 5],))
    assert not well_typed_pairs((("i1", True),))  # bool is not int here
    assert not well_typed_pairs((("i1", 5.0),))
    assert not well_typed_pairs(((_Str("i1"), 5),))
    assert not well_typed_pairs((("i1", 5, 6),))
    assert not well_typed_pairs(None)


def test_a_decoded_activity_keeps_well_typed_pairs_and_converts_the_others() -> None:
    heavy = Activity(
        tuple((f"i{j}", 1_795_000_000_000 - j) for j in range(50)),
        (("i1", 1_795_000_000_000),),
        (),
        tuple((f"i{j}", j % 7 + 1) for j in range(200)),
    )
    assert decode_activity(encode_activity(heavy)) == heavy
    # An older or foreign encoding: numbers as floats, an item id as bytes. Converted, not refused.
    odd = msgpack.packb({"views": [["i1", 5.0]], "cart": [[b"i2", 7]], "buy": [], "imp": [["i3", 2]]})
    activity = decode_activity(odd)
    assert activity.views == (("i1", 5),) and activity.impressions == (("i3", 2),)
    assert activity.cart[0][1] == 7


def _union_reference(a: Any, b: Any, cap: int) -> Any:
    """merge_activity's rule as first written: every entry of a then b in one loop."""
    newest: dict[str, int] = {}
    for item, ts in (*a, *b):
        if ts >= newest.get(item, -1):
            newest[item] = ts
    return tuple(sorted(newest.items(), key=lambda e: e[1]))[-cap:]


# Few items and times, so that items repeat across the two sides (and sometimes within one) and
# times tie.
sequences = st.lists(
    st.tuples(st.sampled_from(["i1", "i2", "i3", "i4", "i5"]), st.integers(0, 6)), max_size=8
).map(tuple)


@settings(max_examples=examples(2_000), deadline=None)
@given(sequences, sequences, sequences, sequences, st.integers(1, 6))
def test_merge_activity_matches_the_one_loop_rule(
    local_views: Any, fleet_views: Any, local_buys: Any, fleet_buys: Any, cap: int
) -> None:
    from edgewise.core.activity import ActivityLimits, merge_activity

    limits = ActivityLimits(max_views=cap, max_cart=cap, max_purchases=cap)
    local = Activity(local_views, local_buys, local_buys, (("i9", 3),))
    fleet = Activity(fleet_views, fleet_buys, fleet_views, ())
    merged = merge_activity(local, fleet, limits)
    assert merged is not None
    assert merged.views == _union_reference(local_views, fleet_views, cap)
    assert merged.cart == _union_reference(local_buys, fleet_buys, cap)
    assert merged.purchases == _union_reference(local_buys, fleet_views, cap)
    assert merged.impressions == (("i9", 3),)


def _activity_doc_with_lists(activity: Activity) -> dict[str, Any]:
    """The activity document as first written: a list per pair."""
    return {
        "s": 1,
        "views": [list(v) for v in activity.views],
        "cart": [list(c) for c in activity.cart],
        "buy": [list(p) for p in activity.purchases],
        "imp": [list(i) for i in activity.impressions],
    }


@settings(max_examples=examples(500), deadline=None)
@given(sequences, sequences, sequences, sequences)
def test_activities_encode_to_the_same_bytes_as_with_a_list_per_pair(
    views: Any, cart: Any, buys: Any, impressions: Any
) -> None:
    from edgewise.core import records

    activity = Activity(views, cart, buys, impressions)
    doc = _activity_doc_with_lists(activity)
    doc["s"] = records.ACTIVITY_SCHEMA
    assert encode_activity(activity) == msgpack.packb(doc, use_bin_type=True)
    assert decode_activity(encode_activity(activity)) == activity
    profile = records.ProfileRecord("u1", 3, {"country": "DE"}, {"personalization": 1}, None, activity)
    encoded = records.encode_profile(profile)
    current = records._activity_doc
    records._activity_doc = lambda a: {**_activity_doc_with_lists(a), "s": records.ACTIVITY_SCHEMA}
    try:
        assert records.encode_profile(profile) == encoded  # profiles embed the same activity bytes
    finally:
        records._activity_doc = current
