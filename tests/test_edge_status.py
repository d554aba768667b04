"""`edgewise edge status`: a real edge serving, and the status command run beside it as its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import StoreUsage
from edgewise.edge.config import load_config
from edgewise.edge.status import format_report, status_report
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgewise.cli", "edge", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_status_beside_a_serving_edge_reports_its_store_and_limits(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    edge = edge_factory(data, bundle_dir, "--workers", "1", "--map-size-mb", "1024")
    events = [pb.Event(event_id=f"st-{n}", type="view", session_id=f"s{n}", item_id="i1") for n in range(40)]
    with grpc.insecure_channel(edge.address) as channel:
        request = pb.TrackRequest(events=events, consent=["personalization", "analytics"])
        assert pb_grpc.PersonalizerStub(channel).Track(request, timeout=30).accepted == 40
    manifest = json.loads((bundle_dir / "manifest.json").read_text())

    result = _status("--data", str(data), "--map-size-mb", "1024", "--outbox-max-mb", "100", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["store"] == str(data)
    snapshot = report["snapshot"]
    assert snapshot["version"] == manifest["bundle_version"] and snapshot["source"] == "bundle"
    assert snapshot["profiles"] > 0 and snapshot["items"] > 0 and snapshot["loaded_at_ms"] > 0
    assert report["map_mib"] == 1024.0 and 0 < report["high_water_share"] < 1
    namespaces = report["namespaces"]
    assert namespaces["activity"]["entries"] == 40  # one per session
    assert namespaces["events"]["entries"] == namespaces["event_times"]["entries"] == 40
    assert namespaces["outbox"]["entries"] >= 40  # the analytics events, waiting for no control plane
    assert namespaces["profiles"]["entries"] == snapshot["profiles"]
    limits = {limit["key"]: limit for limit in report["limits"]}
    assert limits["data.outbox_max_mb"]["limit_mib"] == 100.0  # the flag, as the node would apply it
    assert limits["track.dedupe_max_mb"]["limit_mib"] == 256.0  # a quarter of the map
    assert limits["track.dedupe_max_mb"]["namespaces"] == ["events", "event_times"]
    assert 0 < limits["track.activity_max_mb"]["share"] < 0.01
    assert 0 <= report["oldest_event_id_age_s"] < 600 and report["forget_purges_pending"] == 0
    assert report["readers"] >= 1

    text = _status("--data", str(data))
    assert text.returncode == 0, text.stderr
    assert f"snapshot version {manifest['bundle_version']} (bundle)" in text.stdout
    assert "track.activity_max_mb" in text.stdout and "high-water mark" in text.stdout
    with grpc.insecure_channel(edge.address) as channel:  # the node serves on, undisturbed
        decide = pb.DecideRequest(session_id="s1", placements=[pb.PlacementRequest(placement_id="home")])
        assert pb_grpc.PersonalizerStub(channel).Decide(decide, timeout=30).placements


@pytest.mark.slow
def test_status_without_a_store_or_with_bad_config_says_so(tmp_path: Path) -> None:
    missing = _status("--data", str(tmp_path / "nothing-here"))
    assert missing.returncode == 2
    assert "no edgewise store in" in missing.stderr and "edgewise edge serve --data" in missing.stderr
    bad = _status("--data", str(tmp_path), "--map-size-mb", "0")
    assert bad.returncode == 2 and "map_size_mb" in bad.stderr


def test_a_store_near_its_map_is_called_out(tmp_path: Path) -> None:
    config, _ = load_config(None, {}, {"data.dir": str(tmp_path), "data.map_size_mb": 100})
    namespaces = {"activity": (1_000, 50 << 20), "events": (10, 4096), "event_times": (10, 4096)}
    usage = StoreUsage(95 << 20, namespaces, 0, 0, 1)
    report = status_report(config, tmp_path, usage, SnapshotInfo(), 0)
    assert report["high_water_share"] == 0.95
    assert {row["key"]: row["share"] for row in report["limits"]}["track.activity_max_mb"] == 2.0
    text = format_report(report)
    assert "no snapshot loaded yet" in text and "WARNING: the data file is past 90%" in text
    assert "track.activity_max_mb" in text and "200.0%" in text
    calm = format_report(
        status_report(config, tmp_path, StoreUsage(10 << 20, namespaces, 0, 0, 1), SnapshotInfo(), 0)
    )
    assert "WARNING" not in calm
