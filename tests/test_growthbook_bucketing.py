"""GrowthBook bucketing as an experiment's opt-in: the variant each unit gets equals what GrowthBook's
Python SDK (the `growthbook` package, from the `bench` extra) assigns for the same experiment."""

from __future__ import annotations

from typing import Any

import pytest

from edgewise.core.experiments import ExperimentError, assign, compile_experiments

growthbook = pytest.importorskip("growthbook", reason="GrowthBook's Python SDK comes with the bench extra")


def _experiment(bucketing: dict[str, Any], weights: list[float]) -> dict[str, Any]:
    return {
        "checkout": {
            "bucketing": bucketing,
            "variants": [{"id": f"v{i}", "weight": w} for i, w in enumerate(weights)],
        }
    }


def _growthbook_variant(key: str, unit: str, weights: list[float], **kw: Any) -> int | None:
    gb = growthbook.GrowthBook(attributes={"id": unit})
    try:
        result = gb.run(
            growthbook.Experiment(key=key, variations=list(range(len(weights))), weights=weights, **kw)
        )
    finally:
        gb.destroy()
    return result.variationId if result.inExperiment else None


@pytest.mark.parametrize(
    ("bucketing", "weights", "gb_kw"),
    [
        ({"scheme": "growthbook", "hash_version": 2}, [0.5, 0.5], {"hashVersion": 2}),
        ({"scheme": "growthbook", "hash_version": 1}, [0.2, 0.3, 0.5], {"hashVersion": 1}),
        (
            {"scheme": "growthbook", "hash_version": 2, "coverage": 0.4, "seed": "s1"},
            [0.3, 0.7],
            {"coverage": 0.4, "seed": "s1", "hashVersion": 2},
        ),
        (
            {"scheme": "growthbook", "hash_version": 2, "namespace": ["ns", 0.2, 0.7]},
            [0.5, 0.5],
            {"namespace": ("ns", 0.2, 0.7), "hashVersion": 2},
        ),
    ],
)
def test_units_get_growthbooks_variant(bucketing: dict[str, Any], weights: list[float], gb_kw: Any) -> None:
    experiment = compile_experiments(_experiment(bucketing, weights))["checkout"]
    for i in range(400):
        unit = f"user-{i}"
        a = assign(experiment, unit, {})
        ours = None if a is None or a.variant is None else int(a.variant.id[1:])
        assert ours == _growthbook_variant("checkout", unit, weights, **gb_kw), unit


def test_propensity_is_the_ranges_share() -> None:
    experiment = compile_experiments(
        _experiment(
            {"scheme": "growthbook", "hash_version": 1, "coverage": 0.5, "namespace": ["n", 0, 0.5]},
            [0.25, 0.75],
        )
    )["checkout"]
    assert [v.propensity for v in experiment.variants] == pytest.approx([0.0625, 0.1875])


@pytest.mark.parametrize(
    ("bucketing", "weights", "field"),
    [
        ({"scheme": "growthbook", "hash_version": 3}, [0.5, 0.5], "bucketing.hash_version"),
        ({"scheme": "growthbook"}, [0.5, 0.5], "bucketing.hash_version"),
        ({"scheme": "growthbook", "hash_version": 2, "coverage": 1.5}, [0.5, 0.5], "bucketing.coverage"),
        ({"scheme": "growthbook", "hash_version": 2}, [1, 1], "variants"),
        ({"scheme": "fnv"}, [0.5, 0.5], "bucketing.scheme"),
        (
            {"scheme": "growthbook", "hash_version": 2, "namespace": ["n", 0.5, 0.2]},
            [0.5, 0.5],
            "bucketing.namespace",
        ),
    ],
)
def test_bad_bucketing_is_refused_naming_the_field(
    bucketing: dict[str, Any], weights: list[float], field: str
) -> None:
    with pytest.raises(ExperimentError) as err:
        compile_experiments(_experiment(bucketing, weights))
    assert err.value.path == f"experiments.checkout.{field}"


def test_murmur3_stays_the_default() -> None:
    default = compile_experiments(_experiment({"scheme": "murmur3"}, [0.5, 0.5]))["checkout"]
    assert default.growthbook is None
