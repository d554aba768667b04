# cython: language_level=3
"""Item results made in C: `ItemResult` objects with their four slots filled directly (no Python
`__init__` call per item), for the few results a placement returns on every Decide. core/item_ranking.py
keeps the Python reference (`_item_results_py`), which tests compare this with.

`ItemResult` is a plain slots dataclass (core/decisions.py): an instance is its object header and four
object pointers, at the offsets its member descriptors give; `item_results` reads those once and checks
the class is what it expects (its `__init__` is the dataclass one: no `__post_init__`, nothing else set).
"""

from cpython.ref cimport Py_INCREF


cdef extern from "Python.h":
    ctypedef struct PyObject
    ctypedef struct PyTypeObject
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    object PyType_GenericAlloc(PyTypeObject*, Py_ssize_t)
    int T_OBJECT_EX


cdef object _cls = None
cdef Py_ssize_t _id_at, _score_at, _reason_at, _promoted_at


cdef Py_ssize_t _offset(object cls, str name) except -1:
    descr = cls.__dict__[name]
    if type(descr).__name__ != "member_descriptor":
        raise TypeError(f"{cls.__name__}.{name} is not a slot")
    return (<PyMemberDescrObject*>descr).d_member.offset


cdef int _bind(object cls) except -1:
    global _cls, _id_at, _score_at, _reason_at, _promoted_at
    if tuple(cls.__slots__) != ("id", "score", "reason", "promoted") or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not the slots dataclass item_results fills")
    _id_at, _score_at = _offset(cls, "id"), _offset(cls, "score")
    _reason_at, _promoted_at = _offset(cls, "reason"), _offset(cls, "promoted")
    _cls = cls
    return 0


cdef inline void _put(object obj, Py_ssize_t at, object value):
    Py_INCREF(value)
    (<PyObject**>((<char*><PyObject*>obj) + at))[0] = <PyObject*>value


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
        obj = PyType_GenericAlloc(<PyTypeObject*>cls, 0)
        _put(obj, _id_at, item_id)
        _put(obj, _score_at, values[i])
        _put(obj, _reason_at, reason)
        _put(obj, _promoted_at, False)
        out[i] = obj
    return out
