"""Plain dicts as requests: a dict in the shape of the core dataclass (its field names, nested dicts for
nested dataclasses, lists for tuples and sets) becomes that dataclass, or a ValueError naming the path
of the offending key (`placements[0].count: expected an int, got 'five'`).

    {"user_id": "u1", "consent": ["personalization"], "context": {"country": "DE"},
     "placements": [{"placement_id": "home", "count": 5}], "explain": True}     -> DecideRequest
    {"type": "view", "user_id": "u1", "item_id": "i4"}                           -> Event

Every key is optional except a placement's `placement_id` and an event's `type`. An event without an
`event_id` gets a new random one (the idempotency key: a retry of the same dict is a new event, so
give one when retrying). The field names are the protobuf's too (snake_case); this is not protobuf's
JSON mapping (no camelCase, no enum names).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from edgewise.core.activity import Event
from edgewise.core.decisions import CONTEXT_FIELDS, Context, DecideRequest, PlacementRequest

__all__ = ["decide_request", "event"]

_CONTEXT_KEYS = frozenset(f.name for f in fields(Context))
_PLACEMENT_KEYS = frozenset(f.name for f in fields(PlacementRequest))
_REQUEST_KEYS = frozenset(f.name for f in fields(DecideRequest))
_EVENT_KEYS = frozenset(f.name for f in fields(Event))


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path or 'the request'}: expected a dict, got {type(value).__name__}")
    return value


def _keys(value: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        where = f"{path}: " if path else ""
        raise ValueError(f"{where}unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")


def _str(value: Mapping[str, Any], key: str, path: str) -> str:
    got = value.get(key, "")
    if not isinstance(got, str):
        raise ValueError(f"{path}{key}: expected a string, got {got!r}")
    return got


def _int(value: Mapping[str, Any], key: str, path: str) -> int:
    got = value.get(key, 0)
    if isinstance(got, bool) or not isinstance(got, int):
        raise ValueError(f"{path}{key}: expected an int, got {got!r}")
    return got


def _float(value: Mapping[str, Any], key: str, path: str) -> float:
    got = value.get(key, 0.0)
    if isinstance(got, bool) or not isinstance(got, int | float):
        raise ValueError(f"{path}{key}: expected a number, got {got!r}")
    return float(got)


def _bool(value: Mapping[str, Any], key: str, path: str, default: bool = False) -> bool:
    got = value.get(key, default)
    if not isinstance(got, bool):
        raise ValueError(f"{path}{key}: expected true or false, got {got!r}")
    return got


def _strings(value: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    got = value.get(key, ())
    # a bare string is a sequence of characters: refused rather than split into one-letter ids
    if isinstance(got, str | bytes) or not isinstance(got, Sequence | set | frozenset):
        raise ValueError(f"{path}{key}: expected a list of strings, got {got!r}")
    for i, item in enumerate(got):
        if not isinstance(item, str):
            raise ValueError(f"{path}{key}[{i}]: expected a string, got {item!r}")
    return tuple(got)


def _string_map(value: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    got = _mapping(value.get(key, {}), f"{path}{key}")
    for k, v in got.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"{path}{key}: expected strings as keys and values, got {k!r}: {v!r}")
    return dict(got)


def _context(value: object) -> Context:
    ctx = _mapping(value, "context")
    _keys(ctx, _CONTEXT_KEYS, "context")
    named = {name: _str(ctx, name, "context.") for name in CONTEXT_FIELDS}
    return Context(**named, attributes=_string_map(ctx, "attributes", "context."))


def _placement(value: object, path: str) -> PlacementRequest:
    p = _mapping(value, path)
    _keys(p, _PLACEMENT_KEYS, path)
    prefix = f"{path}."
    if not p.get("placement_id"):
        raise ValueError(f"{prefix}placement_id: is required")
    return PlacementRequest(
        placement_id=_str(p, "placement_id", prefix),
        count=_int(p, "count", prefix),
        candidate_ids=_strings(p, "candidate_ids", prefix),
        seed_item_ids=_strings(p, "seed_item_ids", prefix),
        exclude_ids=_strings(p, "exclude_ids", prefix),
        filter=_str(p, "filter", prefix),
        filter_params=_string_map(p, "filter_params", prefix),
    )


def decide_request(value: Mapping[str, Any]) -> DecideRequest:
    """The DecideRequest of a dict in its shape (`now_ms` is accepted and not sent: the edge sets the
    decision time)."""
    request = _mapping(value, "")
    _keys(request, _REQUEST_KEYS, "")
    placements = request.get("placements", ())
    if isinstance(placements, str | bytes | Mapping) or not isinstance(placements, Sequence):
        raise ValueError(f"placements: expected a list of dicts, got {placements!r}")
    return DecideRequest(
        user_id=_str(request, "user_id", ""),
        session_id=_str(request, "session_id", ""),
        context=_context(request.get("context", {})),
        consent=frozenset(_strings(request, "consent", "")),
        placements=tuple(_placement(p, f"placements[{i}]") for i, p in enumerate(placements)),
        explain=_bool(request, "explain", ""),
        now_ms=_int(request, "now_ms", ""),
    )


def event(value: Mapping[str, Any], path: str = "event") -> Event:
    """The Event of a dict in its shape; `event_id` defaults to a new random id, `timestamp_ms` to 0 (the
    edge's time of receipt). `analytics` and `personalization` are accepted and not sent: the
    TrackRequest's consent decides them."""
    e = _mapping(value, path)
    _keys(e, _EVENT_KEYS, path)
    prefix = f"{path}."
    if not e.get("type"):
        raise ValueError(f"{prefix}type: is required (view, click, add_to_cart, purchase, ...)")
    return Event(
        event_id=_str(e, "event_id", prefix) or uuid.uuid4().hex,
        type=_str(e, "type", prefix),
        user_id=_str(e, "user_id", prefix),
        session_id=_str(e, "session_id", prefix),
        item_id=_str(e, "item_id", prefix),
        decision_id=_str(e, "decision_id", prefix),
        placement_id=_str(e, "placement_id", prefix),
        value=_float(e, "value", prefix),
        timestamp_ms=_int(e, "timestamp_ms", prefix),
        analytics=_bool(e, "analytics", prefix, True),
        personalization=_bool(e, "personalization", prefix, True),
    )
