"""The NumPy baselines of the scoring benchmark (`python -m bench.scoring`): the fastest reasonable NumPy
top-k, against which the Cython kernels of `edgewise.core.scoring` are timed.

Same contract as `edgewise.core.scoring.topk_dot_into` / `topk_scores_into` (top min(k, candidates),
score descending, ties by the lower row first) and the same argument checks as that module's references,
so the comparison includes validation on both sides. tests/test_scoring.py checks them against the
references.
"""

from __future__ import annotations

import numpy as np

from edgewise.core.scoring import (
    _F32,
    Float32Array,
    Int32Array,
    UInt8Array,
    _check_array,
    _check_reference_inputs,
)

__all__ = ["topk_dot_numpy", "topk_scores_numpy"]


def topk_scores_numpy(scores: Float32Array, mask: UInt8Array, k: int) -> tuple[Int32Array, Float32Array]:
    """Fast NumPy top-k (argpartition, then sort the k): the benchmark baseline. Same contract.

    Candidates are compacted first (scores[mask]), so masked-out rows can never be returned; the
    partition's k-th boundary is then widened to every candidate tied with it, so ties resolve by index
    exactly as in the reference.
    """
    _check_array("scores", scores, _F32, 1)
    _check_reference_inputs(scores.shape[0], mask, k)
    candidates = np.flatnonzero(mask)
    m = candidates.shape[0]
    if k == 0 or m == 0:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32)
    cand_scores = scores[candidates]
    if k < m:
        part = np.argpartition(-cand_scores, k - 1)
        kth = cand_scores[part[k - 1]]
        # Everything strictly above the boundary, plus every candidate equal to it (ties go by index).
        keep = np.flatnonzero(cand_scores >= kth) if np.count_nonzero(cand_scores == kth) > 1 else part[:k]
    else:
        keep = np.arange(m)
    kept_scores = cand_scores[keep]
    order = np.lexsort((keep, -kept_scores))[:k]
    chosen = keep[order]
    return candidates[chosen].astype(np.int32), cand_scores[chosen].astype(np.float32)


def topk_dot_numpy(
    matrix: Float32Array, query: Float32Array, mask: UInt8Array, k: int
) -> tuple[Int32Array, Float32Array]:
    """Fast NumPy `topk_dot` (matmul, argpartition, sort of the k): the benchmark baseline."""
    _check_array("matrix", matrix, _F32, 2)
    _check_array("query", query, _F32, 1)
    if query.shape[0] != matrix.shape[1]:
        raise ValueError(f"query has length {query.shape[0]}, expected d={matrix.shape[1]}")
    scores: Float32Array = matrix @ query
    return topk_scores_numpy(scores, mask, k)
