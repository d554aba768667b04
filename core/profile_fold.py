"""Folding forwarded Track events into profiles: the fleet-wide half of live activity.

Pure: given the stored profile record (or None) of a user and that user's new events, in arrival
order, the new profile record. Only events the caller gave the `personalization` purpose (`pz` in the
forwarded record) count, as on the edge; an event of a user without a profile creates one whose stored
consent is that purpose, granted at the event's time (the user just used the site with it). Views,
cart and purchases follow `core/activity.apply_event` with the same limits, so folding an event twice
changes nothing more than folding it once (each sequence keeps one entry per item).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from edgewise.core.activity import CONSENT_EVENT, ActivityLimits, TrackedEvent, apply_event
from edgewise.core.records import Activity, ProfileRecord, decode_profile, encode_profile

__all__ = ["ACTIVITY_EVENT_TYPES", "fold_profile", "tracked_event"]

ACTIVITY_EVENT_TYPES: Final = frozenset({"view", "click", "add_to_cart", "remove_from_cart", "purchase"})
_PERSONALIZATION: Final = "personalization"
_ANALYTICS: Final = "analytics"


def tracked_event(record: Mapping[str, Any]) -> TrackedEvent:
    """A forwarded Track event (`TrackedEvent.encode` as a map) back as a TrackedEvent."""
    return TrackedEvent(
        event_id=str(record["id"]),
        type=str(record.get("t", "")),
        user_id=str(record.get("u", "")),
        session_id=str(record.get("s", "")),
        item_id=str(record.get("i", "")),
        decision_id=str(record.get("d", "")),
        placement_id=str(record.get("p", "")),
        value=float(record.get("v", 0.0) or 0.0),
        timestamp_ms=int(record.get("ts", 0)),
        personalization=bool(record.get("pz", False)),
        analytics=bool(record.get("an", True)),
    )


def fold_profile(
    user_id: str, current: bytes | None, events: Iterable[TrackedEvent], limits: ActivityLimits
) -> bytes | None:
    """The user's profile record after `events`, or None when nothing changes.

    Consent events (`CONSENT_EVENT`) set the stored consent: each purpose granted in the event keeps
    its earlier grant time (else the event's time), a purpose not granted is removed; revoking
    `personalization` also drops the folded activity. Activity events then count only while the stored
    consent (after the consent events before them) has `personalization`."""
    ordered = sorted(
        (e for e in events if e.type == CONSENT_EVENT or (e.type in ACTIVITY_EVENT_TYPES and e.item_id)),
        key=lambda e: (e.timestamp_ms, e.event_id),
    )
    if not any(e.type == CONSENT_EVENT or e.personalization for e in ordered):
        return None
    profile = ProfileRecord(user_id, 0, {}, {}, None) if current is None else decode_profile(user_id, current)
    consent = dict(profile.consent)
    activity = profile.activity
    for event in ordered:
        if event.type == CONSENT_EVENT:
            granted = {_PERSONALIZATION: event.personalization, _ANALYTICS: event.analytics}
            for purpose, now in granted.items():
                if now:
                    consent.setdefault(purpose, event.timestamp_ms)
                else:
                    consent.pop(purpose, None)
            if _PERSONALIZATION not in consent:
                activity = None
            continue
        if not event.personalization:
            continue
        if _PERSONALIZATION not in consent:
            if current is not None or consent:
                continue  # the stored consent says no: activity does not shape the profile
            consent[_PERSONALIZATION] = event.timestamp_ms  # a new user, seen with the purpose
        activity = apply_event(activity or Activity(), event, limits)
    if consent == dict(profile.consent) and activity == profile.activity:
        return None
    updated = ProfileRecord(
        profile.id, profile.version, profile.attributes, consent, profile.embedding, activity
    )
    return encode_profile(updated)
