# Scoring kernels: fused dot product + partial-heap top-k over a candidate mask.
#
# The Python API (error messages, allocating conveniences, NumPy references) lives in
# edgewise.core.scoring. The `def` functions here are the entry points it calls: typed memoryviews check
# element type, dimensions, contiguity and writability on entry, a size check keeps the kernel within
# its buffers, then they release the GIL and call the `noexcept nogil` kernels declared in _scoring.pxd.
#
# Compiled with -O3 -ffast-math (see setup.py): the inner loop over d is a plain multiply-add reduction
# that GCC vectorizes only when it may reorder float sums. Scores of non-integer inputs can therefore
# differ from a sequential float sum in the last bits; integer-valued inputs (exact sums) score exactly.
#
# Heap: a min-heap of size k over the rank key (score, -index), i.e. its root is the worst entry kept:
# the lowest score, and among equal scores the highest index. A candidate replaces the root only if it
# ranks strictly better: score > root score, or an equal score with a lower index. The heap lives in the
# caller's out buffers (no allocation) and is heap-sorted in place at the end: score desc, index asc.

from libc.stdint cimport int32_t, uint8_t

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define EDGEWISE_PREFETCH(p) __builtin_prefetch((p), 0, 3)
    #else
    #define EDGEWISE_PREFETCH(p) ((void)(p))
    #endif
    """
    void EDGEWISE_PREFETCH(const void* p) noexcept nogil

cdef enum:
    # Rows per block of the dot-product loop: four rows share every load of the query, which keeps the
    # vector units busy and hides the latency of each row's reduction.
    _BLOCK = 4
    # Software prefetch runs this many floats (8 KB) ahead of the rows being scored, one request per
    # 64-byte line. Measured here: ~15% faster when the matrix streams from L3 (10k x 64), ~8% slower
    # when it sits in L2 (10k x 32), where the prefetches are pure overhead.
    _PREFETCH_AHEAD = 2048
    _LINE_FLOATS = 16
    _STREAM_LANES = 32


cdef inline bint _worse(float s_a, int32_t i_a, float s_b, int32_t i_b) noexcept nogil:
    """True if entry a ranks below entry b (lower score, or equal score and higher index)."""
    return s_a < s_b or (s_a == s_b and i_a > i_b)


cdef inline void _sift_down(float* hs, int32_t* hi, Py_ssize_t size, Py_ssize_t pos) noexcept nogil:
    cdef float s = hs[pos]
    cdef int32_t i = hi[pos]
    cdef Py_ssize_t c
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        if c + 1 < size and _worse(hs[c + 1], hi[c + 1], hs[c], hi[c]):
            c += 1
        if _worse(hs[c], hi[c], s, i):
            hs[pos] = hs[c]
            hi[pos] = hi[c]
            pos = c
        else:
            break
    hs[pos] = s
    hi[pos] = i


cdef inline void _sift_up(float* hs, int32_t* hi, Py_ssize_t pos) noexcept nogil:
    cdef float s = hs[pos]
    cdef int32_t i = hi[pos]
    cdef Py_ssize_t p
    while pos > 0:
        p = (pos - 1) >> 1
        if _worse(s, i, hs[p], hi[p]):
            hs[pos] = hs[p]
            hi[pos] = hi[p]
            pos = p
        else:
            break
    hs[pos] = s
    hi[pos] = i


cdef inline Py_ssize_t _offer(
    float* hs, int32_t* hi, Py_ssize_t size, Py_ssize_t k, float s, int32_t i
) noexcept nogil:
    """Offer (s, i) to a heap of `size` entries and capacity k; returns the new size."""
    if size < k:
        hs[size] = s
        hi[size] = i
        _sift_up(hs, hi, size)
        return size + 1
    if _worse(hs[0], hi[0], s, i):
        hs[0] = s
        hi[0] = i
        _sift_down(hs, hi, size, 0)
    return size


cdef inline void _sort_heap(float* hs, int32_t* hi, Py_ssize_t size) noexcept nogil:
    """Heap-sort in place: repeatedly move the worst entry (the root) to the end; best ends first."""
    cdef Py_ssize_t end
    cdef float s
    cdef int32_t i
    for end in range(size - 1, 0, -1):
        s = hs[end]
        i = hi[end]
        hs[end] = hs[0]
        hi[end] = hi[0]
        hs[0] = s
        hi[0] = i
        _sift_down(hs, hi, end, 0)


cdef inline float _dot(const float* row, const float* q, Py_ssize_t d) noexcept nogil:
    cdef float acc = 0
    cdef Py_ssize_t j
    for j in range(d):
        acc += row[j] * q[j]
    return acc


cdef inline void _dot4(
    const float* r0,
    const float* r1,
    const float* r2,
    const float* r3,
    const float* q,
    Py_ssize_t d,
    float* out,
) noexcept nogil:
    cdef float a0 = 0
    cdef float a1 = 0
    cdef float a2 = 0
    cdef float a3 = 0
    cdef float qj
    cdef Py_ssize_t j
    for j in range(d):
        qj = q[j]
        a0 += r0[j] * qj
        a1 += r1[j] * qj
        a2 += r2[j] * qj
        a3 += r3[j] * qj
    out[0] = a0
    out[1] = a1
    out[2] = a2
    out[3] = a3


cdef Py_ssize_t topk_dot_kernel(
    const float[:, ::1] matrix,
    const float[::1] query,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil:
    cdef Py_ssize_t n = matrix.shape[0]
    cdef Py_ssize_t d = matrix.shape[1]
    if k <= 0 or n == 0:
        return 0
    cdef const float* base = &matrix[0, 0] if d > 0 else NULL
    cdef const float* q = &query[0] if d > 0 else NULL
    cdef const uint8_t* m = &mask[0]
    cdef float* hs = &out_scores[0]
    cdef int32_t* hi = &out_idx[0]
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t cnt, b
    cdef Py_ssize_t rows[_BLOCK]
    cdef float sc[_BLOCK]
    cdef float thr
    cdef const float* pf = base
    cdef const float* pf_end
    if d == 0:
        for i in range(n):
            if m[i]:
                size = _offer(hs, hi, size, k, 0, <int32_t>i)
        _sort_heap(hs, hi, size)
        return size
    while i < n:
        # Keep the prefetch front _PREFETCH_AHEAD floats past the next row (masked-out rows included: the
        # front moves through the matrix in order, so each line is requested once).
        pf_end = base + (i * d + _PREFETCH_AHEAD if i * d + _PREFETCH_AHEAD < n * d else n * d)
        while pf < pf_end:
            EDGEWISE_PREFETCH(pf)
            pf += _LINE_FLOATS
        # Gather the next block of candidate rows, skipping masked-out rows (their dot is never computed).
        cnt = 0
        while cnt < _BLOCK and i < n:
            if m[i]:
                rows[cnt] = i
                cnt += 1
            i += 1
        if cnt == _BLOCK:
            _dot4(
                base + rows[0] * d,
                base + rows[1] * d,
                base + rows[2] * d,
                base + rows[3] * d,
                q,
                d,
                sc,
            )
        else:
            for b in range(cnt):
                sc[b] = _dot(base + rows[b] * d, q, d)
        if size == k and cnt == _BLOCK:
            # Common case once the heap is full: no score of the block reaches the worst entry kept, so
            # none can enter (an equal score is offered: it enters only with a lower index).
            thr = hs[0]
            if sc[0] < thr and sc[1] < thr and sc[2] < thr and sc[3] < thr:
                continue
        for b in range(cnt):
            size = _offer(hs, hi, size, k, sc[b], <int32_t>rows[b])
    _sort_heap(hs, hi, size)
    return size


cdef Py_ssize_t topk_scores_kernel(
    const float[::1] scores,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil:
    cdef Py_ssize_t n = scores.shape[0]
    if k <= 0 or n == 0:
        return 0
    cdef const float* s = &scores[0]
    cdef const uint8_t* m = &mask[0]
    cdef float* hs = &out_scores[0]
    cdef int32_t* hi = &out_idx[0]
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t i
    for i in range(n):
        if m[i]:
            size = _offer(hs, hi, size, k, s[i], <int32_t>i)
    _sort_heap(hs, hi, size)
    return size


cdef float stream_sum_kernel(const float[::1] data) noexcept nogil:
    # 32 lanes of independent partial sums (eight SSE vectors in the portable build): the loop is bound by loads, not by the
    # latency of one add chain, so it measures how fast one core can stream the array.
    cdef Py_ssize_t n = data.shape[0]
    if n == 0:
        return 0
    cdef const float* p = &data[0]
    cdef float acc[_STREAM_LANES]
    cdef float total = 0
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j
    for j in range(_STREAM_LANES):
        acc[j] = 0
    while i + _STREAM_LANES <= n:
        for j in range(_STREAM_LANES):
            acc[j] += p[i + j]
        i += _STREAM_LANES
    while i < n:
        total += p[i]
        i += 1
    for j in range(_STREAM_LANES):
        total += acc[j]
    return total


cdef int _check_sizes(
    Py_ssize_t n, Py_ssize_t mask_len, Py_ssize_t k, Py_ssize_t idx_len, Py_ssize_t scores_len
) except -1:
    # Memory safety only: edgewise.core.scoring re-checks a failing call to say what is wrong.
    if mask_len != n or k < 0 or idx_len < k or scores_len < k or n > 2147483647:
        raise ValueError("invalid sizes: mask length must equal n, 0 <= k <= output lengths, n < 2**31")
    return 0


def topk_dot_into(
    const float[:, ::1] matrix,
    const float[::1] query,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    int32_t[::1] out_idx,
    float[::1] out_scores,
):
    """Top-k rows of matrix by dot(row, query) among mask != 0, into out_idx/out_scores; returns the count."""
    if query.shape[0] != matrix.shape[1]:
        raise ValueError("invalid sizes: query length must equal the matrix's d")
    _check_sizes(matrix.shape[0], mask.shape[0], k, out_idx.shape[0], out_scores.shape[0])
    cdef Py_ssize_t written
    with nogil:
        written = topk_dot_kernel(matrix, query, mask, k, out_idx, out_scores)
    return written


def topk_scores_into(
    const float[::1] scores,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    int32_t[::1] out_idx,
    float[::1] out_scores,
):
    """Top-k entries of scores among mask != 0, into out_idx/out_scores; returns the count."""
    _check_sizes(scores.shape[0], mask.shape[0], k, out_idx.shape[0], out_scores.shape[0])
    cdef Py_ssize_t written
    with nogil:
        written = topk_scores_kernel(scores, mask, k, out_idx, out_scores)
    return written


def stream_sum(const float[::1] data):
    """Sum of a float32 array, read once front to back: the benchmark's read-bandwidth probe."""
    cdef float total
    with nogil:
        total = stream_sum_kernel(data)
    return total
