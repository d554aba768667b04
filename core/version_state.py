"""Decoded state of one snapshot version, built once when the version changes and shared by requests.

Holds what is costly to derive per request: the item id <-> row index, per-item price, category, tag
and flag data, availability masks per country, an index of the items by category, tag and flag (so a
filter value a request chooses costs a lookup: `edgewise.core.filter_index`), values derived on first
use (boost vectors, popularity orders, trending scores: a cache bounded by bytes, least recently used
out first, `edgewise.core.derived_cache`), the compiled rules and the profile fields' consent purposes.
Model arrays are read zero-copy from each request's own read transaction, with two additions, both
made once per version. One is a half-precision copy of the item embeddings in the blocked layout the
scoring kernel scans (`edgewise.core.scoring.half_index`, half the size of the matrix). The
personalized scan reads it instead of the float32 matrix and rescores a few rows exactly from the
matrix, so results are the float32 ones (a catalog of PARTITION_MIN_ROWS items or more gets a
partition of the embeddings into lists instead, `edgewise.core.partition`: a query scans a few lists,
so its results are the float32 ones within them). The other is copies of the float32 matrix itself and of the
neighbor arrays, each at most MODEL_COPY_MAX_BYTES: py-lmdb touches every page of a value it returns
(to take page faults without the GIL), so a request that read them from the store would pay for
every page of the matrix for the few rows it needs (BENCHMARKS.md, "Eighth measurement").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core.derived_cache import DerivedCache
from edgewise.core.features import replenish_days
from edgewise.core.filter_index import FilterIndex, build_filter_index
from edgewise.core.partition import Partition, build_partition, use_partition
from edgewise.core.records import ItemRecord
from edgewise.core.rules import Ruleset, compile_rules
from edgewise.core.saved_groups import GroupCache
from edgewise.core.scoring import HalfIndex, half_index
from edgewise.core.store import ROW_CHUNKED, ReadView
from edgewise.core.strategies import Boost

__all__ = [
    "DERIVED_BYTES_PER_ITEM",
    "DERIVED_MIN_BYTES",
    "MODEL_COPY_MAX_BYTES",
    "POPULARITY_PREFIX",
    "VersionCache",
    "VersionState",
    "build_state",
    "derived_max_bytes",
    "read_only_copy",
]

POPULARITY_PREFIX: Final = "item_popularity@"  # item_popularity@country:DE, item_popularity@segment:vip
# Per worker, the values derived on first use (derived_max_bytes): at least 64 MiB, or 256 bytes per
# item (32 per-item float32 score vectors with their orders) for a larger catalog: 1M items, 256 MB.
DERIVED_MIN_BYTES: Final = 64 << 20
DERIVED_BYTES_PER_ITEM: Final = 256
# Per worker, for each copy: the embeddings, and the two neighbor arrays together. 10k items: 1.25 MiB
# (32 dims) and 3.8 MiB (50 neighbors).
MODEL_COPY_MAX_BYTES: Final = 64 << 20


@dataclass(slots=True)
class VersionState:
    generation: int
    version: int
    item_ids: tuple[str, ...]
    rows: Mapping[str, int]
    prices: NDArray[np.float32]
    categories: tuple[str, ...]
    tags: tuple[frozenset[str], ...]
    flags: tuple[Mapping[str, Any], ...]
    replenish_days: Mapping[str, float]  # item id -> its valid `replenish_days` flag (those that have one)
    everywhere: NDArray[np.uint8]  # items available in every country
    regions: Mapping[str, NDArray[np.uint8]]  # country -> availability mask (includes `everywhere`)
    rules: Ruleset
    dim: int
    field_purposes: Mapping[str, str]  # profile attribute -> consent purpose needed to read it
    popularity_scopes: frozenset[str]  # e.g. {"country:DE", "segment:vip"}
    segment_scopes: tuple[str, ...]  # segment ids with their own popularity, sorted
    daily_counts_end_ms: int  # the day the last column of item_daily_counts ends (0 = no such model)
    half_embeddings: HalfIndex | None  # item_embeddings, half precision, blocked (None: none or too large)
    # Catalogs of PARTITION_MIN_ROWS items or more: the embeddings in lists (edgewise.core.partition),
    # scanned instead of half_embeddings (then None: the partition holds the same half-precision rows).
    partition: Partition | None
    # item_embeddings copied out of the store (read-only; None: none, not float32 2-d, or too large)
    embeddings: NDArray[np.float32] | None
    # item_neighbors / item_neighbor_scores copied likewise (None: absent, malformed, or too large)
    neighbors: NDArray[np.int32] | None
    neighbor_scores: NDArray[np.float32] | None
    chunked_models: frozenset[str]  # model arrays whose row chunks match their record (ReadView.rows)
    filters: FilterIndex  # rows by category, tag and flag (what filters and boosts select)
    derived_cache: DerivedCache  # values derived on first use (`derived`)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def availability(self, country: str) -> NDArray[np.uint8]:
        """Items that may be shown in `country` (unknown or empty country: items available everywhere)."""
        return self.regions.get(country.upper(), self.everywhere)

    def derived(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """A value derived from this version's data, built on first use of `key` and kept while it fits.

        Some keys come from requests (the default experience per country), so the cache is bounded:
        at most `derived_max_bytes(n_items)` of values are kept, the least recently used evicted first.
        Values every request uses stay; a burst of new keys evicts only the values nobody used since."""
        return self.derived_cache.get(key, build)

    def category_mask(self, prefix: str) -> NDArray[np.uint8]:
        """Items whose category path is `prefix` or below it (a new mask, made from the index)."""
        return self._mask(self.filters.category_rows(prefix))

    def tag_mask(self, tag: str) -> NDArray[np.uint8]:
        """Items carrying `tag` (a new mask, made from the index)."""
        return self._mask(self.filters.tag_rows(tag))

    def flag_mask(self, flag: str, value: str = "") -> NDArray[np.uint8]:
        """Items whose flag is truthy, or equals `value` ignoring case (a new mask, made from the index)."""
        return self._mask(self.filters.flag_rows(flag, value))

    def _mask(self, rows: NDArray[np.int32]) -> NDArray[np.uint8]:
        mask = np.zeros(self.n_items, dtype=np.uint8)
        mask[rows] = 1
        return mask

    def boost_vector(self, boosts: tuple[Boost, ...]) -> NDArray[np.float32]:
        """Per-item additive score boost of a strategy's boosts."""

        def build() -> NDArray[np.float32]:
            vector = np.zeros(self.n_items, dtype=np.float32)
            for b in boosts:
                if b.category:
                    mask = self.category_mask(b.category)
                elif b.flag:
                    mask = self.flag_mask(b.flag)
                else:
                    mask = self.tag_mask(b.tag)
                vector += np.float32(b.weight) * mask
            return vector

        vector: NDArray[np.float32] = self.derived(("boost", boosts), build)
        return vector

    def category_prefix(self, row: int, depth: int) -> str:
        return self.category_prefixes(depth)[row]

    def category_prefixes(self, depth: int) -> tuple[str, ...]:
        """Every row's category cut to its first `depth` levels (built once per version and depth: the
        diversity cap reads one per fetched row)."""

        def build() -> tuple[str, ...]:
            return tuple("/".join(c.split("/")[:depth]) for c in self.categories)

        prefixes: tuple[str, ...] = self.derived(("category_prefixes", depth), build)
        return prefixes


