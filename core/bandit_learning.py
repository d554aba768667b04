"""Bandit learning: posteriors updated from attributed rewards, published as new rules documents.

Pure: no I/O, no clock (the caller passes counts and times). The control plane feeds a `BanditStats`
with the bandit exposures the edges forward and the outcomes attributed to them
(`edgewise.core.attribution`); when a `LearningSchedule` says so it takes the counts gathered since the
last publish (`BanditStats.take`), folds them into the rules document (`update_rules_doc`) and pushes
that document to the edges (`rules_delta_line`, a delta line of docs/delta-format.md). The counting,
segment and update rules are specified in docs/bandits.md ("Learning"); the invariants they keep:

- one exposure (one placement of one decision that served an arm) is one impression however often it
  is delivered, and is rewarded at most once however many reward outcomes are attributed to it, so
  rewards never exceed impressions and the reward stays Bernoulli, as the Beta posteriors assume;
- a reward that arrives after its exposure was published (as a non-reward) moves one count from beta
  to alpha in the next batch, so without decay the cumulative posterior is exactly what counting
  everything at once would give;
- counts go to the posteriors that served the exposure (its segment `bs`, else the global ones);
- the stats remember at most `max_exposures` exposure ids (oldest first out); a reward for one no
  longer remembered is not counted, so the bound must cover the longest attribution window;
- `update_bandit_doc` computes alpha' = a0 + decay * (alpha - a0) + r and
  beta' = b0 + decay * (beta - b0) + (n - r) from the prior (a0, b0) and the new counts (n impressions,
  r rewards); when either exceeds max_shape both are scaled down by one factor (the posterior mean is
  kept), then each is raised to at least MIN_SHAPE.
"""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from edgewise.core.attribution import Attributed, Exposure
from edgewise.core.bandits import MAX_SHAPE, MIN_SHAPE, BanditError

__all__ = [
    "DEFAULT_REWARD_TYPES",
    "ArmCounts",
    "ArmKey",
    "BanditCounts",
    "BanditStats",
    "LearningSchedule",
    "exposure_id",
    "posterior_means",
    "rules_delta_line",
    "update_bandit_doc",
    "update_rules_doc",
]

DEFAULT_REWARD_TYPES: Final = frozenset({"click"})

ArmKey = tuple[str, str | None, str]
"""(bandit id, segment or None for the global posteriors, arm id)."""


@dataclass(frozen=True, slots=True)
class ArmCounts:
    """Impressions and rewards of one arm. In a batch taken after late rewards, `rewards` may exceed
    `impressions` (the impressions were counted in an earlier batch)."""

    impressions: int = 0
    rewards: int = 0


_ZERO: Final = ArmCounts()


@dataclass(frozen=True)
class BanditCounts:
    """Counts per (bandit id, segment, arm id): what `update_bandit_doc` folds into the posteriors."""

    arms: Mapping[ArmKey, ArmCounts] = field(default_factory=dict)

    def get(self, bandit_id: str, segment: str | None, arm_id: str) -> ArmCounts:
        return self.arms.get((bandit_id, segment, arm_id), _ZERO)

    @property
    def impressions(self) -> int:
        return sum(c.impressions for c in self.arms.values())

    @property
    def rewards(self) -> int:
        return sum(c.rewards for c in self.arms.values())

    def bandits(self) -> frozenset[str]:
        return frozenset(key[0] for key in self.arms)

    def __iter__(self) -> Iterator[tuple[ArmKey, ArmCounts]]:
        return iter(sorted(self.arms.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])))


class _Seen:
    """What the stats remember of one counted exposure."""

    __slots__ = ("key", "rewarded", "types")

    def __init__(self, key: ArmKey) -> None:
        self.key = key
        self.rewarded = False
        self.types: set[str] = set()


def exposure_id(exposure: Exposure) -> str:
    """The de-duplication id of an exposure, as in exposure records: "<decision id>:<placement>"."""
    return f"{exposure.decision_id}:{exposure.placement}"


