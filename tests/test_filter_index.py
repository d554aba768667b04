"""The per-version filter index (edgewise.core.filter_index): a filter value costs a lookup, and the
masks it gives are the ones the old per-value Python passes over the items built (kept here, verbatim
in what they compute, as the reference)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from edgewise.core.filter_index import build_filter_index, keep_rows
from edgewise.core.item_ranking import Shopper, apply_filter
from edgewise.core.segments import SegmentMemo
from edgewise.core.store import Store
from edgewise.core.strategies import Filter
from edgewise.core.version_state import VersionState, build_state
from edgewise.sync.bundle import load_bundle
from edgewise.sync.snapshot import apply_bundle

# --- the reference: the masks as the code before the index built them (a Python pass per value) -------


def old_category_mask(categories: Sequence[str], prefix: str) -> NDArray[np.uint8]:
    stem = prefix.rstrip("/")
    return np.fromiter(
        (c == stem or c.startswith(stem + "/") for c in categories), dtype=np.uint8, count=len(categories)
    )


def old_tag_mask(tags: Sequence[frozenset[str]], tag: str) -> NDArray[np.uint8]:
    return np.fromiter((tag in t for t in tags), dtype=np.uint8, count=len(tags))


def old_flag_mask(flags: Sequence[Mapping[str, Any]], flag: str, value: str = "") -> NDArray[np.uint8]:
    if value:
        return np.fromiter(
            (str(f.get(flag, "")).lower() == value.lower() for f in flags), dtype=np.uint8, count=len(flags)
        )
    return np.fromiter((bool(f.get(flag)) for f in flags), dtype=np.uint8, count=len(flags))


def mask_of(rows: NDArray[np.int32], n: int) -> NDArray[np.uint8]:
    mask = np.ones(n, dtype=np.uint8)
    keep_rows(mask, rows)
    return mask


# --- arbitrary catalogs ----------------------------------------------------------------------------------

# Few letters and the separators, so that values collide, nest and sort next to each other ("a/b",
# "a/b/", "a-b", "a0", "A"), plus a code point above the BMP and NUL.
_TEXT = st.text(alphabet="ab/-0A\x00\U0001f600İ", max_size=6)
_FLAG_VALUE = st.one_of(
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    _TEXT,
    st.none(),
    st.lists(st.integers(0, 2), max_size=2),
)
_ITEM = st.tuples(
    _TEXT,  # category
    st.frozensets(_TEXT, max_size=3),  # tags
    st.dictionaries(st.sampled_from(["sale", "new", "Sale", "x/y", ""]), _FLAG_VALUE, max_size=3),
)


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(_ITEM, max_size=40), probes=st.lists(_TEXT, min_size=1, max_size=8))
def test_index_masks_equal_the_python_masks(
    items: list[tuple[str, frozenset[str], dict[str, Any]]], probes: list[str]
) -> None:
    """For every category, tag and flag (with and without a value) the catalog has, each with trailing
    slashes and case variants, and for arbitrary other values: the index's mask is the old one."""
    categories = [c for c, _, _ in items]
    tags = [t for _, t, _ in items]
    flags = [f for _, _, f in items]
    index = build_filter_index(categories, tags, flags)
    n = len(items)
    prefixes = {p for c in categories for p in _prefixes(c)} | set(probes)
    for prefix in prefixes | {p + "/" for p in prefixes} | {p + "//" for p in prefixes}:
        np.testing.assert_array_equal(
            mask_of(index.category_rows(prefix), n), old_category_mask(categories, prefix), err_msg=prefix
        )
    for tag in {t for ts in tags for t in ts} | set(probes):
        np.testing.assert_array_equal(mask_of(index.tag_rows(tag), n), old_tag_mask(tags, tag), err_msg=tag)
    names = {name for f in flags for name in f} | set(probes)
    values = {str(v) for f in flags for v in f.values()} | set(probes)
    values |= {v.upper() for v in values} | {v.lower() for v in values}
    for name in names:
        np.testing.assert_array_equal(mask_of(index.flag_rows(name), n), old_flag_mask(flags, name))
        for value in values:
            np.testing.assert_array_equal(
                mask_of(index.flag_rows(name, value), n),
                old_flag_mask(flags, name, value),
                err_msg=f"{name}={value}",
            )


def _prefixes(category: str) -> Iterator[str]:
    parts = category.split("/")
    for depth in range(len(parts) + 1):
        yield "/".join(parts[:depth])


