"""Contextual bandits: a linear model per arm, softmax over optimistic scores with an exploration floor.

A bandit that declares `context` features chooses with the request's feature vector x (d columns: an
intercept, then one column per declared feature value, see `ContextFeature`). Each arm k has the ridge
regression statistics A_k = ridge * I + sum x x' and b_k = sum r x of the exposures that served it
(published by the control plane like the Beta posteriors), hence theta_k = A_k^-1 b_k. Per request:

    s_k = theta_k . x + ucb * sqrt(x' A_k^-1 x)                  (LinUCB's optimistic score)
    p_k = floor / K + (1 - floor) * softmax(s / temperature)_k   (the choice probabilities)

and one uniform draw picks the arm by inverse CDF over p. The logged propensity is p of the chosen arm,
exact: it is the probability this policy gave that arm for this request, which is what IPS, SNIPS and
DR need (`eval ope`). docs/bandits.md ("Contextual bandits") says why this rule rather than linear
Thompson sampling (whose exact propensity is a K-dimensional Gaussian orthant integral per request,
and whose Monte-Carlo estimate gives a biased 1/p), and how the parameters behave.

theta_k and A_k^-1 are computed once per policy (per rules version); the per-request cost is one
feature vector, one uniform draw and the kernel `_linear_bandit.LinearChooser.choose` (`nogil`, typed
memoryviews; `choose_reference` is its NumPy reference): K (nnz^2 + nnz) multiply-adds for a vector
with nnz non-zero entries.

The rules-document shape compiled by `compile_linear_bandit` (`edgewise.core.bandits.compile_bandit`
hands it every bandit document with a `context` key):

    {"context": [{"path": "context.device", "values": ["mobile", "desktop"]},
                 {"path": "profile.ltv", "scale": 500},
                 {"segment": "vip"},
                 {"hours": [[0, 6], [6, 12], [12, 18], [18, 24]]}],
     "arms": [{"id": "a", "content_id": "hero_a", "A": [[...d numbers...], ...d rows], "b": [...d]}, ...],
     "exploration_floor": 0.05, "temperature": 0.01, "ucb": 0.25, "ridge": 1.0}

`A` and `b` are optional (default ridge * I and zeros: no data yet); d = 1 + the columns of the
features, in the order listed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

import numpy as np
from numpy.typing import NDArray

from edgewise.core._linear_bandit import LinearChooser
from edgewise.core.bandits import BanditError, _id, _known_keys, _obj  # the bandit documents' checks
from edgewise.core.features import MISSING, FeatureSource

__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_RIDGE",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_UCB",
    "MAX_FEATURES",
    "ContextFeature",
    "LinearArm",
    "LinearBanditPolicy",
    "choose_reference",
    "compile_linear_bandit",
    "is_contextual",
]

MAX_FEATURES: Final = 64
"""Columns of a feature vector, the intercept included."""
MAX_ARMS: Final = 64
DEFAULT_FLOOR: Final = 0.05
DEFAULT_TEMPERATURE: Final = 0.01
DEFAULT_UCB: Final = 0.25
DEFAULT_RIDGE: Final = 1.0
NUMBER_LIMIT: Final = 1e6
"""A numeric feature (after scaling) is clipped to +-this, so one bad value cannot swamp A."""


class _Memo(Protocol):
    def matches(self, segment_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class ContextFeature:
    """One declared feature and the columns it adds to x.

    - `values` (a `path`): one column per value, 1.0 where the value at the path equals it (as a string).
    - `scale` (a `path`): one column, the number at the path divided by `scale` (0 when absent or not a
      number, clipped to +-NUMBER_LIMIT).
    - `segment`: one column, 1.0 when the request matches the segment.
    - `hours`: one column per [start, end) range of the local hour of the request (0 when unknown).
    """

    kind: str  # "values", "number", "segment", "hours"
    path: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    scale: float = 1.0
    segment: str = ""
    hours: tuple[tuple[int, int], ...] = ()

    @property
    def width(self) -> int:
        if self.kind == "values":
            return len(self.values)
        if self.kind == "hours":
            return len(self.hours)
        return 1

    def names(self) -> list[str]:
        dotted = ".".join(self.path)
        if self.kind == "values":
            return [f"{dotted}={v}" for v in self.values]
        if self.kind == "number":
            return [f"{dotted}/{self.scale:g}"]
        if self.kind == "segment":
            return [f"segment:{self.segment}"]
        return [f"hour in [{a}, {b})" for a, b in self.hours]


@dataclass(frozen=True, slots=True)
class LinearArm:
    id: str
    content_id: str


def is_contextual(doc: Any) -> bool:
    """Whether a bandit document declares context features (and so is a linear bandit)."""
    return isinstance(doc, Mapping) and "context" in doc


def choose_reference(
    theta: NDArray[np.float64],
    a_inv: NDArray[np.float64],
    x: NDArray[np.float64],
    ucb: float,
    temperature: float,
    floor: float,
    u: float,
) -> tuple[int, NDArray[np.float64]]:
    """The NumPy reference of `LinearChooser.choose`: (chosen index, choice probabilities)."""
    mean = theta @ x
    quad = np.maximum(np.einsum("i,kij,j->k", x, a_inv, x), 0.0)
    z = (mean + ucb * np.sqrt(quad)) / temperature
    e = np.exp(z - z.max())
    probs = floor / len(e) + (1.0 - floor) * e / e.sum()
    cumulative = np.cumsum(probs)
    hits = np.nonzero(u < cumulative)[0]
    return (int(hits[0]) if hits.size else len(probs) - 1), probs


class LinearBanditPolicy:
    """A compiled contextual bandit: features, arms, per-arm theta and A^-1, exploration parameters.

    Built once per rules version; `choose` is a feature vector, one uniform draw and one kernel call.
    """

    def __init__(
        self,
        features: Sequence[ContextFeature],
        arms: Sequence[LinearArm],
        a: NDArray[np.float64],
        b: NDArray[np.float64],
        *,
        exploration_floor: float = DEFAULT_FLOOR,
        temperature: float = DEFAULT_TEMPERATURE,
        ucb: float = DEFAULT_UCB,
        ridge: float = DEFAULT_RIDGE,
    ) -> None:
        self.features: Final = tuple(features)
        self.arms_: Final = tuple(arms)
        self.dim: Final = 1 + sum(f.width for f in self.features)
        k = len(self.arms_)
        if not 1 <= k <= MAX_ARMS:
            raise ValueError(f"a contextual bandit needs 1..{MAX_ARMS} arms, got {k}")
        if self.dim > MAX_FEATURES:
            raise ValueError(f"at most {MAX_FEATURES} feature columns (intercept included), got {self.dim}")
        if a.shape != (k, self.dim, self.dim) or b.shape != (k, self.dim):
            raise ValueError(f"A must be (K, d, d) and b (K, d) with K={k}, d={self.dim}")
        if not (0.0 <= exploration_floor < 1.0):
            raise ValueError(f"exploration_floor must be in [0, 1), got {exploration_floor}")
        if not (temperature > 0.0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not (ucb >= 0.0 and math.isfinite(ucb)):
            raise ValueError(f"ucb must be >= 0, got {ucb}")
        if not (ridge > 0.0 and math.isfinite(ridge)):
            raise ValueError(f"ridge must be > 0, got {ridge}")
        self.exploration_floor: Final = float(exploration_floor)
        self.temperature: Final = float(temperature)
        self.ucb: Final = float(ucb)
        self.ridge: Final = float(ridge)
        a_inv = np.empty_like(a)
        for i in range(k):
            try:
                chol = np.linalg.cholesky(a[i])
            except np.linalg.LinAlgError:
                raise ValueError(f"arm {self.arms_[i].id!r}: A is not positive definite") from None
            inv_chol = np.linalg.inv(chol)
            a_inv[i] = inv_chol.T @ inv_chol
        self.a_inv: Final[NDArray[np.float64]] = np.ascontiguousarray(a_inv)
        self.theta: Final[NDArray[np.float64]] = np.ascontiguousarray(np.einsum("kij,kj->ki", a_inv, b))
        self._chooser = LinearChooser(
            self.theta, self.a_inv, self.ucb, self.temperature, self.exploration_floor
        )
        # What `vector` does per feature, precomputed: (kind, path, column or {value: column}, scale, hours).
        self._plan: list[tuple[str, tuple[str, ...], Any, float, tuple[tuple[int, int], ...]]] = []
        offset = 1
        for f in self.features:
            if f.kind == "values":
                target: Any = {value: offset + j for j, value in enumerate(f.values)}
            elif f.kind == "segment":
                target = (f.segment, offset)
            else:
                target = offset
            self._plan.append((f.kind, f.path, target, f.scale, f.hours))
            offset += f.width

    @property
    def segments(self) -> frozenset[str]:
        """Kept for the pipeline's Beta-bandit interface: a contextual bandit has no segment posteriors."""
        return frozenset()

    def arms(self) -> tuple[LinearArm, ...]:
        return self.arms_

    def feature_names(self) -> list[str]:
        return ["intercept"] + [name for f in self.features for name in f.names()]

    def vector(self, source: FeatureSource, memo: _Memo, local: datetime | None) -> list[float]:
        """The request's feature vector x (length `dim`, x[0] = 1), as the exposure record logs it."""
        x = [0.0] * self.dim
        x[0] = 1.0
        for kind, path, target, scale, hours in self._plan:
            if kind == "values":
                value = source.get(path)
                if value is not MISSING and value is not None:
                    column = target.get(value if isinstance(value, str) else str(value))
                    if column is not None:
                        x[column] = 1.0
            elif kind == "segment":
                if memo.matches(target[0]):
                    x[target[1]] = 1.0
            elif kind == "number":
                value = source.get(path)
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    x[target] = min(max(value / scale, -NUMBER_LIMIT), NUMBER_LIMIT)
            elif local is not None:
                hour = local.hour
                for j, (start, end) in enumerate(hours):
                    if start <= hour < end:
                        x[target + j] = 1.0
        return x

    def probabilities(self, x: Sequence[float]) -> NDArray[np.float64]:
        """P(this policy serves arm k | x), per arm."""
        probs = np.empty(len(self.arms_), dtype=np.float64)
        self._chooser.probabilities_into(list(x), probs)
        return probs

    def choose(self, rng: np.random.Generator, x: list[float]) -> tuple[LinearArm, float]:
        """Choose an arm for feature vector x; return it and its exact propensity."""
        index, propensity = self._chooser.choose(x, rng.random())
        return self.arms_[index], propensity


