"""Admission of edge calls on the control plane: bounded Subscribe streams and Forward calls, each on
thread pools of their own, so no edge-side load can hold the threads ops calls run on.

A Subscribe stream holds a thread for as long as it is open (the sync gRPC server runs a stream's
handler on a pool thread), so a pool shared by edges and ops is starved by enough idle streams. The
control plane therefore runs three pools:

- ops: the server's own pool (`OPS_WORKERS` threads): every ops method, the health and reflection
  services, and every refusal (a refusal answers at once, so it never waits behind a stream);
- streams: `max_streams` threads, Subscribe only;
- forwards: `FORWARD_WORKERS` threads, Forward only.

`EdgeAdmission`, a server interceptor that runs after the token check, decides on the server's own
polling thread, before any pool is involved:

- a Subscribe when `max_streams` streams are open (or waiting for a thread): RESOURCE_EXHAUSTED
  "... sync.max_streams ..."; a stream of a per-node token (`key_of`) when that token has
  `max_streams_per_token` open: RESOURCE_EXHAUSTED "... sync.max_streams_per_token ..." (the shared edge
  token is one credential for the whole fleet: only the total bounds it);
- a Forward when `max_forward_calls` are running or queued: RESOURCE_EXHAUSTED
  "... events.max_forward_calls ...".

Admitted calls run on their pool (gRPC's `experimental_thread_pool` attribute of a handler's behavior,
the hook grpcio's own health service uses), so the streams pool never holds more streams than it has
threads. The counts are exact: a pool counts the tasks submitted to it and not finished
(`CountingPool.pending`), and a stream's per-token count is released when its handler ends, whatever the
reason. Refusals are logged as `edge_call_refused`, rate limited like `call_refused`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, TypeVar

import grpc

from edgewise.sync.auth import CONTROL_PLANE_SERVICE
from edgewise.sync.log_limit import LogLimiter

log = logging.getLogger(__name__)

__all__ = [
    "FORWARD_METHOD",
    "FORWARD_WORKERS",
    "OPS_WORKERS",
    "SUBSCRIBE_METHOD",
    "CountingPool",
    "EdgeAdmission",
    "EdgeLimits",
    "control_grpc_server",
]

OPS_WORKERS: Final = 32
"""Threads of the ops pool: ops calls, health, reflection, refusals."""
FORWARD_WORKERS: Final = 8
"""Threads running Forward calls (they share the event store's write lock, so more would only wait)."""
SUBSCRIBE_METHOD: Final = f"/{CONTROL_PLANE_SERVICE}/Subscribe"
FORWARD_METHOD: Final = f"/{CONTROL_PLANE_SERVICE}/Forward"

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The bounds on edge calls (the `sync.max_streams`, `sync.max_streams_per_token` and
    `events.max_forward_calls` settings)."""

    max_streams: int = 256
    max_streams_per_token: int = 4
    max_forward_calls: int = 64

    def __post_init__(self) -> None:
        for name in ("max_streams", "max_streams_per_token", "max_forward_calls"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


class CountingPool(futures.ThreadPoolExecutor):
    """A thread pool that knows how many of the tasks submitted to it have not finished yet."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._count_lock = threading.Lock()
        self._pending = 0

    def pending(self) -> int:
        """Tasks running or queued."""
        with self._count_lock:
            return self._pending

    def _done(self) -> None:
        with self._count_lock:
            self._pending -= 1

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> futures.Future[T]:
        with self._count_lock:
            self._pending += 1

        def run() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                self._done()

        try:
            return super().submit(run)
        except BaseException:
            self._done()
            raise


class _OnPool:
    """A handler behavior that gRPC runs on `pool` (its `experimental_thread_pool` attribute)."""

    def __init__(self, behavior: Callable[..., Any], pool: futures.ThreadPoolExecutor) -> None:
        self._behavior = behavior
        self.experimental_thread_pool = pool

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._behavior(request, context)


def _refusal(details: str, streaming: bool) -> grpc.RpcMethodHandler[Any, Any]:
    """A RESOURCE_EXHAUSTED answer that never waits for the request: a request-streaming handler is given
    the request iterator without anything read (a unary one would first wait for the whole message)."""

    def behavior(request_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)

    if streaming:
        return grpc.stream_stream_rpc_method_handler(behavior)
    return grpc.stream_unary_rpc_method_handler(behavior)


class EdgeAdmission(grpc.ServerInterceptor):
    """Bounds Subscribe streams and Forward calls and runs them on pools of their own; see the module
    docstring. `key_of(metadata)`: the per-node identity of a call's token (None: the shared edge token,
    an ops token, no auth), whose streams count against `max_streams_per_token`."""

    def __init__(
        self,
        limits: EdgeLimits,
        key_of: Callable[[Iterable[Any] | None], str | None] = lambda metadata: None,
        *,
        log_interval: float = 1.0,
    ) -> None:
        self.limits = limits
        self._key_of = key_of
        self.streams = CountingPool(limits.max_streams, "control-subscribe")
        self.forwards = CountingPool(min(FORWARD_WORKERS, limits.max_forward_calls), "control-forward")
        self._lock = threading.Lock()
        self._per_key: dict[str, int] = {}
        self._refusals = LogLimiter(log, log_interval)

    def shutdown(self) -> None:
        """Stop the pools (after the server stopped: running calls are not waited for)."""
        self.streams.shutdown(wait=False, cancel_futures=True)
        self.forwards.shutdown(wait=False, cancel_futures=True)

    def open_streams(self, key: str | None = None) -> int:
        """Subscribe streams open (or admitted and waiting for their thread); of one per-node token."""
        if key is None:
            return self.streams.pending()
        with self._lock:
            return self._per_key.get(key, 0)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in (SUBSCRIBE_METHOD, FORWARD_METHOD):
            return handler
        if method == FORWARD_METHOD:
            forward = handler.unary_unary
            if forward is None:  # not the shape of ControlPlane.Forward: nothing to route
                return handler
            if self.forwards.pending() >= self.limits.max_forward_calls:
                return self._refuse(
                    method,
                    "too many Forward calls at once (events.max_forward_calls = "
                    f"{self.limits.max_forward_calls}); retry with backoff",
                    streaming=False,
                )
            return grpc.unary_unary_rpc_method_handler(
                _OnPool(forward, self.forwards),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if self.streams.pending() >= self.limits.max_streams:
            return self._refuse(
                method,
                f"too many Subscribe streams open (sync.max_streams = {self.limits.max_streams}); "
                "retry with backoff",
                streaming=True,
            )
        inner = handler.stream_stream
        if inner is None:
            return handler
        key = self._key_of(handler_call_details.invocation_metadata)

        def subscribe(
            requests: Iterator[Any], context: grpc.ServicerContext
        ) -> Iterator[Any]:  # runs on the streams pool
            if key is not None and not self._enter(key):
                details = (
                    f"node {key} has {self.limits.max_streams_per_token} Subscribe streams open "
                    f"(sync.max_streams_per_token = {self.limits.max_streams_per_token}); retry with backoff"
                )
                self._refusals.warning(
                    "edge_call_refused", "max_streams_per_token", {"method": method, "error": details}
                )
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
            try:
                yield from inner(requests, context)
            finally:
                if key is not None:
                    self._leave(key)

        return grpc.stream_stream_rpc_method_handler(
            _OnPool(subscribe, self.streams),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _enter(self, key: str) -> bool:
        with self._lock:
            open_ = self._per_key.get(key, 0)
            if open_ >= self.limits.max_streams_per_token:
                return False
            self._per_key[key] = open_ + 1
            return True

    def _leave(self, key: str) -> None:
        with self._lock:
            left = self._per_key[key] - 1
            if left:
                self._per_key[key] = left
            else:
                del self._per_key[key]

    def _refuse(self, method: str, details: str, *, streaming: bool) -> grpc.RpcMethodHandler[Any, Any]:
        key = "max_streams" if streaming else "max_forward_calls"
        self._refusals.warning("edge_call_refused", key, {"method": method, "error": details})
        return _refusal(details, streaming)


def control_grpc_server(
    admission: EdgeAdmission,
    auth: Iterable[grpc.ServerInterceptor] = (),
    options: Iterable[tuple[str, Any]] = (),
) -> grpc.Server:
    """The control plane's gRPC server: the ops pool as its own, the token check (`auth`), then
    `admission`, which moves edge calls to their pools."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=OPS_WORKERS, thread_name_prefix="control-ops"),
        interceptors=[*auth, admission],
        options=list(options),
    )
