"""The `edgewise` command as a user runs it: real processes, real output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EdgeProcess

pytestmark = pytest.mark.slow  # every test here runs the `edgewise` command as a subprocess


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgewise.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["demo"],
        ["edge", "serve"],
        ["edge", "status"],
        ["call", "decide"],
        ["call", "track"],
        ["bundle", "synth"],
        ["bundle", "validate"],
        ["bundle", "from-retail"],
        ["eval", "offline"],
        ["bench", "load"],
        ["bench", "floor-server"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = _run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: edgewise" in result.stdout
    assert len(result.stdout) > 200


def test_call_decide_prints_canonical_json(shared_edge: EdgeProcess, bundle_dir: Path) -> None:
    result = _run(
        "call",
        "decide",
        "--target",
        shared_edge.address,
        "--user",
        "u0",
        "--consent",
        "personalization",
        "--context",
        "country=DE",
        "--context",
        "campaign=xmas",
        "--placement",
        "home:3",
        "--placement",
        "hero_banner",
        "--explain",
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["snapshotVersion"] == "1"  # uint64 maps to a JSON string
    home = body["placements"][0]
    assert home["placementId"] == "home" and len(home["items"]) == 3
    assert home["fallbackReason"] in ("FALLBACK_REASON_NONE", "FALLBACK_REASON_NO_CONSENT")
    assert body["explanation"]["placements"][0]["placementId"] == "home"


def test_call_track_then_decide_excludes_the_item(edge: EdgeProcess) -> None:
    result = _run(
        "call",
        "track",
        "--target",
        edge.address,
        "--type",
        "view",
        "--session",
        "s9",
        "--item",
        "i4",
        "--consent",
        "personalization",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"accepted": 1, "duplicates": 0}
    result = _run(
        "call",
        "decide",
        "--target",
        edge.address,
        "--session",
        "s9",
        "--consent",
        "personalization",
        "--placement",
        "pdp_similar:5",
        "--explain",
    )
    body = json.loads(result.stdout)
    assert body["explanation"]["placements"][0]["seedItemIds"] == ["i4"]
    assert "i4" not in [i["id"] for i in body["placements"][0]["items"]]


def test_call_decide_reports_invalid_argument(shared_edge: EdgeProcess) -> None:
    result = _run("call", "decide", "--target", shared_edge.address, "--placement", "nowhere")
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "placements[0].placement_id" in result.stderr


def test_bundle_synth_and_validate(tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = _run("bundle", "synth", "--users", "50", "--items", "40", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    result = _run("bundle", "validate", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1
    (out / "rules.json").write_text("{}")
    result = _run("bundle", "validate", str(out))
    assert result.returncode == 1
    assert "rules.json" in result.stderr


def test_demo_runs_end_to_end() -> None:
    result = _run("demo", timeout=120)  # bounded; how long the demo takes is bench's business, not a test's
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "anonymous default for home: yes" in out
    assert "left home: yes" in out
    assert "pdp_similar now shows neighbors of: i" in out
    assert "home now serves campaign 'cart_reminder'" in out
    assert "both edges hold identical data (SHA-256 of every replicated record): yes" in out
    assert "gets the same home items on both edges: yes" in out
    assert (
        out.count(
            "app visitor's home (no country) starts with demo-new-arrival; hero_banner shows hero_spring_sale"
        )
        == 2
    )
    canary = out.split("\n6b.")[1].split("\n7.")[0]
    assert "edge-b still at version" in canary and "NO" not in canary
    assert "promoted: every edge gets it now" in out and "after the promotion: yes" in out
    assert "experiment hero_test: metric ctr" in out and "personalization vs global holdout" in out
    assert "edge-b's pdp_similar seeds for" in out and "NOT within" not in out
    assert "both edges now answer" in out and "as an unknown user: yes" in out
    assert "edge-a exit 0, edge-b exit 0" in out and "control exit 0" in out


def test_demo_ctrl_c_leaves_no_process_behind(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgewise.cli", "demo", "--users", "30000", "--items", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    # Wait until the edge subprocess exists, then Ctrl-C the whole process group as a terminal would.
    deadline = time.monotonic() + 60
    children: list[int] = []
    while not children and time.monotonic() < deadline and proc.poll() is None:
        children = _children(proc.pid)
        time.sleep(0.05)
    assert children, "the demo never started an edge"
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(30)
    time.sleep(0.2)
    for pid in children:
        assert not _alive(pid), f"edge process {pid} survived Ctrl-C"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status
