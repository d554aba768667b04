"""The domain: records, store layout, rules, experiments, scoring kernels, decision pipeline.

Pure: no sockets, no gRPC, no protobuf. The public, typed surface for an embedder:

    from edgewise.core import Context, DecideRequest, Pipeline, PlacementRequest, Store

    with Store("/var/lib/edgewise") as store, store.read() as view:
        response = Pipeline().decide(view, DecideRequest(
            user_id="u1", session_id="", context=Context(country="DE"),
            consent=frozenset({"personalization"}), placements=(PlacementRequest("home", 5),),
            now_ms=1_767_225_600_000))

Type names follow the protobuf messages of `edgewise.v1` (DecideRequest, PlacementRequest,
DecideResponse, PlacementDecision, ItemResult, Explanation, FallbackReason, Event, TrackResponse).
"""

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.decisions import (
    Context,
    DecideRequest,
    DecideResponse,
    Explanation,
    FallbackReason,
    ItemExplanation,
    ItemResult,
    PlacementDecision,
    PlacementExplanation,
    PlacementRequest,
    RequestError,
)
from edgewise.core.pipeline import Pipeline, SnapshotMissing
from edgewise.core.records import ItemRecord, ProfileRecord
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import ReadView, Store, StoreError, StoreFull, TrackResponse

__all__ = [
    "ActivityLimits",
    "Context",
    "DecideRequest",
    "DecideResponse",
    "Event",
    "Explanation",
    "FallbackReason",
    "ItemExplanation",
    "ItemRecord",
    "ItemResult",
    "Pipeline",
    "PlacementDecision",
    "PlacementExplanation",
    "PlacementRequest",
    "ProfileRecord",
    "ReadView",
    "RequestError",
    "SnapshotInfo",
    "SnapshotMissing",
    "Store",
    "StoreError",
    "StoreFull",
    "TrackResponse",
]
