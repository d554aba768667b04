"""The int8 scan (scoring.int8_index + topk_int8_into) against the float32 top k and its NumPy reference.

The scan scores rows approximately from int8 copies and rescores exactly (the kernel's float32 dot, the
one `topk_half_into` uses) every candidate whose error interval reaches the k-th best lower bound, so its
result must be the float32 top k: equal to `topk_dot_reference` on integer-valued inputs (exact sums,
real ties) and bit for bit equal to `topk_half_into` on any input. Each test runs on every code path
this CPU has (AVX-VNNI, AVX2 `maddubs`, portable C; `set_int8_path` forces the slower ones).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from edgewise.core import _scoring, scoring

stable = settings(derandomize=True, max_examples=examples(300), deadline=None)

PATHS = [-1, 1, 0]  # fastest, AVX2 (maddubs, |q^| <= 63), portable


@pytest.fixture(params=PATHS, ids=["fastest", "avx2", "portable"])
def path(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = _scoring.set_int8_path(request.param)
    yield request.param
    _scoring.set_int8_path(previous)


def _bounds(
    index: scoring.Int8Index, query: NDArray[np.float32]
) -> tuple[int, NDArray[np.int8], NDArray[np.float32], NDArray[np.float32]]:
    nb = index.blocks.shape[0]
    qbytes = np.zeros(max(index.blocks.shape[1] * 4, 1), dtype=np.int8)
    hi = np.zeros(nb * 8, dtype=np.float32)
    lo = np.zeros(nb * 8, dtype=np.float32)
    level = _scoring.int8_bounds_into(
        index.blocks, index.scale, index.tl1, index.err_ratio, query, qbytes, hi, lo
    )
    return level, qbytes, hi, lo


def _run(
    matrix: NDArray[np.float32], query: NDArray[np.float32], mask: NDArray[np.uint8], k: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    index = scoring.int8_index(matrix)
    assert index is not None
    n = matrix.shape[0]
    work = np.full(n, -7.0, dtype=np.float32)
    cand = np.zeros(n, dtype=np.int32)
    out_idx, out_scores = np.full(k + 2, -7, dtype=np.int32), np.full(k + 2, -7.0, dtype=np.float32)
    written = scoring.topk_int8_into(index, matrix, query, mask, k, work, cand, out_idx, out_scores)
    assert written == min(k, int(np.count_nonzero(mask)))
    assert (out_idx[written:] == -7).all()
    assert (out_scores[written:] == -7.0).all()
    return out_idx[:written], out_scores[:written]


def _run_half(
    matrix: NDArray[np.float32], query: NDArray[np.float32], mask: NDArray[np.uint8], k: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    index = scoring.half_index(matrix)
    assert index is not None
    n = matrix.shape[0]
    work = np.zeros(index.blocks.shape[0] * scoring.BLOCK, dtype=np.float32)
    cand = np.zeros(n, dtype=np.int32)
    out_idx, out_scores = np.zeros(k, dtype=np.int32), np.zeros(k, dtype=np.float32)
    written = scoring.topk_half_into(index, matrix, query, mask, k, work, cand, out_idx, out_scores)
    return out_idx[:written], out_scores[:written]


def _assert_bits(
    got: tuple[NDArray[np.int32], NDArray[np.float32]], want: tuple[NDArray[np.int32], NDArray[np.float32]]
) -> None:
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1].view(np.int32), want[1].view(np.int32))


def _mask(rng: np.random.Generator, n: int, p: float) -> NDArray[np.uint8]:
    return np.where(rng.random(n) < p, rng.integers(1, 256, size=n), 0).astype(np.uint8)


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 120),
    d=st.integers(0, 20),
    k=st.integers(0, 130),
    p=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
    level=st.sampled_from(PATHS),
    spread=st.sampled_from([1, 3, 127, 1000]),
)
def test_int8_matches_reference_on_exact_inputs(
    seed: int, n: int, d: int, k: int, p: float, level: int, spread: int
) -> None:
    # Integer values: every dot is exact, ties are real (spread 1: mostly ties), k >= n included.
    rng = np.random.default_rng(seed)
    matrix = rng.integers(-spread, spread + 1, size=(n, d)).astype(np.float32)
    query = rng.integers(-spread, spread + 1, size=d).astype(np.float32)
    mask = _mask(rng, n, p)
    previous = _scoring.set_int8_path(level)
    try:
        got = _run(matrix, query, mask, k)
    finally:
        _scoring.set_int8_path(previous)
    want = scoring.topk_dot_reference(matrix, query, mask, k)
    _assert_bits(got, want)
    index = scoring.int8_index(matrix)
    assert index is not None
    ref_idx, ref_scores, _ = scoring.topk_int8_reference(index, matrix, query, mask, k)
    _assert_bits((ref_idx, ref_scores), want)


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    d=st.integers(1, 40),
    k=st.integers(1, 50),
    level=st.sampled_from(PATHS),
    exponent=st.sampled_from([-40, -12, 0, 12, 40]),
)
def test_int8_equals_half_scan_on_float_inputs(
    seed: int, n: int, d: int, k: int, level: int, exponent: int
) -> None:
    # Any float inputs (magnitudes from 2^-40 to 2^40): the same rows and the same float32 scores as the
    # half-precision scan, whose rescoring computes the same dot.
    rng = np.random.default_rng(seed)
    matrix = (rng.standard_normal((n, d)) * 2.0**exponent).astype(np.float32)
    matrix[rng.random(n) < 0.1] = 0  # zero rows
    query = rng.standard_normal(d).astype(np.float32)
    mask = _mask(rng, n, 0.8)
    previous = _scoring.set_int8_path(level)
    try:
        got = _run(matrix, query, mask, k)
        # k >= n: every candidate is rescored (the heap never fills), the full ranking by the same dot
        everything = _run(matrix, query, mask, n)
    finally:
        _scoring.set_int8_path(previous)
    _assert_bits(got, (everything[0][:k], everything[1][:k]))
    if exponent in (-12, 0, 12):  # within binary16's range: the half scan exists
        _assert_bits(got, _run_half(matrix, query, mask, k))


@pytest.mark.parametrize("scale", [1e-6, 1e-2, 1.0, 300.0, 1e9])
def test_int8_is_exact_where_the_quantization_cannot_tell_rows_apart(path: int, scale: float) -> None:
    # Rows that differ by 1e-4 relative all quantize to the same bytes: the bounds overlap for every row,
    # and the exact rescoring must still return the float32 order.
    rng = np.random.default_rng(3)
    n, d = 4_003, 24
    base = rng.standard_normal(d).astype(np.float32)
    steps = 1.0 + 1e-4 * rng.permutation(n).astype(np.float32)
    matrix = (np.outer(steps, base) * scale).astype(np.float32)
    query = base.copy()
    mask = _mask(rng, n, 0.9)
    for k in (1, 10, 50):
        got = _run(matrix, query, mask, k)
        want = scoring.topk_dot(matrix, query, mask, k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[0], scoring.topk_dot_reference(matrix, query, mask, k)[0])


@pytest.mark.parametrize(("n", "d"), [(10_000, 32), (3_001, 33), (7, 5)])
def test_int8_float_inputs_at_benchmark_sizes(path: int, n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    mask = _mask(rng, n, 0.8)
    for _ in range(5):
        query = rng.standard_normal(d, dtype=np.float32)
        _assert_bits(_run(matrix, query, mask, 30), _run_half(matrix, query, mask, 30))


def test_int8_queries_it_does_not_quantize_are_rescored_exactly(path: int) -> None:
    # A zero query (every score 0: the first k rows), a huge and a tiny one: every candidate rescored.
    rng = np.random.default_rng(11)
    matrix = rng.integers(-3, 4, size=(50, 6)).astype(np.float32)
    mask = _mask(rng, 50, 0.7)
    index = scoring.int8_index(matrix)
    assert index is not None
    for query in (np.zeros(6, np.float32), np.full(6, 2.0**60, np.float32), np.full(6, 2.0**-60, np.float32)):
        assert _bounds(index, query)[0] == -1
        _assert_bits(_run(matrix, query, mask, 9), scoring.topk_dot_reference(matrix, query, mask, 9))


def test_int8_index_refuses_what_it_cannot_scale() -> None:
    matrix = np.ones((4, 3), dtype=np.float32)
    assert scoring.int8_index(matrix) is not None
    matrix[2, 1] = 2.0**51
    assert scoring.int8_index(matrix) is None
    matrix[2] = 2.0**-51  # a whole row below 2^-50
    assert scoring.int8_index(matrix) is None
    matrix[2] = [2.0**-51, 0, 1]  # one tiny value in a row of ordinary ones: fine
    assert scoring.int8_index(matrix) is not None
    assert scoring.int8_index(np.ones((2, scoring.INT8_MAX_DIMS + 1), dtype=np.float32)) is None
    empty = scoring.int8_index(np.zeros((0, 3), dtype=np.float32))
    assert empty is not None and empty.blocks.shape == (0, 1, 32)


@stable
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), d=st.integers(1, 70))
def test_int8_index_layout_and_error_ratio(seed: int, n: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    matrix = (rng.standard_normal((n, d)) * rng.choice([1e-3, 1, 1e3], size=(n, 1))).astype(np.float32)
    index = scoring.int8_index(matrix)
    assert index is not None
    groups = -(-d // 4)
    assert index.blocks.shape == (-(-n // 8), groups, 32)
    rows = index.blocks.reshape(-1, groups, 8, 4).transpose(0, 2, 1, 3).reshape(-1, groups * 4)
    quant = rows.astype(np.int64) - 128
    assert (np.abs(quant) <= 127).all()
    assert (quant[n:] == 0).all() and (quant[:, d:] == 0).all()  # padding is x~ = 0
    s = index.scale[:n].astype(np.float64)
    err = np.abs(matrix.astype(np.float64) - s[:, None] * quant[:n, :d]).max(axis=1)
    assert (err <= index.err_ratio * s).all()
    assert index.err_ratio < 0.5001
    assert (index.tl1[:n].astype(np.float64) >= s * np.abs(quant[:n]).sum(axis=1)).all()


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 200),
    d=st.integers(1, 70),
    level=st.sampled_from(PATHS),
    qexp=st.sampled_from([-30, 0, 30]),
)
def test_int8_bounds_hold_the_exact_score(seed: int, n: int, d: int, level: int, qexp: int) -> None:
    # The interval of every row holds the float64 dot and the kernel's float32 score; the integer dots
    # are x~ . q^ whatever the code path; the query bytes are the reference's (up to a rounding tie).
    rng = np.random.default_rng(seed)
    matrix = (rng.standard_normal((n, d)) * rng.choice([1e-6, 1, 1e6], size=(n, 1))).astype(np.float32)
    query = (rng.standard_normal(d) * 2.0**qexp).astype(np.float32)
    index = scoring.int8_index(matrix)
    assert index is not None
    previous = _scoring.set_int8_path(level)
    try:
        got_level, qbytes, hi, lo = _bounds(index, query)
    finally:
        _scoring.set_int8_path(previous)
    qmax = 63 if got_level == 1 else 127
    assert (np.abs(qbytes[:d].astype(np.int64)) <= qmax).all()
    reference = scoring.int8_query_reference(query, qmax)
    assert reference is not None
    assert np.abs(reference[0].astype(np.int64) - qbytes[:d]).max() <= 1
    true = matrix.astype(np.float64) @ query.astype(np.float64)
    f32 = scoring.topk_dot(matrix, query, np.ones(n, np.uint8), n)
    kernel = np.empty(n, dtype=np.float64)
    kernel[f32[0]] = f32[1]
    for exact in (true, kernel):
        assert (lo[:n] <= exact).all() and (exact <= hi[:n]).all()
    ref_bounds = scoring.int8_bounds_reference(index, query, qmax)
    assert ref_bounds is not None
    assert (ref_bounds[0] <= true).all() and (true <= ref_bounds[1]).all()


@stable
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 100), d=st.integers(1, 70))
def test_int8_dots_are_the_same_integers_on_every_path(seed: int, n: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    index = scoring.int8_index(rng.standard_normal((n, d)).astype(np.float32))
    assert index is not None
    groups = index.blocks.shape[1]
    rows = index.blocks.reshape(-1, groups, 8, 4).transpose(0, 2, 1, 3).reshape(-1, groups * 4)
    for level in range(_scoring.int8_level() + 1):
        limit = 63 if level == 1 else 127  # AVX2: |q^| <= 63
        qbytes = rng.integers(-limit, limit + 1, size=groups * 4).astype(np.int8)
        out = np.zeros(index.blocks.shape[0] * 8, dtype=np.float32)
        _scoring.int8_dots_into(index.blocks, qbytes, level, out)
        np.testing.assert_array_equal(out.astype(np.int64), rows.astype(np.int64) @ qbytes.astype(np.int64))


def test_int8_rescores_few_rows_of_gaussian_embeddings() -> None:
    # How loose the bound is: at 10k x 32 and k = 40 the scan rescores about 70 rows (this data), far
    # below the 10,000 it scores.
    rng = np.random.default_rng(0)
    n, d, k = 10_000, 32, 40
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    index = scoring.int8_index(matrix)
    assert index is not None
    mask = np.ones(n, np.uint8)
    work, cand = np.zeros(n, np.float32), np.zeros(n, np.int32)
    idx, sc = np.zeros(k, np.int32), np.zeros(k, np.float32)
    for _ in range(5):
        query = rng.standard_normal(d, dtype=np.float32)
        kept = _scoring.int8_candidates(
            index.blocks, index.scale, index.tl1, index.err_ratio, query, mask, k, work, cand, idx, sc
        )
        assert k <= kept < 300
        assert scoring.topk_int8_reference(index, matrix, query, mask, k)[2] < 300


def test_int8_bad_arguments_are_named() -> None:
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((20, 4), dtype=np.float32)
    index = scoring.int8_index(matrix)
    assert index is not None
    query = np.ones(4, dtype=np.float32)
    mask = np.ones(20, dtype=np.uint8)
    idx, sc = np.zeros(5, np.int32), np.zeros(5, np.float32)
    work, cand = np.zeros(20, dtype=np.float32), np.zeros(20, dtype=np.int32)
    with pytest.raises(ValueError, match="index was built for 20 x 4"):
        scoring.topk_int8_into(index, matrix[:10], query, mask[:10], 5, work, cand, idx, sc)
    with pytest.raises(ValueError, match="work needs 20 floats and cand 20 ints"):
        scoring.topk_int8_into(index, matrix, query, mask, 5, work[:16], cand, idx, sc)
    with pytest.raises(ValueError, match="query has length 3"):
        scoring.topk_int8_into(index, matrix, query[:3], mask, 5, work, cand, idx, sc)
