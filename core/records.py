"""Records and their codecs: what the store holds per namespace, encoded with msgpack or as raw arrays.

Profiles, items and activity are msgpack maps with short keys and a schema version. Model arrays are
raw little-endian arrays behind a fixed 16-byte header, so a reader maps them zero-copy out of LMDB:

    offset 0  b"EWA1"                  magic
    offset 4  dtype code (1 byte)      b"f" float32, b"i" int32
    offset 5  ndim (1 byte)            1 or 2
    offset 6  reserved (2 bytes)       zero
    offset 8  shape (2 x uint32 LE)    rows, cols (cols = 1 for ndim 1)
    offset 16 data                     C order, little-endian
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import numpy as np
from numpy.typing import NDArray

from edgewise.core._records import well_typed_pairs
from edgewise.core.embedding_slots import MAX_GENERATION, Slot, vector_for

__all__ = [
    "PROFILE_SCHEMA",
    "Activity",
    "ItemRecord",
    "ProfileRecord",
    "RecordError",
    "check_profile",
    "decode_activity",
    "decode_array",
    "decode_item",
    "decode_profile",
    "encode_activity",
    "encode_array",
    "encode_item",
    "encode_profile",
    "set_vector_slots",
    "vector_slots",
]

PROFILE_SCHEMA: Final = 1
ITEM_SCHEMA: Final = 1
ACTIVITY_SCHEMA: Final = 1

_ARRAY_MAGIC: Final = b"EWA1"
_ARRAY_HEADER: Final = struct.Struct("<4sccxxII")
_DTYPES: Final[Mapping[bytes, np.dtype[Any]]] = {b"f": np.dtype("<f4"), b"i": np.dtype("<i4")}


class RecordError(ValueError):
    """A stored record that cannot be decoded (corrupt, or written by an unknown schema)."""


@dataclass(frozen=True, slots=True)
class Activity:
    """Edge-local live activity of one user or session; every sequence is most recent last."""

    views: tuple[tuple[str, int], ...] = ()  # (item id, Unix ms)
    cart: tuple[tuple[str, int], ...] = ()  # (item id, Unix ms it was added)
    purchases: tuple[tuple[str, int], ...] = ()  # (item id, Unix ms)
    impressions: tuple[tuple[str, int], ...] = ()  # (item id, times shown since its last click)

    def cart_items(self) -> tuple[str, ...]:
        return tuple(item for item, _ in self.cart)


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    id: str
    version: int
    attributes: Mapping[str, Any]
    consent: Mapping[str, int]  # purpose -> grant time (Unix ms)
    # The vector of the generation the record was read for (`decode_profile`'s `generation`, the active
    # one on the edge: core/embedding_slots.py), float32 little-endian, or None. A record made in code
    # with no `vectors` stores this one as generation 0's.
    embedding: bytes | None
    # Fleet-wide activity the control plane folded from every edge's events (None: none yet); merged
    # with the edge's own live activity when deciding.
    activity: Activity | None = None
    # The stored vector slots, (generation, vector) each, at most two (`e`/`eg` first, then `n`/`ng`);
    # what `encode_profile` writes when not empty. `decode_profile` fills them for a record with
    # generation keys, so a record decoded and encoded again keeps every slot (set a vector with
    # `embedding_slots.slot_with` on `stored_vectors()`); () for one without (generation 0's `e` alone).
    vectors: tuple[Slot, ...] = ()

    def stored_vectors(self) -> tuple[Slot, ...]:
        """The slots as stored, for a record decoded for generation 0 (the writers' default) or made in
        code: `vectors`, else `embedding` as generation 0's vector."""
        return self.vectors or ((0, self.embedding),)


@dataclass(frozen=True, slots=True)
class ItemRecord:
    id: str
    version: int
    row: int  # row in the item model arrays of the same version
    category: str
    tags: tuple[str, ...]
    price: float
    regions: tuple[str, ...]
    launch_date: str
    flags: Mapping[str, Any]


def encode_profile(record: ProfileRecord) -> bytes:
    doc: dict[str, Any] = {
        "s": PROFILE_SCHEMA,
        "v": record.version,
        "a": dict(record.attributes),
        "c": dict(record.consent),
        "e": record.embedding,
    }
    if record.vectors:
        set_vector_slots(doc, record.vectors)
    if record.activity is not None:  # absent, not null: profiles without it encode as before
        doc["act"] = _activity_doc(record.activity)
    return msgpack.packb(doc, use_bin_type=True)


def _unpack(buf: bytes | memoryview, what: str, *, use_list: bool = True) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(buf, raw=False, use_list=use_list)
    except Exception as exc:  # msgpack raises several unrelated types on corrupt input
        raise RecordError(f"corrupt {what} record: {exc}") from exc
    if not isinstance(obj, dict):
        raise RecordError(f"corrupt {what} record: not a map")
    return obj


def decode_profile(user_id: str, buf: bytes | memoryview, generation: int = 0) -> ProfileRecord:
    """The record, its `embedding` the vector of embedding `generation` (the active one, on the edge)."""
    obj = _unpack(buf, "profile")
    if obj.get("s") != PROFILE_SCHEMA:
        raise RecordError(f"profile {user_id!r}: unknown schema {obj.get('s')!r}")
    act = obj.get("act")
    activity = _activity_of(act) if isinstance(act, dict) else None
    if "eg" not in obj and "n" not in obj:  # generation 0's `e` alone, as before generations existed
        return ProfileRecord(
            user_id, obj["v"], obj["a"], obj["c"], obj["e"] if generation == 0 else None, activity
        )
    slots = vector_slots(obj)
    embedding = vector_for(slots, generation)
    return ProfileRecord(user_id, obj["v"], obj["a"], obj["c"], embedding, activity, slots)


def vector_slots(obj: Mapping[str, Any]) -> tuple[Slot, ...]:
    """The (generation, vector) slots of a profile record's map (`e` alone: generation 0's)."""
    e = obj["e"]
    if "eg" not in obj and "n" not in obj:
        return ((0, e),)
    first: Slot = (_generation_of(obj.get("eg", 0)), e)
    return (first, (_generation_of(obj.get("ng")), obj["n"])) if "n" in obj else (first,)


def set_vector_slots(doc: dict[str, Any], slots: tuple[Slot, ...]) -> None:
    """Write `slots` (one or two) into a profile record's map, replacing its `e`, `eg`, `n`, `ng`;
    generation 0 alone is written as `e` only, as before generations existed."""
    for key in ("eg", "n", "ng"):
        doc.pop(key, None)
    doc["e"] = slots[0][1]
    if slots == ((0, slots[0][1]),):
        return
    doc["eg"] = slots[0][0]
    if len(slots) > 1:
        doc["n"], doc["ng"] = slots[1][1], slots[1][0]


def _generation_of(value: Any) -> int:
    """A slot's generation as stored; -1 (matches no generation) when it is not one (check_profile
    refuses such records; a decoder never raises for it)."""
    return value if type(value) is int and 0 <= value <= MAX_GENERATION else -1


def check_profile(user_id: str, buf: bytes | memoryview) -> None:
    """Raise RecordError unless `buf` is a profile record this code reads (cheaper than decoding it)."""
    obj = _unpack(buf, "profile")
    if obj.get("s") != PROFILE_SCHEMA or not {"v", "a", "c", "e"} <= obj.keys():
        raise RecordError(f"profile {user_id!r}: not a profile record of schema {PROFILE_SCHEMA}")
    problem = _slots_problem(obj)
    if problem is not None:
        raise RecordError(f"profile {user_id!r}: {problem}")


def _slots_problem(obj: Mapping[str, Any]) -> str | None:
    """What is wrong with the record's embedding generation keys (`eg`, `n`, `ng`), None if nothing."""
    for key in ("eg", "ng"):
        if key in obj:
            value = obj[key]
            if type(value) is not int or not 0 <= value <= MAX_GENERATION:
                bound = f"an int in 0..{MAX_GENERATION}"
                return f"{key!r} must be an embedding generation ({bound}), got {value!r}"
    if ("n" in obj) != ("ng" in obj):
        return "'n' (a second embedding) and 'ng' (its generation) go together, one is missing"
    if "n" in obj:
        vector = obj["n"]
        if vector is not None and (type(vector) is not bytes or len(vector) % 4):
            return "'n' must be float32 little-endian bytes (a multiple of 4 long) or nil"
        if obj["ng"] == obj.get("eg", 0):
            return f"'e' and 'n' hold the same embedding generation {obj['ng']}: one vector per generation"
    return None


def encode_item(record: ItemRecord) -> bytes:
    return msgpack.packb(
        {
            "s": ITEM_SCHEMA,
            "v": record.version,
            "r": record.row,
            "cat": record.category,
            "tags": list(record.tags),
            "p": record.price,
            "reg": list(record.regions),
            "ld": record.launch_date,
            "f": dict(record.flags),
        },
        use_bin_type=True,
    )


def decode_item(item_id: str, buf: bytes | memoryview) -> ItemRecord:
    obj = _unpack(buf, "item")
    if obj.get("s") != ITEM_SCHEMA:
        raise RecordError(f"item {item_id!r}: unknown schema {obj.get('s')!r}")
    return ItemRecord(
        item_id,
        obj["v"],
        obj["r"],
        obj["cat"],
        tuple(obj["tags"]),
        obj["p"],
        tuple(obj["reg"]),
        obj["ld"],
        obj["f"],
    )


def _activity_doc(activity: Activity) -> dict[str, Any]:
    # msgpack packs tuples as arrays: the pairs go as they are, with no list per pair (the same bytes,
    # encoded in about half the time: BENCHMARKS.md, "Returning shoppers").
    return {
        "s": ACTIVITY_SCHEMA,
        "views": activity.views,
        "cart": activity.cart,
        "buy": activity.purchases,
        "imp": activity.impressions,
    }


def encode_activity(activity: Activity) -> bytes:
    return msgpack.packb(_activity_doc(activity), use_bin_type=True)


def decode_activity(buf: bytes | memoryview) -> Activity:
    # Arrays as tuples: the pairs come out in the shape Activity holds (read on every personalized Decide).
    return _activity_of(_unpack(buf, "activity", use_list=False))


def _pairs(value: Any) -> tuple[tuple[str, int], ...]:
    """(item, number) pairs as Activity holds them; tuples of the right types are taken as they are
    (checked by the compiled `well_typed_pairs`, faster than a Python loop: BENCHMARKS.md, "Returning
    shoppers")."""
    if well_typed_pairs(value):
        return value  # type: ignore[no-any-return]
    return tuple((str(i), int(t)) for i, t in value)


def _well_typed_pairs_py(value: Any) -> bool:
    """The reference `core._records.well_typed_pairs` is tested against."""
    return type(value) is tuple and all(
        type(p) is tuple and len(p) == 2 and type(p[0]) is str and type(p[1]) is int for p in value
    )


def _activity_of(obj: Mapping[str, Any]) -> Activity:
    return Activity(
        _pairs(obj.get("views", ())),
        _pairs(obj.get("cart", ())),
        _pairs(obj.get("buy", ())),
        _pairs(obj.get("imp", ())),
    )


def encode_array(array: NDArray[Any]) -> bytes:
    """Header + raw little-endian C-order data of a 1-D or 2-D float32/int32 array."""
    if array.ndim not in (1, 2):
        raise ValueError(f"model arrays are 1-D or 2-D, got {array.ndim}-D")
    code = next((c for c, dtype in _DTYPES.items() if array.dtype == dtype), None)
    if code is None:
        raise ValueError(f"model arrays are float32 or int32, got {array.dtype}")
    dtype = _DTYPES[code]
    rows = array.shape[0]
    cols = array.shape[1] if array.ndim == 2 else 1
    header = _ARRAY_HEADER.pack(_ARRAY_MAGIC, code, bytes([array.ndim]), rows, cols)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def decode_array(buf: bytes | memoryview) -> NDArray[Any]:
    """A read-only array over `buf` without copying. Valid only as long as `buf` is."""
    if len(buf) < _ARRAY_HEADER.size:
        raise RecordError("corrupt model array: shorter than its header")
    magic, code, ndim_b, rows, cols = _ARRAY_HEADER.unpack_from(buf, 0)
    if magic != _ARRAY_MAGIC or code not in _DTYPES:
        raise RecordError("corrupt model array: bad magic or dtype")
    dtype = _DTYPES[code]
    if len(buf) != _ARRAY_HEADER.size + rows * cols * dtype.itemsize:
        raise RecordError(f"corrupt model array: {len(buf)} bytes for shape ({rows}, {cols})")
    # One constructor call (frombuffer + reshape cost twice as much; this runs a few times per request).
    shape = (rows, cols) if ndim_b == b"\x02" else (rows,)
    return np.ndarray(shape, dtype, buf, _ARRAY_HEADER.size)
