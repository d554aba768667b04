"""Model refresh: per-item model arrays recomputed from forwarded events, as pure functions.

The control plane refreshes the models an edge serves from (docs/refresh.md) between bundles: a job per
model (`sync/model_refresh.py`) reads the forwarded events, asks the model's `ModelRefresh` for the new
arrays, and commits the arrays that changed through the change log, as any push. This module is the
pure part: no I/O, no clock, no store.

The interface a model refresh implements (`ModelRefresh`):

- `name`: the model's name ("popularity", "trending", "neighbors", ...): the job's cursor is
  `refresh:<name>`, its commits are described as "refresh <name>: ...", and its clock in the manifest
  record's `refreshed` map is kept under it.
- `window_ms`: 0 for an **incremental** model, which is given the events stored since its last run (its
  cursor) and folds them into the current arrays (popularity, trending); > 0 for a **windowed** model,
  given every stored event of the last `window_ms` before the newest one, which recomputes from them
  (neighbours).
- `reads(name)`: whether it needs the current array `name` (the job loads only those).
- `scoped`: whether it reads the events' country and segments (the job then reads the exposure records
  that give them; an unscoped model's job skips them).
- `refresh(state, events) -> RefreshResult`: the new state from the current one and the events, pure
  and deterministic. `state` (`ModelState`) holds the item rows, the arrays `reads` asked for (never
  to be modified) and the manifest document; `events` (`RefreshEvent`) are in the order stored. The
  result names the whole arrays to set (n rows each, n = the items' rows), the manifest keys to set,
  and profile embeddings to set (a user's `e`; item-only models leave it empty). The job commits only
  what differs from the current records; an empty result commits nothing.

Implemented here: `PopularityRefresh` (exponentially decayed event counts per item, globally and in
every popularity scope the state has), `TrendingRefresh` (`item_daily_counts`: views per item and day,
the columns shifted as days pass) and `NeighborsRefresh` (co-occurrence neighbours: cosine of the units
that had both items, top k with a minimum support). `NewItems` counts event item ids the catalog does
not have, and says when one has been seen often enough to get a row (`new_item_record`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DAILY_COUNTS",
    "DAILY_COUNT_TYPES",
    "DAY_MS",
    "ITEM_EVENT_TYPES",
    "NEIGHBORS",
    "NEIGHBOR_SCORES",
    "NEW_ITEM_FLAG",
    "POPULARITY",
    "POPULARITY_WEIGHTS",
    "SCOPE_PREFIX",
    "ModelRefresh",
    "ModelState",
    "NeighborsRefresh",
    "NewItems",
    "PopularityRefresh",
    "RefreshEvent",
    "RefreshResult",
    "TrendingRefresh",
    "clock",
    "cooccurrence_neighbors",
    "decayed_popularity",
    "new_item_record",
    "shifted_daily_counts",
    "with_clock",
]

POPULARITY: Final = "item_popularity"
SCOPE_PREFIX: Final = "item_popularity@"
DAILY_COUNTS: Final = "item_daily_counts"
NEIGHBORS: Final = "item_neighbors"
NEIGHBOR_SCORES: Final = "item_neighbor_scores"
DAY_MS: Final = 86_400_000
REFRESHED: Final = "refreshed"  # the manifest's map: model name -> the time its state is as of (ms)

POPULARITY_WEIGHTS: Final[Mapping[str, float]] = {
    "view": 1.0,
    "click": 1.0,
    "add_to_cart": 3.0,
    "purchase": 5.0,
}
"""What one event adds to its item's popularity (before decay), by event type; other types add nothing."""
ITEM_EVENT_TYPES: Final = frozenset(POPULARITY_WEIGHTS)
"""The event types that say a unit took an interest in an item: they count for popularity, for
neighbours (the items of one unit co-occur) and for new items."""
DAILY_COUNT_TYPES: Final = frozenset({"view", "click"})
"""`item_daily_counts` counts views per item and day (a click is also a view)."""
NEW_ITEM_FLAG: Final = "from_events"
"""The flag (and tag) of an item record made from events: rules can leave such items out."""
MAX_BASKET: Final = 50
"""A unit's most recent distinct items that co-occur (bounds the pairs per unit at 1,225)."""
_PAIR_CHUNK: Final = 4_000_000


