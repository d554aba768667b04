"""A cache of values derived from one snapshot version, bounded by bytes, least recently used out first.

A version's derived values (popularity scores with their order, trending scores, boost vectors,
category prefixes, the default experience per placement and country) are built on first use and
shared by every request of the version. Some keys come from requests, so the cache must not grow
with them: it keeps at most `max_bytes` (estimated, `estimate_nbytes`) and, when a new value does not
fit, evicts the values used least recently until it does. The values every request uses stay; a
flood of one-off keys evicts only other one-off keys. A value larger than the whole bound is built
and returned but not kept.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Final

import numpy as np

__all__ = ["DerivedCache", "estimate_nbytes"]

_MISSING: Final = object()
_FLAT: Final = (str, bytes, int, float, bool, type(None))
_FLAT_TYPES: Final = frozenset(_FLAT)
_MAX_DEPTH: Final = 6  # containers nested deeper than this count shallowly


def estimate_nbytes(value: Any, _depth: int = 0) -> int:
    """About how many bytes `value` holds: NumPy arrays by their data, containers and dataclass
    instances with what they hold (shared objects count once per reference: an overestimate)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + sys.getsizeof(value[:0])
    size = sys.getsizeof(value)
    if isinstance(value, _FLAT) or _depth >= _MAX_DEPTH:
        return size
    if isinstance(value, (tuple, list, set, frozenset)):
        if set(map(type, value)) <= _FLAT_TYPES:  # e.g. a string per item: counted in C
            return size + sum(map(sys.getsizeof, value))
        return size + sum(estimate_nbytes(x, _depth + 1) for x in value)
    if isinstance(value, dict):
        return size + sum(
            estimate_nbytes(k, _depth + 1) + estimate_nbytes(v, _depth + 1) for k, v in value.items()
        )
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return size + sum(
            estimate_nbytes(getattr(value, f.name), _depth + 1) for f in dataclasses.fields(value)
        )
    return size


class DerivedCache:
    """Values by key, at most `max_bytes` of them (estimated), least recently used evicted first.
    Thread-safe; a value is built outside the lock (two threads may build the same key once each)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._values: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value of `key`, built with `build()` on first use (None is a value like any other)."""
        with self._lock:
            entry = self._values.get(key, _MISSING)
            if entry is not _MISSING:
                self._values.move_to_end(key)
                return entry[0]  # type: ignore[index]
        value = build()
        size = estimate_nbytes(value)
        with self._lock:
            entry = self._values.get(key, _MISSING)
            if entry is not _MISSING:  # another thread built it meanwhile: keep one
                self._values.move_to_end(key)
                return entry[0]  # type: ignore[index]
            if size > self.max_bytes:
                return value
            self._values[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._values.popitem(last=False)
                self._bytes -= evicted
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    @property
    def nbytes(self) -> int:
        """The estimated bytes of the values kept (at most max_bytes)."""
        return self._bytes
