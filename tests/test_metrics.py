"""Node metrics: per-worker shared-memory counters summed over real processes, restarts; their exposition
through prometheus-client (read back with its parser) and the HTTP endpoint."""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import os
import random
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgewise.core.decisions import FallbackReason
from edgewise.edge.metrics import (
    BUCKETS,
    EXPOSURE_DROP_REASONS,
    FALLBACK_REASONS,
    MAX_PLACEMENT_LABELS,
    OTHER,
    STATUS_CODES,
    MetricsLayout,
    NodeMetrics,
    WorkerMetrics,
    worker_metrics_path,
)
from edgewise.edge.metrics_export import node_registry
from edgewise.metrics_http import serve_metrics

PLACEMENTS = ["home", "pdp_similar", "hero_banner"]

# --- the exposition, read back with prometheus-client's own parser -----------------------------------

Labels = tuple[tuple[str, str], ...]

SHADOW_FAMILIES = (
    "candidate_version",
    "sample",
    "sampled_total",
    "placements_total",
    "item_placements_total",
    "item_overlap_total",
    "variant_changes_total",
    "new_fallbacks_total",
    "fixed_fallbacks_total",
    "errors_total",
    "dropped_total",
    "pipeline_cpu_seconds_total",
)


def render(node: NodeMetrics) -> str:
    """What a scrape of the node's endpoint returns (text format 0.0.4)."""
    return generate_latest(node_registry(node)).decode()


def parse_exposition(text: str) -> dict[str, dict[str, object]]:
    """Families by their exposed name (counters with `_total`): {"type", "help", "samples": {(sample
    name, labels sorted by name): value}}. Parsed by prometheus-client; asserts no sample appears twice
    and every histogram is whole (sorted bounds up to +Inf, cumulative counts, _count = +Inf, a _sum)."""
    families: dict[str, dict[str, object]] = {}
    for metric in text_string_to_metric_families(text):
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        assert name not in families, f"family {name} appears twice"
        samples: dict[tuple[str, Labels], float] = {}
        for sample in metric.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
        families[name] = {"type": metric.type, "help": metric.documentation, "samples": samples}
        if metric.type == "histogram":
            _check_histogram(name, samples)
    return families


def _check_histogram(name: str, samples: dict[tuple[str, Labels], float]) -> None:
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for (sample, labels), count in samples.items():
        if sample == f"{name}_bucket":
            le = dict(labels)["le"]
            rest = tuple(kv for kv in labels if kv[0] != "le")
            groups.setdefault(rest, []).append((float(le), count))
    assert groups, f"{name} has no buckets"
    for rest, buckets in groups.items():
        bounds = [b for b, _ in buckets]
        counts = [c for _, c in buckets]
        assert bounds == sorted(bounds) and math.isinf(bounds[-1]), (name, rest, bounds)
        assert all(a <= b for a, b in itertools.pairwise(counts)), (name, rest, counts)
        assert samples[(f"{name}_count", rest)] == counts[-1]
        assert (f"{name}_sum", rest) in samples


def value(families: dict[str, dict[str, object]], sample: str, **labels: str) -> float:
    family = families[re.sub(r"_(bucket|sum|count)$", "", sample) if sample not in families else sample]
    samples = family["samples"]
    assert isinstance(samples, dict)
    return float(samples[(sample, tuple(sorted(labels.items())))])


# --- helpers running in spawned processes --------------------------------------------------------------


def _record(
    path: str, placements: list[str], worker: int, rounds: int, threads: int, go: Event | None
) -> None:
    """Record a deterministic mix from several threads: per round, per thread one Decide, one Track."""
    metrics = WorkerMetrics(Path(path), MetricsLayout(placements))
    if go is not None:
        go.wait(30)

    def loop() -> None:
        for i in range(rounds):
            metrics.observe_rpc("Decide", "OK", 0.0003)
            metrics.observe_rpc("Track", "OK" if i % 10 else "INVALID_ARGUMENT", 0.002)
            metrics.decision(placements[i % len(placements)], FallbackReason.COLD_START if i % 4 == 0 else 0)
            metrics.track(2, 1)
            if i % 5 == 0:
                metrics.shed()

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    metrics.close()


def _record_then_hang(path: str, placements: list[str], count: int, done: Event) -> None:
    metrics = WorkerMetrics(Path(path), MetricsLayout(placements))
    for _ in range(count):
        metrics.observe_rpc("Decide", "OK", 0.0007)
        metrics.decision("home")
    done.set()
    time.sleep(120)  # killed with SIGKILL by the test: no close(), no flush


