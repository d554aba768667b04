"""Live activity: how a tracked event changes the recent views, cart and purchases of a user or session.

Pure functions over `Activity` records; the store applies them inside its write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgpack

from edgewise.core.records import Activity

__all__ = [
    "EVENT_TYPES",
    "ActivityLimits",
    "TrackedEvent",
    "activity_key",
    "apply_event",
]

# Types with a built-in meaning. Other well-formed types are accepted and forwarded, and leave
# activity unchanged.
EVENT_TYPES: Final = frozenset(
    {"view", "click", "add_to_cart", "remove_from_cart", "purchase", "impression", "dismiss"}
)


@dataclass(frozen=True, slots=True)
class ActivityLimits:
    max_views: int = 50
    max_cart: int = 50
    max_purchases: int = 50


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    event_id: str
    type: str
    user_id: str
    session_id: str
    item_id: str
    decision_id: str
    placement_id: str
    value: float
    timestamp_ms: int

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
            },
            use_bin_type=True,
        )


def activity_key(user_id: str, session_id: str) -> str:
    """The activity record of a decision or event: the user's when known, else the session's."""
    return f"u:{user_id}" if user_id else f"s:{session_id}"


def _push(seq: tuple[tuple[str, int], ...], entry: tuple[str, int], cap: int) -> tuple[tuple[str, int], ...]:
    return (*seq, entry)[-cap:]


def apply_event(activity: Activity, event: TrackedEvent, limits: ActivityLimits) -> Activity:
    """The activity after `event`; unchanged for events without an item or without a built-in meaning."""
    item, ts = event.item_id, event.timestamp_ms
    if not item:
        return activity
    if event.type in ("view", "click"):
        views = tuple(v for v in activity.views if v[0] != item)
        return Activity(_push(views, (item, ts), limits.max_views), activity.cart, activity.purchases)
    if event.type == "add_to_cart":
        cart = (*tuple(i for i in activity.cart if i != item), item)[-limits.max_cart :]
        return Activity(activity.views, cart, activity.purchases)
    if event.type == "remove_from_cart":
        return Activity(activity.views, tuple(i for i in activity.cart if i != item), activity.purchases)
    if event.type == "purchase":
        cart = tuple(i for i in activity.cart if i != item)
        return Activity(activity.views, cart, _push(activity.purchases, (item, ts), limits.max_purchases))
    return activity
