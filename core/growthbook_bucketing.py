"""GrowthBook-compatible bucketing, an opt-in per experiment (`"bucketing": {"scheme": "growthbook"}`):
a team moving a running GrowthBook experiment keeps every unit in the variant it had.

Exactly GrowthBook's SDK functions (`packages/sdk-js/src/util.ts`), tested against its published
`hash`, `getBucketRange`, `chooseVariation` and `inNamespace` vectors (tests/test_growthbook_suite.py):

- `fnv1a32(text)`: FNV-1a 32-bit over the UTF-16 code units of the text (JavaScript's `charCodeAt`);
- `gb_hash(seed, value, version)`: version 2 is `fnv1a32(str(fnv1a32(seed + value))) % 10000 / 10000`,
  version 1 (biased, kept for old experiments) is `fnv1a32(value + seed) % 1000 / 1000`;
- `bucket_ranges(n, coverage, weights)`: variant i owns `[c_i, c_i + coverage * w_i)` where `c_i` is
  the sum of the weights before it; coverage is clamped to [0, 1]; weights of the wrong length or not
  summing to 1 (within 0.99..1.01) are replaced by equal weights;
- `choose_variation(n, ranges)`: the first range holding n, else -1 (not in the experiment);
- `in_namespace(unit, (name, start, end))`: `start <= gb_hash("__" + name, unit, 1) < end`.

MurmurHash3 (docs/bucketing.md) stays the default scheme.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = ["bucket_ranges", "choose_variation", "equal_weights", "fnv1a32", "gb_hash", "in_namespace"]

_OFFSET: Final = 0x811C9DC5
_PRIME: Final = 0x01000193
_MASK: Final = 0xFFFFFFFF


def fnv1a32(text: str) -> int:
    """FNV-1a 32-bit over the UTF-16 code units of `text` (what JavaScript's `charCodeAt` yields)."""
    h = _OFFSET
    if text.isascii():
        for unit in text.encode("ascii"):
            h = ((h ^ unit) * _PRIME) & _MASK
        return h
    data = text.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(data), 2):
        h = ((h ^ (data[i] | (data[i + 1] << 8))) * _PRIME) & _MASK
    return h


def gb_hash(seed: str, value: str, version: int) -> float | None:
    """GrowthBook's `hash`: a unit's position in [0, 1) for an experiment seed (None: unknown version)."""
    if version == 2:
        return (fnv1a32(str(fnv1a32(seed + value))) % 10000) / 10000
    if version == 1:
        return (fnv1a32(value + seed) % 1000) / 1000
    return None


def equal_weights(n: int) -> list[float]:
    return [1 / n] * n if n > 0 else []


def bucket_ranges(
    n: int, coverage: float | None, weights: Sequence[float] | None
) -> list[tuple[float, float]]:
    """GrowthBook's `getBucketRanges`: each variant's [start, end) of the unit interval."""
    cover = 1.0 if coverage is None else min(max(coverage, 0.0), 1.0)
    used: Sequence[float] = equal_weights(n)
    if weights is not None and len(weights) == n and 0.99 <= sum(weights) <= 1.01:
        used = weights
    ranges: list[tuple[float, float]] = []
    cumulative = 0.0
    for w in used:
        start = cumulative
        cumulative += w
        ranges.append((start, start + cover * w))
    return ranges


def choose_variation(n: float, ranges: Sequence[tuple[float, float]]) -> int:
    """GrowthBook's `chooseVariation`: the index of the first range holding n, else -1."""
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def in_namespace(unit: str, namespace: tuple[str, float, float]) -> bool:
    """GrowthBook's `inNamespace`: mutually exclusive experiments share a namespace, each owning a range."""
    n = gb_hash("__" + namespace[0], unit, 1)
    return n is not None and namespace[1] <= n < namespace[2]
