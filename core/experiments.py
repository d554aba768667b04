"""Experiments: deterministic bucketing, traffic allocation, A/B/n and multivariate variants, mutually
exclusive layers, a global holdout, and forced variants for QA.

A unit (user id, else session id) is in experiment E when
  1. it is not in the global holdout: bucket(holdout.salt, unit) >= holdout.buckets, and
  2. if E is in a layer L: bucket(L.salt, unit) falls in E's `layer_range` (ranges of one layer never
     overlap, so a unit is in at most one experiment of a layer), and
  3. bucket(E.salt, unit) < E.traffic (the experiment's traffic allocation, in buckets).
Its variant is the one whose slice of [0, E.traffic) holds that bucket; slices are proportional to the
variants' weights. The propensity of a variant is the share of all units that get it.
See docs/bucketing.md.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from edgewise.core._hashing import layered_bucket
from edgewise.core.bucketing import BUCKETS, bucket
from edgewise.core.growthbook_bucketing import bucket_ranges, choose_variation, gb_hash

__all__ = [
    "FORCE_ATTRIBUTE_PREFIX",
    "Assignment",
    "Experiment",
    "ExperimentError",
    "Holdout",
    "Layer",
    "Variant",
    "assign",
    "compile_experiments",
    "compile_holdout",
    "in_holdout",
]

FORCE_ATTRIBUTE_PREFIX: Final = (
    "edgewise.force."  # context.attributes["edgewise.force.<experiment>"] = variant
)
_ID: Final = re.compile(r"^[A-Za-z0-9_.:=|-]{1,128}$")


class ExperimentError(ValueError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Variant:
    id: str
    weight: float
    bucket_start: int  # inclusive, in the experiment's own buckets
    bucket_end: int  # exclusive
    propensity: float  # share of all units that get this variant
    content_id: str  # content placements
    serve: (
        Mapping[str, Any] | None
    )  # item placements: the item strategy this arm serves (raw, compiled by rules)
    factors: Mapping[str, str]  # multivariate: factor -> level


@dataclass(frozen=True, slots=True)
class Layer:
    id: str
    salt: str


@dataclass(frozen=True, slots=True)
class GrowthBookBucketing:
    """An experiment that assigns units the way GrowthBook's SDKs do (core/growthbook_bucketing.py)."""

    seed: str
    hash_version: int  # 1 or 2
    ranges: tuple[tuple[float, float], ...]  # per variant, GrowthBook's getBucketRanges
    namespace: tuple[str, float, float] | None


@dataclass(frozen=True, slots=True)
class Experiment:
    id: str
    salt: str
    layer: Layer | None
    layer_range: tuple[int, int]  # [start, end) of the layer's buckets; (0, BUCKETS) without a layer
    traffic: int  # buckets of the experiment's own hash that are in the experiment
    variants: tuple[Variant, ...]
    allow_forced: bool
    growthbook: GrowthBookBucketing | None
    # `assign`'s answers by bucket, filled as units arrive: an Assignment is immutable and depends only
    # on (experiment, bucket), so each of the BUCKETS possible ones is built once (a frozen dataclass
    # costs more to build than the two hashes that pick it).
    _by_bucket: list[Assignment | None] = field(
        default_factory=lambda: [None] * BUCKETS, init=False, repr=False, compare=False
    )

    def variant(self, variant_id: str) -> Variant | None:
        return next((v for v in self.variants if v.id == variant_id), None)

    def variant_at(self, experiment_bucket: int) -> Variant | None:
        """The variant whose slice holds `experiment_bucket` (None: outside the traffic allocation)."""
        if experiment_bucket >= self.traffic:
            return None
        for variant in self.variants:
            if variant.bucket_start <= experiment_bucket < variant.bucket_end:
                return variant
        return None


@dataclass(frozen=True, slots=True)
class Holdout:
    salt: str
    buckets: int  # units whose holdout bucket is below this get the default experience everywhere


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: Experiment
    variant: Variant | None  # None: the unit is outside the experiment's allocation
    bucket: int
    forced: bool = False


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ExperimentError(path, f"must be an object, got {type(value).__name__}")
    return value


