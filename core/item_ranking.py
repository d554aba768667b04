"""Ranking items for one placement: candidate mask, strategy scores, Cython top-k, post-processing.

Candidates are a uint8 mask over item rows (availability in the request's country, filters, rerank
candidates, exclusions), built with NumPy into per-thread scratch buffers. Scores come from the
strategy: embedding dot products (the int8 scan with exact rescoring, `topk_int8_into`, or the
half-precision one, `topk_half_into`, as the process chose: `_placement.set_scan`; for large catalogs
the same scan over the lists of a partition nearest the query, `topk_partition_into`),
co-purchase neighbors (the seeds' rows merged and ranked in the kernel), popularity (global, per
country, per segment) and trending (daily counts with exponential time decay), both ranked by walking
a per-version order, the cart, or items due for replenishment. Boosts add a per-item vector; pinned
promotions take a share of the slots; a diversity cap and rotation (items shown N times without a
click sink) reorder the fetched top-k. Python loops touch only the caller's own lists, seeds, and the
fetched results (a few times k).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core._placement import Placer, place, scan
from edgewise.core._results import item_results
from edgewise.core.decisions import (
    FallbackReason,
    ItemExplanation,
    ItemResult,
    PlacementExplanation,
    PlacementRequest,
)
from edgewise.core.filter_index import keep_rows
from edgewise.core.partition import PartitionScratch, topk_partition_into
from edgewise.core.records import Activity, ProfileRecord
from edgewise.core.scoring import (
    BLOCK,
    neighbor_candidates_into,
    score_order,
    topk_dot_into,
    topk_half_into,
    topk_int8_into,
    topk_pairs_into,
    topk_scores_into,
    topk_sorted_into,
)
from edgewise.core.segments import SegmentMemo
from edgewise.core.store import ReadView
from edgewise.core.strategies import Filter, ItemServe
from edgewise.core.version_state import POPULARITY_PREFIX, VersionState, read_only_copy

__all__ = ["Ranked", "Scratch", "Shopper", "rank_items", "rank_items_reference"]

DAY_MS: Final = 86_400_000
SIMILAR_SEEDS_FROM_HISTORY: Final = 1  # without explicit seeds: neighbors of the last viewed item
REPLENISH_OVERDUE_FACTOR: Final = 3.0
_NEIGHBOR_ARRAYS: Final = frozenset({"item_neighbors", "item_neighbor_scores"})
_SORTED_WALK: Final = 2048  # rows of a precomputed order walked before falling back to a full scan
_FIRST_ROWS: Final = np.arange(64, dtype=np.int32)  # 0..63, sliced per request instead of np.arange
_FIRST_ROWS.flags.writeable = False
_NO_ROWS: Final[frozenset[int]] = frozenset()
# Filters that depend on the version only (not on the shopper): a strategy's own are applied once per
# version and country, to the base mask of the compiled placement (`_base_mask`).
_VERSION_FILTERS: Final = frozenset({"category", "price", "region", "flag", "tag"})


class Scratch(threading.local):
    """Per-thread buffers reused by every request of the thread (resized when a version needs more)."""

    def __init__(self) -> None:
        self.mask: NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
        self.padded: NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self.vec: NDArray[np.float32] = self.padded  # padded[:n_items]
        self.cand: NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self.pair_rows: NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self.pair_scores: NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self.slot: NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self.idx: NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self.scores: NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self.query: NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self.lists = PartitionScratch()
        self.rng = np.random.default_rng()
        self.placer: Placer | None = None  # typed views of these buffers and a version's arrays

    def ensure(self, n_items: int, k: int, dim: int) -> None:
        if self.mask.shape[0] != n_items or self.idx.shape[0] < k or self.query.shape[0] != dim:
            self.placer = None  # its views are of the buffers replaced below
        if self.mask.shape[0] != n_items:
            self.mask = np.zeros(n_items, dtype=np.uint8)
            padded = -(-n_items // BLOCK) * BLOCK  # topk_half_into scores whole blocks of 8
            self.padded = np.zeros(padded, dtype=np.float32)
            self.vec = self.padded[:n_items]
            self.cand = np.zeros(n_items, dtype=np.int32)
            self.pair_rows = np.zeros(n_items, dtype=np.int32)
            self.pair_scores = np.zeros(n_items, dtype=np.float32)
            self.slot = np.zeros(n_items, dtype=np.int32)  # all zero between calls
        if self.idx.shape[0] < k:
            self.idx = np.zeros(k, dtype=np.int32)
            self.scores = np.zeros(k, dtype=np.float32)
        if self.query.shape[0] != dim:
            self.query = np.zeros(dim, dtype=np.float32)


@dataclass(slots=True)
class Shopper:
    """What the decision may know about the user or session (all empty without consent)."""

    allowed: bool
    known: bool
    profile: ProfileRecord | None
    activity: Activity | None
    memo: SegmentMemo  # segments of this request, evaluated on first use
    _viewed_rows: NDArray[np.intp] | None = None  # viewed_rows, once per request
    _viewed_list: list[int] | None = None  # viewed_list, once per request

    def viewed_list(self, state: VersionState) -> list[int]:
        """Rows of the recently viewed items this version knows, oldest first (looked up once per
        request: every placement that excludes viewed items or averages them reuses it)."""
        rows = self._viewed_list
        if rows is None:
            views = self.activity.views if self.activity is not None else ()
            rows = self._viewed_list = _rows_of_pairs(state, views)
        return rows

    def viewed_rows(self, state: VersionState) -> NDArray[np.intp]:
        """`viewed_list` as an array (for NumPy's fancy indexing)."""
        rows = self._viewed_rows
        if rows is None:
            rows = self._viewed_rows = np.array(self.viewed_list(state), dtype=np.intp)
        return rows

    def scope_segment(self, state: VersionState) -> str:
        """The first matched segment (by id) that has its own popularity, or ""."""
        return next((s for s in state.segment_scopes if self.memo.matches(s)), "")


@dataclass(slots=True)
class Ranked:
    items: list[ItemResult]
    strategy: str
    fallback: FallbackReason


def miss_reason(shopper: Shopper) -> FallbackReason:
    if not shopper.allowed:
        return FallbackReason.NO_CONSENT
    return FallbackReason.COLD_START if shopper.known else FallbackReason.UNKNOWN_USER


def _rows(state: VersionState, item_ids: Sequence[str]) -> list[int]:
    get = state.rows.get  # one lookup per id
    return [r for i in item_ids if (r := get(i)) is not None]


def _rows_of_pairs(state: VersionState, pairs: Sequence[tuple[str, int]]) -> list[int]:
    """`_rows` of the items of (item, time) pairs, without building the list of items first."""
    get = state.rows.get
    return [r for i, _ in pairs if (r := get(i)) is not None]


def _drop(state: VersionState, item_ids: Sequence[str], mask: NDArray[np.uint8]) -> None:
    if item_ids:
        mask[_rows(state, item_ids)] = 0


def apply_filter(state: VersionState, f: Filter, mask: NDArray[np.uint8], shopper: Shopper | None) -> None:
    """Narrow the candidate `mask` by the filter `f`. A category, tag or flag filter keeps the rows the
    version's index gives its value (a lookup: whatever value a caller chooses, nothing is built or
    cached for it). `shopper`: None for the filters of the version alone (`_VERSION_FILTERS`)."""
    p = f.params
    if f.name == "category":
        keep_rows(mask, state.filters.category_rows(p["category"]))
    elif f.name == "price":
        if p.get("min", ""):
            mask[state.prices < np.float32(p["min"])] = 0
        if p.get("max", ""):
            mask[state.prices > np.float32(p["max"])] = 0
    elif f.name == "region":
        np.bitwise_and(mask, state.availability(p["country"]), out=mask)
    elif f.name == "flag":
        keep_rows(mask, state.filters.flag_rows(p["flag"], p.get("value", "")))
    elif f.name == "tag":
        keep_rows(mask, state.filters.tag_rows(p["tag"]))
    elif f.name == "exclude_purchased" and shopper is not None and shopper.activity is not None:
        if bought := _rows_of_pairs(state, shopper.activity.purchases):
            mask[bought] = 0
    elif f.name == "exclude_viewed" and shopper is not None and shopper.activity is not None:
        mask[shopper.viewed_rows(state)] = 0


Scored = tuple[NDArray[np.float32], NDArray[np.int32] | None]  # scores per row, rows best first (or None)


def _stored_scores(view: ReadView, state: VersionState, name: str) -> Scored | None:
    """The model array `name` as scores, with its rows by (score desc, row asc). A score vector (float32,
    one per item) is copied with its order once per version: the store's array, whose get touches
    every page, is read only then. Anything else is read from the store, without an order. None: the
    store has no such array."""
    scored: Scored | None = state.derived(("scored", name), lambda: _copy_scored(view.array(name), state))
    if scored is not None:
        return scored
    array = view.array(name)
    return None if array is None else (array, None)


def _copy_scored(array: NDArray[Any] | None, state: VersionState) -> Scored | None:
    if array is None or array.dtype != np.float32 or array.ndim != 1 or array.shape[0] != state.n_items:
        return None
    scores = read_only_copy(array)
    return scores, score_order(scores)


def _popularity(view: ReadView, state: VersionState, scope: str, shopper: Shopper, country: str) -> Scored:
    names = []
    segment = shopper.scope_segment(state) if scope == "segment" else ""
    if segment:
        names.append(f"segment:{segment}")
    if scope in ("segment", "country") and country:
        names.append(f"country:{country.upper()}")
    for name in names:
        if name in state.popularity_scopes:
            scored = _stored_scores(view, state, POPULARITY_PREFIX + name)
            if scored is not None:
                return scored
    scored = _stored_scores(view, state, "item_popularity")
    return scored if scored is not None else (np.zeros(state.n_items, dtype=np.float32), None)


def _trending(view: ReadView, state: VersionState, half_life_days: float, now_ms: int) -> Scored | None:
    end_ms = state.daily_counts_end_ms
    if not end_ms:
        return None
    today = now_ms // DAY_MS

    def build() -> Scored | None:
        # Read only when today's scores are not cached yet: the counts array is large, and py-lmdb
        # touches every page of a value it returns.
        counts = view.array("item_daily_counts")
        if counts is None or counts.ndim != 2:
            return None
        days = counts.shape[1]
        # Column d counts the day ending `days - d` days before the snapshot's end day.
        age = (today - end_ms // DAY_MS) + (days - 1 - np.arange(days, dtype=np.float64))
        weights = np.power(0.5, np.maximum(age, 0.0) / half_life_days).astype(np.float32)
        scores = np.ascontiguousarray(counts @ weights, dtype=np.float32)
        return scores, score_order(scores) if scores.shape[0] == state.n_items else None

    trending: Scored | None = state.derived(("trending", half_life_days, today), build)
    return trending


Candidates = tuple[NDArray[np.int32], NDArray[np.float32]]  # rows and their scores, unordered


def _neighbors(
    view: ReadView, state: VersionState, scratch: Scratch, seeds: Sequence[int], mask: NDArray[np.uint8]
) -> Candidates | None:
    """The seeds' precomputed neighbor lists (scores summed over seeds), restricted to the mask.

    Reads only the seeds' rows of the neighbor arrays: from the version's copies when it has them,
    else from their row chunks when the store has them (no scan, and no touch of every page of the
    2 x n x width arrays). The result is a pair of views into the thread's scratch buffers."""
    neighbors: NDArray[np.int32] | None = None
    weights: NDArray[np.float32] | None = None
    chunk_rows: NDArray[np.int32] | None = None  # with row chunks: the seeds' own rows 0..n-1, in order
    if state.neighbors is not None and state.neighbor_scores is not None:  # the version's copies
        neighbors, weights = state.neighbors, state.neighbor_scores
    elif state.chunked_models >= _NEIGHBOR_ARRAYS:
        neighbors = view.rows("item_neighbors", seeds)
        weights = view.rows("item_neighbor_scores", seeds)
        n = len(seeds)
        chunk_rows = _FIRST_ROWS[:n] if n <= _FIRST_ROWS.shape[0] else np.arange(n, dtype=np.int32)
    if neighbors is None or weights is None:
        neighbors = view.array("item_neighbors")
        weights = view.array("item_neighbor_scores")
        chunk_rows = None
    if neighbors is None or weights is None:
        return None
    found = neighbor_candidates_into(
        neighbors,
        weights,
        np.array(seeds, dtype=np.int32) if chunk_rows is None else chunk_rows,
        mask,
        scratch.slot,
        scratch.pair_rows,
        scratch.pair_scores,
    )
    return scratch.pair_rows[:found], scratch.pair_scores[:found]


def _replenish_due(state: VersionState, activity: Activity | None, now_ms: int) -> list[int]:
    if activity is None:
        return []
    due = []
    for item, ts in activity.purchases:
        row = state.rows.get(item)
        if row is None:
            continue
        days = state.flags[row].get("replenish_days")
        if isinstance(days, (int, float)) and days > 0:
            elapsed = now_ms - ts
            if days * DAY_MS <= elapsed <= REPLENISH_OVERDUE_FACTOR * days * DAY_MS:
                due.append(row)
    return due


def _embeddings(view: ReadView, state: VersionState) -> NDArray[np.float32] | None:
    """The item embeddings: the version's copy, else the store's matrix (zero-copy, this request only)."""
    return state.embeddings if state.embeddings is not None else view.array("item_embeddings")


def _user_query(
    state: VersionState,
    embeddings: NDArray[np.float32],
    shopper: Shopper,
    query: NDArray[np.float32],
    why: PlacementExplanation | None,
) -> tuple[NDArray[np.float32] | None, FallbackReason]:
    """The user's vector: the profile embedding, else the mean of recently viewed items."""
    profile = shopper.profile
    if profile is not None and profile.embedding:
        vector = np.frombuffer(profile.embedding, dtype="<f4")
        if vector.shape[0] != state.dim:
            return None, FallbackReason.MODEL_UNAVAILABLE
        np.copyto(query, vector)
        if why is not None:
            why.notes.append("user vector: profile embedding")
        return query, FallbackReason.NONE
    rows = shopper.viewed_rows(state)
    if rows.shape[0] >= max(1, state.rules.cold_start_min_views):
        np.mean(embeddings[rows], axis=0, out=query)
        if why is not None:
            why.notes.append(f"user vector: mean of {len(rows)} recently viewed item(s)")
        return query, FallbackReason.NONE
    return None, miss_reason(shopper)


def _scored(
    view: ReadView,
    state: VersionState,
    strategy: str,
    scope: str,
    half_life_days: float,
    shopper: Shopper,
    country: str,
    now_ms: int,
) -> Scored | None:
    """The scores (and order) of popularity or trending, for `_placement.place`."""
    if strategy == "trending":
        return _trending(view, state, half_life_days, now_ms)
    return _popularity(view, state, scope, shopper, country)


def _base_mask(state: VersionState, country: str, filters: tuple[Filter, ...]) -> NDArray[np.uint8] | None:
    """The items available in `country` that pass a strategy's `filters`, built once per version, country
    and filters (the strategies' filters come from the rules: a bounded set; a request's own filter is
    never cached). None: a filter depends on the shopper (the reference applies it)."""
    available = state.availability(country)
    if not filters:
        return available
    key = []
    for f in filters:
        if f.name not in _VERSION_FILTERS:
            return None
        key.append((f.name, tuple(sorted(f.params.items()))))
    region = country.upper() if country.upper() in state.regions else ""

    def build() -> NDArray[np.uint8]:
        mask = available.copy()
        for f in filters:
            apply_filter(state, f, mask, None)
        mask.flags.writeable = False
        return mask

    base: NDArray[np.uint8] = state.derived(("base_mask", region, tuple(key)), build)
    return base


def rank_items(
    view: ReadView,
    state: VersionState,
    scratch: Scratch,
    *,
    ask: PlacementRequest,
    count: int,
    serve: ItemServe,
    default: ItemServe,
    request_filter: Filter | None,
    shopper: Shopper,
    country: str,
    now_ms: int,
    why: PlacementExplanation | None,
) -> Ranked:
    """Rank up to `count` items for the placement `ask` with the strategy `serve`.

    `default` is the placement's default strategy, served (popularity or trending) when `serve` finds
    nothing to rank; `request_filter` is the request's own named filter, applied before `serve`'s; the
    items must be available in `country`; `now_ms` is the decision time (trending decay, replenishment);
    `why`, when given, collects the explanation. The keywords name what the caller passes (no object is
    built per call: this runs for every item placement of every Decide).

    The common placements (no explanation, filter, boost, promotion or diversity; see core/_placement.pyx)
    are ranked by one compiled call, `_placement.place`; the others, and whatever that call leaves, by
    `rank_items_reference`, which it is tested against.
    """
    base = _base_mask(state, country, serve.filters) if why is None and request_filter is None else None
    if base is not None:
        placer = scratch.placer
        if placer is None or placer.state is not state:
            placer = scratch.placer = Placer(state, scratch)
        placed = place(
            placer,
            view,
            base,
            ask,
            count,
            serve,
            default,
            shopper,
            country,
            now_ms,
            _scored,
        )
        if placed is not None:
            return Ranked(*placed)
    return rank_items_reference(
        view,
        state,
        scratch,
        ask=ask,
        count=count,
        serve=serve,
        default=default,
        request_filter=request_filter,
        shopper=shopper,
        country=country,
        now_ms=now_ms,
        why=why,
    )


def rank_items_reference(
    view: ReadView,
    state: VersionState,
    scratch: Scratch,
    *,
    ask: PlacementRequest,
    count: int,
    serve: ItemServe,
    default: ItemServe,
    request_filter: Filter | None,
    shopper: Shopper,
    country: str,
    now_ms: int,
    why: PlacementExplanation | None,
) -> Ranked:
    """`rank_items` in Python and NumPy: every case, and the reference of `_placement.place`."""
    mask = scratch.mask
    np.copyto(mask, state.availability(country))
    if request_filter is not None:
        apply_filter(state, request_filter, mask, shopper)
    for f in serve.filters:
        apply_filter(state, f, mask, shopper)
    if ask.candidate_ids:
        rows = _rows(state, ask.candidate_ids)
        keep = np.zeros_like(mask)
        keep[rows] = mask[rows]
        np.copyto(mask, keep)
        if why is not None and len(rows) < len(ask.candidate_ids):
            why.notes.append(f"ignored {len(ask.candidate_ids) - len(rows)} unknown candidate id(s)")
    _drop(state, ask.exclude_ids, mask)
    activity = shopper.activity
    if activity is not None and serve.exclude_viewed and activity.views:
        mask[shopper.viewed_rows(state)] = 0
        if why is not None:
            why.notes.append(f"excluded {len(activity.views)} recently viewed item(s)")
    if (
        activity is not None
        and serve.exclude_purchased
        and (bought := _rows_of_pairs(state, activity.purchases))
    ):
        mask[bought] = 0

    embeddings: NDArray[np.float32] | None = None  # read only by the strategies that use it
    query: NDArray[np.float32] | None = None
    scores: NDArray[np.float32] | None = None
    order: NDArray[np.int32] | None = None  # rows of `scores` best first, when known
    candidates: Candidates | None = None
    fallback = FallbackReason.NONE
    strategy = serve.strategy
    if strategy == "personalized":
        if not shopper.allowed:
            fallback = FallbackReason.NO_CONSENT
        elif (embeddings := _embeddings(view, state)) is None:
            fallback = FallbackReason.MODEL_UNAVAILABLE
        else:
            query, fallback = _user_query(state, embeddings, shopper, scratch.query, why)
            strategy = "embedding"
    elif strategy == "similar":
        seeds = _rows(state, ask.seed_item_ids)
        if not seeds and shopper.allowed and activity is not None:
            seeds = _rows(state, [i for i, _ in activity.views][-SIMILAR_SEEDS_FROM_HISTORY:])
        if why is not None:
            why.seed_item_ids = tuple(state.item_ids[r] for r in seeds)
        for r in seeds:  # a seed or two: scalar stores, not a fancy-indexed assignment of a list
            mask[r] = 0
        if not seeds:
            fallback = miss_reason(shopper)
        else:
            if serve.method != "embedding":
                candidates = _neighbors(view, state, scratch, seeds, mask)
                if candidates is not None and why is not None:
                    why.notes.append(f"{candidates[0].shape[0]} neighbor(s) of the seeds pass the filters")
            if serve.method != "cooccurrence":
                embeddings = _embeddings(view, state)
            if embeddings is not None:
                # The query ranks by embeddings, or fills up after the neighbor lists ("auto").
                if len(seeds) == 1:
                    np.copyto(scratch.query, embeddings[seeds[0]])
                else:
                    np.mean(embeddings[seeds], axis=0, out=scratch.query)
                query = scratch.query
            if candidates is None and query is None:
                fallback = FallbackReason.MODEL_UNAVAILABLE
    elif strategy == "popular":
        scores, order = _popularity(view, state, serve.scope, shopper, country)
    elif strategy == "trending":
        scored = _trending(view, state, serve.half_life_days, now_ms)
        if scored is None:
            fallback = FallbackReason.MODEL_UNAVAILABLE
        else:
            scores, order = scored
    elif strategy in ("cart", "replenish"):
        if strategy == "cart":
            cart = activity.cart if activity is not None and shopper.allowed else ()
            ranked = [
                (r, float(j + 1)) for j, r in enumerate(_rows(state, [i for i, _ in cart]))
            ]  # newest first
        else:
            due = _replenish_due(state, activity, now_ms) if shopper.allowed else []
            ranked = [(r, 1.0) for r in due]
        ranked = [(r, s) for r, s in ranked if mask[r]]
        if not ranked:
            fallback = miss_reason(shopper)
        else:
            mask[:] = 0
            scratch.vec[:] = 0
            for r, s in ranked:
                mask[r] = 1
                scratch.vec[r] = s
            scores = scratch.vec

    if query is None and scores is None and candidates is None:
        strategy = default.strategy
        scored = (
            _trending(view, state, default.half_life_days, now_ms) if default.strategy == "trending" else None
        )
        if scored is None:
            strategy = "popular"
            scored = _popularity(view, state, default.scope, shopper, country)
        scores, order = scored
        if fallback == FallbackReason.NONE:
            fallback = FallbackReason.MODEL_UNAVAILABLE
    return _top(
        state,
        scratch,
        mask,
        count,
        serve,
        shopper,
        query,
        scores,
        order,
        candidates,
        embeddings,
        strategy,
        fallback,
        why,
    )


def _top(
    state: VersionState,
    scratch: Scratch,
    mask: NDArray[np.uint8],
    count: int,
    serve: ItemServe,
    shopper: Shopper,
    query: NDArray[np.float32] | None,
    scores: NDArray[np.float32] | None,
    order: NDArray[np.int32] | None,
    candidates: Candidates | None,
    embeddings: NDArray[np.float32] | None,
    strategy: str,
    fallback: FallbackReason,
    why: PlacementExplanation | None,
) -> Ranked:
    considered = int(np.count_nonzero(mask)) if why is not None else 0
    pinned: list[int] = []
    if serve.promotions is not None and count > 0:
        slots = max(1, round(serve.promotions.share * count)) if serve.promotions.share > 0 else 0
        for row in _rows(state, serve.promotions.items):
            if len(pinned) >= slots:
                break
            if mask[row]:
                pinned.append(row)
        mask[pinned] = 0
    sunk: AbstractSet[int] = _NO_ROWS
    if serve.max_impressions and shopper.activity is not None and shopper.activity.impressions:
        sunk = {
            state.rows[i]
            for i, n in shopper.activity.impressions
            if n >= serve.max_impressions and i in state.rows
        }
    organic = count - len(pinned)
    fetch = organic + len(sunk) + (organic * 3 if serve.diversity is not None else 0)
    fetch = max(0, min(fetch, state.n_items))
    if scratch.idx.shape[0] < fetch:
        scratch.ensure(state.n_items, fetch, state.dim)
    boost = state.boost_vector(serve.boosts) if serve.boosts else None
    rows: list[int] = []
    values: list[float] = []
    if candidates is not None:
        cand_rows, cand_scores = candidates
        if boost is not None:
            cand_scores += boost[cand_rows]  # in place: the scratch buffer of this request
        # Top `fetch` of the candidates still in the mask (pinned rows left it), then all of them leave
        # the mask: what follows only fills up.
        n = topk_pairs_into(
            cand_rows, cand_scores, cand_rows.shape[0], mask, fetch, scratch.idx, scratch.scores
        )
        rows, values = scratch.idx[:n].tolist(), scratch.scores[:n].tolist()
        fetch -= n
        if query is None:
            fetch = 0
    if fetch > 0 and query is not None and embeddings is not None:
        if boost is not None:  # every row's score, boosted below with the other strategies' scores
            scores = np.matmul(embeddings, query, out=scratch.vec)
        else:
            half = state.half_embeddings
            if state.partition is not None:  # a large catalog: the lists nearest the query
                n = topk_partition_into(
                    state.partition,
                    embeddings,
                    query,
                    mask,
                    fetch,
                    scratch.lists,
                    scratch.padded,
                    scratch.cand,
                    scratch.idx,
                    scratch.scores,
                    int8=scan() == "int8",
                )
            elif state.int8_embeddings is not None and (half is None or scan() == "int8"):
                n = topk_int8_into(
                    state.int8_embeddings,
                    embeddings,
                    query,
                    mask,
                    fetch,
                    scratch.padded,
                    scratch.cand,
                    scratch.idx,
                    scratch.scores,
                )
            elif half is not None:
                n = topk_half_into(
                    half,
                    embeddings,
                    query,
                    mask,
                    fetch,
                    scratch.padded,
                    scratch.cand,
                    scratch.idx,
                    scratch.scores,
                )
            else:  # no half-precision copy (values beyond binary16's range): scan the float32 matrix
                n = topk_dot_into(embeddings, query, mask, fetch, scratch.idx, scratch.scores)
            rows += scratch.idx[:n].tolist()
            values += scratch.scores[:n].tolist()
            fetch = 0
    if fetch > 0:
        assert scores is not None
        if boost is not None:  # the strategy's scores plus the boosts, in this request's scratch vector
            scores = np.add(scores, boost, out=scratch.vec, dtype=np.float32, casting="unsafe")
        elif scores.dtype != np.float32 or not scores.flags.c_contiguous:
            scores = np.ascontiguousarray(scores, dtype=np.float32)
        if order is not None and boost is None and query is None:
            # Popularity and trending: walk the version's precomputed order instead of scanning every row.
            n = topk_sorted_into(order, scores, mask, fetch, scratch.idx, scratch.scores, limit=_SORTED_WALK)
        else:
            n = topk_scores_into(scores, mask, fetch, scratch.idx, scratch.scores)
        rows += scratch.idx[:n].tolist()
        values += scratch.scores[:n].tolist()
    n = len(rows)
    if sunk:
        moved = sorted(range(n), key=lambda j: rows[j] in sunk)  # stable: sunk items move to the end
        rows, values = [rows[j] for j in moved], [values[j] for j in moved]
    if serve.diversity is not None:
        rows, values = _diversify(
            state, rows, values, serve.diversity.max_per_category, serve.diversity.depth
        )
    rows, values = rows[:organic], values[:organic]
    reason = strategy
    items = [ItemResult(state.item_ids[r], 0.0, "promotion", promoted=True) for r in pinned]
    items += item_results(ItemResult, state.item_ids, rows, values, reason)
    if why is not None:
        why.candidates = considered
        for r in pinned:
            why.items.append(ItemExplanation(state.item_ids[r], {}, ["promoted"]))
        for r, v in zip(rows, values, strict=True):
            parts = {"score": v}
            if boost is not None:
                parts["boost"] = float(boost[r])
                parts["base"] = v - float(boost[r])
            why.items.append(
                ItemExplanation(state.item_ids[r], parts, ["sunk by rotation"] if r in sunk else [])
            )
    return Ranked(items, strategy, fallback)


def _item_results_py(
    cls: type[ItemResult], item_ids: Sequence[str], rows: list[int], values: list[float], reason: str
) -> list[ItemResult]:
    """The reference `core._results.item_results` (which fills the objects' slots in C) is tested against."""
    return [cls(item_ids[r], v, reason) for r, v in zip(rows, values, strict=True)]


def _diversify(
    state: VersionState, rows: list[int], values: list[float], cap: int, depth: int
) -> tuple[list[int], list[float]]:
    taken: dict[str, int] = {}
    out_rows, out_values = [], []
    prefixes = state.category_prefixes(depth)
    for r, v in zip(rows, values, strict=True):
        key = prefixes[r]
        if taken.get(key, 0) < cap:
            taken[key] = taken.get(key, 0) + 1
            out_rows.append(r)
            out_values.append(v)
    return out_rows, out_values
