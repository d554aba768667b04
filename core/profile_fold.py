"""Folding forwarded Track events into profiles: the fleet-wide half of live activity.

Pure: given the stored profile record (or None) of a user and that user's new events, in arrival
order, the new profile record. Only events the caller gave the `personalization` purpose (`pz` in the
forwarded record) count, as on the edge; an event of a user without a profile creates one whose stored
consent is that purpose, granted at the event's time (the user just used the site with it). Views,
cart and purchases follow `core/activity.apply_event` with the same limits, so folding an event twice
changes nothing more than folding it once (each sequence keeps one entry per item).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from edgewise.core.activity import CONSENT_EVENT, ActivityLimits, Event, apply_event
from edgewise.core.records import Activity, ProfileRecord, decode_profile, encode_profile

__all__ = ["ACTIVITY_EVENT_TYPES", "fold_profile", "rfm_segment"]

ACTIVITY_EVENT_TYPES: Final = frozenset({"view", "click", "add_to_cart", "remove_from_cart", "purchase"})
_PERSONALIZATION: Final = "personalization"
_ANALYTICS: Final = "analytics"


def fold_profile(
    user_id: str, current: bytes | None, events: Iterable[Event], limits: ActivityLimits
) -> bytes | None:
    """The user's profile record after `events`, or None when nothing changes.

    Consent events (`CONSENT_EVENT`) set the stored consent: each purpose granted in the event keeps
    its earlier grant time (else the event's time), a purpose not granted is removed; revoking
    `personalization` also drops the folded activity. Activity events then count only while the stored
    consent (after the consent events before them) has `personalization`.

    Purchases forwarded with the `analytics` purpose also update the behavioural aggregates (the
    analytics-purpose attributes of the synthetic and retail schemas): `orders` + 1, `ltv` + value,
    `last_order_ms`, and `rfm_segment` from recency, frequency and monetary value (`rfm_segment`). This
    is not idempotent, so the caller must fold each event exactly once (sync/profile_folder.py commits
    the profiles and its cursor in one transaction)."""
    ordered = sorted(
        (
            e
            for e in events
            if e.type == CONSENT_EVENT
            or (e.type in ACTIVITY_EVENT_TYPES and e.item_id)
            or (e.type == "purchase" and e.analytics)
        ),
        key=lambda e: (e.timestamp_ms, e.event_id),
    )
    if not any(e.type in (CONSENT_EVENT, "purchase") or e.personalization for e in ordered):
        return None
    profile = ProfileRecord(user_id, 0, {}, {}, None) if current is None else decode_profile(user_id, current)
    consent = dict(profile.consent)
    activity = profile.activity
    attributes = dict(profile.attributes)
    for event in ordered:
        if event.type == "purchase" and event.analytics:
            _count_order(attributes, event)
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
        if not event.personalization or not event.item_id:
            continue
        if _PERSONALIZATION not in consent:
            if current is not None or consent:
                continue  # the stored consent says no: activity does not shape the profile
            consent[_PERSONALIZATION] = event.timestamp_ms  # a new user, seen with the purpose
        activity = apply_event(activity or Activity(), event, limits)
    if consent == dict(profile.consent) and activity == profile.activity and attributes == profile.attributes:
        return None
    # every embedding slot as stored (`vectors`): a staged generation survives the fold
    updated = ProfileRecord(
        profile.id, profile.version, attributes, consent, profile.embedding, activity, profile.vectors
    )
    return encode_profile(updated)


def _count_order(attributes: dict[str, Any], event: Event) -> None:
    orders = attributes.get("orders")
    attributes["orders"] = (orders if isinstance(orders, int) and not isinstance(orders, bool) else 0) + 1
    ltv = attributes.get("ltv")
    base = float(ltv) if isinstance(ltv, int | float) and not isinstance(ltv, bool) else 0.0
    attributes["ltv"] = round(base + max(event.value, 0.0), 2)
    attributes["last_order_ms"] = max(int(attributes.get("last_order_ms", 0) or 0), event.timestamp_ms)
    attributes["rfm_segment"] = rfm_segment(attributes["orders"], attributes["ltv"])


def rfm_segment(orders: int, ltv: float) -> str:
    """The RFM segment right after a purchase (recency 0), by the rules the synthetic data uses
    (bench/synth.py): new (at most 1 order), champions (>= 8 orders and >= 500 spent), loyal (>= 4
    orders), else potential. Decay with recency (at_risk, hibernating) needs the clock and is left to
    bundle pushes."""
    if orders <= 1:
        return "new"
    if orders >= 8 and ltv >= 500:
        return "champions"
    if orders >= 4:
        return "loyal"
    return "potential"