def _expected(rounds: int, threads: int) -> dict[str, float]:
    calls = rounds * threads
    return {
        "decide": calls,
        "track_ok": threads * sum(1 for i in range(rounds) if i % 10),
        "track_invalid": threads * sum(1 for i in range(rounds) if i % 10 == 0),
        "cold_start": threads * sum(1 for i in range(rounds) if i % 4 == 0),
        "accepted": 2 * calls,
        "duplicate": calls,
        "shed": threads * sum(1 for i in range(rounds) if i % 5 == 0),
    }


# --- tests ------------------------------------------------------------------------------------------------


def test_layout_caps_and_dedupes_placements() -> None:
    ids = [f"p{i}" for i in range(100)]
    layout = MetricsLayout(["p0", "p0", OTHER, *ids])
    assert layout.placements == tuple(ids[:MAX_PLACEMENT_LABELS])
    assert set(layout.placement_slot) == {*ids[:MAX_PLACEMENT_LABELS], OTHER}
    slots = [slot for _, slot in layout.series()]
    assert sorted(slots) == list(range(layout.size))  # every slot is exactly one series
    assert MetricsLayout(PLACEMENTS) == MetricsLayout(PLACEMENTS) != MetricsLayout(PLACEMENTS[:2])
    assert tuple(f.name.lower() for f in FallbackReason)[1:] == FALLBACK_REASONS
    assert "no_consent" in FALLBACK_REASONS and "none" not in FALLBACK_REASONS


def test_one_worker_values_and_histogram_buckets(tmp_path: Path) -> None:
    layout = MetricsLayout(PLACEMENTS)
    node = NodeMetrics(tmp_path, layout)
    with WorkerMetrics(node.worker_path(0), layout) as worker:
        worker.observe_rpc("Decide", "OK", 0.0001)  # exactly a bound: counted in le="0.0001" (inclusive)
        worker.observe_rpc("Decide", "OK", 0.0004)
        worker.observe_rpc("Decide", "DEADLINE_EXCEEDED", 3.0)  # past the last bound: +Inf only
        worker.observe_rpc("Track", "NOT_A_CODE", 0.00001)
        worker.decisions([("home", 0), ("hero_banner", FallbackReason.HOLDOUT), ("unknown-placement", 2)])
        worker.decision("home", 99)  # unknown reason: the decision counts, no reason label appears
        worker.track(accepted=3, duplicates=1)
        worker.shed()
        with pytest.raises(ValueError, match="unknown rpc"):
            worker.observe_rpc("Forget", "OK", 0.1)
    families = parse_exposition(render(node))
    b = "edgewise_rpc_duration_seconds_bucket"
    assert value(families, b, rpc="Decide", le="5e-05") == 0
    assert value(families, b, rpc="Decide", le="0.0001") == 1
    assert value(families, b, rpc="Decide", le="0.0005") == 2
    assert value(families, b, rpc="Decide", le="1.0") == 2
    assert value(families, b, rpc="Decide", le="+Inf") == 3
    assert value(families, "edgewise_rpc_duration_seconds_count", rpc="Decide") == 3
    assert value(families, "edgewise_rpc_duration_seconds_sum", rpc="Decide") == pytest.approx(3.0005)
    assert value(families, b, rpc="Track", le="5e-05") == 1
    assert value(families, "edgewise_rpc_total", rpc="Decide", code="OK") == 2
    assert value(families, "edgewise_rpc_total", rpc="Decide", code="DEADLINE_EXCEEDED") == 1
    assert value(families, "edgewise_rpc_total", rpc="Track", code="UNKNOWN") == 1
    assert value(families, "edgewise_decisions_total", placement="home") == 2
    assert value(families, "edgewise_decisions_total", placement="hero_banner") == 1
    assert value(families, "edgewise_decisions_total", placement=OTHER) == 1
    assert value(families, "edgewise_fallbacks_total", reason="holdout") == 1
    assert value(families, "edgewise_fallbacks_total", reason="unknown_user") == 1
    assert value(families, "edgewise_track_events_total", result="accepted") == 3
    assert value(families, "edgewise_track_events_total", result="duplicate") == 1
    assert value(families, "edgewise_shed_total") == 1
    samples = families["edgewise_rpc_duration_seconds"]["samples"]
    assert isinstance(samples, dict)
    assert sum(1 for name, _ in samples if name.endswith("_bucket")) == 2 * (len(BUCKETS) + 1)


