"""Behavioural windows: segment specs over live activity (views, cart, purchases), compiled to closures.

`compile_behavior(doc)` turns a behaviour document (an object of specs, ANDed: `viewed`, `purchased`,
`cart_abandoned`, `replenishment_due`, `cart_size`; specified in docs/rules.md, "Segments") into a
`Condition` (the type of `edgewise.core.conditions`), or raises `ConditionError` naming the path of the
offending field.

Invariants: without activity (`FeatureSource.activity is None`: no consent, or no history) every spec
is false; a window's boundary is inside it (`now_ms - window <= timestamp`); counting follows the
activity record, which `core/activity.py` keeps to one entry per item (its latest view, cart add or
purchase), so "3 views of fashion" means three distinct fashion items viewed in the window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from edgewise.core.activity import newest_by_item
from edgewise.core.conditions import (
    Condition,
    ConditionError,
    ValueCondition,
    all_of,
    compile_value,
    json_type,
)
from edgewise.core.features import FeatureSource
from edgewise.core.records import Activity

__all__ = ["BEHAVIORS", "compile_behavior"]

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
WINDOWS: Final[Mapping[str, int]] = {
    "within_minutes": MINUTE_MS,
    "within_hours": HOUR_MS,
    "within_days": DAY_MS,
}
DEFAULT_MAX_OVERDUE_FACTOR: Final = 3.0
_NO_CUTOFF: Final = -(2**63)

Pairs = tuple[tuple[str, int], ...]
_ItemMatch = Callable[[FeatureSource, str], bool]


def _params(spec: Any, path: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ConditionError(path, f"must be an object of parameters, got {json_type(spec)}")
    for key in spec:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConditionError(f"{path}.{key}", f"unknown parameter (allowed: {known})")
    return spec


def _number(params: Mapping[str, Any], key: str, path: str) -> float:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConditionError(f"{path}.{key}", f"must be a number, got {json_type(value)}")
    return float(value)


def _positive(params: Mapping[str, Any], key: str, path: str) -> float:
    value = _number(params, key, path)
    if value <= 0:
        raise ConditionError(f"{path}.{key}", f"must be greater than 0, got {params[key]!r}")
    return value


def _count(params: Mapping[str, Any], path: str) -> int:
    value = params.get("min_count", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConditionError(f"{path}.min_count", f"must be an integer >= 1, got {value!r}")
    return value


def _window_ms(params: Mapping[str, Any], path: str) -> int | None:
    given = [key for key in WINDOWS if key in params]
    if len(given) > 1:
        raise ConditionError(f"{path}.{given[1]}", f"give one window, not both {given[0]} and {given[1]}")
    if not given:
        return None
    return round(_positive(params, given[0], path) * WINDOWS[given[0]])


def _text(params: Mapping[str, Any], key: str, path: str) -> str | None:
    if key not in params:
        return None
    value = params[key]
    if not isinstance(value, str) or not value:
        raise ConditionError(f"{path}.{key}", f"must be a non-empty string, got {value!r}")
    return value


def _item_match(params: Mapping[str, Any], path: str) -> _ItemMatch | None:
    """What an activity entry's item must be: one item, an item of a category subtree, or any (None)."""
    category = _text(params, "category", path)
    item = _text(params, "item", path)
    if category is not None and item is not None:
        raise ConditionError(f"{path}.item", "give either category or item, not both")
    if item is not None:
        wanted = item

        def is_item(source: FeatureSource, item_id: str) -> bool:
            return item_id == wanted

        return is_item
    if category is not None:
        top = category.strip("/")
        if not top:
            raise ConditionError(f"{path}.category", f"must name a category, got {category!r}")
        below = top + "/"

        def in_category(source: FeatureSource, item_id: str) -> bool:
            path_of_item = source.item_category(item_id)
            return path_of_item is not None and (path_of_item == top or path_of_item.startswith(below))

        return in_category
    return None


def _compile_events(select: Callable[[Activity], Pairs]) -> Callable[[Any, str], Condition]:
    """`viewed` / `purchased`: enough entries of matching items inside the window."""

    def compile_spec(spec: Any, path: str) -> Condition:
        params = _params(spec, path, {"category", "item", "min_count", *WINDOWS})
        match = _item_match(params, path)
        min_count = _count(params, path)
        window_ms = _window_ms(params, path)

        def happened(source: FeatureSource) -> bool:
            activity = source.activity
            if activity is None:
                return False
            entries = select(activity)
            if len(entries) < min_count:
                return False
            cutoff = _NO_CUTOFF if window_ms is None else source.now_ms - window_ms
            count = 0
            for item_id, timestamp in entries:
                if timestamp >= cutoff and (match is None or match(source, item_id)):
                    count += 1
                    if count >= min_count:
                        return True
            return False

        return happened

    return compile_spec