GROUP_CACHE: Final = GroupCache()
"""This process's saved groups across versions: a group is read again only when its summary changes."""


def build_state(view: ReadView) -> VersionState:
    """Decode the per-version state of the snapshot `view` reads."""
    records: list[ItemRecord] = sorted(view.items(), key=lambda r: r.row)
    n = len(records)
    if any(r.row != i for i, r in enumerate(records)):
        raise ValueError(f"version {view.version}: item rows are not 0..{n - 1}")
    item_ids = tuple(r.id for r in records)
    everywhere = np.fromiter(("*" in r.regions for r in records), dtype=np.uint8, count=n)
    countries = sorted({c for r in records for c in r.regions if c != "*"})
    regions: dict[str, NDArray[np.uint8]] = {}
    for country in countries:
        mask = everywhere.copy()
        mask[[i for i, r in enumerate(records) if country in r.regions]] = 1
        regions[country] = mask
    embeddings = view.array("item_embeddings")
    valid = embeddings is not None and embeddings.ndim == 2 and embeddings.dtype == np.float32
    dim = int(embeddings.shape[1]) if embeddings is not None and embeddings.ndim == 2 else 0
    partition = None
    if valid and embeddings is not None and use_partition(n) and embeddings.shape[0] == n:
        partition = build_partition(np.ascontiguousarray(embeddings))
    usable = valid and embeddings is not None and partition is None
    half = half_index(np.ascontiguousarray(embeddings)) if usable and embeddings is not None else None
    neighbors, neighbor_scores = _neighbor_copies(view, n)
    schema: Any = view.schema_doc() or {}
    fields = schema.get("profile_fields", {}) if isinstance(schema, dict) else {}
    purposes = {name: str(spec.get("purpose", "")) for name, spec in fields.items() if isinstance(spec, dict)}
    scopes = frozenset(name.removeprefix(POPULARITY_PREFIX) for name in view.model_names(POPULARITY_PREFIX))
    categories = tuple(r.category for r in records)
    tags = tuple(frozenset(r.tags) for r in records)
    flags = tuple(r.flags for r in records)
    return VersionState(
        generation=view.generation,
        version=view.version,
        item_ids=item_ids,
        rows={item_id: i for i, item_id in enumerate(item_ids)},
        prices=np.fromiter((r.price for r in records), dtype=np.float32, count=n),
        categories=categories,
        tags=tags,
        flags=flags,
        replenish_days={r.id: d for r in records if (d := replenish_days(r.flags)) is not None},
        everywhere=everywhere,
        regions=regions,
        rules=compile_rules(
            view.rules_doc(), GROUP_CACHE.groups(view.saved_group_summaries(), view.saved_group_members)
        ),
        dim=dim,
        field_purposes=purposes,
        popularity_scopes=scopes,
        segment_scopes=tuple(sorted(s.removeprefix("segment:") for s in scopes if s.startswith("segment:"))),
        daily_counts_end_ms=view.snapshot_info().daily_counts_end_ms,
        half_embeddings=half if half is not None and half.rows == n else None,
        partition=partition,
        embeddings=_copy(embeddings) if valid and embeddings is not None else None,
        neighbors=neighbors,
        neighbor_scores=neighbor_scores,
        chunked_models=frozenset(name for name in ROW_CHUNKED if view.chunks_match(name)),
        filters=build_filter_index(categories, tags, flags),
        derived_cache=DerivedCache(derived_max_bytes(n)),
    )


