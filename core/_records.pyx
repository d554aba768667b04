# cython: language_level=3
"""The shape check of decoded records' (item, number) pairs in C speed (core/records.py keeps the
Python reference, `_well_typed_pairs_py`, which tests compare this with).

A live activity of a returning shopper holds up to 50 views, 50 cart entries, 50 purchases and 200
impression counts, read and checked on every personalized Decide (and on every Track that updates it):
the Python check cost about 55 ns a pair (19 us for such an activity), this one a few ns.
"""

from cpython.long cimport PyLong_CheckExact
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact


def well_typed_pairs(object value) -> bool:
    """True iff `value` is a tuple (exactly) of 2-tuples (exactly) of (str, int), exact types: the
    shape `Activity` holds, which a decoded record can then keep as it is (bool is not int here)."""
    cdef Py_ssize_t i, n
    cdef object pair
    if not PyTuple_CheckExact(value):
        return False
    n = PyTuple_GET_SIZE(value)
    for i in range(n):
        pair = <object>PyTuple_GET_ITEM(value, i)
        if not PyTuple_CheckExact(pair) or PyTuple_GET_SIZE(pair) != 2:
            return False
        if not PyUnicode_CheckExact(<object>PyTuple_GET_ITEM(pair, 0)):
            return False
        if not PyLong_CheckExact(<object>PyTuple_GET_ITEM(pair, 1)):
            return False
    return True
