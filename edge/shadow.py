"""Shadow decisions in a worker: a sample of requests decided again with a candidate version, never served
(docs/shadow.md).

The syncer keeps the candidate of a shadow rollout in an LMDB environment of its own under
`<data>/shadow/`, named by a marker file (sync/shadow_candidate.py). `ShadowDecider.refresh`, called by
the worker's loop five times a second, notices the candidate appear, change and go: it opens the one the
marker names read-only, with a `Pipeline` of its own (its version state is built once, on the first
shadow decision), and closes the previous one.

On a request's path the servicer does only this: while a candidate is open it draws whether to sample
the request (`sample`, the marker's share capped by `shadow.max_sample`) and, for a sampled one, reads
the thread's CPU clock around the served pipeline and appends (request, served decision, CPU time) to
a bounded deque once the served decision is complete (`offer`): no lock, no wake-up; a sample that finds
the deque full is dropped and counted. The shadow thread (niced, so the kernel prefers the request
threads) drains the deque every few milliseconds: it decides each request with the candidate, under
one read view of the candidate's environment for its replicated data and one of the node's store for
the live activity the candidate does not carry (what the user did on this node), compares the two
answers (core/shadow_compare.py) and counts the result in the worker's shared-memory counters
(edge/metrics.py, `SHADOW_COUNTERS`), which the supervisor sums into the heartbeat's ShadowStats, the
`edgewise_shadow_*` metrics and `edge status`.

Latency is compared as pipeline CPU time (the thread's CPU clock) of the same request with each version:
the request threads and the shadow thread do not wait for the GIL and the CPU alike, so wall-clock
times would compare the threads, not the versions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgewise.core.decisions import DecideRequest, DecideResponse
from edgewise.core.pipeline import Pipeline
from edgewise.core.records import Activity
from edgewise.core.shadow_compare import compare
from edgewise.core.store import ReadView, Store, StoreError
from edgewise.edge.metrics import WorkerMetrics
from edgewise.sync.shadow_candidate import SHADOW_DIR, Candidate, read_candidate

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_QUEUE", "ShadowDecider", "ShadowView"]

DEFAULT_QUEUE: Final = 256
_IDLE_WAIT_S: Final = 0.2  # the shadow thread without a candidate
_DRAIN_WAIT_S: Final = 0.005  # with one, between looks at an empty queue
_NICE: Final = 10


class ShadowView(ReadView):
    """A read view of the candidate's environment that reads live activity from the node's store (the
    candidate's snapshot holds replicated data only; activity is the node's own)."""

    __slots__ = ("_live",)

    def __init__(self, candidate: ReadView, live: ReadView) -> None:
        super().__init__(candidate._txn, candidate._dbs)  # the same transaction, not a second one
        self._live = live

    def activity(self, key: str) -> Activity | None:
        return self._live.activity(key)


@dataclass
class _Open:
    """A candidate opened by this worker."""

    candidate: Candidate
    store: Store
    pipeline: Pipeline


class ShadowDecider:
    """One worker's shadow decisions; `sample` and `offer` are the only parts on a request's path."""

    def __init__(
        self,
        data_dir: Path,
        map_size: int,
        live: Store,
        metrics: WorkerMetrics | None,
        *,
        max_sample: float = 1.0,
        queue_size: int = DEFAULT_QUEUE,
    ) -> None:
        self._data_dir = data_dir
        self._map_size = map_size
        self._live = live
        self._metrics = metrics
        self._max_sample = max_sample
        self._queue_size = queue_size
        self._queue: deque[tuple[DecideRequest, DecideResponse, int]] = deque()
        self._open: _Open | None = None
        # Held by the shadow thread while it decides, and to close a candidate: an environment is never
        # closed under a read transaction.
        self._lock = threading.Lock()
        self._marker_stamp: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        #: The share of requests to decide again (0.0: no candidate open). Read on every request.
        self.sample = 0.0
        self.decided = 0  # requests decided again since start (for tests and logs)

    # --- the worker's loop ----------------------------------------------------------------------------

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._close()

    def refresh(self) -> None:
        """Open, switch or close the candidate as the marker now says (a no-op while it is unchanged)."""
        marker = self._data_dir / SHADOW_DIR / "candidate.json"
        try:
            st = marker.stat()
            stamp: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp == self._marker_stamp:
            return
        candidate = read_candidate(self._data_dir) if stamp is not None else None
        current = self._open
        if candidate is not None and current is not None and candidate.dir == current.candidate.dir:
            self._marker_stamp = stamp
            self._set_sample(candidate)
            return
        self.sample = 0.0  # the request threads stop sampling before the candidate changes
        self._close()
        if candidate is not None:
            try:
                store = Store(
                    self._data_dir / SHADOW_DIR / candidate.dir, map_size=self._map_size, readonly=True
                )
            except StoreError as exc:  # dropped again before we opened it: the marker says so next time
                log.warning("shadow_open_failed", extra={"version": candidate.version, "error": str(exc)})
                return
            self._open = _Open(candidate, store, Pipeline())
            self._set_sample(candidate)
            log.info(
                "shadow_opened",
                extra={"version": candidate.version, "sample": self.sample, "pid": os.getpid()},
            )
        self._marker_stamp = stamp

    def _set_sample(self, candidate: Candidate) -> None:
        self.sample = max(0.0, min(candidate.sample, self._max_sample))

    def _close(self) -> None:
        with self._lock:
            current, self._open = self._open, None
            self._queue.clear()
            if current is not None:
                current.store.close()
        if current is not None:
            log.info("shadow_closed", extra={"version": current.candidate.version, "pid": os.getpid()})

    # --- a request's path -----------------------------------------------------------------------------

    def offer(self, ask: DecideRequest, served: DecideResponse, served_cpu_ns: int) -> None:
        """A sampled request, its served decision (complete: not changed after this) and the pipeline's
        CPU time serving it: queued for the shadow thread, or dropped and counted when the queue is full."""
        queue = self._queue
        if len(queue) < self._queue_size:
            queue.append((ask, served, served_cpu_ns))
        elif self._metrics is not None:
            self._metrics.shadow_dropped()

    # --- the shadow thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread's own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
        queue = self._queue
        while not self._stop.is_set():
            try:
                ask, served, served_ns = queue.popleft()
            except IndexError:
                self._stop.wait(_DRAIN_WAIT_S if self.sample else _IDLE_WAIT_S)
                continue
            try:
                with self._lock:
                    self._decide(ask, served, served_ns)
            except Exception as exc:  # the thread must outlive any one request
                log.error("shadow_failed", extra={"error": repr(exc)})

    def _decide(self, ask: DecideRequest, served: DecideResponse, served_ns: int) -> None:
        current = self._open
        if current is None:
            return
        metrics = self._metrics
        started = time.thread_time_ns()
        try:
            with current.store.read() as candidate_view, self._live.read() as live_view:
                decision = current.pipeline.decide(ShadowView(candidate_view, live_view), ask)
        except Exception as exc:
            self.decided += 1
            if metrics is not None:
                metrics.shadow_failed(served_ns / 1000, (time.thread_time_ns() - started) / 1000)
            log.debug("shadow_decision_failed", extra={"error": repr(exc)})
            return
        shadow_ns = time.thread_time_ns() - started
        self.decided += 1
        if metrics is not None:
            c = compare(served, decision)
            metrics.shadow(
                c.placements,
                c.item_placements,
                c.overlap_sum,
                c.variant_changes,
                c.new_fallbacks,
                c.fixed_fallbacks,
                served_ns / 1000,
                shadow_ns / 1000,
            )

    def decide_now(self, ask: DecideRequest) -> DecideResponse | None:
        """The candidate's decision for `ask`, on the caller's thread (tests; None: no candidate open)."""
        with self._lock:
            current = self._open
            if current is None:
                return None
            with current.store.read() as candidate_view, self._live.read() as live_view:
                return current.pipeline.decide(ShadowView(candidate_view, live_view), ask)
