"""Item and user embeddings trained from interactions with `implicit` (ALS or BPR) or the hybrid model
of `core/hybrid_embeddings.py` (NumPy only): the embeddings half of the control plane's model refresh,
and the offline comparison of it with the bundle's model.

Pure apart from the library call: `train_embeddings` takes (user index, item index, weight)
interactions, the catalog's row count, the item embeddings the state holds now (or None) and the
embedding dim the bundle uses, and returns new item embeddings [n_items, dim] float32 and the vectors of
the users seen. `implicit` is an optional extra (`pip install 'edgewise[train]'`), imported only when an
ALS or BPR model is trained; without it `TrainingUnavailable` says how to install it.

- ALS (Hu, Koren, Volinsky 2008; `implicit.cpu.als`, conjugate-gradient solver): the weights are the
  confidences (times `alpha`); every factor of the dim is a latent factor.
- BPR (Rendle et al. 2009; `implicit.cpu.bpr`): the weights only say which pairs are positive.
  `implicit` adds an item bias as an extra column (users get a constant 1 there), so it trains
  `dim - 1` factors and the bias fills the last coordinate.

- hybrid (`core/hybrid_embeddings.py`, the retail bundle's model): the weights (the largest decayed
  event weight per pair, `interactions_from_events(combine="max")`) smoothed through an item similarity,
  half co-purchase cosine and half the cosine of the items' words (`item_terms`: the catalog's tags),
  then a truncated SVD: `dim - 1` factors and a popularity prior (`popularity`) in the last coordinate.
  Every item gets a row, also one nobody interacted with (from its words); its scale is the bundle's
  (a kNN score with a maximum of 1 per user plus a prior in [0, 1]), so it is not rescaled.

ALS and BPR run on one thread with BLAS limited to one thread: the result is the same for the same seed and
input (BPR's SGD is Hogwild on more threads, and so not repeatable), and the control plane shares its
cores with serving.

Scale. Edges score `profile embedding . item embedding` (`core/item_ranking.py`), through a
half-precision copy of the matrix (binary16: |x| <= 65,504, three significant digits), add boost weights
(0.1 to 0.3 in docs/rules.md) to those scores, and rank `pdp_similar` by the mean of seed item vectors
. item. The bundles' models score on a cosine-like scale (the synthetic ones: unit-norm vectors; the
retail one: a kNN score scaled to a maximum of 1 plus a prior in [0, 1]). Raw factors are not on any
fixed scale (BPR's grow with training), so the trained vectors are rescaled, which changes no user's
ranking: users and items get the same mean norm (item . item then is on the scale of user . item), and
both are multiplied so that the median score of the users' own training pairs is 1.0.

Items without interactions keep their previous vectors, carried into the new factor space: a new model's
factors are another basis than the old one's, so the old rows are mapped by the linear map that best takes
the old vectors of the items both models know to their new ones (least squares; used when at least
`2 * dim` such items exist, else the rows are kept as they are). `carry_users` maps a user vector of the
old model the matching way (its dot products with the carried items stay what they were), for profiles
whose user had no interaction in the window.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core.hybrid_embeddings import (
    MAX_DENSE_CELLS,
    HybridParams,
    dense_cells,
    hybrid_embeddings,
    item_similarity,
)

__all__ = [
    "DEFAULT_EVENT_WEIGHTS",
    "IMPLICIT_METHODS",
    "METHODS",
    "TRAIN_EXTRA_HINT",
    "Interactions",
    "TrainedEmbeddings",
    "TrainingSettings",
    "TrainingUnavailable",
    "carry_users",
    "import_implicit",
    "interactions_from_events",
    "train_embeddings",
]

METHODS: Final = ("als", "bpr", "hybrid")
IMPLICIT_METHODS: Final = ("als", "bpr")  # the methods that need the `train` extra
TRAIN_EXTRA_HINT: Final = "pip install 'edgewise[train]'"
TARGET_SCORE: Final = 1.0  # the median score of a user's own training pairs after rescaling
_MIN_CARRY_FACTOR: Final = 2  # the carry map needs this many shared items per dimension
_DAY_MS: Final = 86_400_000
_MIN_WEIGHT: Final = 1e-6
# What one event of a type says about the user's interest in its item (ALS: its confidence).
DEFAULT_EVENT_WEIGHTS: Final[Mapping[str, float]] = {
    "purchase": 1.0,
    "add_to_cart": 0.5,
    "click": 0.25,
    "view": 0.1,
}


class TrainingUnavailable(RuntimeError):
    """`implicit` (or SciPy, which it needs) is not installed."""


def import_implicit() -> tuple[ModuleType, ModuleType, ModuleType]:
    """(implicit.cpu.als, implicit.cpu.bpr, scipy.sparse), or TrainingUnavailable naming the extra."""
    try:
        als = importlib.import_module("implicit.cpu.als")
        bpr = importlib.import_module("implicit.cpu.bpr")
        sparse = importlib.import_module("scipy.sparse")
    except ImportError as exc:
        raise TrainingUnavailable(
            f"training embeddings needs the `implicit` library, which is not installed ({exc}): "
            f"{TRAIN_EXTRA_HINT}"
        ) from exc
    return als, bpr, sparse


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    """How to train. `factors` 0: as many as the dim allows (dim for ALS, dim - 1 for BPR and the hybrid);
    fewer leave the remaining coordinates 0 (ALS, BPR; the hybrid always uses dim - 1). `hybrid`: the
    hybrid model's knobs (ALS and BPR ignore them)."""

    method: str = "als"
    factors: int = 0
    iterations: int = 15
    regularization: float = 0.1
    alpha: float = 20.0  # ALS: confidence = alpha * weight (BPR ignores it)
    learning_rate: float = 0.05  # BPR's SGD step (ALS ignores it)
    seed: int = 0
    hybrid: HybridParams = field(default_factory=HybridParams)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            choices = ", ".join(METHODS)
            raise ValueError(f"embedding training method must be one of {choices}, got {self.method!r}")
        checks = {
            "factors": self.factors >= 0,
            "iterations": self.iterations >= 1,
            "regularization": self.regularization >= 0.0 and np.isfinite(self.regularization),
            "alpha": self.alpha > 0.0 and np.isfinite(self.alpha),
            "learning_rate": self.learning_rate > 0.0 and np.isfinite(self.learning_rate),
            "seed": self.seed >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                value = getattr(self, name)
                raise ValueError(f"embedding training setting {name}: out of range, got {value!r}")

    def factors_for(self, dim: int) -> int:
        """The latent factors trained for `dim` (BPR's item bias takes one coordinate)."""
        room = dim if self.method == "als" else dim - 1
        if room < 1:
            raise ValueError(f"{self.method} needs an embedding dim of at least {dim - room + 1}, got {dim}")
        if self.factors > room:
            raise ValueError(
                f"{self.method} with dim {dim} trains at most {room} factors, got {self.factors}"
            )
        if self.method == "hybrid" and self.factors not in (0, room):
            raise ValueError(f"hybrid with dim {dim} trains {room} factors (dim - 1), got {self.factors}")
        return self.factors or room


@dataclass(frozen=True, slots=True)
class TrainedEmbeddings:
    items: NDArray[np.float32]  # [n_items, dim], row = item row
    users: NDArray[np.float32]  # [len(user_rows), dim]
    user_rows: NDArray[np.int64]  # the user indices seen in the interactions, ascending
    trained: NDArray[np.bool_]  # [n_items]: rows trained from interactions (else carried or 0)
    carried: int  # rows without interactions that kept a previous vector
    carry_map: NDArray[np.float64] | None  # [dim, dim]: previous item vector -> new (None: kept as is)
    scale: float  # the factor the raw scores were multiplied by (the hybrid: 1, not rescaled)
    seconds: float  # the library's fit (the hybrid: the whole model)


@dataclass(frozen=True, slots=True)
class Interactions:
    """Events summed per (user, item): `users[k]`, `items[k]` (item rows), `weights[k]`; `user_ids[u]` is
    the user of index u. `unknown_items`: item ids of events that are not in the catalog, with counts."""

    user_ids: tuple[str, ...]
    users: NDArray[np.int64]
    items: NDArray[np.int64]
    weights: NDArray[np.float32]
    events: int  # events that counted
    unknown_items: Mapping[str, int] = field(default_factory=dict)


def interactions_from_events(
    events: Iterable[tuple[str, str, str, int]],
    item_rows: Mapping[str, int],
    *,
    now_ms: int,
    event_weights: Mapping[str, float] = DEFAULT_EVENT_WEIGHTS,
    half_life_days: float | None = None,
    combine: str = "sum",
) -> Interactions:
    """(user id, item id, event type, Unix ms) events -> summed weights per (user, item).

    An event counts `event_weights[type]` (types not listed, and events without a user or an item, do not
    count), times 0.5 ** (age in days / `half_life_days`) with a half-life (age from `now_ms`; events
    from the future count as new; pairs whose sum decayed below 1e-6 are dropped). `combine` "max": a
    pair weighs its largest decayed event weight instead of the sum (the hybrid model: a purchase weighs
    0.5 ** (age of the last one / half-life), as in the retail importer). Items not in
    `item_rows` are counted in `unknown_items`, not trained. Users are numbered in order of their ids
    (sorted), so the same events give the same numbering."""
    if half_life_days is not None and not half_life_days > 0.0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days!r}")
    if combine not in ("sum", "max"):
        raise ValueError(f"combine must be 'sum' or 'max', got {combine!r}")
    take_max = combine == "max"
    summed: dict[tuple[str, int], float] = {}
    unknown: dict[str, int] = {}
    counted = 0
    for user, item, kind, ts in events:
        weight = event_weights.get(kind, 0.0)
        if weight <= 0.0 or not user or not item:
            continue
        row = item_rows.get(item)
        if row is None:
            unknown[item] = unknown.get(item, 0) + 1
            continue
        if half_life_days is not None:
            weight *= 0.5 ** (max(now_ms - ts, 0) / _DAY_MS / half_life_days)
        key = (user, row)
        if take_max:
            summed[key] = max(summed.get(key, 0.0), weight)
        else:
            summed[key] = summed.get(key, 0.0) + weight
        counted += 1
    summed = {key: w for key, w in summed.items() if w >= _MIN_WEIGHT}  # decayed to nothing
    user_ids = tuple(sorted({user for user, _ in summed}))
    index = {user: n for n, user in enumerate(user_ids)}
    pairs = sorted(summed.items(), key=lambda kv: (index[kv[0][0]], kv[0][1]))
    return Interactions(
        user_ids=user_ids,
        users=np.array([index[user] for (user, _), _ in pairs], dtype=np.int64),
        items=np.array([row for (_, row), _ in pairs], dtype=np.int64),
        weights=np.array([w for _, w in pairs], dtype=np.float32),
        events=counted,
        unknown_items=unknown,
    )


