"""Thompson-sampling bandits (edgewise.core.bandits): computed propensities against closed forms and
Monte-Carlo frequencies of `choose`, determinism, compile errors, per-segment posteriors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from edgewise.core import bandits
from edgewise.core.bandits import (
    Arm,
    BanditError,
    BanditPolicy,
    compile_bandit,
    thompson_index,
    win_probabilities,
)


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _p_b_beats_a(a_a: float, b_a: float, a_b: int, b_b: float) -> float:
    """Exact P(X_B > X_A) for X_A ~ Beta(a_a, b_a), X_B ~ Beta(a_b, b_b), integer a_b (Evan Miller)."""
    return sum(
        math.exp(_lbeta(a_a + i, b_b + b_a) - math.log(b_b + i) - _lbeta(1 + i, b_b) - _lbeta(a_a, b_a))
        for i in range(a_b)
    )


def _policy(params: list[tuple[float, float]], floor: float = 0.0) -> BanditPolicy:
    arms = [Arm(f"arm{i}", a, b, f"content{i}") for i, (a, b) in enumerate(params)]
    return BanditPolicy(arms, floor)


@pytest.mark.parametrize(
    ("a_a", "b_a", "a_b", "b_b"),
    [(1, 1, 1, 1), (2, 5, 3, 4), (10, 90, 12, 88), (1, 30, 2, 1), (100, 1000, 120, 1100), (0.5, 0.5, 1, 3)],
)
def test_two_arms_match_the_closed_form(a_a: float, b_a: float, a_b: int, b_b: float) -> None:
    exact = _p_b_beats_a(a_a, b_a, a_b, b_b)
    p = win_probabilities([a_a, a_b], [b_a, b_b])
    assert abs(p[1] - exact) < 1e-9
    assert abs(p[0] - (1.0 - exact)) < 1e-9


def test_peaked_two_arms_match_the_closed_form() -> None:
    # Posteriors after millions of impressions: a grid fixed over [0, 1] could not resolve these.
    exact = _p_b_beats_a(40_000, 1_000_000, 40_300, 1_000_000)
    p = win_probabilities([40_000, 40_300], [1_000_000, 1_000_000])
    assert abs(p[1] - exact) < 1e-8


@pytest.mark.parametrize("shape", [(1.0, 1.0), (0.3, 0.3), (0.25, 4.0), (5.0, 200.0), (1e6, 1e6)])
@pytest.mark.parametrize("k", [2, 3, 7, 20])
def test_equal_arms_are_one_over_k(shape: tuple[float, float], k: int) -> None:
    p = win_probabilities([shape[0]] * k, [shape[1]] * k)
    assert np.allclose(p, 1.0 / k, rtol=0.0, atol=1e-12)


SKEWED = [(0.3, 0.5), (0.5, 0.25), (1.0, 3.0), (2.0, 0.4)]
PEAKED = [(1e6, 1e6), (1e6 + 1000, 1e6), (1e6 - 500, 1e6)]
CTRS = [(11.0, 989.0), (15.0, 1200.0), (3.0, 150.0), (40.0, 4000.0)]
BROAD_VS_PEAKED = [(500.0, 500.0), (0.5, 0.5), (0.25, 0.25)]
_rng20 = np.random.default_rng(20)
TWENTY = list(zip(_rng20.uniform(1, 20, 20).tolist(), _rng20.uniform(50, 400, 20).tolist(), strict=True))


@pytest.mark.parametrize("params", [SKEWED, PEAKED, CTRS, BROAD_VS_PEAKED, TWENTY])
def test_grid_refinement_changes_nothing(params: list[tuple[float, float]]) -> None:
    a, b = zip(*params, strict=True)
    coarse = win_probabilities(a, b)
    fine = win_probabilities(a, b, points_per_side=4 * bandits.DEFAULT_POINTS_PER_SIDE)
    assert np.abs(coarse - fine).max() < 1e-8
    assert abs(coarse.sum() - 1.0) < 1e-12


@pytest.mark.parametrize(
    ("params", "floor"),
    [
        ([(1.0, 1.0)] * 3, 0.0),
        (SKEWED, 0.0),
        (SKEWED, 0.2),
        (PEAKED, 0.0),
        (CTRS, 0.0),
        (CTRS, 0.3),
        (BROAD_VS_PEAKED, 0.0),
        pytest.param(TWENTY, 0.1, marks=pytest.mark.slow),  # 20 arms: over 2 s
    ],
)
def test_propensities_match_monte_carlo_of_choose(params: list[tuple[float, float]], floor: float) -> None:
    policy = _policy(params, floor)
    rng = np.random.default_rng(12345)
    draws = 200_000
    index = {arm.id: i for i, arm in enumerate(policy.arms())}
    counts = np.zeros(len(params), dtype=np.int64)
    propensities = policy.propensities()
    for _ in range(draws):
        arm, propensity = policy.choose(rng)
        i = index[arm.id]
        assert propensity == propensities[i]
        counts[i] += 1
    freq = counts / draws
    p = np.array(propensities)
    assert abs(p.sum() - 1.0) < 1e-12
    se = np.sqrt(np.maximum(p * (1.0 - p), 1e-12) / draws)
    z = (freq - p) / se
    assert np.abs(z).max() < 4.5, (freq, p, z)
    # The floor is mixed in exactly: every arm keeps at least floor / K.
    assert min(propensities) >= floor / len(params) - 1e-15


def test_one_arm_is_always_chosen() -> None:
    policy = _policy([(2.0, 3.0)], 0.1)
    arm, propensity = policy.choose(np.random.default_rng(0))
    assert (arm.id, propensity) == ("arm0", 1.0)


def test_choose_is_deterministic_for_a_seeded_generator() -> None:
    policy = _policy(CTRS, 0.1)
    first = [policy.choose(np.random.default_rng(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng_a, rng_b = np.random.default_rng(99), np.random.default_rng(99)
    seq_a = [policy.choose(rng_a) for _ in range(500)]
    seq_b = [policy.choose(rng_b) for _ in range(500)]
    assert seq_a == seq_b
    seq_c = [policy.choose(np.random.default_rng(100 + i)) for i in range(500)]
    assert seq_c != seq_a


def test_scalar_and_vector_draws_consume_the_same_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = [float(x) for x in range(1, 9)], [float(x) for x in range(20, 12, -1)]
    rng = np.random.default_rng(3)
    scalar = [thompson_index(rng, a, b, 0.1) for _ in range(2000)]
    monkeypatch.setattr(bandits, "_SCALAR_DRAWS_MAX", 0)
    rng = np.random.default_rng(3)
    vector = [thompson_index(rng, np.array(a), np.array(b), 0.1) for _ in range(2000)]
    assert scalar == vector


def test_ties_go_to_the_lowest_index() -> None:
    class Fixed:
        """A stand-in generator whose beta draws are all equal."""

        def random(self) -> float:
            return 0.99

        def beta(self, a: Any, b: Any) -> Any:
            return np.full(np.shape(a), 0.5) if np.ndim(a) else 0.5

    assert thompson_index(Fixed(), [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]) == 0  # type: ignore[arg-type]
    assert thompson_index(Fixed(), np.ones(20), np.ones(20)) == 0  # type: ignore[arg-type]


DOC: dict[str, Any] = {
    "arms": [
        {"id": "a", "content_id": "hero_a", "alpha": 1, "beta": 1},
        {"id": "b", "content_id": "hero_b", "alpha": 2.5, "beta": 30},
        {"id": "c", "alpha": 1, "beta": 5},
    ],
    "exploration_floor": 0.05,
    "segments": {
        "vip": {
            "arms": [
                {"id": "b", "alpha": 400, "beta": 600},
                {"id": "a", "content_id": "hero_a", "alpha": 2, "beta": 900},
                {"id": "c", "alpha": 1, "beta": 800},
            ]
        }
    },
}


def test_compile_keeps_content_ids_and_segments() -> None:
    policy = compile_bandit(DOC, "placements.hero.bandit")
    assert policy.exploration_floor == 0.05
    assert policy.segments == frozenset({"vip"})
    assert [(arm.id, arm.content_id) for arm in policy.arms()] == [
        ("a", "hero_a"),
        ("b", "hero_b"),
        ("c", "c"),
    ]
    vip = policy.arms("vip")
    assert [(arm.id, arm.content_id, arm.alpha, arm.beta) for arm in vip] == [
        ("a", "hero_a", 2.0, 900.0),
        ("b", "hero_b", 400.0, 600.0),
        ("c", "c", 1.0, 800.0),
    ]
    assert policy.arms("unknown segment") == policy.arms(None) == policy.arms()


def test_segment_posteriors_are_used_when_given() -> None:
    policy = compile_bandit(DOC, "bandit")
    vip_props = policy.propensities("vip")
    global_props = policy.propensities()
    # In "vip" arm b (posterior mean 0.4) beats the others (< 0.003) essentially always.
    assert vip_props[1] == pytest.approx(0.05 / 3 + 0.95, abs=1e-9)
    assert vip_props != global_props
    rng = np.random.default_rng(5)
    picks = [policy.choose(rng, "vip") for _ in range(2000)]
    chosen_b = sum(arm.id == "b" for arm, _ in picks)
    assert chosen_b > 1800
    for arm, propensity in picks:
        assert propensity == vip_props[["a", "b", "c"].index(arm.id)]
    # Unknown segments and no segment: the global posteriors.
    for segment in (None, "nobody"):
        arm, propensity = policy.choose(np.random.default_rng(6), segment)
        assert propensity == global_props[["a", "b", "c"].index(arm.id)]


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    """A deep copy of DOC with the field at `path` set to `value` (or removed when value is ...)."""
    import copy

    doc: Any = copy.deepcopy(DOC)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return dict(doc)


@pytest.mark.parametrize(
    ("doc", "path", "reason"),
    [
        (["not", "an", "object"], "P", "must be an object"),
        (_with(["arms"], ...), "P.arms", "must be a non-empty list"),
        (_with(["arms"], []), "P.arms", "must be a non-empty list"),
        (_with(["arms", 1], "b"), "P.arms[1]", "must be an object"),
        (_with(["arms", 1, "id"], ""), "P.arms[1].id", "non-empty string"),
        (_with(["arms", 2, "id"], "a"), "P.arms[2].id", "duplicate arm id 'a'"),
        (_with(["arms", 1, "alpha"], ...), "P.arms[1].alpha", "must be a number"),
        (_with(["arms", 1, "alpha"], True), "P.arms[1].alpha", "must be a number"),
        (_with(["arms", 1, "alpha"], "2"), "P.arms[1].alpha", "must be a number"),
        (_with(["arms", 1, "alpha"], 0), "P.arms[1].alpha", "must be in [0.25, 1e+09]"),
        (_with(["arms", 1, "beta"], -3), "P.arms[1].beta", "must be in [0.25, 1e+09]"),
        (_with(["arms", 1, "beta"], 0.1), "P.arms[1].beta", "must be in [0.25, 1e+09]"),
        (_with(["arms", 1, "beta"], float("inf")), "P.arms[1].beta", "must be in"),
        (_with(["arms", 1, "beta"], float("nan")), "P.arms[1].beta", "must be in"),
        (_with(["arms", 1, "content_id"], 7), "P.arms[1].content_id", "non-empty string"),
        (_with(["arms", 1, "weight"], 7), "P.arms[1].weight", "unknown field"),
        (_with(["exploration"], 0.1), "P.exploration", "unknown field"),
        (_with(["exploration_floor"], 1.0), "P.exploration_floor", "must be in [0, 1)"),
        (_with(["exploration_floor"], -0.01), "P.exploration_floor", "must be in [0, 1)"),
        (_with(["exploration_floor"], "5%"), "P.exploration_floor", "must be a number"),
        (_with(["segments"], []), "P.segments", "must be an object"),
        (_with(["segments", "vip"], 3), "P.segments.vip", "must be an object"),
        (_with(["segments", "vip", "arms"], ...), "P.segments.vip.arms", "must be a non-empty list"),
        (_with(["segments", "vip", "arms", 0, "id"], "z"), "P.segments.vip.arms[0].id", "unknown arm 'z'"),
        (
            _with(["segments", "vip", "arms", 0, "id"], "a"),
            "P.segments.vip.arms[1].id",
            "duplicate arm id 'a'",
        ),
        (_with(["segments", "vip", "arms", 2], ...), "P.segments.vip.arms", "missing arms c"),
        (
            _with(["segments", "vip", "arms", 1, "content_id"], "hero_x"),
            "P.segments.vip.arms[1].content_id",
            "must equal the global arm's 'hero_a'",
        ),
        (_with(["segments", "vip", "arms", 2, "alpha"], 0.0), "P.segments.vip.arms[2].alpha", "must be in"),
        (_with(["segments", "vip", "extra"], 1), "P.segments.vip.extra", "unknown field"),
    ],
)
def test_compile_errors_name_the_path(doc: Any, path: str, reason: str) -> None:
    with pytest.raises(BanditError) as info:
        compile_bandit(doc, "P")
    assert info.value.path == path
    assert reason in info.value.reason
    assert str(info.value) == f"{path}: {info.value.reason}"
    assert isinstance(info.value, ValueError)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        Arm("a", 0.0, 1.0, "c")
    with pytest.raises(ValueError, match="exploration_floor"):
        BanditPolicy([Arm("a", 1.0, 1.0, "c")], 1.0)
    with pytest.raises(ValueError, match="duplicate arm ids"):
        BanditPolicy([Arm("a", 1.0, 1.0, "c"), Arm("a", 2.0, 1.0, "d")])
    with pytest.raises(ValueError, match="segment 'vip'"):
        BanditPolicy(
            [Arm("a", 1.0, 1.0, "c"), Arm("b", 2.0, 1.0, "d")], 0.0, {"vip": [Arm("a", 1.0, 1.0, "c")]}
        )
    with pytest.raises(ValueError, match="at least one arm"):
        BanditPolicy([])
