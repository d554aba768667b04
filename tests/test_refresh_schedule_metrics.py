"""The refresh jobs' schedule and figures: a job's first run comes at its start (not one period after),
and its runs, failures, last run's duration and last committed version are on the control plane's
/metrics (sync/control_metrics.py), per model; on a real control store and event store."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.core import Metric

from edgewise.core.model_refresh import PopularityRefresh
from edgewise.sync.bundle import load_bundle
from edgewise.sync.changes import bundle_records
from edgewise.sync.control_config import RefreshConfig
from edgewise.sync.control_metrics import CallMeter, ControlCollector
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh import RefreshJob
from edgewise.sync.periodic import Periodic
from tests.refresh_support import event, tiny_bundle

DAY = 86_400_000


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[ControlStore, EventStore]]:
    bundle = load_bundle(tiny_bundle(tmp_path / "bundle"))
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        store.replace_all(bundle_records(bundle), kind="push")
        yield store, events


def _wait(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_periodic_first_now_ticks_at_start() -> None:
    ticks: list[float] = []
    late = Periodic("late", 3600, lambda: ticks.append(1), "failed")
    soon = Periodic("soon", 3600, lambda: ticks.append(2), "failed", first_now=True)
    late.start()
    soon.start()
    try:
        assert _wait(lambda: 2 in ticks)
        time.sleep(0.1)
        assert 1 not in ticks  # without first_now the first tick is an interval away
    finally:
        late.stop()
        soon.stop()


def test_a_refresh_job_runs_its_first_cycle_at_start(stores: tuple[ControlStore, EventStore]) -> None:
    store, events = stores
    events.ingest("n1", [event(f"e{n}", "purchase", f"u{n}", "i5") for n in range(3)])
    pushed = store.head_version()
    job = RefreshJob(
        store, events, threading.Lock(), lambda: None, PopularityRefresh(half_life_ms=7 * DAY), every=3600
    )
    job.start()
    try:
        assert _wait(lambda: store.head_version() > pushed)  # an hourly job: its first run did not wait
    finally:
        job.stop()
    assert job.stats.runs == 1 and job.stats.failures == 0 and job.commits == 1
    assert job.stats.last_version == store.head_version() and math.isfinite(job.stats.last_seconds)


def _samples(collector: ControlCollector) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    family: Metric
    for family in collector.collect():
        for sample in family.samples:
            if sample.name.startswith("edgewise_control_refresh_"):
                out[sample.name, sample.labels.get("model", "")] = sample.value
    return out


def test_refresh_figures_are_on_the_metrics(
    stores: tuple[ControlStore, EventStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, events = stores
    config = RefreshConfig(popularity=True, trending=True)
    service = ControlPlaneService(store, events=events, refresh=config)  # jobs built, not started
    collector = ControlCollector(service, CallMeter())
    before = _samples(collector)
    assert before[("edgewise_control_refresh_runs_total", "popularity")] == 0
    assert before[("edgewise_control_refresh_runs_total", "trending")] == 0
    assert before[("edgewise_control_refresh_last_version", "popularity")] == 0
    assert math.isnan(before[("edgewise_control_refresh_last_run_seconds", "popularity")])

    assert service.jobs is not None
    popularity, trending = service.jobs.refresh
    events.ingest("n1", [event(f"e{n}", "view", f"u{n}", "i4") for n in range(3)])
    popularity._tick()  # one scheduled run, as the job's thread makes it
    committed = store.head_version()

    def broken() -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(trending, "run_once", broken)
    with pytest.raises(RuntimeError):
        trending._tick()  # Periodic logs it as model_refresh_failed; the figures count it
    after = _samples(collector)
    assert after[("edgewise_control_refresh_runs_total", "popularity")] == 1
    assert after[("edgewise_control_refresh_commits_total", "popularity")] == 1
    assert after[("edgewise_control_refresh_staging_commits_total", "popularity")] == 0  # embeddings only
    assert after[("edgewise_control_refresh_last_version", "popularity")] == committed
    assert after[("edgewise_control_refresh_failures_total", "popularity")] == 0
    assert after[("edgewise_control_refresh_runs_total", "trending")] == 1
    assert after[("edgewise_control_refresh_failures_total", "trending")] == 1
    assert after[("edgewise_control_refresh_last_version", "trending")] == 0
    assert after[("edgewise_control_refresh_last_run_seconds", "trending")] >= 0.0


def test_without_refresh_jobs_no_refresh_family(stores: tuple[ControlStore, EventStore]) -> None:
    store, events = stores
    collector = ControlCollector(ControlPlaneService(store, events=events), CallMeter())
    assert _samples(collector) == {}
