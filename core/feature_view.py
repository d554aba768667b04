"""FeatureView: the one read-only view of profile, live activity and request context for one decision.

Consent is enforced here, not by convention: a profile attribute is readable only when the purpose its
schema declares is granted both by the request and by the profile's stored consent. Every read can be
recorded (for `explain`), including the ones consent refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from edgewise.core.decisions import CONTEXT_FIELDS, Context
from edgewise.core.features import MISSING, Path
from edgewise.core.records import Activity, ProfileRecord
from edgewise.core.version_state import VersionState

__all__ = ["FeatureView"]

_CONTEXT_NAMES: Final = frozenset(CONTEXT_FIELDS)
DENIED: Final = "<not readable: purpose not granted>"


def _walk(value: Any, rest: Path) -> Any:
    for name in rest:
        if isinstance(value, Mapping) and name in value:
            value = value[name]
        else:
            return MISSING
    return value


class FeatureView:
    """Implements `edgewise.core.features.FeatureSource` over one decision's inputs."""

    __slots__ = (
        "_activity",
        "_context",
        "_granted",
        "_now_ms",
        "_profile",
        "_purposes",
        "_state",
        "_user_id",
        "reads",
    )

    def __init__(
        self,
        *,
        state: VersionState,
        context: Context,
        now_ms: int,
        user_id: str,
        profile: ProfileRecord | None,
        activity: Activity | None,
        granted: frozenset[str],
        record_reads: bool = False,
    ) -> None:
        self._state = state
        self._context = context
        self._now_ms = now_ms
        self._user_id = user_id
        self._profile = profile
        self._activity = activity
        # Purposes granted by the request and, for a known profile, by its stored consent too.
        self._granted = granted if profile is None else granted & frozenset(profile.consent)
        self._purposes = state.field_purposes
        self.reads: dict[str, str] | None = {} if record_reads else None

    @property
    def now_ms(self) -> int:
        return self._now_ms

    @property
    def activity(self) -> Activity | None:
        return self._activity

    def readable(self, attribute: str) -> bool:
        """Whether the profile attribute's purpose is granted (undeclared attributes never are)."""
        purpose = self._purposes.get(attribute)
        return purpose is not None and purpose in self._granted

    def get(self, path: Path) -> Any:
        value = self._lookup(path)
        if self.reads is not None:
            self.reads[".".join(path)] = DENIED if value is _DENIED else _show(value)
        return MISSING if value is _DENIED else value

    def _lookup(self, path: Path) -> Any:
        if not path:
            return MISSING
        head = path[0]
        if head == "profile":
            if self._profile is None or len(path) < 2:
                return MISSING
            if not self.readable(path[1]):
                return _DENIED
            return _walk(self._profile.attributes, path[1:])
        if head == "context":
            if len(path) >= 2 and path[1] == "attributes":
                return _walk(self._context.attributes, path[2:])
            if len(path) == 2 and path[1] in _CONTEXT_NAMES:
                value = getattr(self._context, path[1])
                return value if value else MISSING
            return MISSING
        if head == "activity":
            if self._activity is None or len(path) != 2:
                return MISSING
            if path[1] == "views":
                return [item for item, _ in self._activity.views]
            if path[1] == "cart":
                return list(self._activity.cart_items())
            if path[1] == "purchases":
                return [item for item, _ in self._activity.purchases]
            return MISSING
        if head == "user" and len(path) == 2:
            if path[1] == "id":
                return self._user_id or MISSING
            if path[1] == "known":
                return self._profile is not None
        return MISSING

    def item_category(self, item_id: str) -> str | None:
        row = self._state.rows.get(item_id)
        return None if row is None else self._state.categories[row]

    def item_flags(self, item_id: str) -> Mapping[str, Any] | None:
        row = self._state.rows.get(item_id)
        return None if row is None else self._state.flags[row]


class _Denied:
    __slots__ = ()


_DENIED: Final[Any] = _Denied()


def _show(value: Any) -> str:
    if value is MISSING:
        return "<missing>"
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."
