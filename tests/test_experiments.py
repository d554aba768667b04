"""Experiments: allocation, A/B/n and multivariate variants, layers, holdout, forced variants."""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter

import pytest

from edgewise.core.bucketing import BUCKETS, bucket_reference
from edgewise.core.experiments import (
    FORCE_ATTRIBUTE_PREFIX,
    Experiment,
    ExperimentError,
    assign,
    compile_experiments,
    compile_holdout,
    in_holdout,
)

UNITS = [f"u{n}" for n in range(20_000)]


def _variants(doc: dict[str, object], eid: str, attributes: dict[str, str] | None = None) -> Counter[str]:
    experiment = compile_experiments(doc["experiments"], doc.get("layers"))[eid]
    counts: Counter[str] = Counter()
    for unit in UNITS:
        a = assign(experiment, unit, attributes or {})
        counts["<not in layer range>" if a is None else (a.variant.id if a.variant else "<outside>")] += 1
    return counts


def test_abn_split_follows_weights_and_propensities() -> None:
    doc = {
        "experiments": {
            "e": {"variants": [{"id": "a", "weight": 1}, {"id": "b", "weight": 1}, {"id": "c", "weight": 2}]}
        }
    }
    counts = _variants(doc, "e")
    assert set(counts) == {"a", "b", "c"}
    assert abs(counts["c"] / len(UNITS) - 0.5) < 0.02
    assert abs(counts["a"] / len(UNITS) - 0.25) < 0.02
    experiment = compile_experiments(doc["experiments"])["e"]
    assert [v.propensity for v in experiment.variants] == [0.25, 0.25, 0.5]


def test_traffic_allocation_leaves_units_outside() -> None:
    doc = {"experiments": {"e": {"traffic": 0.2, "variants": [{"id": "a"}, {"id": "b"}]}}}
    counts = _variants(doc, "e")
    assert abs(counts["<outside>"] / len(UNITS) - 0.8) < 0.02
    assert abs(counts["a"] / len(UNITS) - 0.1) < 0.015
    experiment = compile_experiments(doc["experiments"])["e"]
    assert [v.propensity for v in experiment.variants] == [0.1, 0.1]


def test_multivariate_is_the_full_factorial() -> None:
    doc = {
        "experiments": {
            "mv": {
                "factors": {"color": ["red", "blue"], "layout": ["grid", "list", "hero"]},
                "content_template": "banner_{color}_{layout}",
            }
        }
    }
    experiment = compile_experiments(doc["experiments"])["mv"]
    assert len(experiment.variants) == 6
    v = experiment.variants[0]
    assert v.id == "color=red|layout=grid" and v.content_id == "banner_red_grid"
    assert dict(v.factors) == {"color": "red", "layout": "grid"}
    counts = _variants(doc, "mv")
    assert len(counts) == 6 and min(counts.values()) > len(UNITS) / 6 * 0.9


def test_experiments_in_one_layer_are_mutually_exclusive() -> None:
    doc = {
        "layers": {"hero": {"salt": "layer-hero"}},
        "experiments": {
            "x": {"layer": "hero", "layer_range": [0, 5000], "variants": [{"id": "a"}, {"id": "b"}]},
            "y": {"layer": "hero", "layer_range": [5000, 10000], "variants": [{"id": "c"}, {"id": "d"}]},
        },
    }
    compiled = compile_experiments(doc["experiments"], doc["layers"])
    both = 0
    in_any = 0
    for unit in UNITS:
        ax, ay = assign(compiled["x"], unit, {}), assign(compiled["y"], unit, {})
        both += ax is not None and ay is not None
        in_any += ax is not None or ay is not None
    assert both == 0
    assert in_any == len(UNITS)
    assert compiled["x"].variants[0].propensity == pytest.approx(0.25)


def test_overlapping_layer_ranges_are_refused() -> None:
    doc = {
        "layers": {"l": {}},
        "experiments": {
            "x": {"layer": "l", "layer_range": [0, 6000], "variants": [{"id": "a"}]},
            "y": {"layer": "l", "layer_range": [5000, 10000], "variants": [{"id": "b"}]},
        },
    }
    with pytest.raises(ExperimentError, match=r"experiments\.y\.layer_range: overlaps experiment 'x'"):
        compile_experiments(doc["experiments"], doc["layers"])


def test_holdout_share() -> None:
    holdout = compile_holdout({"salt": "h", "buckets": 500})
    share = sum(in_holdout(holdout, u) for u in UNITS) / len(UNITS)
    assert abs(share - 0.05) < 0.01
    assert not any(in_holdout(compile_holdout({"buckets": 0}), u) for u in UNITS[:100])