class BanditStats:
    """Impressions and rewards per (bandit, segment, arm), each exposure and each reward counted once.

    `bandit_ids`: when given, only exposures of these bandits count (an exposure's experiment id may be an
    experiment's, not a bandit's). `reward_types`: the outcome types that reward an exposure. Counts
    accumulate until `take` (the batch since the last publish) and into the running totals (`totals`).
    """

    def __init__(
        self,
        *,
        reward_types: Collection[str] = DEFAULT_REWARD_TYPES,
        bandit_ids: Collection[str] | None = None,
        max_exposures: int = 1_000_000,
    ) -> None:
        if not reward_types:
            raise ValueError("reward_types must name at least one outcome type")
        if max_exposures < 1:
            raise ValueError("max_exposures must be >= 1")
        self.reward_types: Final = frozenset(reward_types)
        self.bandit_ids: Final = None if bandit_ids is None else frozenset(bandit_ids)
        self.max_exposures: Final = max_exposures
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._pending: dict[ArmKey, list[int]] = {}
        self._totals: dict[ArmKey, list[int]] = {}
        self._by_type: dict[tuple[ArmKey, str], int] = {}
        self.new_exposures = 0
        """Exposures counted since the last `take`."""
        self.new_rewards = 0
        """Rewards counted since the last `take`."""

    # --- input -----------------------------------------------------------------------------------

    def add_exposure(self, exposure_id: str, bandit_id: str, arm_id: str, segment: str | None = None) -> bool:
        """Count one impression of `arm_id`; False (nothing counted) for an id already counted or a bandit
        outside `bandit_ids`."""
        if not exposure_id or not bandit_id or not arm_id:
            raise ValueError("exposure_id, bandit_id and arm_id must be non-empty")
        if exposure_id in self._seen or (self.bandit_ids is not None and bandit_id not in self.bandit_ids):
            return False
        key: ArmKey = (bandit_id, segment or None, arm_id)
        self._seen[exposure_id] = _Seen(key)
        if len(self._seen) > self.max_exposures:
            self._seen.popitem(last=False)
        self._count(key, 0)
        self.new_exposures += 1
        return True

    def add_reward(self, exposure_id: str, outcome_type: str = "click") -> bool:
        """Count an outcome of `outcome_type` attributed to the exposure `exposure_id`.

        True when it rewarded the exposure for the first time. False for a type outside `reward_types`, an
        exposure not counted (or no longer remembered) and an exposure already rewarded (a second type
        still counts in `rewards_by_type`).
        """
        if outcome_type not in self.reward_types:
            return False
        seen = self._seen.get(exposure_id)
        if seen is None or outcome_type in seen.types:
            return False
        seen.types.add(outcome_type)
        by_type = (seen.key, outcome_type)
        self._by_type[by_type] = self._by_type.get(by_type, 0) + 1
        if seen.rewarded:
            return False
        seen.rewarded = True
        self._count(seen.key, 1)
        self.new_rewards += 1
        return True

    def add_exposure_record(self, record: Mapping[str, Any]) -> bool:
        """Count a decoded exposure record (`edgewise.core.exposure`, as the control plane stores it) if
        it served a bandit: strategy `st` "bandit" (when present), bandit `x`, arm `v`, id `id`, under
        the posteriors of segment `bs` (absent or "": the global posteriors)."""
        if record.get("st", "bandit") != "bandit" or record.get("cx"):
            return False  # not a bandit, or a contextual one (`core/linear_bandit_learning`)
        rid, bandit_id, arm_id = record.get("id"), record.get("x"), record.get("v")
        if not (isinstance(rid, str) and isinstance(bandit_id, str) and isinstance(arm_id, str)):
            return False
        if not (rid and bandit_id and arm_id):
            return False
        segment = record.get("bs")
        return self.add_exposure(rid, bandit_id, arm_id, segment if isinstance(segment, str) else None)

    def add_attributed(self, attributed: Attributed, segment: str | None = None) -> bool:
        """Count an attributed outcome as a reward of its exposure (True when it rewarded it now).

        An exposure not yet counted is counted first (with `segment`) when its experiment id is one of
        `bandit_ids`; without `bandit_ids` the exposure must have been added before. Unattributed outcomes
        count nothing.
        """
        exposure = attributed.exposure
        if exposure is None:
            return False
        eid = exposure_id(exposure)
        if eid not in self._seen and self.bandit_ids is not None and exposure.experiment in self.bandit_ids:
            self.add_exposure(eid, exposure.experiment, exposure.variant, segment)
        return self.add_reward(eid, attributed.outcome.type)

    def _count(self, key: ArmKey, reward: int) -> None:
        for table in (self._pending, self._totals):
            counts = table.get(key)
            if counts is None:
                counts = table[key] = [0, 0]
            if reward:
                counts[1] += 1
            else:
                counts[0] += 1

    # --- output ----------------------------------------------------------------------------------

    def pending(self) -> BanditCounts:
        """The counts since the last `take`, without resetting them."""
        return BanditCounts({k: ArmCounts(n, r) for k, (n, r) in self._pending.items()})

    def take(self) -> BanditCounts:
        """The counts since the last `take`, then reset them (the exposures stay remembered, so a late
        reward of an exposure counted before still counts, and a repeated exposure still does not)."""
        out = self.pending()
        self._pending = {}
        self.new_exposures = 0
        self.new_rewards = 0
        return out

    def totals(self) -> BanditCounts:
        """All counts since the stats were created."""
        return BanditCounts({k: ArmCounts(n, r) for k, (n, r) in self._totals.items()})

    def rewards_by_type(self) -> dict[tuple[ArmKey, str], int]:
        """Exposures rewarded by each outcome type (each exposure at most once per type), since creation."""
        return dict(self._by_type)

    def exposures_held(self) -> int:
        return len(self._seen)


# --- updating documents ----------------------------------------------------------------------------


def _number(body: Mapping[str, Any], key: str, path: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BanditError(f"{path}.{key}", f"must be a number, got {value!r}")
    return float(value)


def _arms_of(spec: Mapping[str, Any], path: str) -> list[dict[str, Any]]:
    arms = spec.get("arms")
    if not isinstance(arms, list) or not arms:
        raise BanditError(f"{path}.arms", "must be a non-empty list")
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict) or not isinstance(arm.get("id"), str):
            raise BanditError(f"{path}.arms[{i}]", "must be an object with a string id")
    return arms


def _check_params(prior: tuple[float, float], decay: float, max_shape: float) -> None:
    if not (MIN_SHAPE <= max_shape <= MAX_SHAPE):
        raise ValueError(f"max_shape must be in [{MIN_SHAPE}, {MAX_SHAPE:g}], got {max_shape}")
    if len(prior) != 2 or not all(MIN_SHAPE <= p <= max_shape for p in prior):
        raise ValueError(f"prior must be (alpha, beta), each in [{MIN_SHAPE}, {max_shape:g}], got {prior}")
    if not (0.0 <= decay <= 1.0):
        raise ValueError(f"decay must be in [0, 1], got {decay}")


def _posterior(
    alpha: float, beta: float, counts: ArmCounts, prior: tuple[float, float], decay: float, max_shape: float
) -> tuple[float, float]:
    a0, b0 = prior
    a = a0 + decay * (alpha - a0) + counts.rewards
    b = b0 + decay * (beta - b0) + (counts.impressions - counts.rewards)
    a, b = max(a, 0.0), max(b, 0.0)
    top = max(a, b)
    if top > max_shape:
        a, b = a * max_shape / top, b * max_shape / top
    return min(max(a, MIN_SHAPE), max_shape), min(max(b, MIN_SHAPE), max_shape)


def _as_counts(stats: BanditCounts | BanditStats) -> BanditCounts:
    return stats.pending() if isinstance(stats, BanditStats) else stats


def update_bandit_doc(
    bandit_doc: Mapping[str, Any],
    stats: BanditCounts | BanditStats,
    *,
    bandit_id: str,
    prior: tuple[float, float] = (1.0, 1.0),
    decay: float = 1.0,
    max_shape: float = MAX_SHAPE,
) -> dict[str, Any]:
    """The bandit document (rules-document shape, see `edgewise.core.bandits`) with its posteriors
    updated from `stats` (the counts since this document was published; a `BanditStats` is read with
    `pending()`). Returns a new document; the input is not modified. Fields other than alpha/beta are
    kept. docs/bandits.md ("Learning") gives the update rule and the segment mapping.
    """
    _check_params(prior, decay, max_shape)
    if not isinstance(bandit_doc, Mapping):
        raise BanditError(f"bandits.{bandit_id}", "must be an object")
    counts = _as_counts(stats)
    path = f"bandits.{bandit_id}"
    doc: dict[str, Any] = copy.deepcopy(dict(bandit_doc))
    segments_doc = doc.get("segments") or {}
    if not isinstance(segments_doc, dict):
        raise BanditError(f"{path}.segments", "must be an object")

    # New counts per (target posteriors, arm): a segment the document does not have was served globally.
    merged: dict[tuple[str | None, str], list[int]] = {}
    for (bid, segment, arm_id), c in counts.arms.items():
        if bid != bandit_id:
            continue
        target = segment if segment in segments_doc else None
        slot = merged.setdefault((target, arm_id), [0, 0])
        slot[0] += c.impressions
        slot[1] += c.rewards

    def update(arms: list[dict[str, Any]], segment: str | None, apath: str) -> None:
        for i, arm in enumerate(arms):
            n, r = merged.get((segment, arm["id"]), (0, 0))
            alpha = _number(arm, "alpha", f"{apath}[{i}]")
            beta = _number(arm, "beta", f"{apath}[{i}]")
            arm["alpha"], arm["beta"] = _posterior(alpha, beta, ArmCounts(n, r), prior, decay, max_shape)

    update(_arms_of(doc, path), None, f"{path}.arms")
    for name, seg_body in segments_doc.items():
        spath = f"{path}.segments.{name}"
        if not isinstance(seg_body, dict):
            raise BanditError(spath, "must be an object")
        update(_arms_of(seg_body, spath), name, f"{spath}.arms")
    return doc


