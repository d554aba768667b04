"""Smoke test of the edge housekeeping benchmark (python -m bench.housekeeping --quick)."""

from __future__ import annotations

import json

import pytest

from edgewise.bench import housekeeping as bench


def test_quick_run_times_the_three_kinds_of_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (row,) = result["rows"]
    assert result["events"] == 5_000 and row["keys_per_step"] == 1_000
    # timed: every full step of ids; the activity steps before the last; every full step of the outbox
    assert row["steps"] == [5, 4, 5]
    assert 0 <= row["idle_step_ms"] <= row["ids_step_ms"] and row["activities_step_ms"] > 0
    assert row["outbox_step_ms"] > 0
    assert row["kept_step_ms"] > 0 and row["kept_ages_step_ms"] > 0
