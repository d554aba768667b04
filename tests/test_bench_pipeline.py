"""Smoke test of the in-process pipeline benchmark (python -m bench.pipeline --quick) on a small bundle."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from edgewise.bench import pipeline as bench

SMALL = ["--quick", "--users", "2000", "--items", "1000", "--requests", "300"]
STATS = {"median_us", "p99_us", "p999_us", "max_us", "mean_us", "n"}
HAS_GROWTHBOOK = importlib.util.find_spec("growthbook") is not None


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty dir: the first run generates a small synthetic bundle in it, later runs reuse it."""
    return tmp_path_factory.mktemp("bench-pipeline") / "bundle"


def _run_json(bundle_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Any:
    assert bench.main([*SMALL, "--bundle", str(bundle_dir), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_quick_run_reports_every_stage(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _run_json(bundle_dir, capsys)
    assert result["config"]["users"] == 2000 and result["config"]["items"] == 1000
    assert result["setup"]["bundle_generated"] is True
    assert result["setup"]["activity"]["view"] > 0
    stages = result["stages"]
    assert [key for key, _ in bench.STAGES] == list(stages)
    for key, stats in stages.items():
        assert set(stats) >= STATS, key
        assert stats["n"] == 300, key
        assert 0 <= stats["median_us"] <= stats["p99_us"] <= stats["p999_us"] <= stats["max_us"], key
    assert stages["decide"]["median_us"] > 0 and stages["request"]["median_us"] > 0
    # Each request's best over the real passes is at most its first-pass time, so every percentile is too.
    for stat in ("median_us", "p99_us", "max_us"):
        assert stages["request_min"][stat] <= stages["request"][stat], stat
    assert stages["noise"]["median_us"] > 0
    # The instrumented copy of the orchestration decides exactly as the real pipeline does: if this
    # fails, core/pipeline.py changed and bench/pipeline.py's _staged_decide needs the same change.
    assert result["staged_matches_real"] == "300/300"
    assert set(result["mix"]) == {"request", "home", "pdp_similar", "hero_banner"}
    target = result["target"]
    assert target["p99_us"] == 150.0
    assert target["met"] == (target["request_p99_us"] <= 150.0)
    assert target["repeats"] == 3 and target["request_min_p99_us"] == stages["request_min"]["p99_us"]
    assert target["noise_p99_over_median"] >= 1.0
    assert set(result["gc_during_pipeline"]) == {"gen0", "gen1", "gen2"}
    returning = result["returning"]
    assert returning["users"] == 20 and returning["n"] == 20 * returning["passes"]
    assert 0 < returning["median_us"] <= returning["p99_us"]
    gb = result["growthbook"]
    if not HAS_GROWTHBOOK:
        assert gb["skipped"] == "growthbook not installed" and "pip install growthbook" in gb["install"]
        return
    assert gb["condition_agreement"] == f"{gb['users']}/{gb['users']}"
    assert gb["growthbook_paths_agree"] == f"{gb['users']}/{gb['users']}"
    # versions and saved groups (issue 19): both engines agree on every user, the group holds 1M ids
    targeting = gb["targeting"]
    assert targeting["group_size"] == 1_000_000
    assert set(targeting["rows"]) == set(bench.GB_TARGETING)
    for row in targeting["rows"].values():
        assert row["agreement"] == f"{targeting['users']}/{targeting['users']}" and row["ours_ns"] > 0
    assert bench.OURS in gb["timings"] and bench.OURS_CONDITION in gb["timings"]
    for stats in gb["timings"].values():
        assert {"median_us", "p99_us", "batch_mean_us"} <= set(stats)
    assert gb["min_ratio"] > 0 and gb["met"] == (gb["min_ratio"] >= 10.0)
    # the harness's own cost per call is measured, and every contender does more than nothing
    floor = gb["floor_median_us"]
    assert bench.FLOOR in gb["timings"] and 0 < floor <= gb["timings"][bench.OURS]["median_us"]


def test_missing_growthbook_is_skipped_with_install_hint(
    bundle_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "growthbook", None)  # import growthbook -> ImportError
    assert bench.load_growthbook() is None
    result = _run_json(bundle_dir, capsys, "--requests", "100")
    assert result["growthbook"]["skipped"] == "growthbook not installed"
    assert "pip install growthbook" in result["growthbook"]["install"]
    assert result["stages"]["decide"]["n"] == 100


def test_text_table(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main([*SMALL, "--bundle", str(bundle_dir), "--requests", "100", "--no-growthbook"]) == 0
    text = capsys.readouterr().out
    for line in ("(a) read txn", "(d) home: rank_items", "(e) hero_banner", "decide: Pipeline.decide"):
        assert line in text
    assert "target p99 <= 150 us" in text
    assert "growthbook comparison skipped: disabled (--no-growthbook)" in text


def test_a_non_bundle_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "stranger.txt").write_text("not a bundle")
    with pytest.raises(SystemExit, match="not a bundle"):
        bench.main([*SMALL, "--bundle", str(tmp_path), "--no-growthbook"])