def _latest(entries: Pairs) -> int:
    latest = _NO_CUTOFF
    for _, timestamp in entries:
        if timestamp > latest:
            latest = timestamp
    return latest


def _compile_cart_abandoned(spec: Any, path: str) -> Condition:
    params = _params(spec, path, {"idle_minutes"})
    if "idle_minutes" not in params:
        raise ConditionError(f"{path}.idle_minutes", "is required (minutes without cart add or purchase)")
    idle_ms = round(_positive(params, "idle_minutes", path) * MINUTE_MS)

    def abandoned(source: FeatureSource) -> bool:
        activity = source.activity
        if activity is None or not activity.cart:
            return False
        last = _latest(activity.cart)
        if activity.purchases:
            last = max(last, _latest(activity.purchases))
        return source.now_ms - last >= idle_ms

    return abandoned


def _compile_replenishment_due(spec: Any, path: str) -> Condition:
    params = _params(spec, path, {"default_interval_days", "max_overdue_factor"})
    default_days: float | None = None
    if "default_interval_days" in params:
        default_days = _positive(params, "default_interval_days", path)
    factor = DEFAULT_MAX_OVERDUE_FACTOR
    if "max_overdue_factor" in params:
        factor = _number(params, "max_overdue_factor", path)
        if factor < 1:
            raise ConditionError(
                f"{path}.max_overdue_factor", f"must be at least 1, got {params['max_overdue_factor']!r}"
            )

    def due(source: FeatureSource) -> bool:
        activity = source.activity
        if activity is None or not activity.purchases:
            return False
        last_purchase = newest_by_item(activity.purchases)
        now = source.now_ms
        interval_of = source.replenish_days  # a per-version table: no flag parsing per purchase
        for item_id, timestamp in last_purchase.items():
            days = interval_of(item_id)
            if not days:  # None: an unknown item; 0.0: a known one without an interval
                if days is None or default_days is None:
                    continue
                days = default_days
            interval_ms = days * DAY_MS
            if interval_ms <= now - timestamp <= factor * interval_ms:
                return True
        return False

    return due


def _compile_cart_size(spec: Any, path: str) -> Condition:
    size_matches: ValueCondition
    if isinstance(spec, int) and not isinstance(spec, bool) and spec >= 0:
        size = spec

        def size_matches(n: Any) -> bool:
            return bool(n == size)

    elif isinstance(spec, dict) and spec and all(isinstance(k, str) and k.startswith("$") for k in spec):
        size_matches = compile_value(spec, path)
    else:
        raise ConditionError(
            path, f'must be an operator object such as {{"$gte": 2}} or an integer, got {json_type(spec)}'
        )

    def cart_size(source: FeatureSource) -> bool:
        activity = source.activity
        return activity is not None and size_matches(len(activity.cart))

    return cart_size


BEHAVIORS: Final[Mapping[str, Callable[[Any, str], Condition]]] = {
    "viewed": _compile_events(lambda activity: activity.views),
    "purchased": _compile_events(lambda activity: activity.purchases),
    "cart_abandoned": _compile_cart_abandoned,
    "replenishment_due": _compile_replenishment_due,
    "cart_size": _compile_cart_size,
}


def compile_behavior(doc: Any, path: str = "behavior") -> Condition:
    """Compile a behaviour document (specs ANDed); raise ConditionError naming the offending field."""
    if not isinstance(doc, dict):
        raise ConditionError(path, f"must be an object of behaviours, got {json_type(doc)}")
    if not doc:
        raise ConditionError(path, f"must name at least one behaviour ({', '.join(BEHAVIORS)})")
    preds: list[Condition] = []
    for key, spec in doc.items():
        compile_spec = BEHAVIORS.get(key)
        if compile_spec is None:
            raise ConditionError(f"{path}.{key}", f"unknown behaviour (known: {', '.join(BEHAVIORS)})")
        preds.append(compile_spec(spec, f"{path}.{key}"))
    return all_of(preds)
