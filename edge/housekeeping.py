"""The edge node's housekeeping: event ids past the dedupe window and expired live activity are deleted.

The supervisor (the node's writer) calls `Housekeeper.step` about once a second. Each step is one
bounded `Store.sweep` (up to `keys_per_step` keys of each namespace, one short write transaction), and
the steps walk both namespaces round and round, so the store does not grow without bound with every
event id and every visitor ever seen. At the end of each full pass over a namespace that deleted
something, it logs `housekeeping_pass` with the namespace and the count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from edgewise.core.activity import ActivityLimits
from edgewise.core.store import Store
from edgewise.edge.logs import log

__all__ = ["KEYS_PER_STEP", "Housekeeper"]

KEYS_PER_STEP: Final = 5_000


class Housekeeper:
    def __init__(
        self,
        store: Store,
        dedupe_window_ms: int,
        limits: ActivityLimits,
        *,
        keys_per_step: int = KEYS_PER_STEP,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.store = store
        self.dedupe_window_ms = dedupe_window_ms
        self.limits = limits
        self.keys_per_step = keys_per_step
        self._clock_ms = clock_ms
        self._after_event = b""
        self._after_activity = b""
        self._pass_ids = 0
        self._pass_activities = 0
        self.deleted_ids = 0  # since start
        self.deleted_activities = 0

    def step(self) -> None:
        result = self.store.sweep(
            self._clock_ms(),
            self.dedupe_window_ms,
            self.limits,
            after_event=self._after_event,
            after_activity=self._after_activity,
            max_keys=self.keys_per_step,
        )
        self.deleted_ids += result.event_ids
        self.deleted_activities += result.activities
        self._pass_ids += result.event_ids
        self._pass_activities += result.activities
        if not result.next_event_key and self._pass_ids:
            log("housekeeping_pass", namespace="events", deleted=self._pass_ids)
            self._pass_ids = 0
        if not result.next_activity_key and self._pass_activities:
            log("housekeeping_pass", namespace="activity", deleted=self._pass_activities)
            self._pass_activities = 0
        self._after_event, self._after_activity = result.next_event_key, result.next_activity_key
