# cython: language_level=3
"""A profile record's embedding vector slots read and rewritten in the msgpack bytes, without unpacking
the record (core/slot_edit.py holds the Python reference, the unpack / edit / repack the control plane's
embeddings refresh did for every profile, and the callers' fallback).

The slots (core/embedding_slots.py): `e`, `eg`, `n`, `ng` of the record's top-level map. `stored_slots`
reads them as `core.records.vector_slots` does on the unpacked map; `with_slots` returns the record
with other slots, as `set_vector_slots` on the unpacked map and `msgpack.packb` would: every other
entry copied verbatim in its place, `e`'s value replaced where it was, `eg` / `n` / `ng` dropped and
the new ones (if any) appended, and the map header rewritten for the new count. For a record our
encoder wrote (canonical msgpack: what `packb` writes) the bytes are those of the Python path; for any
other one they decode to the same map.

Both answer None when they are not sure, and the caller takes the Python path: a record
`core/_profile_check._profile_ok` does not vouch for (so msgpack would unpack it whole: no ext type,
nothing malformed or left over, strict UTF-8, str or bin keys, slot keys well formed), a top-level key
written twice (a dict keeps the last value in the first key's place), more than MAX_KEYS top-level keys,
an `e` that is not bin or nil, or slots that are not (int generation, bytes or None) pairs.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_CheckExact
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport uint8_t
from libc.string cimport memcmp, memcpy

from edgewise.core._profile_check cimport (
    _be16,
    _be32,
    _entries_at,
    _generation_at,
    _key,
    _profile_ok,
    _skip,
    _str_at,
    ptr_t,
)

cdef enum:
    MAX_KEYS_C = 32
    MAX_GENERATION_C = 0x7FFFFFFF
    # what an entry of the top-level map is
    OTHER = 0
    E = 1  # "e": the first slot's vector
    EG = 2  # "eg": its generation
    N = 3  # "n": the second slot's vector
    NG = 4  # "ng": its generation

MAX_KEYS = MAX_KEYS_C
"""Records with more top-level keys than this go the Python way (a profile has 5 to 9)."""


cdef struct Entry:
    Py_ssize_t key  # where the entry's key starts
    Py_ssize_t value  # where its value starts
    Py_ssize_t end  # just past its value
    Py_ssize_t name  # where the key's bytes start (str or bin)
    Py_ssize_t name_size
    int is_str
    int kind  # OTHER, E, EG, N, NG


cdef Py_ssize_t _bin_start(ptr_t p, Py_ssize_t pos) noexcept nogil:
    """Where the bytes of the bin at `pos` start (vouched for by `_profile_ok`); -1: not a bin."""
    cdef uint8_t b = p[pos]
    if b == 0xC4:
        return pos + 2
    if b == 0xC5:
        return pos + 3
    if b == 0xC6:
        return pos + 5
    return -1


cdef Py_ssize_t _entries(ptr_t p, Py_ssize_t n, Entry* out) noexcept nogil:
    """The top-level map's entries of a record `_profile_ok` vouches for, into `out` (MAX_KEYS_C room);
    their count, -1 when not sure (not vouched for, too many keys, a key written twice)."""
    cdef Py_ssize_t pos, count, i, j, start, size
    cdef Entry* e
    if not _profile_ok(p, n):
        return -1
    pos = _entries_at(p, 0, n, 0x80, 0xDE, &count)
    if pos < 0 or count > MAX_KEYS_C:
        return -1
    for i in range(count):
        e = &out[i]
        e.key = pos
        start = _str_at(p, pos, n, &size)
        if start >= 0:
            e.is_str = 1
            e.value = start + size
        else:
            e.is_str = 0
            e.value = _key(p, pos, n)
            if e.value < 0:
                return -1
            start = _bin_start(p, pos)
            size = e.value - start
        e.name, e.name_size = start, size
        e.end = _skip(p, e.value, n, 1)
        if e.end < 0:
            return -1
        e.kind = OTHER
        if e.is_str and size == 1 and p[start] == 0x65:
            e.kind = E
        elif e.is_str and size == 1 and p[start] == 0x6E:
            e.kind = N
        elif e.is_str and size == 2 and p[start + 1] == 0x67 and p[start] == 0x65:
            e.kind = EG
        elif e.is_str and size == 2 and p[start + 1] == 0x67 and p[start] == 0x6E:
            e.kind = NG
        for j in range(i):
            if (
                out[j].is_str == e.is_str
                and out[j].name_size == size
                and memcmp(p + out[j].name, p + start, size) == 0
            ):
                return -1  # a key written twice
        pos = e.end
    return count


cdef object _vector_at(ptr_t p, Py_ssize_t pos, Py_ssize_t end):
    """The bin at p[pos:end] as bytes, None for nil; False when it is neither."""
    cdef Py_ssize_t start
    if p[pos] == 0xC0:
        return None
    start = _bin_start(p, pos)
    if start < 0:
        return False
    return PyBytes_FromStringAndSize(<const char*>(p + start), end - start)


def stored_slots(object raw):
    """The (generation, vector) slots of the profile record `raw` (bytes), as
    `core.records.vector_slots` reads them from its unpacked map; None when not sure (module doc)."""
    cdef Entry entries[MAX_KEYS_C]
    cdef Py_ssize_t count, i
    cdef ptr_t p
    cdef int e = -1, n = -1
    cdef long long eg = -1, ng = -1
    if not PyBytes_CheckExact(raw):
        return None
    p = <ptr_t>PyBytes_AS_STRING(raw)
    count = _entries(p, PyBytes_GET_SIZE(raw), entries)
    if count < 0:
        return None
    for i in range(count):
        if entries[i].kind == E:
            e = i
        elif entries[i].kind == N:
            n = i
        elif entries[i].kind == EG:
            eg = _generation_at(p, entries[i].value, entries[i].end)
        elif entries[i].kind == NG:
            ng = _generation_at(p, entries[i].value, entries[i].end)
    first = _vector_at(p, entries[e].value, entries[e].end)  # `_profile_ok`: there is an `e`
    if first is False:
        return None
    if eg < 0 and n < 0:
        return ((0, first),)
    slot = (eg if eg >= 0 else 0, first)
    if n < 0:
        return (slot,)
    second = _vector_at(p, entries[n].value, entries[n].end)  # `_profile_ok`: nil or bin, with `ng`
    return (slot, (ng, second))


cdef Py_ssize_t _uint_size(long long value) noexcept nogil:
    return 1 if value < 0x80 else 2 if value < 0x100 else 3 if value < 0x10000 else 5


cdef Py_ssize_t _vector_size(object vector):
    cdef Py_ssize_t size
    if vector is None:
        return 1
    size = PyBytes_GET_SIZE(vector)
    return size + (2 if size < 0x100 else 3 if size < 0x10000 else 5)


cdef uint8_t* _put_uint(uint8_t* out, long long value) noexcept nogil:
    if value < 0x80:
        out[0] = <uint8_t>value
        return out + 1
    if value < 0x100:
        out[0], out[1] = 0xCC, <uint8_t>value
        return out + 2
    if value < 0x10000:
        out[0], out[1], out[2] = 0xCD, <uint8_t>(value >> 8), <uint8_t>value
        return out + 3
    out[0] = 0xCE
    out[1], out[2], out[3], out[4] = <uint8_t>(value >> 24), <uint8_t>(value >> 16), <uint8_t>(value >> 8), <uint8_t>value
    return out + 5


cdef uint8_t* _put_vector(uint8_t* out, object vector):
    cdef Py_ssize_t size
    if vector is None:
        out[0] = 0xC0
        return out + 1
    size = PyBytes_GET_SIZE(vector)
    if size < 0x100:
        out[0], out[1] = 0xC4, <uint8_t>size
        out += 2
    elif size < 0x10000:
        out[0], out[1], out[2] = 0xC5, <uint8_t>(size >> 8), <uint8_t>size
        out += 3
    else:
        out[0] = 0xC6
        out[1], out[2], out[3], out[4] = <uint8_t>(size >> 24), <uint8_t>(size >> 16), <uint8_t>(size >> 8), <uint8_t>size
        out += 5
    memcpy(out, PyBytes_AS_STRING(vector), size)
    return out + size


cdef uint8_t* _put_key(uint8_t* out, const char* key, Py_ssize_t size) noexcept nogil:
    out[0] = <uint8_t>(0xA0 | size)
    memcpy(out + 1, key, size)
    return out + 1 + size


cdef object _slot_vector(object slot, long long* generation):
    """The vector of `slot` when it is a (generation, vector) pair this writes (an int in 0..2**31-1,
    bytes or None), its generation in `generation`; False when it is not."""
    if not (PyTuple_CheckExact(slot) and PyTuple_GET_SIZE(slot) == 2):
        return False
    g = <object>PyTuple_GET_ITEM(slot, 0)
    v = <object>PyTuple_GET_ITEM(slot, 1)
    if not PyLong_CheckExact(g) or not (v is None or PyBytes_CheckExact(v)):
        return False
    if not 0 <= g <= MAX_GENERATION_C:
        return False
    if v is not None and PyBytes_GET_SIZE(v) > 0xFFFFFFFF:
        return False
    generation[0] = g
    return v


def with_slots(object raw, object slots):
    """The profile record `raw` (bytes) with its vector slots set to `slots` (one or two (generation,
    vector) pairs), as `set_vector_slots` on its unpacked map and `msgpack.packb` would write it (module
    doc); None when not sure."""
    cdef Entry entries[MAX_KEYS_C]
    cdef Py_ssize_t count, i, kept = 0, size = 0, slot_count
    cdef ptr_t p
    cdef long long g0 = 0, g1 = 0
    cdef object v0 = None, v1 = None
    cdef int only_zero
    cdef uint8_t* out
    if not PyBytes_CheckExact(raw) or not PyTuple_CheckExact(slots):
        return None
    slot_count = PyTuple_GET_SIZE(slots)
    if slot_count < 1 or slot_count > 2:
        return None
    v0 = _slot_vector(<object>PyTuple_GET_ITEM(slots, 0), &g0)
    if v0 is False:
        return None
    if slot_count == 2:
        v1 = _slot_vector(<object>PyTuple_GET_ITEM(slots, 1), &g1)
        if v1 is False:
            return None
    p = <ptr_t>PyBytes_AS_STRING(raw)
    count = _entries(p, PyBytes_GET_SIZE(raw), entries)
    if count < 0:
        return None
    only_zero = slot_count == 1 and g0 == 0  # generation 0 alone: `e` only, as before generations
    for i in range(count):
        if entries[i].kind == E:
            kept += 1
            size += entries[i].value - entries[i].key + _vector_size(v0)
        elif entries[i].kind == OTHER:
            kept += 1
            size += entries[i].end - entries[i].key
    if not only_zero:
        kept += 1
        size += 3 + _uint_size(g0)  # "eg"
        if slot_count == 2:
            kept += 2
            size += 2 + _vector_size(v1) + 3 + _uint_size(g1)  # "n", "ng"
    size += 1 if kept < 16 else 3 if kept < 0x10000 else 5
    record = PyBytes_FromStringAndSize(NULL, size)
    out = <uint8_t*>PyBytes_AS_STRING(record)
    if kept < 16:
        out[0] = <uint8_t>(0x80 | kept)
        out += 1
    else:  # at most MAX_KEYS_C + 3
        out[0], out[1], out[2] = 0xDE, <uint8_t>(kept >> 8), <uint8_t>kept
        out += 3
    for i in range(count):
        if entries[i].kind == E:
            memcpy(out, p + entries[i].key, entries[i].value - entries[i].key)
            out = _put_vector(out + (entries[i].value - entries[i].key), v0)
        elif entries[i].kind == OTHER:
            memcpy(out, p + entries[i].key, entries[i].end - entries[i].key)
            out += entries[i].end - entries[i].key
    if not only_zero:
        out = _put_uint(_put_key(out, b"eg", 2), g0)
        if slot_count == 2:
            out = _put_vector(_put_key(out, b"n", 1), v1)
            out = _put_uint(_put_key(out, b"ng", 2), g1)
    if out != <uint8_t*>PyBytes_AS_STRING(record) + size:
        raise AssertionError("with_slots: the record's size was computed wrong")
    return record