def test_threads_in_one_process_lose_no_counts(tmp_path: Path) -> None:
    layout = MetricsLayout(PLACEMENTS)
    node = NodeMetrics(tmp_path, layout)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows
    try:
        _record(str(node.worker_path(0)), PLACEMENTS, 0, rounds=5000, threads=8, go=None)
    finally:
        sys.setswitchinterval(old)
    _check_totals(parse_exposition(render(node)), _expected(5000, 8))


def _check_totals(families: dict[str, dict[str, object]], want: dict[str, float], factor: int = 1) -> None:
    assert value(families, "edgewise_rpc_duration_seconds_count", rpc="Decide") == factor * want["decide"]
    assert value(families, "edgewise_rpc_duration_seconds_bucket", rpc="Decide", le="0.00025") == 0
    assert (
        value(families, "edgewise_rpc_duration_seconds_bucket", rpc="Decide", le="0.0005")
        == factor * want["decide"]
    )
    assert value(families, "edgewise_rpc_duration_seconds_sum", rpc="Decide") == pytest.approx(
        factor * want["decide"] * 0.0003
    )
    assert value(families, "edgewise_rpc_total", rpc="Track", code="OK") == factor * want["track_ok"]
    assert (
        value(families, "edgewise_rpc_total", rpc="Track", code="INVALID_ARGUMENT")
        == factor * want["track_invalid"]
    )
    decisions = sum(value(families, "edgewise_decisions_total", placement=p) for p in PLACEMENTS)
    assert decisions == factor * want["decide"]
    assert value(families, "edgewise_fallbacks_total", reason="cold_start") == factor * want["cold_start"]
    assert value(families, "edgewise_track_events_total", result="accepted") == factor * want["accepted"]
    assert value(families, "edgewise_track_events_total", result="duplicate") == factor * want["duplicate"]
    assert value(families, "edgewise_shed_total") == factor * want["shed"]


