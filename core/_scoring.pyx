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

import array as _array

from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t
from libc.math cimport INFINITY, fabs, fabsf, rint

# The C side lives in _simd.h (next to this file; shipped with the package): the prefetch macro and the
# half-precision blocked scan, with its AVX2/FMA/F16C version chosen at run time (see the header).
cdef extern from "_simd.h":
    void EDGEWISE_PREFETCH(const void* p) noexcept nogil
    int ew_portable_only
    void ew_half_scores(const uint16_t* blocks, const float* q, Py_ssize_t d, Py_ssize_t n_blocks,
                        float* out) noexcept nogil
    unsigned ew_ge8(const float* s, float thr) noexcept nogil
    Py_ssize_t ew_ctz(unsigned x) noexcept nogil
    int ew_i8_forced
    int ew_i8_level() noexcept nogil
    int ew_i8_qmax(int level) noexcept nogil
    void ew_i8_chunk(int level, const uint8_t* blocks, const int8_t* q, Py_ssize_t groups, Py_ssize_t n_blocks,
                     const float* scale, const float* tl1, int32_t corr, float sq, float big_k, float c2,
                     float c0, float limit, float* hi, uint8_t* masks) noexcept nogil

cdef enum:
    # Rows per block of the dot-product loop: four rows share every load of the query, which keeps the
    # vector units busy and hides the latency of each row's reduction.
    _BLOCK = 4
    # Software prefetch runs this many floats (8 KB) ahead of the rows being scored, one request per
    # 64-byte line. Measured here: ~15% faster when the matrix streams from L3 (10k x 64), ~8% slower
    # when it sits in L2 (10k x 32), where the prefetches are pure overhead.
    _PREFETCH_AHEAD = 2048
    _LINE_FLOATS = 16
    # Groups of 8 rows scored per call of the half-precision scan: 1 KB of scores, stays in L1.
    _HALF_CHUNK = 32
    # Groups of 8 rows per chunk of the int8 scan: its flags use the threshold of the chunk's start, so
    # short chunks flag fewer rows that the current threshold then rejects.
    _INT8_CHUNK = 32


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


cdef inline Py_ssize_t _topk_no_dims(
    const uint8_t* m, Py_ssize_t n, Py_ssize_t k, float* hs, int32_t* hi
) noexcept nogil:
    """The top k of vectors with no dimensions: every candidate scores 0, lowest rows first (sorted)."""
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t i
    for i in range(n):
        if m[i]:
            size = _offer(hs, hi, size, k, 0, <int32_t>i)
    _sort_heap(hs, hi, size)
    return size


cdef inline float _dot(const float* row, const float* q, Py_ssize_t d) noexcept nogil:
    cdef float acc = 0
    cdef Py_ssize_t j
    for j in range(d):
        acc += row[j] * q[j]
    return acc


cdef inline Py_ssize_t _keep_reaching(
    const float* w, int32_t* c, Py_ssize_t found, float limit
) noexcept nogil:
    """The notes c[:found] whose score or upper bound w[j] reaches `limit`, moved to the front of c, in
    order; their count."""
    cdef Py_ssize_t j, kept = 0
    for j in range(found):
        if w[j] >= limit:
            c[kept] = c[j]
            kept += 1
    return kept


cdef inline Py_ssize_t _rescore(
    const float* base, const float* q, Py_ssize_t d, const int32_t* c, Py_ssize_t kept, Py_ssize_t k,
    float* hs, int32_t* hi
) noexcept nogil:
    """The top k of the rows c[:kept] by their exact score `_dot(row, q)`, sorted into (hs, hi); its size.
    The rows are scattered in the float32 matrix at `base`: all are prefetched first."""
    cdef Py_ssize_t j, size = 0
    for j in range(kept):
        EDGEWISE_PREFETCH(base + c[j] * d)
    for j in range(kept):
        size = _offer(hs, hi, size, k, _dot(base + c[j] * d, q, d), c[j])
    _sort_heap(hs, hi, size)
    return size


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
        return _topk_no_dims(m, n, k, hs, hi)
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


