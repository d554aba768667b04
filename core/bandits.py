"""Beta-Bernoulli Thompson sampling for content choice, with computed propensities.

A bandit has K arms, each with a Beta(alpha, beta) posterior over its click rate, optionally one set of
posteriors per segment, and an exploration floor. Per request, `BanditPolicy.choose` draws one sample
per arm (`rng.beta`) and serves the argmax (ties: lowest index); with probability
`exploration_floor` it serves a uniformly random arm instead. It returns the chosen arm and the
propensity of that choice, the probability that this policy serves that arm:

    propensity_i = floor / K + (1 - floor) * p_i,    p_i = P(arm i has the largest posterior sample)

The p_i are computed once per policy (per segment), when the policy is built, never per request, by
numerical integration in the logit variable (`win_probabilities`); docs/bandits.md specifies the
method and the accuracy tests/test_bandits.py checks (1e-9 or better against the exact two-arm form,
and the frequencies of `choose` within 2 standard errors of the propensities).

Shape parameters must lie in [MIN_SHAPE, MAX_SHAPE]: below it `rng.beta` returns exactly 1.0 often
enough that ties (which go to the lowest index) would pull the choice frequencies away from the
computed propensities; above it the log-density loses precision (docs/bandits.md, "Shape limits").

The rules-document shape compiled by `compile_bandit`:

    {"arms": [{"id": "a", "content_id": "hero_a", "alpha": 1, "beta": 1}, ...],
     "exploration_floor": 0.05,
     "segments": {"<segment id>": {"arms": [{"id": "a", "alpha": 3, "beta": 40}, ...]}}}

`content_id` defaults to the arm id. A segment lists every global arm id once, with its own posterior
(a `content_id`, if given, must equal the global one); `choose(rng, segment)` uses that segment's
posteriors when the policy has them and the global ones otherwise (including for `segment=None` and for
segments the bandit does not know).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_POINTS_PER_SIDE",
    "MAX_SHAPE",
    "MIN_SHAPE",
    "Arm",
    "BanditError",
    "BanditPolicy",
    "compile_bandit",
    "thompson_index",
    "win_probabilities",
]

MIN_SHAPE: Final = 0.25
MAX_SHAPE: Final = 1e9
DEFAULT_POINTS_PER_SIDE: Final = 256

# Up to this many arms, `thompson_index` draws the samples one scalar call at a time (faster there).
_SCALAR_DRAWS_MAX: Final = 12

# The per-arm grid reaches out to where the log-density has dropped by this much from its peak.
_LOG_DROP: Final = 50.0


class BanditError(ValueError):
    """A bandit document that does not compile; `path` is the dotted path of the offending field."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Arm:
    """One arm: its posterior Beta(alpha, beta) over the click rate, and the content it serves."""

    id: str
    alpha: float
    beta: float
    content_id: str

    def __post_init__(self) -> None:
        for name, value in (("alpha", self.alpha), ("beta", self.beta)):
            if not (MIN_SHAPE <= value <= MAX_SHAPE):
                raise ValueError(
                    f"arm {self.id!r}: {name} must be in [{MIN_SHAPE}, {MAX_SHAPE:g}], got {value}"
                )


@dataclass(frozen=True)
class _Posteriors:
    """One set of posteriors (global or one segment's) with its precomputed propensities."""

    arms: tuple[Arm, ...]
    alpha: tuple[float, ...] | NDArray[np.float64]  # a tuple for few arms (scalar draws), else an array
    beta: tuple[float, ...] | NDArray[np.float64]
    win: tuple[float, ...]
    propensities: tuple[float, ...]


def thompson_index(
    rng: np.random.Generator,
    alpha: Sequence[float] | NDArray[np.float64],
    beta: Sequence[float] | NDArray[np.float64],
    exploration_floor: float = 0.0,
) -> int:
    """One Thompson-sampling choice: an arm index.

    With probability `exploration_floor` a uniformly random index; otherwise one `rng.beta` sample per
    arm and the argmax (ties: lowest index). This is the whole per-request cost of `BanditPolicy.choose`;
    the replay benchmark calls it directly with posteriors that change as it learns. Up to
    `_SCALAR_DRAWS_MAX` arms the samples are drawn one by one (numpy's per-call overhead for array
    arguments dominates there: BENCHMARKS.md, "Bandit policy: build and choose"); the random stream
    consumed is the same either way.
    """
    k = len(alpha)
    if exploration_floor > 0.0 and rng.random() < exploration_floor:
        return int(rng.integers(k))
    if k <= _SCALAR_DRAWS_MAX:
        draw = rng.beta
        samples = [draw(a, b) for a, b in zip(alpha, beta, strict=True)]
        return max(range(k), key=samples.__getitem__)
    return int(np.argmax(rng.beta(alpha, beta)))


