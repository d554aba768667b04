"""FeatureView: the one read-only view of profile, live activity and request context for one decision.

Consent is enforced here, not by convention: a profile attribute is readable only when the purpose its
schema declares is granted both by the request and by the profile's stored consent. Every read can be
recorded (for `explain`), including the ones consent refused.

A view is built for every request, so building one only stores its inputs: nothing is derived until a
read needs it (a profile read checks its one purpose against the request's grant and the profile's
stored consent, two set lookups; no per-view set of granted purposes is built).

Compiled conditions (edgewise.core.condition_codegen) read a view without going through `get`: for a path that
`inline_read` knows, they evaluate the Python expression it returns, which reads the view's slots
directly and applies the same consent rule. They do so only when the view records no reads (so
`explain` always goes through `get`, which records every read, denied ones included). `inline_read` is
the single place that knows both this class's layout and the path syntax; tests check that it answers
exactly like `get` for every kind of path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from edgewise.core.decisions import CONTEXT_FIELDS, Context
from edgewise.core.features import MISSING, Path, walk
from edgewise.core.records import Activity, ProfileRecord

if TYPE_CHECKING:  # version_state compiles rules, whose conditions import this module
    from edgewise.core.version_state import VersionState

__all__ = ["DENIED", "FeatureView", "inline_read"]

_CONTEXT_NAMES: Final = frozenset(CONTEXT_FIELDS)
DENIED: Final = "<not readable: purpose not granted>"


def _walk(value: Any, rest: Path) -> Any:
    for i, name in enumerate(rest):
        if value.__class__ is dict and name in value:  # the common case, without a call
            value = value[name]
        else:  # arrays (an index, `length`), other mappings, or absent
            return walk(value, rest[i:])
    return value


class FeatureView:
    """Implements `edgewise.core.features.FeatureSource` over one decision's inputs."""

    __slots__ = (
        "_activity",
        "_context",
        "_granted",
        "_now_ms",
        "_profile",
        "_state",
        "_user_id",
        "reads",
    )

    def __init__(  # positional on the hot path: keywords cost time (BENCHMARKS.md, "Fourth measurement")
        self,
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
        # Purposes granted by the request; a profile's own stored consent is checked per read.
        self._granted = granted
        self.reads: dict[str, str] | None = {} if record_reads else None

    @property
    def now_ms(self) -> int:
        return self._now_ms

    @property
    def activity(self) -> Activity | None:
        return self._activity

    def readable(self, attribute: str) -> bool:
        """Whether the profile attribute's purpose is granted by the request and, for a known profile, by
        its stored consent too (undeclared attributes never are)."""
        purpose = self._state.field_purposes.get(attribute)
        if purpose is None or purpose not in self._granted:
            return False
        return self._profile is None or purpose in self._profile.consent

    def get(self, path: Path) -> Any:
        value = self._lookup(path)
        if self.reads is not None:
            self.reads[".".join(path)] = DENIED if value is _DENIED else _show(value)
        return MISSING if value is _DENIED else value

    def _lookup(self, path: Path) -> Any:
        if len(path) < 2:
            return MISSING
        head, name = path[0], path[1]
        if head == "profile":
            if self._profile is None:
                return MISSING
            if not self.readable(name):
                return _DENIED
            return _walk(self._profile.attributes, path[1:])
        if head == "context":
            if name == "attributes":
                return _walk(self._context.attributes, path[2:])
            if len(path) == 2 and name in _CONTEXT_NAMES:
                value = getattr(self._context, name)
                return value if value else MISSING
            return MISSING
        if head == "activity":
            if self._activity is None or len(path) != 2:
                return MISSING
            if name == "views":
                return [item for item, _ in self._activity.views]
            if name == "cart":
                return list(self._activity.cart_items())
            if name == "purchases":
                return [item for item, _ in self._activity.purchases]
            return MISSING
        if head == "user" and len(path) == 2:
            if name == "id":
                return self._user_id or MISSING
            if name == "known":
                return self._profile is not None
        return MISSING

    def item_category(self, item_id: str) -> str | None:
        row = self._state.rows.get(item_id)
        return None if row is None else self._state.categories[row]

    def replenish_days(self, item_id: str) -> float | None:
        days = self._state.replenish_days.get(item_id)
        if days is not None:
            return days
        return 0.0 if item_id in self._state.rows else None


def inline_read(path: Path, const: Callable[[Any], str]) -> str | None:
    """A Python expression over a local `src` (a FeatureView that records no reads) whose value is what
    `src.get(path)` returns, except that MISSING (absent or not readable) is None; or None when the path
    has no inline form (the caller then calls `get`).

    The expression is built from fixed text only: names from the path become constants through
    `const(value) -> identifier` (the caller binds the identifier to the value); a context field name is
    spelled out only after it matched one of `CONTEXT_FIELDS`, and then in that tuple's own spelling.
    Profile reads apply `readable`'s rule: the attribute's purpose must be in the request's grant and in
    the profile's stored consent.
    """
    if len(path) < 2:
        return None
    head, name = path[0], path[1]
    if head == "profile" and len(path) == 2:
        key = const(name)
        return (
            f"(_p.attributes.get({key}) if (_p := src._profile) is not None"
            f" and (_u := src._state.field_purposes.get({key})) in src._granted and _u in _p.consent"
            " else None)"
        )
    if head == "context":
        if name == "attributes" and len(path) == 3:
            return f"src._context.attributes.get({const(path[2])})"
        if len(path) == 2 and name in _CONTEXT_NAMES:
            field = next(f for f in CONTEXT_FIELDS if f == name)  # the fixed spelling, not the input's
            return f"(src._context.{field} or None)"
        return None
    if head == "user" and len(path) == 2:
        if name == "id":
            return "(src._user_id or None)"
        if name == "known":
            return "(src._profile is not None)"
    return None


class _Denied:
    __slots__ = ()


_DENIED: Final[Any] = _Denied()


def _show(value: Any) -> str:
    if value is MISSING:
        return "<missing>"
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."
