"""PersonalizerServicer: the Decide and Track RPCs of an edge node over its store and pipeline.

Decide answers with the fast default (`FALLBACK_REASON_BUDGET_EXCEEDED`) when less than
`min_budget_ms` of the caller's deadline is left, and, in `overload = "default"` mode, with the fast
default (`FALLBACK_REASON_OVERLOADED`) when more than `max_in_flight` calls are being handled. In
`overload = "reject"` mode the gRPC server itself sheds calls past `max_in_flight` with
RESOURCE_EXHAUSTED before they reach a thread.

The gRPC server around it (edge/server.py) counts and times every call, from its arrival, by the code
its caller gets; the servicer counts what its answers hold (decisions, fallbacks, tracked events).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from random import random

import grpc

from edgewise.core.activity import ActivityLimits
from edgewise.core.decisions import DecideRequest, DecideResponse, FallbackReason, RequestError
from edgewise.core.exposure import ANALYTICS, exposure_records
from edgewise.core.pipeline import Pipeline, SnapshotMissing
from edgewise.core.store import Store, StoreFull
from edgewise.edge._wire import decide_response_bytes
from edgewise.edge.convert import (
    Limits,
    Undecodable,
    decide_input,
    decide_input_bytes,
    decide_response,
    new_decision_id,
    tracked_events,
)
from edgewise.edge.group_commit import CommitterClosed, GroupCommitter
from edgewise.edge.metrics import WorkerMetrics
from edgewise.edge.shadow import ShadowDecider
from edgewise.edge.stage_times import (
    CALLS,
    CONVERT_IN,
    EXPOSURES,
    PIPELINE,
    RESPONSE,
    SERVICER_OTHER,
    StageTimes,
    now_ns,
)
from edgewise.v1 import personalizer_pb2 as _pb
from edgewise.v1 import personalizer_pb2_grpc as _pb_grpc

log = logging.getLogger(__name__)

__all__ = ["PersonalizerServicer", "ServingOptions"]

_DECIDE_REQUEST = _pb.DecideRequest.DESCRIPTOR.full_name


@dataclass(frozen=True, slots=True)
class ServingOptions:
    max_in_flight: int = 64  # per worker
    overload: str = "reject"  # "reject" (RESOURCE_EXHAUSTED) or "default" (fast default, OVERLOADED)
    min_budget_ms: float = 2.0  # less of the caller's deadline left: the fast default
    track_timeout_s: float = 10.0
    queue_exposures: bool = True  # exposure records of decisions with analytics consent go to the outbox


class PersonalizerServicer(_pb_grpc.PersonalizerServicer):
    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        limits: Limits | None = None,
        activity_limits: ActivityLimits | None = None,
        *,
        committer: GroupCommitter | None = None,
        options: ServingOptions | None = None,
        metrics: WorkerMetrics | None = None,
        stages: StageTimes | None = None,
        shadow: ShadowDecider | None = None,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._limits = limits or Limits()
        self._activity_limits = activity_limits or ActivityLimits()
        self._committer = committer
        self._options = options or ServingOptions()
        self._metrics = metrics
        self._stages = stages  # per-stage CPU for benchmarks (edge/stage_times.py); None: off
        self._shadow = shadow  # a sample decided again with a shadow candidate (edge/shadow.py)
        self._in_flight = 0
        self._lock = threading.Lock()

    def Decide(self, request: _pb.DecideRequest, context: grpc.ServicerContext) -> _pb.DecideResponse:
        """Decide as a message (the generated interface; the JSON gateway calls it); the gRPC server
        serves `decide_wire`, its bytes."""
        decision = self._decided(request, context)
        t = now_ns() if self._stages is not None else 0
        response = decide_response(decision, decision.decision_id)
        self._count_response(t)
        return response

    def decide_wire(self, request: _pb.DecideRequest | bytes, context: grpc.ServicerContext) -> bytes:
        """Decide from the request's bytes (or its message), answered with the serialized DecideResponse:
        edge/server.py registers it with neither deserializer nor serializer. Both ends are C
        (edge/_wire.pyx): the request's bytes read into the core request, and, without an explanation,
        the response's bytes written from the decision, with no message object per placement and item."""
        decision = self._decided(request, context)
        t = now_ns() if self._stages is not None else 0
        if decision.explanation is None:
            response = decide_response_bytes(decision, decision.decision_id)
        else:
            response = decide_response(decision, decision.decision_id).SerializeToString()
        self._count_response(t)
        return response

    def _decided(self, request: _pb.DecideRequest | bytes, context: grpc.ServicerContext) -> DecideResponse:
        """The decision for a request as bytes or message; a refused request aborts the call with the
        status a caller can act on."""
        stages = self._stages
        t = now_ns() if stages is not None else 0
        now_ms = int(time.time() * 1000)
        try:
            if isinstance(request, bytes):
                ask = decide_input_bytes(request, self._limits, now_ms)
            else:
                ask = decide_input(request, self._limits, now_ms)
            if stages is not None:
                stages.add(CONVERT_IN, t)
            return self.decide(ask, context.time_remaining())
        except Undecodable as exc:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {_DECIDE_REQUEST} message ({exc})"
            )
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except SnapshotMissing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "this edge has no snapshot loaded yet; retry shortly")

    def _count_response(self, started_ns: int) -> None:
        """Charge building the response (from `started_ns`) and the call to the stage counters, if on."""
        stages = self._stages
        if stages is not None:
            stages.add(RESPONSE, started_ns)
            stages.slots()[CALLS] += 1

    def decide(self, ask: DecideRequest, time_remaining: float | None = None) -> DecideResponse:
        """Decide for a checked core request: the plain-Python entry point every front end calls (gRPC
        above; any other converts its input to a `DecideRequest` the same way and calls this).

        `time_remaining`: seconds of the caller's deadline left (None: no deadline); under
        `min_budget_ms` the placements get the fast default (BUDGET_EXCEEDED), as they do past
        `max_in_flight` calls in `overload = "default"` mode (OVERLOADED). Queues the exposure records
        (analytics purpose) and counts the decisions. The decision comes back with its `decision_id`.
        Raises `RequestError` (the caller's to fix) and `SnapshotMissing` (no snapshot loaded yet)."""
        stages = self._stages
        t = now_ns() if stages is not None else 0
        with self._lock:
            self._in_flight += 1
            busy = self._in_flight
        try:
            shortcut = None
            if time_remaining is not None and time_remaining * 1000 < self._options.min_budget_ms:
                shortcut = FallbackReason.BUDGET_EXCEEDED
            elif self._options.overload == "default" and busy > self._options.max_in_flight:
                shortcut = FallbackReason.OVERLOADED
                if self._metrics is not None:
                    self._metrics.shed()
            if stages is not None:
                t = stages.add(SERVICER_OTHER, t)
            shadow = self._shadow  # while it has a candidate open: a sample of the decisions goes to it
            sampled = (
                shortcut is None and shadow is not None and shadow.sample > 0.0 and random() < shadow.sample
            )
            cpu = time.thread_time_ns() if sampled else 0
            with self._store.read() as view:
                if shortcut is not None:
                    decision = self._pipeline.fast_default(view, ask, shortcut)
                else:
                    decision = self._pipeline.decide(view, ask)
            if sampled:
                cpu = time.thread_time_ns() - cpu
            if stages is not None:
                t = stages.add(PIPELINE, t)
        finally:
            with self._lock:
                self._in_flight -= 1
        decision.decision_id = decision_id = new_decision_id()
        if self._committer is not None and self._options.queue_exposures and ANALYTICS in ask.consent:
            self._committer.note_exposures(exposure_records(decision_id, ask, decision))
            if stages is not None:
                t = stages.add(EXPOSURES, t)
        if self._metrics is not None:
            for p in decision.placements:
                self._metrics.decision(p.placement_id, p.fallback)
        if sampled and shadow is not None:
            shadow.offer(ask, decision, cpu)  # the decision is complete: the shadow thread only reads it
        if stages is not None:
            stages.add(SERVICER_OTHER, t)
        return decision

    def Track(self, request: _pb.TrackRequest, context: grpc.ServicerContext) -> _pb.TrackResponse:
        response = self._track(request, context)
        if self._metrics is not None:
            self._metrics.track(response.accepted, response.duplicates)
        return response

    def _track(self, request: _pb.TrackRequest, context: grpc.ServicerContext) -> _pb.TrackResponse:
        try:
            events = tracked_events(request, self._limits, int(time.time() * 1000))
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            if self._committer is not None:
                result = self._committer.submit(events, timeout=self._options.track_timeout_s)
            else:
                result = self._store.record_events(events, self._activity_limits)
        except CommitterClosed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "this edge is shutting down; retry on another")
        except StoreFull:  # logged by the committer (store_full, rate-limited)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "this edge's store is full (data.map_size_mb): the events were not stored; housekeeping "
                "is freeing room, retry later or on another edge",
            )
        except Exception as exc:
            log.error("track_store_failed", extra={"error": str(exc)})
            context.abort(grpc.StatusCode.UNAVAILABLE, "events could not be stored durably; retry")
        return _pb.TrackResponse(accepted=result.accepted, duplicates=result.duplicates)
