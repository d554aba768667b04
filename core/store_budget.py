"""How a node's LMDB map is shared: the snapshot, room for a reload, headroom, and the edge-local caps.

LMDB never grows a map past its size, and a write transaction copies every page it changes before the old
ones are freed, so a map that is full cannot even delete (MDB_MAP_FULL). The map is therefore split:

    map = snapshot + reload room (one more snapshot) + headroom + free budget

- the snapshot: the replicated namespaces and their derived row chunks, as their pages take them;
- reload room: a reload (a bundle on SIGHUP, a synced snapshot) writes the new snapshot beside the old
  one in one transaction, and the old pages are freed only when it commits: room for a second copy;
- headroom (`headroom_bytes`): a sixteenth of the map, at least 4 MiB (half of a map under 8 MiB);
  Track's writes stop at half of it (`write_limit_bytes`; core/edge_local.py counts three times the
  pages a commit copies as in use too), so what is left is always there for housekeeping's deletes
  (which need free pages too) and for the pages a step overshoots by;
- the free budget: what the three caps of the edge-local namespaces (`data.outbox_max_mb`,
  `track.dedupe_max_mb`, `track.activity_max_mb`) share.

Effective caps (`store_budget`): a cap set to 0 (auto) weighs a third of the free budget, a configured
one its own size; when the weights add up to more than the free budget, all are scaled down together so
that they fit. So an effective cap is never above its configured value, the caps together never above the
free budget, and each is at least `MIN_CAP_BYTES`. They change with the snapshot: the supervisor
recomputes them whenever the served version changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MIN_CAP_BYTES",
    "Cap",
    "StoreBudget",
    "StoreError",
    "StoreFull",
    "headroom_bytes",
    "store_budget",
    "write_limit_bytes",
]

MIB: Final = 1 << 20
MIN_HEADROOM: Final = 4 * MIB
HEADROOM_DIVISOR: Final = 16
MIN_CAP_BYTES: Final = 64 << 10  # 16 pages: a cap never reaches 0, which would mean "no limit"


class StoreError(RuntimeError):
    """The store cannot be opened or written (full map, permissions, corrupt file)."""


class StoreFull(StoreError):
    """A write did not fit: the map is full, or Track's writes would pass `write_limit_bytes`. Nothing of
    the transaction was written; housekeeping frees room by the size limits, so a later write fits."""


def headroom_bytes(map_bytes: int) -> int:
    """Room kept free of the caps: a sixteenth of the map, at least 4 MiB (half of a map under 8 MiB)."""
    return max(min(MIN_HEADROOM, map_bytes // 2), map_bytes // HEADROOM_DIVISOR)


def write_limit_bytes(map_bytes: int) -> int:
    """Bytes of pages in use past which Track's writes are refused (`StoreFull`): the map less half its
    headroom, which is left for housekeeping's deletes."""
    return map_bytes - headroom_bytes(map_bytes) // 2


@dataclass(frozen=True, slots=True)
class Cap:
    key: str  # the config key, e.g. "data.outbox_max_mb"
    configured_bytes: int  # 0: auto
    effective_bytes: int


@dataclass(frozen=True, slots=True)
class StoreBudget:
    """How a map of `map_bytes` is shared with a snapshot of `snapshot_bytes` (see the module's text)."""

    map_bytes: int
    snapshot_bytes: int
    reload_bytes: int  # room for a reload's second copy of the snapshot
    headroom_bytes: int
    free_bytes: int  # what the caps share (0: the snapshot leaves nothing; the caps are at their minimum)
    write_limit_bytes: int
    caps: tuple[Cap, ...]

    @property
    def reload_fits(self) -> bool:
        """Whether the map holds the snapshot, a reload's copy of it and the headroom."""
        return self.map_bytes - 2 * self.snapshot_bytes - self.headroom_bytes > 0

    def effective(self, key: str) -> int:
        return next(cap.effective_bytes for cap in self.caps if cap.key == key)


def store_budget(map_bytes: int, snapshot_bytes: int, configured: Sequence[tuple[str, int]]) -> StoreBudget:
    """The budget of a map: `configured` is (config key, bytes; 0 for auto) per cap."""
    headroom = headroom_bytes(map_bytes)
    free = max(0, map_bytes - 2 * snapshot_bytes - headroom)
    auto = free // max(1, len(configured))
    weights = [size or auto for _, size in configured]
    total = sum(weights)
    scale = free / total if total > free else 1.0
    caps = tuple(
        Cap(key, size, max(MIN_CAP_BYTES, int(weight * scale)))
        for (key, size), weight in zip(configured, weights, strict=True)
    )
    return StoreBudget(
        map_bytes=map_bytes,
        snapshot_bytes=snapshot_bytes,
        reload_bytes=snapshot_bytes,
        headroom_bytes=headroom,
        free_bytes=free,
        write_limit_bytes=write_limit_bytes(map_bytes),
        caps=caps,
    )