def _softplus(t: float) -> float:
    return max(t, 0.0) + math.log1p(math.exp(-abs(t)))


def _log_kernel(t: float, a: float, b: float) -> float:
    """log of x^a (1 - x)^b at x = sigmoid(t), without the normalizing constant."""
    return -a * _softplus(-t) - b * _softplus(t)


def _drop_distance(mode: float, direction: float, a: float, b: float, drop: float) -> float:
    """Distance d >= 0 from the mode at which the log-density (in t) has dropped by `drop`.

    The log-density is concave in t, so the drop grows monotonically with d: bracket by doubling, then
    bisect.
    """
    peak = _log_kernel(mode, a, b)

    def dropped(d: float) -> float:
        return peak - _log_kernel(mode + direction * d, a, b)

    hi = math.sqrt(1.0 / a + 1.0 / b)  # the curvature width at the mode
    while dropped(hi) < drop:
        hi *= 2.0
    lo = 0.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if dropped(mid) < drop:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


def _arm_grid(a: float, b: float, points_per_side: int) -> NDArray[np.float64]:
    """Grid in t for one Beta(a, b): dense at the mode, spreading out geometrically into both tails."""
    mode = math.log(a / b)
    sides = []
    for direction in (-1.0, 1.0):
        d1 = _drop_distance(mode, direction, a, b, 1.0)
        d_end = _drop_distance(mode, direction, a, b, _LOG_DROP)
        v = np.linspace(0.0, math.asinh(d_end / d1), points_per_side + 1)
        sides.append(mode + direction * d1 * np.sinh(v))
    return np.concatenate([sides[0][::-1], sides[1][1:]])


