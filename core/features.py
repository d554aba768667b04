"""The feature view a decision reads: profile, live activity and request context behind one interface.

Paths are tuples of names, split once when a rule is compiled:

    ("profile", "<attribute>", ...)        profile attributes (readable only with their consent purpose)
    ("context", "<field>")                 channel, device, language, country, region, journey_stage,
                                           page_type, local_time, url, referrer
    ("context", "attributes", "<key>")     custom request attributes
    ("activity", "views" | "cart" | "purchases")   lists of item ids, most recent last
    ("user", "id") / ("user", "known")     the pseudonymous id and whether a profile was found

A value that is absent, or that consent does not let the decision read, is `MISSING`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from edgewise.core.records import Activity

__all__ = ["MISSING", "FeatureSource", "Path", "replenish_days"]

Path = tuple[str, ...]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final[Any] = _Missing()


class FeatureSource(Protocol):
    """What segments and rules may read during one decision."""

    @property
    def now_ms(self) -> int:
        """Decision time, Unix ms."""
        ...

    @property
    def activity(self) -> Activity | None:
        """Live activity of the user/session (None without consent or without history)."""
        ...

    def get(self, path: Path) -> Any:
        """The value at `path`, or MISSING (absent, or not readable under the granted purposes)."""
        ...

    def item_category(self, item_id: str) -> str | None:
        """Category path of a catalog item, or None if the item is unknown."""
        ...

    def replenish_days(self, item_id: str) -> float | None:
        """The item's replenishment interval from its flags (`replenish_days` below), 0.0 for a known
        item without one, None for an unknown item."""
        ...


def replenish_days(flags: Mapping[str, Any]) -> float | None:
    """An item's `replenish_days` flag as a number of days, or None when it is absent or not a positive
    number (booleans are not numbers here)."""
    days = flags.get("replenish_days")
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not days > 0:
        return None
    return float(days)
