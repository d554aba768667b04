"""The item placement ranked by one compiled call (core/_placement.pyx) against the Python reference,
`item_ranking.rank_items_reference`: the same items (ids, scores to the bit, reasons), strategy and
fallback reason on generated shoppers, requests and strategies over the synthetic catalog, with the int8
index, the half-precision one, both or neither, and with a partition of the catalog (the large catalogs'
scan); and
its mean of rows against NumPy's `mean(axis=0)`, bit for bit."""

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
from hypothesis.extra import numpy as hnp

from edgewise.core import _placement, item_ranking
from edgewise.core.decisions import PlacementRequest
from edgewise.core.item_ranking import (
    Scratch,
    Shopper,
    _scored,
    rank_items,
    rank_items_reference,
)
from edgewise.core.partition import build_partition
from edgewise.core.pipeline import _NO_FEATURES
from edgewise.core.records import Activity, ProfileRecord
from edgewise.core.segments import SegmentMemo
from edgewise.core.store import ReadView, Store
from edgewise.core.strategies import Diversity, Filter, ItemServe
from edgewise.core.version_state import VersionState, build_state
from edgewise.sync.bundle import load_bundle
from edgewise.sync.snapshot import apply_bundle

# --- the mean of rows ----------------------------------------------------------------------------------


@settings(max_examples=examples(200))
@given(
    matrix=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 12), st.integers(2, 40)),
        elements=st.floats(-1e6, 1e6, width=32) | st.sampled_from([0.0, -0.0, 1e-40, -3e-39]),
    ),
    data=st.data(),
)
def test_the_mean_of_rows_is_numpys_to_the_bit(matrix: np.ndarray, data: st.DataObject) -> None:
    rows = data.draw(st.lists(st.integers(0, matrix.shape[0] - 1), min_size=1, max_size=70))
    expected = np.zeros(matrix.shape[1], dtype=np.float32)
    np.mean(matrix[rows], axis=0, out=expected)
    got = np.full(matrix.shape[1], np.nan, dtype=np.float32)
    _placement.mean_rows(matrix, rows, got)
    assert got.view(np.uint32).tolist() == expected.view(np.uint32).tolist()


def test_the_mean_refuses_what_it_cannot_read() -> None:
    matrix = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ValueError):
        _placement.mean_rows(matrix, [], np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError):
        _placement.mean_rows(matrix, [3], np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError):
        _placement.mean_rows(matrix, [0], np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError):  # one column: NumPy sums it pairwise
        _placement.mean_rows(matrix[:, :1].copy(), [0], np.zeros(1, dtype=np.float32))


# --- whole placements on the synthetic catalog ---------------------------------------------------------


@pytest.fixture(scope="module")
def version(
    tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path
) -> Iterator[tuple[ReadView, VersionState]]:
    store = Store(tmp_path_factory.mktemp("placement"), map_size=1 << 30)
    apply_bundle(store, load_bundle(bundle_dir))
    try:
        with store.read() as view:
            yield view, build_state(view)
    finally:
        store.close()


@pytest.fixture(scope="module")
def both(version: tuple[ReadView, VersionState]) -> tuple[ReadView, VersionState]:
    """The same version built after the half scan was chosen: it has both scan copies."""
    view, _ = version
    previous = _placement.set_scan("half")
    try:
        return view, build_state(view)
    finally:
        _placement.set_scan(previous)


def test_the_half_precision_copy_is_made_only_for_the_half_scan(
    version: tuple[ReadView, VersionState], both: tuple[ReadView, VersionState]
) -> None:
    _, state = version
    assert _placement.scan() == "int8"
    assert state.int8_embeddings is not None and state.half_embeddings is None
    _, chosen = both
    assert chosen.int8_embeddings is not None and chosen.half_embeddings is not None
    assert chosen.half_embeddings.rows == chosen.int8_embeddings.rows == state.n_items


UNKNOWN = "no-such-item"


@st.composite
def _items(draw: st.DrawFn, ids: tuple[str, ...], max_size: int = 6) -> tuple[str, ...]:
    return tuple(draw(st.lists(st.sampled_from((*ids[:40], UNKNOWN)), max_size=max_size)))