cdef inline Py_ssize_t _topk_of_scores(
    const float* s, const uint8_t* m, Py_ssize_t n, Py_ssize_t k, float* hs, int32_t* hi
) noexcept nogil:
    """Heap of the top k of s[i] over m[i] != 0 (unsorted); returns its size."""
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t end
    cdef unsigned bits
    while i < n:
        if size == k and i + 8 <= n:
            # Heap full: a group of 8 can only matter if some score reaches the worst entry kept
            # (an equal score may still enter with a lower index, so >= and not >).
            bits = ew_ge8(s + i, hs[0])
            if bits == 0:
                i += 8
                continue
            end = i + 8
            while i < end:
                if (bits & 1) and m[i]:
                    size = _offer(hs, hi, size, k, s[i], <int32_t>i)
                bits >>= 1
                i += 1
            continue
        if m[i]:
            size = _offer(hs, hi, size, k, s[i], <int32_t>i)
        i += 1
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
    cdef Py_ssize_t size = _topk_of_scores(&scores[0], &mask[0], n, k, &out_scores[0], &out_idx[0])
    _sort_heap(&out_scores[0], &out_idx[0], size)
    return size


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
) noexcept nogil:
    # Exact top-k by dot(matrix[i], query) that reads the float32 matrix only for a few rows.
    # `bound` limits |approximate - exact| for any row: binary16 rounding (2^-11 relative, or 2^-25
    # absolute below the normal range) plus both float sums' rounding, doubled for margin.
    # 1. One pass over the half-precision blocked copy, _HALF_CHUNK groups of 8 rows at a time scored
    #    into a buffer that stays in L1. A heap keeps the k best approximate scores; every candidate
    #    whose approximate score reaches (the heap's worst - 2 * bound) is noted with that score
    #    (all of them while the heap is not full).
    # 2. The notes are filtered again with the final heap's worst A: approximate >= A - 2 * bound.
    #    The heap's worst only grows, so every row that passes this was noted in 1.
    # 3. Those rows are scored exactly from the float32 matrix; top k with the usual order.
    # Every row of the exact top k passes 2: its approximate score is at least its exact score - bound
    # >= (exact k-th best) - bound >= A - 2 * bound (k rows have approximate >= A, so exact >= A - bound).
    cdef Py_ssize_t n = matrix.shape[0]
    cdef Py_ssize_t d = matrix.shape[1]
    if k <= 0 or n == 0:
        return 0
    cdef float* hs = &out_scores[0]
    cdef int32_t* hi = &out_idx[0]
    cdef const uint8_t* m = &mask[0]
    cdef const float* q
    cdef const float* base
    cdef float* w = &work[0]  # approximate scores of the noted rows
    cdef int32_t* c = &cand[0]  # the noted rows
    cdef float local[_HALF_CHUNK * 8]
    cdef Py_ssize_t n_blocks = blocks.shape[0]
    cdef Py_ssize_t b0, g, nb, i, j, size = 0, found = 0, kept = 0
    cdef float spread = 0, qsum = 0, margin, limit, sc
    cdef unsigned bits
    if d == 0:
        return _topk_no_dims(m, n, k, hs, hi)
    q = &query[0]
    base = &matrix[0, 0]
    for j in range(d):
        spread += fabsf(q[j]) * col_absmax[j]
        qsum += fabsf(q[j])
    margin = 2 * (2 * ((1.0 / 2048 + d / 4194304.0) * spread + qsum / 33554432.0))
    b0 = 0
    while b0 < n_blocks:
        nb = n_blocks - b0 if n_blocks - b0 < _HALF_CHUNK else _HALF_CHUNK
        ew_half_scores(&blocks[b0, 0, 0], q, d, nb, local)
        for g in range(nb):
            limit = hs[0] - margin if size == k else -INFINITY
            bits = ew_ge8(local + g * 8, limit)
            while bits:
                j = ew_ctz(bits)
                bits &= bits - 1
                i = (b0 + g) * 8 + j
                if i >= n:
                    break  # padding rows of the last group
                if m[i]:
                    sc = local[g * 8 + j]
                    c[found] = <int32_t>i
                    w[found] = sc
                    found += 1
                    size = _offer(hs, hi, size, k, sc, <int32_t>i)
        b0 += nb
    kept = _keep_reaching(w, c, found, hs[0] - margin if size == k else -INFINITY)
    return _rescore(base, q, d, c, kept, k, hs, hi)


