"""How the version an edge serves is doing: the heartbeat's `ServingStats`, from the node's counters.

Nothing here runs per request. The workers already count every Decide call by the code its caller got
and time it from arrival (edge/server.py `_CallMeter`), and count every placement and every fallback
(edge/servicer.py), in their shared-memory files (edge/metrics.py); the supervisor sums them
(`NodeMetrics.totals`). `ServingCounter` keeps the sums of the moment the node applied the version it
serves (the baseline, taken again at every new version: `applied`) and answers the differences:

- decisions: Decide calls answered OK;
- placements, fallbacks: the placements in answers, and those answered with their default and a
  `fallback_reason` (any reason: no consent, holdout, a shed call's fast default included);
- errors: Decide calls answered with a code other than OK and INVALID_ARGUMENT (a caller's bad request
  is not the version's fault; shed, late and failed calls are counted);
- latency p50 / p99 from arrival, interpolated within the latency histogram's buckets (edge/metrics.py
  `BUCKETS`, as Prometheus' `histogram_quantile` does) over every Decide call since the baseline.

A call in flight while a new version is applied counts with the new one; with a control plane's commits
seconds apart that is a handful of calls.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from edgewise.edge.metrics import BUCKETS, FALLBACK_REASONS, STATUS_CODES, NodeMetrics, Series
from edgewise.sync.ops_replies import ServingStats

__all__ = ["ServingCounter", "histogram_quantile"]

#: Decide codes that are not the served version's fault.
_NOT_ERRORS = frozenset({"OK", "INVALID_ARGUMENT"})


def histogram_quantile(q: float, counts: Sequence[float], bounds: Sequence[float] = BUCKETS) -> float:
    """The `q` quantile (0..1) of a histogram: `counts[i]` observations in (bounds[i-1], bounds[i]], the
    last one past the last bound. Linear within a bucket (the first starts at 0); a quantile in the
    last, open bucket is the last bound. 0.0 for an empty histogram."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if count > 0 and seen + count >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = bounds[i - 1] if i > 0 else 0.0
            return float(lower + (bounds[i] - lower) * max(0.0, rank - seen) / count)
        seen += count
    return float(bounds[-1])


def _decide_series(totals: dict[Series, float]) -> dict[str, float]:
    """The sums ServingStats is made of, from one `NodeMetrics.totals()`."""
    out = {
        "decisions": totals.get(("rpc", "Decide", "OK"), 0.0),
        "errors": sum(totals.get(("rpc", "Decide", c), 0.0) for c in STATUS_CODES if c not in _NOT_ERRORS),
        "placements": sum(v for k, v in totals.items() if k[0] == "decision"),
        "fallbacks": sum(totals.get(("fallback", r), 0.0) for r in FALLBACK_REASONS),
    }
    for i in range(len(BUCKETS) + 1):
        out[f"bucket{i}"] = totals.get(("bucket", "Decide", str(i)), 0.0)
    return out


class ServingCounter:
    """The node's ServingStats: `applied(version)` when the node starts serving a version (the syncer
    calls it after each commit it applies), `reading()` for each heartbeat. Thread-safe."""

    def __init__(self, node: NodeMetrics, version: int) -> None:
        self._node = node
        self._lock = threading.Lock()
        self._version = version
        self._base = _decide_series(node.totals()[0])

    def applied(self, version: int) -> None:
        """The node serves `version` from now on: the counters start again (nothing when it is the same)."""
        with self._lock:
            if version == self._version:
                return
        base = _decide_series(self._node.totals()[0])
        with self._lock:
            self._version, self._base = version, base

    def reading(self) -> ServingStats:
        now = _decide_series(self._node.totals()[0])
        with self._lock:
            version, base = self._version, self._base
        diff = {key: max(0.0, now[key] - base.get(key, 0.0)) for key in now}
        buckets = [diff[f"bucket{i}"] for i in range(len(BUCKETS) + 1)]
        return ServingStats(
            version=version,
            decisions=int(diff["decisions"]),
            placements=int(diff["placements"]),
            fallbacks=int(diff["fallbacks"]),
            errors=int(diff["errors"]),
            latency_p50_us=round(histogram_quantile(0.5, buckets) * 1e6),
            latency_p99_us=round(histogram_quantile(0.99, buckets) * 1e6),
        )
