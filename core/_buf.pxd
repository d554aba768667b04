# cython: language_level=3
"""A growable byte buffer for the modules that write bytes in C (core/_exposure.pyx's msgpack records,
edge/_wire.pyx's protobuf): `cimport`ed, inline, no module of its own. The caller owns `data` and
`free`s it."""

from libc.stdint cimport uint8_t
from libc.stdlib cimport realloc
from libc.string cimport memcpy


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef inline int buf_grow(Buf* b, Py_ssize_t extra) except -1:
    """Room for `extra` more bytes (capacity doubled from 512 as needed)."""
    cdef Py_ssize_t cap = b.cap
    cdef char* data
    if b.size + extra <= cap:
        return 0
    if cap == 0:
        cap = 512
    while cap < b.size + extra:
        cap *= 2
    data = <char*>realloc(b.data, cap)
    if data == NULL:
        raise MemoryError()
    b.data = data
    b.cap = cap
    return 0


cdef inline int buf_raw(Buf* b, const char* p, Py_ssize_t n) except -1:
    buf_grow(b, n)
    memcpy(b.data + b.size, p, n)
    b.size += n
    return 0


cdef inline int buf_byte(Buf* b, uint8_t c) except -1:
    buf_grow(b, 1)
    b.data[b.size] = <char>c
    b.size += 1
    return 0
