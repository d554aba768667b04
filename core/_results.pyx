# cython: language_level=3
"""Objects of the request path made in C: `ItemResult`s with their four slots filled directly (no
Python `__init__` call per item), for the few results a placement returns on every Decide
(core/item_ranking.py keeps the Python reference, `_item_results_py`, which tests compare this with);
and `filled`, any slots dataclass without `__post_init__` made the same way (edge/_wire.pyx's request
decoder makes the frozen `DecideRequest`, `Context` and `PlacementRequest` with it: a frozen class's
`__init__` sets each field through `object.__setattr__`, about 5 us a request).

`ItemResult` is a plain slots dataclass (core/decisions.py): an instance is its object header and four
object pointers, at the offsets its member descriptors give; `item_results` reads those once and checks
the class is what it expects (its `__init__` is the dataclass one: no `__post_init__`, nothing else set).
"""

from edgewise.core._slots cimport allocate, put_slot, slot_offset


cdef object _cls = None
cdef Py_ssize_t _id_at, _score_at, _reason_at, _promoted_at


cdef int _bind(object cls) except -1:
    global _cls, _id_at, _score_at, _reason_at, _promoted_at
    if tuple(cls.__slots__) != ("id", "score", "reason", "promoted") or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not the slots dataclass item_results fills")
    _id_at, _score_at = slot_offset(cls, "id"), slot_offset(cls, "score")
    _reason_at, _promoted_at = slot_offset(cls, "reason"), slot_offset(cls, "promoted")
    _cls = cls
    return 0


def item_results(object cls, object item_ids, list rows, list values, str reason) -> list:
    """[cls(item_ids[r], v, reason) for r, v in zip(rows, values)]: `cls` is `ItemResult`, `rows` ints,
    `values` floats (as long as `rows`)."""
    cdef Py_ssize_t i, n = len(rows)
    cdef list out = [None] * n
    if cls is not _cls:
        _bind(cls)
    if len(values) != n:
        raise ValueError("rows and values differ in length")
    for i in range(n):
        item_id = item_ids[rows[i]]
        obj = allocate(cls)
        put_slot(obj, _id_at, item_id)
        put_slot(obj, _score_at, values[i])
        put_slot(obj, _reason_at, reason)
        put_slot(obj, _promoted_at, False)
        out[i] = obj
    return out


cdef dict _layouts = {}  # class -> the offsets of its slots, in field order


cdef tuple _layout(object cls):
    cdef tuple offsets = _layouts.get(cls)
    if offsets is None:
        import dataclasses

        slots = tuple(cls.__slots__)
        fields = dataclasses.fields(cls)
        if (
            tuple(f.name for f in fields) != slots
            or not all(f.init for f in fields)
            or hasattr(cls, "__post_init__")
        ):
            raise TypeError(
                f"{cls.__name__} is a class `filled` cannot make (not a slots dataclass, or one with "
                "__post_init__)"
            )
        offsets = tuple(slot_offset(cls, name) for name in slots)
        _layouts[cls] = offsets
    return offsets


def filled(object cls, tuple values) -> object:
    """`cls(*values)` for a slots dataclass without `__post_init__` (frozen ones too): the object's
    slots filled directly, without the generated `__init__` (a frozen class's sets each field through
    `object.__setattr__`). `values`: every field, in order."""
    cdef tuple offsets = _layout(cls)
    cdef Py_ssize_t i, n = len(offsets)
    if len(values) != n:
        raise TypeError(f"{cls.__name__} has {n} fields, {len(values)} values given")
    obj = allocate(cls)
    for i in range(n):
        put_slot(obj, <Py_ssize_t>offsets[i], values[i])
    return obj
