"""Decoded profiles kept between requests: a returning user's record is decoded once, not per Decide.

The key is the user id; an entry holds the record's stored bytes and the `ProfileRecord` decoded from
them for an embedding generation (core/embedding_slots.py; another generation decodes again). A lookup
still reads the record from the request's own read transaction and uses the entry only when the bytes
are the same (a copy and a memcmp of a few hundred bytes), so a profile changed by a
delta, a snapshot or a forget is never served stale, whatever the store's generation or version says. The
cache is bounded (`max_entries`, oldest insertion out first) and emptied when the store's generation
changes (a new snapshot replaces most profiles). Safe to share between threads: each operation is one
dict operation under the GIL, and a lost race costs one decode, never a wrong record.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Final

from edgewise.core.records import ProfileRecord, decode_profile
from edgewise.core.store import ReadView

__all__ = ["PROFILE_CACHE_ENTRIES", "ProfileCache"]

PROFILE_CACHE_ENTRIES: Final = 4096  # about 2 MB per worker at a few hundred bytes per profile


class ProfileCache:
    """user id -> (stored bytes, decoded record), checked against the store on every lookup."""

    __slots__ = ("_entries", "_generation", "max_entries")

    def __init__(self, max_entries: int = PROFILE_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[bytes, int, ProfileRecord]] = {}
        self._generation = -1

    def __len__(self) -> int:
        return len(self._entries)

    def profile(self, view: ReadView, user_id: str, generation: int = 0) -> ProfileRecord | None:
        """`view.profile(user_id, generation)`, decoded again only when the stored bytes (or the
        embedding generation) changed."""
        buf = view.profile_bytes(user_id)
        if buf is None:
            return None
        entries = self._entries
        if view.generation != self._generation:
            entries.clear()
            self._generation = view.generation
        entry = entries.get(user_id)
        raw = bytes(buf)  # a copy of a few hundred bytes: bytes == bytes is a memcmp (a memoryview's is not)
        if entry is not None and entry[0] == raw and entry[1] == generation:
            return entry[2]
        record = decode_profile(user_id, raw, generation)
        if entry is None and len(entries) >= self.max_entries:
            # another thread changed the dict meanwhile: skip the eviction this time
            with suppress(KeyError, StopIteration, RuntimeError):
                del entries[next(iter(entries))]
        entries[user_id] = (raw, generation, record)
        return record
