"""The node's /metrics as dashboards and alerts see it: the same families, types and series as before the
exposition moved onto prometheus-client, read back with its parsers; and the HTTP endpoint around it."""

from __future__ import annotations

import contextlib
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import EdgeProcess
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from edgewise.edge.metrics import MetricsLayout, NodeMetrics, NodeReading, WorkerMetrics
from edgewise.edge.metrics_export import node_registry
from edgewise.metrics_http import serve_metrics
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

Labels = tuple[tuple[str, str], ...]

# Taken from a real node before the change (8585edc, the hand-written renderer): `edgewise edge serve
# --workers 2 --metrics-listen 127.0.0.1:0` on the conftest bundle, its /metrics. Every family as the
# text format names it (counters with `_total`) and its type, in the order served.
FAMILIES = [
    ("edgewise_rpc_duration_seconds", "histogram"),
    ("edgewise_rpc_total", "counter"),
    ("edgewise_decisions_total", "counter"),
    ("edgewise_fallbacks_total", "counter"),
    ("edgewise_track_events_total", "counter"),
    ("edgewise_shed_total", "counter"),
    ("edgewise_snapshot_version", "gauge"),
    ("edgewise_snapshot_age_seconds", "gauge"),
    ("edgewise_worker_restarts_total", "counter"),
    ("edgewise_workers_alive", "gauge"),
    ("edgewise_stale", "gauge"),
    ("edgewise_outbox_entries", "gauge"),
    ("edgewise_outbox_bytes", "gauge"),
    ("edgewise_outbox_dropped_total", "counter"),
    ("edgewise_forwarded_total", "counter"),
    ("edgewise_housekeeping_deleted_total", "counter"),
    ("edgewise_dedupe_window_seconds", "gauge"),
    ("edgewise_activity_bytes", "gauge"),
    ("edgewise_activity_window_seconds", "gauge"),
    # added since (issue 16: a full store, exposures dropped)
    ("edgewise_exposures_dropped_total", "counter"),
    ("edgewise_store_used_bytes", "gauge"),
    ("edgewise_store_write_limit_bytes", "gauge"),
    ("edgewise_store_limit_bytes", "gauge"),
    # issue 18: control-plane replicas
    ("edgewise_sync_control_switches_total", "counter"),
    ("edgewise_sync_control_info", "gauge"),
    # issue 21: shadow rollouts
    ("edgewise_shadow_candidate_version", "gauge"),
    ("edgewise_shadow_sample", "gauge"),
    ("edgewise_shadow_sampled_total", "counter"),
    ("edgewise_shadow_placements_total", "counter"),
    ("edgewise_shadow_item_placements_total", "counter"),
    ("edgewise_shadow_item_overlap_total", "counter"),
    ("edgewise_shadow_variant_changes_total", "counter"),
    ("edgewise_shadow_new_fallbacks_total", "counter"),
    ("edgewise_shadow_fixed_fallbacks_total", "counter"),
    ("edgewise_shadow_errors_total", "counter"),
    ("edgewise_shadow_dropped_total", "counter"),
    ("edgewise_shadow_pipeline_cpu_seconds_total", "counter"),
]
# The same output's label values, family by family (a family's series: every combination of them).
LE = ("5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1")
LE += ("0.25", "0.5", "1.0", "+Inf")
CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS")
CODES += ("PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE")
CODES += ("UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
LABELS: dict[str, dict[str, tuple[str, ...]]] = {
    "edgewise_rpc_duration_seconds": {"rpc": ("Decide", "Track")},
    "edgewise_rpc_total": {"rpc": ("Decide", "Track"), "code": CODES},
    "edgewise_decisions_total": {
        "placement": ("home", "pdp_similar", "hero_banner", "deals", "trending", "promo_slot", "other")
    },
    "edgewise_fallbacks_total": {
        "reason": (
            "no_consent",
            "unknown_user",
            "cold_start",
            "model_unavailable",
            "budget_exceeded",
            "overloaded",
            "holdout",
        )
    },
    "edgewise_track_events_total": {"result": ("accepted", "duplicate")},
    "edgewise_housekeeping_deleted_total": {
        "kind": ("event_ids", "activities", "event_ids_early", "activities_early")
    },
    "edgewise_exposures_dropped_total": {"reason": ("queue_full", "store_full", "commit_failed")},
    "edgewise_store_limit_bytes": {
        "limit": ("data.outbox_max_mb", "track.dedupe_max_mb", "track.activity_max_mb")
    },
    "edgewise_sync_control_info": {"control": ()},  # none on a node without a control plane
    "edgewise_shadow_pipeline_cpu_seconds_total": {"version": ("served", "candidate")},
}
SAMPLE_COUNT = 101 + 8 + 1 + 13  # lines of samples in that output, and in the families added since


def _combinations(labels: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = [{}]
    for key, values in labels.items():
        out = [{**partial, key: v} for partial in out for v in values]
    return out


def _key(name: str, labels: dict[str, str]) -> tuple[str, Labels]:
    return name, tuple(sorted(labels.items()))


def expected_samples() -> set[tuple[str, Labels]]:
    out: set[tuple[str, Labels]] = set()
    for name, kind in FAMILIES:
        for labels in _combinations(LABELS.get(name, {})):
            if kind == "histogram":
                out |= {_key(f"{name}_bucket", {**labels, "le": le}) for le in LE}
                out |= {_key(f"{name}_sum", labels), _key(f"{name}_count", labels)}
            else:
                out.add(_key(name, labels))
    return out


def _samples(families: Iterable[Metric]) -> dict[tuple[str, Labels], float]:
    out: dict[tuple[str, Labels], float] = {}
    for family in families:
        for sample in family.samples:
            key = _key(sample.name, sample.labels)
            assert key not in out, f"{key} twice"
            out[key] = sample.value
    return out


def _exposed(family: Metric) -> tuple[str, str]:
    """(name as the text format shows it, type): the parser gives counters without `_total`."""
    return (family.name + "_total" if family.type == "counter" else family.name), family.type


def _get(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_the_list_is_todays_output() -> None:
    assert len(expected_samples()) == SAMPLE_COUNT and len(FAMILIES) == 19 + 4 + 2 + 12


@pytest.mark.slow
def test_a_real_node_serves_the_same_families_types_and_series(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    edge = edge_factory(tmp_path / "data", bundle_dir, "--workers", "2", "--metrics-listen", "127.0.0.1:0")
    serving = next(e for e in edge.log_events() if e.get("event") == "serving")
    url = f"http://{serving['metrics']}/metrics"
    for n in range(6):
        with grpc.insecure_channel(edge.address) as channel:  # new connections: both workers answer
            stub = pb_grpc.PersonalizerStub(channel)
            placements = [pb.PlacementRequest(placement_id="home", count=5)]
            stub.Decide(pb.DecideRequest(session_id=f"s{n}", placements=placements), timeout=10)
            event = pb.Event(event_id=f"e{n}", type="view", session_id=f"s{n}", item_id="i1")
            stub.Track(pb.TrackRequest(events=[event, event]), timeout=10)

    content_type, text = _get(url)
    assert content_type == CONTENT_TYPE_PLAIN_0_0_4
    assert "_created" not in text
    families = list(text_string_to_metric_families(text))
    assert [_exposed(f) for f in families] == FAMILIES
    assert all(f.documentation for f in families)
    samples = _samples(families)
    assert set(samples) == expected_samples()
    assert samples[_key("edgewise_rpc_total", {"rpc": "Decide", "code": "OK"})] == 6
    assert samples[_key("edgewise_rpc_duration_seconds_count", {"rpc": "Track"})] == 6
    assert samples[_key("edgewise_track_events_total", {"result": "duplicate"})] == 6
    assert samples[_key("edgewise_decisions_total", {"placement": "home"})] == 6
    assert samples[_key("edgewise_workers_alive", {})] == 2

    # A Prometheus server asks for OpenMetrics first: the same series reach it.
    content_type, text = _get(url, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    families = list(parse_openmetrics(text))
    assert [_exposed(f) for f in families] == FAMILIES
    assert set(_samples(families)) == expected_samples()

    # SIGTERM: the node exits 0 and its metrics port is closed.
    port = int(str(serving["metrics"]).rpartition(":")[2])
    assert edge.stop() == 0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


@contextlib.contextmanager
def _serving(address: str, registry: CollectorRegistry) -> Iterator[str]:
    server, thread = serve_metrics(address, registry)
    host = address.rpartition(":")[0]
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert not thread.is_alive()


def test_the_registry_is_the_nodes_own_and_registering_reads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = NodeMetrics(tmp_path, MetricsLayout(["home"]))

    def no_read() -> NodeReading:
        raise AssertionError("read at register")

    monkeypatch.setattr(node, "read", no_read)
    registry = node_registry(node)  # describe() names the families without reading the worker files
    monkeypatch.undo()
    assert {_exposed(f) for f in registry.collect()} == set(FAMILIES)
    assert not any(f.name.startswith("edgewise_") for f in REGISTRY.collect())  # not the global one
    with WorkerMetrics(node.worker_path(0), node.layout) as worker:
        worker.shed(3)
    with _serving("127.0.0.1:0", registry) as base:  # a scrape may ask for some series only
        _, text = _get(f"{base}/metrics?name[]=edgewise_shed_total")
    assert text.splitlines()[-1] == "edgewise_shed_total 3.0"
    assert [_exposed(f) for f in text_string_to_metric_families(text)] == [("edgewise_shed_total", "counter")]


class _Broken:
    def collect(self) -> Iterator[Metric]:
        raise RuntimeError("worker files unreadable")


def test_a_failing_collector_answers_500_and_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    registry.register(_Broken())
    with _serving("127.0.0.1:0", registry) as base, caplog.at_level(logging.ERROR, "edgewise.metrics_http"):
        with pytest.raises(urllib.error.HTTPError) as info:
            _get(f"{base}/metrics")
        assert info.value.code == 500
        _, text = _get(f"{base}/")  # the server goes on
    assert "GET /metrics" in text
    failures = [r for r in caplog.records if r.getMessage() == "metrics_render_failed"]
    assert len(failures) == 1 and "worker files unreadable" in str(failures[0].__dict__["error"])


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_address_in_brackets(tmp_path: Path) -> None:
    registry = node_registry(NodeMetrics(tmp_path, MetricsLayout()))
    with _serving("[::1]:0", registry) as base:
        content_type, text = _get(f"{base}/metrics")
    assert content_type == CONTENT_TYPE_PLAIN_0_0_4 and "edgewise_workers_alive 0.0" in text


def test_the_replica_followed_and_the_switches(tmp_path: Path) -> None:
    node = NodeMetrics(tmp_path, MetricsLayout(["home"]))
    samples = _samples(node_registry(node).collect())
    assert samples[_key("edgewise_sync_control_switches_total", {})] == 0
    assert not [key for key in samples if key[0] == "edgewise_sync_control_info"]  # standalone: no series
    node.set_control("ctl-b:50061", 2)
    samples = _samples(node_registry(node).collect())
    assert samples[_key("edgewise_sync_control_switches_total", {})] == 2
    assert samples[_key("edgewise_sync_control_info", {"control": "ctl-b:50061"})] == 1
