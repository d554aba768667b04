# cython: language_level=3
"""The edge syncer's check of profile records without unpacking them: a scan of the msgpack bytes in C,
without the GIL (core/profile_check.py holds the Python reference, `scan_profile_py`, which tests
compare this with, and the rest of the check).

`check_profile` (core/records.py) unpacks a record into Python objects to see that it is a map with a
schema `s` equal to 1 and the keys `v`, `a`, `c`, `e`: about 3 us a record, 0.3 s of CPU for a refresh
of 100k user embeddings, in the node's supervisor, on the cores its workers serve on. The scan walks the
same bytes once and builds nothing. Its verdict is one-sided: 1 means `check_profile` accepts the
record (msgpack.unpackb would unpack it whole and exactly: no byte left over or missing, every str valid
UTF-8, every map key a str or bin, no reserved byte, nesting shallow; and the map has the keys and the
schema); 0 means "not sure", and the caller runs `check_profile` itself, which refuses the record or not
with its own message. So a record is refused exactly when it was before, with the same error; the scan
only has to be right when it says 1 (tests/test_profile_check.py: against the reference on random,
truncated, mutated and hostile records, and against `check_profile`).

The embedding generation keys (core/embedding_slots.py) are checked as `check_profile` checks them:
`eg` and `ng` an int in 0..2**31-1 (the scan vouches for a positive fixint or a uint 8/16/32 only), `n`
nil or bin of a multiple of 4 bytes, `n` and `ng` together, and `ng` not `eg`'s generation; a record
that repeats one of these keys is left to `check_profile`.

What the scan leaves to `check_profile` (answers 0): ext types (msgpack's timestamps and ExtType,
which refuses codes below 0), nesting deeper than MAX_DEPTH, a schema value other than 1 written as an
int, true, or a float 1.0 (the values `obj.get("s") != 1` lets through), keys or values that are not
`bytes` (a memoryview, say), and anything malformed.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp


cdef enum:
    MAX_DEPTH_C = 32

MAX_DEPTH = MAX_DEPTH_C
"""Containers nested deeper than this are left to `check_profile` (real profiles nest 4 deep)."""

# The keys a profile record must have (core/records.py `check_profile`).
cdef enum:
    HAS_V = 1
    HAS_A = 2
    HAS_C = 4
    HAS_E = 8
    HAS_ALL = 15


cdef int _utf8_ok(ptr_t s, Py_ssize_t n) noexcept nogil:
    """1 iff s[:n] is valid UTF-8 as Python's strict decoder reads it: no overlong forms, no surrogates
    (U+D800-DFFF), nothing past U+10FFFF."""
    cdef Py_ssize_t i = 0
    cdef uint8_t b, b1
    while i < n:
        b = s[i]
        if b < 0x80:
            i += 1
            continue
        if b < 0xC2:
            return 0
        if b < 0xE0:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return 0
            i += 2
            continue
        if b < 0xF0:
            if i + 2 >= n:
                return 0
            b1 = s[i + 1]
            if (b1 & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80:
                return 0
            if b == 0xE0 and b1 < 0xA0:
                return 0  # overlong
            if b == 0xED and b1 >= 0xA0:
                return 0  # a surrogate
            i += 3
            continue
        if b < 0xF5:
            if i + 3 >= n:
                return 0
            b1 = s[i + 1]
            if (b1 & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80 or (s[i + 3] & 0xC0) != 0x80:
                return 0
            if b == 0xF0 and b1 < 0x90:
                return 0  # overlong
            if b == 0xF4 and b1 >= 0x90:
                return 0  # past U+10FFFF
            i += 4
            continue
        return 0
    return 1


cdef Py_ssize_t _str_at(ptr_t p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t* length) noexcept nogil:
    """If a str starts at `pos` (fixstr, str8/16/32), the offset of its bytes and their count in
    `length`; -1 if it is not a str, -2 if it is one that runs past the end."""
    cdef uint8_t b = p[pos]
    cdef Py_ssize_t start, size
    if 0xA0 <= b <= 0xBF:
        start, size = pos + 1, b & 0x1F
    elif b == 0xD9:
        if pos + 2 > n:
            return -2
        start, size = pos + 2, p[pos + 1]
    elif b == 0xDA:
        if pos + 3 > n:
            return -2
        start, size = pos + 3, _be16(p + pos + 1)
    elif b == 0xDB:
        if pos + 5 > n:
            return -2
        start, size = pos + 5, _be32(p + pos + 1)
    else:
        return -1
    if size > n - start:
        return -2
    length[0] = size
    return start


cdef Py_ssize_t _entries_at(
    ptr_t p, Py_ssize_t pos, Py_ssize_t n, uint8_t fix, uint8_t of16, Py_ssize_t* count
) noexcept nogil:
    """Where the entries start of the map (`fix` 0x80, `of16` 0xDE) or array (0x90, 0xDC) whose header
    is at `pos` (< n), their count in `count`; -1: another type, or the header is cut short."""
    cdef uint8_t b = p[pos]
    if (b & 0xF0) == fix:
        count[0] = b & 0x0F
        return pos + 1
    if b == of16:
        if pos + 3 > n:
            return -1
        count[0] = _be16(p + pos + 1)
        return pos + 3
    if b == of16 + 1:  # the 32-bit form
        if pos + 5 > n:
            return -1
        count[0] = _be32(p + pos + 1)
        return pos + 5
    return -1


cdef Py_ssize_t _skip(ptr_t p, Py_ssize_t pos, Py_ssize_t n, int depth) noexcept nogil:
    """The offset just past the msgpack object at `pos`, -1 if the scan is not sure of it."""
    cdef uint8_t b
    cdef Py_ssize_t count, size, i, start
    if pos >= n:
        return -1
    b = p[pos]
    if b <= 0x7F or b >= 0xE0 or b == 0xC0 or b == 0xC2 or b == 0xC3:
        return pos + 1  # fixint, negative fixint, nil, false, true
    if b <= 0x8F or b == 0xDE or b == 0xDF:  # map
        pos = _entries_at(p, pos, n, 0x80, 0xDE, &count)
        if pos < 0 or depth >= MAX_DEPTH_C or count > (n - pos) // 2:
            return -1
        for i in range(count):
            pos = _key(p, pos, n)
            if pos < 0:
                return -1
            pos = _skip(p, pos, n, depth + 1)
            if pos < 0:
                return -1
        return pos
    if b <= 0x9F or b == 0xDC or b == 0xDD:  # array
        pos = _entries_at(p, pos, n, 0x90, 0xDC, &count)
        if pos < 0 or depth >= MAX_DEPTH_C or count > n - pos:
            return -1
        for i in range(count):
            pos = _skip(p, pos, n, depth + 1)
            if pos < 0:
                return -1
        return pos
    start = _str_at(p, pos, n, &size)
    if start == -2:
        return -1
    if start >= 0:
        return start + size if _utf8_ok(p + start, size) else -1
    if b == 0xC4 or b == 0xC5 or b == 0xC6:  # bin 8/16/32
        return _bin_end(p, pos, n)
    if b == 0xCA or b == 0xCE or b == 0xD2:  # float32, uint32, int32
        return pos + 5 if pos + 5 <= n else -1
    if b == 0xCB or b == 0xCF or b == 0xD3:  # float64, uint64, int64
        return pos + 9 if pos + 9 <= n else -1
    if b == 0xCC or b == 0xD0:  # uint8, int8
        return pos + 2 if pos + 2 <= n else -1
    if b == 0xCD or b == 0xD1:  # uint16, int16
        return pos + 3 if pos + 3 <= n else -1
    return -1  # 0xC1 (never used) and the ext types (0xC7-0xC9, 0xD4-0xD8): left to msgpack


cdef Py_ssize_t _bin_end(ptr_t p, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    cdef uint8_t b = p[pos]
    cdef Py_ssize_t start, size
    if b == 0xC4:
        if pos + 2 > n:
            return -1
        start, size = pos + 2, p[pos + 1]
    elif b == 0xC5:
        if pos + 3 > n:
            return -1
        start, size = pos + 3, _be16(p + pos + 1)
    else:
        if pos + 5 > n:
            return -1
        start, size = pos + 5, _be32(p + pos + 1)
    if size > n - start:
        return -1
    return start + size


cdef Py_ssize_t _key(ptr_t p, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    """Past a map key, which msgpack's strict_map_key wants a str or bin; -1 otherwise."""
    cdef Py_ssize_t start, size
    if pos >= n:
        return -1
    start = _str_at(p, pos, n, &size)
    if start >= 0:
        return start + size if _utf8_ok(p + start, size) else -1
    if start == -2:
        return -1
    if p[pos] == 0xC4 or p[pos] == 0xC5 or p[pos] == 0xC6:
        return _bin_end(p, pos, n)
    return -1


