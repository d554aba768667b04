"""What a decision is asked and what it answers: plain data, independent of gRPC and protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Final

__all__ = [
    "CONTEXT_FIELDS",
    "Context",
    "DecideRequest",
    "DecideResponse",
    "Explanation",
    "FallbackReason",
    "ItemExplanation",
    "ItemResult",
    "PlacementDecision",
    "PlacementExplanation",
    "PlacementRequest",
    "RequestError",
]

PERSONALIZATION = "personalization"


class FallbackReason(IntEnum):
    """Why a placement got the default experience. Numbers match edgewise.v1.FallbackReason."""

    NONE = 0
    NO_CONSENT = 1
    UNKNOWN_USER = 2
    COLD_START = 3
    MODEL_UNAVAILABLE = 4
    BUDGET_EXCEEDED = 5
    OVERLOADED = 6
    HOLDOUT = 7


class RequestError(ValueError):
    """A request the caller must fix; `field` names the offending field (proto path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Context:
    channel: str = ""
    device: str = ""
    language: str = ""
    country: str = ""
    region: str = ""
    journey_stage: str = ""
    page_type: str = ""
    local_time: str = ""
    url: str = ""
    referrer: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


CONTEXT_FIELDS: Final = tuple(f.name for f in fields(Context) if f.name != "attributes")
"""The named fields of a request context (everything but the custom `attributes`)."""


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    placement_id: str
    count: int = 0  # 0 = the placement's default
    candidate_ids: tuple[str, ...] = ()
    seed_item_ids: tuple[str, ...] = ()
    exclude_ids: tuple[str, ...] = ()
    filter: str = ""
    filter_params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DecideRequest:
    user_id: str = ""
    session_id: str = ""
    context: Context = field(default_factory=Context)
    consent: frozenset[str] = frozenset()
    placements: tuple[PlacementRequest, ...] = ()
    explain: bool = False
    now_ms: int = 0  # decision time (Unix ms), set by the caller: core never reads the clock


@dataclass(slots=True)
class ItemResult:
    id: str
    score: float
    reason: str
    promoted: bool = False


@dataclass(slots=True)
class ItemExplanation:
    id: str
    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PlacementExplanation:
    placement_id: str
    strategy: str = ""
    rule: str = ""
    bucket: int = 0
    unit_id: str = ""
    candidates: int = 0
    seed_item_ids: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    campaign: str = ""
    experiment_id: str = ""
    variant_id: str = ""
    items: list[ItemExplanation] = field(default_factory=list)


@dataclass(slots=True)
class Explanation:
    user_known: bool = False
    personalization_allowed: bool = False
    segments: tuple[str, ...] = ()
    features: dict[str, str] = field(default_factory=dict)
    placements: list[PlacementExplanation] = field(default_factory=list)


@dataclass(slots=True)
class PlacementDecision:
    placement_id: str
    items: list[ItemResult] = field(default_factory=list)
    content_id: str = ""
    experiment_id: str = ""
    variant_id: str = ""
    propensity: float = 1.0
    strategy: str = ""
    fallback: FallbackReason = FallbackReason.NONE
    campaign: str = ""  # the campaign that served, "" for the placement default
    bandit_segment: str = ""  # the segment whose bandit posteriors served, "" for the global ones
    context_vector: tuple[float, ...] = ()  # a contextual bandit's feature vector x (its exposures learn)


@dataclass(slots=True)
class DecideResponse:
    snapshot_version: int
    placements: list[PlacementDecision]
    explanation: Explanation | None = None
    segments: tuple[str, ...] = ()  # the segments the decision evaluated that matched, sorted
    # The id a caller carries back in Track for attribution. The pipeline leaves it empty: the edge
    # assigns one per call (edge/convert.py's new_decision_id) and `edgewise.client` fills it in.
    decision_id: str = ""
