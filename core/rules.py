"""Rules: placements, experiments and contents, validated and compiled once per version.

`compile_rules` turns the `rules.json` document of a bundle (see docs/bundle-format.md) into an
immutable `Ruleset`, or raises `RuleError` naming the path of the offending field. Nothing here is
parsed per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from edgewise.core.bucketing import BUCKETS

__all__ = [
    "STRATEGIES",
    "Experiment",
    "Placement",
    "RuleError",
    "Ruleset",
    "Variant",
    "compile_rules",
]

STRATEGIES: Final = frozenset({"personalized", "similar", "popular", "content"})
ITEM_STRATEGIES: Final = frozenset({"personalized", "similar", "popular"})
MAX_COUNT_CAP: Final = 200


class RuleError(ValueError):
    """A rules document that does not compile; `path` is the dotted path of the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = message


@dataclass(frozen=True, slots=True)
class Variant:
    id: str
    content_id: str
    bucket_start: int  # inclusive
    bucket_end: int  # exclusive
    propensity: float  # share of all units that get this variant


@dataclass(frozen=True, slots=True)
class Experiment:
    id: str
    placement_id: str
    salt: str
    variants: tuple[Variant, ...]

    def variant_for_bucket(self, bucket: int) -> Variant | None:
        for variant in self.variants:
            if variant.bucket_start <= bucket < variant.bucket_end:
                return variant
        return None


@dataclass(frozen=True, slots=True)
class Placement:
    id: str
    strategy: str
    default_count: int
    max_count: int
    default_content: str
    experiment_id: str


@dataclass(frozen=True, slots=True)
class Ruleset:
    placements: Mapping[str, Placement]
    experiments: Mapping[str, Experiment]
    contents: Mapping[str, Mapping[str, Any]]
    cold_start_min_views: int


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RuleError(path, f"must be an object, got {type(value).__name__}")
    return value


def _str(obj: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> str:
    value = obj.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value):
        raise RuleError(f"{path}.{key}", "must be a non-empty string" if required else "must be a string")
    return value


def _int(obj: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RuleError(f"{path}.{key}", f"must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _known_keys(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise RuleError(f"{path}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def compile_rules(doc: Any) -> Ruleset:
    """Validate and compile a rules document; raise RuleError naming the offending field."""
    root = _obj(doc, "rules")
    _known_keys(root, {"placements", "experiments", "contents", "cold_start_min_views"}, "rules")
    contents_doc = _obj(root.get("contents", {}), "contents")
    contents = {cid: _obj(body, f"contents.{cid}") for cid, body in contents_doc.items()}

    placements_doc = _obj(root.get("placements"), "placements")
    if not placements_doc:
        raise RuleError("placements", "at least one placement is required")
    experiments_doc = _obj(root.get("experiments", {}), "experiments")

    placements: dict[str, Placement] = {}
    for pid, body in placements_doc.items():
        path = f"placements.{pid}"
        spec = _obj(body, path)
        _known_keys(spec, {"strategy", "default_count", "max_count", "default_content", "experiment"}, path)
        strategy = _str(spec, "strategy", path)
        if strategy not in STRATEGIES:
            raise RuleError(
                f"{path}.strategy", f"unknown strategy {strategy!r} (known: {sorted(STRATEGIES)})"
            )
        max_count = _int(spec, "max_count", path, 50, 1, MAX_COUNT_CAP)
        default_count = _int(spec, "default_count", path, min(10, max_count), 1, max_count)
        default_content = _str(spec, "default_content", path, required=strategy == "content")
        if default_content and default_content not in contents:
            raise RuleError(f"{path}.default_content", f"unknown content {default_content!r}")
        experiment_id = _str(spec, "experiment", path, required=False)
        if experiment_id and experiment_id not in experiments_doc:
            raise RuleError(f"{path}.experiment", f"unknown experiment {experiment_id!r}")
        placements[pid] = Placement(pid, strategy, default_count, max_count, default_content, experiment_id)

    experiments: dict[str, Experiment] = {}
    for eid, body in experiments_doc.items():
        path = f"experiments.{eid}"
        spec = _obj(body, path)
        _known_keys(spec, {"placement", "salt", "variants"}, path)
        placement_id = _str(spec, "placement", path)
        if placement_id not in placements:
            raise RuleError(f"{path}.placement", f"unknown placement {placement_id!r}")
        if placements[placement_id].strategy != "content":
            raise RuleError(f"{path}.placement", f"placement {placement_id!r} is not a content placement")
        salt = _str(spec, "salt", path, required=False) or eid
        variants_doc = spec.get("variants")
        if not isinstance(variants_doc, list) or not variants_doc:
            raise RuleError(f"{path}.variants", "must be a non-empty list")
        variants: list[Variant] = []
        start = 0
        seen: set[str] = set()
        for i, vbody in enumerate(variants_doc):
            vpath = f"{path}.variants[{i}]"
            vspec = _obj(vbody, vpath)
            _known_keys(vspec, {"id", "weight", "content_id"}, vpath)
            vid = _str(vspec, "id", vpath)
            if vid in seen:
                raise RuleError(f"{vpath}.id", f"duplicate variant id {vid!r}")
            seen.add(vid)
            weight = _int(vspec, "weight", vpath, -1, 0, BUCKETS)
            content_id = _str(vspec, "content_id", vpath)
            if content_id not in contents:
                raise RuleError(f"{vpath}.content_id", f"unknown content {content_id!r}")
            variants.append(Variant(vid, content_id, start, start + weight, weight / BUCKETS))
            start += weight
        if start > BUCKETS:
            raise RuleError(f"{path}.variants", f"weights sum to {start}, more than {BUCKETS} buckets")
        experiments[eid] = Experiment(eid, placement_id, salt, tuple(variants))

    for pid, placement in placements.items():
        if placement.experiment_id and experiments[placement.experiment_id].placement_id != pid:
            raise RuleError(
                f"placements.{pid}.experiment",
                f"experiment {placement.experiment_id!r} belongs to placement "
                f"{experiments[placement.experiment_id].placement_id!r}",
            )

    cold_start = _int(root, "cold_start_min_views", "rules", 1, 0, 1000)
    return Ruleset(placements, experiments, contents, cold_start)