@dataclass(frozen=True, slots=True)
class RefreshEvent:
    """A forwarded Track event as the models read it: what a unit (the user, else the session) did with
    an item, when, and the context it was in (from the decision's exposure record, else the unit's last
    one, else the profile's country: "" and () when unknown)."""

    type: str
    unit: str
    item: str
    ts_ms: int
    country: str = ""
    segments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelState:
    """The current state a refresh reads: item id -> row (rows 0..n-1), the arrays it asked for, the
    manifest document."""

    rows: Mapping[str, int]
    arrays: Mapping[str, NDArray[Any]]
    manifest: Mapping[str, Any]

    @property
    def n_items(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What a refresh changes: whole per-item arrays (n rows), manifest keys, profile embeddings
    (user id -> float32 vector, None: remove it), and a few words for the commit's description."""

    arrays: Mapping[str, NDArray[Any]] = field(default_factory=dict)
    manifest: Mapping[str, Any] = field(default_factory=dict)
    profile_embeddings: Mapping[str, NDArray[np.float32] | None] = field(default_factory=dict)
    summary: str = ""


class ModelRefresh(Protocol):
    """A model the control plane refreshes from events (see the module doc)."""

    @property
    def name(self) -> str: ...

    @property
    def window_ms(self) -> int: ...

    @property
    def scoped(self) -> bool: ...

    def reads(self, name: str) -> bool: ...

    def refresh(self, state: ModelState, events: Sequence[RefreshEvent]) -> RefreshResult: ...


def clock(manifest: Mapping[str, Any], name: str) -> int:
    """The time model `name`'s state is as of (ms; 0: never refreshed since its bundle)."""
    refreshed = manifest.get(REFRESHED)
    value = refreshed.get(name, 0) if isinstance(refreshed, Mapping) else 0
    return value if isinstance(value, int) and value > 0 else 0


def with_clock(manifest: Mapping[str, Any], name: str, as_of_ms: int) -> dict[str, Any]:
    """The manifest key to set so that `clock(..., name)` is `as_of_ms` (other models' clocks kept)."""
    refreshed = manifest.get(REFRESHED)
    clocks = dict(refreshed) if isinstance(refreshed, Mapping) else {}
    clocks[name] = int(as_of_ms)
    return {REFRESHED: clocks}


def _known(
    state: ModelState, events: Iterable[RefreshEvent], types: frozenset[str]
) -> list[tuple[int, RefreshEvent]]:
    rows = state.rows
    return [(rows[e.item], e) for e in events if e.type in types and e.item in rows]


# --------------------------------------------------------------------------------------------------
# popularity


def decayed_popularity(
    current: NDArray[Any],
    rows: NDArray[np.int64],
    weights: NDArray[np.float64],
    ts_ms: NDArray[np.int64],
    *,
    old_ms: int,
    as_of_ms: int,
    half_life_ms: int,
) -> NDArray[np.float32]:
    """Exponentially decayed counts as of `as_of_ms`: the `current` values (as of `old_ms`) halved every
    `half_life_ms` since, plus each event's weight halved every `half_life_ms` from its time (an event
    after `as_of_ms` counts in full)."""
    decay = 0.5 ** (max(0, as_of_ms - old_ms) / half_life_ms)
    out = np.asarray(current, dtype=np.float64) * decay
    ages = np.maximum(as_of_ms - ts_ms, 0).astype(np.float64)
    np.add.at(out, rows, weights * np.power(0.5, ages / half_life_ms))
    result: NDArray[np.float32] = out.astype(np.float32)
    return result


@dataclass(frozen=True, slots=True)
class PopularityRefresh:
    """`item_popularity` and every scope the state has (`item_popularity@country:<CC>`: events in that
    country; `item_popularity@segment:<id>`: events of units in that segment) as decayed weighted event
    counts (`POPULARITY_WEIGHTS`, half-life `half_life_ms`). Incremental: the arrays decay from the
    model's clock (the manifest's; the first refresh after a bundle starts it at the newest event,
    without decaying the bundle's values) to the newest event's time, and the new events are added."""

    half_life_ms: int
    name: str = "popularity"
    window_ms: int = 0
    scoped: bool = True

    def reads(self, name: str) -> bool:
        return name == POPULARITY or name.startswith(SCOPE_PREFIX)

    def refresh(self, state: ModelState, events: Sequence[RefreshEvent]) -> RefreshResult:
        known = _known(state, events, ITEM_EVENT_TYPES)
        names = sorted(n for n in state.arrays if self.reads(n))
        if not known or not names:
            return RefreshResult()
        old_ms = clock(state.manifest, self.name)
        newest = max(e.ts_ms for _, e in known)
        as_of = max(old_ms, newest)
        if not old_ms:
            old_ms = as_of
        arrays: dict[str, NDArray[Any]] = {}
        for name in names:
            scope = name.removeprefix(SCOPE_PREFIX) if name != POPULARITY else ""
            chosen = [(row, e) for row, e in known if _in_scope(e, scope)]
            rows = np.fromiter((r for r, _ in chosen), dtype=np.int64, count=len(chosen))
            weights = np.fromiter((POPULARITY_WEIGHTS[e.type] for _, e in chosen), np.float64, len(chosen))
            ts = np.fromiter((e.ts_ms for _, e in chosen), dtype=np.int64, count=len(chosen))
            arrays[name] = decayed_popularity(
                state.arrays[name],
                rows,
                weights,
                ts,
                old_ms=old_ms,
                as_of_ms=as_of,
                half_life_ms=self.half_life_ms,
            )
        return RefreshResult(
            arrays=arrays,
            manifest=with_clock(state.manifest, self.name, as_of),
            summary=f"{len(known)} events",
        )


def _in_scope(event: RefreshEvent, scope: str) -> bool:
    """Whether an event counts for a popularity scope ("" global, "country:DE", "segment:vip")."""
    if not scope:
        return True
    kind, _, value = scope.partition(":")
    if kind == "country":
        return event.country.upper() == value.upper()
    if kind == "segment":
        return value in event.segments
    return False


# --------------------------------------------------------------------------------------------------
# trending


def shifted_daily_counts(
    counts: NDArray[Any], end_day: int, rows: NDArray[np.int64], days: NDArray[np.int64]
) -> tuple[NDArray[np.float32], int]:
    """Daily counts with one more count per (row, day): column `c` of `counts` counts day
    `end_day - (width - 1 - c)`. A day after `end_day` moves the window (columns shift left, the new
    ones start at 0); a day before the first column is dropped. Returns the counts and their end day."""
    width = counts.shape[1]
    new_end = max(end_day, int(days.max())) if days.size else end_day
    shift = new_end - end_day
    out = np.zeros(counts.shape, dtype=np.float64)
    if shift < width:
        out[:, : width - shift] = np.asarray(counts, dtype=np.float64)[:, shift:]
    cols = width - 1 - (new_end - days)
    keep = cols >= 0
    np.add.at(out, (rows[keep], cols[keep]), 1.0)
    return out.astype(np.float32), new_end


@dataclass(frozen=True, slots=True)
class TrendingRefresh:
    """`item_daily_counts`: views (and clicks) per item and day, the last column the day of the newest
    event (the manifest's `daily_counts_end_ms`). Incremental. A state without the array gets one of
    `days` columns."""

    days: int
    name: str = "trending"
    window_ms: int = 0
    scoped: bool = False

    def reads(self, name: str) -> bool:
        return name == DAILY_COUNTS

    def refresh(self, state: ModelState, events: Sequence[RefreshEvent]) -> RefreshResult:
        known = _known(state, events, DAILY_COUNT_TYPES)
        if not known:
            return RefreshResult()
        current = state.arrays.get(DAILY_COUNTS)
        end_ms = state.manifest.get("daily_counts_end_ms", 0)
        if current is None or current.ndim != 2:
            current = np.zeros((state.n_items, self.days), dtype=np.float32)
            end_ms = 0
        rows = np.fromiter((r for r, _ in known), dtype=np.int64, count=len(known))
        days = np.fromiter((e.ts_ms // DAY_MS for _, e in known), dtype=np.int64, count=len(known))
        end_day = int(end_ms) // DAY_MS if isinstance(end_ms, int) and end_ms > 0 else int(days.max())
        counts, new_end = shifted_daily_counts(current, end_day, rows, days)
        manifest = {
            "daily_counts_end_ms": new_end * DAY_MS,
            **with_clock(state.manifest, self.name, new_end * DAY_MS),
        }
        return RefreshResult(arrays={DAILY_COUNTS: counts}, manifest=manifest, summary=f"{len(known)} views")


# --------------------------------------------------------------------------------------------------
# neighbours


def _baskets(known: Sequence[tuple[int, RefreshEvent]], max_basket: int) -> list[NDArray[np.int64]]:
    """Per unit, the distinct rows of its most recent `max_basket` items (events in time order)."""
    by_unit: dict[str, dict[int, int]] = {}
    for row, event in sorted(known, key=lambda re: re[1].ts_ms):
        items = by_unit.setdefault(event.unit, {})
        items.pop(row, None)
        items[row] = event.ts_ms
    out = []
    for items in by_unit.values():
        rows = list(items)[-max_basket:]
        if len(rows) > 1:
            out.append(np.array(sorted(rows), dtype=np.int64))
    return out


def _pair_counts(baskets: Sequence[NDArray[np.int64]], n: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Unique pair keys `i * n + j` (i < j) over all baskets and how many baskets hold each."""
    keys: list[NDArray[np.int64]] = []
    counts: list[NDArray[np.int64]] = []
    pending: list[NDArray[np.int64]] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if pending:
            k, c = np.unique(np.concatenate(pending), return_counts=True)
            keys.append(k)
            counts.append(c.astype(np.int64))
            pending.clear()
            size = 0

    for basket in baskets:
        i, j = np.triu_indices(basket.size, k=1)
        pending.append(basket[i] * n + basket[j])
        size += i.size
        if size >= _PAIR_CHUNK:
            flush()
    flush()
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(keys) == 1:
        return keys[0], counts[0]
    all_keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    return all_keys, np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)


def cooccurrence_neighbors(
    baskets: Sequence[NDArray[np.int64]], n: int, k: int, min_support: int
) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.bool_]]:
    """Top-`k` neighbours of every item row from baskets (each: the distinct rows one unit had).

    Two items' score is the cosine of their baskets, `c_ij / sqrt(n_i * n_j)` (c_ij baskets with both,
    n_i baskets with i); pairs in fewer than `min_support` baskets are left out. Each row lists its
    neighbours best first (ties: the lower row first), padded with -1 and score 0. Returns the
    neighbours, their scores, and which rows have at least one."""
    nb = np.full((n, k), -1, dtype=np.int32)
    sc = np.zeros((n, k), dtype=np.float32)
    found = np.zeros(n, dtype=np.bool_)
    if not baskets or k <= 0:
        return nb, sc, found
    per_item = np.bincount(np.concatenate(baskets), minlength=n).astype(np.float64)
    keys, counts = _pair_counts(baskets, n)
    keep = counts >= max(1, min_support)
    keys, counts = keys[keep], counts[keep]
    i, j = keys // n, keys % n
    score = counts / np.sqrt(per_item[i] * per_item[j])
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    both = np.concatenate([score, score])
    order = np.lexsort((dst, -both, src))
    src, dst, both = src[order], dst[order], both[order]
    if src.size:
        starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
        lengths = np.diff(np.r_[starts, src.size])
        rank = np.arange(src.size) - np.repeat(starts, lengths)
        top = rank < k
        nb[src[top], rank[top]] = dst[top]
        sc[src[top], rank[top]] = both[top]
        found[src[top]] = True
    return nb, sc, found


@dataclass(frozen=True, slots=True)
class NeighborsRefresh:
    """`item_neighbors` / `item_neighbor_scores` from co-occurrence: the items each unit (user, else
    session) viewed, clicked, carted or bought within the window (its most recent `MAX_BASKET`) are
    one basket; `cooccurrence_neighbors` with `k` (the current arrays' k when the state has them) and
    `min_support`. Windowed. An item the window gives at least one neighbour gets its new row; the
    other rows keep what they had (a bundle's neighbours are not erased by a quiet window)."""

    window_ms: int
    k: int
    min_support: int
    name: str = "neighbors"
    scoped: bool = False

    def reads(self, name: str) -> bool:
        return name in (NEIGHBORS, NEIGHBOR_SCORES)

    def refresh(self, state: ModelState, events: Sequence[RefreshEvent]) -> RefreshResult:
        known = _known(state, events, ITEM_EVENT_TYPES)
        n = state.n_items
        current_nb = state.arrays.get(NEIGHBORS)
        current_sc = state.arrays.get(NEIGHBOR_SCORES)
        has_current = current_nb is not None and current_sc is not None and current_nb.ndim == 2
        k = int(current_nb.shape[1]) if has_current and current_nb is not None else self.k
        nb, sc, found = cooccurrence_neighbors(_baskets(known, MAX_BASKET), n, k, self.min_support)
        if not found.any():
            return RefreshResult()
        if has_current and current_nb is not None and current_sc is not None:
            nb = np.where(found[:, None], nb, current_nb).astype(np.int32)
            sc = np.where(found[:, None], sc, current_sc).astype(np.float32)
        return RefreshResult(
            arrays={NEIGHBORS: nb, NEIGHBOR_SCORES: sc},
            summary=f"{int(found.sum())} items from {len(known)} events",
        )


# --------------------------------------------------------------------------------------------------
# new items


class NewItems:
    """Item ids that events name but the catalog does not have, counted per distinct unit: an id seen
    from `min_units` units is `ready` for a row. The oldest ids are forgotten past `capacity`. The
    refresh job keeps the counts in the control store beside its cursor (`entries` / `load`), so a
    restart neither loses nor repeats them (docs/refresh.md, "New items")."""

    def __init__(self, min_units: int, capacity: int = 100_000) -> None:
        self.min_units = min_units
        self.capacity = capacity
        self._seen: OrderedDict[str, tuple[int, set[str]]] = OrderedDict()  # id -> (first ms, units)
        self.changes = 0  # mutations since made: whether the counts changed since a caller last looked

    def observe(self, events: Iterable[RefreshEvent], known: Container[str]) -> dict[str, int]:
        """Count the events' unknown items; return the ids now ready, with their first time (ms)."""
        ready: dict[str, int] = {}
        for event in events:
            if event.type not in ITEM_EVENT_TYPES or not event.item or event.item in known:
                continue
            first, units = self._seen.pop(event.item, (event.ts_ms, set()))
            units.add(event.unit)
            first = min(first, event.ts_ms)
            self.changes += 1
            if len(units) >= self.min_units:
                ready[event.item] = first
                continue
            self._seen[event.item] = (first, units)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
        return ready

    def pending(self) -> int:
        return len(self._seen)

    def entries(self) -> list[tuple[str, int, list[str]]]:
        """The counts, oldest id first: (id, first time ms, its units sorted)."""
        return [(item, first, sorted(units)) for item, (first, units) in self._seen.items()]

    def load(self, entries: Iterable[tuple[str, int, Iterable[str]]]) -> None:
        """Replace the counts with `entries` (as `entries` gives them, oldest first; the newest
        `capacity` kept)."""
        self._seen = OrderedDict((item, (int(first), set(units))) for item, first, units in entries)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        self.changes += 1


def new_item_record(item_id: str, first_ms: int) -> dict[str, Any]:
    """The items.jsonl record of an item made from events, which carry no attributes: category "new",
    price 0, shown everywhere (regions ["*"]), the tag and flag `from_events`, launched the day it was
    first seen. A bundle or a delta carrying the item replaces the record (its row is kept)."""
    day = datetime.fromtimestamp(max(0, first_ms) / 1000, tz=UTC).date().isoformat()
    return {
        "id": item_id,
        "category": "new",
        "price": 0.0,
        "regions": ["*"],
        "tags": [NEW_ITEM_FLAG],
        "launch_date": day,
        "flags": {NEW_ITEM_FLAG: True},
    }
