"""The edge node's housekeeping: event ids past the dedupe window and expired live activity are deleted.

The supervisor (the node's writer) calls `Housekeeper.step` every 0.2 s. Each step is one bounded
`Store.sweep` (one short write transaction: about 5 ms with 1,000 activities, during which Track
commits wait): up to `ids_per_step` event ids past the dedupe window, oldest first, and the next
`keys_per_step` live activities, those with nothing left after the TTLs deleted. The activity steps
walk that namespace round and round. So the store does not grow without bound with every event id and
every visitor ever seen. At the end of each full pass over the activities, if anything was deleted
since the last, it logs `housekeeping_pass` with the counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from edgewise.core.activity import ActivityLimits
from edgewise.core.store import Store
from edgewise.edge.logs import log

__all__ = ["IDS_PER_STEP", "KEYS_PER_STEP", "Housekeeper"]

KEYS_PER_STEP: Final = 1_000  # activities read per step: about 5 ms of write lock
IDS_PER_STEP: Final = 10_000  # expired event ids deleted per step at most: about 13 ms (50,000 a second)


class Housekeeper:
    def __init__(
        self,
        store: Store,
        dedupe_window_ms: int,
        limits: ActivityLimits,
        *,
        keys_per_step: int = KEYS_PER_STEP,
        ids_per_step: int = IDS_PER_STEP,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.store = store
        self.dedupe_window_ms = dedupe_window_ms
        self.limits = limits
        self.keys_per_step = keys_per_step
        self.ids_per_step = ids_per_step
        self._clock_ms = clock_ms
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
            after_activity=self._after_activity,
            max_keys=self.keys_per_step,
            max_ids=self.ids_per_step,
        )
        self.deleted_ids += result.event_ids
        self.deleted_activities += result.activities
        self._pass_ids += result.event_ids
        self._pass_activities += result.activities
        if not result.next_activity_key and (self._pass_ids or self._pass_activities):
            log("housekeeping_pass", event_ids=self._pass_ids, activities=self._pass_activities)
            self._pass_ids = self._pass_activities = 0
        self._after_activity = result.next_activity_key