@st.composite
def _case(draw: st.DrawFn, state: VersionState) -> dict[str, Any]:
    ids = state.item_ids
    pairs = st.lists(st.tuples(st.sampled_from((*ids[:40], UNKNOWN)), st.integers(0, 12)), max_size=8)
    activity = draw(
        st.none()
        | st.builds(
            Activity,
            views=pairs.map(tuple),
            cart=st.just(()),
            purchases=pairs.map(tuple),
            impressions=pairs.map(tuple),
        )
    )
    embedding = draw(
        st.none()
        | st.just(b"")
        | st.just(b"\x00\x00\x80\x3f" * (state.dim - 1))  # a vector of another model
        | hnp.arrays(np.float32, state.dim, elements=st.floats(-2, 2, width=32)).map(lambda a: a.tobytes())
    )
    profile = None
    if draw(st.booleans()):
        profile = ProfileRecord("u1", 1, {}, {"personalization": 1}, embedding or None, None)
    allowed = draw(st.booleans())
    tags = sorted(set().union(*state.tags[:20])) or ["none"]
    filters = [
        Filter("flag", {"flag": "sale"}),
        Filter("category", {"category": state.categories[0].split("/")[0]}),
        Filter("tag", {"tag": tags[0]}),
        Filter("price", {"min": "10", "max": "120"}),
        Filter("price", {"max": "60"}),
        Filter("region", {"country": "DE"}),
        Filter("exclude_viewed"),
        Filter("exclude_purchased"),
    ]
    serve = ItemServe(
        filters=tuple(draw(st.lists(st.sampled_from(filters), max_size=2))),
        strategy=draw(st.sampled_from(["personalized", "similar", "popular", "trending"])),
        method=draw(st.sampled_from(["auto", "embedding", "cooccurrence"])),
        scope=draw(st.sampled_from(["global", "country", "segment"])),
        half_life_days=draw(st.sampled_from([1.0, 7.0])),
        exclude_viewed=draw(st.booleans()),
        exclude_purchased=draw(st.booleans()),
        max_impressions=draw(st.sampled_from([0, 1, 3, 8])),
    )
    default = ItemServe(
        strategy=draw(st.sampled_from(["popular", "trending"])),
        scope=draw(st.sampled_from(["global", "country"])),
    )
    ask = PlacementRequest(
        "p",
        candidate_ids=draw(_items(ids, 12)) if draw(st.integers(0, 4)) == 0 else (),
        seed_item_ids=draw(_items(ids, 3)),
        exclude_ids=draw(_items(ids)),
    )
    return {
        "ask": ask,
        "count": draw(st.integers(0, 20)),
        "serve": serve,
        "default": default,
        "shopper": (
            allowed,
            profile is not None,
            profile if allowed else None,
            activity if allowed else None,
        ),
        "country": draw(st.sampled_from(["", "DE", "fr", "US", "ZZ"])),
        "now_ms": draw(st.sampled_from([0, 1_700_000_000_000, 1_800_000_000_000])),
    }


def _shopper(state: VersionState, fields: tuple[Any, ...]) -> Shopper:
    return Shopper(*fields, SegmentMemo(state.rules.segments, _NO_FEATURES))  # type: ignore[arg-type]


def _both(view: ReadView, state: VersionState, case: dict[str, Any]) -> None:
    scratch = Scratch()
    scratch.ensure(state.n_items, case["count"], state.dim)
    kwargs = dict(case, request_filter=None, why=None)
    kwargs["shopper"] = _shopper(state, case["shopper"])
    got = rank_items(view, state, scratch, **kwargs)
    kwargs["shopper"] = _shopper(state, case["shopper"])
    expected = rank_items_reference(view, state, scratch, **kwargs)
    assert (got.strategy, got.fallback) == (expected.strategy, expected.fallback)
    assert got.items == expected.items
    assert [np.float32(i.score).view(np.uint32) for i in got.items] == [
        np.float32(i.score).view(np.uint32) for i in expected.items
    ]


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_compiled_placement_equals_the_reference(
    version: tuple[ReadView, VersionState], data: st.DataObject
) -> None:
    view, state = version
    _both(view, state, data.draw(_case(state)))


