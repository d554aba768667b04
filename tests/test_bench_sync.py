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
    assert bench.format_report(result).count("MET") >= 6
