"""Live activity: how a tracked event changes the recent views, cart and purchases of a user or session.

Pure functions over `Activity` records; the store applies them inside its write transaction.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import msgpack

from edgewise.core.records import Activity

__all__ = [
    "CONSENT_EVENT",
    "EVENT_TYPES",
    "ActivityLimits",
    "Event",
    "activity_key",
    "apply_event",
    "expire",
    "merge_activity",
    "newest_by_item",
    "newest_ms",
]

# A consent change: the TrackRequest's `consent` lists the purposes the user grants from now on. It is
# forwarded upstream even without the analytics purpose, and the control plane updates the stored
# consent of the user's profile fleet-wide (core/profile_fold.py).
CONSENT_EVENT: Final = "consent"

# Types with a built-in meaning. Other well-formed types are accepted and forwarded, and leave
# activity unchanged.
EVENT_TYPES: Final = frozenset(
    {"view", "click", "add_to_cart", "remove_from_cart", "purchase", "impression", "dismiss", "consent"}
)


@dataclass(frozen=True, slots=True)
class ActivityLimits:
    max_views: int = 50
    max_cart: int = 50
    max_purchases: int = 50
    max_impressions: int = 200
    ttl_ms: int = 72 * 3_600_000  # views and cart entries older than this expire
    purchases_ttl_ms: int = 400 * 86_400_000  # purchases are kept longer: replenishment needs them


_timestamp: Final = operator.itemgetter(1)


def expire(activity: Activity, now_ms: int, limits: ActivityLimits) -> Activity:
    """The activity without views and cart entries older than the TTL, nor purchases older than theirs."""
    cutoff = now_ms - limits.ttl_ms
    bought_cutoff = now_ms - limits.purchases_ttl_ms
    # The common case, nothing expired, checked with C-level loops (this runs on every personalized Decide).
    views, cart, bought = activity.views, activity.cart, activity.purchases
    if (
        (not views or min(map(_timestamp, views)) >= cutoff)
        and (not cart or min(map(_timestamp, cart)) >= cutoff)
        and (not bought or min(map(_timestamp, bought)) >= bought_cutoff)
    ):
        return activity
    return Activity(  # the constructor, not dataclasses.replace (which inspects the fields every call)
        tuple([v for v in views if v[1] >= cutoff]),
        tuple([c for c in cart if c[1] >= cutoff]),
        tuple([p for p in bought if p[1] >= bought_cutoff]),
        activity.impressions,
    )


def newest_by_item(pairs: Pairs) -> dict[str, int]:
    """Each item's newest time, items in order of first appearance. That is dict(pairs) when each item
    appears once, as in every sequence this module builds; only other sequences need the loop."""
    newest = dict(pairs)
    if len(newest) != len(pairs):
        newest = {}
        for item, ts in pairs:
            if item not in newest or ts > newest[item]:
                newest[item] = ts
    return newest


def newest_ms(activity: Activity) -> int:
    """When the unit was last active: the newest time of its views, cart entries and purchases (0: none).
    Impression counts carry no time."""
    return max(
        max(map(_timestamp, activity.views), default=0),
        max(map(_timestamp, activity.cart), default=0),
        max(map(_timestamp, activity.purchases), default=0),
    )


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    type: str
    user_id: str
    session_id: str
    item_id: str
    decision_id: str
    placement_id: str
    value: float
    timestamp_ms: int
    # What the caller's consent lets the node keep: the outbox (analytics) and live activity
    # (personalization). The event id is always kept, for idempotency.
    analytics: bool = True
    personalization: bool = True

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Event:
        """The event back from its `encode`d map (as the control plane reads forwarded events). Records
        from before the purposes were encoded count as analytics without personalization."""
        return cls(
            event_id=str(record["id"]),
            type=str(record.get("t", "")),
            user_id=str(record.get("u", "")),
            session_id=str(record.get("s", "")),
            item_id=str(record.get("i", "")),
            decision_id=str(record.get("d", "")),
            placement_id=str(record.get("p", "")),
            value=float(record.get("v", 0.0) or 0.0),
            timestamp_ms=int(record.get("ts", 0)),
            analytics=bool(record.get("an", True)),
            personalization=bool(record.get("pz", False)),
        )

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "id": self.event_id,
                "t": self.type,
                "u": self.user_id,
                "s": self.session_id,
                "i": self.item_id,
                "d": self.decision_id,
                "p": self.placement_id,
                "v": self.value,
                "ts": self.timestamp_ms,
                "pz": self.personalization,  # whether it may shape the user's activity (fleet-wide too)
                "an": self.analytics,
            },
            use_bin_type=True,
        )


def merge_activity(local: Activity | None, fleet: Activity | None, limits: ActivityLimits) -> Activity | None:
    """This edge's live activity and the fleet-wide one folded into the profile, as one: per item the
    newest entry wins, each sequence most recent last and capped. Cart: the newer side's cart wins for
    an item both know (a removal on one edge is not seen in the other's list, so the union is kept)."""
    if fleet is None:
        return local
    if local is None:
        return fleet

    def union(a: Pairs, b: Pairs, cap: int) -> Pairs:
        # Per item the newest time (a later entry wins a tie), items in order of first appearance in a
        # then b, then sorted by time (stable). Only `b` needs the loop (`a` goes through the dict
        # shortcut of newest_by_item: BENCHMARKS.md, "Returning shoppers").
        newest = newest_by_item(a)
        for item, ts in b:
            if ts >= newest.get(item, -1):
                newest[item] = ts
        return tuple(sorted(newest.items(), key=_timestamp))[-cap:]

    return Activity(
        views=union(local.views, fleet.views, limits.max_views),
        cart=union(local.cart, fleet.cart, limits.max_cart),
        purchases=union(local.purchases, fleet.purchases, limits.max_purchases),
        impressions=local.impressions,  # rotation counts stay per edge
    )


def activity_key(user_id: str, session_id: str) -> str:
    """The activity record of a decision or event: the user's when known, else the session's."""
    return f"u:{user_id}" if user_id else f"s:{session_id}"


Pairs = tuple[tuple[str, int], ...]


def _push(seq: Pairs, entry: tuple[str, int], cap: int) -> Pairs:
    """Append `entry`, dropping an older entry of the same item, keeping the newest `cap`."""
    return (*(e for e in seq if e[0] != entry[0]), entry)[-cap:]


def _without(seq: Pairs, item: str) -> Pairs:
    return tuple(e for e in seq if e[0] != item)


def apply_event(activity: Activity, event: Event, limits: ActivityLimits) -> Activity:
    """The activity after `event`; unchanged for events without an item or without a built-in meaning."""
    item, ts = event.item_id, event.timestamp_ms
    if not item:
        return activity
    a = expire(activity, ts, limits)
    if event.type == "view":
        return replace(a, views=_push(a.views, (item, ts), limits.max_views))
    if event.type == "click":
        # A click is also a view, and resets the item's rotation count.
        return replace(
            a, views=_push(a.views, (item, ts), limits.max_views), impressions=_without(a.impressions, item)
        )
    if event.type == "impression":
        shown = dict(a.impressions).get(item, 0) + 1
        return replace(a, impressions=_push(a.impressions, (item, shown), limits.max_impressions))
    if event.type == "add_to_cart":
        return replace(a, cart=_push(a.cart, (item, ts), limits.max_cart))
    if event.type == "remove_from_cart":
        return replace(a, cart=_without(a.cart, item))
    if event.type == "purchase":
        return replace(
            a, cart=_without(a.cart, item), purchases=_push(a.purchases, (item, ts), limits.max_purchases)
        )
    return a
