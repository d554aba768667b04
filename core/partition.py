"""A coarse partition of the item embeddings: the personalized scan of large catalogs reads a few lists.

At 100k items the half-precision scan of every row (`edgewise.core.scoring.topk_half_into`) costs about
300 µs per placement, several times the rest of a Decide (BENCHMARKS.md, issue 17, "100k items"). A
partition groups the rows into about sqrt(n) lists around centroids (k-means on the embeddings, built
once per snapshot version); a query scores the centroids and scans only the rows of the lists whose
centroids score best, at least `probes` lists and on until those lists hold k candidates. Within the
lists scanned the result is exact (the int8 or half-precision scan with exact rescoring, the same
kernel code); rows of the other lists are never candidates, so the result is the float32 top k only where
every one of those rows lies in a list scanned. tests/test_partition.py measures recall@20 against the
exact float32 ranking on the synthetic bundle (>= 0.98 required).

Used only for catalogs of at least PARTITION_MIN_ROWS items (`use_partition`): below that the full
scan costs well under 100 µs and is exact, and the 10k-item bench mix keeps its decisions (its digest
is a fixed value). k-means runs from a fixed seed on a fixed sample, so every worker and node that loads
the same version on the same build gets the same partition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core import _scoring
from edgewise.core.scoring import (
    BLOCK,
    HALF_MAX,
    Float32Array,
    Int8Index,
    Int32Array,
    UInt8Array,
    _check_array,
    _check_k,
    _validate_dot,
    block_rows,
    int8_index,
)

__all__ = [
    "KMEANS_ITERATIONS",
    "KMEANS_SAMPLE",
    "PARTITION_MIN_ROWS",
    "PROBE_SHARE",
    "Partition",
    "PartitionScratch",
    "build_partition",
    "partition_from_assignment",
    "topk_partition_into",
    "topk_partition_reference",
    "use_partition",
]

PARTITION_MIN_ROWS: Final = 50_000
"""Catalogs of at least this many items get a partition (10k-item decisions stay exact and unchanged)."""

PROBE_SHARE: Final = 1 / 8
"""Lists scanned per query, as a share of the lists (at least): 100k items, 316 lists, 40 scanned."""

KMEANS_SAMPLE: Final = 20_000
KMEANS_ITERATIONS: Final = 10
KMEANS_SEED: Final = 20_261_207
_ASSIGN_CHUNK: Final = 8192  # rows per matrix product when assigning rows to lists (8192 x lists floats)

_F32: Final = np.dtype(np.float32)
_I32: Final = np.dtype(np.int32)


def use_partition(n_rows: int) -> bool:
    """Whether a catalog of `n_rows` items is scanned through a partition."""
    return n_rows >= PARTITION_MIN_ROWS


@dataclass(frozen=True, slots=True)
class Partition:
    """Rows grouped into lists, each list's rows in half precision in `block_rows` layout, list by list."""

    centroids: Float32Array  # [lists, d]
    starts: Int32Array  # [lists + 1]: list l holds blocks starts[l] .. starts[l + 1] - 1
    blocks: NDArray[np.uint16]  # [total blocks, d, 8] IEEE binary16 bit patterns
    members: Int32Array  # [total blocks * 8]: the row in each slot of `blocks`, -1 for padding
    col_absmax: Float32Array  # [d] largest |value| of each column of the matrix (bounds the rounding)
    rows: int
    probes: int  # lists scanned per query, at least
    # the same slots as int8 rows with a scale each (scoring.int8_index of the slot-ordered rows; None:
    # values it cannot scale): the lists' scan reads these unless the process chose the half scan
    int8: Int8Index | None = None

    @property
    def lists(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def nbytes(self) -> int:
        extra = 0 if self.int8 is None else self.int8.nbytes
        return int(
            self.centroids.nbytes + self.starts.nbytes + self.blocks.nbytes + self.members.nbytes + extra
        )


def _assign(matrix: Float32Array, centroids: Float32Array) -> NDArray[np.intp]:
    """Each row's nearest centroid (squared Euclidean distance; ties: the lowest list)."""
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(matrix.shape[0], dtype=np.intp)
    for start in range(0, matrix.shape[0], _ASSIGN_CHUNK):
        part = matrix[start : start + _ASSIGN_CHUNK]
        out[start : start + part.shape[0]] = np.argmax(part @ centroids.T - half_norms, axis=1)
    return out


def _kmeans(matrix: Float32Array, lists: int) -> Float32Array:
    """Centroids of `lists` clusters: Lloyd's iterations on a fixed sample from a fixed seed."""
    rng = np.random.default_rng(KMEANS_SEED)
    n = matrix.shape[0]
    sample = matrix[np.sort(rng.choice(n, KMEANS_SAMPLE, replace=False))] if n > KMEANS_SAMPLE else matrix
    centroids = np.array(sample[np.sort(rng.choice(sample.shape[0], lists, replace=False))], dtype=np.float32)
    for _ in range(KMEANS_ITERATIONS):
        assigned = _assign(sample, centroids)
        sums = np.zeros((lists, matrix.shape[1]), dtype=np.float64)
        np.add.at(sums, assigned, sample)
        counts = np.bincount(assigned, minlength=lists)
        filled = counts > 0  # an empty list keeps its centroid
        centroids[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
    return centroids


def partition_from_assignment(
    matrix: Float32Array, assignment: NDArray[np.integer], centroids: Float32Array, probes: int
) -> Partition | None:
    """The partition that puts row i in list assignment[i] (None when a value does not fit binary16)."""
    _check_array("matrix", matrix, _F32, 2)
    _check_array("centroids", centroids, _F32, 2)
    n, d = matrix.shape
    lists = centroids.shape[0]
    if centroids.shape[1] != d:
        raise ValueError(f"centroids have {centroids.shape[1]} columns, the matrix {d}")
    if assignment.shape != (n,) or (n and (assignment.min() < 0 or assignment.max() >= lists)):
        raise ValueError(f"assignment must give each of the {n} rows a list in [0, {lists})")
    if probes < 0:
        raise ValueError(f"probes must be >= 0, got {probes}")
    col_absmax = np.abs(matrix).max(axis=0).astype(np.float32) if n else np.zeros(d, dtype=np.float32)
    if d and float(col_absmax.max()) > HALF_MAX:
        return None
    order = np.argsort(assignment, kind="stable")  # rows of each list in row order
    counts = np.bincount(assignment, minlength=lists)
    list_blocks = -(-counts // BLOCK)
    starts = np.zeros(lists + 1, dtype=np.int32)
    np.cumsum(list_blocks, out=starts[1:])
    members = np.full(int(starts[-1]) * BLOCK, -1, dtype=np.int32)
    first = np.zeros(lists + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    # slot of the j-th row of list l: starts[l] * 8 + j
    list_of = assignment[order]
    slots = starts[list_of].astype(np.int64) * BLOCK + (np.arange(n) - first[list_of])
    members[slots] = order
    slot_rows = np.zeros((members.shape[0], d), dtype=np.float32)
    slot_rows[slots] = matrix[order]
    blocks = block_rows(slot_rows.astype(np.float16)).view(np.uint16)
    small = int8_index(slot_rows)
    return Partition(
        centroids=np.ascontiguousarray(centroids),
        starts=starts,
        blocks=np.ascontiguousarray(blocks),
        members=members,
        col_absmax=np.ascontiguousarray(col_absmax),
        rows=n,
        probes=probes,
        int8=small,
    )


def build_partition(matrix: Float32Array) -> Partition | None:
    """A partition of `matrix` into round(sqrt(n)) lists (k-means), scanning PROBE_SHARE of them per
    query; None for an empty matrix or values beyond binary16 (the caller scans the float32 matrix)."""
    _check_array("matrix", matrix, _F32, 2)
    n = matrix.shape[0]
    if n == 0 or matrix.shape[1] == 0:
        return None
    lists = max(1, round(math.sqrt(n)))
    centroids = _kmeans(matrix, lists)
    probes = max(1, math.ceil(lists * PROBE_SHARE))
    return partition_from_assignment(matrix, _assign(matrix, centroids), centroids, probes)


class PartitionScratch:
    """Per-thread buffers of `topk_partition_into`: the lists' scores and order, notes and their rows."""

    def __init__(self) -> None:
        self.list_scores: Float32Array = np.zeros(0, dtype=np.float32)
        self.list_order: Int32Array = np.zeros(0, dtype=np.int32)

    def ensure(self, lists: int) -> None:
        if self.list_scores.shape[0] < lists:
            self.list_scores = np.zeros(lists, dtype=np.float32)
            self.list_order = np.zeros(lists, dtype=np.int32)


def topk_partition_into(
    partition: Partition,
    matrix: Float32Array,
    query: Float32Array,
    mask: UInt8Array,
    k: int,
    scratch: PartitionScratch,
    work: Float32Array,
    cand: Int32Array,
    out_idx: Int32Array,
    out_scores: Float32Array,
    *,
    int8: bool = True,
) -> int:
    """The top k by dot(matrix[i], query) among mask != 0 within the lists scanned (see the module doc).

    Same output contract and order as `edgewise.core.scoring.topk_dot_into`; `matrix` is the float32
    matrix the partition was built from (rescoring reads it). `work` and `cand` need n entries. The
    lists are scanned in int8 where the partition has them and `int8` is true, else in half precision:
    the same result either way.
    """
    _check_k(k)
    if type(matrix) is not np.ndarray or matrix.ndim != 2 or matrix.shape[0] != partition.rows:
        _check_array("matrix", matrix, _F32, 2)
        raise ValueError(
            f"partition was built for {partition.rows} x {partition.centroids.shape[1]}, "
            f"matrix is {matrix.shape}"
        )
    scratch.ensure(partition.lists)
    small = partition.int8 if int8 else None
    try:
        if small is not None:
            return _scoring.topk_partition_int8_into(
                partition.centroids,
                partition.starts,
                partition.blocks,
                partition.members,
                partition.col_absmax,
                small.blocks,
                small.scale,
                small.tl1,
                small.err_ratio,
                matrix,
                query,
                mask,
                k,
                partition.probes,
                scratch.list_scores,
                scratch.list_order,
                work,
                cand,
                out_idx,
                out_scores,
            )
        return _scoring.topk_partition_into(
            partition.centroids,
            partition.starts,
            partition.blocks,
            partition.members,
            partition.col_absmax,
            matrix,
            query,
            mask,
            k,
            partition.probes,
            scratch.list_scores,
            scratch.list_order,
            work,
            cand,
            out_idx,
            out_scores,
        )
    except (ValueError, TypeError, BufferError) as exc:
        _validate_dot(matrix, query, mask, k, out_idx, out_scores)
        if partition.centroids.shape[1] != matrix.shape[1]:
            raise ValueError(
                f"partition was built for {partition.rows} x {partition.centroids.shape[1]}, "
                f"matrix is {matrix.shape}"
            ) from exc
        _check_array("work", work, _F32, 1, writable=True)
        _check_array("cand", cand, _I32, 1, writable=True)
        if work.shape[0] < matrix.shape[0] or cand.shape[0] < matrix.shape[0]:
            raise ValueError(f"work and cand need {matrix.shape[0]} entries") from exc
        raise ValueError(f"invalid arguments: {exc}") from exc


def _probed_lists(partition: Partition, query: Float32Array, mask: UInt8Array, k: int) -> list[int]:
    """The lists the kernel scans, in its order: by centroid score (desc, list asc), at least `probes`,
    then on until they hold k rows the mask keeps."""
    scores = partition.centroids @ query
    order = np.lexsort((np.arange(partition.lists), -scores))
    members = partition.members
    scanned: list[int] = []
    kept = 0
    for p, lst in enumerate(order.tolist()):
        if p >= partition.probes and kept >= k:
            break
        rows = members[partition.starts[lst] * BLOCK : partition.starts[lst + 1] * BLOCK]
        rows = rows[rows >= 0]
        kept += int(np.count_nonzero(mask[rows]))
        scanned.append(lst)
    return scanned


def topk_partition_reference(
    partition: Partition, matrix: Float32Array, query: Float32Array, mask: UInt8Array, k: int
) -> tuple[Int32Array, Float32Array]:
    """NumPy reference for `topk_partition_into`: the exact top k (score desc, row asc) of the rows the
    mask keeps in the lists the kernel scans."""
    if k == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
    lists = _probed_lists(partition, query, mask, k)
    members = partition.members
    parts = [members[partition.starts[lst] * BLOCK : partition.starts[lst + 1] * BLOCK] for lst in lists]
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    rows = rows[rows >= 0]
    rows = rows[mask[rows] != 0]
    scores = (matrix[rows] @ query).astype(np.float32)
    order = np.lexsort((rows, -scores))[:k]
    return rows[order].astype(np.int32), scores[order]
