"""Protobuf <-> core conversion for the Personalizer service, with request validation at the boundary.

Every violation raises `RequestError` naming the field (as a proto path) and the cap or rule, which the
servicer returns as INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from edgewise.core.activity import Event
from edgewise.core.decisions import (
    CONTEXT_FIELDS,
    Context,
    DecideRequest,
    DecideResponse,
    Explanation,
    PlacementRequest,
    RequestError,
)
from edgewise.edge import _wire
from edgewise.v1 import personalizer_pb2 as _pb

__all__ = [
    "Limits",
    "Undecodable",
    "decide_input",
    "decide_input_bytes",
    "decide_response",
    "new_decision_id",
    "tracked_events",
]

_EVENT_TYPE: Final = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")  # the whole type: `fullmatch`, never `$`
MAX_KEY_ID_BYTES: Final = 400
"""User, session and event ids become LMDB keys (profiles, activity, event ids; upstream too): at most
this many bytes of UTF-8 whatever `max_id_length` allows in characters (LMDB keys end at 511 bytes, and
the control plane's event store takes event ids of up to 400)."""
_FAST_KEY_ID_CHARS: Final = MAX_KEY_ID_BYTES // 4  # at most 4 bytes of UTF-8 per character


EARLIEST_EVENT_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z: earlier event times are unit slips


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one call may carry (violations are INVALID_ARGUMENT naming the field and the cap)."""

    max_placements: int = 16
    max_ids: int = 500  # candidate_ids, exclude_ids per placement
    max_seeds: int = 50
    max_attributes: int = 64
    max_id_length: int = 128  # user, session, item, event, placement ids
    max_string_length: int = 2048  # url, referrer, attribute values, other strings
    max_consents: int = 32
    max_events: int = 500
    max_future_seconds: int = 86_400  # how far after this node's clock an event's timestamp_ms may be


def _check_str(value: str, field: str, cap: int) -> str:
    if len(value) > cap:
        raise RequestError(field, f"is {len(value)} characters long, more than the cap of {cap}")
    return value


def _check_key_id(value: str, field: str, limits: Limits) -> str:
    """An id that becomes an LMDB key: the character cap, then `MAX_KEY_ID_BYTES` of UTF-8."""
    _check_str(value, field, limits.max_id_length)
    if len(value) > _FAST_KEY_ID_CHARS and (size := len(value.encode())) > MAX_KEY_ID_BYTES:
        raise RequestError(field, f"is {size} bytes of UTF-8, more than the cap of {MAX_KEY_ID_BYTES}")
    return value


def _check_ids(values: Sequence[str], field: str, cap: int, limits: Limits) -> tuple[str, ...]:
    if len(values) > cap:
        raise RequestError(field, f"has {len(values)} entries, more than the cap of {cap}")
    for j, value in enumerate(values):
        _check_str(value, f"{field}[{j}]", limits.max_id_length)
    return tuple(values)


def _check_map(values: Mapping[str, str], field: str, limits: Limits) -> dict[str, str]:
    if len(values) > limits.max_attributes:
        raise RequestError(field, f"has {len(values)} entries, more than the cap of {limits.max_attributes}")
    for key, value in values.items():
        _check_str(key, f"{field}[{key[:32]!r}] (key)", limits.max_id_length)
        _check_str(value, f"{field}[{key[:32]!r}]", limits.max_string_length)
    return dict(values)


def _context(ctx: _pb.Context, field: str, limits: Limits) -> Context:
    values = {
        name: _check_str(getattr(ctx, name), f"{field}.{name}", limits.max_string_length)
        for name in CONTEXT_FIELDS
    }
    return Context(**values, attributes=_check_map(ctx.attributes, f"{field}.attributes", limits))


class _Recheck(Exception):
    """The fast path met something it does not accept: the checked path says what (or accepts it)."""


def _fits(values: Sequence[str], cap: int) -> bool:
    return not values or max(map(len, values)) <= cap


def _fast_map(values: Mapping[str, str], limits: Limits) -> dict[str, str]:
    if not values:
        return {}
    if (
        len(values) > limits.max_attributes
        or not _fits(list(values.keys()), limits.max_id_length)
        or not _fits(list(values.values()), limits.max_string_length)
    ):
        raise _Recheck
    return dict(values)


def _decide_input_fast(request: _pb.DecideRequest, limits: Limits, now_ms: int) -> DecideRequest:
    """`decide_input` for a request within every cap, without building field names (this runs on every
    Decide); raises _Recheck at the first doubt, and `_decide_input_checked` then names the field.

    Cheap on upb messages: an empty repeated field becomes `()` without `tuple()`, and the context's ten
    strings are accepted when their total length is within the cap (then each one is; otherwise the
    checked path looks at each). BENCHMARKS.md has the figures."""
    id_cap = min(limits.max_id_length, _FAST_KEY_ID_CHARS)  # longer ids: the checked path counts bytes
    max_ids = limits.max_ids
    user_id, session_id = request.user_id, request.session_id
    placements = request.placements
    consent = request.consent
    if (
        len(user_id) > id_cap
        or len(session_id) > id_cap
        or not 0 < len(placements) <= limits.max_placements
        or len(consent) > limits.max_consents
        or not _fits(consent, id_cap)
    ):
        raise _Recheck
    asks = []
    seen: set[str] = set()
    for p in placements:
        pid = p.placement_id
        candidates, seeds, excluded, params = p.candidate_ids, p.seed_item_ids, p.exclude_ids, p.filter_params
        if (
            not pid
            or len(pid) > id_cap
            or pid in seen
            or len(candidates) > max_ids
            or len(seeds) > limits.max_seeds
            or len(excluded) > max_ids
            or len(p.filter) > id_cap
            or not _fits(candidates, id_cap)
            or not _fits(seeds, id_cap)
            or not _fits(excluded, id_cap)
        ):
            raise _Recheck
        seen.add(pid)
        asks.append(
            PlacementRequest(
                pid,
                p.count,
                tuple(candidates) if candidates else (),
                tuple(seeds) if seeds else (),
                tuple(excluded) if excluded else (),
                p.filter,
                _fast_map(params, limits) if params else {},
            )
        )
    ctx = request.context
    channel, device, language, country, region = (
        ctx.channel,
        ctx.device,
        ctx.language,
        ctx.country,
        ctx.region,
    )
    stage, page, local_time, url, referrer = (
        ctx.journey_stage,
        ctx.page_type,
        ctx.local_time,
        ctx.url,
        ctx.referrer,
    )
    if (
        len(channel)
        + len(device)
        + len(language)
        + len(country)
        + len(region)
        + len(stage)
        + len(page)
        + len(local_time)
        + len(url)
        + len(referrer)
        > limits.max_string_length
    ):
        raise _Recheck
    attributes = ctx.attributes
    context = Context(
        channel,
        device,
        language,
        country,
        region,
        stage,
        page,
        local_time,
        url,
        referrer,
        _fast_map(attributes, limits) if attributes else {},
    )
    return DecideRequest(
        user_id,
        session_id,
        context,
        frozenset(consent),
        tuple(asks),
        request.explain,
        now_ms,
    )


def decide_input(request: _pb.DecideRequest, limits: Limits, now_ms: int) -> DecideRequest:
    """Validate a DecideRequest and convert it; raise RequestError on the first violation."""
    try:
        return _decide_input_fast(request, limits, now_ms)
    except _Recheck:
        return _decide_input_checked(request, limits, now_ms)


class Undecodable(ValueError):
    """Bytes that are not a serialized DecideRequest (the parser's message)."""


def decide_input_bytes(data: bytes, limits: Limits, now_ms: int) -> DecideRequest:
    """`decide_input` of a serialized DecideRequest: read straight from the bytes by the compiled decoder
    (edge/_wire.pyx, no message object) when the request is within every cap and plainly written, else
    parsed into the message and converted. Raises RequestError, or `Undecodable`."""
    ask = _wire.decide_request(data, limits, now_ms)
    if ask is not None:
        return ask
    try:
        request = _pb.DecideRequest.FromString(data)
    except Exception as exc:  # DecodeError, or whatever else a parser raises on hostile bytes
        raise Undecodable(str(exc)) from None
    return decide_input(request, limits, now_ms)


def _decide_input_checked(request: _pb.DecideRequest, limits: Limits, now_ms: int) -> DecideRequest:
    """The field-by-field validation: the same result as the fast path, or the RequestError to send."""
    user_id = _check_key_id(request.user_id, "user_id", limits)
    session_id = _check_key_id(request.session_id, "session_id", limits)
    if len(request.placements) == 0:
        raise RequestError("placements", "at least one placement is required")
    if len(request.placements) > limits.max_placements:
        raise RequestError(
            "placements",
            f"has {len(request.placements)} entries, more than the cap of {limits.max_placements}",
        )
    consent = _check_ids(request.consent, "consent", limits.max_consents, limits)
    asks = []
    seen: set[str] = set()
    for i, p in enumerate(request.placements):
        field = f"placements[{i}]"
        if not p.placement_id:
            raise RequestError(f"{field}.placement_id", "is required")
        _check_str(p.placement_id, f"{field}.placement_id", limits.max_id_length)
        if p.placement_id in seen:
            raise RequestError(f"{field}.placement_id", f"placement {p.placement_id!r} is asked for twice")
        seen.add(p.placement_id)
        asks.append(
            PlacementRequest(
                placement_id=p.placement_id,
                count=p.count,
                candidate_ids=_check_ids(p.candidate_ids, f"{field}.candidate_ids", limits.max_ids, limits),
                seed_item_ids=_check_ids(p.seed_item_ids, f"{field}.seed_item_ids", limits.max_seeds, limits),
                exclude_ids=_check_ids(p.exclude_ids, f"{field}.exclude_ids", limits.max_ids, limits),
                filter=_check_str(p.filter, f"{field}.filter", limits.max_id_length),
                filter_params=_check_map(p.filter_params, f"{field}.filter_params", limits),
            )
        )
    return DecideRequest(
        user_id=user_id,
        session_id=session_id,
        context=_context(request.context, "context", limits),
        consent=frozenset(consent),
        placements=tuple(asks),
        explain=request.explain,
        now_ms=now_ms,
    )


def new_decision_id() -> str:
    """32 hex chars: 48-bit Unix ms then 80 random bits (sortable by time, unique without coordination)."""
    return (int(time.time() * 1000).to_bytes(6, "big") + os.urandom(10)).hex()


def _explanation(why: Explanation) -> _pb.Explanation:
    return _pb.Explanation(
        user_known=why.user_known,
        personalization_allowed=why.personalization_allowed,
        segments=list(why.segments),
        features=why.features,
        placements=[
            _pb.PlacementExplanation(
                placement_id=p.placement_id,
                strategy=p.strategy,
                rule=p.rule,
                bucket=p.bucket,
                unit_id=p.unit_id,
                candidates=p.candidates,
                seed_item_ids=list(p.seed_item_ids),
                notes=p.notes,
                campaign=p.campaign,
                experiment_id=p.experiment_id,
                variant_id=p.variant_id,
                items=[_pb.ItemExplanation(id=i.id, parts=i.parts, notes=i.notes) for i in p.items],
            )
            for p in why.placements
        ],
    )


def decide_response(decision: DecideResponse, decision_id: str) -> _pb.DecideResponse:
    """The DecideResponse of a decision. Sub-messages are built in place with `add()` (a list of
    messages passed to a constructor is copied), and fields are set one by one, defaults left unset: on
    upb that is cheaper than keyword arguments (BENCHMARKS.md), with the same message (proto3 fields
    without presence)."""
    response = _pb.DecideResponse(decision_id=decision_id, snapshot_version=decision.snapshot_version)
    add_placement = response.placements.add
    for p in decision.placements:
        out = add_placement()
        out.placement_id = p.placement_id
        if p.content_id:
            out.content_id = p.content_id
        if p.experiment_id:
            out.experiment_id = p.experiment_id
        if p.variant_id:
            out.variant_id = p.variant_id
        out.propensity = p.propensity
        out.strategy = p.strategy
        if p.fallback:
            out.fallback_reason = _pb.FallbackReason.ValueType(int(p.fallback))
        add_item = out.items.add
        for i in p.items:
            item = add_item()
            item.id = i.id
            item.score = i.score
            item.reason = i.reason
            if i.promoted:
                item.promoted = True
    if decision.explanation is not None:
        response.explanation.CopyFrom(_explanation(decision.explanation))
    return response


def tracked_events(request: _pb.TrackRequest, limits: Limits, now_ms: int) -> list[Event]:
    """Validate a TrackRequest's events and convert them; raise RequestError on the first violation."""
    if len(request.events) == 0:
        raise RequestError("events", "at least one event is required")
    if len(request.events) > limits.max_events:
        raise RequestError(
            "events", f"has {len(request.events)} entries, more than the cap of {limits.max_events}"
        )
    consent = frozenset(_check_ids(request.consent, "consent", limits.max_consents, limits))
    analytics, personalization = "analytics" in consent, "personalization" in consent
    events = []
    for i, e in enumerate(request.events):
        field = f"events[{i}]"
        if not e.event_id:
            raise RequestError(f"{field}.event_id", "is required (it makes Track idempotent)")
        if not _EVENT_TYPE.fullmatch(e.type):
            raise RequestError(
                f"{field}.type",
                f"{e.type[:70]!r} is not an event type (lowercase, e.g. view, click, add_to_cart, purchase)",
            )
        if not e.user_id and not e.session_id:
            raise RequestError(f"{field}.user_id", "user_id or session_id is required")
        if not math.isfinite(e.value):
            raise RequestError(f"{field}.value", f"must be a finite number, got {e.value}")
        if 0 < e.timestamp_ms < EARLIEST_EVENT_MS or e.timestamp_ms < 0:
            raise RequestError(
                f"{field}.timestamp_ms",
                f"{e.timestamp_ms} is before 2000-01-01: Unix time in milliseconds is expected (not "
                "seconds), or 0 for the time of receipt",
            )
        if e.timestamp_ms > now_ms + limits.max_future_seconds * 1000:
            raise RequestError(
                f"{field}.timestamp_ms",
                f"{e.timestamp_ms} is more than {limits.max_future_seconds} s after this node's clock "
                f"({now_ms}): Unix time in milliseconds is expected (not micro- or nanoseconds), or 0 for "
                "the time of receipt",
            )
        for name in ("event_id", "user_id", "session_id"):
            _check_key_id(getattr(e, name), f"{field}.{name}", limits)
        for name in ("item_id", "decision_id", "placement_id"):
            _check_str(getattr(e, name), f"{field}.{name}", limits.max_id_length)
        if e.HasField("context"):  # not kept, but checked like a Decide's context (the same caps)
            _context(e.context, f"{field}.context", limits)
        events.append(
            Event(
                event_id=e.event_id,
                type=e.type,
                user_id=e.user_id,
                session_id=e.session_id,
                item_id=e.item_id,
                decision_id=e.decision_id,
                placement_id=e.placement_id,
                value=e.value,
                timestamp_ms=e.timestamp_ms or now_ms,
                analytics=analytics,
                personalization=personalization,
            )
        )
    return events