cdef inline Py_ssize_t _half_margin_scan(
    const uint16_t* blocks,
    Py_ssize_t d,
    Py_ssize_t n_blocks,
    const int32_t* slot_rows,
    const float* q,
    const uint8_t* m,
    Py_ssize_t n,
    Py_ssize_t cap,
    float margin,
    Py_ssize_t k,
    float* hs,
    int32_t* hi,
    Py_ssize_t* size,
    float* w,
    int32_t* c,
    Py_ssize_t found,
    Py_ssize_t* masked,
    const char* pf,
    const char* pf_end,
) noexcept nogil:
    # Step 1 of topk_half_kernel over n_blocks consecutive blocks whose slots hold the rows slot_rows[...]
    # (-1: padding): notes every candidate that may still reach the top k, counts the candidates the
    # mask keeps in `masked`. Returns the new count of notes. [pf, pf_end) is the next list's blocks:
    # prefetched as many lines per block as a block has, so it is in cache when its scan starts (lists
    # are a few kilobytes at scattered places: the hardware prefetcher would start on each one cold).
    cdef float local[_HALF_CHUNK * 8]
    cdef Py_ssize_t b0 = 0, nb, g, j
    cdef Py_ssize_t block_bytes = d * 16
    cdef const char* pf_stop
    cdef int32_t r
    cdef float limit, sc
    cdef unsigned bits
    while b0 < n_blocks:
        nb = n_blocks - b0 if n_blocks - b0 < _HALF_CHUNK else _HALF_CHUNK
        pf_stop = pf + nb * block_bytes
        if pf_stop > pf_end:
            pf_stop = pf_end
        while pf < pf_stop:
            EDGEWISE_PREFETCH(pf)
            pf += 64
        ew_half_scores(blocks + b0 * d * 8, q, d, nb, local)
        for g in range(nb):
            limit = hs[0] - margin if size[0] == k else -INFINITY
            bits = ew_ge8(local + g * 8, limit)
            while bits:
                j = ew_ctz(bits)
                bits &= bits - 1
                r = slot_rows[(b0 + g) * 8 + j]
                # -1: padding; a row past the mask or a note past the buffers cannot come from a valid
                # partition (each row in one slot), and is skipped rather than read or written
                if r >= 0 and r < n and m[r] and found < cap:
                    sc = local[g * 8 + j]
                    c[found] = r
                    w[found] = sc
                    found += 1
                    size[0] = _offer(hs, hi, size[0], k, sc, r)
            # rows of the group the mask keeps, whatever their scores: the stopping rule needs to know
            # whether there are k of them (and no more)
            if masked[0] >= k:
                continue
            for j in range(8):
                r = slot_rows[(b0 + g) * 8 + j]
                if r >= 0 and r < n and m[r]:
                    masked[0] += 1
        b0 += nb
    return found


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
) noexcept nogil:
    # The exact top k of dot(matrix[i], query) among the rows the mask keeps in the lists scanned:
    # 1. every list's centroid is scored and the lists ordered by (centroid score desc, list asc);
    # 2. lists are scanned in that order, at least `probes` of them and then on until the lists scanned
    #    hold at least k rows the mask keeps (or none is left), each by the half-precision scan with
    #    the same margin as topk_half_kernel;
    # 3. the notes are filtered with the final heap's worst and rescored exactly, as in topk_half_kernel.
    # Rows of lists not scanned are never candidates: that is the approximation (recall, not order).
    cdef Py_ssize_t n = matrix.shape[0]
    cdef Py_ssize_t d = matrix.shape[1]
    cdef Py_ssize_t lists = centroids.shape[0]
    if k <= 0 or n == 0 or lists == 0:
        return 0
    cdef float* hs = &out_scores[0]
    cdef int32_t* hi = &out_idx[0]
    cdef const uint8_t* m = &mask[0]
    cdef float* ls = &list_scores[0]
    cdef int32_t* lo = &list_order[0]
    cdef float* w = &work[0]
    cdef int32_t* c = &cand[0]
    cdef Py_ssize_t cap = work.shape[0] if work.shape[0] < cand.shape[0] else cand.shape[0]
    cdef const uint16_t* bbase = &blocks[0, 0, 0] if blocks.shape[0] > 0 and d > 0 else NULL
    cdef const int32_t* mbase = &members[0] if members.shape[0] > 0 else NULL
    cdef const float* q
    cdef const float* base
    cdef Py_ssize_t size = 0, found = 0, kept = 0, masked = 0, order_n = 0, first, p, l, j, nxt
    cdef const char* pf
    cdef const char* pf_end
    cdef float spread = 0, qsum = 0, margin
    if d == 0:
        return _topk_no_dims(m, n, k, hs, hi)
    q = &query[0]
    base = &matrix[0, 0]
    for j in range(d):
        spread += fabsf(q[j]) * col_absmax[j]
        qsum += fabsf(q[j])
    margin = 2 * (2 * ((1.0 / 2048 + d / 4194304.0) * spread + qsum / 33554432.0))
    # 1. the `probes` lists of the best centroid scores, best first (a heap of that size: sorting all
    #    lists costs more than scanning a few of them)
    first = probes if probes < lists else lists
    for l in range(lists if first > 0 else 0):
        order_n = _offer(ls, lo, order_n, first, _dot(&centroids[l, 0], q, d), <int32_t>l)
    _sort_heap(ls, lo, order_n)
    # 2. the scan, list by list; past the first `probes` lists (too few candidates in them: a mask
    #    that keeps few rows) the order of all lists is needed, and its first lists are those scanned
    p = 0
    while p < lists:
        if p >= probes and masked >= k:
            break
        if p == order_n:
            order_n = 0
            for l in range(lists):
                order_n = _offer(ls, lo, order_n, lists, _dot(&centroids[l, 0], q, d), <int32_t>l)
            _sort_heap(ls, lo, order_n)
        l = lo[p]
        if p + 1 < order_n:
            nxt = lo[p + 1]
            pf = <const char*>(bbase + starts[nxt] * d * 8)
            pf_end = <const char*>(bbase + starts[nxt + 1] * d * 8)
        else:
            pf = pf_end = NULL
        found = _half_margin_scan(
            bbase + starts[l] * d * 8,
            d,
            starts[l + 1] - starts[l],
            mbase + starts[l] * 8,
            q,
            m,
            n,
            cap,
            margin,
            k,
            hs,
            hi,
            &size,
            w,
            c,
            found,
            &masked,
            pf,
            pf_end,
        )
        p += 1
    # 3. exact rescoring of the rows that may be in the top k
    kept = _keep_reaching(w, c, found, hs[0] - margin if size == k else -INFINITY)
    return _rescore(base, q, d, c, kept, k, hs, hi)


cdef struct _Int8Query:
    # A query quantized for the int8 scan: q ~= sq * qb, the correction of the unsigned row bytes, and
    # the coefficients of the per-row error bound (see topk_int8_kernel).
    int level
    int32_t corr
    float sq
    float big_k
    float c2
    float c0


cdef enum:
    # The int8 scan quantizes the query into a buffer on the stack: at most this many dimensions.
    INT8_MAX_DIMS = 4096

# Magnitudes the int8 scan handles (beyond them it rescores every candidate exactly): the largest |value|
# of a query, and of each nonzero row of the matrix (scoring.int8_index), in [2^-50, 2^50]; so no
# product overflows and the scales stay normal floats.
cdef double _I8_LO = 2.0 ** -50
cdef double _I8_HI = 2.0 ** 50


cdef bint _int8_query(
    const float* q, Py_ssize_t d, Py_ssize_t groups, float err_ratio, int8_t* qb, _Int8Query* out
) noexcept nogil:
    """Quantize q into qb[groups * 4] (zero padded) and compute the bound's coefficients. False when the
    query is outside what the scan handles (all zero, beyond the magnitudes, too many dimensions)."""
    cdef double mq = 0, l1q = 0, q1 = 0, f = 0, fmax = 0, v, sq, grow, dd = <double>d
    cdef int qmax, r
    cdef int32_t qsum = 0
    cdef Py_ssize_t j
    if groups * 4 > INT8_MAX_DIMS or d == 0:
        return False
    for j in range(d):
        v = fabs(<double>q[j])
        l1q += v
        if v > mq:
            mq = v
    if not (mq >= _I8_LO and mq <= _I8_HI):
        return False
    out.level = ew_i8_level()
    qmax = ew_i8_qmax(out.level)
    sq = <double><float>(mq / qmax)
    for j in range(groups * 4):
        qb[j] = 0
    for j in range(d):
        r = <int>rint(q[j] / sq)
        if r > qmax:
            r = qmax
        elif r < -qmax:
            r = -qmax
        qb[j] = <int8_t>r
        qsum += r
        q1 += r if r >= 0 else -r
        f = fabs(<double>q[j] - sq * r)  # exact: sq * r and q[j] fit a double's mantissa
        if f > fmax:
            fmax = f
    # Bound of |exact - approximate| for row r (x ~= s_r * x~, |x - s_r x~| <= e_r <= E s_r, t_r >= s_r |x~|_1):
    #   quantization: e_r |q|_1 + F s_r |x~|_1, with F = max |q - s_q q^|;
    #   float rounding of the exact dot (any order, FMA or not): <= 2 (d + 8) 2^-24 sum |x q|, and
    #   sum |x q| <= (127 s_r + e_r) |q|_1; of the approximate score and its bounds (a few roundings of
    #   |A| <= 127 s_r s_q sum|q^| and of B): covered by the same term and the factor (1 + 2^-18);
    #   flushed subnormals (a -ffast-math build may set FTZ/DAZ): 2^-118 (d + |q|_1) and the d 2^-118
    #   terms, each larger than what can flush.
    grow = 1 + 2.0 ** -18
    rel = (dd + 8) * 2.0 ** -23
    out.corr = 128 * qsum
    out.sq = <float>sq
    out.c2 = <float>(fmax * grow)
    out.big_k = <float>(
        ((l1q * (1 + rel) + dd * 2.0 ** -118) * err_ratio + 127 * (l1q + sq * q1) * rel + 128 * dd * 2.0 ** -118)
        * grow
    )
    out.c0 = <float>((dd + l1q) * 2.0 ** -118 * grow)
    return True