cdef int _schema_is_one(ptr_t p, Py_ssize_t pos, Py_ssize_t end) noexcept nogil:
    """1 iff the object at p[pos:end] equals 1 in Python: an int 1 in any width, true, or a float 1.0."""
    cdef Py_ssize_t size = end - pos
    cdef uint8_t b = p[pos]
    cdef int i
    if b == 0x01 or b == 0xC3:
        return 1
    if (b == 0xCC or b == 0xD0) and size == 2:
        return p[pos + 1] == 1
    if (b == 0xCD or b == 0xD1) and size == 3:
        return p[pos + 1] == 0 and p[pos + 2] == 1
    if (b == 0xCE or b == 0xD2) and size == 5:
        return _be32(p + pos + 1) == 1
    if (b == 0xCF or b == 0xD3) and size == 9:
        for i in range(1, 8):
            if p[pos + i] != 0:
                return 0
        return p[pos + 8] == 1
    if b == 0xCA and size == 5:
        return memcmp(p + pos + 1, b"\x3f\x80\x00\x00", 4) == 0
    if b == 0xCB and size == 9:
        return memcmp(p + pos + 1, b"\x3f\xf0\x00\x00\x00\x00\x00\x00", 8) == 0
    return 0


cdef long long _generation_at(ptr_t p, Py_ssize_t pos, Py_ssize_t end) noexcept nogil:
    """The generation the object at p[pos:end] stores, when the scan vouches for it: a fixint or a uint
    8/16/32 in 0..2**31-1; -1 otherwise (not sure)."""
    cdef uint8_t b = p[pos]
    cdef Py_ssize_t size = end - pos
    cdef uint32_t value
    if b <= 0x7F:
        return b
    if b == 0xCC and size == 2:
        return p[pos + 1]
    if b == 0xCD and size == 3:
        return _be16(p + pos + 1)
    if b == 0xCE and size == 5:
        value = _be32(p + pos + 1)
        return value if value <= 0x7FFFFFFF else -1
    return -1


