"""The hybrid embedding model: purchases smoothed through an item similarity that is half co-purchase and
half the items' words, factorized by a truncated SVD. NumPy only.

One implementation, two callers: the retail importer (`edgewise.offline.retail` builds a bundle's
`item_embeddings` and `user_embeddings` with it) and the control plane's embeddings refresh with method
`hybrid` (`core/embedding_training.train_embeddings`, `[refresh] embeddings_method = "hybrid"`), which
recomputes the same vectors from the forwarded events and the catalog's item tags.

Inputs: `weights` [users, items], each user's interactions weighted by age (the importer: 0.5 ** (age of
the last purchase / half-life); the refresh: the largest decayed event weight per pair); the items' words
(`terms`: the importer passes the description's words, the refresh the item records' tags); a popularity
per item (the prior). The model:

- item similarity S = w * co-purchase cosine + (1 - w) * cosine of the idf-weighted words
  (`item_similarity`, w = `HybridParams.copurchase_weight`); product lines (SPACEBOY, RETROSPOT ...)
  share rare words, which ties items together that few users bought together;
- X = weights @ S, each row scaled to a maximum of 1 (the item-kNN score of every item for the user),
  factorized by a randomized truncated SVD (`top_right_singular_vectors`, seeded);
- item vector [c V_i, p_i], user vector [X_u V / c, popularity_weight], with p the popularity prior
  log(1 + popularity) / max: user . item is the rank-(dim - 1) kNN score plus a weighted prior.

Every item gets a row, also one nobody bought yet: its column of X is the similarity of its words (and
co-purchases) to what the user bought. Cost: dense float64 arrays of users x items (weights, X) and of
items x items (the similarities): `dense_cells` counts them (8 bytes each).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MAX_DENSE_CELLS",
    "HybridParams",
    "copurchase_similarity",
    "dense_cells",
    "hybrid_embeddings",
    "item_similarity",
    "term_similarity",
    "top_right_singular_vectors",
]

FloatArray = NDArray[np.float64]
# users x items + 3 x items x items float64 cells the refresh accepts (2.4 GB); beyond: use als.
MAX_DENSE_CELLS: Final = 300_000_000


@dataclass(frozen=True, slots=True)
class HybridParams:
    """The knobs of the hybrid model (the retail importer's defaults, chosen on validation folds inside its
    training period: BENCHMARKS.md)."""

    copurchase_weight: float = 0.5  # share of co-purchase cosine in the item similarity (rest: words)
    copurchase_shrink: float = 10.0  # cosine co(i, j) / (sqrt(n_i n_j) + shrink)
    popularity_weight: float = 1.0  # weight of the popularity prior in user . item
    similar_scale: float = 0.35  # RMS norm of the item factor rows (sets the pdp_similar balance)

    def __post_init__(self) -> None:
        checks = {
            "copurchase_weight": 0.0 <= self.copurchase_weight <= 1.0,
            "copurchase_shrink": self.copurchase_shrink >= 0.0,
            "popularity_weight": self.popularity_weight >= 0.0,
            "similar_scale": self.similar_scale > 0.0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or not math.isfinite(value):
                raise ValueError(f"hybrid model parameter {name}: out of range, got {value!r}")


def dense_cells(n_users: int, n_items: int) -> int:
    """The float64 cells the model holds at once: weights and X (users x items), three items x items."""
    return 2 * n_users * n_items + 3 * n_items * n_items


def copurchase_similarity(bought: NDArray[np.bool_], shrink: float) -> FloatArray:
    """Item x item cosine of the customer sets, shrunk: co(i, j) / (sqrt(n_i * n_j) + shrink).

    The diagonal is 0 (an item is not its own neighbor).
    """
    binary = bought.astype(np.float64)
    co = binary.T @ binary
    buyers = np.diag(co).copy()
    sim: FloatArray = co / (np.sqrt(np.outer(buyers, buyers)) + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    return sim


def term_similarity(terms: Sequence[Iterable[str]]) -> FloatArray:
    """Item x item cosine of the items' words, idf-weighted (rare words shared by a product line weigh
    most). `terms[row]`: the words of the item of that row (repeats count once; none: a zero row). The
    diagonal is 0."""
    vocabulary: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for row, words in enumerate(terms):
        for word in sorted(set(words)):
            rows.append(row)
            cols.append(vocabulary.setdefault(word, len(vocabulary)))
    n_items = len(terms)
    matrix = np.zeros((n_items, max(len(vocabulary), 1)))
    matrix[rows, cols] = 1.0
    idf = np.log((n_items + 1.0) / (matrix.sum(axis=0) + 1.0))
    weighted = matrix * idf[None, :]
    weighted /= np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-12)
    sim: FloatArray = weighted @ weighted.T
    np.fill_diagonal(sim, 0.0)
    return sim


def item_similarity(
    bought: NDArray[np.bool_], terms: Sequence[Iterable[str]], params: HybridParams
) -> FloatArray:
    """S = w * co-purchase cosine (shrunk) + (1 - w) * word cosine, w = `params.copurchase_weight`."""
    copurchase = copurchase_similarity(bought, params.copurchase_shrink)
    w = params.copurchase_weight
    similarity: FloatArray = w * copurchase + (1.0 - w) * term_similarity(terms)
    return similarity


def top_right_singular_vectors(matrix: FloatArray, rank: int, seed: int) -> FloatArray:
    """The top `rank` right singular vectors of `matrix` [m, n] as columns of an [n, rank] array.

    Randomized SVD (Halko, Martinsson, Tropp 2011: Gaussian range finder, 10 extra columns, 6 power
    iterations with re-orthonormalization), far cheaper than a full `eigh` of the n x n Gram matrix
    (0.3 s against 11 s for 3k items on a 2-core machine). On the retail data the rank-31 projection
    it gives differs from `eigh`'s by 2% (relative Frobenius norm of the projected scores).
    Deterministic for a seed; each vector's sign is fixed so that its largest entry is positive.
    """
    n = matrix.shape[1]
    width = min(rank + 10, min(matrix.shape))
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(matrix @ rng.standard_normal((n, width)))
    for _ in range(6):
        row_basis, _ = np.linalg.qr(matrix.T @ basis)
        basis, _ = np.linalg.qr(matrix @ row_basis)
    _, _, vt = np.linalg.svd(basis.T @ matrix, full_matrices=False)
    vectors: FloatArray = vt[:rank].T.copy()
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    vectors *= np.where(signs == 0, 1.0, signs)[None, :]
    return vectors


def hybrid_embeddings(
    weights: FloatArray,
    similarity: FloatArray,
    popularity: NDArray[np.float32],
    dim: int,
    params: HybridParams,
    *,
    seed: int = 0,
) -> tuple[FloatArray, FloatArray]:
    """User and item vectors whose dot product is the model's score.

    `weights` [users, items]: each user's interactions, weighted by age. `similarity` [items, items]
    (`item_similarity`). The user x item matrix is smoothed through the item similarity (X = weights @
    similarity, each row scaled to a maximum of 1: the item-kNN score), then factorized by a truncated
    SVD (the top `dim - 1` right singular vectors V of X, `top_right_singular_vectors`). The last
    coordinate carries a popularity prior p = log(1 + popularity) / max. Item vector [c V_i, p_i], user
    vector [X_u V / c, w], so user . item = X_u V V_i^T + w p_i: the rank-(dim-1) kNN score plus w times
    the prior (w = `params.popularity_weight`). `c` scales the item factor rows to an RMS norm of
    `params.similar_scale`; it cancels out of user . item and only sets how strongly the mean of seed
    item vectors (pdp_similar) weighs similarity against the prior.
    """
    n_users, n_items = weights.shape
    rank = min(dim - 1, n_users, n_items)
    smoothed = weights @ similarity
    smoothed /= np.maximum(np.abs(smoothed).max(axis=1, keepdims=True), 1e-12)
    users = np.zeros((n_users, dim))
    items = np.zeros((n_items, dim))
    if rank > 0:
        vectors = top_right_singular_vectors(smoothed, rank, seed)
        scale = params.similar_scale * math.sqrt(n_items / rank)
        items[:, :rank] = vectors * scale
        users[:, :rank] = (smoothed @ vectors) / scale
    prior = np.log1p(popularity.astype(np.float64))
    top = float(prior.max()) if n_items else 0.0
    items[:, dim - 1] = prior / top if top > 0 else 0.0
    users[:, dim - 1] = params.popularity_weight
    return users, items
