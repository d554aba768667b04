"""Prometheus metrics of a multi-process edge node: per-worker shared-memory counters, one node endpoint.

Each worker process records into its own small file, `<run_dir>/metrics-<worker>.bin`, mapped with
`mmap`: a header (magic, the layout as JSON) and then one float64 slot per counter. Recording is a few
item increments on a memoryview over the mapping: no lock, no syscall, no allocation (a few hundred ns a
call, see `WorkerMetrics`). The supervisor owns a `NodeMetrics` over the same directory: `render()` maps
every worker file read-only, sums the slots series by series, adds the node gauges the supervisor sets
(snapshot version and age, workers alive, restarts, stale) and formats Prometheus text exposition
0.0.4, served by `serve_metrics` on its own thread (GET /metrics).

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
import logging
import math
import mmap
import os
import socket
import struct
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgewise.core.decisions import FallbackReason

log = logging.getLogger(__name__)

__all__ = [
    "BUCKETS",
    "CONTENT_TYPE",
    "FALLBACK_REASONS",
    "MAX_PLACEMENT_LABELS",
    "OTHER",
    "RPCS",
    "STATUS_CODES",
    "MetricsLayout",
    "NodeMetrics",
    "WorkerMetrics",
    "make_run_dir",
    "serve_metrics",
    "worker_metrics_path",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

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
        "fallbacks_base",
        "hist_base",
        "placement_slot",
        "placements",
        "rpc_total_base",
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
        self.size = slot + 1
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
        "_mm",
        "_other",
        "_placement_slot",
        "_reason_slot",
        "_rpc",
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

    def close(self) -> None:
        """Unmap the file (its values stay: the node keeps summing them)."""
        self._slots.release()
        self._buf.release()
        self._mm.close()

    def __enter__(self) -> WorkerMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class NodeMetrics:
    """The node's view: the sum of all worker files in `run_dir` plus gauges set by the supervisor.

    `layout` fixes the order of the placement series (placements found only in some worker's file are
    added after them). With `clear` (default), leftover worker files from a previous run are removed:
    create the NodeMetrics before starting workers. `stale_after_seconds`: `edgewise_stale` is 1 when the
    last sync is older than that. Setters and `render` may be called from any thread.
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
        self._housekept = {"event_ids": 0, "activities": 0, "event_ids_early": 0, "activities_early": 0}
        self._activity_bytes = 0
        self._activity_window_ms = 0
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

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4 of the whole node."""
        totals, extra = self.totals()
        with self._lock:
            version, synced_at = self._snapshot_version, self._synced_at
            alive, restarts = self._workers_alive, self._restarts
            outbox, forwarded, housekept = self._outbox_entries, self._forwarded, dict(self._housekept)
            outbox_bytes, outbox_dropped = self._outbox_bytes, self._outbox_dropped
            oldest_id_ms = self._oldest_id_ms
            activity_bytes, activity_window_ms = self._activity_bytes, self._activity_window_ms
        age = math.nan if synced_at is None else max(0.0, self._clock() - synced_at)
        stale = (
            self.stale_after_seconds is not None and synced_at is not None and age > self.stale_after_seconds
        )
        out: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")

        def sample(name: str, labels: dict[str, str], value: float) -> None:
            inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{inner}}} {_fmt(value)}\n" if inner else f"{name} {_fmt(value)}\n")

        h = "edgewise_rpc_duration_seconds"
        family(h, "histogram", "Time a worker took to answer an RPC, by RPC.")
        for rpc in RPCS:
            cumulative = 0.0
            for i, le in enumerate((*BUCKETS, math.inf)):
                cumulative += totals.get(("bucket", rpc, str(i)), 0.0)
                sample(
                    f"{h}_bucket", {"rpc": rpc, "le": _fmt(le) if math.isinf(le) else repr(le)}, cumulative
                )
            sample(f"{h}_sum", {"rpc": rpc}, totals.get(("sum", rpc), 0.0))
            sample(f"{h}_count", {"rpc": rpc}, cumulative)
        family("edgewise_rpc_total", "counter", "RPCs answered, by RPC and gRPC status code.")
        for rpc in RPCS:
            for code in STATUS_CODES:
                sample("edgewise_rpc_total", {"rpc": rpc, "code": code}, totals.get(("rpc", rpc, code), 0.0))
        family(
            "edgewise_decisions_total",
            "counter",
            f"Placement decisions, by placement (the first {MAX_PLACEMENT_LABELS} of the rules; "
            f'others as "{OTHER}").',
        )
        for placement in (*self.layout.placements, *extra, OTHER):
            sample(
                "edgewise_decisions_total", {"placement": placement}, totals.get(("decision", placement), 0.0)
            )
        family("edgewise_fallbacks_total", "counter", "Placements answered with the default, by reason.")
        for reason in FALLBACK_REASONS:
            sample("edgewise_fallbacks_total", {"reason": reason}, totals.get(("fallback", reason), 0.0))
        family("edgewise_track_events_total", "counter", "Tracked events: newly accepted, or duplicates.")
        for result in TRACK_RESULTS:
            sample("edgewise_track_events_total", {"result": result}, totals.get(("track", result), 0.0))
        family("edgewise_shed_total", "counter", "Calls shed under overload (rejected or fast default).")
        sample("edgewise_shed_total", {}, totals.get(("shed",), 0.0))
        family("edgewise_snapshot_version", "gauge", "Version of the snapshot being served.")
        sample("edgewise_snapshot_version", {}, version)
        family(
            "edgewise_snapshot_age_seconds", "gauge", "Seconds since the last sync (NaN before the first)."
        )
        sample("edgewise_snapshot_age_seconds", {}, age)
        family("edgewise_worker_restarts_total", "counter", "Worker processes restarted by the supervisor.")
        sample("edgewise_worker_restarts_total", {}, restarts)
        family("edgewise_workers_alive", "gauge", "Worker processes running.")
        sample("edgewise_workers_alive", {}, alive)
        family("edgewise_stale", "gauge", "1 when the last sync is older than the staleness threshold.")
        sample("edgewise_stale", {}, 1.0 if stale else 0.0)
        family("edgewise_outbox_entries", "gauge", "Events and exposure records waiting to go upstream.")
        sample("edgewise_outbox_entries", {}, outbox)
        family("edgewise_outbox_bytes", "gauge", "Bytes of the store's pages the outbox takes.")
        sample("edgewise_outbox_bytes", {}, outbox_bytes)
        family(
            "edgewise_outbox_dropped_total",
            "counter",
            "Oldest outbox records deleted unsent because the outbox was over data.outbox_max_mb.",
        )
        sample("edgewise_outbox_dropped_total", {}, outbox_dropped)
        family("edgewise_forwarded_total", "counter", "Records the control plane accepted from this node.")
        sample("edgewise_forwarded_total", {}, forwarded)
        family(
            "edgewise_housekeeping_deleted_total",
            "counter",
            "Expired event ids and live activities deleted by housekeeping, by kind.",
        )
        for kind, count in housekept.items():
            sample("edgewise_housekeeping_deleted_total", {"kind": kind}, count)
        family(
            "edgewise_dedupe_window_seconds",
            "gauge",
            "Age of the oldest event id kept: how far back a retried Track is still recognized.",
        )
        reach = max(0.0, time.time() - oldest_id_ms / 1000) if oldest_id_ms else 0.0
        sample("edgewise_dedupe_window_seconds", {}, round(reach, 3))
        family("edgewise_activity_bytes", "gauge", "Bytes of the store's pages holding live activity.")
        sample("edgewise_activity_bytes", {}, activity_bytes)
        family(
            "edgewise_activity_window_seconds",
            "gauge",
            "While live activity is over track.activity_max_mb: how long ago a user or session may have been "
            "last active and keep its activity (0: only the TTLs apply).",
        )
        sample("edgewise_activity_window_seconds", {}, round(activity_window_ms / 1000, 3))
        return "".join(out)


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], node: NodeMetrics, ipv6: bool) -> None:
        if ipv6:
            self.address_family = socket.AF_INET6
        self.node = node
        super().__init__(address, _MetricsHandler)


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _MetricsServer
    server_version = "edgewise-metrics"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                payload = self.server.node.render().encode()
            except Exception as exc:
                log.error("metrics_render_failed", extra={"error": str(exc)})
                self.send_error(500, "could not render metrics")
                return
            status, content_type = 200, CONTENT_TYPE
        elif path == "/":
            status, content_type = 200, "text/plain; charset=utf-8"
            payload = b"edgewise edge node metrics: GET /metrics\n"
        else:
            status, content_type, payload = 404, "text/plain; charset=utf-8", b"not found: try /metrics\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request logging."""


def serve_metrics(address: str, node: NodeMetrics) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve GET /metrics on `address` (HOST:PORT, port 0 = any free port; `[::1]:9100` for IPv6) from a
    daemon thread. Stop with `server.shutdown(); server.server_close()`. The bound port is
    `server.server_address[1]`. Raises OSError naming the address when it cannot bind."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise OSError(f"metrics address {address!r} is not HOST:PORT")
    ipv6 = host.startswith("[")
    host = host.strip("[]")
    try:
        server = _MetricsServer((host, int(port)), node, ipv6)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
