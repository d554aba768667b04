"""The control plane's background jobs over the events edges forward: the profile folder
(`sync/profile_folder.py`), the bandit learner (`sync/bandit_learner.py`) and event retention
(`sync/event_retention.py`), and the model refresh jobs `refresh` switches on (`sync/model_refresh.py`),
each a thread of its own (`sync/periodic.py`).

The folder, the learner and the refresh jobs commit under `lock`, the lock the service's pushes,
rollbacks and forgets hold, so no job's commit interleaves with theirs, and call `on_commit` after each
commit (the commit cache's `notify`: subscriptions send it at once). Retention runs only when
`retain_events_ms` is positive (0: keep every stored event). `start` starts them all, `stop` stops them
all and returns when each thread ended (or its timeout passed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

from edgewise.core.bandit_learning import LearningSchedule
from edgewise.sync.bandit_learner import DEFAULT_SCHEDULE, BanditLearner
from edgewise.sync.control_config import RefreshConfig
from edgewise.sync.control_store import ControlStore
from edgewise.sync.embedding_refresh_job import EmbeddingRefreshJob
from edgewise.sync.event_retention import DEFAULT_RETAIN_MS, EventRetention
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh import RefreshJob
from edgewise.sync.model_refresh_jobs import refresh_jobs
from edgewise.sync.profile_folder import ProfileFolder

__all__ = ["ControlJobs", "JobFigures"]

_Job = ProfileFolder | BanditLearner | EventRetention | RefreshJob | EmbeddingRefreshJob


@dataclass(frozen=True, slots=True)
class JobFigures:
    """What the folder, the learners and retention did since start (the control plane's /metrics).
    A backlog is one figure on the embedded control plane (None on a central-tier replica, whose records
    not read yet are per partition: `fold_backlogs` / `learner_backlogs`, of the partitions it works)."""

    fold_backlog: int | None  # stored records the profile folder has not read yet
    folds: int  # commits of folded profiles
    folded_profiles: int
    learner_backlog: int | None  # stored records the bandit learner has not read yet
    bandit_publishes: int
    last_publish: float | None  # time.monotonic() of the last publish
    folder_skipped: int
    learner_skipped: int
    expired: int  # stored records deleted by retention
    fold_backlogs: Mapping[int, int] | None = None  # partition -> records its folder has not read yet
    learner_backlogs: Mapping[int, int] | None = None  # partition -> records its learner has not read yet


class ControlJobs:
    def __init__(
        self,
        store: ControlStore,
        events: EventStore,
        lock: AbstractContextManager[object],
        on_commit: Callable[[], None],
        *,
        bandit_schedule: LearningSchedule = DEFAULT_SCHEDULE,
        retain_events_ms: int = DEFAULT_RETAIN_MS,
        refresh: RefreshConfig | None = None,
    ) -> None:
        self.folder = ProfileFolder(store, events, lock, on_commit)
        self.learner = BanditLearner(store, events, lock, on_commit, schedule=bandit_schedule)
        self.retention = EventRetention(store, events, retain_events_ms) if retain_events_ms else None
        self.refresh = refresh_jobs(refresh, store, events, lock, on_commit) if refresh is not None else []

    def _jobs(self) -> list[_Job]:
        jobs: list[_Job] = [self.folder, self.learner]
        if self.retention is not None:
            jobs.append(self.retention)
        return [*jobs, *self.refresh]

    def start(self) -> None:
        for job in self._jobs():
            job.start()

    def stop(self) -> None:
        for job in self._jobs():
            job.stop()
