# MurmurHash3 x86_32 (Austin Appleby's reference algorithm) over a byte buffer.
# edgewise.core.bucketing holds the pure-Python reference it is tested against. Exported for
# `from edgewise.core._hashing cimport murmur3_32_kernel` (tests/test_cimport.py).

from libc.stdint cimport uint32_t


cdef uint32_t murmur3_32_kernel(const unsigned char* data, Py_ssize_t n, uint32_t seed) noexcept nogil
cdef int salted_bucket(str salt, str unit) except -1
