"""PersonalizerServicer: the Decide and Track RPCs of an edge node over its store and pipeline."""

from __future__ import annotations

import time

import grpc

from edgewise.core.activity import ActivityLimits
from edgewise.core.decisions import RequestError
from edgewise.core.pipeline import Pipeline, SnapshotMissing
from edgewise.core.store import Store
from edgewise.edge.convert import Limits, decide_input, decide_response, new_decision_id, tracked_events
from edgewise.edge.logs import log
from edgewise.v1 import personalizer_pb2 as _pb
from edgewise.v1 import personalizer_pb2_grpc as _pb_grpc

__all__ = ["PersonalizerServicer"]


class PersonalizerServicer(_pb_grpc.PersonalizerServicer):
    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        limits: Limits | None = None,
        activity_limits: ActivityLimits | None = None,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._limits = limits or Limits()
        self._activity_limits = activity_limits or ActivityLimits()

    def Decide(self, request: _pb.DecideRequest, context: grpc.ServicerContext) -> _pb.DecideResponse:
        try:
            ask = decide_input(request, self._limits, int(time.time() * 1000))
            with self._store.read() as view:
                decision = self._pipeline.decide(view, ask)
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except SnapshotMissing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "this edge has no snapshot loaded yet; retry shortly")
        return decide_response(decision, new_decision_id())

    def Track(self, request: _pb.TrackRequest, context: grpc.ServicerContext) -> _pb.TrackResponse:
        try:
            events = tracked_events(request, self._limits, int(time.time() * 1000))
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            result = self._store.record_events(events, self._activity_limits)
        except Exception as exc:
            log("track_store_failed", level="error", error=str(exc))
            context.abort(grpc.StatusCode.UNAVAILABLE, "events could not be stored durably; retry")
        return _pb.TrackResponse(accepted=result.accepted, duplicates=result.duplicates)
