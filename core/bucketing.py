"""Deterministic experiment bucketing: MurmurHash3 x86_32 (seed 0) of "<salt>:<unit id>" mod 10,000.

The same unit id gets the same bucket on every process, edge and channel, in any language that
implements MurmurHash3 x86_32 over the UTF-8 bytes of the key.

`bucket` is compiled (edgewise.core._hashing): one call hashes the key in place, without building the
joined string or its bytes; `bucket_reference` is the same computation spelled out in Python.
"""

from __future__ import annotations

from typing import Final

from edgewise.core._hashing import bucket as _bucket_compiled
from edgewise.core._hashing import murmur3_32 as _murmur3_32_compiled

__all__ = ["BUCKETS", "bucket", "bucket_reference", "murmur3_32", "murmur3_32_reference"]

BUCKETS: Final = 10_000

_C1: Final = 0xCC9E2D51
_C2: Final = 0x1B873593
_MASK: Final = 0xFFFFFFFF


def murmur3_32_reference(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32 of `data` (Austin Appleby's reference algorithm), unsigned 32-bit result.

    Plain Python: the specification the compiled `murmur3_32` is tested against."""
    h = seed & _MASK
    n = len(data)
    tail_start = n - (n & 3)
    for i in range(0, tail_start, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _C1) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        k = (k * _C2) & _MASK
        h ^= k
        h = ((h << 13) | (h >> 19)) & _MASK
        h = (h * 5 + 0xE6546B64) & _MASK
    k = 0
    rem = n & 3
    if rem == 3:
        k ^= data[tail_start + 2] << 16
    if rem >= 2:
        k ^= data[tail_start + 1] << 8
    if rem >= 1:
        k ^= data[tail_start]
        k = (k * _C1) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        k = (k * _C2) & _MASK
        h ^= k
    h ^= n
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


murmur3_32 = _murmur3_32_compiled
"""MurmurHash3 x86_32, compiled (edgewise.core._hashing); same results as murmur3_32_reference."""


bucket = _bucket_compiled
"""bucket(salt, unit_id): bucket 0..9999 of a unit in the experiment salted `salt` (compiled)."""


def bucket_reference(salt: str, unit_id: str) -> int:
    """Bucket 0..9999 of a unit in the experiment salted `salt`: the specification of `bucket`."""
    return murmur3_32_reference(f"{salt}:{unit_id}".encode()) % BUCKETS