def test_keep_rows_clears_the_rest_and_keeps_what_was_cleared() -> None:
    mask = np.array([1, 0, 1, 1, 0, 1], dtype=np.uint8)
    keep_rows(mask, np.array([1, 2, 5], dtype=np.int32))
    assert mask.tolist() == [0, 0, 1, 0, 0, 1]
    keep_rows(mask, np.zeros(0, dtype=np.int32))
    assert mask.tolist() == [0] * 6


# --- the synthetic catalog through apply_filter ----------------------------------------------------------


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[VersionState]:
    """A version state of its own (tests here may replace its per-item fields)."""
    store = Store(tmp_path_factory.mktemp("filters"), map_size=1 << 30)
    apply_bundle(store, load_bundle(bundle_dir))
    with store.read() as view:
        yield build_state(view)
    store.close()


def _filtered(state: VersionState, f: Filter) -> NDArray[np.uint8]:
    mask = np.ones(state.n_items, dtype=np.uint8)
    shopper = Shopper(False, False, None, None, SegmentMemo(state.rules.segments, None))  # type: ignore[arg-type]
    apply_filter(state, f, mask, shopper)
    return mask


def test_every_filter_kind_and_value_of_the_catalog_matches_the_python_masks(state: VersionState) -> None:
    """Every value the synthetic catalog has, for every filter kind, plus values it does not have."""
    n = state.n_items
    categories = {p for c in state.categories for p in _prefixes(c)}
    for prefix in categories | {p + "/" for p in categories} | {"no-such", "sports/no-such", "SPORTS"}:
        want = old_category_mask(state.categories, prefix)
        np.testing.assert_array_equal(
            _filtered(state, Filter("category", {"category": prefix})), want, prefix
        )
    for tag in {t for ts in state.tags for t in ts} | {"no-such-tag"}:
        want = old_tag_mask(state.tags, tag)
        np.testing.assert_array_equal(_filtered(state, Filter("tag", {"tag": tag})), want, tag)
    names = {name for f in state.flags for name in f} | {"no-such-flag"}
    values = {str(v) for f in state.flags for v in f.values()} | {"TRUE", "no-such-value"}
    assert {"sale", "new"} <= names
    for name in names:
        want = old_flag_mask(state.flags, name)
        np.testing.assert_array_equal(_filtered(state, Filter("flag", {"flag": name})), want, name)
        for value in values:
            want = old_flag_mask(state.flags, name, value)
            got = _filtered(state, Filter("flag", {"flag": name, "value": value}))
            np.testing.assert_array_equal(got, want, f"{name}={value}")
    for country in [*state.regions, "de", "XX"]:
        want = np.maximum(state.everywhere, state.regions.get(country.upper(), state.everywhere))
        np.testing.assert_array_equal(_filtered(state, Filter("region", {"country": country})), want, country)
    for lo, hi in (("10", ""), ("", "50"), ("20", "80"), ("1e9", "")):
        want = (
            (state.prices >= np.float32(lo or "-inf")) & (state.prices <= np.float32(hi or "inf"))
        ).astype(np.uint8)
        np.testing.assert_array_equal(_filtered(state, Filter("price", {"min": lo, "max": hi})), want)
    assert n > 0


class _NoPass(tuple):  # type: ignore[type-arg]
    """A per-item sequence that refuses a pass over it (indexing a row stays allowed)."""

    def __iter__(self) -> Iterator[Any]:
        raise AssertionError("a filter value made a pass over every item")


def test_a_new_filter_value_costs_a_lookup_not_a_pass_over_the_items(state: VersionState) -> None:
    """A value a caller chooses must not make the worker walk the catalog in Python: on a 100k-item
    catalog that was ~100 ms per new value (issue 16, item 6)."""
    saved = state.categories, state.tags, state.flags
    state.categories, state.tags, state.flags = _NoPass(saved[0]), _NoPass(saved[1]), _NoPass(saved[2])
    try:
        for n in range(20):
            _filtered(state, Filter("category", {"category": f"sports/new-{n}"}))
            _filtered(state, Filter("tag", {"tag": f"tag-{n}"}))
            _filtered(state, Filter("flag", {"flag": "sale", "value": f"v{n}"}))
            _filtered(state, Filter("flag", {"flag": f"flag-{n}"}))
    finally:
        state.categories, state.tags, state.flags = saved