# --- compiling the rules-document form -------------------------------------------------------------

_BANDIT_KEYS: Final = {"context", "arms", "exploration_floor", "temperature", "ucb", "ridge"}


def _number(obj: Mapping[str, Any], key: str, path: str, default: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BanditError(f"{path}.{key}", f"must be a finite number, got {value!r}")
    return float(value)


def _feature(body: Any, path: str, segments: Any) -> ContextFeature:
    spec = _obj(body, path)
    if "segment" in spec:
        _known_keys(spec, {"segment"}, path)
        segment = _id(spec, "segment", path)
        if segments is not None and segment not in segments:
            raise BanditError(f"{path}.segment", f"unknown segment {segment!r}")
        return ContextFeature("segment", segment=segment)
    if "hours" in spec:
        _known_keys(spec, {"hours"}, path)
        ranges = spec["hours"]
        if not isinstance(ranges, list) or not ranges:
            raise BanditError(f"{path}.hours", "must be a non-empty list of [start, end) hour pairs")
        hours = []
        for i, pair in enumerate(ranges):
            ok = isinstance(pair, list) and len(pair) == 2 and all(type(h) is int for h in pair)
            if not ok or not 0 <= pair[0] < pair[1] <= 24:
                raise BanditError(
                    f"{path}.hours[{i}]", f"must be [start, end) with 0 <= start < end <= 24, got {pair!r}"
                )
            hours.append((pair[0], pair[1]))
        return ContextFeature("hours", hours=tuple(hours))
    raw = _id(spec, "path", path)
    parts = tuple(raw.split("."))
    if parts[0] not in ("context", "profile") or len(parts) < 2 or not all(parts):
        raise BanditError(
            f"{path}.path",
            f"must be context.<field>, context.attributes.<key> or profile.<attribute>, got {raw!r}",
        )
    if "values" in spec:
        _known_keys(spec, {"path", "values"}, path)
        values = spec["values"]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise BanditError(f"{path}.values", "must be a non-empty list of non-empty strings")
        if len(set(values)) != len(values):
            raise BanditError(f"{path}.values", "values must be distinct")
        return ContextFeature("values", path=parts, values=tuple(values))
    _known_keys(spec, {"path", "scale"}, path)
    scale = _number(spec, "scale", path, 1.0)
    if not scale > 0.0:
        raise BanditError(f"{path}.scale", f"must be > 0, got {scale!r}")
    return ContextFeature("number", path=parts, scale=scale)


def _matrix(value: Any, dim: int, path: str) -> NDArray[np.float64]:
    if not isinstance(value, list) or len(value) != dim:
        raise BanditError(path, f"must be a list of {dim} rows of {dim} numbers")
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != dim:
            raise BanditError(f"{path}[{i}]", f"must be a list of {dim} numbers")
    out = _finite(value, path)
    if not np.allclose(out, out.T, rtol=1e-9, atol=1e-9):
        raise BanditError(path, "must be symmetric")
    return out


def _finite(value: Any, path: str) -> NDArray[np.float64]:
    try:
        out = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise BanditError(path, "must hold numbers only") from None
    if out.dtype != np.float64 or not np.all(np.isfinite(out)):
        raise BanditError(path, "must hold finite numbers only")
    return out


def compile_linear_bandit(doc: Any, path: str, segments: Any = None) -> LinearBanditPolicy:
    """Validate a contextual bandit document (module docstring) and build its policy. `segments`, when
    given, is what a `segment` feature must name (a container of segment ids)."""
    spec = _obj(doc, path)
    _known_keys(spec, _BANDIT_KEYS, path)
    context = spec.get("context")
    if not isinstance(context, list):
        raise BanditError(f"{path}.context", "must be a list of features")
    features = [_feature(body, f"{path}.context[{i}]", segments) for i, body in enumerate(context)]
    dim = 1 + sum(f.width for f in features)
    if dim > MAX_FEATURES:
        raise BanditError(f"{path}.context", f"{dim} columns with the intercept: at most {MAX_FEATURES}")
    ridge = _number(spec, "ridge", path, DEFAULT_RIDGE)
    if not ridge > 0.0:
        raise BanditError(f"{path}.ridge", f"must be > 0, got {ridge!r}")
    arms_doc = spec.get("arms")
    if not isinstance(arms_doc, list) or not arms_doc:
        raise BanditError(f"{path}.arms", "must be a non-empty list")
    if len(arms_doc) > MAX_ARMS:
        raise BanditError(f"{path}.arms", f"at most {MAX_ARMS} arms")
    arms: list[LinearArm] = []
    a = np.empty((len(arms_doc), dim, dim), dtype=np.float64)
    b = np.zeros((len(arms_doc), dim), dtype=np.float64)
    seen: set[str] = set()
    for i, body in enumerate(arms_doc):
        apath = f"{path}.arms[{i}]"
        arm = _obj(body, apath)
        _known_keys(arm, {"id", "content_id", "A", "b"}, apath)
        arm_id = _id(arm, "id", apath)
        if arm_id in seen:
            raise BanditError(f"{apath}.id", f"duplicate arm id {arm_id!r}")
        seen.add(arm_id)
        content_id = _id(arm, "content_id", apath) if "content_id" in arm else arm_id
        arms.append(LinearArm(arm_id, content_id))
        a[i] = _matrix(arm["A"], dim, f"{apath}.A") if "A" in arm else ridge * np.eye(dim)
        if "b" in arm:
            vec = arm["b"]
            if not isinstance(vec, list) or len(vec) != dim:
                raise BanditError(f"{apath}.b", f"must be a list of {dim} numbers")
            b[i] = _finite(vec, f"{apath}.b")
    floor = _number(spec, "exploration_floor", path, DEFAULT_FLOOR)
    temperature = _number(spec, "temperature", path, DEFAULT_TEMPERATURE)
    ucb = _number(spec, "ucb", path, DEFAULT_UCB)
    try:
        return LinearBanditPolicy(
            features, arms, a, b, exploration_floor=floor, temperature=temperature, ucb=ucb, ridge=ridge
        )
    except ValueError as exc:
        raise BanditError(path, str(exc)) from None