def derived_max_bytes(n_items: int) -> int:
    """How many bytes of derived values a version of `n_items` items keeps (VersionState.derived)."""
    return max(DERIVED_MIN_BYTES, DERIVED_BYTES_PER_ITEM * n_items)


def read_only_copy(array: NDArray[Any]) -> NDArray[Any]:
    """A C-ordered copy of a store's array, read-only: shared by every request, like the store's arrays."""
    copy = np.array(array, order="C")
    copy.flags.writeable = False
    return copy


def _copy(array: NDArray[Any]) -> NDArray[Any] | None:
    return None if array.nbytes > MODEL_COPY_MAX_BYTES else read_only_copy(array)


def _neighbor_copies(view: ReadView, n: int) -> tuple[NDArray[np.int32] | None, NDArray[np.float32] | None]:
    """Copies of the neighbor arrays when both are well formed ([n, width], int32 and float32) and
    together at most MODEL_COPY_MAX_BYTES; else (None, None) and requests read the store's."""
    neighbors, scores = view.array("item_neighbors"), view.array("item_neighbor_scores")
    if (
        neighbors is None
        or scores is None
        or neighbors.dtype != np.int32
        or scores.dtype != np.float32
        or neighbors.ndim != 2
        or neighbors.shape != scores.shape
        or neighbors.shape[0] != n
        or neighbors.nbytes + scores.nbytes > MODEL_COPY_MAX_BYTES
    ):
        return None, None
    return _copy(neighbors), _copy(scores)


class VersionCache:
    """The state of the newest version seen; rebuilt once per store generation, shared by threads."""

    def __init__(self) -> None:
        self._state: VersionState | None = None
        self._lock = threading.Lock()

    def get(self, view: ReadView) -> VersionState:
        state = self._state
        if state is not None and state.generation == view.generation:
            return state
        with self._lock:
            state = self._state
            if state is None or state.generation != view.generation:
                state = build_state(view)
                self._state = state
            return state
