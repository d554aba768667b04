"""The control plane's bandit learner: posteriors from attributed rewards, published as rules deltas.

A thread that, every `interval` seconds, reads the records stored since its cursor: exposure records of
bandit decisions (strategy "bandit") are counted as impressions of their arm, and clicks are attributed
to exposures (`core/attribution.Attributor`: decision id, else recency) and counted as rewards of the
arm that was shown, each once (`core/bandit_learning.BanditStats`). When the `schedule` says so (every
`every_rewards` rewards, `every_exposures` exposures, or `every_seconds` with anything new), it updates
every bandit's Beta posteriors in the current rules document (`update_rules_doc`), and every contextual
bandit's per-arm ridge statistics A and b from the exposures' feature vectors `cx`
(`core/linear_bandit_learning`), and commits the new document as a delta, so every edge serves with the
new posteriors and their propensities.

Nothing counted is lost or counted twice across a crash. The counts since the last publish live in
memory, and the learner's cursor (the last record its published counts include) is kept in the control
store and set in the same transaction as the rules commit that publishes them (`commit_at`). So after a
restart it counts again from there. First, on its own thread (the control plane serves meanwhile), it
re-reads the `replay` records before that cursor without counting them: their exposures and rewards
rebuild the memory that attribution and the count-each-once rule need (a late click on an exposure
published before the crash still rewards it, and a reward already published is not counted again).
Each exposure counts for the posteriors that served it: the segment's named in its record (`bs`), else
the global ones.

On a central-tier replica (docs/central.md) there is one learner per partition of the events stream the
replica holds the lease of (`partition`): it reads that partition's records (one user's exposures and
outcomes are in one partition, so attribution by decision id or by user is the same as over every record)
and the outcomes tracked without a user id, which are in the partition of the empty user id (a click
naming its decision but not the user: the learner whose exposure it names attributes it), keeps its cursor
`bandits.<p>` (starting at the global `bandits` cursor when absent: the upgrade), and adds its counts to
the posteriors in the rules document: the Beta counts and the ridge sums A and b are sums, so the
posteriors the edges read are those of one learner over every record. Before it publishes it checks, under
the lock, that its cursor in the store is still the one it counted from; when another replica published
for the partition meanwhile (a lease taken over from a paused holder), or when the commit failed (the
change log moved on), it drops what it counted and counts again from the cursor in the store (`_restart`),
so no count is lost or added twice.

A bandit exposure or a reward event it cannot use (`core/forwarded.record_problem`) is skipped and
counted (`skipped`, logged as `forwarded_records_skipped`; the re-read at start skips them quietly): its
position moves past it like past any other record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

import msgpack

from edgewise.core.attribution import Attributor
from edgewise.core.bandit_learning import BanditStats, LearningSchedule, exposure_id, update_rules_doc
from edgewise.core.experiment_report import outcome_from_record
from edgewise.core.exposure import EXPOSURE_KIND, exposure_from_record
from edgewise.core.forwarded import UNREADABLE, latest_ms, record_problem
from edgewise.core.linear_bandit_learning import LinearStats, update_linear_rules_doc
from edgewise.sync.control_store import CommitInfo, ControlStore, RecordChange
from edgewise.sync.event_partitions import partition_of
from edgewise.sync.event_store import EventStore
from edgewise.sync.periodic import Periodic
from edgewise.sync.skipped_records import SkippedRecords

log = logging.getLogger(__name__)

__all__ = ["CURSOR", "BanditLearner", "partition_cursor"]

CURSOR: Final = "bandits"


def partition_cursor(partition: int) -> str:
    """The name of the learner's cursor of one partition of the events stream."""
    return f"{CURSOR}.{partition}"


