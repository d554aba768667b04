"""Top-k scoring: a fused dot-product + partial-heap kernel in Cython, with plain NumPy references.

The decision pipeline scores candidates with `topk_dot_into` (item embeddings . user embedding over the
candidate mask) and ranks popularity with `topk_scores_into`, once per request, into preallocated
per-thread buffers. Both run the compiled kernel (`edgewise.core._scoring`) with the GIL released after
its entry point has checked dtypes, shapes, contiguity and sizes; nothing is allocated on that path.
Invalid arguments raise ValueError naming the argument.

Contract shared by every function in this module (kernels and references alike):

- `matrix` is float32 [n, d] C-contiguous, `query` float32 [d], `scores` float32 [n], `mask` uint8 [n]
  (nonzero = candidate). Values must be finite: the caller validates arrays when they are loaded.
- The result is the top min(k, number of candidates) candidates, highest score first; equal scores are
  broken by the lower row index first.
- k == 0 or an empty mask gives an empty result; k < 0 is an error.

The kernel is compiled with -ffast-math, so a dot product of non-integer floats may differ from NumPy's
in the last bits (summation order); integer-valued inputs give exact, identical results.

`topk_dot_reference` and `topk_scores_reference` are the plain NumPy specification that the tests
compare the kernel against (the benchmark's fast NumPy baseline lives in bench/numpy_topk.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NoReturn, TypeVar

import numpy as np
from numpy.typing import NDArray

from edgewise.core import _scoring

__all__ = [
    "BLOCK",
    "HALF_MAX",
    "INT8_MAX_DIMS",
    "MAX_ROWS",
    "HalfIndex",
    "Int8Index",
    "block_rows",
    "half_index",
    "int8_bounds_reference",
    "int8_index",
    "int8_query_reference",
    "neighbor_candidates_into",
    "neighbor_candidates_reference",
    "score_order",
    "topk_dot",
    "topk_dot_into",
    "topk_dot_reference",
    "topk_half_into",
    "topk_int8_into",
    "topk_int8_reference",
    "topk_pairs_into",
    "topk_pairs_reference",
    "topk_scores",
    "topk_scores_into",
    "topk_scores_reference",
    "topk_sorted_into",
]

MAX_ROWS: Final = 2**31 - 1
"""Row indices are returned as int32: at most this many rows."""

BLOCK: Final = 8
"""Rows per group of the blocked layout (`block_rows`): one 8-lane vector of scores per group."""

_F32: Final = np.dtype(np.float32)
_I32: Final = np.dtype(np.int32)
_U8: Final = np.dtype(np.uint8)

_Scalar = TypeVar("_Scalar", bound=np.generic)
Float32Array = NDArray[np.float32]
Int32Array = NDArray[np.int32]
UInt8Array = NDArray[np.uint8]


def _check_array(
    name: str, a: object, dtype: np.dtype[np.generic], ndim: int, *, writable: bool = False
) -> None:
    # One condition for the common, valid case (this runs five times per request); messages after it.
    if (
        type(a) is np.ndarray
        and a.dtype == dtype
        and a.ndim == ndim
        and a.flags.c_contiguous
        and (a.flags.writeable or not writable)
    ):
        return
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        hint = " (view a bool mask with .view(np.uint8))" if a.dtype == np.bool_ else ""
        raise ValueError(f"{name} must have dtype {dtype}, got {a.dtype}{hint}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} must be writable")


def _check_k(k: int) -> None:
    if type(k) is int and k >= 0:
        return
    if not isinstance(k, (int, np.integer)) or isinstance(k, (bool, np.bool_)):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")


def _check_mask_and_outputs(
    n: int, mask: UInt8Array, k: int, out_idx: Int32Array, out_scores: Float32Array
) -> None:
    _check_array("mask", mask, _U8, 1)
    if mask.shape[0] != n:
        raise ValueError(f"mask has length {mask.shape[0]}, expected {n} (one entry per row)")
    _check_k(k)
    _check_array("out_idx", out_idx, _I32, 1, writable=True)
    _check_array("out_scores", out_scores, _F32, 1, writable=True)
    if out_idx.shape[0] < k:
        raise ValueError(f"out_idx has length {out_idx.shape[0]}, needs at least k={k}")
    if out_scores.shape[0] < k:
        raise ValueError(f"out_scores has length {out_scores.shape[0]}, needs at least k={k}")
    if n > MAX_ROWS:
        raise ValueError(f"{n} rows: at most {MAX_ROWS} rows are supported (int32 indices)")


def _validate_dot(
    matrix: Float32Array,
    query: Float32Array,
    mask: UInt8Array,
    k: int,
    out_idx: Int32Array,
    out_scores: Float32Array,
) -> None:
    _check_array("matrix", matrix, _F32, 2)
    _check_array("query", query, _F32, 1)
    n, d = matrix.shape
    if query.shape[0] != d:
        raise ValueError(f"query has length {query.shape[0]}, expected d={d} (matrix is {n} x {d})")
    _check_mask_and_outputs(n, mask, k, out_idx, out_scores)


def topk_dot_into(
    matrix: Float32Array,
    query: Float32Array,
    mask: UInt8Array,
    k: int,
    out_idx: Int32Array,
    out_scores: Float32Array,
) -> int:
    """Write the top-k candidate rows by dot(matrix[i], query) into out_idx/out_scores.

    Returns how many were written, min(k, count of nonzero mask entries); out_idx[:written] holds the
    row indices, best first (ties: lower index first), out_scores[:written] their scores. Entries past
    `written` are left unspecified. Rows whose mask is 0 are not read. Releases the GIL while computing.
    Raises ValueError naming the offending argument on a wrong dtype, shape, contiguity or size.
    """
    _check_k(k)
    if type(mask) is not np.ndarray or mask.dtype is not _U8:
        # The compiled entry point would take a bool mask (same bytes) or any buffer: keep to the contract.
        _validate_dot(matrix, query, mask, k, out_idx, out_scores)
    try:
        # The compiled entry point checks everything (typed memoryviews and sizes) at C speed; on a
        # failure the checks are run again here, in Python, to say which argument is wrong.
        return _scoring.topk_dot_into(matrix, query, mask, k, out_idx, out_scores)
    except (ValueError, TypeError, BufferError) as exc:
        _validate_dot(matrix, query, mask, k, out_idx, out_scores)
        raise ValueError(f"invalid arguments: {exc}") from exc


def topk_scores_into(
    scores: Float32Array,
    mask: UInt8Array,
    k: int,
    out_idx: Int32Array,
    out_scores: Float32Array,
) -> int:
    """Write the top-k candidates of a precomputed score vector into out_idx/out_scores.

    Same contract and output order as `topk_dot_into`, over `scores[i]` instead of a dot product.
    """
    _check_k(k)
    if type(mask) is not np.ndarray or mask.dtype is not _U8:
        _check_array("mask", mask, _U8, 1)
    try:
        return _scoring.topk_scores_into(scores, mask, k, out_idx, out_scores)
    except (ValueError, TypeError, BufferError) as exc:
        _check_array("scores", scores, _F32, 1)
        _check_mask_and_outputs(scores.shape[0], mask, k, out_idx, out_scores)
        raise ValueError(f"invalid arguments: {exc}") from exc


def block_rows(matrix: NDArray[_Scalar]) -> NDArray[_Scalar]:
    """The blocked layout of an [n, d] matrix: [ceil(n / 8), d, 8] of the same dtype, rows padded with zeros.

    Block b holds rows 8b..8b+7 dimension-major, so the kernel computes 8 scores as one vector per
    dimension (`half_index` stores this layout in half precision).
    """
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2:
        raise ValueError("matrix must be a 2-dimensional numpy.ndarray")
    n, d = matrix.shape
    n_blocks = -(-n // BLOCK)
    padded = np.zeros((n_blocks * BLOCK, d), dtype=matrix.dtype)
    padded[:n] = matrix
    blocked: NDArray[_Scalar] = np.ascontiguousarray(padded.reshape(n_blocks, BLOCK, d).transpose(0, 2, 1))
    return blocked


HALF_MAX: Final = 60_000.0
"""Matrices with a larger absolute value get no half-precision index (binary16 tops out at 65,504)."""


@dataclass(frozen=True, slots=True)
class HalfIndex:
    """A half-precision copy of an embedding matrix in `block_rows` layout, for `topk_half_into`."""

    blocks: NDArray[np.uint16]  # [ceil(n / 8), d, 8] IEEE binary16 bit patterns
    col_absmax: Float32Array  # [d] largest |value| of each column (bounds the rounding error)
    rows: int


def half_index(matrix: Float32Array) -> HalfIndex | None:
    """The half-precision index of `matrix`, or None when a value does not fit binary16 (|x| > HALF_MAX)."""
    _check_array("matrix", matrix, _F32, 2)
    n, d = matrix.shape
    col_absmax = np.abs(matrix).max(axis=0).astype(np.float32) if n else np.zeros(d, dtype=np.float32)
    if d and float(col_absmax.max()) > HALF_MAX:
        return None
    # Converted first, then blocked: the transient copies are half-size (this runs once per version).
    blocks = block_rows(matrix.astype(np.float16)).view(np.uint16)
    return HalfIndex(np.ascontiguousarray(blocks), np.ascontiguousarray(col_absmax), n)


def topk_half_into(
    index: HalfIndex,
    matrix: Float32Array,
    query: Float32Array,
    mask: UInt8Array,
    k: int,
    work: Float32Array,
    cand: Int32Array,
    out_idx: Int32Array,
    out_scores: Float32Array,
) -> int:
    """`topk_dot_into`'s result (same contract and order), reading half the bytes for the scan.

    Scores every row approximately from `index` (binary16), keeps every candidate that may still be in
    the top k given a bound on the rounding error, and scores only those exactly from `matrix` (the
    float32 matrix `index` was built from). `work` (at least n_blocks * 8 floats) and `cand` (at least
    n ints) are scratch buffers.
    """
    _check_k(k)
    try:
        return _scoring.topk_half_into(
            index.blocks, index.col_absmax, matrix, query, mask, k, work, cand, out_idx, out_scores
        )
    except (ValueError, TypeError, BufferError) as exc:
        built = (index.rows, index.blocks.shape[1])
        _raise_scan_error(
            exc, built, index.blocks.shape[0] * BLOCK, matrix, query, mask, k, work, cand, out_idx, out_scores
        )


def _raise_scan_error(
    exc: Exception,
    built: tuple[int, int],
    work_floats: int,
    matrix: Float32Array,
    query: Float32Array,
    mask: UInt8Array,
    k: int,
    work: Float32Array,
    cand: Int32Array,
    out_idx: Int32Array,
    out_scores: Float32Array,
) -> NoReturn:
    """What is wrong with the arguments of a scan over an index (`topk_half_into`, `topk_int8_into`)
    whose kernel refused them with `exc`: the index built for `built` (rows, dims) and needing
    `work_floats` floats of `work`."""
    _validate_dot(matrix, query, mask, k, out_idx, out_scores)
    if built != matrix.shape:
        raise ValueError(f"index was built for {built[0]} x {built[1]}, matrix is {matrix.shape}") from exc
    _check_array("work", work, _F32, 1, writable=True)
    _check_array("cand", cand, _I32, 1, writable=True)
    if work.shape[0] < work_floats or cand.shape[0] < matrix.shape[0]:
        raise ValueError(f"work needs {work_floats} floats and cand {matrix.shape[0]} ints") from exc
    raise ValueError(f"invalid arguments: {exc}") from exc


INT8_MAX_DIMS: Final = 4096
"""Matrices with more dimensions get no int8 index (the scan quantizes the query on the stack)."""

_INT8_LO: Final = 2.0**-50
_INT8_BUILD_ROWS: Final = 4096
_INT8_HI: Final = 2.0**50


@dataclass(frozen=True, slots=True)
class Int8Index:
    """An int8 copy of an embedding matrix with a scale per row, for `topk_int8_into`.

    Row r is x ~= scale[r] * x~ with |x~| <= 127, stored as the unsigned bytes x~ + 128 in blocks of 8 rows
    by groups of 4 dimensions: blocks[b, g] holds dimensions 4g..4g+3 of rows 8b..8b+7, row-major (one
    256-bit register, what one `vpdpbusd` multiplies). Rows and dimensions are padded with x~ = 0.
    """

    blocks: NDArray[np.uint8]  # [ceil(n / 8), ceil(d / 4), 32]: x~ + 128
    scale: Float32Array  # [n_blocks * 8] s_r (0 for a zero row and for padding)
    tl1: Float32Array  # [n_blocks * 8] >= s_r * sum |x~| (rounded up)
    err_ratio: float  # E: |x - s_r x~| <= E * s_r for every element of every row (rounded up)
    rows: int
    dims: int

    @property
    def nbytes(self) -> int:
        """The bytes of its arrays."""
        return int(self.blocks.nbytes + self.scale.nbytes + self.tl1.nbytes)


def _round_up_f32(exact: NDArray[np.float64]) -> Float32Array:
    """The float32 values >= `exact` nearest to it."""
    out: Float32Array = exact.astype(np.float32)
    low = out.astype(np.float64) < exact
    out[low] = np.nextafter(out[low], np.float32(np.inf))
    return out


def int8_index(matrix: Float32Array) -> Int8Index | None:
    """The int8 index of `matrix`, or None when the scan does not handle it: more than INT8_MAX_DIMS
    dimensions, or a nonzero row whose largest |value| is outside [2^-50, 2^50]."""
    _check_array("matrix", matrix, _F32, 2)
    n, d = matrix.shape
    if d > INT8_MAX_DIMS:
        return None
    scale = np.zeros(n, dtype=np.float32)
    quant = np.zeros((n, d), dtype=np.int8)
    ratio, t_exact = 0.0, np.zeros(n)
    # In chunks of rows: float64 temporaries of the whole matrix would cost more in page faults than in
    # arithmetic (100k x 32: 0.45 s against 0.05 s).
    for start in range(0, n, _INT8_BUILD_ROWS):
        x = matrix[start : start + _INT8_BUILD_ROWS].astype(np.float64)
        rowmax = np.abs(x).max(axis=1) if d else np.zeros(x.shape[0])
        nonzero = rowmax > 0
        if np.any(nonzero & ((rowmax < _INT8_LO) | (rowmax > _INT8_HI))):
            return None
        part_scale = (rowmax / 127).astype(np.float32)
        s64 = part_scale.astype(np.float64)
        safe = np.where(nonzero, s64, 1.0)
        part = np.clip(np.rint(x / safe[:, None]), -127, 127)
        # |x - s_r x~| exactly (s_r x~ fits a double), as a ratio of s_r
        if d and x.shape[0]:
            ratio = max(ratio, float((np.abs(x - s64[:, None] * part).max(axis=1) / safe).max()))
        scale[start : start + x.shape[0]] = part_scale
        quant[start : start + x.shape[0]] = part
        t_exact[start : start + x.shape[0]] = s64 * np.abs(part).sum(axis=1)
    ratio = float(_round_up_f32(np.array([ratio if n else 0.5]))[0])
    n_blocks, groups = -(-n // BLOCK), -(-d // 4)
    padded = np.full((n_blocks * BLOCK, groups * 4), 128, dtype=np.uint8)
    padded[:n, :d] = (quant.astype(np.int16) + 128).astype(np.uint8)
    blocks = padded.reshape(n_blocks, BLOCK, groups, 4).transpose(0, 2, 1, 3).reshape(n_blocks, groups, 32)
    scales = np.zeros(n_blocks * BLOCK, dtype=np.float32)
    scales[:n] = scale
    tl1 = np.zeros(n_blocks * BLOCK, dtype=np.float32)
    tl1[:n] = _round_up_f32(t_exact)
    return Int8Index(np.ascontiguousarray(blocks), scales, tl1, ratio, n, d)


def topk_int8_into(
    index: Int8Index,
    matrix: Float32Array,
    query: Float32Array,
    mask: UInt8Array,
    k: int,
    work: Float32Array,
    cand: Int32Array,
    out_idx: Int32Array,
    out_scores: Float32Array,
) -> int:
    """`topk_dot_into`'s result (same contract, order and scores to the bit as `topk_half_into`), scanning
    the int8 copy: every row gets an interval [A - B, A + B] around the exact score from integer dot
    products, and only the candidates whose interval reaches the k-th best lower bound are scored exactly
    from `matrix` (the float32 matrix `index` was built from). `work` (at least n floats) and `cand` (at
    least n ints) are scratch buffers."""
    _check_k(k)
    try:
        return _scoring.topk_int8_into(
            index.blocks,
            index.scale,
            index.tl1,
            index.err_ratio,
            matrix,
            query,
            mask,
            k,
            work,
            cand,
            out_idx,
            out_scores,
        )
    except (ValueError, TypeError, BufferError) as exc:
        built = (index.rows, index.dims)
        _raise_scan_error(
            exc, built, matrix.shape[0], matrix, query, mask, k, work, cand, out_idx, out_scores
        )


def int8_query_reference(
    query: Float32Array, qmax: int = 127
) -> tuple[NDArray[np.int8], float, float] | None:
    """NumPy reference of the scan's query quantization: (q^, s_q, F = max |q - s_q q^|) with
    |q^| <= qmax (127; 63 on the AVX2 path), or None for a query the scan rescores entirely."""
    q = query.astype(np.float64)
    mq = float(np.abs(q).max()) if q.size else 0.0
    if q.size == 0 or q.size > INT8_MAX_DIMS or not (_INT8_LO <= mq <= _INT8_HI):
        return None
    sq = float(np.float32(mq / qmax))
    quant = np.clip(np.rint(q / sq), -qmax, qmax)
    return quant.astype(np.int8), sq, float(np.abs(q - sq * quant).max())


def int8_bounds_reference(
    index: Int8Index, query: Float32Array, qmax: int = 127
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """NumPy reference of the scan's per-row interval (lo, hi) around the exact score, in float64 (the
    kernel computes the same formula in float32), for the index's rows; None when the scan would rescore
    every candidate. Bound: e_r |q|_1 + F s_r |x~|_1 (quantization) + float rounding terms (_int8_query)."""
    quantized = int8_query_reference(query, qmax)
    if quantized is None:
        return None
    qhat, sq, fmax = quantized
    n, d = index.rows, index.dims
    groups = index.blocks.shape[1]
    rows = index.blocks.reshape(-1, groups, BLOCK, 4).transpose(0, 2, 1, 3).reshape(-1, groups * 4)
    xq = rows[:n, :d].astype(np.int64) - 128
    dots = xq @ qhat.astype(np.int64)
    s = index.scale[:n].astype(np.float64)
    l1q = float(np.abs(query.astype(np.float64)).sum())
    grow, rel, tiny = 1 + 2.0**-18, (d + 8) * 2.0**-23, 2.0**-118
    big_k = (
        (l1q * (1 + rel) + d * tiny) * index.err_ratio
        + 127 * (l1q + sq * float(np.abs(qhat.astype(np.int64)).sum())) * rel
        + 128 * d * tiny
    ) * grow
    bound = s * big_k + index.tl1[:n].astype(np.float64) * fmax * grow + (d + l1q) * tiny * grow
    approx = s * sq * dots
    return approx - bound, approx + bound


def topk_int8_reference(
    index: Int8Index, matrix: Float32Array, query: Float32Array, mask: UInt8Array, k: int, qmax: int = 127
) -> tuple[Int32Array, Float32Array, int]:
    """NumPy reference of the int8 scan: (rows, scores, how many rows were rescored). Candidates whose
    upper bound reaches the k-th best lower bound are scored exactly (matrix @ query), then ranked by
    (-score, row)."""
    _check_reference_inputs(matrix.shape[0], mask, k)
    bounds = int8_bounds_reference(index, query, qmax)
    candidates = np.flatnonzero(mask)
    if bounds is not None and k > 0 and candidates.size >= k:
        lo, hi = bounds
        threshold = np.sort(lo[candidates])[::-1][k - 1]
        candidates = candidates[hi[candidates] >= threshold]
    scores: Float32Array = matrix[candidates] @ query
    order = np.lexsort((candidates, -scores))[:k]
    return candidates[order].astype(np.int32), scores[order].astype(np.float32), int(candidates.size)


def neighbor_candidates_into(
    neighbors: Int32Array,
    weights: Float32Array,
    seeds: Int32Array,
    mask: UInt8Array,
    slot: Int32Array,
    cand: Int32Array,
    cand_scores: Float32Array,
) -> int:
    """Merge the seed rows' precomputed neighbor lists into cand / cand_scores; returns how many.

    `neighbors` [n_items, width] int32 holds neighbor rows (-1 = none), `weights` the same shape their
    scores. Each row appears once, its weights summed over the seeds (in seed order), in order of first
    appearance, and only if mask[row] != 0. Rows outside [0, len(mask)) and seeds outside
    [0, n_items) are skipped. `slot` [len(mask)] int32 must be all zero; it is zero again on return.
    `cand` and `cand_scores` need len(mask) entries.
    """
    try:
        return _scoring.neighbor_candidates_into(neighbors, weights, seeds, mask, slot, cand, cand_scores)
    except (ValueError, TypeError, BufferError) as exc:
        _check_array("neighbors", neighbors, _I32, 2)
        _check_array("weights", weights, _F32, 2)
        _check_array("seeds", seeds, _I32, 1)
        _check_array("mask", mask, _U8, 1)
        for name, a, dtype in (
            ("slot", slot, _I32),
            ("cand", cand, _I32),
            ("cand_scores", cand_scores, _F32),
        ):
            _check_array(name, a, dtype, 1, writable=True)
        raise ValueError(f"invalid arguments: {exc}") from exc


def neighbor_candidates_reference(
    neighbors: Int32Array, weights: Float32Array, seeds: Int32Array, mask: UInt8Array
) -> tuple[Int32Array, Float32Array]:
    """NumPy reference for `neighbor_candidates_into`: (rows, summed weights) in first-appearance order."""
    n = mask.shape[0]
    valid_seeds = seeds[(seeds >= 0) & (seeds < neighbors.shape[0])]
    rows = neighbors[valid_seeds].ravel()
    scores = weights[valid_seeds].ravel()
    ok = (rows >= 0) & (rows < n)
    rows, scores = rows[ok], scores[ok]
    unique, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    summed = np.zeros(unique.shape[0], dtype=np.float32)
    np.add.at(summed, inverse, scores)
    order = np.argsort(first, kind="stable")
    unique, summed = unique[order], summed[order]
    keep = mask[unique] != 0
    return unique[keep].astype(np.int32), summed[keep]


def topk_pairs_into(
    rows: Int32Array,
    scores: Float32Array,
    count: int,
    mask: UInt8Array,
    k: int,
    out_idx: Int32Array,
    out_scores: Float32Array,
) -> int:
    """Top k of the pairs (rows[i], scores[i]), i < count, whose mask entry is nonzero; then zero
    mask[rows[:count]]. Same output order as `topk_scores_into`; returns how many were written."""
    _check_k(k)
    try:
        return _scoring.topk_pairs_into(rows, scores, count, mask, k, out_idx, out_scores)
    except (ValueError, TypeError, BufferError) as exc:
        _check_array("rows", rows, _I32, 1)
        _check_array("scores", scores, _F32, 1)
        _check_array("mask", mask, _U8, 1, writable=True)
        _check_mask_and_outputs(mask.shape[0], mask, k, out_idx, out_scores)
        raise ValueError(f"invalid arguments: {exc}") from exc


def topk_pairs_reference(
    rows: Int32Array, scores: Float32Array, mask: UInt8Array, k: int
) -> tuple[Int32Array, Float32Array]:
    """NumPy reference for `topk_pairs_into` (without the mask update): order by (-score, row), take k."""
    keep = mask[rows] != 0
    rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order].astype(np.int32), scores[order].astype(np.float32)


def score_order(scores: Float32Array) -> Int32Array:
    """Rows by (score descending, row ascending): the order `topk_sorted_into` walks."""
    _check_array("scores", scores, _F32, 1)
    n = scores.shape[0]
    order: Int32Array = np.lexsort((np.arange(n), -scores)).astype(np.int32)
    return order


def topk_sorted_into(
    order: Int32Array,
    scores: Float32Array,
    mask: UInt8Array,
    k: int,
    out_idx: Int32Array,
    out_scores: Float32Array,
    *,
    limit: int | None = None,
) -> int:
    """`topk_scores_into`'s result from a precomputed `score_order(scores)`: the first k rows the mask
    keeps. Touches about k / (share of rows kept) entries instead of all of them. Walks at most `limit`
    entries (default: all) and then falls back to the full scan, so a sparse mask costs at most a walk of
    `limit` plus a scan."""
    _check_k(k)
    n = scores.shape[0]
    walk = n if limit is None else limit
    try:
        written = _scoring.topk_sorted_into(order, scores, mask, k, walk, out_idx, out_scores)
    except (ValueError, TypeError, BufferError) as exc:
        _check_array("order", order, _I32, 1)
        _check_array("scores", scores, _F32, 1)
        _check_mask_and_outputs(n, mask, k, out_idx, out_scores)
        raise ValueError(f"invalid arguments: {exc}") from exc
    if written >= 0:
        return written
    return topk_scores_into(scores, mask, k, out_idx, out_scores)


def topk_dot(
    matrix: Float32Array, query: Float32Array, mask: UInt8Array, k: int
) -> tuple[Int32Array, Float32Array]:
    """`topk_dot_into` into fresh arrays, sliced to the number written: (indices, scores)."""
    _check_k(k)
    out_idx = np.empty(k, dtype=np.int32)
    out_scores = np.empty(k, dtype=np.float32)
    written = topk_dot_into(matrix, query, mask, k, out_idx, out_scores)
    return out_idx[:written], out_scores[:written]


def topk_scores(scores: Float32Array, mask: UInt8Array, k: int) -> tuple[Int32Array, Float32Array]:
    """`topk_scores_into` into fresh arrays, sliced to the number written: (indices, scores)."""
    _check_k(k)
    out_idx = np.empty(k, dtype=np.int32)
    out_scores = np.empty(k, dtype=np.float32)
    written = topk_scores_into(scores, mask, k, out_idx, out_scores)
    return out_idx[:written], out_scores[:written]


# NumPy references: the specification the kernel is tested against. Plain and obviously right.


def _check_reference_inputs(scores_len: int, mask: UInt8Array, k: int) -> None:
    _check_array("mask", mask, _U8, 1)
    if mask.shape[0] != scores_len:
        raise ValueError(f"mask has length {mask.shape[0]}, expected {scores_len} (one entry per row)")
    _check_k(k)


def _rank_reference(scores: Float32Array, mask: UInt8Array, k: int) -> tuple[Int32Array, Float32Array]:
    candidates = np.flatnonzero(mask)
    cand_scores = scores[candidates]
    # np.lexsort sorts by the last key first: score descending, then row index ascending.
    order = np.lexsort((candidates, -cand_scores))[:k]
    return candidates[order].astype(np.int32), cand_scores[order].astype(np.float32)


def topk_dot_reference(
    matrix: Float32Array, query: Float32Array, mask: UInt8Array, k: int
) -> tuple[Int32Array, Float32Array]:
    """NumPy reference for `topk_dot`: scores = matrix @ query, then order by (-score, index), take k."""
    _check_array("matrix", matrix, _F32, 2)
    _check_array("query", query, _F32, 1)
    if query.shape[0] != matrix.shape[1]:
        raise ValueError(f"query has length {query.shape[0]}, expected d={matrix.shape[1]}")
    _check_reference_inputs(matrix.shape[0], mask, k)
    scores: Float32Array = matrix @ query
    return _rank_reference(scores, mask, k)


def topk_scores_reference(scores: Float32Array, mask: UInt8Array, k: int) -> tuple[Int32Array, Float32Array]:
    """NumPy reference for `topk_scores`: order the candidates by (-score, index), take k."""
    _check_array("scores", scores, _F32, 1)
    _check_reference_inputs(scores.shape[0], mask, k)
    return _rank_reference(scores, mask, k)
