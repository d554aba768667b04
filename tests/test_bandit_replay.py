"""The bandit replay benchmark (edgewise.bench.bandit_replay): the replay method on a synthetic log with
a known best arm, and on the Open Bandit Dataset when ../shared/data holds it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgewise.bench.bandit_replay import BanditLog, load_log, main, replay, wilson_interval

OPEN_BANDIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "open-bandit"
needs_data = pytest.mark.skipif(
    not (OPEN_BANDIT / "random" / "men" / "men.csv").is_file(), reason="no ../shared/data/open-bandit"
)


def _synthetic_log(n: int, rates: list[float], seed: int) -> BanditLog:
    """A uniform-random log over len(rates) arms with Bernoulli(rates[arm]) clicks.

    Use seeds the replays do not use: a replay whose generator repeats the log's own stream would match
    every impression (the policy must be independent of the logging policy).
    """
    rng = np.random.default_rng(seed)
    k = len(rates)
    items = rng.integers(0, k, size=n).astype(np.int64)
    clicks = (rng.random(n) < np.array(rates)[items]).astype(np.int64)
    positions = rng.integers(0, 2, size=n).astype(np.int64)
    return BanditLog(items, positions, clicks, np.full(n, 1.0 / k), k)


def test_thompson_replay_finds_the_best_arm() -> None:
    rates = [0.05, 0.05, 0.05, 0.5, 0.05]
    log = _synthetic_log(20_000, rates, seed=1001)
    for seed in range(3):
        ts = replay(log, np.random.default_rng(seed))
        per_position = replay(log, np.random.default_rng(seed), per_position=True)
        uniform = replay(log, np.random.default_rng(seed), policy="uniform")
        # About 1/5 of the log matches whatever the policy does.
        for result in (ts, per_position, uniform):
            assert 3_500 < result.matched < 4_500
            assert result.ci_low <= result.ctr <= result.ci_high
        # Uniform play earns the mean rate (0.14); Thompson sampling converges to the 0.5 arm.
        assert 0.11 < uniform.ctr < 0.17
        assert ts.ctr > 0.45
        assert per_position.ctr > 0.42
        assert ts.ci_low > uniform.ci_high


def test_exploration_floor_costs_what_it_should() -> None:
    rates = [0.05, 0.05, 0.05, 0.5, 0.05]
    log = _synthetic_log(20_000, rates, seed=1002)
    floor = replay(log, np.random.default_rng(0), exploration_floor=0.5)
    # Half the choices are uniform (mean 0.14), half mostly the best arm (0.5): about 0.32.
    assert 0.27 < floor.ctr < 0.37


def test_replay_refuses_a_non_uniform_log() -> None:
    log = _synthetic_log(100, [0.1, 0.2], seed=1003)
    skewed = BanditLog(log.items, log.positions, log.clicks, np.full(100, 0.7), 2)
    with pytest.raises(ValueError, match="uniform-random log"):
        replay(skewed, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown policy"):
        replay(log, np.random.default_rng(0), policy="greedy")


def test_wilson_interval() -> None:
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.27753, abs=1e-5)
    low, high = wilson_interval(46, 10_000)
    assert low < 0.0046 < high
    assert wilson_interval(0, 0) == (0.0, 1.0)


@needs_data
def test_replay_on_the_open_bandit_dataset() -> None:
    log = load_log(OPEN_BANDIT / "random" / "men" / "men.csv")
    assert len(log) == 10_000
    assert log.n_arms == 34
    assert set(np.unique(log.positions).tolist()) == {0, 1, 2}
    result = replay(log, np.random.default_rng(0))
    assert 0 < result.matched < len(log)
    assert 0.0 <= result.ctr <= 1.0
    assert 0 <= result.clicks <= result.matched


@needs_data
def test_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(OPEN_BANDIT), "--seeds", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["logged"]["random"]["impressions"] == 10_000
    assert 0.0 <= out["logged"]["bts"]["ctr"] <= 1.0
    assert [v["seeds"] for v in out["variants"]] == [1, 1, 1, 1]
    assert all(v["matched_mean"] > 0 for v in out["variants"])


def test_command_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(tmp_path), "--seeds", "1"]) == 2
    assert "no Open Bandit data" in capsys.readouterr().err
