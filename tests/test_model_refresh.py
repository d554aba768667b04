"""The pure model refreshes (core/model_refresh.py) against straightforward Python references."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from edgewise.core.model_refresh import (
    DAY_MS,
    NEIGHBOR_SCORES,
    NEIGHBORS,
    NEW_ITEM_FLAG,
    POPULARITY,
    POPULARITY_WEIGHTS,
    ModelState,
    NeighborsRefresh,
    NewItems,
    PopularityRefresh,
    RefreshEvent,
    TrendingRefresh,
    clock,
    cooccurrence_neighbors,
    decayed_popularity,
    new_item_record,
    shifted_daily_counts,
)

HL = 7 * DAY_MS
T0 = 1_764_000_000_000


def _rows(n: int) -> dict[str, int]:
    return {f"i{r}": r for r in range(n)}


def test_decayed_popularity_matches_a_loop() -> None:
    rng = np.random.default_rng(3)
    current = rng.random(20).astype(np.float32)
    rows = rng.integers(0, 20, 200)
    weights = rng.choice([1.0, 3.0, 5.0], 200)
    ts = T0 + rng.integers(0, 10 * DAY_MS, 200)
    old, as_of = T0 - DAY_MS, int(ts.max())
    got = decayed_popularity(current, rows, weights, ts, old_ms=old, as_of_ms=as_of, half_life_ms=HL)
    want = [float(v) * 0.5 ** ((as_of - old) / HL) for v in current]
    for r, w, t in zip(rows, weights, ts, strict=True):
        want[int(r)] += float(w) * 0.5 ** ((as_of - int(t)) / HL)
    np.testing.assert_allclose(got, np.array(want, dtype=np.float32), rtol=1e-6)


def test_popularity_refresh_counts_each_scope_and_keeps_its_clock() -> None:
    n = 4
    zeros = np.zeros(n, dtype=np.float32)
    state = ModelState(
        rows=_rows(n),
        arrays={
            POPULARITY: np.ones(n, dtype=np.float32),
            "item_popularity@country:DE": zeros,
            "item_popularity@segment:vip": zeros,
        },
        manifest={"bundle_version": 3},
    )
    events = [
        RefreshEvent("view", "u1", "i0", T0, "de", ("vip",)),
        RefreshEvent("purchase", "u2", "i1", T0, "FR", ()),
        RefreshEvent("impression", "u2", "i2", T0),  # not an interest: no weight
        RefreshEvent("view", "u3", "i404", T0),  # no row: left to the new items
    ]
    model = PopularityRefresh(half_life_ms=HL)
    result = model.refresh(state, events)
    np.testing.assert_allclose(
        result.arrays[POPULARITY], [2.0, 1.0 + POPULARITY_WEIGHTS["purchase"], 1.0, 1.0]
    )
    np.testing.assert_allclose(result.arrays["item_popularity@country:DE"], [1.0, 0, 0, 0])
    np.testing.assert_allclose(result.arrays["item_popularity@segment:vip"], [1.0, 0, 0, 0])
    assert clock(result.manifest, "popularity") == T0  # first refresh: the bundle's values not decayed
    # a week later: everything halves, then the new view counts in full
    later = ModelState(state.rows, dict(result.arrays), {**state.manifest, **result.manifest})
    again = model.refresh(later, [RefreshEvent("view", "u1", "i3", T0 + HL)])
    np.testing.assert_allclose(again.arrays[POPULARITY], [1.0, 3.0, 0.5, 1.5])
    assert model.refresh(later, []).arrays == {}


def _daily_reference(
    counts: np.ndarray, end_day: int, events: list[tuple[int, int]]
) -> tuple[np.ndarray, int]:
    width = counts.shape[1]
    by_day: Counter[tuple[int, int]] = Counter()
    for r in range(counts.shape[0]):
        for c in range(width):
            by_day[(r, end_day - (width - 1 - c))] += float(counts[r, c])
    for r, day in events:
        by_day[(r, day)] += 1
    new_end = max([end_day, *(d for _, d in events)])
    out = np.zeros_like(counts, dtype=np.float32)
    for (r, day), value in by_day.items():
        c = width - 1 - (new_end - day)
        if 0 <= c < width:
            out[r, c] = value
    return out, new_end


@pytest.mark.parametrize("shift", [0, 1, 3, 10])
def test_shifted_daily_counts_matches_a_dictionary_of_days(shift: int) -> None:
    rng = np.random.default_rng(shift)
    counts = rng.integers(0, 5, (6, 5)).astype(np.float32)
    end = 20_000
    events = [
        (int(r), end + int(d))
        for r, d in zip(rng.integers(0, 6, 40), rng.integers(-7, shift + 1, 40), strict=True)
    ]
    rows = np.array([r for r, _ in events], dtype=np.int64)
    days = np.array([d for _, d in events], dtype=np.int64)
    got, got_end = shifted_daily_counts(counts, end, rows, days)
    want, want_end = _daily_reference(counts, end, events)
    assert got_end == want_end
    np.testing.assert_array_equal(got, want)


def test_trending_refresh_moves_the_manifest_day() -> None:
    state = ModelState(rows=_rows(3), arrays={}, manifest={})
    day = T0 // DAY_MS
    events = [RefreshEvent("view", "u", "i1", T0), RefreshEvent("click", "u", "i1", T0 - DAY_MS)]
    result = TrendingRefresh(days=4).refresh(state, [*events, RefreshEvent("purchase", "u", "i2", T0)])
    counts = result.arrays["item_daily_counts"]
    assert counts.shape == (3, 4)
    np.testing.assert_array_equal(counts[1], [0, 0, 1, 1])
    assert counts[2].sum() == 0  # purchases are not views
    assert result.manifest["daily_counts_end_ms"] == day * DAY_MS


def _neighbors_reference(
    baskets: list[list[int]], n: int, k: int, support: int
) -> list[list[tuple[int, float]]]:
    per_item: Counter[int] = Counter()
    pairs: Counter[tuple[int, int]] = Counter()
    for basket in baskets:
        items = sorted(set(basket))
        per_item.update(items)
        for a, b in itertools.combinations(items, 2):
            pairs[(a, b)] += 1
    lists: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for (a, b), c in pairs.items():
        if c >= support:
            s = c / math.sqrt(per_item[a] * per_item[b])
            lists[a].append((b, s))
            lists[b].append((a, s))
    return [sorted(row, key=lambda e: (-e[1], e[0]))[:k] for row in lists]


@pytest.mark.parametrize(("k", "support"), [(3, 1), (2, 2), (10, 3)])
def test_cooccurrence_neighbors_match_a_pair_count(k: int, support: int) -> None:
    rng = np.random.default_rng(k * 10 + support)
    n = 15
    baskets = [sorted({int(x) for x in rng.integers(0, n, rng.integers(1, 7))}) for _ in range(80)]
    nb, sc, found = cooccurrence_neighbors([np.array(b, dtype=np.int64) for b in baskets], n, k, support)
    want = _neighbors_reference(baskets, n, k, support)
    for row in range(n):
        got = [(int(a), float(s)) for a, s in zip(nb[row], sc[row], strict=True) if a >= 0]
        assert [a for a, _ in got] == [a for a, _ in want[row]], row
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want[row]], rtol=1e-6)
        assert all(a == -1 and s == 0 for a, s in zip(nb[row][len(got) :], sc[row][len(got) :], strict=True))
        assert found[row] == bool(want[row])


def test_neighbors_refresh_keeps_rows_the_window_says_nothing_about() -> None:
    n = 5
    current_nb = np.array([[4, -1]] * n, dtype=np.int32)
    current_nb[4] = [3, -1]
    current_sc = np.where(current_nb >= 0, 0.5, 0).astype(np.float32)
    state = ModelState(_rows(n), {NEIGHBORS: current_nb, NEIGHBOR_SCORES: current_sc}, {})
    events = [
        RefreshEvent("view", u, i, T0 + j)
        for j, (u, i) in enumerate([("a", "i0"), ("a", "i1"), ("b", "i0"), ("b", "i1")])
    ]
    result = NeighborsRefresh(window_ms=DAY_MS, k=7, min_support=2).refresh(state, events)
    nb = result.arrays[NEIGHBORS]
    assert nb.shape == (n, 2)  # the current arrays' k
    assert nb[0].tolist() == [1, -1] and nb[1].tolist() == [0, -1]
    assert nb[2].tolist() == [4, -1] and nb[4].tolist() == [3, -1]  # kept
    np.testing.assert_allclose(result.arrays[NEIGHBOR_SCORES][0], [1.0, 0.0])
    assert NeighborsRefresh(window_ms=DAY_MS, k=7, min_support=3).refresh(state, events).arrays == {}


def test_new_items_need_enough_distinct_units() -> None:
    seen = NewItems(min_units=2)
    known = {"i0"}
    assert (
        seen.observe(
            [RefreshEvent("view", "u1", "new1", T0), RefreshEvent("view", "u1", "new1", T0 + 1)], known
        )
        == {}
    )
    assert seen.observe([RefreshEvent("impression", "u2", "new1", T0)], known) == {}  # not an interest
    assert seen.observe([RefreshEvent("view", "u1", "i0", T0)], known) == {}
    assert seen.observe([RefreshEvent("purchase", "u2", "new1", T0 + 5)], known) == {"new1": T0}
    assert seen.pending() == 0
    record = new_item_record("new1", T0)
    assert record["regions"] == ["*"] and record["flags"] == {NEW_ITEM_FLAG: True}
    assert record["launch_date"] == "2025-11-24"


def test_new_items_forget_the_oldest_past_their_capacity() -> None:
    seen = NewItems(min_units=2, capacity=2)
    seen.observe([RefreshEvent("view", "u1", f"n{i}", T0) for i in range(3)], set())
    assert seen.pending() == 2
    assert seen.observe([RefreshEvent("view", "u2", "n0", T0)], set()) == {}  # n0 was forgotten
    assert seen.observe([RefreshEvent("view", "u2", "n2", T0)], set()) == {"n2": T0}
