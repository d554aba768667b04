"""A dict-backed FeatureSource for tests of conditions, behavioural windows and segments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgewise.core.features import Path, replenish_days, walk
from edgewise.core.records import Activity

__all__ = ["DAY_MS", "HOUR_MS", "MINUTE_MS", "NOW_MS", "DictSource"]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
NOW_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z


class DictSource:
    """`get` walks a plain dict (e.g. {"profile": {...}, "context": {...}}); missing parts are MISSING."""

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        now_ms: int = NOW_MS,
        activity: Activity | None = None,
        categories: Mapping[str, str] | None = None,
        flags: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.data: Mapping[str, Any] = data or {}
        self._now_ms = now_ms
        self._activity = activity
        self.categories: Mapping[str, str] = categories or {}
        self.flags: Mapping[str, Mapping[str, Any]] = flags or {}
        self.reads: list[Path] = []

    @property
    def now_ms(self) -> int:
        return self._now_ms

    @property
    def activity(self) -> Activity | None:
        return self._activity

    def get(self, path: Path) -> Any:
        self.reads.append(path)
        return walk(self.data, path)  # objects' keys, arrays' indexes and length, as the FeatureView reads

    def item_category(self, item_id: str) -> str | None:
        return self.categories.get(item_id)

    def replenish_days(self, item_id: str) -> float | None:
        if item_id not in self.categories and item_id not in self.flags:
            return None
        return replenish_days(self.flags.get(item_id, {})) or 0.0
