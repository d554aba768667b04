# cython: language_level=3
"""MurmurHash3 x86_32 in C speed for experiment bucketing (see core/bucketing.py for the reference)."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint32_t
from libc.string cimport memcpy


cdef inline uint32_t _rotl(uint32_t x, int r) noexcept nogil:
    return (x << r) | (x >> (32 - r))


cdef uint32_t murmur3_32_kernel(const unsigned char* data, Py_ssize_t n, uint32_t seed) noexcept nogil:
    cdef uint32_t c1 = 0xCC9E2D51U
    cdef uint32_t c2 = 0x1B873593U
    cdef uint32_t c3 = 0xE6546B64U
    cdef uint32_t f1 = 0x85EBCA6BU
    cdef uint32_t f2 = 0xC2B2AE35U
    cdef uint32_t h = seed
    cdef uint32_t k
    cdef Py_ssize_t nblocks = n // 4
    cdef Py_ssize_t i
    for i in range(nblocks):
        memcpy(&k, data + 4 * i, 4)  # little-endian hosts only (x86-64, aarch64)
        k = k * c1
        k = _rotl(k, 15)
        k = k * c2
        h = h ^ k
        h = _rotl(h, 13)
        h = h * 5 + c3
    cdef const unsigned char* tail = data + 4 * nblocks
    cdef Py_ssize_t rem = n & 3
    k = 0
    if rem == 3:
        k = k ^ (<uint32_t>tail[2] << 16)
    if rem >= 2:
        k = k ^ (<uint32_t>tail[1] << 8)
    if rem >= 1:
        k = k ^ <uint32_t>tail[0]
        k = k * c1
        k = _rotl(k, 15)
        k = k * c2
        h = h ^ k
    h = h ^ <uint32_t>n
    h = h ^ (h >> 16)
    h = h * f1
    h = h ^ (h >> 13)
    h = h * f2
    h = h ^ (h >> 16)
    return h


def murmur3_32(bytes data not None, uint32_t seed=0):
    """MurmurHash3 x86_32 of `data`, unsigned."""
    return murmur3_32_kernel(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), seed)