def update_rules_doc(
    rules_doc: Mapping[str, Any],
    stats: BanditCounts | BanditStats,
    *,
    prior: tuple[float, float] = (1.0, 1.0),
    decay: float = 1.0,
    max_shape: float = MAX_SHAPE,
    bandits: Collection[str] | None = None,
) -> dict[str, Any]:
    """A new rules document with every bandit's posteriors updated by `update_bandit_doc` (only those in
    `bandits` when given). The input document is not modified; the rest of it is copied unchanged."""
    counts = _as_counts(stats)
    doc: dict[str, Any] = copy.deepcopy(dict(rules_doc))
    section = doc.get("bandits") or {}
    if not isinstance(section, dict):
        raise BanditError("bandits", "must be an object")
    for bid in list(section):
        if (bandits is not None and bid not in bandits) or (
            isinstance(section[bid], dict) and "context" in section[bid]
        ):
            continue  # not asked for, or a contextual bandit (`core/linear_bandit_learning`)
        section[bid] = update_bandit_doc(
            section[bid], counts, bandit_id=bid, prior=prior, decay=decay, max_shape=max_shape
        )
    return doc


def rules_delta_line(rules_doc: Mapping[str, Any]) -> str:
    """The delta-file line that publishes a rules document (docs/delta-format.md)."""
    return json.dumps({"op": "upsert", "rules": rules_doc}, sort_keys=True, separators=(",", ":"))


def posterior_means(bandit_doc: Mapping[str, Any], segment: str | None = None) -> dict[str, float]:
    """alpha / (alpha + beta) per arm id, of the global posteriors or of one segment's."""
    spec = bandit_doc if segment is None else bandit_doc["segments"][segment]
    return {arm["id"]: arm["alpha"] / (arm["alpha"] + arm["beta"]) for arm in spec["arms"]}


# --- when to publish -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LearningSchedule:
    """When to publish new posteriors: after `every_rewards` new rewards, or `every_exposures` new
    exposures, or `every_seconds` since the last publish (if anything new arrived), whichever comes
    first; never sooner than `min_seconds` after the last publish. None disables a trigger."""

    every_rewards: int | None = None
    every_exposures: int | None = None
    every_seconds: float | None = 300.0
    min_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("every_rewards", "every_exposures"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.every_seconds is not None and not self.every_seconds > 0:
            raise ValueError(f"every_seconds must be > 0 or None, got {self.every_seconds}")
        if not self.min_seconds >= 0:
            raise ValueError(f"min_seconds must be >= 0, got {self.min_seconds}")
        if self.every_rewards is None and self.every_exposures is None and self.every_seconds is None:
            raise ValueError("a schedule needs at least one trigger")

    def due(
        self, *, new_rewards: int, new_exposures: int, now: float, last_publish: float | None
    ) -> str | None:
        """Why a publish is due now ("rewards", "exposures", "time"), or None. `now` and `last_publish`
        are in seconds on the same clock; `last_publish` None means never published."""
        if new_rewards <= 0 and new_exposures <= 0:
            return None
        elapsed = math.inf if last_publish is None else now - last_publish
        if elapsed < self.min_seconds:
            return None
        if self.every_rewards is not None and new_rewards >= self.every_rewards:
            return "rewards"
        if self.every_exposures is not None and new_exposures >= self.every_exposures:
            return "exposures"
        if self.every_seconds is not None and elapsed >= self.every_seconds:
            return "time"
        return None
