"""The supervisor loop of `edgewise edge serve` outlives what its steps raise (hardening, issue 16 item 3).

`StepGuard` logs a failing step (rate-limited) and the loop goes on; `load_bundle_file` turns a load
that fails in a way nobody foresaw into a logged refusal; and a real node reloading bad bundles on
SIGHUP (rules.json nested 100,000 deep, an `.npy` header declaring shape (2000, 10**9)) refuses each,
keeps serving its snapshot, keeps housekeeping, restarting workers and reloading (a good bundle after
the bad ones is picked up), and stops with 0 within its grace on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from bad_bundles import deep_rules_bundle, huge_npy_bundle
from conftest import EdgeProcess, rewrite_manifest

import edgewise.edge.serve as serve
from edgewise.core.store import Store
from edgewise.edge.serve import StepGuard
from edgewise.offline.synth import synth_bundle
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_bundle(tmp_path_factory.mktemp("good") / "b", users=60, items=50, seed=5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_step_that_fails_every_tick_is_logged_rate_limited_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    guard = StepGuard(interval=60.0, clock=clock)
    ran: list[str] = []

    def failing() -> None:
        raise RecursionError("maximum recursion depth exceeded")

    with caplog.at_level(logging.INFO, logger="edgewise.edge.serve"):
        for _ in range(300):  # a minute at 5 ticks a second
            assert guard.run("reload", failing) is False
            assert guard.run("housekeeping", lambda: ran.append("housekeeping")) is True
            assert guard.run("memory", lambda: np.empty(2**62, dtype=np.uint8)) is False  # MemoryError
            clock.now += 0.2
        assert guard.run("reload", lambda: None) is True
    assert len(ran) == 300
    failed = [r for r in caplog.records if r.getMessage() == "supervisor_step_failed"]
    by_step = {step: [r for r in failed if getattr(r, "step", None) == step] for step in ("reload", "memory")}
    assert len(by_step["reload"]) == 1 and len(by_step["memory"]) == 1  # the first; the next after 60 s
    assert "RecursionError" in str(getattr(by_step["reload"][0], "error", ""))
    clock.now += 60
    with caplog.at_level(logging.INFO, logger="edgewise.edge.serve"):
        guard.run("memory", lambda: np.empty(2**62, dtype=np.uint8))
    again = [r for r in caplog.records if r.getMessage() == "supervisor_step_failed"][-1]
    assert getattr(again, "failures", None) == 301 and getattr(again, "failures_since_last_line", None) == 300
    recovered = [r for r in caplog.records if r.getMessage() == "supervisor_step_recovered"]
    assert [(getattr(r, "step", None), getattr(r, "failures", None)) for r in recovered] == [("reload", 300)]
    assert guard.failures == 601


def test_a_load_failing_unforeseen_leaves_the_snapshot_and_is_logged(
    good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with Store(tmp_path / "data", map_size=64 << 20) as store:
        assert serve.load_bundle_file(store, good_dir)

        def exhausted(path: Path) -> None:
            raise MemoryError("no room for it")

        monkeypatch.setattr(serve, "load_bundle", exhausted)
        other = Path(shutil.copytree(good_dir, tmp_path / "v2"))
        rewrite_manifest(other, version=2)
        with caplog.at_level(logging.INFO, logger="edgewise.edge.serve"):
            assert serve.load_bundle_file(store, other) is False
        assert store.version() == 1
    [line] = [r for r in caplog.records if r.getMessage() == "bundle_not_applied"]
    assert getattr(line, "error", None) == "MemoryError: no room for it" and line.exc_info is not None


def _metric(address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in the metrics")


def _wait(predicate: Callable[[], bool], what: str, edge: EdgeProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{edge.log_tail(30)}"
        time.sleep(0.05)


def _events(edge: EdgeProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in edge.log_events() if e.get("event") == name]


def _version(edge: EdgeProcess) -> int:
    with grpc.insecure_channel(edge.address) as channel:
        response = pb_grpc.PersonalizerStub(channel).Decide(
            pb.DecideRequest(placements=[pb.PlacementRequest(placement_id="home")], session_id="s"), timeout=5
        )
    return int(response.snapshot_version)


@pytest.mark.slow
def test_a_node_refuses_bad_bundles_on_sighup_and_its_supervisor_goes_on(
    edge_factory: Callable[..., EdgeProcess], good_dir: Path, tmp_path: Path
) -> None:
    """A deep rules.json, then a huge .npy shape, reloaded on SIGHUP: each refused and logged, the old
    snapshot serving; then housekeeping still runs, a killed worker is restarted, a good bundle is
    picked up on the next SIGHUP, and SIGTERM stops the node with 0 within its grace."""
    live = Path(shutil.copytree(good_dir, tmp_path / "live"))
    config = tmp_path / "edge.toml"
    config.write_text("[track]\ndedupe_window_hours = 0.0003\n")  # event ids expire after about 1 s
    edge = edge_factory(
        tmp_path / "data", live, "--config", str(config), "--workers", "1", "--metrics-listen", "127.0.0.1:0"
    )
    metrics = str(edge.info["metrics"]) if edge.info else ""
    assert _version(edge) == 1

    for n, make, words in (
        (1, deep_rules_bundle, "rules.json line "),
        (2, huge_npy_bundle, "models/item_embeddings.npy: the header declares shape (2000, 1000000000)"),
    ):
        shutil.rmtree(live)
        make(good_dir, live, n + 1)
        edge.send_signal(signal.SIGHUP)
        _wait(lambda n=n: len(_events(edge, "bundle_refused")) == n, f"refusal {n}", edge)  # type: ignore[misc]
        refused = _events(edge, "bundle_refused")[-1]
        assert words in str(refused["error"]) and refused["serving_version"] == 1
        assert n == 2 or "nested deeper than 64 levels of objects and arrays" in str(refused["error"])
        assert _version(edge) == 1
    assert not _events(edge, "supervisor_step_failed") and not _events(edge, "uncaught_exception")

    # housekeeping goes on: an event id tracked now is deleted once its window (about 1 s) ends
    with grpc.insecure_channel(edge.address) as channel:
        event = pb.Event(event_id="after-refusals", type="view", user_id="u1", item_id="i1")
        assert (
            pb_grpc.PersonalizerStub(channel).Track(pb.TrackRequest(events=[event]), timeout=5).accepted == 1
        )
    _wait(
        lambda: _metric(metrics, 'edgewise_housekeeping_deleted_total{kind="event_ids"}') >= 1, "sweep", edge
    )

    # worker restarts go on
    os.kill(int(edge.info["workers"][0]) if edge.info else 0, signal.SIGKILL)
    _wait(lambda: bool(_events(edge, "worker_restarted")), "the worker's restart", edge)
    _wait(lambda: _metric(metrics, "edgewise_workers_alive") == 1, "the worker alive", edge)

    # reloads go on: a good bundle after the bad ones is picked up
    shutil.rmtree(live)
    shutil.copytree(good_dir, live)
    rewrite_manifest(live, version=4)
    edge.send_signal(signal.SIGHUP)

    def at_version_4() -> bool:
        try:
            return _version(edge) == 4
        except grpc.RpcError:  # the restarted worker still starting
            return False

    _wait(at_version_4, "version 4 served", edge)

    started = time.monotonic()
    assert edge.stop(signal.SIGTERM, grace=15) == 0
    assert time.monotonic() - started < 2 + 5  # its --grace (2 s), and a margin
    assert _events(edge, "stopped")
