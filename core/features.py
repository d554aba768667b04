"""The feature view a decision reads: profile, live activity and request context behind one interface.

Paths are tuples of names, split once when a rule is compiled:

    ("profile", "<attribute>", ...)        profile attributes (readable only with their consent purpose)
    ("context", "<field>")                 channel, device, language, country, region, journey_stage,
                                           page_type, local_time, url, referrer
    ("context", "attributes", "<key>")     custom request attributes
    ("activity", "views" | "cart" | "purchases")   lists of item ids, most recent last
    ("user", "id") / ("user", "known")     the pseudonymous id and whether a profile was found

Below a profile attribute or a custom request attribute, a part names an object's key, an array's index
(`profile.addresses.0.country`) or an array's `length` (`walk`), as GrowthBook's SDKs read dotted paths.

A value that is absent, or that consent does not let the decision read, is `MISSING`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from edgewise.core.records import Activity

__all__ = ["MISSING", "FeatureSource", "Path", "array_index", "replenish_days", "walk"]

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


def walk(value: Any, path: Path) -> Any:
    """The value at `path` below `value`, or MISSING: a part names an object's key, an array's index
    (`0`, `1`, ...: canonical decimal, no sign or leading zero) or an array's `length`, as GrowthBook's
    SDKs read dotted paths."""
    for part in path:
        if value.__class__ is dict or isinstance(value, Mapping):
            if part in value:
                value = value[part]
                continue
            return MISSING
        if value.__class__ is list or value.__class__ is tuple:
            index = array_index(part)
            if index is not None and index < len(value):
                value = value[index]
                continue
            if part == "length":
                value = len(value)
                continue
        return MISSING
    return value


def array_index(part: str) -> int | None:
    """`part` as an array index (`"0"`, `"12"`; not `"01"`, `"-1"`, `"+1"` or `"1.0"`), or None."""
    if part.isascii() and part.isdigit() and (part == "0" or part[0] != "0") and len(part) <= 10:
        return int(part)
    return None
