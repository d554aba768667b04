# Scoring kernels: fused dot product + partial-heap top-k over a candidate mask.
#
# Declared `noexcept nogil` over typed memoryviews (as scikit-learn's sklearn/utils/_heap.pxd) so other
# Cython modules can cimport and call them without the GIL and without a Python-level wrapper:
# `from edgewise.core._scoring cimport topk_dot_kernel` (setup.py builds _scoring.pyx beside this file, so
# the module exports every function declared here; tests/test_cimport.py compiles such a module). Callers
# guarantee the contract that edgewise.core.scoring checks for Python callers:
#   matrix [n, d] C-contiguous, query [d], mask [n], out_idx and out_scores at least k long, k >= 0,
#   n < 2**31, every value finite.
# Order of the output: score descending, ties by lower row index first.

from libc.stdint cimport int32_t, uint8_t, uint16_t


cdef Py_ssize_t topk_dot_kernel(
    const float[:, ::1] matrix,
    const float[::1] query,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil

cdef Py_ssize_t topk_scores_kernel(
    const float[::1] scores,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil

cdef Py_ssize_t topk_half_kernel(
    const uint16_t[:, :, ::1] blocks,
    const float[::1] col_absmax,
    const float[:, ::1] matrix,
    const float[::1] query,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    float[::1] work,
    int32_t[::1] cand,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil

cdef Py_ssize_t topk_int8_kernel(
    const uint8_t[:, :, ::1] blocks,
    const float[::1] scale,
    const float[::1] tl1,
    float err_ratio,
    const float[:, ::1] matrix,
    const float[::1] query,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    float[::1] work,
    int32_t[::1] cand,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil

cdef Py_ssize_t topk_partition_kernel(
    const float[:, ::1] centroids,
    const int32_t[::1] starts,
    const uint16_t[:, :, ::1] blocks,
    const int32_t[::1] members,
    const float[::1] col_absmax,
    const float[:, ::1] matrix,
    const float[::1] query,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    Py_ssize_t probes,
    float[::1] list_scores,
    int32_t[::1] list_order,
    float[::1] work,
    int32_t[::1] cand,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil

cdef Py_ssize_t topk_partition_int8_kernel(
    const float[:, ::1] centroids,
    const int32_t[::1] starts,
    const uint16_t[:, :, ::1] blocks,
    const int32_t[::1] members,
    const float[::1] col_absmax,
    const uint8_t[:, :, ::1] i8_blocks,
    const float[::1] i8_scale,
    const float[::1] i8_tl1,
    float err_ratio,
    const float[:, ::1] matrix,
    const float[::1] query,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    Py_ssize_t probes,
    float[::1] list_scores,
    int32_t[::1] list_order,
    float[::1] work,
    int32_t[::1] cand,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil

cdef Py_ssize_t neighbor_candidates_kernel(
    const int32_t[:, ::1] neighbors,
    const float[:, ::1] weights,
    const int32_t[::1] seeds,
    const uint8_t[::1] mask,
    int32_t[::1] slot,
    int32_t[::1] cand,
    float[::1] cand_scores,
) noexcept nogil

cdef Py_ssize_t topk_pairs_kernel(
    const int32_t[::1] rows,
    const float[::1] scores,
    Py_ssize_t count,
    uint8_t[::1] mask,
    Py_ssize_t k,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil

cdef Py_ssize_t topk_sorted_kernel(
    const int32_t[::1] order,
    const float[::1] scores,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    Py_ssize_t limit,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil
