"""An HDR-style latency histogram: log-linear buckets, fixed relative precision, mergeable.

Values are nanoseconds (as `time.monotonic_ns` differences give them). A value is first divided by the
unit (default 1 us, the lowest value told apart) and then counted in a bucket of HdrHistogram's
log-linear layout: values below `2 ** sub_bucket_bits` units each get their own bucket; above that,
every power of two is split into `2 ** (sub_bucket_bits - 1)` equal buckets. With the default of 3
significant digits (`sub_bucket_bits` = 11) a reported value is within 1/2048 of the recorded one
(relative), or within half a unit below 2048 units; the whole range 1 us .. 60 s has 17,192 counters,
kept sparse (only the non-empty ones exist), so a histogram costs memory and merge time in proportion
to the distinct buckets it saw, typically a few hundred.
Values outside the range are clamped to it and counted in `clamped`; `min`, `max`, `count` and the mean
are exact (kept on the side).

Percentiles use the nearest-rank definition (numpy's `method="inverted_cdf"`): the value of the
`ceil(q/100 * count)`-th smallest recording, reported as the midpoint of its bucket and kept within
[min, max]; the largest recording (`percentile(100)`) and any in the clamped top bucket report the
exact max.

Histograms of different processes merge: `to_bytes()` / `from_bytes()` (a compact, sparse encoding),
`to_dict()` / `from_dict()` (JSON-able), and `merge()` / `+=`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_HIGHEST_NS",
    "DEFAULT_LOWEST_NS",
    "REPORT_PERCENTILES",
    "Histogram",
    "HistogramError",
    "Summary",
]

DEFAULT_LOWEST_NS: Final = 1_000  # 1 us
DEFAULT_HIGHEST_NS: Final = 60_000_000_000  # 60 s
REPORT_PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)

_MAGIC: Final = b"EWH1"
# magic, unit_ns, highest_ns, sub_bucket_bits, count, clamped, sum_ns, min_ns, max_ns, pairs
_HEADER: Final = struct.Struct("<4sQQBQQQQQI")
_PAIR_BYTES: Final = 12  # a uint32 index and a uint64 count, stored as two arrays


class HistogramError(ValueError):
    """Bad histogram parameters, incompatible histograms in a merge, or a corrupt encoding."""


@dataclass(frozen=True)
class Summary:
    """The usual figures of one histogram, in nanoseconds (all 0 when nothing was recorded)."""

    count: int
    mean_ns: float
    min_ns: int
    max_ns: int
    percentiles_ns: dict[float, int]

    def to_dict(self, scale: float = 1e-3, suffix: str = "us") -> dict[str, Any]:
        """JSON-able figures, scaled (default: microseconds, keys like `p99_us`)."""
        out: dict[str, Any] = {"count": self.count, f"mean_{suffix}": round(self.mean_ns * scale, 3)}
        for q, v in self.percentiles_ns.items():
            out[f"{_percentile_key(q)}_{suffix}"] = round(v * scale, 3)
        out[f"max_{suffix}"] = round(self.max_ns * scale, 3)
        out[f"min_{suffix}"] = round(self.min_ns * scale, 3)
        return out


def _percentile_key(q: float) -> str:
    """50.0 -> "p50", 99.9 -> "p99.9"."""
    text = f"{q:g}"
    return f"p{text}"


class Histogram:
    """A log-linear histogram of nanosecond values; see the module docstring for the precision."""

    __slots__ = (
        "_counts",
        "_half",
        "_half_bits",
        "_highest_units",
        "_mask",
        "_size",
        "clamped",
        "count",
        "highest_ns",
        "max_ns",
        "min_ns",
        "sub_bucket_bits",
        "sum_ns",
        "unit_ns",
    )

    def __init__(
        self,
        lowest_ns: int = DEFAULT_LOWEST_NS,
        highest_ns: int = DEFAULT_HIGHEST_NS,
        significant_digits: int = 3,
    ) -> None:
        if lowest_ns < 1:
            raise HistogramError(f"lowest_ns must be >= 1, got {lowest_ns}")
        if highest_ns < 2 * lowest_ns:
            raise HistogramError(f"highest_ns ({highest_ns}) must be at least 2 x lowest_ns ({lowest_ns})")
        if not 1 <= significant_digits <= 5:
            raise HistogramError(f"significant_digits must be 1..5, got {significant_digits}")
        self.unit_ns = int(lowest_ns)
        self.highest_ns = int(highest_ns)
        # As HdrHistogram: enough linear sub-buckets to tell 2 * 10^digits values apart.
        self.sub_bucket_bits = max(1, math.ceil(math.log2(2 * 10**significant_digits)))
        self._init_layout()
        self._counts: dict[int, int] = {}
        self.count = 0
        self.clamped = 0
        self.sum_ns = 0
        self.min_ns = 0
        self.max_ns = 0

    def _init_layout(self) -> None:
        self._half_bits = self.sub_bucket_bits - 1
        self._half = 1 << self._half_bits
        self._mask = (1 << self.sub_bucket_bits) - 1
        self._highest_units = self.highest_ns // self.unit_ns
        self._size = self._index(self._highest_units) + 1

    # -- layout -------------------------------------------------------------------------------------

    def _index(self, units: int) -> int:
        """Counter index of a value in units (HdrHistogram's countsArrayIndex)."""
        bucket = (units | self._mask).bit_length() - self.sub_bucket_bits
        sub = units >> bucket
        return ((bucket + 1) << self._half_bits) + sub - self._half

    def _bounds_ns(self, index: int) -> tuple[int, int]:
        """[low, high) of the values (ns) counted at `index`."""
        bucket = (index >> self._half_bits) - 1
        sub = (index & (self._half - 1)) + self._half
        if bucket < 0:
            sub -= self._half
            bucket = 0
        low = sub << bucket
        return low * self.unit_ns, (low + (1 << bucket)) * self.unit_ns

    @property
    def relative_precision(self) -> float:
        """Largest relative error of a reported value above the linear range (e.g. 1/2048)."""
        return 1.0 / (2 * self._half)

    # -- recording ----------------------------------------------------------------------------------

    def record(self, value_ns: int) -> None:
        """Count one value (ns). Negative values count as 0; values past the range are clamped."""
        value = int(value_ns)
        if value < 0:
            value = 0
        units = value // self.unit_ns
        if units > self._highest_units:
            units = self._highest_units
            self.clamped += 1
        index = self._index(units)
        counts = self._counts
        counts[index] = counts.get(index, 0) + 1
        if self.count == 0:
            self.min_ns = self.max_ns = value
        elif value < self.min_ns:
            self.min_ns = value
        elif value > self.max_ns:
            self.max_ns = value
        self.count += 1
        self.sum_ns += value

    def record_many(self, values_ns: Iterable[int]) -> None:
        for value in values_ns:
            self.record(value)

    def _compatible(self, other: Histogram) -> None:
        if (other.unit_ns, other.highest_ns, other.sub_bucket_bits) != (
            self.unit_ns,
            self.highest_ns,
            self.sub_bucket_bits,
        ):
            raise HistogramError(
                "cannot merge histograms of different layouts: "
                f"(unit {self.unit_ns} ns, highest {self.highest_ns} ns, {self.sub_bucket_bits} bits) vs "
                f"(unit {other.unit_ns} ns, highest {other.highest_ns} ns, {other.sub_bucket_bits} bits)"
            )

    def merge(self, other: Histogram) -> Histogram:
        """Add `other`'s recordings to this histogram (same layout required); returns self."""
        self._compatible(other)
        if other.count == 0:
            return self
        counts = self._counts
        for i, c in other._counts.items():
            counts[i] = counts.get(i, 0) + c
        if self.count == 0:
            self.min_ns, self.max_ns = other.min_ns, other.max_ns
        else:
            self.min_ns = min(self.min_ns, other.min_ns)
            self.max_ns = max(self.max_ns, other.max_ns)
        self.count += other.count
        self.clamped += other.clamped
        self.sum_ns += other.sum_ns
        return self

    def __iadd__(self, other: Histogram) -> Histogram:
        return self.merge(other)

    def copy(self) -> Histogram:
        out = self.empty_like()
        return out.merge(self)

    def empty_like(self) -> Histogram:
        """A new, empty histogram with the same layout."""
        out = Histogram.__new__(Histogram)
        out.unit_ns, out.highest_ns, out.sub_bucket_bits = self.unit_ns, self.highest_ns, self.sub_bucket_bits
        out._init_layout()
        out._counts = {}
        out.count = out.clamped = out.sum_ns = out.min_ns = out.max_ns = 0
        return out

    def reset(self) -> None:
        self._counts = {}
        self.count = self.clamped = self.sum_ns = self.min_ns = self.max_ns = 0

    # -- reading ------------------------------------------------------------------------------------

    @property
    def mean_ns(self) -> float:
        return self.sum_ns / self.count if self.count else 0.0

    def percentiles(self, qs: Sequence[float]) -> dict[float, int]:
        """Nearest-rank percentiles (0 < q <= 100) in ns, in one pass over the counters."""
        for q in qs:
            if not 0 < q <= 100:
                raise HistogramError(f"percentile must be in (0, 100], got {q}")
        out: dict[float, int] = {}
        if self.count == 0:
            return {q: 0 for q in qs}
        # The rank wanted for each q, smallest first.
        wanted = sorted((max(1, math.ceil(q / 100.0 * self.count - 1e-9)), q) for q in qs)
        k = 0
        seen = 0
        last = self._size - 1
        for index, c in self.nonzero():
            seen += c
            while k < len(wanted) and wanted[k][0] <= seen:
                rank, q = wanted[k]
                if rank >= self.count or index == last:  # the largest value, or one clamped: the max
                    out[q] = self.max_ns
                else:
                    low, high = self._bounds_ns(index)
                    mid = (low + high - 1) // 2 if high - low > 1 else low
                    out[q] = min(max(mid, self.min_ns), self.max_ns)
                k += 1
            if k == len(wanted):
                break
        for q in qs:  # not reached by rounding: the max
            out.setdefault(q, self.max_ns)
        return {q: out[q] for q in qs}

    def percentile(self, q: float) -> int:
        return self.percentiles([q])[q]

    def summary(self, qs: Sequence[float] = REPORT_PERCENTILES) -> Summary:
        return Summary(
            count=self.count,
            mean_ns=self.mean_ns,
            min_ns=self.min_ns,
            max_ns=self.max_ns,
            percentiles_ns=self.percentiles(qs),
        )

    def nonzero(self) -> list[tuple[int, int]]:
        """(counter index, count) of every non-empty counter."""
        return sorted(self._counts.items())

    # -- encoding -----------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact sparse encoding (header + (index, count) pairs) for sending between processes."""
        pairs = self.nonzero()
        head = _HEADER.pack(
            _MAGIC,
            self.unit_ns,
            self.highest_ns,
            self.sub_bucket_bits,
            self.count,
            self.clamped,
            self.sum_ns,
            self.min_ns,
            self.max_ns,
            len(pairs),
        )
        n = len(pairs)
        return (
            head
            + struct.pack(f"<{n}I", *(i for i, _ in pairs))
            + struct.pack(f"<{n}Q", *(c for _, c in pairs))
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Histogram:
        if len(data) < _HEADER.size:
            raise HistogramError(f"histogram encoding too short ({len(data)} bytes)")
        magic, unit, highest, bits, count, clamped, sum_ns, min_ns, max_ns, n = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise HistogramError(f"not a histogram encoding (magic {magic!r})")
        if len(data) != _HEADER.size + n * _PAIR_BYTES:
            raise HistogramError(f"histogram encoding of {len(data)} bytes does not hold {n} counters")
        out = cls._empty(unit, highest, bits)
        indexes = struct.unpack_from(f"<{n}I", data, _HEADER.size)
        counts = struct.unpack_from(f"<{n}Q", data, _HEADER.size + 4 * n)
        for index, c in zip(indexes, counts, strict=True):
            out._set(index, c)
        out._set_totals(count, clamped, sum_ns, min_ns, max_ns)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able encoding (sparse counters as [index, count] pairs)."""
        return {
            "unit_ns": self.unit_ns,
            "highest_ns": self.highest_ns,
            "sub_bucket_bits": self.sub_bucket_bits,
            "count": self.count,
            "clamped": self.clamped,
            "sum_ns": self.sum_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "counts": [[i, c] for i, c in self.nonzero()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        try:
            out = cls._empty(int(data["unit_ns"]), int(data["highest_ns"]), int(data["sub_bucket_bits"]))
            for index, c in data["counts"]:
                out._set(int(index), int(c))
            out._set_totals(
                int(data["count"]),
                int(data["clamped"]),
                int(data["sum_ns"]),
                int(data["min_ns"]),
                int(data["max_ns"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HistogramError(f"not a histogram dict: {exc}") from None
        return out

    @classmethod
    def _empty(cls, unit_ns: int, highest_ns: int, bits: int) -> Histogram:
        if unit_ns < 1 or highest_ns < 2 * unit_ns or not 1 <= bits <= 24:
            raise HistogramError(f"bad histogram layout: unit {unit_ns}, highest {highest_ns}, bits {bits}")
        out = cls.__new__(cls)
        out.unit_ns, out.highest_ns, out.sub_bucket_bits = unit_ns, highest_ns, bits
        out._init_layout()
        out._counts = {}
        out.count = out.clamped = out.sum_ns = out.min_ns = out.max_ns = 0
        return out

    def _set(self, index: int, c: int) -> None:
        if not 0 <= index < self._size or c < 0:
            raise HistogramError(f"counter {index} = {c} is out of this histogram's range")
        if c:
            self._counts[index] = c

    def _set_totals(self, count: int, clamped: int, sum_ns: int, min_ns: int, max_ns: int) -> None:
        total = sum(self._counts.values())
        if count != total:
            raise HistogramError(f"histogram count {count} does not match its counters ({total})")
        self.count, self.clamped, self.sum_ns, self.min_ns, self.max_ns = (
            count,
            clamped,
            sum_ns,
            min_ns,
            max_ns,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if not self.count:
            return "Histogram(empty)"
        s = self.summary()
        parts = ", ".join(f"{_percentile_key(q)}={v / 1e3:.1f}us" for q, v in s.percentiles_ns.items())
        mean, top = s.mean_ns / 1e3, self.max_ns / 1e3
        return f"Histogram(count={self.count}, mean={mean:.1f}us, {parts}, max={top:.1f}us)"
