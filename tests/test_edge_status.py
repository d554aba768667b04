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
    assert limits["data.outbox_max_mb"]["configured_mib"] == 100.0
    # auto: a third of the map less twice the snapshot and the headroom (a sixteenth of the map)
    snapshot_mib = report["budget"]["snapshot_mib"]
    assert abs(limits["track.dedupe_max_mb"]["limit_mib"] - (1024 - 2 * snapshot_mib - 64) / 3) < 0.2
    assert limits["track.dedupe_max_mb"]["configured_mib"] is None
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
    # no snapshot: the caps share the map less its headroom (6.25 MiB), 31.25 MiB each
    assert {row["key"]: row["share"] for row in report["limits"]}["track.activity_max_mb"] == 1.6
    text = format_report(report)
    assert "no snapshot loaded yet" in text and "WARNING: the data file is past 90%" in text
    assert "track.activity_max_mb" in text and "160.0%" in text
    calm = format_report(
        status_report(config, tmp_path, StoreUsage(10 << 20, namespaces, 0, 0, 1), SnapshotInfo(), 0)
    )
    assert "WARNING" not in calm


def test_the_limits_in_force_leave_room_for_the_snapshot_and_a_reload(tmp_path: Path) -> None:
    """A 64 MiB map holding a 24 MiB snapshot: the three size limits, left at their defaults, together
    leave room for the snapshot, a reload's second copy of it and the headroom (they were a quarter of
    the map each, whatever the snapshot: 48 MiB beside 2 x 24). A snapshot too big for a reload beside it
    is called out."""
    config, _ = load_config(None, {}, {"data.dir": str(tmp_path), "data.map_size_mb": 64})
    namespaces = {"profiles": (1_000, 20 << 20), "items": (100, 4 << 20), "activity": (10, 4096)}
    report = status_report(config, tmp_path, StoreUsage(40 << 20, namespaces, 0, 0, 1), SnapshotInfo(), 0)
    limits = [row["limit_mib"] for row in report["limits"]]
    print("limits in force (MiB):", limits)
    assert sum(limits) + 2 * 24 <= 64 - 4  # the headroom of a map under 64 MiB is 4 MiB
    assert limits == [4.0, 4.0, 4.0]  # a third each of 64 - 2 x 24 - 4
    assert report["budget"]["snapshot_mib"] == 24.0 and report["budget"]["write_limit_mib"] == 62.0
    assert "WARNING" not in format_report(report)

    namespaces["profiles"] = (1_000, 40 << 20)  # a 44 MiB snapshot: no room for a second copy
    report = status_report(config, tmp_path, StoreUsage(50 << 20, namespaces, 0, 0, 1), SnapshotInfo(), 0)
    assert [row["limit_mib"] for row in report["limits"]] == [0.1, 0.1, 0.1]  # the least: 64 KiB
    assert not report["budget"]["reload_fits"]
    assert "WARNING: the map cannot hold a reload of this snapshot" in format_report(report)
