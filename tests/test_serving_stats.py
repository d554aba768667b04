"""ServingStats: what an edge's heartbeats say about the version it serves (edge/serving_stats.py), from
the workers' shared-memory counters, and heartbeats at their period however busy the stream is."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgewise.client import EdgeClient
from edgewise.core.store import Store
from edgewise.edge.metrics import BUCKETS, MetricsLayout, NodeMetrics, WorkerMetrics
from edgewise.edge.serving_stats import ServingCounter, histogram_quantile
from edgewise.sync.edge_sync import EdgeSyncer, SyncTarget
from edgewise.sync.shard import parse_shard
from edgewise.v1 import sync_pb2
from tests.conftest import EdgeProcess
from tests.rollout_support import failing_bundle, recording_control_plane
from tests.sync_support import following_edge, versions_reach, wait_for


def test_quantiles_interpolate_within_the_buckets() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert histogram_quantile(0.5, [0, 0, 0, 0], bounds) == 0.0
    assert histogram_quantile(0.5, [10, 0, 0, 0], bounds) == pytest.approx(0.5)
    assert histogram_quantile(0.5, [0, 10, 0, 0], bounds) == pytest.approx(1.5)
    # 100 calls: 90 in (0, 1], 10 in (2, 4]: p50 in the first bucket, p99 near the top of the third
    assert histogram_quantile(0.5, [90, 0, 10, 0], bounds) == pytest.approx(50 / 90)
    assert histogram_quantile(0.99, [90, 0, 10, 0], bounds) == pytest.approx(2.0 + 2.0 * 9 / 10)
    assert histogram_quantile(0.99, [0, 0, 0, 5], bounds) == 4.0  # the open bucket: the last bound


def test_counters_start_again_at_each_version_and_count_what_the_contract_says(tmp_path: Path) -> None:
    layout = MetricsLayout(["home", "deals"])
    node = NodeMetrics(tmp_path, layout)
    workers = [WorkerMetrics(node.worker_path(i), layout) for i in range(2)]
    try:
        workers[0].observe_rpc("Decide", "OK", 0.0004)  # calls before the version: not counted
        counter = ServingCounter(node, 7)
        for i, worker in enumerate(workers):
            for _ in range(50):
                worker.observe_rpc("Decide", "OK", 0.0004 if i == 0 else 0.002)
                worker.decisions([("home", 0), ("deals", 4), ("elsewhere", 7)])
        workers[1].observe_rpc("Decide", "INVALID_ARGUMENT", 0.0001)  # the caller's fault
        workers[1].observe_rpc("Decide", "RESOURCE_EXHAUSTED", 0.00001)
        workers[0].observe_rpc("Decide", "DEADLINE_EXCEEDED", 0.3)
        workers[0].observe_rpc("Track", "INTERNAL", 0.001)  # not a Decide
        reading = counter.reading()
        assert (reading.version, reading.decisions, reading.errors) == (7, 100, 2)
        assert (reading.placements, reading.fallbacks) == (300, 200)
        assert reading.fallback_rate == pytest.approx(2 / 3)
        assert reading.error_rate == pytest.approx(2 / 102)
        assert 250 <= reading.latency_p50_us <= 500  # half the calls in (250, 500] us
        assert 1000 <= reading.latency_p99_us <= 2500  # the other half in (1, 2.5] ms
        counter.applied(7)  # the same version: nothing starts again
        assert counter.reading().decisions == 100
        counter.applied(8)
        fresh = counter.reading()
        assert (fresh.version, fresh.decisions, fresh.placements, fresh.errors) == (8, 0, 0, 0)
        assert fresh.latency_p99_us == 0
        workers[1].observe_rpc("Decide", "OK", BUCKETS[-1] * 2)
        assert counter.reading().latency_p99_us == round(BUCKETS[-1] * 1e6)
    finally:
        for worker in workers:
            worker.close()


def test_heartbeats_keep_their_period_while_acks_stream(tmp_path: Path) -> None:
    """The request stream of a session: with an ACK queued every 10 ms, a heartbeat still goes out every
    `heartbeat_seconds`, carrying what the node adds to it."""
    with Store(tmp_path / "edge", map_size=1 << 26) as store:
        target = SyncTarget(("127.0.0.1:1",), "n1", parse_shard("all"), heartbeat_seconds=0.1)
        syncer = EdgeSyncer(store, target)
        serving = sync_pb2.ServingStats(version=3, decisions=12)
        syncer.heartbeat_stats = lambda: (serving, None)
        stop = threading.Event()

        def acks() -> None:
            while not stop.wait(0.01):
                syncer._outbox.put(sync_pb2.SubscribeRequest(ack=sync_pb2.Ack(version=1)))

        feeder = threading.Thread(target=acks)
        feeder.start()
        beats: list[float] = []
        acked = 0
        started = time.monotonic()
        try:
            requests: Iterator[sync_pb2.SubscribeRequest] = syncer._requests(sync_pb2.SubscribeRequest())
            next(requests)  # the hello
            for request in requests:
                if request.WhichOneof("kind") == "heartbeat":
                    assert request.heartbeat.serving == serving
                    assert not request.heartbeat.HasField("shadow")
                    beats.append(time.monotonic() - started)
                else:
                    acked += 1
                if time.monotonic() - started > 1.05:
                    break
        finally:
            stop.set()
            feeder.join()
    assert acked >= 30
    assert len(beats) >= 8, beats
    gaps = sorted(b - a for a, b in itertools.pairwise(beats))
    assert gaps[len(gaps) // 2] < 0.15 and gaps[-1] < 0.6, gaps  # the period, with this machine's noise


DECIDE = {"consent": ["personalization"], "placements": [{"placement_id": "home"}, {"placement_id": "deals"}]}


def _decide(address: str, calls: int) -> None:
    with EdgeClient(address, timeout=10) as client:
        for i in range(calls):
            client.decide({**DECIDE, "user_id": f"u{i % 50}"})


@pytest.mark.slow
def test_a_real_edge_reports_a_failing_version_in_its_heartbeats(
    tmp_path: Path,
    bundle_dir: Path,
    edge_factory: Callable[..., EdgeProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real edge process following a real control plane: 300 Decide calls with a healthy version, then
    300 with a version whose every item placement falls back; the heartbeats (every 0.5 s, set by the
    edge's config) count each version from 0 and show the fallback rate go from low to 1."""
    monkeypatch.setenv("EDGEWISE_SYNC_HEARTBEAT_SECONDS", "0.5")
    bad = failing_bundle(bundle_dir, tmp_path / "bad")
    with recording_control_plane(tmp_path / "control") as control:
        good_version = control.push(bundle_dir)
        edge = following_edge(edge_factory, tmp_path / "edge", control.address, "n1", {})
        wait_for(versions_reach([tmp_path / "edge"], good_version), 20, "the edge at the good version")
        _decide(edge.address, 300)
        good = control.wait_heartbeat(
            "n1",
            lambda b: b.serving.version == good_version and b.serving.decisions >= 300,
            10,
            "300 decisions with the good version",
        ).serving
        assert good.decisions == 300 and good.errors == 0 and good.placements == 600
        assert good.fallbacks < 0.2 * good.placements
        assert 0 < good.latency_p50_us <= good.latency_p99_us

        bad_version = control.push(bad)
        wait_for(versions_reach([tmp_path / "edge"], bad_version), 20, "the edge at the bad version")
        control.wait_heartbeat(
            "n1", lambda b: b.serving.version == bad_version, 10, "a heartbeat with the bad version"
        )
        _decide(edge.address, 300)
        failing = control.wait_heartbeat(
            "n1",
            lambda b: b.serving.version == bad_version and b.serving.decisions >= 300,
            10,
            "300 decisions with the bad version",
        ).serving
        assert failing.decisions == 300 and failing.placements == 600  # counted from 0 again
        assert failing.fallbacks == failing.placements
        assert failing.errors == 0

        beats = [b.at for b in control.heartbeats("n1")]
        gaps = sorted(b - a for a, b in itertools.pairwise(beats))
        assert 0.3 < gaps[len(gaps) // 2] < 0.8, gaps  # the configured period, not the default 5 s