@pytest.mark.slow
def test_two_processes_writing_concurrently_are_summed(tmp_path: Path) -> None:
    layout = MetricsLayout(PLACEMENTS)
    node = NodeMetrics(tmp_path, layout)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    rounds, threads = 20_000, 4
    procs = [
        ctx.Process(target=_record, args=(str(node.worker_path(w)), PLACEMENTS, w, rounds, threads, go))
        for w in range(2)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 60
    while not all(node.worker_path(w).exists() for w in range(2)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.set()
    seen: list[float] = []
    while any(p.is_alive() for p in procs):  # scrape while both write: counts only grow
        families = parse_exposition(render(node))
        seen.append(value(families, "edgewise_rpc_duration_seconds_count", rpc="Decide"))
        time.sleep(0.005)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert seen == sorted(seen)
    _check_totals(parse_exposition(render(node)), _expected(rounds, threads), factor=2)


@pytest.mark.slow
def test_a_restarted_worker_keeps_the_node_totals(tmp_path: Path) -> None:
    layout = MetricsLayout(PLACEMENTS)
    node = NodeMetrics(tmp_path, layout)
    path = node.worker_path(1)
    ctx = mp.get_context("spawn")
    done = ctx.Event()
    proc = ctx.Process(target=_record_then_hang, args=(str(path), PLACEMENTS, 1000, done))
    proc.start()
    assert done.wait(60)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    node.worker_restarted()
    # The replacement continues from the dead worker's file.
    replacement = ctx.Process(target=_record, args=(str(path), PLACEMENTS, 1, 100, 2, None))
    replacement.start()
    replacement.join(60)
    assert replacement.exitcode == 0
    families = parse_exposition(render(node))
    assert value(families, "edgewise_rpc_duration_seconds_count", rpc="Decide") == 1000 + 200
    assert value(families, "edgewise_rpc_total", rpc="Decide", code="OK") == 1200
    assert value(families, "edgewise_decisions_total", placement="home") == 1000 + 2 * 34
    assert value(families, "edgewise_worker_restarts_total") == 1


def test_a_replacement_with_another_layout_carries_the_totals_over(tmp_path: Path) -> None:
    node = NodeMetrics(tmp_path, MetricsLayout(["a", "b"]))
    with WorkerMetrics(node.worker_path(0), MetricsLayout(["a", "b"])) as first:
        first.decision("a")
        first.decision("b")
        first.decision("b")
        first.observe_rpc("Decide", "OK", 0.01)
    with WorkerMetrics(node.worker_path(0), MetricsLayout(["b", "c"])) as second:  # a new snapshot's rules
        second.decision("c")
        second.observe_rpc("Decide", "OK", 0.01)
    families = parse_exposition(render(node))
    assert value(families, "edgewise_rpc_duration_seconds_count", rpc="Decide") == 2
    assert value(families, "edgewise_decisions_total", placement="a") == 0  # "a" left the rules: now "other"
    assert value(families, "edgewise_decisions_total", placement=OTHER) == 1
    assert value(families, "edgewise_decisions_total", placement="b") == 2
    assert value(families, "edgewise_decisions_total", placement="c") == 1  # found in a worker file
    assert list(tmp_path.iterdir()) == [worker_metrics_path(tmp_path, 0)]


def test_leftovers_are_cleared_and_junk_files_are_skipped(tmp_path: Path) -> None:
    layout = MetricsLayout(PLACEMENTS)
    with WorkerMetrics(worker_metrics_path(tmp_path, 7), layout) as old_run:
        old_run.shed(5)
    node = NodeMetrics(tmp_path, layout)
    assert not worker_metrics_path(tmp_path, 7).exists()
    worker_metrics_path(tmp_path, 3).write_bytes(b"not a metrics file")
    assert value(parse_exposition(render(node)), "edgewise_shed_total") == 0
    with WorkerMetrics(worker_metrics_path(tmp_path, 3), layout) as worker:  # replaces the junk
        worker.shed()
    assert value(parse_exposition(render(node)), "edgewise_shed_total") == 1


def test_node_gauges_snapshot_age_and_staleness(tmp_path: Path) -> None:
    now = [1000.0]
    node = NodeMetrics(tmp_path, MetricsLayout(PLACEMENTS), stale_after_seconds=300, clock=lambda: now[0])
    families = parse_exposition(render(node))
    assert math.isnan(value(families, "edgewise_snapshot_age_seconds"))
    assert value(families, "edgewise_stale") == 0 and value(families, "edgewise_snapshot_version") == 0
    node.set_snapshot(42, synced_at=900.0)
    node.set_workers_alive(2)
    now[0] = 1100.0
    families = parse_exposition(render(node))
    assert value(families, "edgewise_snapshot_version") == 42
    assert value(families, "edgewise_snapshot_age_seconds") == 200
    assert value(families, "edgewise_workers_alive") == 2 and value(families, "edgewise_stale") == 0
    now[0] = 1201.0
    assert value(parse_exposition(render(node)), "edgewise_stale") == 1
    node.set_snapshot(43)  # synced now
    families = parse_exposition(render(node))
    assert value(families, "edgewise_stale") == 0 and value(families, "edgewise_snapshot_age_seconds") == 0


def test_label_values_are_bounded(tmp_path: Path) -> None:
    rules = [f"placement_{i}" for i in range(200)] + ['odd "quoted"\\name\n']
    layout = MetricsLayout(rules)
    node = NodeMetrics(tmp_path, layout)
    rng = random.Random(7)
    requested = [f"user-{rng.getrandbits(64):x}" for _ in range(2000)]
    with WorkerMetrics(node.worker_path(0), layout) as worker:
        for pid in requested + rules:
            worker.decision(pid, rng.randrange(len(FallbackReason)))
            worker.observe_rpc("Decide", rng.choice((*STATUS_CODES, "BOGUS")), rng.random())
    text = render(node)
    families = parse_exposition(text)
    values: dict[str, set[str]] = {}
    for family in families.values():
        for _, labels in family["samples"]:  # type: ignore[attr-defined]
            for key, label_value in labels:
                values.setdefault(key, set()).add(label_value)
    assert values["placement"] == {*rules[:MAX_PLACEMENT_LABELS], OTHER}
    assert values["code"] == set(STATUS_CODES)
    assert values["reason"] == {*FALLBACK_REASONS, *EXPOSURE_DROP_REASONS}  # fallbacks, exposures dropped
    assert values["limit"] == {"data.outbox_max_mb", "track.dedupe_max_mb", "track.activity_max_mb"}
    assert values["rpc"] == {"Decide", "Track"}
    assert values["result"] == {"accepted", "duplicate"}
    assert len(values["le"]) == len(BUCKETS) + 1
    assert not any(r in text for r in requested)
    assert sum(1 for line in text.splitlines() if not line.startswith("#")) < 200  # series count is fixed
    total = sum(value(families, "edgewise_decisions_total", placement=p) for p in values["placement"])
    assert total == len(requested) + len(rules)


def test_http_endpoint_serves_valid_exposition(tmp_path: Path) -> None:
    layout = MetricsLayout(PLACEMENTS)
    node = NodeMetrics(tmp_path, layout)
    node.set_snapshot(3)
    node.set_workers_alive(1)
    with WorkerMetrics(node.worker_path(0), layout) as worker:
        for i in range(100):
            worker.observe_rpc("Decide", "OK", i / 1000)
            worker.decision(PLACEMENTS[i % 3], i % 8)
        server, thread = serve_metrics("127.0.0.1:0", node_registry(node))
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                body = response.read().decode()
            families = parse_exposition(body)
            expected_families = {
                "edgewise_rpc_duration_seconds",
                "edgewise_rpc_total",
                "edgewise_decisions_total",
                "edgewise_fallbacks_total",
                "edgewise_track_events_total",
                "edgewise_shed_total",
                "edgewise_snapshot_version",
                "edgewise_snapshot_age_seconds",
                "edgewise_worker_restarts_total",
                "edgewise_workers_alive",
                "edgewise_stale",
                "edgewise_outbox_entries",
                "edgewise_outbox_bytes",
                "edgewise_outbox_dropped_total",
                "edgewise_forwarded_total",
                "edgewise_housekeeping_deleted_total",
                "edgewise_dedupe_window_seconds",
                "edgewise_activity_bytes",
                "edgewise_activity_window_seconds",
                "edgewise_exposures_dropped_total",
                "edgewise_store_used_bytes",
                "edgewise_store_write_limit_bytes",
                "edgewise_store_limit_bytes",
                "edgewise_sync_control_switches_total",
                "edgewise_sync_control_info",
                *(f"edgewise_shadow_{name}" for name in SHADOW_FAMILIES),
            }
            assert set(families) == expected_families
            assert value(families, "edgewise_rpc_duration_seconds_count", rpc="Decide") == 100
            assert value(families, "edgewise_rpc_duration_seconds_bucket", rpc="Decide", le="0.05") == 51
            assert value(families, "edgewise_snapshot_version") == 3
            with urllib.request.urlopen(f"{base}/", timeout=10) as response:
                assert b"GET /metrics" in response.read()
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"{base}/nope", timeout=10)
            assert info.value.code == 404
            request = urllib.request.Request(f"{base}/metrics", method="POST", data=b"")
            with pytest.raises(urllib.error.HTTPError) as info:  # prometheus-client answers GET only
                urllib.request.urlopen(request, timeout=10)
            assert info.value.code == 405
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
    assert not thread.is_alive()


def test_serve_metrics_refuses_a_bad_or_busy_address(tmp_path: Path) -> None:
    node = NodeMetrics(tmp_path, MetricsLayout())
    registry = node_registry(node)
    with pytest.raises(OSError, match="not HOST:PORT"):
        serve_metrics("9100", registry)
    server, thread = serve_metrics("127.0.0.1:0", registry)
    try:
        with pytest.raises(OSError, match=r"cannot serve metrics on 127\.0\.0\.1:"):
            serve_metrics(f"127.0.0.1:{server.server_address[1]}", registry)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_node_outbox_forwarding_and_housekeeping_series(tmp_path: Path) -> None:
    node = NodeMetrics(tmp_path, MetricsLayout(PLACEMENTS))
    families = parse_exposition(render(node))
    assert value(families, "edgewise_outbox_entries") == 0
    assert value(families, "edgewise_forwarded_total") == 0
    node.set_outbox(17, 250)
    node.set_housekeeping(1_000, 3)
    families = parse_exposition(render(node))
    assert value(families, "edgewise_outbox_entries") == 17
    assert value(families, "edgewise_forwarded_total") == 250
    assert value(families, "edgewise_housekeeping_deleted_total", kind="event_ids") == 1_000
    assert value(families, "edgewise_housekeeping_deleted_total", kind="activities") == 3
    assert value(families, "edgewise_housekeeping_deleted_total", kind="activities_early") == 0
    assert value(families, "edgewise_activity_window_seconds") == 0  # the TTLs alone
    node.set_housekeeping(1_000, 3, activities_early=40, activity_bytes=1 << 20, activity_window_ms=7_200_500)
    families = parse_exposition(render(node))
    assert value(families, "edgewise_housekeeping_deleted_total", kind="activities_early") == 40
    assert value(families, "edgewise_activity_bytes") == 1 << 20
    assert value(families, "edgewise_activity_window_seconds") == 7_200.5
