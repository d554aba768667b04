"""The partition's lists scanned from their int8 copy (topk_partition_into(int8=True)) against the
half-precision lists (int8=False) and the NumPy reference: the same lists, the same stopping rule and the
same exact rescoring, so the same result bit for bit, on every code path of the int8 scan."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from edgewise.core import _scoring
from edgewise.core.partition import (
    Partition,
    PartitionScratch,
    build_partition,
    partition_from_assignment,
    topk_partition_into,
    topk_partition_reference,
)

stable = settings(derandomize=True, max_examples=examples(200), deadline=None)


def _run(
    part: Partition,
    matrix: NDArray[np.float32],
    query: NDArray[np.float32],
    mask: NDArray[np.uint8],
    k: int,
    int8: bool,
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    n = matrix.shape[0]
    out_idx = np.full(k + 2, -7, dtype=np.int32)
    out_scores = np.full(k + 2, -7.0, dtype=np.float32)
    work = np.full(n, -7.0, dtype=np.float32)
    cand = np.zeros(n, dtype=np.int32)
    written = topk_partition_into(
        part, matrix, query, mask, k, PartitionScratch(), work, cand, out_idx, out_scores, int8=int8
    )
    assert (out_idx[written:] == -7).all()
    return out_idx[:written], out_scores[:written]


def _same(
    a: tuple[NDArray[np.int32], NDArray[np.float32]], b: tuple[NDArray[np.int32], NDArray[np.float32]]
) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1].view(np.int32), b[1].view(np.int32))


@stable
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 150),
    d=st.integers(1, 12),
    lists=st.integers(1, 12),
    probes=st.integers(0, 14),
    k=st.integers(0, 40),
    p=st.sampled_from([0.0, 0.05, 0.3, 0.9, 1.0]),
    level=st.sampled_from([-1, 1, 0]),
    integers=st.booleans(),
)
def test_int8_lists_equal_half_lists_and_the_reference(
    seed: int, n: int, d: int, lists: int, probes: int, k: int, p: float, level: int, integers: bool
) -> None:
    rng = np.random.default_rng(seed)
    if integers:
        matrix = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
        query = rng.integers(-3, 4, size=d).astype(np.float32)
    else:
        matrix = rng.standard_normal((n, d)).astype(np.float32)
        query = rng.standard_normal(d).astype(np.float32)
    centroids = rng.integers(-2, 3, size=(lists, d)).astype(np.float32)
    part = partition_from_assignment(matrix, rng.integers(0, lists, size=n), centroids, probes)
    assert part is not None and part.int8 is not None
    mask = np.where(rng.random(n) < p, rng.integers(1, 256, size=n), 0).astype(np.uint8)
    previous = _scoring.set_int8_path(level)
    try:
        got = _run(part, matrix, query, mask, k, int8=True)
    finally:
        _scoring.set_int8_path(previous)
    _same(got, _run(part, matrix, query, mask, k, int8=False))
    if integers:  # exact sums: the NumPy reference's scores too
        _same(got, topk_partition_reference(part, matrix, query, mask, k))


def test_int8_lists_at_a_larger_size_and_odd_queries() -> None:
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((30, 32)).astype(np.float32)
    matrix = (centres[rng.integers(0, 30, 9_000)] + 0.3 * rng.standard_normal((9_000, 32))).astype(np.float32)
    part = build_partition(matrix)
    assert part is not None and part.int8 is not None
    mask = (rng.random(9_000) < 0.8).astype(np.uint8)
    queries = [rng.standard_normal(32).astype(np.float32) for _ in range(10)]
    queries += [np.zeros(32, np.float32), np.full(32, 2.0**-60, np.float32)]  # rescored by the half kernel
    for query in queries:
        for k in (1, 20, 60):
            _same(
                _run(part, matrix, query, mask, k, int8=True), _run(part, matrix, query, mask, k, int8=False)
            )


def test_int8_lists_check_the_output_buffers_against_k() -> None:
    rng = np.random.default_rng(9)
    matrix = rng.standard_normal((200, 8)).astype(np.float32)
    part = partition_from_assignment(matrix, rng.integers(0, 5, size=200), matrix[:5].copy(), 2)
    assert part is not None and part.int8 is not None
    query = np.ones(8, dtype=np.float32)
    mask = np.ones(200, dtype=np.uint8)
    work, cand = np.zeros(200, np.float32), np.zeros(200, np.int32)
    short_idx, short_scores = np.zeros(3, np.int32), np.zeros(3, np.float32)
    with pytest.raises(ValueError):
        topk_partition_into(
            part, matrix, query, mask, 10, PartitionScratch(), work, cand, short_idx, short_scores
        )
