"""The refresh jobs the `[refresh]` configuration asks for (docs/refresh.md): one `RefreshJob` per model
switched on, each on its own schedule. The embedded control plane runs them with its other jobs
(`sync/control_jobs.py`); a central-tier replica runs them while it holds the jobs lease
(`sync/central_service.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta

from edgewise.core.model_refresh import NeighborsRefresh, NewItems, PopularityRefresh, TrendingRefresh
from edgewise.sync.control_config import RefreshConfig
from edgewise.sync.control_store import ControlStore
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh import RefreshJob

__all__ = ["refresh_jobs"]

_MS = timedelta(milliseconds=1)


def refresh_jobs(
    config: RefreshConfig,
    store: ControlStore,
    events: EventStore,
    lock: AbstractContextManager[object],
    on_commit: Callable[[], None],
) -> list[RefreshJob]:
    """The jobs of the models `config` switches on (not started)."""
    jobs: list[RefreshJob] = []
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
    return jobs