def _simpson_parts(
    y: NDArray[np.float64], h: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Integrals of y over each interval [t_k, t_k+1] (widths h) and over its first half.

    y is sampled at the nodes (even columns) and the interval midpoints (odd columns). `full` is
    Simpson's rule over the interval, `half` integrates the quadratic through the interval's three samples
    from its start to its midpoint.
    """
    y0, ym, y1 = y[..., 0:-1:2], y[..., 1::2], y[..., 2::2]
    full = h / 6.0 * (y0 + 4.0 * ym + y1)
    half = h / 24.0 * (5.0 * y0 + 8.0 * ym - y1)
    return full, half


def win_probabilities(
    alpha: Sequence[float] | NDArray[np.float64],
    beta: Sequence[float] | NDArray[np.float64],
    points_per_side: int = DEFAULT_POINTS_PER_SIDE,
) -> NDArray[np.float64]:
    """P(arm i draws the largest sample) for independent Beta(alpha_i, beta_i), by numerical integration.

    docs/bandits.md ("Propensities") specifies the method and its accuracy. The result sums to 1.
    """
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError("alpha and beta must be non-empty 1-d sequences of the same length")
    if not (np.all((a >= MIN_SHAPE) & (a <= MAX_SHAPE)) and np.all((b >= MIN_SHAPE) & (b <= MAX_SHAPE))):
        raise ValueError(f"alpha and beta must be in [{MIN_SHAPE}, {MAX_SHAPE:g}]")
    if points_per_side < 8:
        raise ValueError("points_per_side must be at least 8")
    k = a.shape[0]
    if k == 1:
        return np.ones(1, dtype=np.float64)

    # One merged grid of nodes in t, built from every distinct arm's own grid, plus the interval midpoints.
    distinct = sorted(set(zip(a.tolist(), b.tolist(), strict=True)))
    nodes = np.unique(np.concatenate([_arm_grid(ai, bi, points_per_side) for ai, bi in distinct]))
    h = np.diff(nodes)
    t = np.empty(2 * nodes.shape[0] - 1, dtype=np.float64)
    t[0::2] = nodes
    t[1::2] = nodes[:-1] + 0.5 * h
    log_x = -np.logaddexp(0.0, -t)  # log sigmoid(t)
    log_1mx = -np.logaddexp(0.0, t)  # log (1 - sigmoid(t))
    log_norm = np.array(
        [math.lgamma(ai + bi) - math.lgamma(ai) - math.lgamma(bi) for ai, bi in zip(a, b, strict=True)]
    )
    pdf = np.exp(a[:, None] * log_x + b[:, None] * log_1mx + log_norm[:, None])  # K x (2M - 1), density in t

    # CDFs at nodes and midpoints: cumulative Simpson, normalized to end at exactly 1.
    full, half = _simpson_parts(pdf, h)
    cdf = np.zeros_like(pdf)
    np.cumsum(full, axis=1, out=cdf[:, 2::2])
    cdf[:, 1::2] = cdf[:, 0:-1:2] + half
    mass = cdf[:, -1:].copy()
    pdf /= mass
    cdf /= mass

    # prod_{j != i} F_j = (prod_{j < i} F_j) * (prod_{j > i} F_j)
    others = np.empty_like(cdf)
    others[0] = 1.0
    np.cumprod(cdf[:-1], axis=0, out=others[1:])
    suffix = np.empty_like(cdf)
    suffix[-1] = 1.0
    np.cumprod(cdf[:0:-1], axis=0, out=suffix[-2::-1])
    others *= suffix
    others *= pdf
    p = _simpson_parts(others, h)[0].sum(axis=1)
    total = float(p.sum())
    if not (total > 0.0 and math.isfinite(total)):
        raise ValueError("win probabilities did not integrate (non-finite result)")
    out: NDArray[np.float64] = np.maximum(p, 0.0) / total
    return out


class BanditPolicy:
    """A compiled Thompson-sampling bandit: arms, per-segment posteriors, exploration floor, propensities.

    Built once per rules/model version; `choose` is then a handful of `rng.beta` draws.
    """

    def __init__(
        self,
        arms: Sequence[Arm],
        exploration_floor: float = 0.0,
        segments: Mapping[str, Sequence[Arm]] | None = None,
        *,
        points_per_side: int = DEFAULT_POINTS_PER_SIDE,
    ) -> None:
        if not arms:
            raise ValueError("a bandit needs at least one arm")
        ids = [arm.id for arm in arms]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate arm ids in {ids}")
        if not (0.0 <= exploration_floor < 1.0):
            raise ValueError(f"exploration_floor must be in [0, 1), got {exploration_floor}")
        self.exploration_floor: Final = float(exploration_floor)
        self._points_per_side = points_per_side
        self._global = self._posteriors(tuple(arms))
        self._segments: dict[str, _Posteriors] = {}
        for name, seg_arms in (segments or {}).items():
            if [arm.id for arm in seg_arms] != ids:
                raise ValueError(f"segment {name!r}: arms must be the global arms {ids} in the same order")
            self._segments[name] = self._posteriors(tuple(seg_arms))

    def _posteriors(self, arms: tuple[Arm, ...]) -> _Posteriors:
        alpha = np.array([arm.alpha for arm in arms], dtype=np.float64)
        beta = np.array([arm.beta for arm in arms], dtype=np.float64)
        win = win_probabilities(alpha, beta, self._points_per_side)
        k = len(arms)
        floor = self.exploration_floor
        propensities = tuple(float(floor / k + (1.0 - floor) * w) for w in win)
        win_tuple = tuple(float(w) for w in win)
        if k <= _SCALAR_DRAWS_MAX:
            return _Posteriors(arms, tuple(alpha.tolist()), tuple(beta.tolist()), win_tuple, propensities)
        return _Posteriors(arms, alpha, beta, win_tuple, propensities)

    def _table(self, segment: str | None) -> _Posteriors:
        if segment is None:
            return self._global
        return self._segments.get(segment, self._global)

    @property
    def segments(self) -> frozenset[str]:
        """The segments that have their own posteriors."""
        return frozenset(self._segments)

    def arms(self, segment: str | None = None) -> tuple[Arm, ...]:
        """The arms (with the posteriors) `choose` uses for `segment`."""
        return self._table(segment).arms

    def win_probabilities(self, segment: str | None = None) -> tuple[float, ...]:
        """P(arm has the largest posterior sample), per arm, as computed at build time."""
        return self._table(segment).win

    def propensities(self, segment: str | None = None) -> tuple[float, ...]:
        """P(this policy serves the arm), per arm: floor / K + (1 - floor) * win probability."""
        return self._table(segment).propensities

    def choose(self, rng: np.random.Generator, segment: str | None = None) -> tuple[Arm, float]:
        """Choose an arm by Thompson sampling (with the exploration floor); return it and its propensity."""
        table = self._table(segment)
        index = thompson_index(rng, table.alpha, table.beta, self.exploration_floor)
        return table.arms[index], table.propensities[index]


# --- compiling the rules-document form -------------------------------------------------------------


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BanditError(path, f"must be an object, got {type(value).__name__}")
    return value


def _known_keys(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise BanditError(f"{path}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _shape(obj: Mapping[str, Any], key: str, path: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BanditError(f"{path}.{key}", f"must be a number, got {value!r}")
    number = float(value)
    if not (MIN_SHAPE <= number <= MAX_SHAPE):
        raise BanditError(f"{path}.{key}", f"must be in [{MIN_SHAPE}, {MAX_SHAPE:g}], got {value!r}")
    return number


def _id(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BanditError(f"{path}.{key}", f"must be a non-empty string, got {value!r}")
    return value


def _arm_list(value: Any, path: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not value:
        raise BanditError(path, "must be a non-empty list")
    return [_obj(body, f"{path}[{i}]") for i, body in enumerate(value)]


def compile_bandit(doc: Any, path: str) -> BanditPolicy:
    """Validate a bandit document (see the module docstring) and build its policy.

    Raises BanditError naming the offending field, e.g. "<path>.arms[2].alpha: must be a number, ...".
    """
    spec = _obj(doc, path)
    _known_keys(spec, {"arms", "exploration_floor", "segments"}, path)

    arms: list[Arm] = []
    seen: set[str] = set()
    for i, body in enumerate(_arm_list(spec.get("arms"), f"{path}.arms")):
        apath = f"{path}.arms[{i}]"
        _known_keys(body, {"id", "content_id", "alpha", "beta"}, apath)
        arm_id = _id(body, "id", apath)
        if arm_id in seen:
            raise BanditError(f"{apath}.id", f"duplicate arm id {arm_id!r}")
        seen.add(arm_id)
        content_id = _id(body, "content_id", apath) if "content_id" in body else arm_id
        arms.append(Arm(arm_id, _shape(body, "alpha", apath), _shape(body, "beta", apath), content_id))

    floor_value = spec.get("exploration_floor", 0.0)
    if isinstance(floor_value, bool) or not isinstance(floor_value, int | float):
        raise BanditError(f"{path}.exploration_floor", f"must be a number in [0, 1), got {floor_value!r}")
    floor = float(floor_value)
    if not (0.0 <= floor < 1.0):
        raise BanditError(f"{path}.exploration_floor", f"must be in [0, 1), got {floor_value!r}")

    by_id = {arm.id: arm for arm in arms}
    segments: dict[str, list[Arm]] = {}
    for name, seg_body in _obj(spec.get("segments", {}), f"{path}.segments").items():
        spath = f"{path}.segments.{name}"
        if not isinstance(name, str) or not name:
            raise BanditError(spath, "segment id must be a non-empty string")
        seg_spec = _obj(seg_body, spath)
        _known_keys(seg_spec, {"arms"}, spath)
        seg_arms: dict[str, Arm] = {}
        for i, body in enumerate(_arm_list(seg_spec.get("arms"), f"{spath}.arms")):
            apath = f"{spath}.arms[{i}]"
            _known_keys(body, {"id", "content_id", "alpha", "beta"}, apath)
            arm_id = _id(body, "id", apath)
            if arm_id not in by_id:
                raise BanditError(f"{apath}.id", f"unknown arm {arm_id!r} (arms: {', '.join(by_id)})")
            if arm_id in seg_arms:
                raise BanditError(f"{apath}.id", f"duplicate arm id {arm_id!r}")
            content_id = by_id[arm_id].content_id
            if "content_id" in body and _id(body, "content_id", apath) != content_id:
                raise BanditError(f"{apath}.content_id", f"must equal the global arm's {content_id!r}")
            seg_arms[arm_id] = Arm(
                arm_id, _shape(body, "alpha", apath), _shape(body, "beta", apath), content_id
            )
        missing = [arm_id for arm_id in by_id if arm_id not in seg_arms]
        if missing:
            raise BanditError(f"{spath}.arms", f"missing arms {', '.join(missing)} (list every arm once)")
        segments[name] = [seg_arms[arm_id] for arm_id in by_id]

    return BanditPolicy(arms, floor, segments)