def _known(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise ExperimentError(f"{path}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ExperimentError(path, f"must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _salt(spec: Mapping[str, Any], default: str, path: str) -> str:
    salt = spec.get("salt", default)
    if not isinstance(salt, str) or not salt:
        raise ExperimentError(f"{path}.salt", "must be a non-empty string")
    return salt


def compile_holdout(doc: Any) -> Holdout | None:
    if doc is None:
        return None
    spec = _obj(doc, "holdout")
    _known(spec, {"salt", "buckets"}, "holdout")
    return Holdout(
        _salt(spec, "global-holdout", "holdout"), _int(spec.get("buckets"), "holdout.buckets", 0, BUCKETS)
    )


def _layers(doc: Any) -> dict[str, Layer]:
    layers: dict[str, Layer] = {}
    for lid, body in _obj(doc, "layers").items():
        spec = _obj(body, f"layers.{lid}")
        _known(spec, {"salt", "description"}, f"layers.{lid}")
        layers[lid] = Layer(lid, _salt(spec, f"layer:{lid}", f"layers.{lid}"))
    return layers


def _variant_specs(spec: Mapping[str, Any], path: str) -> list[dict[str, Any]]:
    """Explicit variants, or the full factorial of `factors` (multivariate)."""
    if "factors" in spec:
        if "variants" in spec:
            raise ExperimentError(path, "give either variants or factors, not both")
        factors = _obj(spec["factors"], f"{path}.factors")
        if not factors:
            raise ExperimentError(f"{path}.factors", "at least one factor is required")
        for name, levels in factors.items():
            if not isinstance(levels, list) or len(levels) < 2 or not all(isinstance(x, str) for x in levels):
                raise ExperimentError(f"{path}.factors.{name}", "must list at least two string levels")
        template = spec.get("content_template")
        if not isinstance(template, str) or not template:
            raise ExperimentError(
                f"{path}.content_template", "a multivariate experiment needs a content_template"
            )
        out = []
        names = list(factors)
        for combo in itertools.product(*(factors[n] for n in names)):
            levels = dict(zip(names, combo, strict=True))
            try:
                content_id = template.format(**levels)
            except (KeyError, IndexError, ValueError) as exc:
                raise ExperimentError(
                    f"{path}.content_template", f"cannot be filled from the factors: {exc}"
                ) from exc
            vid = "|".join(f"{n}={v}" for n, v in levels.items())
            out.append({"id": vid, "weight": 1, "content_id": content_id, "_factors": levels})
        return out
    variants = spec.get("variants")
    if not isinstance(variants, list) or len(variants) < 1:
        raise ExperimentError(f"{path}.variants", "must be a non-empty list")
    return [_obj(v, f"{path}.variants[{i}]") for i, v in enumerate(variants)]


def _compile_experiment(eid: str, spec: dict[str, Any], layers: Mapping[str, Layer], path: str) -> Experiment:
    _known(
        spec,
        {
            "salt",
            "layer",
            "layer_range",
            "traffic",
            "variants",
            "factors",
            "content_template",
            "allow_forced",
            "placement",
            "description",
            "bucketing",
        },
        path,
    )
    growthbook = _growthbook_bucketing(spec, eid, path)
    layer: Layer | None = None
    layer_range = (0, BUCKETS)
    if "layer" in spec:
        lid = spec["layer"]
        if lid not in layers:
            raise ExperimentError(f"{path}.layer", f"unknown layer {lid!r}")
        layer = layers[lid]
        raw = spec.get("layer_range")
        if not (isinstance(raw, list) and len(raw) == 2):
            raise ExperimentError(
                f"{path}.layer_range", "an experiment in a layer needs layer_range [start, end)"
            )
        start = _int(raw[0], f"{path}.layer_range[0]", 0, BUCKETS)
        end = _int(raw[1], f"{path}.layer_range[1]", start + 1, BUCKETS)
        layer_range = (start, end)
    traffic_raw = spec.get("traffic", 1.0)
    if isinstance(traffic_raw, bool) or not isinstance(traffic_raw, (int, float)) or not 0 < traffic_raw <= 1:
        raise ExperimentError(f"{path}.traffic", f"must be a share in (0, 1], got {traffic_raw!r}")
    traffic = round(traffic_raw * BUCKETS)
    if growthbook is not None and ("traffic" in spec or "layer" in spec):
        raise ExperimentError(
            f"{path}.bucketing", "GrowthBook bucketing uses coverage and namespace, not traffic or layer"
        )
    specs = _variant_specs(spec, path)
    weights: list[float] = []
    for i, v in enumerate(specs):
        w = v.get("weight", 1)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise ExperimentError(f"{path}.variants[{i}].weight", f"must be a number >= 0, got {w!r}")
        weights.append(float(w))
    total = sum(weights)
    if total <= 0:
        raise ExperimentError(f"{path}.variants", "weights sum to 0")
    layer_share = (layer_range[1] - layer_range[0]) / BUCKETS
    variants: list[Variant] = []
    seen: set[str] = set()
    cumulative = 0.0
    start = 0
    for i, (v, w) in enumerate(zip(specs, weights, strict=True)):
        vpath = f"{path}.variants[{i}]"
        _known(v, {"id", "weight", "content_id", "serve", "_factors", "description"}, vpath)
        vid = v.get("id")
        if not isinstance(vid, str) or not _ID.match(vid):
            raise ExperimentError(f"{vpath}.id", f"must be an id ([A-Za-z0-9_.:=|-], 1..128), got {vid!r}")
        if vid in seen:
            raise ExperimentError(f"{vpath}.id", f"duplicate variant id {vid!r}")
        seen.add(vid)
        cumulative += w
        end = round(traffic * cumulative / total)
        content_id = v.get("content_id", "")
        serve = v.get("serve")
        if not isinstance(content_id, str):
            raise ExperimentError(f"{vpath}.content_id", "must be a string")
        if serve is not None and not isinstance(serve, dict):
            raise ExperimentError(f"{vpath}.serve", "must be an object (an item strategy)")
        variants.append(
            Variant(
                vid,
                w,
                start,
                end,
                layer_share * (end - start) / BUCKETS,
                content_id,
                serve,
                v.get("_factors", {}),
            )
        )
        start = end
    allow_forced = spec.get("allow_forced", False)
    if not isinstance(allow_forced, bool):
        raise ExperimentError(f"{path}.allow_forced", "must be true or false")
    if growthbook is not None:
        variants, growthbook = _growthbook_variants(variants, weights, growthbook, spec, path)
    return Experiment(
        eid, _salt(spec, eid, path), layer, layer_range, traffic, tuple(variants), allow_forced, growthbook
    )


def _growthbook_bucketing(spec: Mapping[str, Any], eid: str, path: str) -> GrowthBookBucketing | None:
    """The `bucketing` field: absent or {"scheme": "murmur3"} (the default), or {"scheme": "growthbook",
    "hash_version": 1 | 2 (required), "seed": (default: the experiment id, GrowthBook's `seed ?? key`),
    "coverage": share in [0, 1] (default 1), "namespace": [id, start, end] (optional)}."""
    raw = spec.get("bucketing")
    if raw is None:
        return None
    bpath = f"{path}.bucketing"
    body = _obj(raw, bpath)
    _known(body, {"scheme", "hash_version", "seed", "coverage", "namespace"}, bpath)
    scheme = body.get("scheme")
    if scheme == "murmur3":
        if len(body) > 1:
            raise ExperimentError(bpath, "murmur3 bucketing takes no other fields (salt and traffic set it)")
        return None
    if scheme != "growthbook":
        raise ExperimentError(f"{bpath}.scheme", f"must be murmur3 or growthbook, got {scheme!r}")
    # required: GrowthBook's SDKs default to 1 when a payload omits it, its UI creates 2; guessing wrong
    # would reshuffle every unit of the experiment being moved
    version = body.get("hash_version")
    if version not in (1, 2) or isinstance(version, bool):
        raise ExperimentError(f"{bpath}.hash_version", f"must be 1 or 2 (required), got {version!r}")
    seed = body.get("seed", eid)
    if not isinstance(seed, str):
        raise ExperimentError(f"{bpath}.seed", "must be a string")
    coverage = body.get("coverage", 1)
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 <= coverage <= 1:
        raise ExperimentError(f"{bpath}.coverage", f"must be a share in [0, 1], got {coverage!r}")
    namespace = None
    if "namespace" in body:
        ns = body["namespace"]
        if not (
            isinstance(ns, list)
            and len(ns) == 3
            and isinstance(ns[0], str)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in ns[1:])
            and 0 <= ns[1] < ns[2] <= 1
        ):
            raise ExperimentError(f"{bpath}.namespace", "must be [id, start, end] with 0 <= start < end <= 1")
        namespace = (ns[0], float(ns[1]), float(ns[2]))
    return GrowthBookBucketing(seed, int(version), (), namespace)


def _growthbook_variants(
    variants: list[Variant],
    weights: list[float],
    growthbook: GrowthBookBucketing,
    spec: Mapping[str, Any],
    path: str,
) -> tuple[list[Variant], GrowthBookBucketing]:
    """The variants' GrowthBook ranges and propensities. Weights must sum to 1 (within GrowthBook's
    0.99..1.01): GrowthBook silently replaces other weights by equal ones, edgewise refuses them."""
    if not 0.99 <= sum(weights) <= 1.01:
        raise ExperimentError(
            f"{path}.variants", f"GrowthBook bucketing needs weights summing to 1, got {sum(weights):g}"
        )
    coverage = spec["bucketing"].get("coverage", 1)
    ranges = tuple(bucket_ranges(len(variants), float(coverage), weights))
    ns_share = 1.0 if growthbook.namespace is None else growthbook.namespace[2] - growthbook.namespace[1]
    out = [
        Variant(v.id, v.weight, -1, -1, ns_share * (end - start), v.content_id, v.serve, v.factors)
        for v, (start, end) in zip(variants, ranges, strict=True)
    ]
    gb = GrowthBookBucketing(growthbook.seed, growthbook.hash_version, ranges, growthbook.namespace)
    return out, gb


def compile_experiments(doc: Any, layers_doc: Any = None) -> dict[str, Experiment]:
    """Compile the `experiments` (and `layers`) of a rules document; ranges of a layer may not overlap."""
    layers = _layers(layers_doc if layers_doc is not None else {})
    experiments = {
        eid: _compile_experiment(eid, _obj(body, f"experiments.{eid}"), layers, f"experiments.{eid}")
        for eid, body in _obj(doc, "experiments").items()
    }
    by_layer: dict[str, list[Experiment]] = {}
    for e in experiments.values():
        if e.layer is not None:
            by_layer.setdefault(e.layer.id, []).append(e)
    for lid, members in by_layer.items():
        members.sort(key=lambda e: e.layer_range)
        for a, b in itertools.pairwise(members):
            if b.layer_range[0] < a.layer_range[1]:
                raise ExperimentError(
                    f"experiments.{b.id}.layer_range",
                    f"overlaps experiment {a.id!r} in layer {lid!r} "
                    f"({list(a.layer_range)} vs {list(b.layer_range)})",
                )
    return experiments


def in_holdout(holdout: Holdout | None, unit: str) -> bool:
    return holdout is not None and holdout.buckets > 0 and bucket(holdout.salt, unit) < holdout.buckets


def assign(experiment: Experiment, unit: str, attributes: Mapping[str, str]) -> Assignment | None:
    """The unit's variant (or None: the unit is not in the experiment's layer range)."""
    if experiment.allow_forced:
        forced = attributes.get(FORCE_ATTRIBUTE_PREFIX + experiment.id)
        if forced:
            variant = experiment.variant(forced)
            if variant is not None:
                return Assignment(experiment, variant, -1, forced=True)
    if experiment.growthbook is not None:
        return _assign_growthbook(experiment, experiment.growthbook, unit)
    layer = experiment.layer
    start, end = experiment.layer_range
    # One compiled call: the layer bucket (range check) and then the experiment's own bucket.
    b = layered_bucket(None if layer is None else layer.salt, start, end, experiment.salt, unit)
    if b < 0:
        return None
    assignment = experiment._by_bucket[b]
    if assignment is None:
        assignment = Assignment(experiment, experiment.variant_at(b), b)
        experiment._by_bucket[b] = assignment
    return assignment


def _assign_growthbook(experiment: Experiment, gb: GrowthBookBucketing, unit: str) -> Assignment | None:
    """GrowthBook's assignment: outside the namespace range, None; else the variant whose range holds
    `hash(seed, unit, version)` (none: outside the coverage). The bucket reported is that hash in
    ten-thousandths (thousandths for version 1)."""
    if gb.namespace is not None:
        ns = gb_hash("__" + gb.namespace[0], unit, 1)
        if ns is None or not gb.namespace[1] <= ns < gb.namespace[2]:
            return None
    n = gb_hash(gb.seed, unit, gb.hash_version)
    if n is None:  # pragma: no cover (versions are checked at compile time)
        return None
    b = round(n * (10000 if gb.hash_version == 2 else 1000))
    assignment = experiment._by_bucket[b]
    if assignment is None:
        index = choose_variation(n, gb.ranges)
        assignment = Assignment(experiment, experiment.variants[index] if index >= 0 else None, b)
        experiment._by_bucket[b] = assignment
    return assignment
