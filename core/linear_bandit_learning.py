"""Contextual bandit learning: per-arm ridge statistics from exposures and attributed rewards.

Pure: no I/O, no clock. The control plane feeds a `LinearStats` with the exposure records of
contextual bandits (their feature vector `cx`) and the rewards attributed to them, and at each publish
folds what it gathered since the last one into the rules document (`update_linear_rules_doc`):

    A' = ridge * I + decay * (A - ridge * I) + sum over new exposures of x x'
    b' = decay * b + sum over new rewards of x

The same invariants as the Beta learner (`core/bandit_learning`): one exposure is counted once however
often it is delivered and rewarded at most once (a Bernoulli reward); a reward that arrives after its
exposure was published adds x to b in the next batch (and nothing to A), so without decay the published
(A, b) are exactly what counting everything at once would give. An exposure whose vector length is not
the bandit's current dimension (its features changed since) is dropped (`dropped`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core.bandit_learning import DEFAULT_REWARD_TYPES
from edgewise.core.bandits import BanditError
from edgewise.core.linear_bandits import DEFAULT_RIDGE, MAX_FEATURES, is_contextual

__all__ = ["LinearBatch", "LinearStats", "update_linear_bandit_doc", "update_linear_rules_doc"]

LinearKey = tuple[str, str]
"""(bandit id, arm id)."""


@dataclass
class LinearBatch:
    """The sums of one arm since the last publish: n exposures, sum x x' and sum r x."""

    n: int
    rewards: int
    xx: NDArray[np.float64]
    rx: NDArray[np.float64]


class _Seen:
    __slots__ = ("key", "rewarded", "x")

    def __init__(self, key: LinearKey, x: bytes) -> None:
        self.key = key
        self.x = x
        self.rewarded = False


class LinearStats:
    """Exposures and rewards of contextual bandits, per (bandit, arm), each counted once."""

    def __init__(
        self, *, reward_types: Collection[str] = DEFAULT_REWARD_TYPES, max_exposures: int = 200_000
    ) -> None:
        if max_exposures < 1:
            raise ValueError("max_exposures must be >= 1")
        self.reward_types: Final = frozenset(reward_types)
        self.max_exposures: Final = max_exposures
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._pending: dict[LinearKey, LinearBatch] = {}
        self.new_exposures = 0
        self.new_rewards = 0

    def _batch(self, key: LinearKey, dim: int) -> LinearBatch | None:
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = LinearBatch(0, 0, np.zeros((dim, dim)), np.zeros(dim))
        return batch if batch.rx.shape[0] == dim else None

    def add_exposure(self, exposure_id: str, bandit_id: str, arm_id: str, x: NDArray[np.float64]) -> bool:
        """Count one exposure of `arm_id` with feature vector x; False when already counted."""
        if not exposure_id or not bandit_id or not arm_id:
            raise ValueError("exposure_id, bandit_id and arm_id must be non-empty")
        if exposure_id in self._seen:
            return False
        key = (bandit_id, arm_id)
        batch = self._batch(key, x.shape[0])
        if batch is None:  # a vector of another dimension in this batch: the features changed
            return False
        self._seen[exposure_id] = _Seen(key, x.astype(np.float64).tobytes())
        if len(self._seen) > self.max_exposures:
            self._seen.popitem(last=False)
        batch.n += 1
        batch.xx += np.outer(x, x)
        self.new_exposures += 1
        return True

    def add_exposure_record(self, record: Mapping[str, Any]) -> bool:
        """Count a decoded exposure record of a contextual bandit (a non-empty `cx`)."""
        vector = record.get("cx")
        rid, bandit_id, arm_id = record.get("id"), record.get("x"), record.get("v")
        if not (isinstance(vector, list) and vector and len(vector) <= MAX_FEATURES):
            return False
        if not (isinstance(rid, str) and rid and isinstance(bandit_id, str) and bandit_id):
            return False
        if not (isinstance(arm_id, str) and arm_id):
            return False
        try:
            x = np.array(vector, dtype=np.float64)
        except (TypeError, ValueError):
            return False
        if x.ndim != 1 or not np.all(np.isfinite(x)):
            return False
        return self.add_exposure(rid, bandit_id, arm_id, x)

    def add_reward(self, exposure_id: str, outcome_type: str = "click") -> bool:
        """Reward a counted exposure (once); False for another type, an unknown or rewarded exposure."""
        if outcome_type not in self.reward_types:
            return False
        seen = self._seen.get(exposure_id)
        if seen is None or seen.rewarded:
            return False
        x = np.frombuffer(seen.x, dtype=np.float64)
        batch = self._batch(seen.key, x.shape[0])
        if batch is None:
            return False
        seen.rewarded = True
        batch.rewards += 1
        batch.rx += x
        self.new_rewards += 1
        return True

    def pending(self) -> dict[LinearKey, LinearBatch]:
        return dict(self._pending)

    def take(self) -> dict[LinearKey, LinearBatch]:
        """The sums since the last `take`, then reset them (exposures stay remembered)."""
        out = self._pending
        self._pending = {}
        self.new_exposures = 0
        self.new_rewards = 0
        return out

    def exposures_held(self) -> int:
        return len(self._seen)


