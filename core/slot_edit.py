"""A profile record's embedding vector slots (core/embedding_slots.py) read and rewritten in its msgpack
bytes: what the control plane's embeddings refresh does to every profile of a staging commit
(sync/embedding_refresh.py), 100k profiles a run.

`record_slots(raw)` and `record_with_slots(raw, slots)` try the byte-level walk in C first
(core/_slot_edit.pyx: the top-level map's entries found by their encoded lengths, every entry but the
slot keys copied verbatim, the new slots written, the map header fixed; 0.3 + 0.4 us a profile record
instead of ~2.9 us to unpack and repack it) and fall back to the Python path for any record the walk is
not sure of (malformed, ext types, a key written twice, ...). The Python path, `record_slots_py` and
`record_with_slots_py`, is the reference the walk is tested against (tests/test_slot_edit.py): both give
records that decode equal, byte-equal when the stored record is canonical msgpack (what
`core.records.encode_profile` writes).
"""

from __future__ import annotations

from typing import Any

import msgpack

from edgewise.core._slot_edit import stored_slots, with_slots
from edgewise.core.embedding_slots import Slot
from edgewise.core.records import set_vector_slots, vector_slots

__all__ = ["record_slots", "record_slots_py", "record_with_slots", "record_with_slots_py"]


def record_slots(raw: bytes) -> tuple[Slot, ...] | None:
    """The vector slots of the profile record `raw` (`core.records.vector_slots` of its map); None when
    it is not a profile record's map (not msgpack, not a map, no `e`)."""
    slots = stored_slots(raw)
    return slots if slots is not None else record_slots_py(raw)


def record_with_slots(raw: bytes, slots: tuple[Slot, ...]) -> bytes:
    """The record `raw` (one `record_slots` could read) with its vector slots set to `slots`, every
    other entry kept (for a record `record_slots` could not read: what msgpack raises)."""
    record = with_slots(raw, slots)
    return record if record is not None else record_with_slots_py(raw, slots)


def record_slots_py(raw: bytes) -> tuple[Slot, ...] | None:
    """`record_slots` by unpacking the record (the reference)."""
    try:
        doc: Any = msgpack.unpackb(raw, raw=False)
        return vector_slots(doc) if isinstance(doc, dict) else None
    except Exception:  # msgpack raises several unrelated types on corrupt input; a map without `e`
        return None


def record_with_slots_py(raw: bytes, slots: tuple[Slot, ...]) -> bytes:
    """`record_with_slots` by unpacking, editing and repacking the map (the reference)."""
    doc: dict[str, Any] = msgpack.unpackb(raw, raw=False)
    set_vector_slots(doc, slots)
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed
