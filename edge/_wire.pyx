# cython: language_level=3
"""Decide's protobuf in C: the request's bytes read straight into the core request, and the response's
bytes written from the core decision, with no message object in between.

`decide_request`: a serialized DecideRequest -> the core `DecideRequest` edge/convert.py's
`decide_input` makes of the parsed message (tests compare the two on fuzzed requests and damaged bytes);
anything unusual (a cap exceeded, a field written twice, an unknown field, invalid UTF-8, bytes cut
short) returns None and the caller takes the message path, which accepts it or names what is wrong.

`decide_response_bytes`: the DecideResponse's bytes (edge/convert.py's
`decide_response(...).SerializeToString()` is the reference tests compare with): one buffer.

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
from libc.stdlib cimport free
from libc.string cimport memcpy

from edgewise.core._buf cimport Buf, buf_grow, buf_raw


from edgewise.core._results import filled as _filled
from edgewise.core.decisions import Context as _Context
from edgewise.core.decisions import DecideRequest as _DecideRequest
from edgewise.core.decisions import PlacementRequest as _PlacementRequest


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL

FAST_KEY_ID_CHARS = 100
"""edge/convert.py's `_FAST_KEY_ID_CHARS` (ids of up to this many characters are within the byte cap of
LMDB keys whatever their characters; longer ones take the message path, which counts bytes)."""
cdef Py_ssize_t _FAST_KEY_ID_CHARS = FAST_KEY_ID_CHARS


cdef int _varint(Buf* b, uint64_t v) except -1:
    buf_grow(b, 10)
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
    buf_raw(b, p, n)
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
    buf_grow(b, width)
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


# --- DecideRequest: bytes -> core request ---------------------------------------------------------------
#
#   DecideRequest     1 user_id  2 session_id  3 context  4 consent (repeated)  5 placements (repeated)
#                     6 explain (bool)
#   Context           1..10 channel, device, language, country, region, journey_stage, page_type,
#                     local_time, url, referrer  11 attributes (map<string, string>)
#   PlacementRequest  1 placement_id  2 count (uint32)  3 candidate_ids  4 seed_item_ids  5 exclude_ids
#                     (repeated)  6 filter  7 filter_params (map<string, string>)
#   a map entry       1 key  2 value


cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char*, Py_ssize_t, const char*)


class _Unusual(Exception):
    """Something the fast decoder leaves to the message path (which accepts it or says what is wrong)."""


cdef uint64_t _varint_at(const unsigned char* d, Py_ssize_t* pos, Py_ssize_t end) except? 0xFFFFFFFFFFFFFFFF:
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef unsigned char c
    while True:
        if pos[0] >= end or shift > 63:
            raise _Unusual()
        c = d[pos[0]]
        pos[0] += 1
        v |= (<uint64_t>(c & 0x7F)) << shift
        if c < 0x80:
            return v
        shift += 7


cdef Py_ssize_t _length_at(const unsigned char* d, Py_ssize_t* pos, Py_ssize_t end) except -1:
    """A length prefix, checked against what is left of the message."""
    cdef uint64_t n = _varint_at(d, pos, end)
    if n > <uint64_t>(end - pos[0]):
        raise _Unusual()
    return <Py_ssize_t>n


cdef str _string_at(const unsigned char* d, Py_ssize_t* pos, Py_ssize_t end):
    cdef Py_ssize_t n = _length_at(d, pos, end)
    try:
        value = PyUnicode_DecodeUTF8(<const char*>(d + pos[0]), n, NULL)
    except UnicodeDecodeError:
        raise _Unusual() from None
    pos[0] += n
    return value


cdef int _map_entry_at(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end, dict into) except -1:
    cdef uint64_t key
    cdef int seen = 0
    name = value = ""
    while pos < end:
        key = _varint_at(d, &pos, end)
        if key == (1 << 3 | 2) and not seen & 1:
            name = _string_at(d, &pos, end)
            seen |= 1
        elif key == (2 << 3 | 2) and not seen & 2:
            value = _string_at(d, &pos, end)
            seen |= 2
        else:
            raise _Unusual()
    into[name] = value  # a repeated key: the last one wins, as in the message
    return 0


cdef bint _fits(list values, Py_ssize_t cap):
    for value in values:
        if len(<str>value) > cap:
            return False
    return True


cdef bint _map_fits(dict values, object limits):
    if len(values) > limits.max_attributes:
        return False
    key_cap, value_cap = limits.max_id_length, limits.max_string_length
    for key, value in values.items():
        if len(<str>key) > key_cap or len(<str>value) > value_cap:
            return False
    return True


cdef object _placement_at(
    const unsigned char* d, Py_ssize_t pos, Py_ssize_t end, object limits, Py_ssize_t id_cap
):
    cdef uint64_t key, count = 0
    cdef Py_ssize_t n
    cdef int seen = 0
    cdef list candidates = [], seeds = [], excluded = []
    cdef dict params = {}
    placement_id = filter_name = ""
    while pos < end:
        key = _varint_at(d, &pos, end)
        if key == (1 << 3 | 2) and not seen & 1:
            placement_id = _string_at(d, &pos, end)
            seen |= 1
        elif key == (2 << 3 | 0) and not seen & 2:
            count = _varint_at(d, &pos, end)
            seen |= 2
        elif key == (3 << 3 | 2):
            candidates.append(_string_at(d, &pos, end))
        elif key == (4 << 3 | 2):
            seeds.append(_string_at(d, &pos, end))
        elif key == (5 << 3 | 2):
            excluded.append(_string_at(d, &pos, end))
        elif key == (6 << 3 | 2) and not seen & 4:
            filter_name = _string_at(d, &pos, end)
            seen |= 4
        elif key == (7 << 3 | 2):
            n = _length_at(d, &pos, end)
            _map_entry_at(d, pos, pos + n, params)
            pos += n
        else:
            raise _Unusual()
    max_ids = limits.max_ids
    if (
        count > 0xFFFFFFFF
        or not placement_id
        or len(placement_id) > id_cap
        or len(candidates) > max_ids
        or len(seeds) > limits.max_seeds
        or len(excluded) > max_ids
        or len(filter_name) > id_cap
        or not _fits(candidates, id_cap)
        or not _fits(seeds, id_cap)
        or not _fits(excluded, id_cap)
        or (params and not _map_fits(params, limits))
    ):
        raise _Unusual()
    return _filled(  # PlacementRequest(...), without the frozen class's __init__
        _PlacementRequest,
        (
            placement_id,
            count,
            tuple(candidates) if candidates else (),
            tuple(seeds) if seeds else (),
            tuple(excluded) if excluded else (),
            filter_name,
            params,
        ),
    )


cdef object _context_at(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end, object limits):
    cdef uint64_t key, number
    cdef Py_ssize_t n, total = 0, i
    cdef int seen = 0
    cdef list values = ["", "", "", "", "", "", "", "", "", ""]
    cdef dict attributes = {}
    while pos < end:
        key = _varint_at(d, &pos, end)
        number = key >> 3
        if (key & 7) != 2:
            raise _Unusual()
        if 1 <= number <= 10 and not seen & (1 << number):
            values[number - 1] = _string_at(d, &pos, end)
            seen |= 1 << number
        elif number == 11:
            n = _length_at(d, &pos, end)
            _map_entry_at(d, pos, pos + n, attributes)
            pos += n
        else:
            raise _Unusual()
    for i in range(10):
        total += len(<str>values[i])
    if total > limits.max_string_length or (attributes and not _map_fits(attributes, limits)):
        raise _Unusual()
    values.append(attributes)
    return _filled(_Context, tuple(values))


cdef object _decide_request(bytes data, object limits, object now_ms):
    cdef const unsigned char* d = <const unsigned char*><const char*>data
    cdef Py_ssize_t pos = 0, end = len(data), n
    cdef uint64_t key, flag
    cdef int seen = 0
    cdef list consent = [], asks = []
    cdef set placement_ids = set()
    cdef Py_ssize_t id_cap = min(<Py_ssize_t>limits.max_id_length, _FAST_KEY_ID_CHARS)
    user_id = session_id = ""
    context = None
    explain = False
    while pos < end:
        key = _varint_at(d, &pos, end)
        if key == (1 << 3 | 2) and not seen & 1:
            user_id = _string_at(d, &pos, end)
            seen |= 1
        elif key == (2 << 3 | 2) and not seen & 2:
            session_id = _string_at(d, &pos, end)
            seen |= 2
        elif key == (3 << 3 | 2) and not seen & 4:
            n = _length_at(d, &pos, end)
            context = _context_at(d, pos, pos + n, limits)
            pos += n
            seen |= 4
        elif key == (4 << 3 | 2):
            consent.append(_string_at(d, &pos, end))
        elif key == (5 << 3 | 2):
            n = _length_at(d, &pos, end)
            ask = _placement_at(d, pos, pos + n, limits, id_cap)
            pos += n
            if ask.placement_id in placement_ids:
                raise _Unusual()
            placement_ids.add(ask.placement_id)
            asks.append(ask)
        elif key == (6 << 3 | 0) and not seen & 8:
            flag = _varint_at(d, &pos, end)
            if flag > 1:
                raise _Unusual()
            explain = flag == 1
            seen |= 8
        else:
            raise _Unusual()
    if (
        len(user_id) > id_cap
        or len(session_id) > id_cap
        or not 0 < len(asks) <= limits.max_placements
        or len(consent) > limits.max_consents
        or not _fits(consent, id_cap)
    ):
        raise _Unusual()
    if context is None:
        context = _filled(_Context, ("", "", "", "", "", "", "", "", "", "", {}))
    return _filled(
        _DecideRequest, (user_id, session_id, context, frozenset(consent), tuple(asks), explain, now_ms)
    )


def decide_request(bytes data, object limits, object now_ms):
    """The core `DecideRequest` of a serialized edgewise.v1.DecideRequest, as edge/convert.py's
    `decide_input` makes it, when the request is within every cap of `limits` (an `edge.convert.Limits`)
    and written as protobuf writers write it (each singular field once, known fields only, valid UTF-8,
    `explain` 0 or 1); else None, and the caller parses the message and converts it (which accepts the
    request or says what is wrong with it)."""
    try:
        return _decide_request(data, limits, now_ms)
    except _Unusual:
        return None
