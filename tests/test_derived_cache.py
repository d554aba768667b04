"""The cache of a version's derived values (edgewise.core.derived_cache): bounded by bytes, least recently
used evicted first, never cleared whole."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from edgewise.core.derived_cache import DerivedCache, estimate_nbytes

KIB = 1024


def _block(n: int = KIB) -> np.ndarray:
    return np.zeros(n, dtype=np.uint8)


def test_a_flood_of_new_keys_stays_under_the_bound_and_keeps_the_values_in_use() -> None:
    cache = DerivedCache(max_bytes=200 * KIB)
    useful = {f"useful-{i}": cache.get(f"useful-{i}", _block) for i in range(10)}
    for n in range(20_000):
        cache.get(("flood", n), _block)
        assert cache.nbytes <= cache.max_bytes
        if n % 50 == 0:  # every request touches the values it uses
            for key, value in useful.items():
                assert cache.get(key, _block) is value
    for key, value in useful.items():
        assert cache.get(key, lambda: None) is value
    assert 150 < len(cache) < 200  # full, not cleared: only the least recently used went
    assert ("flood", 19_999) in cache and ("flood", 0) not in cache


def test_the_least_recently_used_goes_first() -> None:
    cache = DerivedCache(max_bytes=estimate_nbytes(_block()) * 3)
    a, _, c = (cache.get(k, _block) for k in "abc")
    assert cache.get("a", _block) is a  # a is now the most recently used
    cache.get("d", _block)
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in "abcd" if k in cache}
    assert cache.get("c", _block) is c and cache.get("a", _block) is a


def test_a_value_larger_than_the_bound_is_returned_but_not_kept() -> None:
    cache = DerivedCache(max_bytes=10 * KIB)
    kept = cache.get("small", _block)
    big = cache.get("big", lambda: _block(64 * KIB))
    assert big.shape == (64 * KIB,)
    assert "big" not in cache and cache.get("small", _block) is kept


def test_none_is_a_value_built_once() -> None:
    cache = DerivedCache(max_bytes=KIB * KIB)
    builds: list[int] = []

    def build() -> None:
        builds.append(1)

    assert cache.get("k", build) is None and cache.get("k", build) is None
    assert builds == [1]


@dataclass
class _Item:
    id: str
    score: float


def test_estimates_count_what_values_hold() -> None:
    array = np.zeros(100_000, dtype=np.float32)
    assert 400_000 <= estimate_nbytes(array) < 401_000
    assert estimate_nbytes((array, array[:10])) > 400_000
    strings = tuple(f"category/{i}" for i in range(1000))
    assert estimate_nbytes(strings) > 1000 * 50
    items = [_Item(f"i{n}", 1.0) for n in range(100)]
    assert estimate_nbytes(items) > 100 * (48 + 24)


def test_threads_share_one_cache() -> None:
    cache = DerivedCache(max_bytes=64 * KIB)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for n in range(2_000):
                value = cache.get(n % 300, _block)
                assert value.shape == (KIB,)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and cache.nbytes <= cache.max_bytes