cdef Py_ssize_t _int8_scan(
    const uint8_t* blocks,
    Py_ssize_t groups,
    Py_ssize_t n_blocks,
    const float* scale,
    const float* tl1,
    const int8_t* qb,
    const _Int8Query* qq,
    const uint8_t* m,
    Py_ssize_t n,
    Py_ssize_t k,
    float* hs,
    int32_t* hi,
    float* w,
    int32_t* c,
) noexcept nogil:
    # Steps 1-2 of topk_int8_kernel: notes every candidate whose upper bound reaches the heap's worst
    # lower bound, then keeps the notes whose upper bound reaches the final heap's worst. Returns how many.
    # A chunk computes every row's upper bound and flags the lanes reaching the threshold as it was when
    # the chunk started (it only grows: a flag is checked again with the current one); a flagged row's
    # lower bound is up - 2 B (B recomputed here: its rounding is within the bound's slack).
    cdef float up[_INT8_CHUNK * 8]
    cdef uint8_t flags[_INT8_CHUNK]
    cdef Py_ssize_t b0 = 0, nb, g, j, i, r, size = 0, found = 0
    cdef float limit, u, bnd
    cdef unsigned bits
    while b0 < n_blocks:
        nb = n_blocks - b0 if n_blocks - b0 < _INT8_CHUNK else _INT8_CHUNK
        limit = hs[0] if size == k else -INFINITY
        ew_i8_chunk(
            qq.level, blocks + b0 * groups * 32, qb, groups, nb, scale + b0 * 8, tl1 + b0 * 8, qq.corr,
            qq.sq, qq.big_k, qq.c2, qq.c0, limit, up, flags
        )
        for g in range(nb):
            bits = flags[g]
            while bits:
                j = ew_ctz(bits)
                bits &= bits - 1
                r = g * 8 + j
                i = b0 * 8 + r
                if i >= n:
                    break  # padding rows of the last group
                u = up[r]
                if m[i] and (size < k or u >= hs[0]):
                    c[found] = <int32_t>i
                    w[found] = u
                    found += 1
                    bnd = scale[i] * qq.big_k + tl1[i] * qq.c2 + qq.c0
                    size = _offer(hs, hi, size, k, u - 2 * bnd, <int32_t>i)
        b0 += nb
    return _keep_reaching(w, c, found, hs[0] if size == k else -INFINITY)


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
) noexcept nogil:
    # Exact top-k by dot(matrix[i], query), like topk_half_kernel, scanning an int8 copy (a quarter of the
    # float32 bytes plus 8 per row). For every row the scan computes from integer dot products an
    # approximate score A and a bound B with lo = A - B <= exact <= hi = A + B (exact: `_dot`'s float32
    # result, the score returned; the bound is rigorous, see _int8_query):
    # 1. a heap keeps the k best lower bounds; every candidate whose upper bound reaches the heap's worst
    #    lower bound is noted with its upper bound (all of them while the heap is not full);
    # 2. the notes are filtered again with the final heap's worst T (it only grows: every row that passes
    #    was noted);
    # 3. those rows are scored exactly from the float32 matrix; top k with the usual order.
    # A row with hi < T is not in the exact top k: k rows have exact >= lo >= T > hi >= its exact score.
    # A query the scan does not handle (zero, huge or tiny magnitudes) has every candidate rescored.
    cdef Py_ssize_t n = matrix.shape[0]
    cdef Py_ssize_t d = matrix.shape[1]
    if k <= 0 or n == 0:
        return 0
    cdef float* hs = &out_scores[0]
    cdef int32_t* hi = &out_idx[0]
    cdef const uint8_t* m = &mask[0]
    cdef int32_t* c = &cand[0]
    cdef int8_t qb[INT8_MAX_DIMS]
    cdef _Int8Query qq
    cdef Py_ssize_t kept = 0, i
    cdef const float* q
    cdef const float* base
    if d == 0:
        return _topk_no_dims(m, n, k, hs, hi)
    q = &query[0]
    base = &matrix[0, 0]
    if _int8_query(q, d, blocks.shape[1], err_ratio, qb, &qq):
        kept = _int8_scan(
            &blocks[0, 0, 0], blocks.shape[1], blocks.shape[0], &scale[0], &tl1[0], qb, &qq, m, n, k,
            hs, hi, &work[0], c
        )
    else:
        for i in range(n):
            if m[i]:
                c[kept] = <int32_t>i
                kept += 1
    return _rescore(base, q, d, c, kept, k, hs, hi)