cdef int _vector_ok(ptr_t p, Py_ssize_t pos, Py_ssize_t end) noexcept nogil:
    """1 iff the object at p[pos:end] is nil or a bin of a multiple of 4 bytes (a float32 vector)."""
    cdef uint8_t b = p[pos]
    cdef Py_ssize_t header
    if b == 0xC0:
        return 1
    if b == 0xC4:
        header = 2
    elif b == 0xC5:
        header = 3
    elif b == 0xC6:
        header = 5
    else:
        return 0
    return (end - pos - header) % 4 == 0


cdef int _profile_ok(ptr_t p, Py_ssize_t n) noexcept nogil:
    """1 iff `check_profile` certainly accepts the record p[:n] (see the module doc); 0: not sure."""
    cdef Py_ssize_t pos = 0, count, i, start, size, value_end
    cdef Py_ssize_t schema = -1, schema_end = -1
    cdef int seen = 0, slot_keys = 0
    cdef long long eg = 0, ng = -1
    cdef uint8_t b
    if n < 1:
        return 0
    pos = _entries_at(p, 0, n, 0x80, 0xDE, &count)
    if pos < 0 or count > (n - pos) // 2:
        return 0  # not a map (or not sure)
    for i in range(count):
        if pos >= n:
            return 0
        start = _str_at(p, pos, n, &size)
        if start >= 0:
            if not _utf8_ok(p + start, size):
                return 0
            value_end = _skip(p, start + size, n, 1)
            if value_end < 0:
                return 0
            if size == 1:  # the keys a record must have are one letter long
                b = p[start]
                if b == 0x73:  # "s"
                    schema, schema_end = start + 1, value_end  # the last one wins, as in a dict
                elif b == 0x76:  # "v"
                    seen |= HAS_V
                elif b == 0x61:  # "a"
                    seen |= HAS_A
                elif b == 0x63:  # "c"
                    seen |= HAS_C
                elif b == 0x65:  # "e"
                    seen |= HAS_E
                elif b == 0x6E:  # "n": a second vector
                    if slot_keys & 1 or not _vector_ok(p, start + 1, value_end):
                        return 0
                    slot_keys |= 1
            elif size == 2 and p[start + 1] == 0x67 and (p[start] == 0x65 or p[start] == 0x6E):
                # "eg", "ng": a slot's generation
                if p[start] == 0x65:
                    if slot_keys & 2:
                        return 0
                    slot_keys |= 2
                    eg = _generation_at(p, start + 2, value_end)
                    if eg < 0:
                        return 0
                else:
                    if slot_keys & 4:
                        return 0
                    slot_keys |= 4
                    ng = _generation_at(p, start + 2, value_end)
                    if ng < 0:
                        return 0
            pos = value_end
            continue
        if start == -2:
            return 0
        pos = _key(p, pos, n)  # a bin key (a bytes key: never one the record needs)
        if pos < 0:
            return 0
        pos = _skip(p, pos, n, 1)
        if pos < 0:
            return 0
    if pos != n or seen != HAS_ALL or schema < 0:
        return 0
    if (slot_keys & 1) != ((slot_keys & 4) >> 2) or (slot_keys & 1 and ng == eg):
        return 0  # `n` without `ng` (or the reverse), or both slots of one generation
    return _schema_is_one(p, schema, schema_end)


