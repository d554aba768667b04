# The msgpack walk of core/_profile_check.pyx, exported for `cimport` (core/_slot_edit.pyx edits a
# profile record's vector slots with it, after `_profile_ok` vouched for the record).

from libc.stdint cimport uint8_t, uint32_t

ctypedef const uint8_t* ptr_t


# big-endian lengths and counts of msgpack's 16- and 32-bit forms
cdef inline uint32_t _be16(ptr_t p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t _be32(ptr_t p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef Py_ssize_t _str_at(ptr_t p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t* length) noexcept nogil
cdef Py_ssize_t _entries_at(
    ptr_t p, Py_ssize_t pos, Py_ssize_t n, uint8_t fix, uint8_t of16, Py_ssize_t* count
) noexcept nogil
cdef Py_ssize_t _skip(ptr_t p, Py_ssize_t pos, Py_ssize_t n, int depth) noexcept nogil
cdef Py_ssize_t _key(ptr_t p, Py_ssize_t pos, Py_ssize_t n) noexcept nogil
cdef long long _generation_at(ptr_t p, Py_ssize_t pos, Py_ssize_t end) noexcept nogil
cdef int _profile_ok(ptr_t p, Py_ssize_t n) noexcept nogil