cdef inline Py_ssize_t _int8_list_scan(
    const uint8_t* blocks,
    Py_ssize_t groups,
    Py_ssize_t n_blocks,
    const float* scale,
    const float* tl1,
    const int32_t* slot_rows,
    const int8_t* qb,
    const _Int8Query* qq,
    const uint8_t* m,
    Py_ssize_t n,
    Py_ssize_t cap,
    Py_ssize_t k,
    float* hs,
    int32_t* hi,
    Py_ssize_t* size,
    float* w,
    int32_t* c,
    Py_ssize_t found,
    Py_ssize_t* masked,
    const char* pf,
    const char* pf_end,
) noexcept nogil:
    # _half_margin_scan's job on the int8 copy of the lists: the same slots (slot_rows: -1 padding), the
    # same notes (with each row's upper bound), heap of lower bounds, stopping count and prefetch of the
    # next list; the flags as in _int8_scan.
    cdef float up[_INT8_CHUNK * 8]
    cdef uint8_t flags[_INT8_CHUNK]
    cdef Py_ssize_t b0 = 0, nb, g, j, s
    cdef Py_ssize_t block_bytes = groups * 32
    cdef const char* pf_stop
    cdef int32_t r
    cdef float limit, u, bnd
    cdef unsigned bits
    while b0 < n_blocks:
        nb = n_blocks - b0 if n_blocks - b0 < _INT8_CHUNK else _INT8_CHUNK
        pf_stop = pf + nb * block_bytes
        if pf_stop > pf_end:
            pf_stop = pf_end
        while pf < pf_stop:
            EDGEWISE_PREFETCH(pf)
            pf += 64
        limit = hs[0] if size[0] == k else -INFINITY
        ew_i8_chunk(
            qq.level, blocks + b0 * block_bytes, qb, groups, nb, scale + b0 * 8, tl1 + b0 * 8, qq.corr,
            qq.sq, qq.big_k, qq.c2, qq.c0, limit, up, flags
        )
        for g in range(nb):
            bits = flags[g]
            while bits:
                j = ew_ctz(bits)
                bits &= bits - 1
                s = (b0 + g) * 8 + j
                r = slot_rows[s]
                u = up[g * 8 + j]
                if r >= 0 and r < n and m[r] and found < cap and (size[0] < k or u >= hs[0]):
                    c[found] = r
                    w[found] = u
                    found += 1
                    bnd = scale[s] * qq.big_k + tl1[s] * qq.c2 + qq.c0
                    size[0] = _offer(hs, hi, size[0], k, u - 2 * bnd, r)
            if masked[0] >= k:
                continue
            for j in range(8):
                r = slot_rows[(b0 + g) * 8 + j]
                if r >= 0 and r < n and m[r]:
                    masked[0] += 1
        b0 += nb
    return found


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
) noexcept nogil:
    # topk_partition_kernel with the lists scanned from their int8 copy (i8_* : the same slots as
    # `blocks`, scoring.int8_index of the slot-ordered rows): the same lists in the same order, the same
    # stopping rule, exact rescoring of the rows whose upper bound reaches the k-th lower bound, so the
    # same result. A query the int8 scan does not handle goes to topk_partition_kernel.
    cdef Py_ssize_t n = matrix.shape[0]
    cdef Py_ssize_t d = matrix.shape[1]
    cdef Py_ssize_t lists = centroids.shape[0]
    cdef Py_ssize_t groups = i8_blocks.shape[1]
    if k <= 0 or n == 0 or lists == 0:
        return 0
    cdef int8_t qb[INT8_MAX_DIMS]
    cdef _Int8Query qq
    if d == 0 or i8_blocks.shape[0] == 0 or not _int8_query(&query[0], d, groups, err_ratio, qb, &qq):
        return topk_partition_kernel(
            centroids, starts, blocks, members, col_absmax, matrix, query, mask, k, probes, list_scores,
            list_order, work, cand, out_idx, out_scores
        )
    cdef float* hs = &out_scores[0]
    cdef int32_t* hi = &out_idx[0]
    cdef const uint8_t* m = &mask[0]
    cdef float* ls = &list_scores[0]
    cdef int32_t* lo = &list_order[0]
    cdef float* w = &work[0]
    cdef int32_t* c = &cand[0]
    cdef Py_ssize_t cap = work.shape[0] if work.shape[0] < cand.shape[0] else cand.shape[0]
    cdef const uint8_t* bbase = &i8_blocks[0, 0, 0]
    cdef const float* sbase = &i8_scale[0]
    cdef const float* tbase = &i8_tl1[0]
    cdef const int32_t* mbase = &members[0]
    cdef const float* q = &query[0]
    cdef const float* base = &matrix[0, 0]
    cdef Py_ssize_t size = 0, found = 0, kept = 0, masked = 0, order_n = 0, first, p, l, nxt
    cdef Py_ssize_t block_bytes = groups * 32
    cdef const char* pf
    cdef const char* pf_end
    first = probes if probes < lists else lists
    for l in range(lists if first > 0 else 0):
        order_n = _offer(ls, lo, order_n, first, _dot(&centroids[l, 0], q, d), <int32_t>l)
    _sort_heap(ls, lo, order_n)
    p = 0
    while p < lists:
        if p >= probes and masked >= k:
            break
        if p == order_n:
            order_n = 0
            for l in range(lists):
                order_n = _offer(ls, lo, order_n, lists, _dot(&centroids[l, 0], q, d), <int32_t>l)
            _sort_heap(ls, lo, order_n)
        l = lo[p]
        if p + 1 < order_n:
            nxt = lo[p + 1]
            pf = <const char*>(bbase + starts[nxt] * block_bytes)
            pf_end = <const char*>(bbase + starts[nxt + 1] * block_bytes)
        else:
            pf = pf_end = NULL
        found = _int8_list_scan(
            bbase + starts[l] * block_bytes,
            groups,
            starts[l + 1] - starts[l],
            sbase + starts[l] * 8,
            tbase + starts[l] * 8,
            mbase + starts[l] * 8,
            qb,
            &qq,
            m,
            n,
            cap,
            k,
            hs,
            hi,
            &size,
            w,
            c,
            found,
            &masked,
            pf,
            pf_end,
        )
        p += 1
    kept = _keep_reaching(w, c, found, hs[0] if size == k else -INFINITY)
    return _rescore(base, q, d, c, kept, k, hs, hi)