def scan_profile(object key, object value) -> bool:
    """True iff `check_profile(key.decode(), value)` certainly accepts the record: `key` and `value` are
    `bytes`, the key valid UTF-8 and the value a profile record (False: not sure, ask `check_profile`)."""
    if not (PyBytes_CheckExact(key) and PyBytes_CheckExact(value)):
        return False
    cdef ptr_t k = <ptr_t>PyBytes_AS_STRING(key)
    cdef ptr_t v = <ptr_t>PyBytes_AS_STRING(value)
    cdef Py_ssize_t kn = PyBytes_GET_SIZE(key), vn = PyBytes_GET_SIZE(value)
    cdef int ok
    with nogil:
        ok = _utf8_ok(k, kn) and _profile_ok(v, vn)
    return ok == 1


def unsure_profiles(list changes) -> list:
    """The indexes, in order, of the profile upserts among `changes` ((namespace, key, value) tuples)
    that `scan_profile` is not sure of: the ones the caller checks with `check_profile`. The scan of
    every record runs without the GIL."""
    cdef Py_ssize_t total = len(changes), i, count = 0
    cdef Py_ssize_t* where = NULL
    cdef ptr_t* keys = NULL
    cdef ptr_t* values = NULL
    cdef Py_ssize_t* key_sizes = NULL
    cdef Py_ssize_t* value_sizes = NULL
    cdef char* ok = NULL
    cdef object change, key, value
    unsure = []
    held = []  # the records scanned, alive while the GIL is released (`changes` could change meanwhile)
    if total == 0:
        return unsure
    try:
        where = <Py_ssize_t*>PyMem_Malloc(total * sizeof(Py_ssize_t))
        key_sizes = <Py_ssize_t*>PyMem_Malloc(total * sizeof(Py_ssize_t))
        value_sizes = <Py_ssize_t*>PyMem_Malloc(total * sizeof(Py_ssize_t))
        keys = <ptr_t*>PyMem_Malloc(total * sizeof(ptr_t))
        values = <ptr_t*>PyMem_Malloc(total * sizeof(ptr_t))
        ok = <char*>PyMem_Malloc(total)
        if not (where and key_sizes and value_sizes and keys and values and ok):
            raise MemoryError()
        for i in range(total):
            change = changes[i]
            if not (PyTuple_CheckExact(change) and PyTuple_GET_SIZE(change) == 3):
                namespace, key, value = change  # as the caller's loop would unpack it (or fail)
            else:
                namespace = <object>PyTuple_GET_ITEM(change, 0)
                key = <object>PyTuple_GET_ITEM(change, 1)
                value = <object>PyTuple_GET_ITEM(change, 2)
            if value is None or namespace != "profiles":
                continue
            if not (PyBytes_CheckExact(key) and PyBytes_CheckExact(value)):
                where[count] = -1 - i  # not bytes: not scanned, left to check_profile
                count += 1
                continue
            held.append(change)
            where[count] = i
            keys[count] = <ptr_t>PyBytes_AS_STRING(key)
            key_sizes[count] = PyBytes_GET_SIZE(key)
            values[count] = <ptr_t>PyBytes_AS_STRING(value)
            value_sizes[count] = PyBytes_GET_SIZE(value)
            count += 1
        with nogil:
            for i in range(count):
                ok[i] = where[i] >= 0 and _utf8_ok(keys[i], key_sizes[i]) and _profile_ok(
                    values[i], value_sizes[i]
                )
        for i in range(count):
            if not ok[i]:
                unsure.append(where[i] if where[i] >= 0 else -1 - where[i])
        return unsure
    finally:
        PyMem_Free(where)
        PyMem_Free(key_sizes)
        PyMem_Free(value_sizes)
        PyMem_Free(keys)
        PyMem_Free(values)
        PyMem_Free(ok)
