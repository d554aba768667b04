# Bench-only compiled probes (python -m bench.scoring); nothing in the product imports this module.
#
# Built by setup.py with the kernels' flags (-O3 -ffast-math), so it reads memory the way they do.

cdef enum:
    _STREAM_LANES = 32


cdef float _stream_sum(const float[::1] data) noexcept nogil:
    # 32 lanes of independent partial sums (eight SSE vectors in the portable build): the loop is bound by
    # loads, not by the latency of one add chain, so it measures how fast one core can stream the array.
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


def stream_sum(const float[::1] data):
    """Sum of a float32 array, read once front to back: the benchmark's read-bandwidth probe."""
    cdef float total
    with nogil:
        total = _stream_sum(data)
    return total
