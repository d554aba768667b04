"""The ControlPlane service of a central-tier replica (`control serve --nats`, docs/central.md): the
embedded control plane's service (`sync/control_server.py`), with every commit made through the JetStream
change log (`sync/central_replica.py`).

A commit refused because another replica appended first (`LogConflict`) is made again, once this
replica's store has caught up with the log: the push is validated again on the new state (a delta may
now be refused), so two replicas taking pushes at once produce one total order and lose neither. A commit
JetStream did not confirm in time answers UNAVAILABLE (it may still land: `ctl history` shows it).
Subscribe, History, Status and Report read the local store, the materialized view of the log, as the
embedded control plane reads its own.

Canary and shadow rollouts (docs/rollouts.md) work as on the embedded control plane, their state in the
change log with the commits it belongs to (`sync/central_log.py`): every replica's store, and so its
rollout gate and fan-out, holds the same rollout at the same log position, whichever replica took the
push, the promote or the abort (a promote or abort through two replicas at once: the log takes one, the
other is refused once it caught up, "no rollout in progress"). The canary set by percent counts the
edges of every replica (the shared fleet), and the watch that judges the canary against the rest, from
every replica's edges' heartbeats, runs on the holder of the `jobs` lease only; its abort goes through
the log like any, so even two holders at once (a lease handed over) end the rollout once.

The jobs over forwarded events run on every replica, each over the partitions of the events stream it
holds the leases of (`sync/central_partitions.py`): the profile folder over all of them, one bandit
learner per partition; their commits go through the log like a push, with their cursors in them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import grpc

from edgewise.core.bandit_learning import LearningSchedule
from edgewise.sync.bandit_learner import DEFAULT_SCHEDULE, BanditLearner
from edgewise.sync.central_events import CentralEvents
from edgewise.sync.central_fleet import FleetShare
from edgewise.sync.central_jobs import EventsFollower, JobsLease
from edgewise.sync.central_log import LogConflict, LogUnavailable
from edgewise.sync.central_partitions import PartitionLeases
from edgewise.sync.central_replica import Replica
from edgewise.sync.control_jobs import JobFigures
from edgewise.sync.control_server import ControlPlaneService, RolloutRequest
from edgewise.sync.control_store import CommitInfo, ControlStore
from edgewise.sync.embedding_refresh_job import EmbeddingRefreshJob
from edgewise.sync.event_retention import DEFAULT_RETAIN_MS, EventRetention
from edgewise.sync.event_store import EventStore, EventStoreError, IngestResult
from edgewise.sync.fleet import EdgeEntry
from edgewise.sync.model_refresh import RefreshJob
from edgewise.sync.model_refresh_jobs import refresh_jobs
from edgewise.sync.profile_folder import CURSOR as FOLD_CURSOR
from edgewise.sync.profile_folder import ProfileFolder, folded_upto
from edgewise.sync.profile_folder import partition_cursor as fold_partition_cursor
from edgewise.v1 import sync_pb2

log = logging.getLogger(__name__)

__all__ = ["CentralControlService"]

MAX_ATTEMPTS: Final = 50
CATCH_UP_S: Final = 10.0
RESUME_WAIT_S: Final = 5.0  # how long a Subscribe waits for the log to reach the edge's version
FOLD_EVERY_S: Final = 0.1  # the change log's fold commits per second: about 1 / FOLD_EVERY_S
SNAPSHOT_EVERY: Final = 1000  # commits between snapshots (and after every push or rollback)
BACKLOG_COUNT_LIMIT: Final = 1_000_000  # a backlog past it shows as this (a scrape walks the index)
COUNT_WAIT_S: Final = 3.0  # how long Status waits for the local copy of the events stream to catch up
T = TypeVar("T")


class CentralControlService(ControlPlaneService):
    def __init__(
        self,
        store: ControlStore,
        replica: Replica,
        *,
        events: EventStore,
        central_events: CentralEvents,
        bandit_schedule: LearningSchedule = DEFAULT_SCHEDULE,
        retain_events_ms: int = DEFAULT_RETAIN_MS,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            store, events=events, bandit_schedule=bandit_schedule, retain_events_ms=retain_events_ms, **kwargs
        )
        self.jobs = None  # the folder and the learners work the partitions leased here (`partition_leases`)
        self.replica = replica
        self.central_events = central_events
        self.local_events = events
        replica.notify = self._notify
        replica.lock = self._push_lock  # see Replica.lock
        replica.hold = self.gate.hold
        replica.rollout_applied = self._rollout_applied
        self._bandit_schedule = bandit_schedule
        self.follower = EventsFollower(central_events, events)
        self.lease = JobsLease(
            replica.central.bridge, self._lead, self._follow, replicas=replica.central.replicas
        )
        self.shared_fleet = FleetShare(
            replica.central.bridge, self.fleet, self.lease.holder_id, replicas=replica.central.replicas
        )
        self.partition_leases = PartitionLeases(
            replica.central.bridge,
            central_events.partitions,
            self.lease.holder_id,
            self._partitions_changed,  # the folder reads `held()` at each fold; the learners start here
            replicas=replica.central.replicas,
        )
        self.folder = ProfileFolder(
            store,
            events,
            self._push_lock,
            self.cache.notify,
            partitions=self.partition_leases.held,
            retry_on=(LogConflict, LogUnavailable),
            catch_up=self._catch_up,
        )
        self._leading: list[ProfileFolder | BanditLearner | RefreshJob | EmbeddingRefreshJob] = []
        self._leading_lock = threading.Lock()
        self.learners: dict[int, BanditLearner] = {}  # one per partition held here
        self._learners_lock = threading.Lock()
        self._gone_publishes = 0  # of the learners of partitions this replica gave up (for /metrics)
        self._gone_skipped = 0
        partitions = range(central_events.partitions)
        self.retention = (
            EventRetention(
                store, events, retain_events_ms, folded=lambda: folded_upto(self.store, events, partitions)
            )
            if retain_events_ms
            else None
        )
        self._snapshot_due = threading.Event()
        self._snapshotter = threading.Thread(target=self._snapshots, name="snapshots", daemon=True)
        self._stopping = threading.Event()
        self._last_snapshot = 0

    def start_background(self) -> None:
        self.follower.start()
        if self.retention is not None:
            self.retention.start()
        self.lease.start()
        self.partition_leases.start()
        self.folder.start()
        self.shared_fleet.start()
        self._snapshotter.start()
        self._rollout_watch.start()

    def stop_background(self) -> None:
        self._stopping.set()
        self._snapshot_due.set()
        self._rollout_watch.stop()
        self.lease.stop()
        self.partition_leases.stop()
        self.folder.stop()
        self.shared_fleet.stop()
        self._follow()
        self._partitions_changed(frozenset())
        if self.retention is not None:
            self.retention.stop()
        self.follower.stop()
        self._snapshotter.join(10.0)

    def _catch_up(self, refused: Exception) -> None:
        """After the log refused a job's commit: until this replica applied the log up to where it is."""
        if isinstance(refused, LogConflict):
            self.replica.wait_position(refused.last, CATCH_UP_S)

    def _lease_jobs(self) -> list[ProfileFolder | BanditLearner | RefreshJob | EmbeddingRefreshJob]:
        """The jobs only the holder of the jobs lease runs: the model refresh jobs, when `[refresh]` turns
        any on (the folder and the learners work the partitions leased here, `_partitions_changed`)."""
        if self.refresh_config is None:
            return []
        jobs = refresh_jobs(
            self.refresh_config, self.store, self.local_events, self._push_lock, self.cache.notify
        )
        return list(jobs)

    def job_figures(self) -> JobFigures:
        """The folder's and this replica's learners' figures since start (a learner's stay counted once
        its partition moves elsewhere), and the backlogs of the partitions it works: the records of each
        that its folder or learner has not read yet, counted up to `BACKLOG_COUNT_LIMIT`."""
        with self._learners_lock:
            learners = dict(self.learners)
            publishes, skipped = self._gone_publishes, self._gone_skipped
        published = [t for t in (learner.last_publish for learner in learners.values()) if t is not None]
        start = self.store.cursor(FOLD_CURSOR)
        fold_backlogs = {
            p: self.local_events.count_in(
                p, self.store.cursor(fold_partition_cursor(p), start), BACKLOG_COUNT_LIMIT
            )
            for p in sorted(self.partition_leases.held())
        }
        learner_backlogs = {
            p: self.local_events.count_in(p, learner.position, BACKLOG_COUNT_LIMIT)
            for p, learner in sorted(learners.items())
        }
        return JobFigures(
            fold_backlog=None,
            folds=self.folder.commits,
            folded_profiles=self.folder.profiles,
            learner_backlog=None,
            bandit_publishes=publishes + sum(learner.publishes for learner in learners.values()),
            last_publish=max(published) if published else None,
            folder_skipped=self.folder.skipped.total,
            learner_skipped=skipped + sum(learner.skipped.total for learner in learners.values()),
            expired=self.retention.expired if self.retention is not None else 0,
            fold_backlogs=fold_backlogs,
            learner_backlogs=learner_backlogs,
        )

    def refresh_jobs(self) -> list[RefreshJob | EmbeddingRefreshJob]:
        """The model refresh jobs this replica runs now: none unless it holds the jobs lease; their figures
        count from when it took the lease."""
        with self._leading_lock:
            return [job for job in self._leading if isinstance(job, RefreshJob | EmbeddingRefreshJob)]

    def _lead(self) -> None:
        """This replica took the jobs lease: start the jobs one replica runs at a time."""
        with self._leading_lock:
            self._leading = self._lease_jobs()
            for job in self._leading:
                job.start()

    def _follow(self) -> None:
        """This replica lost (or gave up) the jobs lease."""
        with self._leading_lock:
            jobs, self._leading = self._leading, []
        for job in jobs:
            job.stop()

    def _partitions_changed(self, held: frozenset[int]) -> None:
        """Learn from the partitions this replica holds now: one learner each, from the cursor the log
        holds (`BanditLearner(partition=...)`); and fold every 100 ms times the live replicas, so the
        change log takes about ten fold commits a second however many replicas fold."""
        self.folder.pace(FOLD_EVERY_S * max(1, self.partition_leases.members))
        with self._learners_lock:
            for partition in sorted(set(self.learners) - held):
                gone = self.learners.pop(partition)
                gone.stop()
                self._gone_publishes += gone.publishes
                self._gone_skipped += gone.skipped.total
            for partition in sorted(held - set(self.learners)):
                learner = BanditLearner(
                    self.store,
                    self.local_events,
                    self._push_lock,
                    self.cache.notify,
                    schedule=self._bandit_schedule,
                    partition=partition,
                    retry_on=(LogConflict, LogUnavailable),
                )
                self.learners[partition] = learner
                learner.start()

    # --- forwarded events live in JetStream ---------------------------------------------------------

    def _store_forwarded(
        self, node_id: str, records: list[tuple[str, str, bytes]], users: list[str]
    ) -> IngestResult:
        try:
            return self.central_events.store(node_id, records, users)
        except LogUnavailable as exc:
            raise EventStoreError(str(exc)) from exc

    def _forget_events(self, user: str) -> int:
        removed = self.central_events.forget(user)
        self.local_events.forget(user)
        return removed

    def _events_total(self) -> int:
        # The distinct records: the local copy de-duplicates by id, the stream does not past its duplicate
        # window (sync/central_events.py). Read once the copy holds what the stream holds now.
        if not self.central_events.wait_copied(self.follower.position, COUNT_WAIT_S):
            log.warning("events_total_behind", extra={"copied": self.follower.position()})
        return self.local_events.count()

    def _await_version(self, lineage: str, version: int) -> None:
        # An edge that moved here from another replica may have applied a commit this replica has not
        # applied yet (the log's newest, made by the replica it left): wait for it, so the edge resumes
        # from its version rather than getting a full snapshot of an older head.
        if lineage == self.store.lineage and version > self.store.head_version():
            caught_up = self.replica.wait_version(version, RESUME_WAIT_S)
            log.info("edge_waited_for_log", extra={"version": version, "caught_up": caught_up})

    def _fleet_edges(self) -> list[EdgeEntry]:
        return self.shared_fleet.edges()

    def _through_log(
        self, make: Callable[[], T], what: str, fail: Callable[[grpc.StatusCode, str], NoReturn]
    ) -> T:
        """`make()` until the log takes its commit: after a conflict, once this store caught up."""
        for _attempt in range(MAX_ATTEMPTS):
            try:
                return make()
            except LogConflict as conflict:
                log.info("log_conflict", extra={"what": what, "log_position": conflict.last})
                if not self.replica.wait_position(conflict.last, CATCH_UP_S):
                    why = self.replica.failed or "still catching up"
                    fail(
                        grpc.StatusCode.UNAVAILABLE,
                        f"{what} not applied: this replica is behind the change log ({why}); retry",
                    )
            except LogUnavailable as exc:
                log.error("log_unavailable", extra={"what": what, "error": str(exc)})
                fail(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{what}: the change log (NATS JetStream) did not confirm it in time, so it may or may "
                    "not have landed: check `edgewise ctl history` (`ctl status` for a promote or an abort's "
                    "rollout), then retry",
                )
        fail(grpc.StatusCode.ABORTED, f"{what} not applied: the change log kept moving; retry")
        raise AssertionError("unreachable")

    def _apply_push(
        self,
        kind: int,
        description: str,
        files: list[str],
        staging: Path,
        refuse: Callable[[grpc.StatusCode, str], NoReturn],
        *,
        rollout: RolloutRequest | None = None,
    ) -> tuple[CommitInfo | None, str]:
        result = self._through_log(
            lambda: super(CentralControlService, self)._apply_push(
                kind, description, files, staging, refuse, rollout=rollout
            ),
            "canary push" if rollout is not None else "push",
            refuse,
        )
        if result[0] is not None and result[0].kind == "push":
            self._snapshot_due.set()
        return result

    # --- rollouts: their state in the change log ----------------------------------------------------

    def _rollout_applied(self) -> None:
        """The follower applied a log message with rollout state (or a snapshot): the gate takes it from the
        store, then releases the edges it held meanwhile (`Replica.hold`)."""
        self.gate.reload(self.store)
        self.gate.release()

    def Promote(self, request: sync_pb2.PromoteRequest, context: grpc.ServicerContext) -> sync_pb2.PushReply:
        return self._through_log(
            lambda: super(CentralControlService, self).Promote(request, context), "promote", context.abort
        )

    def Abort(self, request: sync_pb2.AbortRequest, context: grpc.ServicerContext) -> sync_pb2.PushReply:
        reply = self._through_log(
            lambda: super(CentralControlService, self).Abort(request, context), "abort", context.abort
        )
        self._snapshot_due.set()
        return reply

    def check_rollout(self) -> None:
        """The watch runs on the holder of the jobs lease (the figures are every replica's edges'). A
        promote or abort another replica's appended first: judged again, on the log's state, next time."""
        if not self.lease.held:
            return
        try:
            super().check_rollout()
        except LogConflict as conflict:
            self.replica.wait_position(conflict.last, CATCH_UP_S)

    def Rollback(
        self, request: sync_pb2.RollbackRequest, context: grpc.ServicerContext
    ) -> sync_pb2.PushReply:
        reply = self._through_log(
            lambda: super(CentralControlService, self).Rollback(request, context), "rollback", context.abort
        )
        self._snapshot_due.set()
        return reply

    def Forget(self, request: sync_pb2.ForgetRequest, context: grpc.ServicerContext) -> sync_pb2.ForgetReply:
        reply = self._through_log(
            lambda: super(CentralControlService, self).Forget(request, context), "forget", context.abort
        )
        # The change log's older messages and snapshots still hold the user's profile: a snapshot of the
        # state after the forget replaces them (the log is compacted to it, older snapshots deleted).
        try:
            self.replica.write_snapshot(keep=1)
        except Exception as exc:
            log.error("forget_compaction_failed", extra={"error": repr(exc)[:300]})
            self._snapshot_due.set()
        return reply

    def _snapshots(self) -> None:
        """Write a snapshot after a push or rollback made here, and every SNAPSHOT_EVERY commits."""
        while not self._stopping.is_set():
            due = self._snapshot_due.wait(5.0)
            if self._stopping.is_set():
                return
            head = self.store.head_version()
            if not due and head - self._last_snapshot < SNAPSHOT_EVERY:
                continue
            self._snapshot_due.clear()
            try:
                self.replica.write_snapshot()
                self._last_snapshot = head
            except Exception as exc:
                log.warning("snapshot_failed", extra={"error": repr(exc)[:300]})
                time.sleep(1.0)