def update_linear_bandit_doc(
    bandit_doc: Mapping[str, Any],
    batches: Mapping[LinearKey, LinearBatch],
    *,
    bandit_id: str,
    decay: float = 1.0,
) -> dict[str, Any]:
    """The contextual bandit document with every arm's A and b updated from `batches` (module
    docstring). A batch whose dimension is not the document's is ignored. Returns a new document."""
    if not (0.0 <= decay <= 1.0):
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    path = f"bandits.{bandit_id}"
    if not isinstance(bandit_doc, Mapping):
        raise BanditError(path, "must be an object")
    doc: dict[str, Any] = copy.deepcopy(dict(bandit_doc))
    context = doc.get("context")
    if not isinstance(context, list):
        raise BanditError(f"{path}.context", "must be a list of features")
    dim = 1 + sum(_width(f) for f in context)
    ridge = float(doc.get("ridge", DEFAULT_RIDGE))
    prior = ridge * np.eye(dim)
    arms = doc.get("arms")
    if not isinstance(arms, list):
        raise BanditError(f"{path}.arms", "must be a list")
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict) or not isinstance(arm.get("id"), str):
            raise BanditError(f"{path}.arms[{i}]", "must be an object with a string id")
        batch = batches.get((bandit_id, arm["id"]))
        if batch is not None and batch.rx.shape[0] != dim:
            batch = None
        if batch is None and decay == 1.0:
            continue
        a = np.array(arm["A"], dtype=np.float64) if "A" in arm else prior.copy()
        b = np.array(arm["b"], dtype=np.float64) if "b" in arm else np.zeros(dim)
        if a.shape != (dim, dim) or b.shape != (dim,):
            raise BanditError(f"{path}.arms[{i}]", f"A must be {dim}x{dim} and b {dim} numbers")
        a = prior + decay * (a - prior)
        b = decay * b
        if batch is not None:
            a += batch.xx
            b += batch.rx
        a = 0.5 * (a + a.T)  # exactly symmetric, whatever the rounding of the sums
        arm["A"] = a.tolist()
        arm["b"] = b.tolist()
    return doc


def _width(feature: Any) -> int:
    if isinstance(feature, Mapping):
        if "values" in feature and isinstance(feature["values"], list):
            return len(feature["values"])
        if "hours" in feature and isinstance(feature["hours"], list):
            return len(feature["hours"])
    return 1


def update_linear_rules_doc(
    rules_doc: Mapping[str, Any], batches: Mapping[LinearKey, LinearBatch], *, decay: float = 1.0
) -> dict[str, Any]:
    """A new rules document with every contextual bandit updated by `update_linear_bandit_doc`."""
    doc: dict[str, Any] = copy.deepcopy(dict(rules_doc))
    section = doc.get("bandits") or {}
    if not isinstance(section, dict):
        raise BanditError("bandits", "must be an object")
    for bid in list(section):
        if is_contextual(section[bid]):
            section[bid] = update_linear_bandit_doc(section[bid], batches, bandit_id=bid, decay=decay)
    return doc
