"""Smoke test of the refresh evaluation on the retail data (python -m bench.refresh_eval --quick)."""

from __future__ import annotations

import json

import pytest

from edgewise.bench import refresh_eval as bench

pytest.importorskip("implicit", reason="the `train` extra (implicit) is not installed")


@pytest.mark.slow  # builds a retail bundle and trains three ALS models: seconds of CPU
def test_quick_replay_scores_frozen_and_refreshed_models(capsys: pytest.CaptureFixture[str]) -> None:
    if not bench.DEFAULT_CSV.is_file():
        pytest.skip(f"no retail data at {bench.DEFAULT_CSV}")
    assert bench.main(["--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    replay = result["replay"]
    assert "static" not in result and [p["start"] for p in replay["periods"]] == ["2011-10-01", "2011-10-08"]
    assert set(replay["models"]) == {
        "popular (frozen)",
        "retail (frozen)",
        "ALS (frozen)",
        "popular (refreshed)",
        "ALS (refreshed)",
        "hybrid (refreshed)",
    }
    first = replay["periods"][0]
    assert first["users"] > 100 and first["users_without_frozen_profile"] == 0
    # the first period's refresh trains on exactly the frozen model's events: the same model
    assert first["ndcg"]["ALS (refreshed)"] == first["ndcg"]["ALS (frozen)"]
    assert first["ndcg"]["popular (refreshed)"] == first["ndcg"]["popular (frozen)"]
    # the hybrid from the events and tags is the bundle's model, up to what events do not carry
    # (cancellations, the descriptions' two-letter words): within a few percent of it
    assert first["ndcg"]["hybrid (refreshed)"] == pytest.approx(first["ndcg"]["retail (frozen)"], rel=0.1)
    for row in replay["comparisons"]:
        ratio, lo, hi = row["ratio"]
        assert 0 < lo <= ratio <= hi
    for model in replay["models"].values():
        assert 0 < model["ndcg"] < 1 and 0 < model["hr"] < 1