cdef Py_ssize_t neighbor_candidates_kernel(
    const int32_t[:, ::1] neighbors,
    const float[:, ::1] weights,
    const int32_t[::1] seeds,
    const uint8_t[::1] mask,
    int32_t[::1] slot,
    int32_t[::1] cand,
    float[::1] cand_scores,
) noexcept nogil:
    # The seeds' precomputed neighbor lists merged: each row once, its weights summed over the seeds in
    # seed order, rows in order of first appearance; then only the rows the mask keeps. `slot` maps a
    # row to its position + 1 while merging (all zero on entry, restored to zero on exit).
    cdef Py_ssize_t n = mask.shape[0]
    cdef Py_ssize_t rows_n = neighbors.shape[0]
    cdef Py_ssize_t width = neighbors.shape[1]
    cdef Py_ssize_t found = 0
    cdef Py_ssize_t kept = 0
    cdef Py_ssize_t si, j, i
    cdef int32_t seed, r, pos
    for si in range(seeds.shape[0]):
        seed = seeds[si]
        if seed < 0 or seed >= rows_n:
            continue
        for j in range(width):
            r = neighbors[seed, j]
            if r < 0 or r >= n:
                continue
            pos = slot[r]
            if pos == 0:
                cand[found] = r
                cand_scores[found] = weights[seed, j]
                found += 1
                slot[r] = <int32_t>found
            else:
                cand_scores[pos - 1] += weights[seed, j]
    for i in range(found):
        r = cand[i]
        slot[r] = 0
        if mask[r]:
            cand[kept] = r
            cand_scores[kept] = cand_scores[i]
            kept += 1
    return kept


