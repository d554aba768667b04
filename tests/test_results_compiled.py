"""The objects made in C (core/_results.pyx): item results against the Python reference in
core/item_ranking.py (equal objects, each a real, independent `ItemResult`: mutable, collectable), and
`filled` against the dataclasses' constructors (frozen ones stay frozen)."""

from __future__ import annotations

import dataclasses
import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgewise.core._results import filled, item_results
from edgewise.core.decisions import Context, DecideRequest, ItemResult, PlacementRequest
from edgewise.core.item_ranking import _item_results_py

IDS = tuple(f"item-{i}" for i in range(50))


@given(
    rows=st.lists(st.integers(0, len(IDS) - 1), max_size=30),
    data=st.data(),
    reason=st.sampled_from(["embedding", "popular", "similar", ""]),
)
def test_the_compiled_results_equal_the_reference(rows: list[int], data: st.DataObject, reason: str) -> None:
    values = data.draw(st.lists(st.floats(allow_nan=False), min_size=len(rows), max_size=len(rows)))
    made = item_results(ItemResult, IDS, rows, values, reason)
    assert made == _item_results_py(ItemResult, IDS, rows, values, reason)
    assert all(type(item) is ItemResult and item.promoted is False for item in made)


def test_the_objects_are_ordinary_ones() -> None:
    made = item_results(ItemResult, IDS, [3, 1], [0.5, 0.25], "popular")
    made[0].score = 9.0
    assert made[1].score == 0.25 and made[0] == ItemResult("item-3", 9.0, "popular")
    assert gc.is_tracked(made[0]) and "item-3" in gc.get_referents(made[0])
    del made
    gc.collect()


def test_a_class_of_another_shape_or_lengths_that_differ_are_refused() -> None:
    class Other:
        __slots__ = ("id", "score")

    with pytest.raises(TypeError):
        item_results(Other, IDS, [1], [0.5], "x")
    with pytest.raises(ValueError):
        item_results(ItemResult, IDS, [1, 2], [0.5], "x")


def test_filled_makes_what_the_constructor_makes_frozen_classes_too() -> None:
    context = filled(Context, ("web", "", "", "DE", "", "", "", "", "", "", {"a": "b"}))
    assert context == Context(channel="web", country="DE", attributes={"a": "b"})
    ask = filled(PlacementRequest, ("home", 10, (), ("i1",), (), "", {}))
    assert ask == PlacementRequest("home", 10, seed_item_ids=("i1",))
    request = filled(DecideRequest, ("u1", "", context, frozenset({"x"}), (ask,), False, 7))
    assert request == DecideRequest("u1", "", context, frozenset({"x"}), (ask,), False, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.user_id = "u2"  # type: ignore[misc]
    assert gc.is_tracked(request) and context in gc.get_referents(request)


def test_filled_refuses_a_wrong_count_or_a_class_it_cannot_fill() -> None:
    with pytest.raises(TypeError, match="fields"):
        filled(PlacementRequest, ("home",))

    @dataclasses.dataclass(slots=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            assert self.value > 0

    with pytest.raises(TypeError, match="cannot make"):
        filled(Checked, (0,))
