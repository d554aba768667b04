"""The refresh jobs the `[refresh]` configuration asks for (docs/refresh.md): one `RefreshJob` per model
switched on, each on its own schedule, and the `EmbeddingRefreshJob` (sync/embedding_refresh_job.py)
when `embeddings` is on. The embedded control plane runs them with its other jobs
(`sync/control_jobs.py`); a central-tier replica runs them while it holds the jobs lease
(`sync/central_service.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta

from edgewise.core.embedding_training import TrainingSettings
from edgewise.core.model_refresh import NeighborsRefresh, NewItems, PopularityRefresh, TrendingRefresh
from edgewise.sync.control_config import RefreshConfig
from edgewise.sync.control_store import ControlStore
from edgewise.sync.embedding_refresh import EmbeddingRefreshSettings
from edgewise.sync.embedding_refresh_job import EmbeddingRefreshJob
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh import RefreshJob

__all__ = ["embedding_settings", "refresh_jobs"]

_MS = timedelta(milliseconds=1)
_DAY = timedelta(days=1)


def refresh_jobs(
    config: RefreshConfig,
    store: ControlStore,
    events: EventStore,
    lock: AbstractContextManager[object],
    on_commit: Callable[[], None],
) -> list[RefreshJob | EmbeddingRefreshJob]:
    """The jobs of the models `config` switches on (not started)."""
    jobs: list[RefreshJob | EmbeddingRefreshJob] = []
    if config.popularity:
        model = PopularityRefresh(half_life_ms=config.popularity_half_life // _MS)
        new_items = NewItems(config.new_item_min_users) if config.new_items else None
        every = config.popularity_every.total_seconds()
        jobs.append(RefreshJob(store, events, lock, on_commit, model, every=every, new_items=new_items))
    if config.trending:
        trending = TrendingRefresh(days=config.trending_days)
        every = config.trending_every.total_seconds()
        jobs.append(RefreshJob(store, events, lock, on_commit, trending, every=every))
    if config.neighbors:
        neighbors = NeighborsRefresh(
            window_ms=config.neighbors_window // _MS,
            k=config.neighbors_k,
            min_support=config.neighbors_min_support,
        )
        every = config.neighbors_every.total_seconds()
        jobs.append(RefreshJob(store, events, lock, on_commit, neighbors, every=every))
    if config.embeddings:
        every = config.embeddings_every.total_seconds()
        jobs.append(
            EmbeddingRefreshJob(
                store,
                events,
                lock,
                on_commit,
                embedding_settings(config),
                every=every,
                commit_profiles=config.embeddings_commit_profiles,
                commit_pause=config.embeddings_commit_pause.total_seconds(),
            )
        )
    return jobs


def embedding_settings(config: RefreshConfig) -> EmbeddingRefreshSettings:
    """The training settings of the `embeddings_*` keys (`factors`: the bundle's dim, all of it)."""
    half_life = config.embeddings_half_life
    return EmbeddingRefreshSettings(
        training=TrainingSettings(
            method=config.embeddings_method,
            iterations=config.embeddings_iterations,
            regularization=config.embeddings_regularization,
            alpha=config.embeddings_alpha,
            learning_rate=config.embeddings_learning_rate,
            seed=config.embeddings_seed,
        ),
        half_life_days=half_life / _DAY if half_life > timedelta(0) else None,
    )
