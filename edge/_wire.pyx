# cython: language_level=3
"""A DecideResponse's protobuf bytes written in C from the core decision (edge/convert.py's
`decide_response(...).SerializeToString()` is the reference tests compare with): no message object per
placement and item, one buffer.

proto3 as upb writes it: fields in field-number order, a field without presence left out when its
value is the default (an empty string, 0, false; a float or double whose bits are all zero, so -0.0 is
written), strings as their UTF-8. A decision with an explanation is not handled here (the caller uses
the message path). Numbers (edgewise/v1/personalizer.proto):

    DecideResponse      1 decision_id  2 snapshot_version (uint64)  3 placements  4 explanation
    PlacementDecision   1 placement_id  2 items  3 content_id  4 experiment_id  5 variant_id
                        6 propensity (double)  7 strategy  8 fallback_reason (enum)
    ItemResult          1 id  2 score (float)  3 reason  4 promoted (bool)
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_AsDouble
from cpython.long cimport PyLong_AsUnsignedLongLong
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap
    cdef char* data
    if b.size + extra <= cap:
        return 0
    if cap == 0:
        cap = 1024
    while cap < b.size + extra:
        cap *= 2
    data = <char*>realloc(b.data, cap)
    if data == NULL:
        raise MemoryError()
    b.data = data
    b.cap = cap
    return 0


cdef int _varint(Buf* b, uint64_t v) except -1:
    _grow(b, 10)
    while v >= 0x80:
        b.data[b.size] = <char>((v & 0x7F) | 0x80)
        b.size += 1
        v >>= 7
    b.data[b.size] = <char>v
    b.size += 1
    return 0


cdef int _bytes_field(Buf* b, uint8_t tag, const char* p, Py_ssize_t n) except -1:
    """A length-delimited field (`tag` = field number << 3 | 2)."""
    _varint(b, tag)
    _varint(b, <uint64_t>n)
    _grow(b, n)
    memcpy(b.data + b.size, p, n)
    b.size += n
    return 0


cdef int _str_field(Buf* b, uint8_t number, object value) except -1:
    """A string field, left out when empty."""
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(value, &n)
    if n:
        _bytes_field(b, (number << 3) | 2, p, n)
    return 0


cdef int _fixed(Buf* b, uint8_t number, uint64_t bits, int width) except -1:
    """A float (width 4) or double (width 8) field from its bits, little-endian; left out when zero."""
    cdef int i
    if bits == 0:
        return 0
    _varint(b, (number << 3) | (5 if width == 4 else 1))
    _grow(b, width)
    for i in range(width):
        b.data[b.size + i] = <char>((bits >> (8 * i)) & 0xFF)
    b.size += width
    return 0


cdef int _placement(Buf* b, object p) except -1:
    cdef Buf item
    cdef double propensity
    cdef float score
    cdef uint64_t bits64
    cdef uint32_t bits32
    cdef uint64_t reason
    item.data = NULL
    item.size = item.cap = 0
    try:
        _str_field(b, 1, p.placement_id)
        for i in p.items:
            item.size = 0
            _str_field(&item, 1, i.id)
            score = <float>PyFloat_AsDouble(i.score)
            memcpy(&bits32, &score, 4)
            _fixed(&item, 2, bits32, 4)
            _str_field(&item, 3, i.reason)
            if i.promoted:
                _varint(&item, (4 << 3) | 0)
                _varint(&item, 1)
            _bytes_field(b, (2 << 3) | 2, item.data, item.size)
        _str_field(b, 3, p.content_id)
        _str_field(b, 4, p.experiment_id)
        _str_field(b, 5, p.variant_id)
        propensity = PyFloat_AsDouble(p.propensity)
        memcpy(&bits64, &propensity, 8)
        _fixed(b, 6, bits64, 8)
        _str_field(b, 7, p.strategy)
        reason = PyLong_AsUnsignedLongLong(p.fallback)
        if reason:
            _varint(b, (8 << 3) | 0)
            _varint(b, reason)
    finally:
        free(item.data)
    return 0


def decide_response_bytes(object decision, str decision_id) -> bytes:
    """The serialized DecideResponse of `decision` (which must have no explanation) with `decision_id`."""
    cdef Buf out
    cdef Buf body
    cdef uint64_t version
    if decision.explanation is not None:
        raise ValueError("a decision with an explanation goes through the message path")
    out.data = body.data = NULL
    out.size = out.cap = body.size = body.cap = 0
    try:
        _str_field(&out, 1, decision_id)
        version = PyLong_AsUnsignedLongLong(decision.snapshot_version)
        if version:
            _varint(&out, (2 << 3) | 0)
            _varint(&out, version)
        for p in decision.placements:
            body.size = 0
            _placement(&body, p)
            _bytes_field(&out, (3 << 3) | 2, body.data, body.size)
        return PyBytes_FromStringAndSize(out.data, out.size)
    finally:
        free(out.data)
        free(body.data)
