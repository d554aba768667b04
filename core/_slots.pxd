# cython: language_level=3
"""Objects of a plain `__slots__` class made with their slots filled directly, without a Python
`__init__` frame (core/_results.pyx's `ItemResult`s, core/_decide.pyx's request objects): a slot's
offset from its member descriptor, an instance allocated, a value stored at an offset. `cimport`ed,
inline, no module of its own. The caller checks the class is one whose `__init__` does nothing else."""

from cpython.ref cimport Py_INCREF, PyObject


cdef extern from "Python.h":
    ctypedef struct PyTypeObject
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    object PyType_GenericAlloc(PyTypeObject*, Py_ssize_t)


cdef inline Py_ssize_t slot_offset(object cls, str name) except -1:
    """Where `cls`'s slot `name` lives in an instance (TypeError: not a slot)."""
    descr = cls.__dict__[name]
    if type(descr).__name__ != "member_descriptor":
        raise TypeError(f"{cls.__name__}.{name} is not a slot")
    return (<PyMemberDescrObject*>descr).d_member.offset


cdef inline object allocate(object cls):
    """An instance of `cls` with every slot empty."""
    return PyType_GenericAlloc(<PyTypeObject*>cls, 0)


cdef inline void put_slot(object obj, Py_ssize_t at, object value):
    """Store `value` in the empty slot at offset `at` of `obj` (a new reference)."""
    Py_INCREF(value)
    (<PyObject**>((<char*><PyObject*>obj) + at))[0] = <PyObject*>value
