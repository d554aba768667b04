"""The Cython top-k kernels against their NumPy references (edgewise.core.scoring).

Integer-valued float32 inputs make every dot product exact whatever the summation order (the kernel is
built with -ffast-math), so kernel and reference must agree exactly, ties included. Non-integer inputs
are compared with a tolerance. Hypothesis runs derandomized so CI sees the same examples every run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from edgewise.bench.numpy_topk import topk_dot_numpy, topk_scores_numpy
from edgewise.core import _scoring, scoring

# Hypothesis: stable examples in CI, no per-example deadline (the first call pays for imports).
stable = settings(derandomize=True, max_examples=examples(300), deadline=None)


def _buffers(k: int, extra: int = 0) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    # Filled with sentinels so a kernel that writes past `written` would show up in the reference check.
    return np.full(k + extra, -7, dtype=np.int32), np.full(k + extra, -7.0, dtype=np.float32)


def _int_matrix(rng: np.random.Generator, n: int, d: int, lo: int = -3, hi: int = 3) -> NDArray[np.float32]:
    return rng.integers(lo, hi + 1, size=(n, d)).astype(np.float32)


def _mask(rng: np.random.Generator, n: int, p: float) -> NDArray[np.uint8]:
    # Nonzero values other than 1 are candidates too.
    return np.where(rng.random(n) < p, rng.integers(1, 256, size=n), 0).astype(np.uint8)


def _run_dot(
    matrix: NDArray[np.float32], query: NDArray[np.float32], mask: NDArray[np.uint8], k: int, extra: int = 0
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    out_idx, out_scores = _buffers(k, extra)
    written = scoring.topk_dot_into(matrix, query, mask, k, out_idx, out_scores)
    assert written == min(k, int(np.count_nonzero(mask)))
    # Nothing past `written` is touched.
    assert (out_idx[written:] == -7).all()
    assert (out_scores[written:] == -7.0).all()
    return out_idx[:written], out_scores[:written]


def _run_scores(
    scores: NDArray[np.float32], mask: NDArray[np.uint8], k: int, extra: int = 0
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    out_idx, out_scores = _buffers(k, extra)
    written = scoring.topk_scores_into(scores, mask, k, out_idx, out_scores)
    assert written == min(k, int(np.count_nonzero(mask)))
    assert (out_idx[written:] == -7).all()
    return out_idx[:written], out_scores[:written]


def _assert_same(
    got: tuple[NDArray[np.int32], NDArray[np.float32]], want: tuple[NDArray[np.int32], NDArray[np.float32]]
) -> None:
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.int32
    assert got[1].dtype == np.float32


# Exact agreement on integer-valued inputs (real ties).


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 80),
    d=st.integers(1, 20),
    k=st.integers(0, 90),
    p=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    span=st.sampled_from([0, 1, 3]),
    extra=st.integers(0, 3),
)
def test_dot_matches_reference_on_exact_inputs(
    seed: int, n: int, d: int, k: int, p: float, span: int, extra: int
) -> None:
    rng = np.random.default_rng(seed)
    # span 0: every score equal (all ties); span 1: values in {-1, 0, 1}, many ties.
    matrix = _int_matrix(rng, n, d, -span, span)
    query = _int_matrix(rng, 1, d, -span, span)[0]
    mask = _mask(rng, n, p)
    want = scoring.topk_dot_reference(matrix, query, mask, k)
    _assert_same(_run_dot(matrix, query, mask, k, extra), want)
    _assert_same(scoring.topk_dot(matrix, query, mask, k), want)
    _assert_same(topk_dot_numpy(matrix, query, mask, k), want)


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 200),
    k=st.integers(0, 210),
    p=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
    span=st.sampled_from([0, 2, 1000]),
)
def test_scores_matches_reference_with_ties(seed: int, n: int, k: int, p: float, span: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(-span, span + 1, size=n).astype(np.float32)
    mask = _mask(rng, n, p)
    want = scoring.topk_scores_reference(scores, mask, k)
    _assert_same(_run_scores(scores, mask, k), want)
    _assert_same(scoring.topk_scores(scores, mask, k), want)
    _assert_same(topk_scores_numpy(scores, mask, k), want)


def test_dot_exact_at_benchmark_size_with_ties() -> None:
    # Many candidates tie for the last places: the block fast path must still keep the lower indices.
    rng = np.random.default_rng(20261125)
    for n, d, span in [(10_000, 64, 1), (10_000, 32, 2), (4_099, 7, 1)]:
        matrix = _int_matrix(rng, n, d, -span, span)
        query = _int_matrix(rng, 1, d, -span, span)[0]
        mask = _mask(rng, n, 0.9)
        for k in (1, 20, 200):
            want = scoring.topk_dot_reference(matrix, query, mask, k)
            _assert_same(_run_dot(matrix, query, mask, k), want)


# Non-integer inputs: -ffast-math may reorder the sums, so compare within a tolerance.


def _check_float_result(
    matrix: NDArray[np.float32],
    query: NDArray[np.float32],
    mask: NDArray[np.uint8],
    k: int,
    idx: NDArray[np.int32],
    got: NDArray[np.float32],
) -> None:
    true = matrix.astype(np.float64) @ query.astype(np.float64)
    # Error bound of a float32 sum of d products in any order, scaled by the magnitudes involved.
    tol = 1e-4 * (np.abs(matrix).astype(np.float64) @ np.abs(query).astype(np.float64) + 1e-30)
    candidates = np.flatnonzero(mask)
    assert len(idx) == min(k, len(candidates))
    assert len(set(idx.tolist())) == len(idx), "duplicate index"
    assert mask[idx].all(), "returned a masked-out row"
    assert (np.diff(got) <= 0).all(), "scores not in descending order"
    # Each returned score is the row's true score.
    np.testing.assert_array_less(np.abs(got - true[idx]), tol[idx] + 1e-6)
    # The returned scores are the reference's top-k scores.
    want_scores = scoring.topk_dot_reference(matrix, query, mask, k)[1]
    np.testing.assert_allclose(got, want_scores, rtol=1e-4, atol=float(tol.max()) if len(tol) else 0.0)
    # Nothing left out ranks clearly above the last one returned.
    if len(idx) and len(idx) < len(candidates):
        rest = np.setdiff1d(candidates, idx)
        assert (true[rest] <= true[idx].min() + 2 * tol.max()).all()


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    d=st.integers(1, 70),
    k=st.integers(0, 40),
    p=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_dot_matches_reference_on_float_inputs(
    seed: int, n: int, d: int, k: int, p: float, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    matrix = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    query = rng.standard_normal(d).astype(np.float32)
    mask = _mask(rng, n, p)
    idx, got = _run_dot(matrix, query, mask, k)
    _check_float_result(matrix, query, mask, k, idx, got)


@pytest.mark.parametrize(("n", "d"), [(1_000, 32), (10_000, 64), (3_001, 33)])
def test_dot_float_at_benchmark_sizes(n: int, d: int) -> None:
    rng = np.random.default_rng(n * 100 + d)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    query = rng.standard_normal(d, dtype=np.float32)
    mask = _mask(rng, n, 0.9)
    idx, got = _run_dot(matrix, query, mask, 20)
    _check_float_result(matrix, query, mask, 20, idx, got)


# Edge cases.


def test_empty_and_degenerate_inputs() -> None:
    rng = np.random.default_rng(1)
    matrix = _int_matrix(rng, 10, 4)
    query = _int_matrix(rng, 1, 4)[0]
    ones = np.ones(10, dtype=np.uint8)
    zeros = np.zeros(10, dtype=np.uint8)
    # k == 0, all masked out, no rows at all.
    assert len(_run_dot(matrix, query, ones, 0)[0]) == 0
    assert len(_run_dot(matrix, query, zeros, 5)[0]) == 0
    empty = np.zeros((0, 4), dtype=np.float32)
    assert len(_run_dot(empty, query, np.zeros(0, dtype=np.uint8), 5)[0]) == 0
    assert len(_run_scores(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.uint8), 3)[0]) == 0
    # k larger than the candidates: all of them, in order.
    mask = np.zeros(10, dtype=np.uint8)
    mask[[2, 5, 7]] = 1
    got = _run_dot(matrix, query, mask, 8)
    _assert_same(got, scoring.topk_dot_reference(matrix, query, mask, 8))
    assert sorted(got[0].tolist()) == [2, 5, 7]
    # d == 0: every score is 0, so the lowest indices win.
    flat = np.zeros((6, 0), dtype=np.float32)
    got = _run_dot(flat, np.zeros(0, dtype=np.float32), np.ones(6, dtype=np.uint8), 4)
    assert got[0].tolist() == [0, 1, 2, 3]
    assert got[1].tolist() == [0.0] * 4


def test_all_equal_scores_keep_lowest_indices() -> None:
    matrix = np.ones((100, 3), dtype=np.float32)
    query = np.ones(3, dtype=np.float32)
    mask = np.ones(100, dtype=np.uint8)
    mask[:10] = 0
    idx, got = _run_dot(matrix, query, mask, 5)
    assert idx.tolist() == [10, 11, 12, 13, 14]
    assert got.tolist() == [3.0] * 5
    idx, _ = _run_scores(np.zeros(100, dtype=np.float32), mask, 5)
    assert idx.tolist() == [10, 11, 12, 13, 14]


def test_read_only_inputs_are_accepted() -> None:
    # Model arrays come zero-copy from LMDB: read-only buffers.
    rng = np.random.default_rng(2)
    matrix = _int_matrix(rng, 50, 8)
    query = _int_matrix(rng, 1, 8)[0]
    mask = _mask(rng, 50, 0.8)
    want = scoring.topk_dot_reference(matrix, query, mask, 7)
    for a in (matrix, query, mask):
        a.setflags(write=False)
    _assert_same(_run_dot(matrix, query, mask, 7), want)
    scores = matrix[:, 0].copy()
    scores.setflags(write=False)
    _assert_same(_run_scores(scores, mask, 7), scoring.topk_scores_reference(scores, mask, 7))


def test_int_subclasses_for_k() -> None:
    matrix = np.eye(4, dtype=np.float32)
    query = np.arange(4, dtype=np.float32)
    mask = np.ones(4, dtype=np.uint8)
    idx, _ = scoring.topk_dot(matrix, query, mask, np.int64(2))  # type: ignore[arg-type]
    assert idx.tolist() == [3, 2]


# Rejected inputs: a clear ValueError, never a crash or a silent copy.


def _valid() -> dict[str, NDArray[np.generic]]:
    return {
        "matrix": np.zeros((8, 4), dtype=np.float32),
        "query": np.zeros(4, dtype=np.float32),
        "mask": np.ones(8, dtype=np.uint8),
        "out_idx": np.zeros(5, dtype=np.int32),
        "out_scores": np.zeros(5, dtype=np.float32),
    }


def _call_dot(args: dict[str, NDArray[np.generic]], k: int = 5) -> int:
    return scoring.topk_dot_into(
        args["matrix"],  # type: ignore[arg-type]
        args["query"],  # type: ignore[arg-type]
        args["mask"],  # type: ignore[arg-type]
        k,
        args["out_idx"],  # type: ignore[arg-type]
        args["out_scores"],  # type: ignore[arg-type]
    )


BAD_INPUTS: list[tuple[str, object, str]] = [
    ("matrix", np.zeros((8, 4), dtype=np.float64), "matrix must have dtype float32"),
    ("matrix", np.zeros((8, 8), dtype=np.float32)[:, ::2], "matrix must be C-contiguous"),
    ("matrix", np.asfortranarray(np.zeros((8, 4), dtype=np.float32)), "matrix must be C-contiguous"),
    ("matrix", np.zeros(32, dtype=np.float32), "matrix must be 2-dimensional"),
    ("matrix", [[0.0] * 4] * 8, "matrix must be a numpy.ndarray"),
    ("query", np.zeros(4, dtype=np.float64), "query must have dtype float32"),
    ("query", np.zeros(8, dtype=np.float32)[::2], "query must be C-contiguous"),
    ("query", np.zeros(5, dtype=np.float32), "query has length 5, expected d=4"),
    ("query", np.zeros((1, 4), dtype=np.float32), "query must be 1-dimensional"),
    ("mask", np.ones(8, dtype=bool), "mask must have dtype uint8, got bool (view a bool mask"),
    ("mask", np.ones(8, dtype=np.int8), "mask must have dtype uint8"),
    ("mask", np.ones(16, dtype=np.uint8)[::2], "mask must be C-contiguous"),
    ("mask", np.ones(7, dtype=np.uint8), "mask has length 7, expected 8"),
    ("out_idx", np.zeros(5, dtype=np.int64), "out_idx must have dtype int32"),
    ("out_idx", np.zeros(10, dtype=np.int32)[::2], "out_idx must be C-contiguous"),
    ("out_idx", np.zeros(4, dtype=np.int32), "out_idx has length 4, needs at least k=5"),
    ("out_scores", np.zeros(5, dtype=np.float64), "out_scores must have dtype float32"),
    ("out_scores", np.zeros(4, dtype=np.float32), "out_scores has length 4, needs at least k=5"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_INPUTS)
def test_bad_inputs_are_rejected(name: str, value: object, message: str) -> None:
    args = _valid()
    args[name] = value  # type: ignore[assignment]
    with pytest.raises(ValueError, match=re.escape(message)):
        _call_dot(args)


def test_bad_k_and_read_only_outputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        _call_dot(_valid(), k=-1)
    with pytest.raises(ValueError, match="k must be an int"):
        _call_dot(_valid(), k=2.0)  # type: ignore[arg-type]
    args = _valid()
    args["out_scores"].setflags(write=False)
    with pytest.raises(ValueError, match="out_scores must be writable"):
        _call_dot(args)
    scores = np.zeros(8, dtype=np.float32)
    mask = np.ones(8, dtype=np.uint8)
    with pytest.raises(ValueError, match="scores must be C-contiguous"):
        scoring.topk_scores(np.zeros(16, dtype=np.float32)[::2], mask, 3)
    with pytest.raises(ValueError, match="scores must have dtype float32"):
        scoring.topk_scores(scores.astype(np.float64), mask, 3)
    with pytest.raises(ValueError, match="mask has length 4, expected 8"):
        scoring.topk_scores(scores, mask[:4], 3)
    with pytest.raises(ValueError, match="k must be >= 0"):
        scoring.topk_scores_reference(scores, mask, -2)
    with pytest.raises(ValueError, match="query has length 3, expected d=4"):
        scoring.topk_dot_reference(np.zeros((8, 4), dtype=np.float32), scores[:3], mask, 1)


# The half-precision scan (half_index + topk_half_into): approximate scores, exact rescoring, so the result
# is the float32 one. Run with the CPU's fastest code path and with the portable one.


@pytest.fixture(params=[False, True], ids=["fastest", "portable"])
def portable(request: pytest.FixtureRequest) -> Iterator[bool]:
    previous = _scoring.set_portable(request.param)
    yield request.param
    _scoring.set_portable(previous)


def _run_half(
    matrix: NDArray[np.float32], query: NDArray[np.float32], mask: NDArray[np.uint8], k: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    index = scoring.half_index(matrix)
    assert index is not None
    n = matrix.shape[0]
    work = np.full(index.blocks.shape[0] * scoring.BLOCK, -7.0, dtype=np.float32)
    cand = np.zeros(n, dtype=np.int32)
    out_idx, out_scores = _buffers(k, 2)
    written = scoring.topk_half_into(index, matrix, query, mask, k, work, cand, out_idx, out_scores)
    assert written == min(k, int(np.count_nonzero(mask)))
    assert (out_idx[written:] == -7).all()
    return out_idx[:written], out_scores[:written]


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 120),
    d=st.integers(0, 20),
    k=st.integers(0, 130),
    p=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
    portable_only=st.booleans(),
)
def test_half_matches_reference_on_exact_inputs(
    seed: int, n: int, d: int, k: int, p: float, portable_only: bool
) -> None:
    rng = np.random.default_rng(seed)
    matrix = _int_matrix(rng, n, d)
    query = _int_matrix(rng, 1, d)[0]
    mask = _mask(rng, n, p)
    previous = _scoring.set_portable(portable_only)
    try:
        got = _run_half(matrix, query, mask, k)
    finally:
        _scoring.set_portable(previous)
    _assert_same(got, scoring.topk_dot_reference(matrix, query, mask, k))


@pytest.mark.parametrize("scale", [1e-6, 1e-2, 1.0, 300.0])
def test_half_is_exact_where_half_precision_cannot_tell_rows_apart(portable: bool, scale: float) -> None:
    # Rows that differ by 1e-4 relative: binary16 (11 bits) rounds many of them to the same value, so the
    # approximate scan sees long runs of ties; the exact rescoring must still return the float32 order.
    rng = np.random.default_rng(3)
    n, d = 4_003, 24
    base = rng.standard_normal(d).astype(np.float32)
    steps = 1.0 + 1e-4 * rng.permutation(n).astype(np.float32)
    matrix = (np.outer(steps, base) * scale).astype(np.float32)
    query = base.copy()
    mask = _mask(rng, n, 0.9)
    for k in (1, 10, 50):
        idx, got = _run_half(matrix, query, mask, k)
        ref_idx, ref = scoring.topk_dot_reference(matrix, query, mask, k)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize(("n", "d"), [(10_000, 32), (3_001, 33), (7, 5)])
def test_half_float_inputs_at_benchmark_sizes(portable: bool, n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    query = rng.standard_normal(d, dtype=np.float32)
    mask = _mask(rng, n, 0.8)
    idx, got = _run_half(matrix, query, mask, 30)
    _check_float_result(matrix, query, mask, 30, idx, got)
    # And the same rows as the float32 fused kernel.
    np.testing.assert_array_equal(idx, _run_dot(matrix, query, mask, 30)[0])


def test_half_index_refuses_values_beyond_binary16() -> None:
    matrix = np.ones((4, 3), dtype=np.float32)
    assert scoring.half_index(matrix) is not None
    matrix[2, 1] = 70_000.0
    assert scoring.half_index(matrix) is None
    empty = scoring.half_index(np.zeros((0, 3), dtype=np.float32))
    assert empty is not None and empty.blocks.shape == (0, 3, 8)


def test_half_bad_arguments_are_named() -> None:
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((20, 4), dtype=np.float32)
    index = scoring.half_index(matrix)
    assert index is not None
    query = np.ones(4, dtype=np.float32)
    mask = np.ones(20, dtype=np.uint8)
    idx, sc = _buffers(5)
    work, cand = np.zeros(24, dtype=np.float32), np.zeros(20, dtype=np.int32)
    with pytest.raises(ValueError, match="index was built for 20 x 4"):
        scoring.topk_half_into(index, matrix[:10], query, mask[:10], 5, work, cand, idx, sc)
    with pytest.raises(ValueError, match="work needs 24 floats and cand 20 ints"):
        scoring.topk_half_into(index, matrix, query, mask, 5, work[:16], cand, idx, sc)
    with pytest.raises(ValueError, match="query has length 3"):
        scoring.topk_half_into(index, matrix, query[:3], mask, 5, work, cand, idx, sc)


# Neighbor lists: merge (neighbor_candidates_into) and top-k of explicit pairs (topk_pairs_into).


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    width=st.integers(0, 12),
    n_seeds=st.integers(0, 5),
    p=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_neighbor_candidates_match_reference(seed: int, n: int, width: int, n_seeds: int, p: float) -> None:
    rng = np.random.default_rng(seed)
    # Some -1 (no neighbor) and out-of-range rows; seeds may repeat or be out of range too.
    neighbors = rng.integers(-1, n + 2, size=(n, width)).astype(np.int32)
    weights = rng.integers(-4, 5, size=(n, width)).astype(np.float32) / 4
    seeds = rng.integers(-1, n + 1, size=n_seeds).astype(np.int32)
    mask = _mask(rng, n, p)
    slot = np.zeros(n, dtype=np.int32)
    cand = np.full(n, -7, dtype=np.int32)
    cand_scores = np.full(n, -7.0, dtype=np.float32)
    found = scoring.neighbor_candidates_into(neighbors, weights, seeds, mask, slot, cand, cand_scores)
    want_rows, want_scores = scoring.neighbor_candidates_reference(neighbors, weights, seeds, mask)
    np.testing.assert_array_equal(cand[:found], want_rows)
    np.testing.assert_array_equal(cand_scores[:found], want_scores)
    assert not slot.any()  # ready for the next call


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 80),
    count=st.integers(0, 60),
    k=st.integers(0, 70),
    p=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_topk_pairs_match_reference_and_clear_the_mask(
    seed: int, n: int, count: int, k: int, p: float
) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n)[: min(count, n)].astype(np.int32)
    scores = rng.integers(-3, 4, size=rows.shape[0]).astype(np.float32)  # many ties
    mask = _mask(rng, n, p)
    before = mask.copy()
    out_idx, out_scores = _buffers(k, 1)
    written = scoring.topk_pairs_into(rows, scores, rows.shape[0], mask, k, out_idx, out_scores)
    want = scoring.topk_pairs_reference(rows, scores, before, k)
    _assert_same((out_idx[:written], out_scores[:written]), want)
    assert (out_idx[written:] == -7).all()
    assert not mask[rows].any()
    untouched = np.setdiff1d(np.arange(n), rows)
    np.testing.assert_array_equal(mask[untouched], before[untouched])


def test_neighbor_kernels_refuse_bad_arguments() -> None:
    neighbors = np.zeros((4, 3), dtype=np.int32)
    weights = np.zeros((4, 3), dtype=np.float32)
    mask = np.ones(4, dtype=np.uint8)
    seeds = np.array([0], dtype=np.int32)
    slot, cand, cand_scores = np.zeros(4, np.int32), np.zeros(4, np.int32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="weights must have dtype float32"):
        scoring.neighbor_candidates_into(neighbors, neighbors, seeds, mask, slot, cand, cand_scores)
    with pytest.raises(ValueError, match="invalid arguments"):
        scoring.neighbor_candidates_into(neighbors, weights[:2], seeds, mask, slot, cand, cand_scores)
    out_idx, out_scores = _buffers(2)
    with pytest.raises(ValueError, match=r"invalid arguments.*every row must be in"):
        scoring.topk_pairs_into(
            np.array([5], np.int32), np.ones(1, np.float32), 1, mask, 2, out_idx, out_scores
        )
    with pytest.raises(ValueError, match="k must be >= 0"):
        scoring.topk_pairs_into(
            np.array([1], np.int32), np.ones(1, np.float32), 1, mask, -1, out_idx, out_scores
        )


# A precomputed order (score_order + topk_sorted_into) gives the scan's result.


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 200),
    k=st.integers(0, 60),
    p=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    limit=st.sampled_from([None, 0, 1, 16, 1000]),
)
def test_sorted_walk_matches_reference(seed: int, n: int, k: int, p: float, limit: int | None) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(-3, 4, size=n).astype(np.float32)  # many ties: broken by row
    scores[rng.random(n) < 0.1] = -0.0  # -0.0 ties with 0.0
    mask = _mask(rng, n, p)
    order = scoring.score_order(scores)
    out_idx, out_scores = _buffers(k, 1)
    written = scoring.topk_sorted_into(order, scores, mask, k, out_idx, out_scores, limit=limit)
    _assert_same((out_idx[:written], out_scores[:written]), scoring.topk_scores_reference(scores, mask, k))


def test_sorted_walk_with_a_bad_order_falls_back_to_the_scan() -> None:
    scores = np.array([3, 1, 2, 5], dtype=np.float32)
    mask = np.ones(4, dtype=np.uint8)
    out_idx, out_scores = _buffers(2)
    bad = np.array([9, 0, 1, 2], dtype=np.int32)  # not a row: never read past the arrays
    assert scoring.topk_sorted_into(bad, scores, mask, 2, out_idx, out_scores) == 2
    assert out_idx.tolist() == [3, 0]
    with pytest.raises(ValueError, match="order must list every row once"):
        scoring.topk_sorted_into(bad[:3], scores, mask, 2, out_idx, out_scores)
