"""The control plane's bandit learner: posteriors from attributed rewards, published as rules deltas.

A thread that, every `interval` seconds, reads the records stored since its cursor: exposure records of
bandit decisions (strategy "bandit") are counted as impressions of their arm, and clicks are attributed
to exposures (`core/attribution.Attributor`: decision id, else recency) and counted as rewards of the
arm that was shown, each once (`core/bandit_learning.BanditStats`). When the `schedule` says so (every
`every_rewards` rewards, `every_exposures` exposures, or `every_seconds` with anything new), it updates
every bandit's Beta posteriors in the current rules document (`update_rules_doc`) and commits the new
document as a delta, so every edge serves with the new posteriors and their propensities.

The counts since the last publish live in memory: after a restart the learner starts from its cursor
with fresh counts (what it had counted but not published is lost; published posteriors are kept in the
rules). Segments are not known from exposure records, so rewards update the global posteriors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Final

import msgpack

from edgewise.core.attribution import Attributor
from edgewise.core.bandit_learning import BanditStats, LearningSchedule, exposure_id, update_rules_doc
from edgewise.core.experiment_report import outcome_from_record
from edgewise.core.exposure import EXPOSURE_KIND, exposure_from_record
from edgewise.edge.logs import log
from edgewise.sync.control_store import CommitInfo, ControlStore, RecordChange
from edgewise.sync.event_store import EventStore
from edgewise.sync.periodic import Periodic

__all__ = ["CURSOR", "BanditLearner"]

CURSOR: Final = "bandits"
DEFAULT_SCHEDULE: Final = LearningSchedule(every_rewards=100, every_exposures=5_000, every_seconds=60.0)


class BanditLearner:
    def __init__(
        self,
        store: ControlStore,
        events: EventStore,
        lock: AbstractContextManager[object],
        on_commit: Callable[[], None],
        *,
        schedule: LearningSchedule = DEFAULT_SCHEDULE,
        interval: float = 0.5,
        batch: int = 20_000,
    ) -> None:
        self.store = store
        self.events = events
        self._lock = lock
        self._on_commit = on_commit
        self.schedule = schedule
        self.batch = batch
        self.stats = BanditStats()
        self.attributor = Attributor()
        self.last_publish: float | None = None
        self._loop = Periodic("bandit-learn", interval, self._tick, "bandit_learning_failed")

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

    def _tick(self) -> None:
        while self.read_once() and not self._loop.stopping:
            pass
        self.publish_if_due(time.monotonic())

    def read_once(self) -> int:
        """Count the next batch of stored records; return how many were read."""
        rows = self.events.batch_after(self.events.cursor(CURSOR), self.batch)
        for _, _, record in rows:
            if record.get("k") == EXPOSURE_KIND:
                if record.get("st") == "bandit":
                    self.stats.add_exposure_record(record)
                    self.attributor.add_exposure(exposure_from_record(record))
            elif record.get("t") in self.stats.reward_types:
                attributed = self.attributor.add_outcome(outcome_from_record(record))
                if attributed is not None and attributed.exposure is not None:
                    self.stats.add_reward(exposure_id(attributed.exposure), attributed.outcome.type)
        if rows:
            self.events.set_cursor(CURSOR, rows[-1][0])
        return len(rows)

    def publish_if_due(self, now: float) -> CommitInfo | None:
        reason = self.schedule.due(
            new_rewards=self.stats.new_rewards,
            new_exposures=self.stats.new_exposures,
            now=now,
            last_publish=self.last_publish,
        )
        if reason is None:
            return None
        return self.publish(now, reason)

    def publish(self, now: float, reason: str = "asked") -> CommitInfo | None:
        with self._lock:
            with self.store.read() as view:
                raw = view.get("rules", "rules")
            if raw is None:
                return None
            counts = self.stats.take()
            rules = update_rules_doc(msgpack.unpackb(raw, raw=False), counts)
            value = msgpack.packb(rules, use_bin_type=True)
            info = self.store.commit(
                [RecordChange("rules", "rules", value)],
                kind="delta",
                description=f"bandit posteriors ({reason})",
            )
        self.last_publish = now
        if info is not None:
            log("bandits_published", version=info.version, reason=reason, rewards=counts.rewards)
            self._on_commit()
        return info
