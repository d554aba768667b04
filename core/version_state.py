"""Decoded state of one snapshot version, built once when the version changes and shared by requests.

Holds what is costly to derive per request: the item id <-> row index, per-item price, category, tag
and flag data, availability masks per country, an index of the items by category, tag and flag (so a
filter value a request chooses costs a lookup: `edgewise.core.filter_index`), values derived on first
use (boost vectors, popularity orders, trending scores: a cache bounded by bytes, least recently used
out first, `edgewise.core.derived_cache`), the compiled rules and the profile fields' consent purposes.
Model arrays are read zero-copy from each request's own read transaction, with two additions, both
made once per version. One is an int8 copy of the item embeddings with a scale per row, in the blocked
layout the scoring kernel scans (`edgewise.core.scoring.int8_index`, about 40% of the matrix's bytes at
32 dimensions). The personalized scan reads it instead of the float32 matrix and rescores a few rows
exactly from the matrix, so results are the float32 ones. A half-precision copy (`half_index`, half the
size of the matrix) is made too where the int8 one cannot be (values it cannot scale), and where the
process chose the half scan before the version was built (`_placement.set_scan`: benchmarks' A/B). A
catalog of PARTITION_MIN_ROWS items or more gets a partition of the embeddings into lists instead
(`edgewise.core.partition`: a query scans a few lists, so its results are the float32 ones within
them). The other is copies of the float32 matrix itself and of the neighbor arrays, each at most
MODEL_COPY_MAX_BYTES: py-lmdb touches every page of a value it returns (to take page faults without
the GIL), so a request that read them from the store would pay for every page of the matrix for the
few rows it needs (BENCHMARKS.md, "Eighth measurement").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core._placement import scan
from edgewise.core.derived_cache import DerivedCache
from edgewise.core.embedding_slots import GENERATION_MODEL, active_generation
from edgewise.core.features import replenish_days
from edgewise.core.filter_index import FilterIndex, build_filter_index
from edgewise.core.partition import Partition, build_partition, use_partition
from edgewise.core.records import ItemRecord
from edgewise.core.rules import Ruleset, compile_rules
from edgewise.core.saved_groups import GroupCache
from edgewise.core.scoring import HalfIndex, Int8Index, half_index, int8_index
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
    "check_models",
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
    # item_embeddings, half precision, blocked (None: none, too large, or not wanted: only built for the
    # half scan, or where int8_embeddings cannot be made)
    half_embeddings: HalfIndex | None
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
    # ReadView.catalog_key of the view this was built from (b"": unknown): another generation with the
    # same catalog key keeps the catalog half of this state (build_state's `previous`)
    catalog_key: bytes = b""
    # the embedding generation `item_embeddings` belong to: the profiles' vectors of it are used
    # (models/embedding_generation, core/embedding_slots.py; 0: the bundle's)
    embedding_generation: int = 0
    # item_embeddings as int8 with a scale per row, blocked for the int8 scan (edgewise.core.scoring
    # .int8_index; None: no usable matrix, a partition instead, or values it cannot scale). The personalized
    # scan reads it unless the process chose the half scan (_placement.set_scan) and half_embeddings is here.
    int8_embeddings: Int8Index | None = None

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


def build_state(view: ReadView, previous: VersionState | None = None) -> VersionState:
    """Decode the per-version state of the snapshot `view` reads.

    With `previous`, the state of an older generation of the same store: when the view's catalog (items,
    rules, schema, saved groups: `ReadView.catalog_key`) is the one `previous` was built from, its
    catalog half is kept and only the model half is built again, and the embedding structures too when
    `item_embeddings` is byte for byte the one `previous` copied. A model refresh commits model arrays
    alone, so a worker switches to its new version in milliseconds instead of decoding every item again
    while requests wait (BENCHMARKS.md, "Model refresh applied during Decide"). The result equals a full
    build (tests/test_version_state_reuse.py)."""
    catalog_key = view.catalog_key()
    if previous is not None and catalog_key and previous.catalog_key == catalog_key:
        catalog = _Catalog.of_state(previous)
    else:
        catalog = _Catalog.build(view)
    n = len(catalog.item_ids)
    models = _Models.build(view, n, previous if catalog.reused else None)
    return VersionState(
        generation=view.generation,
        version=view.version,
        item_ids=catalog.item_ids,
        rows=catalog.rows,
        prices=catalog.prices,
        categories=catalog.categories,
        tags=catalog.tags,
        flags=catalog.flags,
        replenish_days=catalog.replenish_days,
        everywhere=catalog.everywhere,
        regions=catalog.regions,
        rules=catalog.rules,
        dim=models.dim,
        field_purposes=catalog.field_purposes,
        popularity_scopes=models.scopes,
        segment_scopes=tuple(
            sorted(s.removeprefix("segment:") for s in models.scopes if s.startswith("segment:"))
        ),
        daily_counts_end_ms=view.snapshot_info().daily_counts_end_ms,
        half_embeddings=models.half_embeddings,
        int8_embeddings=models.int8_embeddings,
        partition=models.partition,
        embeddings=models.embeddings,
        neighbors=models.neighbors,
        neighbor_scores=models.neighbor_scores,
        chunked_models=models.chunked,
        filters=catalog.filters,
        derived_cache=DerivedCache(derived_max_bytes(n)),
        catalog_key=catalog_key,
        embedding_generation=active_generation(view.array(GENERATION_MODEL)),
    )


@dataclass(frozen=True, slots=True)
class _Catalog:
    """The half of a version state decoded from the items and the rules (and the schema, saved groups)."""

    item_ids: tuple[str, ...]
    rows: Mapping[str, int]
    prices: NDArray[np.float32]
    categories: tuple[str, ...]
    tags: tuple[frozenset[str], ...]
    flags: tuple[Mapping[str, Any], ...]
    replenish_days: Mapping[str, float]
    everywhere: NDArray[np.uint8]
    regions: Mapping[str, NDArray[np.uint8]]
    rules: Ruleset
    field_purposes: Mapping[str, str]
    filters: FilterIndex
    reused: bool

    @staticmethod
    def of_state(state: VersionState) -> _Catalog:
        return _Catalog(
            state.item_ids,
            state.rows,
            state.prices,
            state.categories,
            state.tags,
            state.flags,
            state.replenish_days,
            state.everywhere,
            state.regions,
            state.rules,
            state.field_purposes,
            state.filters,
            reused=True,
        )

    @staticmethod
    def build(view: ReadView) -> _Catalog:
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
        schema: Any = view.schema_doc() or {}
        fields = schema.get("profile_fields", {}) if isinstance(schema, dict) else {}
        purposes = {
            name: str(spec.get("purpose", "")) for name, spec in fields.items() if isinstance(spec, dict)
        }
        categories = tuple(r.category for r in records)
        tags = tuple(frozenset(r.tags) for r in records)
        flags = tuple(r.flags for r in records)
        return _Catalog(
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
            field_purposes=purposes,
            filters=build_filter_index(categories, tags, flags),
            reused=False,
        )


@dataclass(frozen=True, slots=True)
class _Models:
    """The half of a version state made from the model arrays."""

    dim: int
    half_embeddings: HalfIndex | None
    int8_embeddings: Int8Index | None
    partition: Partition | None
    embeddings: NDArray[np.float32] | None
    neighbors: NDArray[np.int32] | None
    neighbor_scores: NDArray[np.float32] | None
    scopes: frozenset[str]
    chunked: frozenset[str]

    @staticmethod
    def build(view: ReadView, n: int, previous: VersionState | None, *, embeddings: bool = True) -> _Models:
        """The model half for `n` items; `previous` (a state of the same catalog) lends its embedding
        structures when `item_embeddings` is unchanged; `embeddings=False` leaves them out (a check)."""
        array = view.array("item_embeddings") if embeddings else None
        valid = array is not None and array.ndim == 2 and array.dtype == np.float32
        dim = int(array.shape[1]) if array is not None and array.ndim == 2 else 0
        if previous is not None and valid and array is not None and _same_bytes(previous.embeddings, array):
            partition, half, copy = previous.partition, previous.half_embeddings, previous.embeddings
            small = previous.int8_embeddings
        else:
            partition = None
            if valid and array is not None and use_partition(n) and array.shape[0] == n:
                partition = build_partition(np.ascontiguousarray(array))
            usable = valid and array is not None and partition is None
            matrix = np.ascontiguousarray(array) if usable and array is not None else None
            small = int8_index(matrix) if matrix is not None else None
            # the half-precision copy only where it is scanned: the process chose the half scan, or the
            # int8 copy could not be made (values it cannot scale)
            half = half_index(matrix) if matrix is not None and (small is None or scan() == "half") else None
            copy = _copy(array) if valid and array is not None else None
        neighbors, neighbor_scores = _neighbor_copies(view, n)
        return _Models(
            dim=dim,
            half_embeddings=half if half is not None and half.rows == n else None,
            int8_embeddings=small if small is not None and small.rows == n else None,
            partition=partition,
            embeddings=copy,
            neighbors=neighbors,
            neighbor_scores=neighbor_scores,
            scopes=frozenset(
                name.removeprefix(POPULARITY_PREFIX) for name in view.model_names(POPULARITY_PREFIX)
            ),
            chunked=frozenset(name for name in ROW_CHUNKED if view.chunks_match(name)),
        )


def check_models(view: ReadView, *, embeddings: bool) -> None:
    """Build the model half of the state `view` reads, as a worker would, for a commit that changes no
    item and no rule (the catalog half is the last commit's, already checked); `embeddings`: whether
    `item_embeddings` changed too (else its structures were checked with the commit that wrote it)."""
    _Models.build(view, view.count("items"), None, embeddings=embeddings)


def _same_bytes(copy: NDArray[Any] | None, array: NDArray[Any]) -> bool:
    """Whether `copy` (a previous version's copy of a model array) holds exactly `array`'s bytes."""
    if copy is None or copy.shape != array.shape or copy.dtype != array.dtype:
        return False
    return bool(np.array_equal(copy.view(np.uint8), np.ascontiguousarray(array).view(np.uint8)))


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
                state = build_state(view, state)
                self._state = state
            return state
