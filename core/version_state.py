"""Decoded state of one snapshot version, built once when the version changes and shared by requests.

Holds what is costly to derive per request: the item id <-> row index, per-item price and category
arrays, availability masks per country, and the compiled rules. Model arrays are not held here: they
are read zero-copy from each request's own read transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgewise.core.records import ItemRecord
from edgewise.core.rules import Ruleset, compile_rules
from edgewise.core.store import ReadView

__all__ = ["VersionCache", "VersionState", "build_state"]


@dataclass(slots=True)
class VersionState:
    generation: int
    version: int
    item_ids: tuple[str, ...]
    rows: Mapping[str, int]
    prices: NDArray[np.float32]
    categories: tuple[str, ...]
    everywhere: NDArray[np.uint8]  # items available in every country
    regions: Mapping[str, NDArray[np.uint8]]  # country -> availability mask (includes `everywhere`)
    rules: Ruleset
    dim: int
    _category_masks: dict[str, NDArray[np.uint8]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def availability(self, country: str) -> NDArray[np.uint8]:
        """Items that may be shown in `country` (unknown or empty country: items available everywhere)."""
        return self.regions.get(country.upper(), self.everywhere)

    def category_mask(self, prefix: str) -> NDArray[np.uint8]:
        """Items whose category path is `prefix` or below it; cached per prefix."""
        mask = self._category_masks.get(prefix)
        if mask is None:
            stem = prefix.rstrip("/")
            mask = np.fromiter(
                (c == stem or c.startswith(stem + "/") for c in self.categories),
                dtype=np.uint8,
                count=self.n_items,
            )
            with self._lock:
                if len(self._category_masks) < 4096:
                    self._category_masks[prefix] = mask
        return mask


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
    dim = int(embeddings.shape[1]) if embeddings is not None and embeddings.ndim == 2 else 0
    doc: Any = view.rules_doc()
    return VersionState(
        generation=view.generation,
        version=view.version,
        item_ids=item_ids,
        rows={item_id: i for i, item_id in enumerate(item_ids)},
        prices=np.fromiter((r.price for r in records), dtype=np.float32, count=n),
        categories=tuple(r.category for r in records),
        everywhere=everywhere,
        regions=regions,
        rules=compile_rules(doc),
        dim=dim,
    )


class VersionCache:
    """The state of the newest version seen; rebuilt once per version, shared by threads."""

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
