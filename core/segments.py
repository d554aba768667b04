"""Segments: named audiences of a rules version, compiled once, evaluated per request (memoized).

`compile_segments(doc)` turns the `segments` object of a rules document into a `SegmentSet`, or raises
`ConditionError` with the dotted path of the offending field (e.g.
`segments.cart_abandoners.behavior.cart_abandoned.idle_minutes`):

    "segments": {
        "fashion_fans": {
            "description": "viewed fashion 3+ times this week",
            "behavior": {"viewed": {"category": "fashion", "min_count": 3, "within_days": 7}}
        },
        "dach_mobile": {
            "condition": {"context.country": {"$in": ["DE", "AT", "CH"]}, "context.device": "mobile"}
        }
    }

A segment has a `condition` (docs/conditions.md; `edgewise.core.condition_codegen`), a `behavior` (see
`edgewise.core.behavior`), or both, ANDed (the condition first: it is the cheaper one), and an optional
`description`. Segment ids match `[A-Za-z0-9_.:-]{1,64}`.

Per request, `SegmentSet.memo(source)` evaluates each segment at most once, and only when asked, so
a request pays for the segments its placements reference and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edgewise.core.behavior import compile_behavior
from edgewise.core.condition_codegen import compile_condition
from edgewise.core.conditions import Condition, ConditionError, all_of, json_type
from edgewise.core.features import FeatureSource

__all__ = ["SEGMENT_ID", "Segment", "SegmentMemo", "SegmentSet", "compile_segments"]

SEGMENT_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_FIELDS: Final = ("condition", "behavior", "description")


@dataclass(frozen=True, slots=True)
class Segment:
    id: str
    description: str
    matches: Condition
    has_condition: bool
    has_behavior: bool  # reads live activity


class SegmentSet:
    """The compiled segments of one rules version (immutable, shared by every request of the version)."""

    __slots__ = ("_predicates", "ids", "segments")

    def __init__(self, segments: Iterable[Segment]) -> None:
        by_id = {segment.id: segment for segment in segments}
        self.segments: Mapping[str, Segment] = by_id
        self.ids: tuple[str, ...] = tuple(by_id)
        self._predicates: dict[str, Condition] = {sid: segment.matches for sid, segment in by_id.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, segment_id: object) -> bool:
        return segment_id in self._predicates

    def _predicate(self, segment_id: str) -> Condition:
        try:
            return self._predicates[segment_id]
        except KeyError:
            raise KeyError(f"unknown segment {segment_id!r}") from None

    def matches(self, segment_id: str, source: FeatureSource) -> bool:
        """Whether `source` is in the segment (KeyError for an unknown id)."""
        return self._predicate(segment_id)(source)

    def evaluate(self, source: FeatureSource, only: Iterable[str] | None = None) -> frozenset[str]:
        """The ids of the segments `source` is in, among `only` (default: all segments)."""
        ids = self.ids if only is None else only
        return frozenset(sid for sid in ids if self._predicate(sid)(source))

    def memo(self, source: FeatureSource) -> SegmentMemo:
        """A per-request view that evaluates each segment at most once."""
        return SegmentMemo(self, source)


class SegmentMemo:
    """Segment membership of one request's feature view, each segment evaluated at most once."""

    __slots__ = ("_results", "_segments", "_source")

    def __init__(self, segments: SegmentSet, source: FeatureSource) -> None:
        self._segments = segments
        self._source = source
        self._results: dict[str, bool] = {}

    @property
    def source(self) -> FeatureSource:
        """The feature view the segments are evaluated on."""
        return self._source

    def matches(self, segment_id: str) -> bool:
        result = self._results.get(segment_id)
        if result is None:
            result = self._segments.matches(segment_id, self._source)
            self._results[segment_id] = result
        return result

    def matches_any(self, segment_ids: Iterable[str]) -> bool:
        """True if the request is in at least one of `segment_ids` (evaluated lazily, in order)."""
        return any(self.matches(sid) for sid in segment_ids)

    def matches_all(self, segment_ids: Iterable[str]) -> bool:
        """True if the request is in every one of `segment_ids` (evaluated lazily, in order)."""
        return all(self.matches(sid) for sid in segment_ids)

    @property
    def evaluated(self) -> Mapping[str, bool]:
        """Every segment evaluated so far and its result (for explanations)."""
        return dict(self._results)

    def matched(self) -> frozenset[str]:
        """The segments evaluated so far that matched."""
        return frozenset(sid for sid, result in self._results.items() if result)


def _compile_segment(segment_id: Any, body: Any) -> Segment:
    if not isinstance(segment_id, str) or not SEGMENT_ID.fullmatch(segment_id):
        raise ConditionError(
            f"segments.{segment_id}",
            f"invalid segment id {segment_id!r}: use 1 to 64 characters of A-Z a-z 0-9 _ . : -",
        )
    path = f"segments.{segment_id}"
    if not isinstance(body, dict):
        raise ConditionError(path, f"must be an object with condition and/or behavior, got {json_type(body)}")
    for key in body:
        if key not in _FIELDS:
            raise ConditionError(f"{path}.{key}", f"unknown field (allowed: {', '.join(_FIELDS)})")
    if "condition" not in body and "behavior" not in body:
        raise ConditionError(path, "needs a condition, a behavior, or both")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise ConditionError(f"{path}.description", f"must be a string, got {json_type(description)}")
    parts: list[Condition] = []
    if "condition" in body:
        parts.append(compile_condition(body["condition"], f"{path}.condition"))
    if "behavior" in body:
        parts.append(compile_behavior(body["behavior"], f"{path}.behavior"))
    return Segment(segment_id, description, all_of(parts), "condition" in body, "behavior" in body)


def compile_segments(doc: Any) -> SegmentSet:
    """Compile the `segments` object of a rules document; raise ConditionError naming the bad field."""
    if not isinstance(doc, dict):
        raise ConditionError("segments", f"must be an object of segment id -> segment, got {json_type(doc)}")
    return SegmentSet(_compile_segment(segment_id, body) for segment_id, body in doc.items())
