"""The control plane's /metrics (`control serve --metrics-listen`) and its token-free health service, on a
real control plane with tokens and a real edge following it; and the metric names the shipped alert rules
and dashboard use (examples/), checked against what a real node and control plane serve."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from sync_support import control_planes, ops_client, wait_for

from edgewise.client import EdgeClient
from edgewise.sync.control_metrics import CallMeter, ControlCollector
from tests.conftest import edge_args, process_group

OPS = {"EDGEWISE_OPS_TOKEN": "ops-cm-1"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-cm-1"}
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RULES = EXAMPLES / "prometheus" / "edgewise-alerts.yml"
DASHBOARD = EXAMPLES / "grafana" / "edgewise-dashboard.json"

CONTROL_FAMILIES = [
    ("edgewise_control_rpc_total", "counter"),
    ("edgewise_control_rpc_duration_seconds", "histogram"),
    ("edgewise_control_forwarded_records_total", "counter"),
    ("edgewise_control_head_version", "gauge"),
    ("edgewise_control_log_start_version", "gauge"),
    ("edgewise_control_last_commit_timestamp_seconds", "gauge"),
    ("edgewise_control_edges", "gauge"),
    ("edgewise_control_edges_behind", "gauge"),
    ("edgewise_control_fleet_max_lag_versions", "gauge"),
    ("edgewise_control_edges_nacking", "gauge"),
    ("edgewise_control_subscribe_streams", "gauge"),
    ("edgewise_control_forward_calls", "gauge"),
    ("edgewise_control_forgotten_users", "gauge"),
    ("edgewise_control_forget_backlog_users", "gauge"),
    ("edgewise_control_events_stored", "gauge"),
    ("edgewise_control_events_received_total", "counter"),
    ("edgewise_control_fold_backlog_records", "gauge"),
    ("edgewise_control_folds_total", "counter"),
    ("edgewise_control_folded_profiles_total", "counter"),
    ("edgewise_control_learner_backlog_records", "gauge"),
    ("edgewise_control_bandit_publishes_total", "counter"),
    ("edgewise_control_bandit_publish_age_seconds", "gauge"),
    ("edgewise_control_records_skipped_total", "counter"),
    ("edgewise_control_events_expired_total", "counter"),
]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(text: str, name: str, **labels: str) -> float:
    return _samples(text)[name, tuple(sorted(labels.items()))]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[dict[str, str]]:
    """A control plane with tokens and metrics, a bundle pushed, an edge following it with metrics, a
    few tracked events forwarded and folded, a user forgotten: both /metrics texts, and the control
    plane's address and metrics URL."""
    tmp = tmp_path_factory.mktemp("control-metrics")
    with control_planes(tmp, {**OPS, **EDGE}) as start:
        control = start(None, "--metrics-listen", "127.0.0.1:0")
        control_url = f"http://{control.wait_ready()['metrics']}/metrics"
        with ops_client(control.address, OPS) as ops:
            version = ops.push(bundle_dir).version
        with process_group(tmp / "edges") as group:
            args = edge_args(tmp / "edge", None, "--control", control.address, "--node-id", "pop-1")
            edge = group.serve(
                "edge", [*args, "--workers", "1", "--metrics-listen", "127.0.0.1:0"], env=EDGE, timeout=60
            )
            edge_url = f"http://{edge.wait_ready()['metrics']}/metrics"
            with EdgeClient(edge.address) as client:
                client.decide(
                    {
                        "user_id": "u1",
                        "consent": ["personalization", "analytics"],
                        "placements": [{"placement_id": "home", "count": 3}],
                    }
                )
                for n in range(3):
                    event = {"event_id": f"cm{n}", "type": "view", "user_id": "u1", "item_id": "i1"}
                    client.track(event, consent=["personalization", "analytics"])

            def folded() -> bool:
                text = _get(control_url)
                return (
                    _value(text, "edgewise_control_folds_total") >= 1
                    and _value(text, "edgewise_control_edges", state="ready") == 1
                    and _value(text, "edgewise_control_fold_backlog_records") == 0
                )

            wait_for(folded, 30, "the tracked events folded, the edge ready")
            with ops_client(control.address, OPS) as ops:
                ops.forget("u2")
                assert ops.status().head_version > version
            wait_for(
                lambda: _value(_get(control_url), "edgewise_control_forget_backlog_users") == 0,
                20,
                "the edge to apply the forget",
            )
            yield {
                "control": _get(control_url),
                "edge": _get(edge_url),
                "control_address": control.address,
                "control_url": control_url,
            }


