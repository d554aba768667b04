# cython: language_level=3
"""Exposure records packed in C: the bytes `core/exposure.py`'s Python reference (`_exposure_records_py`,
msgpack.Packer) makes, written straight into one buffer (no dict per record, no Packer per call).

The encoding follows msgpack-python's packer exactly (tests compare the bytes with the reference): str as
fixstr / str8 / str16 / str32 of its UTF-8, int in the smallest (u)int form, float as float64, lists
as fixarray / array16 / array32. A value of another type (None, bool, bytes...) raises `TypeError`,
and `exposure_records` then packs the decision with the reference.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_AsDouble, PyFloat_Check
from cpython.long cimport PyLong_Check
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memcpy

from edgewise.core._buf cimport Buf, buf_byte, buf_grow, buf_raw


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    int PyBool_Check(object)
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1


cdef int _be(Buf* b, uint64_t v, int n) except -1:
    """`v` as `n` big-endian bytes."""
    cdef int i
    buf_grow(b, n)
    for i in range(n):
        b.data[b.size + i] = <char>((v >> (8 * (n - 1 - i))) & 0xFF)
    b.size += n
    return 0


cdef int _str_header(Buf* b, Py_ssize_t n) except -1:
    if n < 32:
        buf_byte(b, 0xA0 | <uint8_t>n)
    elif n <= 0xFF:
        buf_byte(b, 0xD9)
        _be(b, n, 1)
    elif n <= 0xFFFF:
        buf_byte(b, 0xDA)
        _be(b, n, 2)
    else:
        buf_byte(b, 0xDB)
        _be(b, n, 4)
    return 0


cdef int _str(Buf* b, object value) except -1:
    cdef Py_ssize_t n
    cdef const char* p
    if not PyUnicode_Check(value):
        raise TypeError("not a str")
    p = PyUnicode_AsUTF8AndSize(value, &n)
    _str_header(b, n)
    buf_raw(b, p, n)
    return 0


cdef int _int(Buf* b, object value) except -1:
    cdef int overflow = 0
    cdef long long d
    if PyBool_Check(value) or not PyLong_Check(value):
        raise TypeError("not an int")
    d = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow != 0:
        raise TypeError("out of the int64 range")  # the reference decides (uint64 or OverflowError)
    if d < -(1 << 5):
        if d < -(1 << 15):
            if d < -(1LL << 31):
                buf_byte(b, 0xD3)
                _be(b, <uint64_t>d, 8)
            else:
                buf_byte(b, 0xD2)
                _be(b, <uint64_t>d & 0xFFFFFFFF, 4)
        elif d < -(1 << 7):
            buf_byte(b, 0xD1)
            _be(b, <uint64_t>d & 0xFFFF, 2)
        else:
            buf_byte(b, 0xD0)
            _be(b, <uint64_t>d & 0xFF, 1)
    elif d < (1 << 7):
        buf_byte(b, <uint8_t>(d & 0xFF))
    elif d < (1 << 16):
        if d < (1 << 8):
            buf_byte(b, 0xCC)
            _be(b, <uint64_t>d, 1)
        else:
            buf_byte(b, 0xCD)
            _be(b, <uint64_t>d, 2)
    elif d < (1LL << 32):
        buf_byte(b, 0xCE)
        _be(b, <uint64_t>d, 4)
    else:
        buf_byte(b, 0xCF)
        _be(b, <uint64_t>d, 8)
    return 0


cdef int _float(Buf* b, object value) except -1:
    cdef double x
    cdef uint64_t bits
    if not PyFloat_Check(value):
        raise TypeError("not a float")
    x = PyFloat_AsDouble(value)
    memcpy(&bits, &x, 8)
    buf_byte(b, 0xCB)
    _be(b, bits, 8)
    return 0


cdef int _array_header(Buf* b, Py_ssize_t n) except -1:
    if n < 16:
        buf_byte(b, 0x90 | <uint8_t>n)
    elif n <= 0xFFFF:
        buf_byte(b, 0xDC)
        _be(b, n, 2)
    else:
        buf_byte(b, 0xDD)
        _be(b, n, 4)
    return 0


cdef inline int _key(Buf* b, bytes key) except -1:
    """A key given as its packed bytes (a fixstr)."""
    buf_raw(b, <const char*>key, len(key))
    return 0


def exposure_records(str decision_id, object request, object decision) -> list:
    """The records of `decision` (one per placement), the reference's bytes; the caller checks the
    analytics purpose. Raises TypeError on a value the reference would pack differently (see above)."""
    cdef Buf shared
    cdef Buf rec
    cdef Py_ssize_t n, i, m
    cdef const char* did
    cdef const char* pid
    cdef object context = request.context
    cdef object segments = decision.segments
    cdef object items
    cdef object vector
    cdef list out = []
    shared.data = NULL
    shared.size = shared.cap = 0
    rec.data = NULL
    rec.size = rec.cap = 0
    try:
        _key(&shared, b"\xa1k")
        _str(&shared, "exposure")
        _key(&shared, b"\xa1d")
        _str(&shared, decision_id)
        _key(&shared, b"\xa1u")
        _str(&shared, request.user_id)
        _key(&shared, b"\xa1s")
        _str(&shared, request.session_id)
        _key(&shared, b"\xa2ch")
        _str(&shared, context.channel)
        _key(&shared, b"\xa2co")
        _str(&shared, context.country)
        _key(&shared, b"\xa2dv")
        _str(&shared, context.device)
        _key(&shared, b"\xa2sv")
        _int(&shared, decision.snapshot_version)
        _key(&shared, b"\xa2sg")
        _array_header(&shared, len(segments))
        for segment in segments:
            _str(&shared, segment)
        _key(&shared, b"\xa2ts")
        _int(&shared, request.now_ms)
        did = PyUnicode_AsUTF8AndSize(decision_id, &n)
        for p in decision.placements:
            rec.size = 0
            buf_raw(&rec, b"\xde\x00\x16", 3)  # map16 of 22 entries: these 12, then the 10 shared
            placement_id = p.placement_id
            if not PyUnicode_Check(placement_id):
                raise TypeError("placement_id is not a str")
            pid = PyUnicode_AsUTF8AndSize(placement_id, &m)
            _key(&rec, b"\xa2id")
            _str_header(&rec, n + 1 + m)
            buf_raw(&rec, did, n)
            buf_byte(&rec, 0x3A)  # ":"
            buf_raw(&rec, pid, m)
            _key(&rec, b"\xa1p")
            _str(&rec, placement_id)
            _key(&rec, b"\xa1c")
            _str(&rec, p.campaign)
            _key(&rec, b"\xa1x")
            _str(&rec, p.experiment_id)
            _key(&rec, b"\xa1v")
            _str(&rec, p.variant_id)
            _key(&rec, b"\xa2pr")
            _float(&rec, p.propensity)
            _key(&rec, b"\xa2st")
            _str(&rec, p.strategy)
            _key(&rec, b"\xa1f")
            _int(&rec, int(p.fallback))
            _key(&rec, b"\xa1i")
            items = p.items
            _array_header(&rec, len(items))
            for item in items:
                _str(&rec, item.id)
            _key(&rec, b"\xa2ct")
            _str(&rec, p.content_id)
            _key(&rec, b"\xa2bs")
            _str(&rec, p.bandit_segment)
            _key(&rec, b"\xa2cx")
            vector = p.context_vector
            _array_header(&rec, len(vector))
            for x in vector:
                _float(&rec, x)
            buf_raw(&rec, shared.data, shared.size)
            out.append(PyBytes_FromStringAndSize(rec.data, rec.size))
        return out
    finally:
        free(shared.data)
        free(rec.data)
