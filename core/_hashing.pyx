# cython: language_level=3
"""MurmurHash3 x86_32 in C speed for experiment bucketing (see core/bucketing.py for the reference).

`bucket(salt, unit)` hashes the UTF-8 bytes of "<salt>:<unit>" without building the joined string or
its bytes: the UTF-8 form of a str is read in place (for ASCII strings it is the string's own buffer;
for others CPython caches it on the string), copied next to the salt into a stack buffer (a heap one
for keys longer than `_STACK_KEY`), and hashed there.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint32_t
from libc.string cimport memcpy

cdef enum:
    BUCKET_COUNT = 10000  # edgewise.core.bucketing.BUCKETS
    _STACK_KEY = 256  # longer "<salt>:<unit>" keys are copied to the heap


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


cdef int salted_bucket(str salt, str unit) except -1:
    """MurmurHash3 x86_32 (seed 0) of the UTF-8 bytes of "<salt>:<unit>", mod BUCKET_COUNT."""
    cdef Py_ssize_t salt_n, unit_n
    cdef const char* salt_p = PyUnicode_AsUTF8AndSize(salt, &salt_n)  # raises on lone surrogates
    cdef const char* unit_p = PyUnicode_AsUTF8AndSize(unit, &unit_n)
    cdef Py_ssize_t n = salt_n + 1 + unit_n
    cdef unsigned char stack[_STACK_KEY]
    cdef unsigned char* key = stack
    if n > _STACK_KEY:
        key = <unsigned char*>PyMem_Malloc(n)
        if key == NULL:
            raise MemoryError()
    memcpy(key, salt_p, salt_n)
    key[salt_n] = 58  # ':'
    memcpy(key + salt_n + 1, unit_p, unit_n)
    cdef uint32_t h = murmur3_32_kernel(key, n, 0)
    if key != stack:
        PyMem_Free(key)
    return <int>(h % BUCKET_COUNT)


def bucket(str salt not None, str unit_id not None):
    """Bucket 0..9999 of a unit under `salt`: murmur3_32(utf8(f"{salt}:{unit_id}")) % 10000."""
    return salted_bucket(salt, unit_id)


def layered_bucket(str layer_salt, int start, int end, str salt not None, str unit not None):
    """The unit's bucket under `salt`, or -1 when its bucket under `layer_salt` is outside [start, end).

    `layer_salt` None: no layer (always in range). Two `bucket` calls in one, for experiments."""
    cdef int layer_bucket
    if layer_salt is not None:
        layer_bucket = salted_bucket(layer_salt, unit)
        if layer_bucket < start or layer_bucket >= end:
            return -1
    return salted_bucket(salt, unit)
