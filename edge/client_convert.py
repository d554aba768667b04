"""Core <-> protobuf conversion on the caller's side of the Personalizer service (`edgewise.client`,
`edgewise call`): what edge/convert.py does for the servicer, the other way round.

    core DecideRequest   -> pb DecideRequest    decide_request_to_pb
    pb DecideResponse    -> core DecideResponse decide_response_from_pb (the decision id included)
    core Event(s)        -> pb TrackRequest     track_request_to_pb (event_to_pb per event)
    pb TrackResponse     <-> core TrackResponse track_response_from_pb, track_response_to_pb

No validation here: the edge validates what it receives (edge/convert.py) and answers INVALID_ARGUMENT
naming the field. Round trips hold for everything the wire carries: `decide_input(decide_request_to_pb(r))`
is `r` (with the edge's `now_ms`), `decide_response_from_pb(decide_response(d, id))` is `d` with
`decision_id=id`. What the wire does not carry comes back at its default: a request's `now_ms` (the edge
sets the decision time), a placement's `campaign` and `bandit_segment`, a response's `segments` (with
`explain`, the matched segments are in `explanation.segments`), and an event's `analytics` and
`personalization` (the edge derives them from the TrackRequest's `consent`).
"""

from __future__ import annotations

from collections.abc import Iterable

from edgewise.core.activity import Event
from edgewise.core.decisions import (
    DecideRequest,
    DecideResponse,
    Explanation,
    FallbackReason,
    ItemExplanation,
    ItemResult,
    PlacementDecision,
    PlacementExplanation,
)
from edgewise.core.store import TrackResponse
from edgewise.v1 import personalizer_pb2 as _pb

__all__ = [
    "decide_request_to_pb",
    "decide_response_from_pb",
    "event_to_pb",
    "track_request_to_pb",
    "track_response_from_pb",
    "track_response_to_pb",
]


def decide_request_to_pb(request: DecideRequest) -> _pb.DecideRequest:
    """The DecideRequest message of a core request (`now_ms` is not sent: the edge decides when)."""
    ctx = request.context
    return _pb.DecideRequest(
        user_id=request.user_id,
        session_id=request.session_id,
        context=_pb.Context(
            channel=ctx.channel,
            device=ctx.device,
            language=ctx.language,
            country=ctx.country,
            region=ctx.region,
            journey_stage=ctx.journey_stage,
            page_type=ctx.page_type,
            local_time=ctx.local_time,
            url=ctx.url,
            referrer=ctx.referrer,
            attributes=dict(ctx.attributes),
        ),
        consent=sorted(request.consent),
        placements=[
            _pb.PlacementRequest(
                placement_id=p.placement_id,
                count=p.count,
                candidate_ids=p.candidate_ids,
                seed_item_ids=p.seed_item_ids,
                exclude_ids=p.exclude_ids,
                filter=p.filter,
                filter_params=dict(p.filter_params),
            )
            for p in request.placements
        ],
        explain=request.explain,
    )


def _explanation(why: _pb.Explanation) -> Explanation:
    return Explanation(
        user_known=why.user_known,
        personalization_allowed=why.personalization_allowed,
        segments=tuple(why.segments),
        features=dict(why.features),
        placements=[
            PlacementExplanation(
                placement_id=p.placement_id,
                strategy=p.strategy,
                rule=p.rule,
                bucket=p.bucket,
                unit_id=p.unit_id,
                candidates=p.candidates,
                seed_item_ids=tuple(p.seed_item_ids),
                notes=list(p.notes),
                campaign=p.campaign,
                experiment_id=p.experiment_id,
                variant_id=p.variant_id,
                items=[ItemExplanation(id=i.id, parts=dict(i.parts), notes=list(i.notes)) for i in p.items],
            )
            for p in why.placements
        ],
    )


def decide_response_from_pb(response: _pb.DecideResponse) -> DecideResponse:
    """The core DecideResponse of a DecideResponse message, its `decision_id` included.

    A fallback reason this version does not know (a newer edge) raises ValueError naming it."""
    placements = []
    for p in response.placements:
        try:
            fallback = FallbackReason(p.fallback_reason)
        except ValueError:
            raise ValueError(
                f"placement {p.placement_id!r}: fallback_reason {int(p.fallback_reason)} is not one this "
                "client knows (is the edge newer? upgrade edgewise)"
            ) from None
        placements.append(
            PlacementDecision(
                placement_id=p.placement_id,
                items=[ItemResult(i.id, i.score, i.reason, i.promoted) for i in p.items],
                content_id=p.content_id,
                experiment_id=p.experiment_id,
                variant_id=p.variant_id,
                propensity=p.propensity,
                strategy=p.strategy,
                fallback=fallback,
            )
        )
    return DecideResponse(
        snapshot_version=response.snapshot_version,
        placements=placements,
        explanation=_explanation(response.explanation) if response.HasField("explanation") else None,
        decision_id=response.decision_id,
    )


def event_to_pb(event: Event) -> _pb.Event:
    """The Event message of a core event (`analytics`/`personalization` are not sent: the TrackRequest's
    consent decides them on the edge)."""
    return _pb.Event(
        event_id=event.event_id,
        type=event.type,
        user_id=event.user_id,
        session_id=event.session_id,
        item_id=event.item_id,
        decision_id=event.decision_id,
        placement_id=event.placement_id,
        value=event.value,
        timestamp_ms=event.timestamp_ms,
    )


def track_request_to_pb(events: Iterable[Event], consent: Iterable[str]) -> _pb.TrackRequest:
    """A TrackRequest of `events` under the purposes granted in `consent`."""
    return _pb.TrackRequest(events=[event_to_pb(e) for e in events], consent=sorted(set(consent)))


def track_response_from_pb(response: _pb.TrackResponse) -> TrackResponse:
    """The core TrackResponse of a TrackResponse message (`new`, per event, is not on the wire: empty)."""
    return TrackResponse(accepted=response.accepted, duplicates=response.duplicates)


def track_response_to_pb(response: TrackResponse) -> _pb.TrackResponse:
    return _pb.TrackResponse(accepted=response.accepted, duplicates=response.duplicates)