cdef Py_ssize_t topk_pairs_kernel(
    const int32_t[::1] rows,
    const float[::1] scores,
    Py_ssize_t count,
    uint8_t[::1] mask,
    Py_ssize_t k,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil:
    # Top k of explicit (row, score) pairs among rows the mask keeps, then every given row is cleared in
    # the mask (so a following scan of the mask only fills up). Rows are in [0, mask length).
    cdef float* hs = &out_scores[0] if k > 0 else NULL
    cdef int32_t* hi = &out_idx[0] if k > 0 else NULL
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t i
    cdef int32_t r
    if k > 0:
        for i in range(count):
            r = rows[i]
            if mask[r]:
                size = _offer(hs, hi, size, k, scores[i], r)
        _sort_heap(hs, hi, size)
    for i in range(count):
        mask[rows[i]] = 0
    return size


cdef Py_ssize_t topk_sorted_kernel(
    const int32_t[::1] order,
    const float[::1] scores,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    Py_ssize_t limit,
    int32_t[::1] out_idx,
    float[::1] out_scores,
) noexcept nogil:
    # `order` lists rows by (score descending, row ascending): the first k rows the mask keeps are the
    # top k. Walks at most `limit` entries; returns -1 when that was not enough to decide (or an entry
    # is not a row).
    cdef Py_ssize_t n = order.shape[0]
    cdef Py_ssize_t end = limit if limit < n else n
    cdef Py_ssize_t found = 0
    cdef Py_ssize_t i
    cdef int32_t r
    if k <= 0:
        return 0
    for i in range(end):
        r = order[i]
        if r < 0 or r >= n:
            return -1  # not a valid order: the caller scans instead
        if mask[r]:
            out_idx[found] = r
            out_scores[found] = scores[r]
            found += 1
            if found == k:
                return found
    return found if end == n else -1


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


def topk_half_into(
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
):
    """Exact top-k by dot(matrix[i], query) among mask != 0, scanning the half-precision blocked copy."""
    cdef Py_ssize_t n = matrix.shape[0]
    cdef Py_ssize_t d = matrix.shape[1]
    if (
        blocks.shape[2] != 8
        or blocks.shape[1] != d
        or blocks.shape[0] != (n + 7) // 8
        or col_absmax.shape[0] != d
        or query.shape[0] != d
        or work.shape[0] < blocks.shape[0] * 8
        or cand.shape[0] < n
    ):
        raise ValueError(
            "invalid sizes: blocks [ceil(n/8), d, 8], col_absmax [d], query [d], "
            "work >= n_blocks * 8, cand >= n"
        )
    _check_sizes(n, mask.shape[0], k, out_idx.shape[0], out_scores.shape[0])
    cdef Py_ssize_t written
    with nogil:
        written = topk_half_kernel(
            blocks, col_absmax, matrix, query, mask, k, work, cand, out_idx, out_scores
        )
    return written


def topk_partition_into(
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
):
    """Exact top-k by dot(matrix[i], query) among mask != 0 within the lists of a partition scanned."""
    cdef Py_ssize_t n = matrix.shape[0]
    cdef Py_ssize_t d = matrix.shape[1]
    cdef Py_ssize_t lists = centroids.shape[0]
    cdef Py_ssize_t l
    if (
        centroids.shape[1] != d
        or starts.shape[0] != lists + 1
        or blocks.shape[1] != d
        or blocks.shape[2] != 8
        or members.shape[0] != blocks.shape[0] * 8
        or col_absmax.shape[0] != d
        or query.shape[0] != d
        or list_scores.shape[0] < lists
        or list_order.shape[0] < lists
        or work.shape[0] < n
        or cand.shape[0] < n
        or probes < 0
    ):
        raise ValueError(
            "invalid sizes: centroids [lists, d], starts [lists + 1], blocks [b, d, 8], members [b * 8], "
            "col_absmax and query [d], list scratch >= lists, work and cand >= n, probes >= 0"
        )
    _check_sizes(n, mask.shape[0], k, out_idx.shape[0], out_scores.shape[0])
    if lists and starts[0] != 0:
        raise ValueError("invalid partition: starts must begin at 0")
    for l in range(lists):
        if starts[l + 1] < starts[l] or starts[l + 1] > blocks.shape[0]:
            raise ValueError("invalid partition: starts must be non-decreasing block numbers")
    cdef Py_ssize_t written
    with nogil:
        written = topk_partition_kernel(
            centroids, starts, blocks, members, col_absmax, matrix, query, mask, k, probes,
            list_scores, list_order, work, cand, out_idx, out_scores
        )
    return written


cdef int _check_int8(
    const uint8_t[:, :, ::1] blocks,
    const float[::1] scale,
    const float[::1] tl1,
    Py_ssize_t n,
    Py_ssize_t d,
    Py_ssize_t query_len,
) except -1:
    if (
        blocks.shape[2] != 32
        or blocks.shape[1] != (d + 3) // 4
        or blocks.shape[0] != (n + 7) // 8
        or scale.shape[0] != blocks.shape[0] * 8
        or tl1.shape[0] != blocks.shape[0] * 8
        or query_len != d
    ):
        raise ValueError(
            "invalid sizes: blocks [ceil(n/8), ceil(d/4), 32], scale and tl1 [n_blocks * 8], query [d]"
        )
    return 0


def topk_int8_into(
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
):
    """Exact top-k by dot(matrix[i], query) among mask != 0, scanning the int8 blocked copy."""
    cdef Py_ssize_t n = matrix.shape[0]
    cdef Py_ssize_t d = matrix.shape[1]
    _check_int8(blocks, scale, tl1, n, d, query.shape[0])
    if work.shape[0] < n or cand.shape[0] < n:
        raise ValueError("invalid sizes: work and cand >= n")
    _check_sizes(n, mask.shape[0], k, out_idx.shape[0], out_scores.shape[0])
    cdef Py_ssize_t written
    with nogil:
        written = topk_int8_kernel(
            blocks, scale, tl1, err_ratio, matrix, query, mask, k, work, cand, out_idx, out_scores
        )
    return written


def int8_bounds_into(
    const uint8_t[:, :, ::1] blocks,
    const float[::1] scale,
    const float[::1] tl1,
    float err_ratio,
    const float[::1] query,
    int8_t[::1] qbytes,
    float[::1] hi,
    float[::1] lo,
):
    """The int8 scan's quantized query (qbytes) and per-row bounds (hi, lo; n_blocks * 8 each, padding
    rows included), computed as the scan does on its code path, which is returned (2 AVX-VNNI, 1 AVX2, 0
    portable), or -1 when the scan does not handle the query (then nothing is written). For tests and
    benchmarks: the scan itself never materializes these."""
    cdef Py_ssize_t d = query.shape[0]
    cdef Py_ssize_t nb = blocks.shape[0]
    cdef Py_ssize_t groups = blocks.shape[1]
    cdef Py_ssize_t i
    cdef int8_t qb[INT8_MAX_DIMS]
    cdef _Int8Query qq
    cdef uint8_t[::1] flags = bytearray(nb + 1)
    _check_int8(blocks, scale, tl1, nb * 8, d, d)
    if qbytes.shape[0] < groups * 4 or hi.shape[0] < nb * 8 or lo.shape[0] < nb * 8:
        raise ValueError("invalid sizes: qbytes >= groups * 4, hi and lo >= n_blocks * 8")
    if d == 0 or not _int8_query(&query[0], d, groups, err_ratio, qb, &qq):
        return -1
    for i in range(groups * 4):
        qbytes[i] = qb[i]
    if nb:
        ew_i8_chunk(
            qq.level, &blocks[0, 0, 0], qb, groups, nb, &scale[0], &tl1[0], qq.corr, qq.sq, qq.big_k,
            qq.c2, qq.c0, -INFINITY, &hi[0], &flags[0]
        )
        for i in range(nb * 8):
            lo[i] = hi[i] - 2 * (scale[i] * qq.big_k + tl1[i] * qq.c2 + qq.c0)
    return qq.level


def int8_dots_into(const uint8_t[:, :, ::1] blocks, const int8_t[::1] qbytes, int level, float[::1] out):
    """The integer dots (x~ + 128) . q^ of every row on code path `level` (2, 1, 0), as floats (exact below
    2^24): the scan's chunk with unit scales and no bound. For tests: every path must give the same."""
    cdef Py_ssize_t nb = blocks.shape[0]
    cdef Py_ssize_t groups = blocks.shape[1]
    if blocks.shape[2] != 32 or qbytes.shape[0] < groups * 4 or out.shape[0] < nb * 8:
        raise ValueError("invalid sizes: blocks [b, g, 32], qbytes >= g * 4, out >= b * 8")
    if level < 0 or level > ew_i8_level():
        raise ValueError("this CPU does not run that code path")
    cdef float[::1] ones = _array.array("f", [1.0]) * (nb * 8 + 1)
    cdef float[::1] zeros = _array.array("f", [0.0]) * (nb * 8 + 1)
    cdef uint8_t[::1] flags = bytearray(nb + 1)
    if nb:
        ew_i8_chunk(
            level, &blocks[0, 0, 0], &qbytes[0], groups, nb, &ones[0], &zeros[0], 0, 1, 0, 0, 0, 0,
            &out[0], &flags[0]
        )


def int8_candidates(
    const uint8_t[:, :, ::1] blocks,
    const float[::1] scale,
    const float[::1] tl1,
    float err_ratio,
    const float[::1] query,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    float[::1] work,
    int32_t[::1] cand,
    int32_t[::1] out_idx,
    float[::1] out_scores,
):
    """How many rows the int8 scan would rescore exactly for this query (-1: it rescores every
    candidate, a query it does not handle). For benchmarks: the looseness of the bound."""
    cdef Py_ssize_t n = mask.shape[0]
    cdef Py_ssize_t d = query.shape[0]
    cdef int8_t qb[INT8_MAX_DIMS]
    cdef _Int8Query qq
    _check_int8(blocks, scale, tl1, n, d, d)
    if work.shape[0] < n or cand.shape[0] < n:
        raise ValueError("invalid sizes: work and cand >= n")
    _check_sizes(n, n, k, out_idx.shape[0], out_scores.shape[0])
    if k <= 0 or n == 0:
        return 0
    if d == 0 or not _int8_query(&query[0], d, blocks.shape[1], err_ratio, qb, &qq):
        return -1
    return _int8_scan(
        &blocks[0, 0, 0], blocks.shape[1], blocks.shape[0], &scale[0], &tl1[0], qb, &qq, &mask[0], n, k,
        &out_scores[0], &out_idx[0], &work[0], &cand[0]
    )


def int8_level():
    """The int8 scan's code path on this CPU (and setting): 2 AVX-VNNI, 1 AVX2, 0 portable."""
    return ew_i8_level()


def set_int8_path(int level):
    """Force the int8 scan's code path down to `level` (0 portable, 1 AVX2; -1: the fastest, default).

    For tests: every path must give the same results. Returns the previous setting."""
    global ew_i8_forced
    previous = ew_i8_forced
    ew_i8_forced = level
    return previous


def topk_partition_int8_into(
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
):
    """topk_partition_into's result, the lists scanned from their int8 copy."""
    cdef Py_ssize_t d = matrix.shape[1]
    if (
        i8_blocks.shape[0] != blocks.shape[0]
        or i8_blocks.shape[1] != (d + 3) // 4
        or i8_blocks.shape[2] != 32
        or i8_scale.shape[0] != blocks.shape[0] * 8
        or i8_tl1.shape[0] != blocks.shape[0] * 8
    ):
        raise ValueError("invalid sizes: int8 blocks [b, ceil(d/4), 32], scale and tl1 [b * 8]")
    # the checks of the half-precision entry point (and its answer for an invalid partition), then the
    # int8 kernel on the same arguments
    topk_partition_into(
        centroids, starts, blocks, members, col_absmax, matrix, query, mask, 0, probes, list_scores,
        list_order, work, cand, out_idx, out_scores
    )
    _check_sizes(matrix.shape[0], mask.shape[0], k, out_idx.shape[0], out_scores.shape[0])
    cdef Py_ssize_t written
    with nogil:
        written = topk_partition_int8_kernel(
            centroids, starts, blocks, members, col_absmax, i8_blocks, i8_scale, i8_tl1, err_ratio, matrix,
            query, mask, k, probes, list_scores, list_order, work, cand, out_idx, out_scores
        )
    return written


def neighbor_candidates_into(
    const int32_t[:, ::1] neighbors,
    const float[:, ::1] weights,
    const int32_t[::1] seeds,
    const uint8_t[::1] mask,
    int32_t[::1] slot,
    int32_t[::1] cand,
    float[::1] cand_scores,
):
    """Merge the seeds' neighbor lists (weights summed) into cand/cand_scores; returns how many the mask keeps."""
    cdef Py_ssize_t n = mask.shape[0]
    if (
        weights.shape[0] != neighbors.shape[0]
        or weights.shape[1] != neighbors.shape[1]
        or slot.shape[0] != n
        or cand.shape[0] < n
        or cand_scores.shape[0] < n
    ):
        raise ValueError(
            "invalid sizes: weights like neighbors, slot [n], cand and cand_scores at least n long"
        )
    cdef Py_ssize_t kept
    with nogil:
        kept = neighbor_candidates_kernel(neighbors, weights, seeds, mask, slot, cand, cand_scores)
    return kept


def topk_pairs_into(
    const int32_t[::1] rows,
    const float[::1] scores,
    Py_ssize_t count,
    uint8_t[::1] mask,
    Py_ssize_t k,
    int32_t[::1] out_idx,
    float[::1] out_scores,
):
    """Top k of rows[:count] by scores[:count] among mask != 0, then clear those rows in mask; returns the count."""
    cdef Py_ssize_t n = mask.shape[0]
    cdef Py_ssize_t i
    if count < 0 or count > rows.shape[0] or count > scores.shape[0]:
        raise ValueError("invalid sizes: 0 <= count <= len(rows), len(scores)")
    _check_sizes(n, n, k, out_idx.shape[0], out_scores.shape[0])
    for i in range(count):
        if rows[i] < 0 or rows[i] >= n:
            raise ValueError("invalid rows: every row must be in [0, len(mask))")
    cdef Py_ssize_t written
    with nogil:
        written = topk_pairs_kernel(rows, scores, count, mask, k, out_idx, out_scores)
    return written


def topk_sorted_into(
    const int32_t[::1] order,
    const float[::1] scores,
    const uint8_t[::1] mask,
    Py_ssize_t k,
    Py_ssize_t limit,
    int32_t[::1] out_idx,
    float[::1] out_scores,
):
    """Top k of scores among mask != 0 by walking a precomputed order; -1 if `limit` entries did not decide."""
    cdef Py_ssize_t n = scores.shape[0]
    _check_sizes(n, mask.shape[0], k, out_idx.shape[0], out_scores.shape[0])
    if order.shape[0] != n:
        raise ValueError("invalid sizes: order must list every row once")
    cdef Py_ssize_t written
    with nogil:
        written = topk_sorted_kernel(order, scores, mask, k, limit, out_idx, out_scores)
    return written


def set_portable(bint portable):
    """Use only the portable half-precision scan (True) or the fastest this CPU runs (False, default).

    For tests: both must give the same results. Returns the previous setting."""
    global ew_portable_only
    previous = ew_portable_only != 0
    ew_portable_only = 1 if portable else 0
    return previous

