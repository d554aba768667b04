"""Profile records written byte by byte, for the tests of the C walks over their msgpack maps
(tests/test_profile_check.py, tests/test_slot_edit.py)."""

from __future__ import annotations

__all__ = ["GOOD", "good_with", "raw_map"]

# a good record's entries: "s": 1, "v": 1, "a": {}, "c": {}, "e": None
GOOD = [
    (b"\xa1s", b"\x01"),
    (b"\xa1v", b"\x01"),
    (b"\xa1a", b"\x80"),
    (b"\xa1c", b"\x80"),
    (b"\xa1e", b"\xc0"),
]


def raw_map(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A msgpack fixmap of the (encoded key, encoded value) `entries`, in order."""
    return bytes([0x80 | len(entries)]) + b"".join(k + v for k, v in entries)


def good_with(key: bytes, value: bytes) -> bytes:
    """The good record with one more entry (last)."""
    return raw_map([*GOOD, (key, value)])
