"""Latency histograms of `edgewise bench load`: HdrHistogram, from the `hdrhistogram` package.

One layout for every histogram of a run, so that any two merge: values are nanoseconds, told apart
from 1 us (`LOWEST_NS`) up to one hour (`HIGHEST_NS`) with 3 significant digits (a reported value is
within 0.1% of the recorded one). A value past one hour is recorded as one hour, a negative one as 0.

Percentiles are HdrHistogram's (as wrk2, ghz's HDR output and the HdrHistogram tools report them):
the value at percentile q is the highest value equivalent (at the histogram's precision) to the
recording of rank round(q/100 * count); `max_ns` is the highest value equivalent to the largest
recording, `min_ns` the lowest equivalent to the smallest; the mean is HdrHistogram's (each
recording counted at the middle of its bucket).

Histograms travel between processes, and into `--hdr-log` files, in HdrHistogram's standard compressed
V2 encoding, base64 (the "HISTF..." strings of the Java, C, Go, Rust and JavaScript implementations);
`HdrLogWriter` writes the standard histogram log (format 1.3: one interval histogram a line, tagged
lines per RPC), which HistogramLogProcessor, HistogramLogAnalyzer, hdr-plot and the `hdrh` package's
HistogramLogReader read.

`hdrhistogram` comes with the `bench` extra (`pip install 'edgewise[bench]'`): only the load generator
needs it. Without it this module still imports; making a histogram raises `HistogramUnavailable`
with the install command (`edgewise bench load` prints it and exits 2).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TextIO

__all__ = [
    "HIGHEST_NS",
    "INSTALL_HINT",
    "LOWEST_NS",
    "REPORT_PERCENTILES",
    "SIGNIFICANT_DIGITS",
    "HdrLogWriter",
    "Histogram",
    "HistogramError",
    "HistogramUnavailable",
    "Summary",
    "require_hdrhistogram",
]

LOWEST_NS: Final = 1_000  # 1 us: the smallest value told apart from 0
HIGHEST_NS: Final = 3_600_000_000_000  # one hour: a run's duration plus its deadline fits
SIGNIFICANT_DIGITS: Final = 3
REPORT_PERCENTILES: Final = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99)
INSTALL_HINT: Final = (
    "edgewise bench load needs the hdrhistogram package (HdrHistogram for Python): "
    "pip install 'edgewise[bench]' (or: pip install hdrhistogram)"
)
LOG_FORMAT_VERSION: Final = "1.3"


class HistogramError(ValueError):
    """A histogram that cannot be decoded, or a bad percentile."""


class HistogramUnavailable(RuntimeError):
    """The `hdrhistogram` package is not installed."""


def _hdrh() -> Any:
    """The `HdrHistogram` class, imported on first use."""
    try:
        module = importlib.import_module("hdrh.histogram")
    except ImportError as exc:
        raise HistogramUnavailable(INSTALL_HINT) from exc
    return module.HdrHistogram


def require_hdrhistogram() -> None:
    """Raise HistogramUnavailable (with the install command) when `hdrhistogram` is missing."""
    _hdrh()


def _key(q: float) -> str:
    """50.0 -> "p50", 99.9 -> "p99.9"."""
    return f"p{q:g}"


@dataclass(frozen=True)
class Summary:
    """The usual figures of one histogram, in nanoseconds (all 0 when nothing was recorded)."""

    count: int
    mean_ns: float
    min_ns: int
    max_ns: int
    percentiles_ns: dict[float, int]

    def to_dict(self, scale: float = 1e-3, suffix: str = "us") -> dict[str, Any]:
        """JSON-able figures, scaled (default: microseconds, keys like `p99_us`, `p99.99_us`)."""
        out: dict[str, Any] = {"count": self.count, f"mean_{suffix}": round(self.mean_ns * scale, 3)}
        for q, v in self.percentiles_ns.items():
            out[f"{_key(q)}_{suffix}"] = round(v * scale, 3)
        out[f"max_{suffix}"] = round(self.max_ns * scale, 3)
        out[f"min_{suffix}"] = round(self.min_ns * scale, 3)
        return out


class Histogram:
    """An HdrHistogram of nanosecond values in the one layout of this module (see its docstring)."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = _hdrh()(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)

    # -- recording ----------------------------------------------------------------------------------

    def record(self, value_ns: int) -> None:
        self._h.record_value(min(max(int(value_ns), 0), HIGHEST_NS))

    def record_many(self, values_ns: Iterable[int]) -> None:
        record, top = self._h.record_value, HIGHEST_NS
        for v in values_ns:
            record(min(max(int(v), 0), top))

    def merge(self, other: Histogram) -> Histogram:
        """Add `other`'s recordings to this one; returns self."""
        if other.count:
            self._h.add(other._h)
        return self

    def __iadd__(self, other: Histogram) -> Histogram:
        return self.merge(other)

    # -- reading ------------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    @property
    def max_ns(self) -> int:
        return int(self._h.get_max_value()) if self.count else 0

    @property
    def min_ns(self) -> int:
        return int(self._h.get_min_value()) if self.count else 0

    @property
    def mean_ns(self) -> float:
        return float(self._h.get_mean_value()) if self.count else 0.0

    def percentiles(self, qs: Sequence[float]) -> dict[float, int]:
        """The value (ns) at each percentile q, 0 < q <= 100, in one pass (0 when empty)."""
        for q in qs:
            if not 0 < q <= 100:
                raise HistogramError(f"percentile must be in (0, 100], got {q}")
        if not self.count:
            return {q: 0 for q in qs}
        found: Mapping[float, int] = self._h.get_percentile_to_value_dict(list(qs))
        return {q: int(found[q]) for q in qs}

    def percentile(self, q: float) -> int:
        return self.percentiles([q])[q]

    def summary(self, qs: Sequence[float] = REPORT_PERCENTILES) -> Summary:
        return Summary(self.count, self.mean_ns, self.min_ns, self.max_ns, self.percentiles(qs))

    # -- encoding -----------------------------------------------------------------------------------

    def encode(self) -> str:
        """HdrHistogram's standard compressed V2 encoding, base64 ("HISTF...")."""
        text: bytes = self._h.encode()
        return text.decode("ascii")

    @classmethod
    def decode(cls, text: str | bytes) -> Histogram:
        """A histogram from `encode()`'s text (or any HdrHistogram V2 base64 encoding)."""
        cls_ = _hdrh()
        try:
            decoded = cls_.decode(text.encode("ascii") if isinstance(text, str) else text)
        except Exception as exc:  # the package raises several kinds (TypeError, zlib.error, its own)
            raise HistogramError(f"not an HdrHistogram encoding: {exc}") from None
        out = cls()
        out._h.add(decoded)  # into this module's layout, whatever the encoding's
        return out

    def __repr__(self) -> str:
        if not self.count:
            return "Histogram(empty)"
        s = self.summary()
        parts = ", ".join(f"{_key(q)}={v / 1e3:.1f}us" for q, v in s.percentiles_ns.items())
        return f"Histogram(count={self.count}, {parts}, max={s.max_ns / 1e3:.1f}us)"