def test_forced_variant_only_when_allowed() -> None:
    base = {"variants": [{"id": "a"}, {"id": "b"}]}
    attrs = {FORCE_ATTRIBUTE_PREFIX + "e": "b"}
    locked = compile_experiments({"e": base})["e"]
    open_ = compile_experiments({"e": {**base, "allow_forced": True}})["e"]
    natural_a = next(u for u in UNITS if assign(locked, u, {}).variant.id == "a")  # type: ignore[union-attr]
    assert assign(locked, natural_a, attrs).variant.id == "a"  # type: ignore[union-attr]
    forced = assign(open_, natural_a, attrs)
    assert forced is not None and forced.forced and forced.variant is not None and forced.variant.id == "b"
    assert assign(open_, natural_a, {FORCE_ATTRIBUTE_PREFIX + "e": "nope"}).variant.id == "a"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"e": {"variants": []}}, r"experiments\.e\.variants: must be a non-empty list"),
        ({"e": {"variants": [{"id": "a"}, {"id": "a"}]}}, r"variants\[1\]\.id: duplicate"),
        ({"e": {"traffic": 1.5, "variants": [{"id": "a"}]}}, r"experiments\.e\.traffic"),
        ({"e": {"layer": "nope", "variants": [{"id": "a"}]}}, r"experiments\.e\.layer: unknown layer"),
        ({"e": {"factors": {"c": ["x"]}, "content_template": "{c}"}}, r"factors\.c: must list at least two"),
        (
            {"e": {"factors": {"c": ["x", "y"]}, "content_template": "{nope}"}},
            r"content_template: cannot be filled",
        ),
        ({"e": {"variants": [{"id": "a", "weight": -1}]}}, r"variants\[0\]\.weight"),
    ],
)
def test_bad_experiments_name_the_field(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        compile_experiments(doc)


def _assign_in_child(units: list[str]) -> list[str]:
    experiment = compile_experiments({"e": {"variants": [{"id": "a"}, {"id": "b"}, {"id": "c"}]}})["e"]
    return [assign(experiment, u, {}).variant.id for u in units]  # type: ignore[union-attr]


@pytest.mark.slow
def test_same_unit_same_variant_in_other_processes() -> None:
    units = UNITS[:2000]
    here = _assign_in_child(units)
    with mp.get_context("spawn").Pool(2) as pool:
        there = pool.map(_assign_in_child, [units, units])
    assert there == [here, here]
    assert BUCKETS == 10_000


def _reference_assign(experiment: Experiment, unit: str) -> tuple[str, int] | None:
    """docs/bucketing.md spelled out with the pure-Python hash: (variant id or "", bucket) or None."""
    if experiment.layer is not None:
        layer_bucket = bucket_reference(experiment.layer.salt, unit)
        if not experiment.layer_range[0] <= layer_bucket < experiment.layer_range[1]:
            return None
    b = bucket_reference(experiment.salt, unit)
    for variant in experiment.variants:
        if b < experiment.traffic and variant.bucket_start <= b < variant.bucket_end:
            return variant.id, b
    return "", b


def test_assign_follows_the_specification() -> None:
    doc = {
        "layers": {"hero": {"salt": "layer-hero"}},
        "experiments": {
            "x": {
                "layer": "hero",
                "layer_range": [1000, 7000],
                "traffic": 0.8,
                "variants": [{"id": "a", "weight": 1}, {"id": "b", "weight": 2}, {"id": "c", "weight": 0}],
            },
            "free": {"salt": "ünï-salt", "variants": [{"id": "a"}, {"id": "b"}]},
        },
    }
    compiled = compile_experiments(doc["experiments"], doc["layers"])
    units = [*UNITS[:3000], "", "ü-ñ", "x" * 400, "🙂"]
    for experiment in compiled.values():
        for unit in units:
            a = assign(experiment, unit, {})
            got = None if a is None else (a.variant.id if a.variant else "", a.bucket)
            assert got == _reference_assign(experiment, unit), (experiment.id, unit)
            assert a is None or (a.experiment is experiment and not a.forced)


def test_assignments_are_built_once_per_bucket_and_do_not_change_experiments() -> None:
    doc = {"e": {"traffic": 0.5, "variants": [{"id": "a"}, {"id": "b"}]}}
    experiment = compile_experiments(doc)["e"]
    first = [assign(experiment, u, {}) for u in UNITS[:500]]
    again = [assign(experiment, u, {}) for u in UNITS[:500]]
    assert all(x is y for x, y in zip(first, again, strict=True))  # immutable, shared per bucket
    assert experiment == compile_experiments(doc)["e"]  # the per-bucket memo is not part of equality
    assert "_by_bucket" not in repr(experiment)
    forced = compile_experiments({"e": {**doc["e"], "allow_forced": True}})["e"]
    pick = assign(forced, "u1", {FORCE_ATTRIBUTE_PREFIX + "e": "b"})
    assert pick is not None and pick.forced and pick.bucket == -1 and pick is not assign(forced, "u1", {})