@settings(max_examples=examples(100), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_with_the_half_precision_index_alone_too(
    both: tuple[ReadView, VersionState], data: st.DataObject
) -> None:
    """A version whose int8 copy could not be made (values it cannot scale) scans the half copy."""
    view, state = both
    alone = dataclasses.replace(state, int8_embeddings=None)
    _both(view, alone, data.draw(_case(alone)))


@settings(max_examples=examples(100), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_without_either_scan_copy_too(version: tuple[ReadView, VersionState], data: st.DataObject) -> None:
    view, state = version
    plain = dataclasses.replace(state, half_embeddings=None, int8_embeddings=None)
    _both(view, plain, data.draw(_case(plain)))


@settings(max_examples=examples(100), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_with_the_half_precision_scan_chosen_too(
    both: tuple[ReadView, VersionState], data: st.DataObject
) -> None:
    view, state = both
    assert state.int8_embeddings is not None and state.half_embeddings is not None
    case = data.draw(_case(state))
    previous = _placement.set_scan("half")
    try:
        _both(view, state, case)
        half = _ranked(view, state, case)
    finally:
        _placement.set_scan(previous)
    _placement.set_scan("int8")
    try:
        small = _ranked(view, state, case)
    finally:
        _placement.set_scan(previous)
    # the two scans: the same items and scores, bit for bit
    assert small == half


def _ranked(view: ReadView, state: VersionState, case: dict[str, Any]) -> list[tuple[str, int]]:
    scratch = Scratch()
    scratch.ensure(state.n_items, case["count"], state.dim)
    kwargs = dict(case, request_filter=None, why=None)
    kwargs["shopper"] = _shopper(state, case["shopper"])
    ranked = rank_items(view, state, scratch, **kwargs)
    return [(i.id, int(np.float32(i.score).view(np.uint32))) for i in ranked.items]


def test_the_scan_choice_is_checked() -> None:
    with pytest.raises(ValueError, match="scan must be 'int8' or 'half'"):
        _placement.set_scan("float")
    assert _placement.scan() in ("int8", "half")


@settings(max_examples=examples(100), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_with_a_partition_of_the_catalog_too(
    version: tuple[ReadView, VersionState], data: st.DataObject
) -> None:
    view, state = version
    assert state.embeddings is not None
    partitioned = dataclasses.replace(state, partition=build_partition(state.embeddings))
    assert partitioned.partition is not None and partitioned.partition.lists > 1
    _both(view, partitioned, data.draw(_case(partitioned)))


def test_the_common_placements_take_the_compiled_path(version: tuple[ReadView, VersionState]) -> None:
    view, state = version
    scratch = Scratch()
    scratch.ensure(state.n_items, 10, state.dim)
    placer = _placement.Placer(state, scratch)
    assert placer.usable
    profile = ProfileRecord("u1", 1, {}, {}, np.ones(state.dim, dtype="<f4").tobytes(), None)
    shopper = Shopper(
        True, True, profile, Activity(views=((state.item_ids[3], 1),)), SegmentMemo({}, _NO_FEATURES)
    )
    popular = ItemServe("popular", scope="country")
    for serve in (ItemServe("personalized", max_impressions=8), ItemServe("similar"), popular):
        placed = _placement.place(
            placer,
            view,
            state.availability("DE"),
            PlacementRequest("p"),
            10,
            serve,
            popular,
            shopper,
            "DE",
            0,
            _scored,
        )
        assert placed is not None
        items, strategy, _ = placed
        assert len(items) == 10 and strategy in ("embedding", "similar", "popular")
    # what it leaves to the reference: diversity (and filters, boosts, promotions, explanations)
    diverse = ItemServe("personalized", diversity=Diversity(max_per_category=2, depth=1))
    assert (
        _placement.place(
            placer,
            view,
            state.availability("DE"),
            PlacementRequest("p"),
            10,
            diverse,
            popular,
            shopper,
            "DE",
            0,
            _scored,
        )
        is None
    )


def test_a_strategys_own_filters_are_applied_once_per_version(
    version: tuple[ReadView, VersionState], monkeypatch: pytest.MonkeyPatch
) -> None:
    view, state = version
    scratch = Scratch()
    scratch.ensure(state.n_items, 10, state.dim)
    shopper = _shopper(state, (False, False, None, None))
    sale = ItemServe("popular", filters=(Filter("flag", {"flag": "sale"}),))
    kwargs: dict[str, Any] = dict(
        ask=PlacementRequest("p"), count=10, serve=sale, default=sale, request_filter=None, shopper=shopper
    )
    expected = rank_items_reference(view, state, scratch, **kwargs, country="DE", now_ms=0, why=None)

    def reference(*args: Any, **kw: Any) -> Any:
        raise AssertionError("ranked in Python")

    monkeypatch.setattr(item_ranking, "rank_items_reference", reference)
    for _ in range(2):  # the second call reuses the version's filtered mask
        assert rank_items(view, state, scratch, **kwargs, country="DE", now_ms=0, why=None) == expected
    assert all(state.flags[state.rows[i.id]].get("sale") for i in expected.items)
    # a filter on the shopper's history is the reference's
    viewed = dataclasses.replace(sale, filters=(Filter("exclude_viewed"),))
    with pytest.raises(AssertionError, match="ranked in Python"):
        rank_items(view, state, scratch, **{**kwargs, "serve": viewed}, country="DE", now_ms=0, why=None)
