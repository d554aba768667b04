"""A shadow rollout on a real edge process following a real control plane (docs/shadow.md): the candidate
decides every request again and the heartbeats, `/metrics` and `edge status` say how it differs, while
every answer served comes from the version served; a 0-chunk shadow commit ends it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgewise.client import EdgeClient
from edgewise.core.decisions import FallbackReason
from edgewise.edge.status import shadow_report
from tests.conftest import EdgeProcess
from tests.rollout_support import failing_bundle, recording_control_plane, shadow_messages
from tests.sync_support import following_edge, versions_reach, wait_for

CALLS = 200
DECIDE = {"consent": ["personalization"], "placements": [{"placement_id": "home"}, {"placement_id": "deals"}]}


def _metrics(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("edgewise_shadow_") and not sample.labels
    }


def _status(data: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "edgewise.cli", "edge", "status", "--data", str(data), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(done.stdout))


@pytest.mark.slow
def test_a_shadow_candidate_on_a_real_edge(
    tmp_path: Path,
    bundle_dir: Path,
    edge_factory: Callable[..., EdgeProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGEWISE_SYNC_HEARTBEAT_SECONDS", "0.5")
    bad = failing_bundle(bundle_dir, tmp_path / "bad")
    data = tmp_path / "edge"
    with recording_control_plane(tmp_path / "control") as control:
        served = control.push(bundle_dir)
        edge = following_edge(
            edge_factory, data, control.address, "n1", {}, "--metrics-listen", "127.0.0.1:0"
        )
        wait_for(versions_reach([data], served), 20, "the edge at the pushed version")
        metrics_address = str(edge.wait_ready()["metrics"])
        candidate = served + 1_000_000
        control.send("n1", shadow_messages(bad, candidate, 1.0))
        control.wait_heartbeat("n1", lambda b: b.shadow.version == candidate, 20, "the candidate held")
        wait_for(
            lambda: any(e.get("event") == "shadow_opened" for e in edge.log_events()),
            10,
            "the worker opening it",
        )

        served_fallbacks = 0
        with EdgeClient(edge.address, timeout=10) as client:
            for i in range(CALLS):
                response = client.decide({**DECIDE, "user_id": f"u{i % 80}"})
                assert response.snapshot_version == served  # never the candidate's
                served_fallbacks += sum(p.fallback != FallbackReason.NONE for p in response.placements)
        beat = control.wait_heartbeat(
            "n1", lambda b: b.shadow.sampled >= CALLS, 20, f"{CALLS} shadow decisions in a heartbeat"
        )
        shadow = beat.shadow
        assert (shadow.version, shadow.base_version, shadow.sampled) == (candidate, served, CALLS)
        assert shadow.placements == 2 * CALLS and shadow.errors == 0
        assert shadow.new_fallbacks == 2 * CALLS - served_fallbacks and shadow.fixed_fallbacks == 0
        assert shadow.item_placements > 0 and shadow.overlap_sum < 0.9 * shadow.item_placements
        assert shadow.served_latency_us_sum > 0 and shadow.shadow_latency_us_sum > 0
        assert beat.serving.version == served and beat.serving.decisions == CALLS  # what was served

        # the supervisor's sums behind /metrics are refreshed on its own period: wait for them
        wait_for(
            lambda: _metrics(metrics_address)["edgewise_shadow_sampled_total"] == CALLS,
            20,
            "the shadow figures on /metrics",
        )
        exposed = _metrics(metrics_address)
        assert exposed["edgewise_shadow_candidate_version"] == candidate
        assert exposed["edgewise_shadow_sample"] == 1.0
        assert exposed["edgewise_shadow_sampled_total"] == CALLS
        assert exposed["edgewise_shadow_new_fallbacks_total"] == shadow.new_fallbacks
        assert exposed["edgewise_shadow_dropped_total"] == 0

        def status_shows_the_stats() -> bool:  # what `edge status` reports, read in process while waiting
            report = shadow_report(data)
            return report is not None and (report.get("stats") or {}).get("sampled") == CALLS

        wait_for(status_shows_the_stats, 10, "edge status with the shadow stats")
        report = _status(data)["shadow"]
        assert isinstance(report, dict) and report["version"] == candidate
        assert report["new_fallback_rate"] == round(shadow.new_fallbacks / shadow.placements, 4)

        control.send("n1", shadow_messages(None, candidate, 0.0))
        later = len(control.heartbeats("n1"))
        wait_for(
            lambda: any(not b.heartbeat.HasField("shadow") for b in control.heartbeats("n1")[later:]),
            20,
            "a heartbeat without the candidate",
        )
        wait_for(lambda: shadow_report(data) is None, 10, "edge status without it")
        wait_for(
            lambda: _metrics(metrics_address)["edgewise_shadow_candidate_version"] == 0, 10, "the gauge at 0"
        )
        with EdgeClient(edge.address, timeout=10) as client:
            client.decide({**DECIDE, "user_id": "u1"})
        assert _metrics(metrics_address)["edgewise_shadow_sampled_total"] == CALLS
