"""Smoke test of the sync benchmark (python -m bench.sync --quick): real control plane and edge processes."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from edgewise.bench import sync as bench


def _stats_ok(stats: dict[str, Any], n: int) -> None:
    assert stats["n"] == n
    assert 0 <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]


def _children() -> set[int]:
    """Pids of this process's living children (the bench must leave none behind)."""
    me = os.getpid()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


@pytest.mark.slow
def test_quick_run_reports_the_three_targets(capsys: pytest.CaptureFixture[str]) -> None:
    before = _children()
    assert bench.main(["--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert _children() <= before, "bench.sync left processes running"

    config = result["config"]
    assert config["quick"] is True and config["edges"] == 2 and config["deltas"] == 20
    assert config["bootstrap_bundle"]["profiles"] == 10_000
    assert result["machine"]["nproc"] >= 1 and "sync_applied" in result["detection"]

    prop = result["propagation"]
    assert prop["edges"] == 2 and prop["deltas"] == 20 and prop["converged"] is True
    assert prop["changes"] == 20 * config["delta_upserts"]
    _stats_ok(prop["from_push_returned_ms"], 20)
    _stats_ok(prop["from_push_sent_ms"], 20)
    _stats_ok(prop["from_control_commit_ms"], 20)
    _stats_ok(prop["per_edge_from_push_returned_ms"], 40)
    # applied after the push started, and within seconds on loopback; the edge's ts has 1 ms resolution
    assert prop["from_push_sent_ms"]["min"] > -1.0 and prop["from_push_returned_ms"]["max"] < 5_000
    assert prop["from_push_returned_ms"]["min"] > -5.0
    assert prop["met"] == (prop["from_push_returned_ms"]["p99"] < 50.0)

    boot = result["bootstrap"]
    assert boot["profiles"] == 10_000 and boot["items"] == 1_000 and boot["version_ok"] is True
    assert boot["records"] > 10_000 and boot["record_mb"] > 0
    assert 0 < boot["start_to_applied_s"] < 60
    assert boot["start_to_applied_s"] >= boot["split_s"]["edge_apply"] > 0
    assert boot["met"] == (boot["start_to_applied_s"] < 30.0)

    for key, edges in (("alone", 1), ("fleet", 2)):
        row = result["throughput"][key]
        assert row["edges"] == edges and row["deltas"] == 2 and row["upserts_per_delta"] == 5_000
        assert row["changes_applied"] == [5_000]
        assert 0 < row["in_edge_per_s"]["min"] <= row["in_edge_per_s"]["median"]
        assert 0 < row["end_to_end_per_s"]["min"] <= row["end_to_end_per_s"]["median"]
        # end to end includes the apply inside the edge
        assert row["end_to_end_per_s"]["median"] <= row["in_edge_per_s"]["max"]
    assert result["throughput"]["alone"]["version_ok"] is True
    assert result["throughput"]["fleet"]["converged"] is True

    targets = result["targets"]
    assert len(targets) == 6
    for target in targets:
        assert {"name", "figure", "unit", "target", "met"} <= set(target)
        assert isinstance(target["met"], bool) and target["figure"] > 0

    _events_ok(result)
    report = bench.format_report(result)
    assert report.count("MET") >= 6
    assert "events upstream" in report and "pdp_similar seeds, p99" in report
    assert result["seconds"]["total"] < 60, "--quick must stay under a minute"


def _events_ok(result: dict[str, Any]) -> None:
    """The events stage of a quick run: 5,000 events per phase through 1 edge, 10 views seen on edge B."""
    assert result["config"]["stages"] == ["fleet", "bootstrap", "events"]
    ev = result["events_upstream"]
    assert ev["events"] == 5_000 and ev["batch"] == 100 and ev["clients"] >= 2
    assert ev["consent"] == ["analytics", "personalization"]

    steady = ev["steady"]
    assert steady["events"] == steady["accepted"] == 5_000
    assert steady["track_per_s"] > 0 and steady["seconds"] > 0
    _stats_ok(steady["track_call_ms"], 50)
    assert 0 < steady["upstream_per_s_while_tracking"] <= steady["track_per_s"] * 1.01 + 1
    assert 0 <= steady["stored_upstream_at_track_end"] <= 5_000
    assert 0 <= steady["backlog_at_track_end"] <= steady["backlog_max"] <= 5_000
    assert steady["drained_after_track_end_s"] >= 0 and steady["upstream_per_s_first_track_to_all_stored"] > 0

    drain = ev["drain"]
    assert drain["events"] == drain["outbox_before"] == 5_000 and drain["outbox_empty"] is True
    assert drain["control_down_s"] > 0
    # the control plane starts, then serves, then the edge's forwarder (after its retry backoff) sends
    assert 0 < drain["start_to_serving_s"] <= drain["start_to_first_forward_s"] + 0.05
    assert drain["start_to_first_forward_s"] <= drain["start_to_all_stored_s"] < 60
    assert 0 < drain["per_s_from_control_start"] <= drain["per_s_from_first_forward"]

    fleet = ev["fleet_profile"]
    assert fleet["users"] == 10 and fleet["missed"] == 0 and fleet["poll_ms"] == 5
    _stats_ok(fleet["from_track_returned_ms"], 10)
    _stats_ok(fleet["from_track_sent_ms"], 10)
    # a view reaches the other edge through the forwarder, the folder (every 0.1 s) and a delta: not
    # instantly, and well within the 10 s bound on this loopback
    assert fleet["from_track_returned_ms"]["min"] > 0 and fleet["from_track_returned_ms"]["max"] < 5_000
    assert fleet["from_track_sent_ms"]["p50"] >= fleet["from_track_returned_ms"]["p50"]
    assert fleet["track_returned_to_fold_commit_ms"]["n"] >= 1

    figures = result["figures"]
    assert len(figures) == 7
    for figure in figures:
        assert set(figure) == {"name", "figure", "unit"} and figure["figure"] >= 0
    assert [f["figure"] for f in figures[-3:]] == [
        fleet["from_track_returned_ms"][q] for q in ("p50", "p99", "max")
    ]


@pytest.mark.slow
def test_events_stage_alone(capsys: pytest.CaptureFixture[str]) -> None:
    """--stages events runs that stage only: no propagation, bootstrap or targets in the result."""
    assert (
        bench.main(["--stages", "events", "--quick", "--json", "--events", "1000", "--event-users", "3"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["stages"] == ["events"]
    assert "propagation" not in result and "bootstrap" not in result and result["targets"] == []
    ev = result["events_upstream"]
    assert ev["steady"]["accepted"] == ev["drain"]["outbox_before"] == 1_000
    assert ev["fleet_profile"]["users"] == 3 and ev["fleet_profile"]["missed"] == 0
    assert "figure" in bench.format_report(result)


def test_stages_are_checked() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--stages", "events,nope"])
