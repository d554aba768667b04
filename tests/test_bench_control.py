"""Smoke test of the control-plane operations benchmark (python -m bench.control --quick)."""

from __future__ import annotations

import json

import pytest

from edgewise.bench import control as bench


def test_quick_run_reports_forget_and_learner_resume(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (forget,) = result["forget"]
    assert forget["log_changes"] == 20_000
    assert forget["changes_per_forget"] == [2]  # the profile's tombstone and the user's record
    assert 0 < forget["forget_ms_median"] <= forget["forget_ms_max"]
    event_forget = result["event_forget"]
    assert event_forget["stored_records"] == 5_500
    assert event_forget["records_per_forget"] == [2]  # the user's exposure and its click
    resume = result["learner_resume"]
    assert resume["stored_records"] == 5_500  # 5,000 exposures and a click for every tenth
    assert resume["build_seconds"] >= 0 and resume["first_read_seconds"] > 0