@pytest.mark.slow
def test_the_control_plane_serves_its_metrics(scraped: dict[str, str]) -> None:
    text = scraped["control"]
    assert "_created" not in text
    families = list(text_string_to_metric_families(text))
    assert [(f.name if f.type != "counter" else f.name + "_total", f.type) for f in families] == (
        CONTROL_FAMILIES
    )
    assert all(f.documentation for f in families)
    assert _value(text, "edgewise_control_rpc_total", method="Push", code="OK") == 1
    assert _value(text, "edgewise_control_rpc_duration_seconds_count", method="Push") == 1
    assert _value(text, "edgewise_control_forwarded_records_total", result="accepted") >= 3
    assert _value(text, "edgewise_control_events_stored") >= 3
    assert _value(text, "edgewise_control_edges", state="ready") == 1
    assert _value(text, "edgewise_control_edges_behind") == 0
    assert _value(text, "edgewise_control_fleet_max_lag_versions") == 0
    assert _value(text, "edgewise_control_subscribe_streams") == 1
    assert _value(text, "edgewise_control_forgotten_users") == 1
    assert _value(text, "edgewise_control_forget_backlog_users") == 0
    assert _value(text, "edgewise_control_head_version") >= 2


@pytest.mark.slow
def test_refused_calls_are_counted_and_health_needs_no_token(scraped: dict[str, str]) -> None:
    with grpc.insecure_channel(scraped["control_address"]) as channel:
        probe = health_pb2_grpc.HealthStub(channel)
        for service in ("", "edgewise.v1.ControlPlane"):
            reply = probe.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with ops_client(scraped["control_address"], {}) as nobody, pytest.raises(Exception, match="token"):
        nobody.status()
    text = _get(scraped["control_url"])
    assert _value(text, "edgewise_control_rpc_total", method="Status", code="UNAUTHENTICATED") == 1


def test_a_collector_without_events_or_calls_yields_the_fleet_and_log(tmp_path: Path) -> None:
    from edgewise.sync.control_server import ControlPlaneService
    from edgewise.sync.control_store import ControlStore

    with ControlStore(tmp_path / "c", map_size=64 << 20) as store:
        collector = ControlCollector(ControlPlaneService(store), CallMeter())
        names = [f.name for f in collector.collect()]
    assert "edgewise_control_head_version" in names and "edgewise_control_events_stored" not in names


# --- the examples use only metrics that exist ------------------------------------------------------------

_NAME = re.compile(r"\bedgewise_[a-z0-9_]+\b")


def _served_names(text: str) -> set[str]:
    return {name for name, _ in _samples(text)}


def _used_names(text: str) -> set[str]:
    return set(_NAME.findall(text))


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    variables = dashboard.get("templating", {}).get("list", ())
    exprs += [v["query"]["query"] for v in variables if isinstance(v.get("query"), dict)]
    return exprs


def test_the_examples_name_metrics() -> None:
    assert len(_used_names(RULES.read_text())) >= 8
    exprs = _dashboard_exprs()
    assert len(exprs) >= 12 and all(_NAME.search(e) for e in exprs)


@pytest.mark.slow
def test_every_metric_the_alerts_and_the_dashboard_use_is_served(scraped: dict[str, str]) -> None:
    served = _served_names(scraped["control"]) | _served_names(scraped["edge"])
    for where, text in ((RULES, RULES.read_text()), (DASHBOARD, "\n".join(_dashboard_exprs()))):
        missing = sorted(_used_names(text) - served)
        assert not missing, f"{where.name} uses metrics no node or control plane serves: {missing}"


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    for check in (["rules", str(RULES)], ["config", str(EXAMPLES / "prometheus" / "prometheus.yml")]):
        done = subprocess.run([promtool, "check", *check], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout
