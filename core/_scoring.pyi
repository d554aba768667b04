# Type stub for the compiled module edgewise.core._scoring (core/_scoring.pyx).
#
# The entry points raise ValueError (or TypeError for a non-buffer) on any invalid argument, with terse
# messages: callers go through edgewise.core.scoring, which says what is wrong. mypy.stubtest
# (scripts/typecheck) checks that this stub and the built module agree.

import numpy as np
from numpy.typing import NDArray

def topk_dot_into(
    matrix: NDArray[np.float32],
    query: NDArray[np.float32],
    mask: NDArray[np.uint8],
    k: int,
    out_idx: NDArray[np.int32],
    out_scores: NDArray[np.float32],
) -> int: ...
def topk_scores_into(
    scores: NDArray[np.float32],
    mask: NDArray[np.uint8],
    k: int,
    out_idx: NDArray[np.int32],
    out_scores: NDArray[np.float32],
) -> int: ...
def topk_half_into(
    blocks: NDArray[np.uint16],
    col_absmax: NDArray[np.float32],
    matrix: NDArray[np.float32],
    query: NDArray[np.float32],
    mask: NDArray[np.uint8],
    k: int,
    work: NDArray[np.float32],
    cand: NDArray[np.int32],
    out_idx: NDArray[np.int32],
    out_scores: NDArray[np.float32],
) -> int: ...
def topk_int8_into(
    blocks: NDArray[np.uint8],
    scale: NDArray[np.float32],
    tl1: NDArray[np.float32],
    err_ratio: float,
    matrix: NDArray[np.float32],
    query: NDArray[np.float32],
    mask: NDArray[np.uint8],
    k: int,
    work: NDArray[np.float32],
    cand: NDArray[np.int32],
    out_idx: NDArray[np.int32],
    out_scores: NDArray[np.float32],
) -> int: ...
def int8_bounds_into(
    blocks: NDArray[np.uint8],
    scale: NDArray[np.float32],
    tl1: NDArray[np.float32],
    err_ratio: float,
    query: NDArray[np.float32],
    qbytes: NDArray[np.int8],
    hi: NDArray[np.float32],
    lo: NDArray[np.float32],
) -> int: ...
def int8_dots_into(
    blocks: NDArray[np.uint8], qbytes: NDArray[np.int8], level: int, out: NDArray[np.float32]
) -> None: ...
def int8_level() -> int: ...
def int8_candidates(
    blocks: NDArray[np.uint8],
    scale: NDArray[np.float32],
    tl1: NDArray[np.float32],
    err_ratio: float,
    query: NDArray[np.float32],
    mask: NDArray[np.uint8],
    k: int,
    work: NDArray[np.float32],
    cand: NDArray[np.int32],
    out_idx: NDArray[np.int32],
    out_scores: NDArray[np.float32],
) -> int: ...
def set_int8_path(level: int) -> int: ...
def topk_partition_into(
    centroids: NDArray[np.float32],
    starts: NDArray[np.int32],
    blocks: NDArray[np.uint16],
    members: NDArray[np.int32],
    col_absmax: NDArray[np.float32],
    matrix: NDArray[np.float32],
    query: NDArray[np.float32],
    mask: NDArray[np.uint8],
    k: int,
    probes: int,
    list_scores: NDArray[np.float32],
    list_order: NDArray[np.int32],
    work: NDArray[np.float32],
    cand: NDArray[np.int32],
    out_idx: NDArray[np.int32],
    out_scores: NDArray[np.float32],
) -> int: ...
def topk_partition_int8_into(
    centroids: NDArray[np.float32],
    starts: NDArray[np.int32],
    blocks: NDArray[np.uint16],
    members: NDArray[np.int32],
    col_absmax: NDArray[np.float32],
    i8_blocks: NDArray[np.uint8],
    i8_scale: NDArray[np.float32],
    i8_tl1: NDArray[np.float32],
    err_ratio: float,
    matrix: NDArray[np.float32],
    query: NDArray[np.float32],
    mask: NDArray[np.uint8],
    k: int,
    probes: int,
    list_scores: NDArray[np.float32],
    list_order: NDArray[np.int32],
    work: NDArray[np.float32],
    cand: NDArray[np.int32],
    out_idx: NDArray[np.int32],
    out_scores: NDArray[np.float32],
) -> int: ...
def neighbor_candidates_into(
    neighbors: NDArray[np.int32],
    weights: NDArray[np.float32],
    seeds: NDArray[np.int32],
    mask: NDArray[np.uint8],
    slot: NDArray[np.int32],
    cand: NDArray[np.int32],
    cand_scores: NDArray[np.float32],
) -> int: ...
def topk_pairs_into(
    rows: NDArray[np.int32],
    scores: NDArray[np.float32],
    count: int,
    mask: NDArray[np.uint8],
    k: int,
    out_idx: NDArray[np.int32],
    out_scores: NDArray[np.float32],
) -> int: ...
def topk_sorted_into(
    order: NDArray[np.int32],
    scores: NDArray[np.float32],
    mask: NDArray[np.uint8],
    k: int,
    limit: int,
    out_idx: NDArray[np.int32],
    out_scores: NDArray[np.float32],
) -> int: ...
def set_portable(portable: bool) -> bool: ...
