"""Counters of a multi-process edge node: per-worker shared-memory counters, summed by the supervisor.

Each worker process records into its own small file, `<run_dir>/metrics-<worker>.bin`, mapped with
`mmap`: a header (magic, the layout as JSON) and then one float64 slot per counter. Recording is a few
item increments on a memoryview over the mapping: no lock, no syscall, no allocation (a few hundred ns a
call, see `WorkerMetrics`). The supervisor owns a `NodeMetrics` over the same directory: `read()` maps
every worker file read-only, sums the slots series by series and adds the node gauges the supervisor
sets (snapshot version and age, workers alive, restarts, stale, outbox, housekeeping) into one
`NodeReading`. Exposition is apart: edge/metrics_export.py turns a reading into Prometheus metric
families at scrape time, served over HTTP by edgewise.metrics_http (GET /metrics).

Restarts keep node totals: a replacement worker opens the file of the worker it replaces and continues
from its values (the dead process's increments are in the shared page cache, also after `kill -9`). If
the replacement's layout differs (a new snapshot with other placements), the old values are carried into
a new file of the new layout (placements no longer listed count as "other") that atomically replaces the
old one. `NodeMetrics` clears leftover files of a previous run when it is created, so create it before
the workers start (or give every run a fresh directory, e.g. `make_run_dir()`).

Label values are bounded and never user or item ids: RPC names, gRPC status code names, at most
`MAX_PLACEMENT_LABELS` placement ids from the snapshot's rules (others, and ids not in the layout, count
as "other"), fallback reason names, "accepted"/"duplicate".
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgewise.core.decisions import FallbackReason
from edgewise.core.store_budget import Cap
from edgewise.edge.group_commit import EXPOSURE_DROP_REASONS

__all__ = [
    "BUCKETS",
    "EXPOSURE_DROP_REASONS",
    "FALLBACK_REASONS",
    "HOUSEKEEPING_KINDS",
    "MAX_PLACEMENT_LABELS",
    "OTHER",
    "RPCS",
    "SHADOW_COUNTERS",
    "STATUS_CODES",
    "STORE_LIMIT_KEYS",
    "TRACK_RESULTS",
    "MetricsLayout",
    "NodeMetrics",
    "NodeReading",
    "WorkerMetrics",
    "make_run_dir",
    "worker_metrics_path",
]

#: Upper bounds (seconds, inclusive) of the RPC latency histogram buckets; +Inf is implied.
BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
RPCS: Final = ("Decide", "Track")
#: gRPC status code names (grpc.StatusCode member names), in code order.
STATUS_CODES: Final = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
#: Label values of edgewise_fallbacks_total: the FallbackReason names but NONE, lower case.
FALLBACK_REASONS: Final = tuple(f.name.lower() for f in FallbackReason if f is not FallbackReason.NONE)
MAX_PLACEMENT_LABELS: Final = 64
OTHER: Final = "other"
TRACK_RESULTS: Final = ("accepted", "duplicate")
#: Label values of edgewise_store_limit_bytes: the size limits' config keys.
STORE_LIMIT_KEYS: Final = ("data.outbox_max_mb", "track.dedupe_max_mb", "track.activity_max_mb")
#: A worker's counters of shadow decisions (edge/shadow.py), in slot order: requests decided again with
#: the candidate, placements compared, placements with items in both answers, the sum of their
#: overlap@k, variant changes, new and fixed fallbacks, candidate decisions that failed, pipeline CPU
#: microseconds of those requests with the served version and with the candidate, and sampled requests
#: dropped because the shadow queue was full.
SHADOW_COUNTERS: Final = (
    "sampled",
    "placements",
    "item_placements",
    "overlap_sum",
    "variant_changes",
    "new_fallbacks",
    "fixed_fallbacks",
    "errors",
    "served_us",
    "shadow_us",
    "dropped",
)
#: Label values of edgewise_housekeeping_deleted_total, in exposition order.
HOUSEKEEPING_KINDS: Final = ("event_ids", "activities", "event_ids_early", "activities_early")

_MAGIC: Final = b"EWMETRC\x01"
_SCHEMA: Final = 1
_PAGE: Final = 4096
_FILE_PREFIX: Final = "metrics-"
_FILE_SUFFIX: Final = ".bin"

Series = tuple[str, ...]


def worker_metrics_path(run_dir: Path, worker: int) -> Path:
    """The metrics file of worker number `worker` (a replacement worker reuses its predecessor's number)."""
    return run_dir / f"{_FILE_PREFIX}{worker}{_FILE_SUFFIX}"


def make_run_dir() -> Path:
    """A fresh directory for the node's metrics files, in /dev/shm when there is one (no disk writeback)."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="edgewise-metrics-", dir=base))


class MetricsLayout:
    """Where each counter lives in a worker's slot array; built from the snapshot's placement ids.

    Placements: the first `MAX_PLACEMENT_LABELS` distinct ids in the given order, plus "other".
    """

    __slots__ = (
        "_series",
        "code_index",
        "decisions_base",
        "exposures_dropped_base",
        "fallbacks_base",
        "hist_base",
        "placement_slot",
        "placements",
        "rpc_total_base",
        "shadow_base",
        "shed_slot",
        "size",
        "track_base",
    )

    def __init__(self, placements: Iterable[str] = ()) -> None:
        chosen: list[str] = []
        for placement in placements:
            if placement != OTHER and placement not in chosen:
                chosen.append(placement)
                if len(chosen) == MAX_PLACEMENT_LABELS:
                    break
        self.placements: tuple[str, ...] = tuple(chosen)
        per_hist = len(BUCKETS) + 2  # finite buckets, the +Inf bucket, the sum
        self.hist_base = {rpc: i * per_hist for i, rpc in enumerate(RPCS)}
        slot = len(RPCS) * per_hist
        self.rpc_total_base = {rpc: slot + i * len(STATUS_CODES) for i, rpc in enumerate(RPCS)}
        self.code_index = {code: i for i, code in enumerate(STATUS_CODES)}
        slot += len(RPCS) * len(STATUS_CODES)
        self.decisions_base = slot
        self.placement_slot = {p: slot + i for i, p in enumerate(self.placements)}
        self.placement_slot[OTHER] = slot + len(self.placements)
        slot += len(self.placements) + 1
        self.fallbacks_base = slot
        slot += len(FALLBACK_REASONS)
        self.track_base = slot
        slot += len(TRACK_RESULTS)
        self.shed_slot = slot
        slot += 1
        self.exposures_dropped_base = slot
        slot += len(EXPOSURE_DROP_REASONS)
        self.shadow_base = slot
        slot += len(SHADOW_COUNTERS)
        self.size = slot
        self._series = self._build_series()

    def _build_series(self) -> list[tuple[Series, int]]:
        out: list[tuple[Series, int]] = []
        for rpc in RPCS:
            base = self.hist_base[rpc]
            out += [(("bucket", rpc, str(i)), base + i) for i in range(len(BUCKETS) + 1)]
            out.append((("sum", rpc), base + len(BUCKETS) + 1))
        for rpc in RPCS:
            out += [(("rpc", rpc, code), self.rpc_total_base[rpc] + i) for i, code in enumerate(STATUS_CODES)]
        out += [(("decision", p), s) for p, s in self.placement_slot.items()]
        out += [(("fallback", r), self.fallbacks_base + i) for i, r in enumerate(FALLBACK_REASONS)]
        out += [(("track", r), self.track_base + i) for i, r in enumerate(TRACK_RESULTS)]
        out.append((("shed",), self.shed_slot))
        out += [
            (("exposures_dropped", r), self.exposures_dropped_base + i)
            for i, r in enumerate(EXPOSURE_DROP_REASONS)
        ]
        out += [(("shadow", name), self.shadow_base + i) for i, name in enumerate(SHADOW_COUNTERS)]
        return out

    def series(self) -> list[tuple[Series, int]]:
        """(series key, slot) for every slot: the unit in which files of different layouts are summed."""
        return list(self._series)

    def slot_of(self, key: Series) -> int:
        """The slot of a series key in this layout (a placement it does not list maps to "other")."""
        if key[0] == "decision":
            return self.placement_slot.get(key[1], self.placement_slot[OTHER])
        for k, slot in self._series:
            if k == key:
                return slot
        raise KeyError(key)

    def header(self) -> bytes:
        doc = json.dumps({"schema": _SCHEMA, "placements": list(self.placements), "slots": self.size})
        return doc.encode()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MetricsLayout) and other.placements == self.placements

    def __hash__(self) -> int:
        return hash(self.placements)

    def __repr__(self) -> str:
        return f"MetricsLayout(placements={list(self.placements)!r})"


def _data_offset(header_len: int) -> int:
    return -(-(12 + header_len) // _PAGE) * _PAGE


def _file_bytes(layout: MetricsLayout, values: np.ndarray[Any, np.dtype[np.float64]]) -> bytes:
    header = layout.header()
    offset = _data_offset(len(header))
    prefix = _MAGIC + struct.pack("<I", len(header)) + header
    return prefix + b"\0" * (offset - len(prefix)) + values.astype("<f8").tobytes()


def _read_metrics_file(path: Path) -> tuple[MetricsLayout, np.ndarray[Any, np.dtype[np.float64]]] | None:
    """The layout and a copy of the values of a worker file; None if missing or not a metrics file."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:8] != _MAGIC:
                return None
            (header_len,) = struct.unpack("<I", head[8:12])
            doc = json.loads(f.read(header_len))
            if doc.get("schema") != _SCHEMA:
                return None
            layout = MetricsLayout(doc["placements"])
            offset = _data_offset(header_len)
            size = os.fstat(f.fileno()).st_size
            if layout.size != doc.get("slots") or size < offset + 8 * layout.size:
                return None
            # Read through a mapping, one aligned 8-byte load per value, so no value is torn by a
            # concurrent writer (read() makes no such promise).
            with (
                mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm,
                memoryview(mm)[offset : offset + 8 * layout.size].cast("d") as doubles,
            ):
                values = np.array(doubles.tolist(), dtype=np.float64)
            return layout, values
    except (OSError, ValueError, KeyError, TypeError):
        return None


class WorkerMetrics:
    """The recorder of one worker process, over its own file (created, or continued after a restart).

    Thread safety: every update is a single-slot read-modify-write (`slots[i] += x`) on a memoryview,
    with all lookups done before it. In CPython with the GIL a thread switch happens only at eval-breaker
    checks (calls, backward jumps), never between the read and the write of such a statement, so counts
    stay exact under many handler threads without a lock (tested with 8 threads and a 1 us switch
    interval). A lock would make each call about twice as slow. Between slots nothing is atomic: a
    scrape may see a histogram bucket without its sum, never a torn or lost count.
    """

    __slots__ = (
        "_buf",
        "_exposures_dropped",
        "_mm",
        "_other",
        "_placement_slot",
        "_reason_slot",
        "_rpc",
        "_shadow",
        "_shed",
        "_slots",
        "_track",
        "layout",
        "path",
    )

    def __init__(self, path: Path, layout: MetricsLayout) -> None:
        self.path = path
        self.layout = layout
        existing = _read_metrics_file(path) if path.exists() else None
        if existing is None or existing[0] != layout:
            values = np.zeros(layout.size, dtype=np.float64)
            if existing is not None:  # a replacement worker with another layout: carry the totals over
                old_layout, old_values = existing
                for key, slot in old_layout.series():
                    values[layout.slot_of(key)] += old_values[slot]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(_file_bytes(layout, values))
            os.replace(tmp, path)
        offset = _data_offset(len(layout.header()))
        with open(path, "r+b") as f:
            self._mm = mmap.mmap(f.fileno(), offset + 8 * layout.size)
        self._buf = memoryview(self._mm)
        self._slots = self._buf[offset:].cast("d")
        # Per RPC: (first bucket slot, sum slot, status code name -> slot, slot of UNKNOWN).
        self._rpc: dict[str, tuple[int, int, dict[str, int], int]] = {}
        for rpc in RPCS:
            codes = {c: layout.rpc_total_base[rpc] + i for c, i in layout.code_index.items()}
            base = layout.hist_base[rpc]
            self._rpc[rpc] = (base, base + len(BUCKETS) + 1, codes, codes["UNKNOWN"])
        self._placement_slot = layout.placement_slot
        self._other = layout.placement_slot[OTHER]
        self._reason_slot = [0] + [layout.fallbacks_base + i for i in range(len(FALLBACK_REASONS))]
        self._track = layout.track_base
        self._shed = layout.shed_slot
        self._exposures_dropped = {
            r: layout.exposures_dropped_base + i for i, r in enumerate(EXPOSURE_DROP_REASONS)
        }
        self._shadow = layout.shadow_base

    def observe_rpc(self, rpc: str, code: str, seconds: float) -> None:
        """One answered call: `rpc` in RPCS, `code` a status code name (`grpc.StatusCode.X.name`;
        unknown names count as UNKNOWN), `seconds` the handler's latency."""
        try:
            base, sum_slot, codes, unknown = self._rpc[rpc]
        except KeyError:
            raise ValueError(f"unknown rpc {rpc!r}; known: {', '.join(RPCS)}") from None
        bucket = base + bisect_left(BUCKETS, seconds)
        total = codes.get(code, unknown)
        slots = self._slots
        slots[bucket] += 1.0
        slots[sum_slot] += seconds
        slots[total] += 1.0

    def decision(self, placement: str, fallback_reason: int = 0) -> None:
        """One placement decided; `fallback_reason` a FallbackReason value (0 = personalized).
        Placements not in the layout count as "other"; unknown reason values are not counted."""
        self._slots[self._placement_slot.get(placement, self._other)] += 1.0
        if 0 < fallback_reason < len(self._reason_slot):
            self._slots[self._reason_slot[fallback_reason]] += 1.0

    def decisions(self, placements: Iterable[tuple[str, int]]) -> None:
        """`decision` for each (placement id, fallback reason) of one response."""
        for placement, reason in placements:
            self.decision(placement, reason)

    def track(self, accepted: int, duplicates: int) -> None:
        """One Track call's outcome: events newly accepted and duplicates (already seen event ids)."""
        slots = self._slots
        slots[self._track] += accepted
        slots[self._track + 1] += duplicates

    def shed(self, count: int = 1) -> None:
        """Calls shed under overload (rejected, or answered with the fast default)."""
        self._slots[self._shed] += count

    def exposures_dropped(self, reason: str, count: int) -> None:
        """Exposure records dropped by the worker's committer, by reason (EXPOSURE_DROP_REASONS; others
        are not counted)."""
        slot = self._exposures_dropped.get(reason)
        if slot is not None:
            self._slots[slot] += count

    def shadow(
        self,
        placements: int,
        item_placements: int,
        overlap_sum: float,
        variant_changes: int,
        new_fallbacks: int,
        fixed_fallbacks: int,
        served_us: float,
        shadow_us: float,
    ) -> None:
        """One request decided again with a shadow candidate and compared (core/shadow_compare.py);
        called by the worker's shadow thread only, never on a request's path."""
        slots, base = self._slots, self._shadow
        slots[base] += 1.0
        slots[base + 1] += placements
        slots[base + 2] += item_placements
        slots[base + 3] += overlap_sum
        slots[base + 4] += variant_changes
        slots[base + 5] += new_fallbacks
        slots[base + 6] += fixed_fallbacks
        slots[base + 8] += served_us
        slots[base + 9] += shadow_us

    def shadow_failed(self, served_us: float, shadow_us: float) -> None:
        """One request the candidate failed to decide (counted as sampled, and as an error)."""
        slots, base = self._slots, self._shadow
        slots[base] += 1.0
        slots[base + 7] += 1.0
        slots[base + 8] += served_us
        slots[base + 9] += shadow_us

    def shadow_dropped(self, count: int = 1) -> None:
        """Sampled requests not decided again: the shadow queue was full."""
        self._slots[self._shadow + 10] += count

    def close(self) -> None:
        """Unmap the file (its values stay: the node keeps summing them)."""
        self._slots.release()
        self._buf.release()
        self._mm.close()

    def __enter__(self) -> WorkerMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NodeMetrics:
    """The node's view: the sum of all worker files in `run_dir` plus gauges set by the supervisor.

    `layout` fixes the order of the placement series (placements found only in some worker's file are
    added after them). With `clear` (default), leftover worker files from a previous run are removed:
    create the NodeMetrics before starting workers. `stale_after_seconds`: `edgewise_stale` is 1 when the
    last sync is older than that (None: never; a node without a control plane has nothing to be stale
    against). Setters and `read` may be called from any thread.
    """

    def __init__(
        self,
        run_dir: Path,
        layout: MetricsLayout,
        *,
        stale_after_seconds: float | None = None,
        clear: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run_dir = run_dir
        self.layout = layout
        self.stale_after_seconds = stale_after_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot_version = 0
        self._synced_at: float | None = None
        self._workers_alive = 0
        self._restarts = 0
        self._outbox_entries = 0
        self._outbox_bytes = 0
        self._outbox_dropped = 0
        self._oldest_id_ms = 0
        self._forwarded = 0
        self._housekept = dict.fromkeys(HOUSEKEEPING_KINDS, 0)
        self._activity_bytes = 0
        self._activity_window_ms = 0
        self._store_used_bytes = 0
        self._store_write_limit_bytes = 0
        self._store_limits: tuple[tuple[str, int], ...] = ()
        self._control = ""
        self._control_switches = 0
        self._shadow_version = 0
        self._shadow_sample = 0.0
        run_dir.mkdir(parents=True, exist_ok=True)
        if clear:
            for path in run_dir.glob(f"{_FILE_PREFIX}*"):
                if path.name.endswith((_FILE_SUFFIX, _FILE_SUFFIX + ".tmp")):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()

    def worker_path(self, worker: int) -> Path:
        return worker_metrics_path(self.run_dir, worker)

    def set_snapshot(self, version: int, synced_at: float | None = None) -> None:
        """The snapshot serving now and when it was last synced (unix seconds; default now)."""
        with self._lock:
            self._snapshot_version = version
            self._synced_at = self._clock() if synced_at is None else synced_at

    def set_workers_alive(self, count: int) -> None:
        with self._lock:
            self._workers_alive = count

    def worker_restarted(self, count: int = 1) -> None:
        with self._lock:
            self._restarts += count

    def set_outbox(self, entries: int, forwarded: int, size_bytes: int = 0, dropped: int = 0) -> None:
        """Records waiting in the outbox and the bytes of its pages, records the control plane accepted
        since start, and records deleted unsent since start (the outbox was over its limit)."""
        with self._lock:
            self._outbox_entries, self._forwarded = entries, forwarded
            self._outbox_bytes, self._outbox_dropped = size_bytes, dropped

    def set_control(self, address: str, switches: int) -> None:
        """The control-plane replica the node follows (HOST:PORT) and how often it moved to another."""
        with self._lock:
            self._control, self._control_switches = address, switches

    def set_shadow(self, version: int, sample: float) -> None:
        """The shadow candidate the node holds (0: none) and the share of requests decided again with it."""
        with self._lock:
            self._shadow_version, self._shadow_sample = version, sample

    def set_housekeeping(
        self,
        event_ids: int,
        activities: int,
        event_ids_early: int = 0,
        oldest_id_ms: int = 0,
        activities_early: int = 0,
        activity_bytes: int = 0,
        activity_window_ms: int = 0,
    ) -> None:
        """Expired event ids and live activities housekeeping deleted since start, event ids it deleted
        before their dedupe window ended (over track.dedupe_max_mb), the arrival time of the oldest
        event id kept (Unix ms, 0: none), live activities it deleted before their TTLs (over
        track.activity_max_mb), the bytes live activity takes, and how long ago a unit may have been
        last active and keep its activity while over that limit (ms, 0: the TTLs alone)."""
        with self._lock:
            self._housekept = {
                "event_ids": event_ids,
                "activities": activities,
                "event_ids_early": event_ids_early,
                "activities_early": activities_early,
            }
            self._oldest_id_ms = oldest_id_ms
            self._activity_bytes, self._activity_window_ms = activity_bytes, activity_window_ms

    def set_store(self, used_bytes: int, write_limit_bytes: int, caps: Iterable[Cap]) -> None:
        """Bytes of the store's pages in use, where Track's writes stop (0: none), and the size limits in
        force (core/store_budget.py)."""
        limits = tuple((cap.key, cap.effective_bytes) for cap in caps)
        with self._lock:
            self._store_used_bytes, self._store_write_limit_bytes = used_bytes, write_limit_bytes
            self._store_limits = limits

    def totals(self) -> tuple[dict[Series, float], list[str]]:
        """Summed values by series over all worker files, and placements seen beyond the node layout."""
        totals: dict[Series, float] = {}
        extra: list[str] = []
        for path in sorted(self.run_dir.glob(f"{_FILE_PREFIX}*{_FILE_SUFFIX}")):
            found = _read_metrics_file(path)
            if found is None:
                continue
            layout, values = found
            for key, slot in layout.series():
                totals[key] = totals.get(key, 0.0) + float(values[slot])
            extra += [p for p in layout.placements if p not in self.layout.placement_slot and p not in extra]
        return totals, extra

    def read(self) -> NodeReading:
        """The whole node at this moment: `totals()` and the gauges, read under the lock (one scrape)."""
        totals, extra = self.totals()
        with self._lock:
            version, synced_at = self._snapshot_version, self._synced_at
            alive, restarts = self._workers_alive, self._restarts
            outbox, forwarded, housekept = self._outbox_entries, self._forwarded, dict(self._housekept)
            outbox_bytes, outbox_dropped = self._outbox_bytes, self._outbox_dropped
            oldest_id_ms = self._oldest_id_ms
            activity_bytes, activity_window_ms = self._activity_bytes, self._activity_window_ms
            store_used, write_limit = self._store_used_bytes, self._store_write_limit_bytes
            store_limits = self._store_limits
            control, control_switches = self._control, self._control_switches
            shadow_version, shadow_sample = self._shadow_version, self._shadow_sample
        age = math.nan if synced_at is None else max(0.0, self._clock() - synced_at)
        stale = (
            self.stale_after_seconds is not None and synced_at is not None and age > self.stale_after_seconds
        )
        reach = max(0.0, time.time() - oldest_id_ms / 1000) if oldest_id_ms else 0.0
        return NodeReading(
            totals=totals,
            placements=(*self.layout.placements, *extra, OTHER),
            snapshot_version=version,
            snapshot_age_seconds=age,
            stale=stale,
            workers_alive=alive,
            worker_restarts=restarts,
            outbox_entries=outbox,
            outbox_bytes=outbox_bytes,
            outbox_dropped=outbox_dropped,
            forwarded=forwarded,
            housekept=housekept,
            dedupe_window_seconds=round(reach, 3),
            activity_bytes=activity_bytes,
            activity_window_seconds=round(activity_window_ms / 1000, 3),
            store_used_bytes=store_used,
            store_write_limit_bytes=write_limit,
            store_limits=store_limits,
            control=control,
            control_switches=control_switches,
            shadow_version=shadow_version,
            shadow_sample=shadow_sample,
        )


@dataclass(frozen=True, slots=True)
class NodeReading:
    """One scrape's view of the node (`NodeMetrics.read`): worker counters summed over every worker file,
    and the gauges the supervisor set. Exposition (edge/metrics_export.py) only formats it."""

    totals: dict[Series, float]  # by series key (MetricsLayout.series); a key no file has counts 0
    placements: tuple[str, ...]  # decision series in order: the node layout's, those only files list, OTHER
    snapshot_version: int
    snapshot_age_seconds: float  # NaN before the first sync
    stale: bool  # the last sync is older than stale_after_seconds
    workers_alive: int
    worker_restarts: int
    outbox_entries: int
    outbox_bytes: int
    outbox_dropped: int
    forwarded: int
    housekept: dict[str, int]  # deleted by housekeeping since start, by kind (HOUSEKEEPING_KINDS, in order)
    dedupe_window_seconds: float  # age of the oldest event id kept (0: none), ms precision
    activity_bytes: int
    activity_window_seconds: float  # 0: the TTLs alone, ms precision
    store_used_bytes: int = 0  # pages in use, every namespace
    store_write_limit_bytes: int = 0  # Track's writes are refused past this (0: not known)
    store_limits: tuple[tuple[str, int], ...] = ()  # (config key, bytes) of the size limits in force
    control: str = ""  # the control-plane replica followed ("": none)
    control_switches: int = 0  # moves to another replica since start
    shadow_version: int = 0  # the shadow candidate held (0: none)
    shadow_sample: float = 0.0  # the share of requests decided again with it

    def count(self, *key: str) -> float:
        """The summed value of one series key, e.g. `count("rpc", "Decide", "OK")`."""
        return self.totals.get(key, 0.0)