def _interaction_matrix(
    sparse: ModuleType,
    users: NDArray[np.int64],
    items: NDArray[np.int64],
    weights: NDArray[np.float32],
    n_users: int,
    n_items: int,
) -> Any:
    """The users x items CSR matrix of summed weights (pairs given twice add up)."""
    matrix = sparse.coo_matrix((weights, (users, items)), shape=(n_users, n_items), dtype=np.float32).tocsr()
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


def _checked(
    users: NDArray[Any], items: NDArray[Any], weights: NDArray[Any], n_items: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
    u = np.asarray(users, dtype=np.int64)
    i = np.asarray(items, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float32)
    if not (u.ndim == i.ndim == w.ndim == 1) or not (u.shape == i.shape == w.shape):
        raise ValueError("users, items and weights must be 1-d arrays of the same length")
    if u.size == 0:
        raise ValueError("no interactions to train on")
    if int(u.min()) < 0:
        raise ValueError(f"user indices must be >= 0, got {int(u.min())}")
    if int(i.min()) < 0 or int(i.max()) >= n_items:
        raise ValueError(f"item indices must be in [0, {n_items}), got {int(i.min())}..{int(i.max())}")
    if not np.all(np.isfinite(w)) or float(w.min()) <= 0.0:
        raise ValueError("interaction weights must be finite and > 0")
    return u, i, w


def _fit(settings: TrainingSettings, matrix: Any, factors: int) -> tuple[NDArray[Any], NDArray[Any], float]:
    """(user factors, item factors, seconds) from `implicit`, single-threaded."""
    als, bpr, _ = import_implicit()
    threadpoolctl = importlib.import_module("threadpoolctl")  # a dependency of implicit
    # BLAS on one thread from the model's construction on (implicit checks, and warns, there).
    with threadpoolctl.threadpool_limits(1, "blas"):
        if settings.method == "als":
            model = als.AlternatingLeastSquares(
                factors=factors,
                regularization=settings.regularization,
                alpha=settings.alpha,
                iterations=settings.iterations,
                num_threads=1,
                random_state=settings.seed,
            )
        else:
            model = bpr.BayesianPersonalizedRanking(
                factors=factors,
                learning_rate=settings.learning_rate,
                regularization=settings.regularization,
                iterations=settings.iterations,
                num_threads=1,
                random_state=settings.seed,
            )
        started = time.perf_counter()
        model.fit(matrix, show_progress=False)
        seconds = time.perf_counter() - started
    return np.asarray(model.user_factors), np.asarray(model.item_factors), seconds


def _rescale(
    users: NDArray[np.float64], items: NDArray[np.float64], u: NDArray[np.int64], i: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Equal mean norms for users and items, then the median training-pair score TARGET_SCORE."""
    user_norm = float(np.linalg.norm(users, axis=1).mean())
    item_norm = float(np.linalg.norm(items[np.unique(i)], axis=1).mean())
    if user_norm > 0.0 and item_norm > 0.0:
        balance = np.sqrt(user_norm / item_norm)
        users, items = users / balance, items * balance
    pair_scores = np.einsum("ij,ij->i", users[u], items[i])
    median = float(np.median(pair_scores))
    scale = TARGET_SCORE / median if median > 0.0 and np.isfinite(median) else 1.0
    root = np.sqrt(scale)
    return users * root, items * root, scale


def _carry_map(
    previous: NDArray[np.float64], new: NDArray[np.float64], shared: NDArray[np.bool_]
) -> NDArray[np.float64] | None:
    """The least-squares linear map M with previous[shared] @ M ~ new[shared]; None when too few rows."""
    dim = new.shape[1]
    if previous.shape[1] != dim or int(shared.sum()) < _MIN_CARRY_FACTOR * dim:
        return None
    solution, *_ = np.linalg.lstsq(previous[shared], new[shared], rcond=None)
    mapped: NDArray[np.float64] = np.asarray(solution, dtype=np.float64)
    return mapped if np.all(np.isfinite(mapped)) else None


def carry_users(vectors: NDArray[Any], carry_map: NDArray[np.float64] | None) -> NDArray[np.float32]:
    """User vectors of the previous model in the new factor space: u @ pinv(M).T keeps their dot products
    with the carried item rows (previous @ M). Unchanged without a map."""
    old = np.asarray(vectors, dtype=np.float64)
    if carry_map is None:
        return old.astype(np.float32)
    carried: NDArray[np.float32] = (old @ np.linalg.pinv(carry_map).T).astype(np.float32)
    return carried


def _hybrid(
    users: NDArray[np.int64],
    items: NDArray[np.int64],
    weights: NDArray[np.float32],
    n_users: int,
    n_items: int,
    dim: int,
    settings: TrainingSettings,
    item_terms: Sequence[Sequence[str]] | None,
    popularity: NDArray[Any] | None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """(user vectors, item vectors, seconds) of the hybrid model (`core/hybrid_embeddings.py`)."""
    cells = dense_cells(n_users, n_items)
    if cells > MAX_DENSE_CELLS:
        raise ValueError(
            f"hybrid embeddings for {n_users} users x {n_items} items need {cells * 8 >> 20} MiB of dense "
            f"arrays (limit {MAX_DENSE_CELLS * 8 >> 20} MiB): use the als method for a catalog this large"
        )
    if item_terms is not None and len(item_terms) != n_items:
        raise ValueError(f"item_terms must have one entry per item row ({n_items}), got {len(item_terms)}")
    if popularity is None:
        prior = np.bincount(items, minlength=n_items).astype(np.float32)  # pairs are unique per user
    else:
        prior = np.asarray(popularity, dtype=np.float32)
        if prior.shape != (n_items,) or not np.all(np.isfinite(prior)) or float(prior.min(initial=0.0)) < 0:
            raise ValueError(f"popularity must be [{n_items}] finite and >= 0, got shape {list(prior.shape)}")
    started = time.perf_counter()
    matrix = np.zeros((n_users, n_items))
    np.add.at(matrix, (users, items), weights.astype(np.float64))
    terms: Sequence[Sequence[str]] = item_terms if item_terms is not None else [()] * n_items
    similarity = item_similarity(matrix > 0, terms, settings.hybrid)
    new_users, new_items = hybrid_embeddings(
        matrix, similarity, prior, dim, settings.hybrid, seed=settings.seed
    )
    return new_users, new_items, time.perf_counter() - started


def train_embeddings(
    users: NDArray[Any],
    items: NDArray[Any],
    weights: NDArray[Any],
    *,
    n_items: int,
    dim: int,
    previous: NDArray[Any] | None,
    settings: TrainingSettings,
    item_terms: Sequence[Sequence[str]] | None = None,
    popularity: NDArray[Any] | None = None,
) -> TrainedEmbeddings:
    """Item embeddings [n_items, dim] and the seen users' vectors from (user, item, weight) interactions.

    `users` are indices from 0 (any numbering the caller keeps; `user_rows` of the result says which
    were seen), `items` are item rows < `n_items`. `previous`: the item embeddings now ([rows, dim], rows
    may be fewer than `n_items` when the catalog grew), whose rows without interactions are carried
    over (module doc); rows neither trained nor in `previous` are 0. The hybrid method also takes
    `item_terms` (the words of each row's item; None: no words, co-purchase alone) and `popularity` (per
    row, the prior; None: distinct users per item in the interactions). Raises ValueError for bad input
    or no interactions (and the hybrid for a model past `MAX_DENSE_CELLS`), TrainingUnavailable without
    `implicit` (ALS, BPR).
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    factors = settings.factors_for(dim)
    u, i, w = _checked(users, items, weights, n_items)
    if previous is not None:
        previous = np.asarray(previous)
        if previous.ndim != 2 or previous.shape[1] != dim or previous.shape[0] > n_items:
            raise ValueError(
                f"previous item embeddings must be [at most {n_items}, {dim}], got {list(previous.shape)}"
            )
    user_rows, user_of = np.unique(u, return_inverse=True)
    if settings.method == "hybrid":
        new_users, new_items, seconds = _hybrid(
            user_of.astype(np.int64), i, w, len(user_rows), n_items, dim, settings, item_terms, popularity
        )
        trained = np.any(new_items[:, : dim - 1] != 0.0, axis=1)  # rows with factors (else the prior only)
        scale = 1.0
    else:
        _, _, sparse = import_implicit()
        matrix = _interaction_matrix(sparse, user_of.astype(np.int64), i, w, len(user_rows), n_items)
        raw_users, raw_items, seconds = _fit(settings, matrix, factors)
        if not (np.all(np.isfinite(raw_users)) and np.all(np.isfinite(raw_items))):
            raise ValueError(
                f"{settings.method} diverged (non-finite factors): lower the learning rate or alpha"
            )
        width = raw_items.shape[1]  # factors (+ BPR's bias column)
        new_users = np.zeros((len(user_rows), dim))
        new_items = np.zeros((n_items, dim))
        new_users[:, :width] = raw_users
        new_items[:, :width] = raw_items
        if settings.method == "bpr":  # implicit puts the bias last: move it to the last coordinate
            new_users[:, [width - 1, dim - 1]] = new_users[:, [dim - 1, width - 1]]
            new_items[:, [width - 1, dim - 1]] = new_items[:, [dim - 1, width - 1]]
        trained = np.zeros(n_items, dtype=np.bool_)
        trained[i] = True
        new_items[~trained] = 0.0
        new_users, new_items, scale = _rescale(new_users, new_items, user_of.astype(np.int64), i)
    carry_map = None
    carried = 0
    if previous is not None and previous.shape[0] > 0:
        old = np.asarray(previous, dtype=np.float64)
        rows = old.shape[0]
        known = np.any(old != 0.0, axis=1)
        carry_map = _carry_map(old, new_items[:rows], known & trained[:rows])
        keep = known & ~trained[:rows]
        new_items[:rows][keep] = old[keep] @ carry_map if carry_map is not None else old[keep]
        carried = int(keep.sum())
    return TrainedEmbeddings(
        items=new_items.astype(np.float32),
        users=new_users.astype(np.float32),
        user_rows=user_rows.astype(np.int64),
        trained=trained,
        carried=carried,
        carry_map=carry_map,
        scale=scale,
        seconds=seconds,
    )
