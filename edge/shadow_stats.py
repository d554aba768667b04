"""The node's ShadowStats: its workers' shadow decisions with the candidate it holds, summed (docs/shadow.md).

Each worker counts its shadow decisions in its shared-memory file (edge/metrics.py `SHADOW_COUNTERS`,
written by its shadow thread, edge/shadow.py); the supervisor sums them (`NodeMetrics.totals`).
`ShadowCounter` keeps the sums of the moment the candidate arrived (the syncer tells it: `received`) and
answers the differences, for the heartbeat (`ShadowStats`, counters since the edge received that
candidate) and for `edge status`, which reads them from `<data>/shadow/<candidate>/stats.json`
(`write_status`, once a second while there is a candidate). Prometheus gets the raw totals, which only
grow (`edgewise_shadow_*`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from edgewise.edge.metrics import SHADOW_COUNTERS, NodeMetrics
from edgewise.sync.ops_replies import ShadowStats
from edgewise.sync.shadow_candidate import SHADOW_DIR, Candidate

__all__ = ["STATUS_FILE", "ShadowCounter", "ShadowReading", "read_status", "write_status"]

STATUS_FILE: Final = "stats.json"


@dataclass(frozen=True, slots=True)
class ShadowReading:
    """Shadow decisions with one candidate, since the node received it: the heartbeat's ShadowStats, and
    what only `edge status` shows."""

    stats: ShadowStats
    sample: float  # the share of requests decided again (the candidate's, capped by the node's config)
    dropped: int  # sampled requests not decided again: a worker's shadow queue was full

    @property
    def mean_overlap(self) -> float:
        """Mean overlap@k over the placements with items in both answers (1.0 when there were none)."""
        stats = self.stats
        return stats.overlap_sum / stats.item_placements if stats.item_placements else 1.0

    def status_doc(self) -> dict[str, Any]:
        """The reading as `stats.json` holds it: the ShadowStats fields, `sample` and `dropped`."""
        return {**asdict(self.stats), "sample": self.sample, "dropped": self.dropped}


def _shadow_sums(node: NodeMetrics) -> dict[str, float]:
    totals = node.totals()[0]
    return {name: totals.get(("shadow", name), 0.0) for name in SHADOW_COUNTERS}


class ShadowCounter:
    """`received(candidate)` when the syncer installs or drops a candidate; `reading()` for each heartbeat
    (None while there is none). Thread-safe."""

    def __init__(
        self,
        node: NodeMetrics,
        candidate: Callable[[], Candidate | None],
        served_version: Callable[[], int],
        max_sample: float = 1.0,
    ) -> None:
        self._node = node
        self._candidate = candidate
        self._served_version = served_version
        self._max_sample = max_sample
        self._lock = threading.Lock()
        current = candidate()
        self._key = current.dir if current is not None else ""
        self._base = _shadow_sums(node)

    def received(self, candidate: Candidate | None) -> None:
        """The node holds `candidate` from now on (None: no candidate): its counters start at 0."""
        key = candidate.dir if candidate is not None else ""
        base = _shadow_sums(self._node)
        with self._lock:
            self._key, self._base = key, base

    def reading(self) -> ShadowReading | None:
        candidate = self._candidate()
        if candidate is None:
            return None
        now = _shadow_sums(self._node)
        with self._lock:
            if candidate.dir != self._key:  # one the syncer did not tell us of (a restart): from now
                self._key, self._base = candidate.dir, now
            base = self._base
        d = {name: max(0.0, now[name] - base[name]) for name in SHADOW_COUNTERS}
        stats = ShadowStats(
            version=candidate.version,
            base_version=self._served_version(),
            sampled=int(d["sampled"]),
            placements=int(d["placements"]),
            item_placements=int(d["item_placements"]),
            overlap_sum=d["overlap_sum"],
            variant_changes=int(d["variant_changes"]),
            new_fallbacks=int(d["new_fallbacks"]),
            fixed_fallbacks=int(d["fixed_fallbacks"]),
            errors=int(d["errors"]),
            served_latency_us_sum=round(d["served_us"]),
            shadow_latency_us_sum=round(d["shadow_us"]),
        )
        return ShadowReading(stats, min(candidate.sample, self._max_sample), int(d["dropped"]))


def write_status(data_dir: Path, reading: ShadowReading, candidate: Candidate) -> None:
    """`reading` where `edge status` finds it: beside the candidate's environment (removed with it)."""
    path = data_dir / SHADOW_DIR / candidate.dir / STATUS_FILE
    if not path.parent.is_dir():
        return  # dropped meanwhile
    tmp = path.with_name(STATUS_FILE + ".tmp")
    with contextlib.suppress(OSError):  # the candidate dropped while we wrote: nothing to report
        tmp.write_text(json.dumps({"candidate": asdict(candidate), "stats": reading.status_doc()}))
        os.replace(tmp, path)


def read_status(data_dir: Path, candidate: Candidate) -> dict[str, Any] | None:
    """What `write_status` last wrote for `candidate` (None: nothing yet)."""
    try:
        doc = json.loads((data_dir / SHADOW_DIR / candidate.dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    stats = doc.get("stats") if isinstance(doc, dict) else None
    return stats if isinstance(stats, dict) else None
