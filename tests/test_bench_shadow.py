"""Smoke test of the shadow decisions benchmark (python -m bench.shadow --quick)."""

from __future__ import annotations

import json

import pytest

from edgewise.bench import shadow as bench


def test_quick_run_times_each_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    configs = result["configs"]
    assert list(configs) == ["off", "idle", "sample 0.1", "sample 1.0"]
    calls = result["calls_per_config"]
    for name in ("off", "idle"):
        assert configs[name]["shadow_decided"] == configs[name]["shadow_dropped"] == 0
    everything = configs["sample 1.0"]
    assert everything["shadow_decided"] + everything["shadow_dropped"] == calls
    assert 0 < configs["sample 0.1"]["shadow_decided"] + configs["sample 0.1"]["shadow_dropped"] < calls
    assert all(row["median_us"] > 0 for row in configs.values()) and result["branch_ns"] > 0
