"""The check of a commit's profile records (the edge syncer's, before its write transaction), without
unpacking them.

`check_profiles(changes)` raises exactly what `check_profile` (core/records.py: msgpack.unpackb, then
the map's schema and keys) raised for the first profile upsert it refused, and nothing when it refuses
none, as the loop over every record did; but the records are first scanned in C without the GIL
(core/_profile_check.pyx, `unsure_profiles`), and only those the scan is not sure of (none, in a commit
of good records) are unpacked by `check_profile`. The scan is one-sided: it answers "accepted" only for
bytes `check_profile` accepts, so the refusals and their messages are `check_profile`'s own.

`scan_profile_py` is the scan in Python: the reference the compiled one is tested against
(tests/test_profile_check.py), not used at run time.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from edgewise.core._profile_check import MAX_DEPTH, scan_profile, unsure_profiles
from edgewise.core.records import check_profile

__all__ = ["MAX_DEPTH", "check_profiles", "scan_profile", "scan_profile_py", "unsure_profiles"]

_Change = tuple[str, bytes, bytes | None]
_REQUIRED: Final = frozenset({b"v", b"a", b"c", b"e"})
# The encodings of a schema value equal to 1 in Python (`obj.get("s") != 1` lets them through): int 1
# in every width, true, float32 and float64 1.0.
_ONE: Final = frozenset(
    {
        b"\x01",
        b"\xc3",
        b"\xcc\x01",
        b"\xd0\x01",
        b"\xcd\x00\x01",
        b"\xd1\x00\x01",
        b"\xce\x00\x00\x00\x01",
        b"\xd2\x00\x00\x00\x01",
        b"\xcf" + (1).to_bytes(8, "big"),
        b"\xd3" + (1).to_bytes(8, "big"),
        b"\xca" + struct.pack(">f", 1.0),
        b"\xcb" + struct.pack(">d", 1.0),
    }
)
_FIXED: Final = {  # first byte -> size of a scalar of fixed size (nil, false, true, numbers)
    0xC0: 1, 0xC2: 1, 0xC3: 1,
    0xCA: 5, 0xCE: 5, 0xD2: 5,
    0xCB: 9, 0xCF: 9, 0xD3: 9,
    0xCC: 2, 0xD0: 2,
    0xCD: 3, 0xD1: 3,
}  # fmt: skip
_WIDTH: Final = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4, 0xDE: 2, 0xDF: 4, 0xDC: 2, 0xDD: 4}


class _Unsure(Exception):
    """The scan cannot vouch for the bytes: `check_profile` decides."""


def check_profiles(changes: Sequence[_Change]) -> None:
    """Raise what `check_profile(key.decode(), value)` raises for the first profile upsert of `changes`
    it refuses (a RecordError, or a UnicodeDecodeError for a key); None if it refuses none."""
    listed = changes if isinstance(changes, list) else list(changes)
    for i in unsure_profiles(listed):
        _, key, value = listed[i]
        assert value is not None
        check_profile(key.decode(), value)


def scan_profile_py(key: bytes, value: bytes) -> bool:
    """The reference of the compiled `scan_profile`: True iff `check_profile(key.decode(), value)`
    certainly accepts the record (core/_profile_check.pyx says which records it leaves to it)."""
    if type(key) is not bytes or type(value) is not bytes:
        return False
    try:
        key.decode()
        return _profile(value)
    except (_Unsure, UnicodeDecodeError, IndexError):
        return False


def _profile(buf: bytes) -> bool:
    if not _is_container(buf[0], maps=True):
        return False
    count, pos = _container(buf, 0)
    schema: bytes | None = None
    seen: set[bytes] = set()
    slots: dict[bytes, bytes] = {}  # b"eg", b"n", b"ng" -> the value's bytes
    for _ in range(count):
        start, end = _string(buf, pos)
        if start is not None:
            name = buf[start:end]
            value_end = _skip(buf, end, 1)
            if name == b"s":
                schema = buf[end:value_end]  # the last one wins, as in a dict
            elif name in _REQUIRED:
                seen.add(name)
            elif name in _SLOT_KEYS:
                if name in slots:
                    raise _Unsure  # a repeated slot key: left to check_profile
                slots[name] = buf[end:value_end]
            pos = value_end
        else:
            pos = _skip(buf, _key(buf, pos), 1)
    return pos == len(buf) and seen == _REQUIRED and schema in _ONE and _slots_ok(slots)


_SLOT_KEYS: Final = frozenset({b"eg", b"n", b"ng"})


def _slots_ok(slots: dict[bytes, bytes]) -> bool:
    """The embedding generation keys as `check_profile` accepts them (the scan's subset: module doc of
    core/_profile_check.pyx)."""
    eg = _generation(slots[b"eg"]) if b"eg" in slots else 0
    if eg < 0 or (b"n" in slots) != (b"ng" in slots):
        return False
    if b"n" not in slots:
        return True
    ng, vector = _generation(slots[b"ng"]), slots[b"n"]
    if vector == b"\xc0":
        vector_ok = True
    else:
        header = {0xC4: 2, 0xC5: 3, 0xC6: 5}.get(vector[0], 0)
        vector_ok = header > 0 and (len(vector) - header) % 4 == 0
    return ng >= 0 and ng != eg and vector_ok


def _generation(value: bytes) -> int:
    """The int in 0..2**31-1 a fixint or uint 8/16/32 holds; -1 for anything else."""
    b = value[0]
    if b <= 0x7F:
        return b
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4}.get(b, 0)
    if not width or len(value) != 1 + width:
        return -1
    number = int.from_bytes(value[1:], "big")
    return number if number <= 0x7FFFFFFF else -1


def _is_container(b: int, *, maps: bool) -> bool:
    if maps:
        return 0x80 <= b <= 0x8F or b in (0xDE, 0xDF)
    return 0x90 <= b <= 0x9F or b in (0xDC, 0xDD)


def _container(buf: bytes, pos: int) -> tuple[int, int]:
    """(entries, offset of the first) of the map or array header at `pos`."""
    b = buf[pos]
    if b < 0xA0:
        count, pos = b & 0x0F, pos + 1
    else:
        width = _WIDTH[b]
        count, pos = _int(buf, pos + 1, width), pos + 1 + width
    if count > (len(buf) - pos) // (2 if _is_container(b, maps=True) else 1):
        raise _Unsure
    return count, pos


def _int(buf: bytes, pos: int, size: int) -> int:
    if pos + size > len(buf):
        raise _Unsure
    return int.from_bytes(buf[pos : pos + size], "big")


def _sized(buf: bytes, pos: int) -> tuple[int, int]:
    """(start, end) of the bytes of the str8/16/32 or bin8/16/32 whose header is at `pos`."""
    width = _WIDTH[buf[pos]]
    start = pos + 1 + width
    end = start + _int(buf, pos + 1, width)
    if end > len(buf):
        raise _Unsure
    return start, end


def _string(buf: bytes, pos: int) -> tuple[int | None, int]:
    """(start, end) of the valid UTF-8 str at `pos`; (None, pos) if no str starts there."""
    b = buf[pos]
    if 0xA0 <= b <= 0xBF:
        start, end = pos + 1, pos + 1 + (b & 0x1F)
        if end > len(buf):
            raise _Unsure
    elif b in (0xD9, 0xDA, 0xDB):
        start, end = _sized(buf, pos)
    else:
        return None, pos
    buf[start:end].decode()  # UnicodeDecodeError: not sure
    return start, end


def _key(buf: bytes, pos: int) -> int:
    """Past the map key at `pos`: a str or a bin (msgpack's strict_map_key); _Unsure otherwise."""
    start, end = _string(buf, pos)
    if start is not None:
        return end
    if buf[pos] in (0xC4, 0xC5, 0xC6):
        return _sized(buf, pos)[1]
    raise _Unsure


def _skip(buf: bytes, pos: int, depth: int) -> int:
    """Past the object at `pos`; _Unsure when the scan is not sure of it."""
    b = buf[pos]
    if b <= 0x7F or b >= 0xE0:  # fixint, negative fixint
        return pos + 1
    if b in _FIXED:
        end = pos + _FIXED[b]
        if end > len(buf):
            raise _Unsure
        return end
    maps = _is_container(b, maps=True)
    if maps or _is_container(b, maps=False):
        count, pos = _container(buf, pos)
        if depth >= MAX_DEPTH:
            raise _Unsure
        for _ in range(count):
            if maps:
                pos = _key(buf, pos)
            pos = _skip(buf, pos, depth + 1)
        return pos
    start, end = _string(buf, pos)
    if start is not None:
        return end
    if b in (0xC4, 0xC5, 0xC6):
        return _sized(buf, pos)[1]
    raise _Unsure  # 0xC1 (never used) and the ext types: left to msgpack
