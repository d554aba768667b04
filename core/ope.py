"""Off-policy evaluation (OPE): a candidate policy's expected reward from another policy's logs.

Pure NumPy, no I/O. The log has n rounds: round i shows action a_i (at slot p_i when the policy fills
several slots) with the logged propensity pi_0(a_i | x_i, p_i) and earns reward r_i. The evaluation
policy is given by its action probabilities per round: an (n, A) array, or (n, A, P) with one
distribution per slot, from which round i reads slot p_i. `ips`, `snips`, `doubly_robust` (with a
cross-fitted reward model: q_i is never fitted on round i) and `on_policy` each return an `Estimate` of
V(pi_e) with a 95% interval, normal (`bootstrap=0`) or bootstrap (`bootstrap=B`; one `seed` gives every
estimator the same resamples, so the intervals are paired). Rounds are treated as independent.

docs/ope.md gives the estimators' formulas and assumptions (the logged propensities are the true ones,
pi_0 > 0 wherever pi_e > 0), the intervals' contributions, and the Open Bandit Pipeline conventions
followed (`bernoulli_ts_action_dist`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "Z95",
    "CellMeans",
    "Estimate",
    "bernoulli_ts_action_dist",
    "cross_fit_cell_means",
    "cross_fit_cell_model",
    "doubly_robust",
    "empirical_action_dist",
    "importance_weights",
    "ips",
    "on_policy",
    "policy_at",
    "snips",
]

Z95: Final = NormalDist().inv_cdf(0.975)  # the two-sided 95% normal quantile
_BOOTSTRAP_CELLS: Final = 1 << 22  # resample indices generated per chunk (bounded memory)
_CHUNK_ROUNDS: Final = 1 << 15
"""Rounds read at a time from the evaluation policy and the reward model: memory stays bounded by this
many rows of actions (a broadcast (n, A, P) view, the usual layout for a context-free policy, is never
materialized whole)."""
_SUM_TOL: Final = 1e-6

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Estimate:
    """One estimator's value with its 95% interval."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    se: float  # normal: sd of the contributions / sqrt(n); bootstrap: sd of the resampled estimates
    n: int
    ci_method: str  # "normal" or "bootstrap (B resamples, seed S)"

    def covers(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high

    def to_json(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "value": self.value,
            "ci95": [self.ci_low, self.ci_high],
            "se": self.se,
            "n": self.n,
            "ci_method": self.ci_method,
        }


def policy_at(action_dist: ArrayLike, positions: ArrayLike | None = None) -> FloatArray:
    """pi_e(. | x_i, p_i) per round as an (n, A) array, from (n, A) or (n, A, P) plus positions."""
    dist = np.asarray(action_dist)
    read, _ = _reader(dist, positions, dist.shape[0] if dist.ndim else 0, "action_dist")
    return read(slice(None))


def _int_vector(values: ArrayLike, name: str) -> IntArray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _log(
    actions: ArrayLike, rewards: ArrayLike, propensities: ArrayLike
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Validate the log: (actions, rewards, propensities)."""
    a = _int_vector(actions, "actions")
    r = np.asarray(rewards, dtype=np.float64)
    p0 = np.asarray(propensities, dtype=np.float64)
    n = a.shape[0]
    if n == 0:
        raise ValueError("empty log: no rounds to evaluate")
    if r.shape != (n,) or p0.shape != (n,):
        raise ValueError(f"actions, rewards and propensities must have the same length n={n}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite")
    if not np.all((p0 > 0.0) & (p0 <= 1.0)):
        raise ValueError("logged propensities must lie in (0, 1]")
    return a, r, p0


Reader = Callable[[slice], FloatArray]
"""The per-round values of a policy or reward model for a block of rounds, as a (rounds, A) array."""


def _reader(values: ArrayLike, positions: ArrayLike | None, n: int, name: str) -> tuple[Reader, int]:
    """A reader of `values` ((n, A), or (n, A, P) read at the rounds' positions) and the number of
    actions, checking shapes and positions without materializing the rounds (a broadcast view stays a
    view until a block of it is read)."""
    dist = np.asarray(values)
    if dist.ndim == 2:
        if positions is not None:
            raise ValueError(f"positions given but {name} has no position axis (expected (n, A, P))")
        if dist.shape[0] != n:
            raise ValueError(f"{name} has {dist.shape[0]} rounds, the log {n}")
        return (lambda sl: np.asarray(dist[sl], dtype=np.float64)), dist.shape[1]
    if dist.ndim != 3:
        raise ValueError(f"{name} must be (n, A) or (n, A, P), got shape {dist.shape}")
    pos = _positions(positions, dist.shape[0], dist.shape[2], name)
    if dist.shape[0] != n:
        raise ValueError(f"{name} has {dist.shape[0]} rounds, the log {n}")

    def read(sl: slice) -> FloatArray:
        block = dist[sl]
        return np.asarray(block[np.arange(block.shape[0]), :, pos[sl]], dtype=np.float64)

    return read, dist.shape[1]


def _positions(positions: ArrayLike | None, rounds: int, slots: int, name: str) -> IntArray:
    """The rounds' positions, required by `name` (which has `rounds` rounds and `slots` positions)."""
    if positions is None:
        raise ValueError(f"{name} has a position axis (n, A, P): positions are required")
    pos = _int_vector(positions, "positions")
    if pos.shape[0] != rounds:
        raise ValueError(f"positions has {pos.shape[0]} rounds, {name} {rounds}")
    if pos.size and (pos.min() < 0 or pos.max() >= slots):
        raise ValueError(f"positions must lie in [0, {slots})")
    return pos


def _blocks(n: int) -> list[slice]:
    return [slice(start, min(n, start + _CHUNK_ROUNDS)) for start in range(0, n, _CHUNK_ROUNDS)]


def _weights(
    a: IntArray, p0: FloatArray, action_dist: ArrayLike, positions: ArrayLike | None
) -> tuple[FloatArray, Reader]:
    """w_i for every round, reading the evaluation policy block by block and checking each block (the
    actions within its action set; probabilities >= 0 summing to 1 per round); and its reader."""
    n = a.shape[0]
    read, n_actions = _reader(action_dist, positions, n, "action_dist")
    if a.min() < 0 or a.max() >= n_actions:
        raise ValueError(f"actions must lie in [0, {n_actions})")
    w = np.empty(n, dtype=np.float64)
    for sl in _blocks(n):
        pi = read(sl)
        if np.any(pi < 0.0) or not np.allclose(pi.sum(axis=1), 1.0, rtol=0.0, atol=_SUM_TOL):
            raise ValueError("the evaluation policy's probabilities must be >= 0 and sum to 1 per round")
        w[sl] = pi[np.arange(pi.shape[0]), a[sl]] / p0[sl]
    return w, read


def importance_weights(
    actions: ArrayLike,
    propensities: ArrayLike,
    action_dist: ArrayLike,
    positions: ArrayLike | None = None,
) -> FloatArray:
    """w_i = pi_e(a_i | x_i, p_i) / pi_0(a_i | x_i, p_i)."""
    a = _int_vector(actions, "actions")
    _, _, p0 = _log(a, np.zeros(a.shape[0]), propensities)
    return _weights(a, p0, action_dist, positions)[0]


def _normal(name: str, value: float, contributions: FloatArray) -> Estimate:
    n = contributions.shape[0]
    se = float(np.std(contributions, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(name, value, value - Z95 * se, value + Z95 * se, se, n, "normal")


def _bootstrap(
    name: str, value: float, numerator: FloatArray, denominator: FloatArray | None, resamples: int, seed: int
) -> Estimate:
    """Percentile bootstrap of sum(numerator[idx]) / sum(denominator[idx]) (or the mean of numerator)."""
    n = numerator.shape[0]
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples, dtype=np.float64)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        num = numerator[idx].sum(axis=1)
        if denominator is None:
            stats[start:stop] = num / n
        else:
            den = denominator[idx].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                stats[start:stop] = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    low, high = np.percentile(stats, [2.5, 97.5])
    se = float(np.std(stats, ddof=1)) if resamples > 1 else math.nan
    return Estimate(
        name, value, float(low), float(high), se, n, f"bootstrap ({resamples} resamples, seed {seed})"
    )


def _check_resamples(bootstrap: int) -> None:
    if bootstrap < 0 or bootstrap == 1:
        raise ValueError(f"bootstrap must be 0 (normal approximation) or >= 2 resamples, got {bootstrap}")


def ips(
    actions: ArrayLike,
    rewards: ArrayLike,
    propensities: ArrayLike,
    action_dist: ArrayLike,
    positions: ArrayLike | None = None,
    *,
    bootstrap: int = 0,
    seed: int = 0,
) -> Estimate:
    """Inverse propensity scoring: (1/n) sum_i w_i r_i (docs/ope.md)."""
    _check_resamples(bootstrap)
    a, r, p0 = _log(actions, rewards, propensities)
    contributions = _weights(a, p0, action_dist, positions)[0] * r
    value = float(contributions.mean())
    if bootstrap:
        return _bootstrap("IPS", value, contributions, None, bootstrap, seed)
    return _normal("IPS", value, contributions)


def snips(
    actions: ArrayLike,
    rewards: ArrayLike,
    propensities: ArrayLike,
    action_dist: ArrayLike,
    positions: ArrayLike | None = None,
    *,
    bootstrap: int = 0,
    seed: int = 0,
) -> Estimate:
    """Self-normalized IPS: sum_i w_i r_i / sum_i w_i (docs/ope.md)."""
    _check_resamples(bootstrap)
    a, r, p0 = _log(actions, rewards, propensities)
    w = _weights(a, p0, action_dist, positions)[0]
    total = float(w.sum())
    if total <= 0.0:
        raise ValueError(
            "SNIPS is undefined: the evaluation policy gives probability 0 to every logged action"
        )
    value = float((w * r).sum() / total)
    if bootstrap:
        return _bootstrap("SNIPS", value, w * r, w, bootstrap, seed)
    return _normal("SNIPS", value, w * (r - value) / w.mean())


def doubly_robust(
    actions: ArrayLike,
    rewards: ArrayLike,
    propensities: ArrayLike,
    action_dist: ArrayLike,
    q_hat: ArrayLike | CellMeans,
    positions: ArrayLike | None = None,
    *,
    bootstrap: int = 0,
    seed: int = 0,
) -> Estimate:
    """Doubly robust: (1/n) sum_i [sum_a pi_e(a) q_i(a) + w_i (r_i - q_i(a_i))].

    `q_hat` has the layout of `action_dist` ((n, A) or (n, A, P)): the reward model's prediction for
    every action (and slot) of every round, fitted without that round (cross-fitted); or a `CellMeans`
    (`cross_fit_cell_model`), which gives the same values without an (n, A, P) array.
    """
    _check_resamples(bootstrap)
    a, r, p0 = _log(actions, rewards, propensities)
    n = a.shape[0]
    w, read_pi = _weights(a, p0, action_dist, positions)
    if isinstance(q_hat, CellMeans):
        read_q, q_actions = q_hat.reader(positions, n)
    else:
        read_q, q_actions = _reader(q_hat, positions, n, "q_hat")
    contributions = np.empty(n, dtype=np.float64)
    for sl in _blocks(n):
        pi, q = read_pi(sl), read_q(sl)
        if q.shape != pi.shape:
            raise ValueError(
                f"q_hat has {q_actions} actions at the rounds' positions, action_dist {pi.shape[1]}"
            )
        rows = np.arange(pi.shape[0])
        contributions[sl] = (pi * q).sum(axis=1) + w[sl] * (r[sl] - q[rows, a[sl]])
    value = float(contributions.mean())
    if bootstrap:
        return _bootstrap("DR", value, contributions, None, bootstrap, seed)
    return _normal("DR", value, contributions)


def on_policy(rewards: ArrayLike, *, bootstrap: int = 0, seed: int = 0) -> Estimate:
    """The mean reward of an on-policy log, with the same interval methods as the estimators."""
    _check_resamples(bootstrap)
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or r.shape[0] == 0:
        raise ValueError("rewards must be a non-empty vector")
    value = float(r.mean())
    if bootstrap:
        return _bootstrap("on-policy", value, r, None, bootstrap, seed)
    return _normal("on-policy", value, r)


@dataclass(frozen=True, slots=True)
class CellMeans:
    """A cross-fitted cell-mean reward model: `tables[k]` is the (A, P) model fitted without fold k, and
    round i is predicted by the table of its own fold `fold[i]`."""

    tables: FloatArray  # (folds, A, P)
    fold: IntArray  # (n,)

    def reader(self, positions: ArrayLike | None, n: int) -> tuple[Reader, int]:
        """A block reader of q_i(.) at the rounds' positions, as `doubly_robust` reads it."""
        if self.fold.shape[0] != n:
            raise ValueError(f"the reward model has {self.fold.shape[0]} rounds, the log {n}")
        pos = _positions(positions, n, self.tables.shape[2], "the cell-mean model")
        return (lambda sl: self.tables[self.fold[sl], :, pos[sl]]), self.tables.shape[1]


def cross_fit_cell_means(
    actions: ArrayLike,
    rewards: ArrayLike,
    positions: ArrayLike,
    n_actions: int,
    n_positions: int,
    *,
    folds: int = 2,
    smoothing: float = 100.0,
    seed: int = 0,
) -> FloatArray:
    """`cross_fit_cell_model` as an (n, n_actions, n_positions) array q_hat (n x A x P floats: for a
    large log pass the model itself to `doubly_robust`)."""
    model = cross_fit_cell_model(
        actions, rewards, positions, n_actions, n_positions, folds=folds, smoothing=smoothing, seed=seed
    )
    return model.tables[model.fold]


def cross_fit_cell_model(
    actions: ArrayLike,
    rewards: ArrayLike,
    positions: ArrayLike,
    n_actions: int,
    n_positions: int,
    *,
    folds: int = 2,
    smoothing: float = 100.0,
    seed: int = 0,
) -> CellMeans:
    """A cross-fitted reward model q(a, p): the mean reward per (action, position) cell.

    Rounds are split into `folds` random folds (seeded). For the rounds of fold k the model is fitted
    on the other folds only: q_k(a, p) = (sum of rewards in cell (a, p) + m * mu_p) / (rows in the
    cell + m), with mu_p the mean reward at position p in those folds and m = `smoothing`
    (pseudo-rows that shrink sparse cells toward their position's mean). `positions` can be any
    discrete context (use zeros for a single slot). Returns the per-fold tables and each round's fold;
    `cross_fit_cell_means` gives the same as an (n, n_actions, n_positions) array.
    """
    a = _int_vector(actions, "actions")
    pos = _int_vector(positions, "positions")
    r = np.asarray(rewards, dtype=np.float64)
    n = a.shape[0]
    if r.shape != (n,) or pos.shape != (n,):
        raise ValueError("actions, rewards and positions must have the same length")
    if folds < 2 or folds > n:
        raise ValueError(f"folds must be in [2, n], got {folds}")
    if smoothing < 0:
        raise ValueError("smoothing must be >= 0")
    if a.min() < 0 or a.max() >= n_actions or pos.min() < 0 or pos.max() >= n_positions:
        raise ValueError("actions or positions out of range")
    rng = np.random.default_rng(seed)
    fold = rng.permutation(n) % folds
    cell = a * n_positions + pos
    cells = n_actions * n_positions
    sums = np.stack([np.bincount(cell[fold == k], r[fold == k], minlength=cells) for k in range(folds)])
    counts = np.stack([np.bincount(cell[fold == k], minlength=cells) for k in range(folds)]).astype(float)
    tables = np.empty((folds, n_actions, n_positions), dtype=np.float64)
    for k in range(folds):
        s = (sums.sum(axis=0) - sums[k]).reshape(n_actions, n_positions)
        c = (counts.sum(axis=0) - counts[k]).reshape(n_actions, n_positions)
        col_rows = c.sum(axis=0)
        mu = np.where(col_rows > 0, s.sum(axis=0) / np.where(col_rows > 0, col_rows, 1.0), 0.0)
        denom = c + smoothing
        tables[k] = np.where(denom > 0, (s + smoothing * mu) / np.where(denom > 0, denom, 1.0), mu)
    return CellMeans(tables, fold)


def bernoulli_ts_action_dist(
    alpha: ArrayLike,
    beta: ArrayLike,
    len_list: int,
    *,
    n_sim: int = 100_000,
    seed: int = 0,
) -> FloatArray:
    """P(action a in slot k) of context-free Bernoulli Thompson sampling, by Monte Carlo: (A, len_list).

    Each simulation draws theta ~ Beta(alpha, beta) per action and ranks the actions by theta, highest
    first; slot k gets the (k+1)-th ranked action (the Open Bandit Pipeline's `BernoulliTS` with its
    `compute_batch_action_dist`). Every column sums to 1.
    """
    al = np.asarray(alpha, dtype=np.float64)
    be = np.asarray(beta, dtype=np.float64)
    if al.ndim != 1 or al.shape != be.shape or al.size == 0:
        raise ValueError("alpha and beta must be non-empty vectors of the same length")
    if np.any(al <= 0) or np.any(be <= 0):
        raise ValueError("alpha and beta must be > 0")
    n_actions = al.shape[0]
    if not 1 <= len_list <= n_actions:
        raise ValueError(f"len_list must be in [1, {n_actions}]")
    if n_sim < 1:
        raise ValueError("n_sim must be >= 1")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_actions, len_list), dtype=np.int64)
    chunk = max(1, _BOOTSTRAP_CELLS // n_actions)
    for start in range(0, n_sim, chunk):
        size = min(chunk, n_sim - start)
        theta = rng.beta(al, be, size=(size, n_actions))
        top = np.argpartition(-theta, len_list - 1, axis=1)[:, :len_list]
        order = np.argsort(-np.take_along_axis(theta, top, axis=1), axis=1)
        ranked = np.take_along_axis(top, order, axis=1)
        for k in range(len_list):
            counts[:, k] += np.bincount(ranked[:, k], minlength=n_actions)
    return counts / float(n_sim)


def empirical_action_dist(
    actions: ArrayLike, positions: ArrayLike, n_actions: int, n_positions: int
) -> FloatArray:
    """The share of each action per position in a log: (n_actions, n_positions), columns sum to 1."""
    a = _int_vector(actions, "actions")
    pos = _int_vector(positions, "positions")
    if a.shape != pos.shape or a.size == 0:
        raise ValueError("actions and positions must be non-empty and of the same length")
    if a.min() < 0 or a.max() >= n_actions or pos.min() < 0 or pos.max() >= n_positions:
        raise ValueError("actions or positions out of range")
    counts = np.zeros((n_actions, n_positions), dtype=np.float64)
    np.add.at(counts, (a, pos), 1.0)
    totals = counts.sum(axis=0)
    if np.any(totals == 0):
        missing = [int(p) for p in np.flatnonzero(totals == 0)]
        raise ValueError(f"no rounds at position(s) {missing}: their distribution is unknown")
    shares: FloatArray = counts / totals
    return shares
