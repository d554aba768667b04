# The msgpack walk of core/_profile_check.pyx, exported for `cimport` (core/_slot_edit.pyx edits a
# profile record's vector slots with it, after `_profile_ok` vouched for the record).

from libc.stdint cimport uint8_t

ctypedef const uint8_t* ptr_t


cdef Py_ssize_t _str_at(ptr_t p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t* length) noexcept nogil
cdef Py_ssize_t _entries_at(
    ptr_t p, Py_ssize_t pos, Py_ssize_t n, uint8_t fix, uint8_t of16, Py_ssize_t* count
) noexcept nogil
cdef Py_ssize_t _skip(ptr_t p, Py_ssize_t pos, Py_ssize_t n, int depth) noexcept nogil
cdef Py_ssize_t _key(ptr_t p, Py_ssize_t pos, Py_ssize_t n) noexcept nogil
cdef long long _generation_at(ptr_t p, Py_ssize_t pos, Py_ssize_t end) noexcept nogil
cdef int _profile_ok(ptr_t p, Py_ssize_t n) noexcept nogil
