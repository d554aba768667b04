"""The public, typed client of edgewise: `EdgeClient` (and `AsyncEdgeClient`) for an edge's Decide, Track
and health, `ControlClient` for a control plane's ops calls. Requests and answers are plain dataclasses
(the core types of `edgewise.core`, and the ops replies of `edgewise.sync.ops_replies`), never protobuf
messages; a request may also be a dict in the shape of its dataclass (`edgewise.client.dicts`).

    from edgewise.client import ControlClient, EdgeClient

    with ControlClient("127.0.0.1:50061", token=ops_token) as control:
        version = control.push("./bundle").version
        print([(e.node_id, e.applied_version, e.state) for e in control.status().edges])

    with EdgeClient("127.0.0.1:50051") as edge:
        response = edge.decide({"user_id": "u1", "consent": ["personalization"],
                                "placements": [{"placement_id": "home", "count": 5}]})
        edge.track({"type": "click", "user_id": "u1", "item_id": response.placements[0].items[0].id,
                    "decision_id": response.decision_id, "placement_id": "home"},
                   consent=["analytics", "personalization"])

Errors: every failed call raises `ClientError` with the gRPC status `code` and the server's `details`;
arguments that cannot be sent raise ValueError (`AuthError` for a token or TLS setting, `BundleError`
for a bundle refused before upload) before any call.
"""

from edgewise.client.control import ControlClient, Metric, SliceBy
from edgewise.client.edge import PERSONALIZER_SERVICE, AsyncEdgeClient, EdgeClient, HealthStatus
from edgewise.client.errors import ClientError
from edgewise.core.activity import Event
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
)
from edgewise.core.store import TrackResponse
from edgewise.sync.auth import AuthError
from edgewise.sync.bundle import BundleError
from edgewise.sync.ops_replies import (
    BundleInfo,
    Commit,
    EdgeStatus,
    FleetStatus,
    ForgetResult,
    ForgetStatus,
    ForgottenUser,
    History,
    PushResult,
    Rollout,
    RolloutHealth,
    ServingStats,
    ShadowStats,
)

__all__ = [
    "PERSONALIZER_SERVICE",
    "AsyncEdgeClient",
    "AuthError",
    "BundleError",
    "BundleInfo",
    "ClientError",
    "Commit",
    "Context",
    "ControlClient",
    "DecideRequest",
    "DecideResponse",
    "EdgeClient",
    "EdgeStatus",
    "Event",
    "Explanation",
    "FallbackReason",
    "FleetStatus",
    "ForgetResult",
    "ForgetStatus",
    "ForgottenUser",
    "HealthStatus",
    "History",
    "ItemExplanation",
    "ItemResult",
    "Metric",
    "PlacementDecision",
    "PlacementExplanation",
    "PlacementRequest",
    "PushResult",
    "Rollout",
    "RolloutHealth",
    "ServingStats",
    "ShadowStats",
    "SliceBy",
    "TrackResponse",
]
