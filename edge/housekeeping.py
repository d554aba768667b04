"""The edge node's housekeeping: event ids past the dedupe window and expired live activity are deleted.

The supervisor (the node's writer) calls `Housekeeper.step` every 0.2 s. Each step is one bounded
`Store.sweep`, one short write transaction during which Track commits wait: up to `ids_per_step` event
ids past the dedupe window are deleted, oldest first (about 13 ms for 10,000), and, during a pass, the
next `keys_per_step` live activities are read and those with nothing left after the TTLs deleted
(about 5 ms for 1,000). A pass walks the activities from first key to last, then the walk rests for
`pass_pause_s`: TTLs are hours long, so a pass a minute is plenty, and the steps in between cost only
the ids' first-key check (but see below: over its limit and growing, the walk does not rest). So the
store does not grow without bound with every event id and every visitor ever seen. At the end of a
pass, if anything was deleted since the last one, it logs `housekeeping_pass` with the counts.

The outbox (events and exposure records waiting to go upstream) is drained by the forwarder, when there
is a control plane to forward to. Without one, or while it is unreachable, it would grow until the map
is full, and from then on every Track would fail. So each step also deletes its oldest entries, up to
`OUTBOX_PER_STEP`, while it takes more than `outbox_max_bytes` of the map (`data.outbox_max_mb`): those
records are lost for upstream, counted in `outbox_dropped` and logged as `outbox_over_limit` (a warning,
at most once every `WARNING_EVERY_S` seconds, with the count since the last one).

Event ids are limited the same way (`ids_max_bytes`, `track.dedupe_max_mb`): a node taking more events
than its dedupe window's ids fit in deletes the oldest before their window ends, within the same
`ids_per_step`, counted in `deleted_ids_early` and logged as `dedupe_window_shortened` with how far back
the ids it keeps reach. A retry older than that counts again; Track keeps working.

Live activity too (`activity_max_bytes`, `track.activity_max_mb`): the TTLs alone bound it by how many
users and sessions were active within them, which a node with many anonymous visitors can make larger
than its map. Once the namespace is past `ACTIVITY_WATCH` of its limit, each step reports when every
activity it kept was last active, and its size, into the pass's `_Ages` (a histogram with four buckets
per doubling of age; below that share the walk skips this work). A pass that ends with the namespace's
pages over the limit sets a time (`activity_before_ms`): that pass's end, less the age within which the
most recently active units hold `ACTIVITY_REFILL` of the limit in data bytes, at the pages' usual fill
(data per page byte, from the last pass that noted every size and cut nothing). The next pass, run at
once, deletes the activity of the units last active before it, counted in `deleted_activities_early`
and logged as `activity_window_shortened`. Deleting entries all over the key space leaves pages part
empty, so the pages' bytes fall much less than the entries (LMDB merges a page only below a quarter
full), and new activity fills those pages before taking others. So the horizon is not cut further to
bring the pages under the limit: each pass sets it again from its own ages, and a pass that ends with
the pages under the limit lifts it. After a cut the walk rests for its pause, unless the namespace, over
its limit, has grown since that pass ended by more than the room the cut leaves below the limit (a
fifth of it): then the next pass starts at once, so a flood of new units is cut pass after pass instead
of growing for a minute.

Every step is a write transaction, and LMDB copies each page it changes before freeing the old one: on
a map with too few free pages even a delete fails (`StoreFull`). The caps leave room for this (they are
derived from what the snapshot leaves, core/store_budget.py, and Track's writes stop short of the map),
but should a step not fit anyway, it is tried again at once with half as many entries, down to
`1 / MAX_SHRINK` of the usual sizes (a step that deletes a few entries needs a few pages, and frees more
as the tree empties); each step that fits then doubles the sizes back. Logged as
`housekeeping_store_full` (a warning at most every `WARNING_EVERY_S`), counted in `steps_shrunk`.
The supervisor sets new caps with `set_limits` when the snapshot changes.

A forget that arrives while the outbox holds more than `FORGET_INLINE_OUTBOX` entries marks the users
instead of reading the whole outbox in the sync transaction (core/store.py). A step then also reads the
next `purge_per_step` outbox entries of a pass that deletes those users' entries (`Store.purge_step`);
the pass ends at the last entry, clears the marks of the users it was for, and logs
`forget_outbox_purged`. Users marked during a pass get the next one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Final

from edgewise.core.activity import ActivityLimits
from edgewise.core.store import Store, StoreFull, SweepResult

log = logging.getLogger(__name__)

__all__ = [
    "ACTIVITY_REFILL",
    "IDS_PER_STEP",
    "KEYS_PER_STEP",
    "MAX_SHRINK",
    "OUTBOX_PER_STEP",
    "PASS_PAUSE_S",
    "PURGE_PER_STEP",
    "WARNING_EVERY_S",
    "Housekeeper",
]

KEYS_PER_STEP: Final = 1_000  # activities read per step: about 5 ms of write lock
IDS_PER_STEP: Final = 10_000  # expired event ids deleted per step at most: about 13 ms (50,000 a second)
PASS_PAUSE_S: Final = 60.0  # between the end of a pass over the activities and the next
OUTBOX_PER_STEP: Final = 10_000  # oldest outbox entries deleted per step at most, over the limit
WARNING_EVERY_S: Final = 60.0  # outbox_over_limit and dedupe_window_shortened at most this often
PURGE_PER_STEP: Final = 10_000  # outbox entries a forget's purge pass reads per step: about 9 ms
ACTIVITY_REFILL: Final = 0.8  # over its limit, live activity is cut to this share of it
ACTIVITY_WATCH: Final = 0.5  # past this share of the limit, passes note the activities' ages
AGE_BUCKETS_PER_DOUBLING: Final = 4
MAX_SHRINK: Final = 1 << 13  # a step that does not fit is cut down to 1 / this of its sizes at most


class _Ages:
    """Bytes of the live activities one pass kept, by how long before the step that saw them they were
    last active: bucket 0 under a second, bucket b >= 1 up to 2 ** (b / 4) seconds."""

    def __init__(self) -> None:
        self.by_bucket: dict[int, int] = {}
        self.total = 0

    def add(self, now_ms: int, ages: Iterable[tuple[int, int]]) -> None:
        by_bucket = self.by_bucket
        for last_ms, size in ages:
            age_s = (now_ms - last_ms) / 1000
            bucket = 0 if age_s < 1 else 1 + int(AGE_BUCKETS_PER_DOUBLING * math.log2(age_s))
            by_bucket[bucket] = by_bucket.get(bucket, 0) + size
            self.total += size

    def keep_ms(self, share: float) -> int:
        """The age (ms, at least a second) within which the youngest activities hold at most `share` of
        the bytes seen: the upper edge of the last bucket that still fits."""
        budget = share * self.total
        kept = 0
        keep_s = 1.0
        for bucket in sorted(self.by_bucket):
            kept += self.by_bucket[bucket]
            if kept > budget:
                break
            keep_s = 2 ** (bucket / AGE_BUCKETS_PER_DOUBLING)
        return round(keep_s * 1000)


class _Losses:
    """A count of records deleted before their time (a total since start, and those not logged yet),
    logged as one warning at most every WARNING_EVERY_S seconds."""

    def __init__(self, event: str, monotonic: Callable[[], float], field: str = "dropped") -> None:
        self.event = event
        self.field = field
        self.total = 0
        self._unlogged = 0
        self._logged_at: float | None = None
        self._monotonic = monotonic

    def add(self, count: int, **fields: object) -> None:
        self.total += count
        self._unlogged += count
        now = self._monotonic()
        if self._unlogged and (self._logged_at is None or now - self._logged_at >= WARNING_EVERY_S):
            log.warning(self.event, extra={self.field: self._unlogged, **fields})
            self._unlogged = 0
            self._logged_at = now


class Housekeeper:
    def __init__(
        self,
        store: Store,
        dedupe_window_ms: int,
        limits: ActivityLimits,
        *,
        keys_per_step: int = KEYS_PER_STEP,
        ids_per_step: int = IDS_PER_STEP,
        pass_pause_s: float = PASS_PAUSE_S,
        outbox_max_bytes: int = 0,
        outbox_per_step: int = OUTBOX_PER_STEP,
        ids_max_bytes: int = 0,
        purge_per_step: int = PURGE_PER_STEP,
        activity_max_bytes: int = 0,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.dedupe_window_ms = dedupe_window_ms
        self.limits = limits
        self.keys_per_step = keys_per_step
        self.ids_per_step = ids_per_step
        self.pass_pause_s = pass_pause_s
        self.outbox_max_bytes = outbox_max_bytes
        self.outbox_per_step = outbox_per_step
        self.ids_max_bytes = ids_max_bytes
        self.purge_per_step = purge_per_step
        self.activity_max_bytes = activity_max_bytes
        # of the activity namespace's pages, after the last step
        self.activity_bytes = store.activity_usage()[1] if activity_max_bytes else 0
        self.activity_before_ms = 0  # over the limit: units last active before this lose it (0: TTLs only)
        self._ages = _Ages()  # of the pass in progress
        self._pass_complete_ages = True  # every step of the pass in progress noted the ages
        # Bytes of activity data (keys and values) per byte of its pages, from the last pass that noted
        # every activity's size and cut nothing: how full the tree's pages are when left alone.
        self._data_per_page_byte = 0.0
        self.purged_outbox = 0  # forgotten users' outbox entries deleted by purge passes, since start
        self._purge_users: frozenset[str] = frozenset()  # the users of the pass in progress
        self._after_purge = b""
        self._pass_purged = 0
        self._clock_ms = clock_ms
        self._monotonic = monotonic
        self._after_activity = b""
        self._activities_due = 0.0  # when the next pass over the activities may start
        self._bytes_after_pass = 0  # of the activity namespace's pages when the last pass ended
        self._pass_ids = 0
        self._pass_activities = 0
        self.deleted_ids = 0  # since start
        self.deleted_activities = 0
        self.passes = 0  # full passes over the activities
        self._outbox_losses = _Losses("outbox_over_limit", monotonic)
        self._early_ids = _Losses("dedupe_window_shortened", monotonic)
        self._early_activities = _Losses("activity_window_shortened", monotonic)
        self.oldest_id_ms = 0  # arrival time of the oldest event id kept, after the last step (0: none)
        self._shrink = 1  # the step sizes are divided by this after a step did not fit (StoreFull)
        self.steps_shrunk = 0  # steps tried again smaller since start
        self._full = _Losses("housekeeping_store_full", monotonic, field="steps_shrunk")

    def set_limits(self, outbox_max_bytes: int, ids_max_bytes: int, activity_max_bytes: int) -> None:
        """New caps (the supervisor recomputes them when the snapshot changes); the next step applies them."""
        self.outbox_max_bytes = outbox_max_bytes
        self.ids_max_bytes = ids_max_bytes
        if activity_max_bytes and not self.activity_max_bytes:
            self.activity_bytes = self.store.activity_usage()[1]
        self.activity_max_bytes = activity_max_bytes

    def _sized(self, size: int) -> int:
        return max(1, size // self._shrink) if size > 0 else 0

    def _sweep(self, now_ms: int, walking: bool, noting: bool) -> SweepResult:
        """One `Store.sweep`; one that does not fit in the map is tried again with half the sizes."""
        while True:
            try:
                result = self.store.sweep(
                    now_ms,
                    self.dedupe_window_ms,
                    self.limits,
                    after_activity=self._after_activity,
                    max_keys=self._sized(self.keys_per_step) if walking else 0,
                    max_ids=self._sized(self.ids_per_step),
                    outbox_max_bytes=self.outbox_max_bytes,
                    max_outbox=self._sized(self.outbox_per_step),
                    ids_max_bytes=self.ids_max_bytes,
                    activity_before_ms=self.activity_before_ms,
                    activity_ages=noting,
                )
            except StoreFull as exc:
                if self._shrink >= MAX_SHRINK:
                    raise
                self._shrink *= 2
                self.steps_shrunk += 1
                self._full.add(
                    1,
                    shrink=self._shrink,
                    error=f"{exc}: housekeeping goes on in smaller steps",
                )
                continue
            self._shrink = max(1, self._shrink // 2)
            return result

    @property
    def outbox_dropped(self) -> int:
        """Outbox entries deleted unsent, since start."""
        return self._outbox_losses.total

    @property
    def deleted_ids_early(self) -> int:
        """Event ids deleted before their window ended, since start."""
        return self._early_ids.total

    @property
    def deleted_activities_early(self) -> int:
        """Live activities deleted before their TTLs, since start (over track.activity_max_mb)."""
        return self._early_activities.total

    @property
    def activity_window_ms(self) -> int:
        """How long ago a unit may have been last active and keep its activity (0: the TTLs alone)."""
        return self._window_ms(self._clock_ms())

    def _window_ms(self, now_ms: int) -> int:
        return max(0, now_ms - self.activity_before_ms) if self.activity_before_ms else 0

    @property
    def _activity_over(self) -> bool:
        return 0 < self.activity_max_bytes < self.activity_bytes

    @property
    def _refilled(self) -> bool:
        """Over the limit, and grown since the last pass ended by the room a cut leaves below the limit
        (a flood of new units): the next pass starts without its pause, else the namespace would grow
        for a whole pause (a minute) past its limit, and could fill the map."""
        grown = self.activity_bytes - self._bytes_after_pass
        return self._activity_over and grown > (1 - ACTIVITY_REFILL) * self.activity_max_bytes

    def step(self) -> None:
        walking = (
            self._after_activity != b""
            or (self._activity_over and not self.activity_before_ms)  # over, and no horizon yet: at once
            or self._monotonic() >= self._activities_due
            or self._refilled  # over, and grown since the last pass by what a cut leaves room for
        )
        now_ms = self._clock_ms()
        noting = self.activity_bytes > ACTIVITY_WATCH * self.activity_max_bytes > 0
        if walking:  # a pass starting, or going on
            self._pass_complete_ages = noting and (self._pass_complete_ages or self._after_activity == b"")
        result = self._sweep(now_ms, walking, noting)
        self.activity_bytes = result.activity_bytes
        self._ages.add(now_ms, result.activity_ages)
        self._early_activities.add(
            result.activities_early,
            limit_mb=round(self.activity_max_bytes / (1 << 20), 1),
            ttl_hours=round(self.limits.ttl_ms / 3_600_000, 3),
            kept_hours=round(self._window_ms(now_ms) / 3_600_000, 3),
            error="live activities were deleted before their TTLs (track.activity_max_mb): users and "
            "sessions last active more than kept_hours ago lost their recent views, cart and purchases",
        )
        self.oldest_id_ms = result.oldest_id_ms
        reach_h = (now_ms - self.oldest_id_ms) / 3_600_000 if self.oldest_id_ms else 0.0
        self._early_ids.add(
            result.event_ids_early,
            limit_mb=round(self.ids_max_bytes / (1 << 20), 1),
            window_hours=round(self.dedupe_window_ms / 3_600_000, 3),
            kept_hours=round(reach_h, 3),
            error="event ids were deleted before their dedupe window ended (track.dedupe_max_mb): "
            "a retry older than kept_hours counts again",
        )
        self._outbox_losses.add(
            result.outbox_dropped,
            limit_mb=round(self.outbox_max_bytes / (1 << 20), 1),
            error="the oldest events and exposures waiting to go upstream were deleted unsent: "
            "no control plane drains this node's outbox (none configured, or unreachable)",
        )
        self.deleted_ids += result.event_ids
        self.deleted_activities += result.activities
        self._pass_ids += result.event_ids
        self._pass_activities += result.activities
        self._after_activity = result.next_activity_key
        if walking and not result.next_activity_key:  # a pass over the activities ended
            self.passes += 1
            horizon = self._horizon(now_ms)
            # A first horizon is applied by a pass at once; then passes keep their pause.
            starts_cutting = horizon != 0 and self.activity_before_ms == 0
            self._activities_due = self._monotonic() + (0.0 if starts_cutting else self.pass_pause_s)
            self._bytes_after_pass = self.activity_bytes
            self.activity_before_ms = horizon
            self._ages = _Ages()
            if self._pass_ids or self._pass_activities:
                log.info(
                    "housekeeping_pass",
                    extra={"event_ids": self._pass_ids, "activities": self._pass_activities},
                )
                self._pass_ids = self._pass_activities = 0
        self._purge()  # last: a failure here does not keep the sweep from running

    def _horizon(self, now_ms: int) -> int:
        """At the end of a pass: the time before which units lose their activity in the next (0: none).

        Over the limit, the kept activity's data is cut to ACTIVITY_REFILL of the limit, counted in data
        bytes at the pages' usual fill. Deleting entries spread over the key space leaves pages part
        empty (LMDB merges a page only below a quarter full): the pages' bytes fall much less than the
        entries, and new activity fills those pages before taking others. Cutting until the pages'
        bytes were under the limit would delete far more than the limit asks for."""
        ages = self._ages
        # the pass's own horizon is still in force here: it changes only at a pass's end
        if self._pass_complete_ages and not self.activity_before_ms and ages.total and self.activity_bytes:
            self._data_per_page_byte = ages.total / self.activity_bytes
        if not (self._activity_over and ages.total):
            return 0
        ratio = self._data_per_page_byte or ages.total / self.activity_bytes
        budget = ACTIVITY_REFILL * self.activity_max_bytes * ratio
        return now_ms - ages.keep_ms(budget / ages.total)

    def _purge(self) -> None:
        """One step of a pass that deletes forgotten users' outbox entries, when a forget left any."""
        if not self._purge_users:
            self._purge_users = self.store.pending_purges()
            self._after_purge = b""
            if not self._purge_users:
                return
        try:
            deleted, last = self.store.purge_step(
                self._purge_users, self._after_purge, self._sized(self.purge_per_step)
            )
        except StoreFull:  # the next step tries again (smaller, once a sweep had to shrink)
            return
        self.purged_outbox += deleted
        self._pass_purged += deleted
        self._after_purge = last
        if not last:
            log.info(
                "forget_outbox_purged", extra={"users": len(self._purge_users), "entries": self._pass_purged}
            )
            self._purge_users = frozenset()
            self._pass_purged = 0
