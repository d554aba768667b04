"""The embeddings refresh on the refresh framework's schedule (docs/refresh.md, docs/embeddings.md).

`EmbeddingRefreshJob` retrains `models/item_embeddings` and the profiles' vectors from the forwarded
events every `every` seconds (`[refresh] embeddings`, `sync/model_refresh_jobs.py` builds it), with
`sync/embedding_refresh.py`'s two steps, and publishes the result through the change log as commits of
kind "refresh", as the other refresh jobs (`sync/model_refresh.RefreshJob`) do: versioned, listed by
`ctl history`, rolled back like any push, sent to the edges like any commit. A run makes the next
embedding generation (core/embedding_slots.py) in paced commits, so that no edge applies 100k profiles
at once: staging commits of at most `commit_profiles` profiles each ("refresh embeddings staging:
generation G, batch B of K, N profiles"; no user id, which a forget could not take back), inert on the
edges, `commit_pause` seconds apart, each under the push lock alone (a push or another job may land
between them), then one flip commit of the
item vectors and the generation ("refresh embeddings: ...; events A..B (time window)") with the job's
cursor. `commit_profiles` 0: the whole run in one commit.

It is not a `core/model_refresh.ModelRefresh` run by a `RefreshJob`, for three reasons: training reads
every stored event with its purpose (only `personalization` events train a user's vector), which a
`RefreshEvent` does not carry; carrying the vectors of profiles whose user had no event into the new
factor space needs every profile's current `e`, which a `ModelState` does not hold; and a `RefreshJob`
computes again when any commit (the profile folder's, every few seconds) landed during its run, and
the third time under the push lock, which for a training of seconds would stall pushes. Here training
runs outside the lock and is redone only when the catalog (item rows, dim) changed (`CatalogChanged`);
the profiles' `e` are written against the state under the lock, so a commit that landed meanwhile is
kept.

The schedule survives restarts and lease moves: a run is due `every` seconds after the last flip
commit of this model in the change log (the newest of the last 10,000 commits; none: at once), checked
at start and then every `min(every, 60 s)`, then `every` after each run. `stats` (`RefreshStats`)
counts the runs that were due, their failures and durations, and the last version committed.

A run: when no item event (view, click, add to cart, purchase) was stored since the cursor
`refresh:embeddings`, nothing is trained and the cursor moves on; else the model is trained on every
stored event (outside the lock), then the staging commits and the flip are written, each against the
state under the lock (the changes that differ from the store), and the cursor moves to the newest event
read with the flip only. A catalog or active generation that changed since training
(`CatalogChanged`), a job stopped (`stop`, or a central-tier replica losing the jobs lease) or a process
killed before the flip leave the active generation and the cursor where they were: the edges keep
deciding with it, and the next run trains and stages again (replacing the vectors staged before).
Rolling back the flip restores the item arrays and the generation, so the edges use the users' vectors
of the generation before again (still in their records); the cursor stays, so the next refresh comes
with the next item event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Final

from edgewise.core.model_refresh import ITEM_EVENT_TYPES
from edgewise.sync.control_store import CommitInfo, ControlStore, ControlView, RecordChange
from edgewise.sync.embedding_refresh import (
    CatalogChanged,
    EmbeddingRefreshSettings,
    StagingPlan,
    TrainedRefresh,
    flip_changes,
    plan_staging,
    staging_changes,
    train_refresh,
)
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh import CURSOR_PREFIX, KIND, RefreshStats
from edgewise.sync.periodic import Periodic

log = logging.getLogger(__name__)

__all__ = ["NAME", "EmbeddingRefreshJob"]

NAME: Final = "embeddings"
CHECK_SECONDS: Final = 60.0  # how often a long schedule checks whether a run is due
DEFAULT_COMMIT_PROFILES: Final = 5000
DEFAULT_COMMIT_PAUSE: Final = 1.0
_PAUSE_STEP: Final = 0.05
_HISTORY: Final = 10_000  # commits searched for the last refresh at start


class EmbeddingRefreshJob:
    """The embeddings refresh on a schedule (see the module doc)."""

    def __init__(
        self,
        store: ControlStore,
        events: EventStore,
        lock: AbstractContextManager[object],
        on_commit: Callable[[], None],
        settings: EmbeddingRefreshSettings,
        *,
        every: float,
        commit_profiles: int = DEFAULT_COMMIT_PROFILES,
        commit_pause: float = DEFAULT_COMMIT_PAUSE,
    ) -> None:
        self.store = store
        self.events = events
        self._lock = lock
        self._on_commit = on_commit
        self.settings = settings
        self.name = NAME
        self.cursor = CURSOR_PREFIX + NAME
        self.stats = RefreshStats()  # for the control plane's /metrics
        self.every = every
        self.commit_profiles = commit_profiles  # profiles per staging commit (0: the whole run in one)
        self.commit_pause = commit_pause  # seconds between two commits of a run
        self._last_ms: int | None = None  # the last run's time (None: look it up in the change log)
        check = min(every, CHECK_SECONDS)
        self._loop = Periodic(f"refresh-{NAME}", check, self._tick, "model_refresh_failed", first_now=True)

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

    @property
    def commits(self) -> int:
        """Refresh commits published since start."""
        return self.stats.commits

    def _tick(self) -> None:
        now_ms = time.time_ns() // 1_000_000
        if self._last_ms is None:
            self._last_ms = self.last_refresh_ms()
        if now_ms - self._last_ms < self.every * 1000:
            return
        self._last_ms = now_ms
        self.stats.run(self._run)

    def _run(self) -> None:
        self.run_once()

    def last_refresh_ms(self) -> int:
        """The time of this model's newest refresh commit among the last 10,000 commits (0: none)."""
        prefix = f"refresh {NAME}:"
        for info in self.store.history(_HISTORY):
            if info.kind == KIND and info.description.startswith(prefix):
                return info.created_at_ms
        return 0

    def run_once(self) -> CommitInfo | int | None:
        """Retrain when an item event arrived since the last run: the commit, the position read when
        nothing changed (or nothing could be trained), None when there was nothing new or the catalog
        changed during training."""
        after = self.store.cursor(self.cursor)
        position = self.events.last_seq()
        if position <= after:
            return None
        if not any(record.get("t") in ITEM_EVENT_TYPES for _, _, record in self.events.events(after)):
            self.store.commit_at([], kind=KIND, cursor=self.cursor, position=position)
            return position  # exposures only: nothing to retrain
        first = next((seq for seq, _, _ in self.events.events(0)), position)
        with self.store.read() as view:
            trained = train_refresh(view, self.events, self.settings)
        if trained is None:  # no catalog, no dim or no usable event: wait for the next item event
            self.store.commit_at([], kind=KIND, cursor=self.cursor, position=position)
            return position
        try:
            with self.store.read() as view:
                plan = plan_staging(view, trained)
            paced = self.commit_profiles > 0  # else the whole run in one commit
            batches = plan.batches(self.commit_profiles) if paced else []
            for i, users in enumerate(batches):
                if i and not self._pause():
                    return None  # stopped (or the lease lost) between commits: the next run stages again
                if not self._stage(trained, plan, users, f"batch {i + 1} of {len(batches)}"):
                    return None
            if paced and plan.users and not self._pause():
                return None
            with self._lock:
                if self._loop.stopping:  # stopped (or the lease lost) while training: commit nothing
                    return None
                with self.store.read() as view:
                    staged = [] if paced else staging_changes(view, trained, plan, plan.users)
                    changes = _changed(view, [*staged, *flip_changes(view, trained, plan)])
                info = self.store.commit_at(
                    changes,
                    kind=KIND,
                    description=self._description(trained, plan, first, position),
                    cursor=self.cursor,
                    position=position,
                )
        except CatalogChanged as exc:
            log.warning("embeddings_refresh_skipped", extra={"reason": str(exc)})
            return None
        if info is None:
            return position
        self.stats.committed(info.version)
        log.info(
            "model_refreshed",
            extra={
                "model": NAME,
                "version": info.version,
                "changes": info.changes,
                "new_items": 0,
                "events_to": position,
            },
        )
        self._on_commit()
        return info

    def _stage(self, trained: TrainedRefresh, plan: StagingPlan, users: tuple[str, ...], batch: str) -> bool:
        """One staging commit: `users`' vectors of the plan's generation (the push lock held for it only);
        False when the job was stopped first."""
        with self._lock:
            if self._loop.stopping:
                return False
            with self.store.read() as view:
                changes = staging_changes(view, trained, plan, users)  # the records that change only
            info = self.store.commit_at(
                changes,
                kind=KIND,
                description=(
                    f"refresh {NAME} staging: generation {plan.generation}, {batch}, {len(users)} profiles"
                ),
            )
        if info is not None:
            self.stats.staged += 1
            self._on_commit()
        return True

    def _pause(self) -> bool:
        """Wait `commit_pause` seconds between two commits; False when the job was stopped meanwhile."""
        deadline = time.monotonic() + self.commit_pause
        while not self._loop.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, _PAUSE_STEP))
        return False

    def _description(self, trained: TrainedRefresh, plan: StagingPlan, first: int, last: int) -> str:
        window = f"{_iso(trained.first_ms)}..{_iso(trained.last_ms)}" if trained.last_ms else "no item events"
        return (
            f"refresh {NAME}: {self.settings.training.method} on {trained.events} events, "
            f"{len(trained.user_vectors)} users, {trained.items_trained} items trained, "
            f"generation {plan.generation}; events {first}..{last} ({window})"
        )


def _changed(view: ControlView, changes: list[RecordChange]) -> list[RecordChange]:
    """The changes that differ from the store."""
    return [change for change in changes if change.value != view.get(change.namespace, change.key)]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