REPLAY_RECORDS: Final = 200_000
"""Records before the published cursor re-read at start (the attributor remembers at most 200,000
decisions and event ids, so older records no longer change what it attributes)."""
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
        replay: int = REPLAY_RECORDS,
        partition: int | None = None,
        retry_on: tuple[type[Exception], ...] = (),
    ) -> None:
        self.store = store
        self.partition = partition  # None: every record, cursor `bandits` (the embedded control plane)
        self._retry_on = retry_on  # commit failures that are retried quietly (the change log moved on)
        self.events = events
        self._lock = lock
        self._on_commit = on_commit
        self.schedule = schedule
        self.batch = batch
        self.stats = BanditStats()
        self.linear = LinearStats()  # contextual bandits: per-arm (A, b) sums from the exposures' vectors
        self.attributor = Attributor()
        self.last_publish: float | None = None
        self.publishes = 0  # commits of posteriors published since start (for metrics)
        self.replay = replay
        self.skipped = SkippedRecords("bandit_learner")
        # The published cursor: the last record read (and counted). The records before it are re-read
        # by the first read or publish (`_resume`, on the learner's thread once started), not here: the
        # control plane starts serving without waiting for them.
        self._position = self._published = self._stored_cursor()
        self._resumed = False
        self._loop = Periodic("bandit-learn", interval, self._tick, "bandit_learning_failed")

    def _stored_cursor(self) -> int:
        """The published cursor as the store has it now."""
        if self.partition is not None:
            return self.store.cursor(partition_cursor(self.partition), self.store.cursor(CURSOR))
        return self.store.cursor(CURSOR) or self.events.cursor(CURSOR)

    def _batch(self, after: int) -> tuple[list[tuple[int, str, dict[str, Any]]], int]:
        """The next records to count after sequence `after`, and the sequence read up to."""
        if self.partition is None:
            rows = self.events.batch_after(after, self.batch)
            return rows, rows[-1][0] if rows else after
        rows = self.events.batch_in(self.partition, after, self.batch)
        # The records without a user id (in the stream, in the partition of the empty user id) are indexed
        # apart: that partition's learner counts them; every learner reads their outcomes, whose decision
        # id or session may name one of its exposures (a logged-in user's exposure, clicked by a client
        # that did not send the user id), and attributes those that do.
        others = self.events.batch_in(self.events.anonymous, after, self.batch)
        own = partition_of("", self.events.partitions) == self.partition
        full = [part[-1][0] for part in (rows, others) if len(part) >= self.batch]
        upto = min(full) if full else max([after] + [part[-1][0] for part in (rows, others) if part])
        outcomes = [
            r
            for r in others
            if r[0] <= upto and (own or (r[2].get("k") != EXPOSURE_KIND and UNREADABLE not in r[2]))
        ]
        return sorted([r for r in rows if r[0] <= upto] + outcomes, key=lambda r: r[0]), upto

    def _restart(self) -> None:
        """Forget what was counted since the cursor in the store, and count again from it."""
        self.stats = BanditStats()
        self.linear = LinearStats()
        self.attributor = Attributor()
        self._position = self._published = self._stored_cursor()
        self._resumed = False
        log.info("bandits_restarted", extra={"partition": self.partition, "position": self._position})

    @property
    def position(self) -> int:
        """The sequence number of the last stored record read."""
        return self._position

    def _resume(self) -> None:
        """Re-read the `replay` records before the published cursor without counting them (once). A store
        written before the cursor moved into the control store has it in the event store."""
        if self._resumed:
            return
        published = self._position
        position = start = max(0, published - self.replay)
        while position < published:
            rows, upto = self._batch(position)
            self._count([r for r in rows if r[0] <= published], replay=True)
            if upto <= position:
                break
            position = min(upto, published)
        self.stats.take()  # these were published before: only the memory of them stays
        self.linear.take()
        self._resumed = True
        if published:
            log.info("bandits_resumed", extra={"position": published, "replayed": published - start})

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

    def _tick(self) -> None:
        try:
            while self.read_once() and not self._loop.stopping:
                pass
        finally:
            self.skipped.flush()
        try:
            self.publish_if_due(time.monotonic())
        except self._retry_on as exc:  # counted again from the cursor (`_restart`), published next time
            log.info("bandits_publish_retry", extra={"partition": self.partition, "error": repr(exc)[:200]})

    def read_once(self) -> int:
        """Count the next batch of stored records; return how many were counted (at least 1 when the
        position moved past records it does not count)."""
        self._resume()
        rows, upto = self._batch(self._position)
        self._count(rows)
        advanced, self._position = upto > self._position, upto
        return max(len(rows), int(advanced))

    def _count(self, rows: Sequence[tuple[int, str, Mapping[str, Any]]], *, replay: bool = False) -> None:
        latest = latest_ms(time.time_ns() // 1_000_000)
        for seq, _, record in rows:
            exposure = record.get("k") == EXPOSURE_KIND
            kind = record.get("t")
            if UNREADABLE not in record and not (
                (exposure and record.get("st") == "bandit")
                or (not exposure and isinstance(kind, str) and kind in self.stats.reward_types)
            ):
                continue  # not a record the learner counts
            problem = record_problem(record, latest)
            if problem is not None:
                if not replay:
                    self.skipped.skip(seq, problem)
                continue
            if exposure:
                if not self.stats.add_exposure_record(record):
                    self.linear.add_exposure_record(record)
                self.attributor.add_exposure(exposure_from_record(record))
            else:
                attributed = self.attributor.add_outcome(outcome_from_record(record))
                if attributed is not None and attributed.exposure is not None:
                    eid = exposure_id(attributed.exposure)
                    if not self.stats.add_reward(eid, attributed.outcome.type):
                        self.linear.add_reward(eid, attributed.outcome.type)

    def publish_if_due(self, now: float) -> CommitInfo | None:
        reason = self.schedule.due(
            new_rewards=self.stats.new_rewards + self.linear.new_rewards,
            new_exposures=self.stats.new_exposures + self.linear.new_exposures,
            now=now,
            last_publish=self.last_publish,
        )
        if reason is None:
            return None
        return self.publish(now, reason)

    def publish(self, now: float, reason: str = "asked") -> CommitInfo | None:
        self._resume()
        with self._lock:
            if self._stored_cursor() != self._published:  # another replica published this partition
                self._restart()
                return None
            with self.store.read() as view:
                raw = view.get("rules", "rules")
            if raw is None:
                return None
            counts, linear, position = self.stats.take(), self.linear.take(), self._position
            rules = update_rules_doc(msgpack.unpackb(raw, raw=False), counts)
            rules = update_linear_rules_doc(rules, linear)
            value = msgpack.packb(rules, use_bin_type=True)
            # The cursor moves with the posteriors: after a crash, counting starts again exactly here.
            try:
                info = self.store.commit_at(
                    [RecordChange("rules", "rules", value)],
                    kind="delta",
                    description=f"bandit posteriors ({reason})",
                    cursor=CURSOR if self.partition is None else partition_cursor(self.partition),
                    position=position,
                )
            except Exception:  # nothing landed, and the counts were taken: count again from the cursor
                self._restart()
                raise
            self._published = position
        self.last_publish = now
        if info is not None:
            self.publishes += 1
            log.info(
                "bandits_published",
                extra={"version": info.version, "reason": reason, "rewards": counts.rewards},
            )
            self._on_commit()
        return info
