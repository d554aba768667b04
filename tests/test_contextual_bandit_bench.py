"""The contextual bandit benchmarks: the simulation's regret against the Beta bandit's, and the choice
cost case of bench.pipeline (a smoke run)."""

from __future__ import annotations

from edgewise.bench.contextual_bandit import simulate
from edgewise.bench.pipeline import _format_contextual, measure_contextual_bandit


def test_contextual_regret_is_at_most_half_the_beta_bandit_s() -> None:
    beta = simulate("beta", 50, 200, seed=3)
    contextual = simulate("contextual", 50, 200, seed=3)
    assert contextual.pulls == beta.pulls == 10_000
    assert contextual.cumulative_regret <= 0.5 * beta.cumulative_regret, (contextual, beta)
    # It keeps learning: the last tenth's regret per pull is well below the first's.
    assert contextual.regret_per_pull_by_decile[-1] < 0.5 * contextual.regret_per_pull_by_decile[0]


def test_choice_cost_case_runs() -> None:
    result = measure_contextual_bandit(50, 1, seed=1)
    assert (result["arms"], result["features"], result["decisions"]) == (8, 32, 50)
    for key in ("vector", "choose", "vector_and_choose", "numpy_choose"):
        assert result[key]["n"] == 50 and result[key]["median_us"] > 0
    assert "per decision" in "\n".join(_format_contextual(result))