class HdrLogWriter:
    """Writes an HdrHistogram log (format 1.3): a header, then one line per interval histogram,
    `[Tag=NAME,]start_s,length_s,max_ms,HISTF...` with the start relative to the log's StartTime.

    Values are nanoseconds (the tools' default unit ratio, 1e6, shows them in milliseconds). Untagged
    lines hold every RPC; a `Tag=<RPC>` line the same interval of one RPC."""

    def __init__(self, out: TextIO, start_wall_s: float, comment: str = "") -> None:
        self.out = out
        self.start_wall_s = start_wall_s
        when = datetime.fromtimestamp(start_wall_s, UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC")
        if comment:
            out.write(f"#[{comment}]\n")
        out.write(f"#[Histogram log format version {LOG_FORMAT_VERSION}]\n")
        out.write(f"#[StartTime: {start_wall_s:.3f} (seconds since epoch), {when}]\n")
        out.write(f"#[BaseTime: {start_wall_s:.3f} (seconds since epoch)]\n")
        out.write('"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"\n')

    def interval(self, hist: Histogram, start_s: float, length_s: float, tag: str | None = None) -> None:
        """One interval histogram, `start_s` seconds after StartTime, `length_s` long."""
        if tag is not None and ("," in tag or not tag or any(c.isspace() for c in tag)):
            raise HistogramError(f"a log tag has no commas or spaces, got {tag!r}")
        prefix = f"Tag={tag}," if tag is not None else ""
        max_ms = hist.max_ns / 1e6
        self.out.write(f"{prefix}{start_s:.3f},{max(0.0, length_s):.3f},{max_ms:.3f},{hist.encode()}\n")

    def flush(self) -> None:
        self.out.flush()


def wall_time_of(monotonic_ns: int) -> float:
    """The wall-clock time (Unix seconds) of a `time.monotonic_ns()` reading."""
    return time.time() + (monotonic_ns - time.monotonic_ns()) / 1e9
