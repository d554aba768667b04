"""A gRPC server for the edge: Personalizer, standard health checking and server reflection."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgewise.edge.metrics import WorkerMetrics
from edgewise.edge.servicer import PersonalizerServicer
from edgewise.edge.stage_times import DECODE, INTERCEPTOR, SERIALIZE, StageTimes, now_ns
from edgewise.v1 import personalizer_pb2 as _pb

__all__ = ["PERSONALIZER_SERVICE", "EdgeServer", "build_server"]

PERSONALIZER_SERVICE: Final = _pb.DESCRIPTOR.services_by_name["Personalizer"].full_name
MAX_MESSAGE_BYTES: Final = 4 << 20


@dataclass
class EdgeServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int

    def set_serving(self, serving: bool) -> None:
        """Health of the whole server ("") and of the Personalizer service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", PERSONALIZER_SERVICE):
            self.health.set(service, status)

    def stop(self, grace: float) -> None:
        """NOT_SERVING first, so balancers drain us, then stop with `grace` seconds for in-flight calls."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


class _Undecodable:
    """What the lenient request deserializer hands on for bytes that are not a valid message, so the
    call reaches the handler, which answers INVALID_ARGUMENT (gRPC itself answers INTERNAL "Exception
    deserializing request!" before any handler runs)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`deserialize`, returning an `_Undecodable` instead of raising."""

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, or whatever else a parser raises on hostile bytes
            return _Undecodable(str(exc))

    return decode


_UNSET: Final[Any] = object()

#: The Personalizer's methods as gRPC names them, and the RPC label and request type of each.
_METHODS: Final = {
    f"/{PERSONALIZER_SERVICE}/{name}": (name, method.input_type.full_name)
    for name, method in _pb.DESCRIPTOR.services_by_name["Personalizer"].methods_by_name.items()
}


class _CallMeter(grpc.ServerInterceptor):
    """Every Decide and Track call from its arrival: counted by the status code its caller gets and timed
    (`WorkerMetrics.observe_rpc`), including the calls the servicer never sees; and undecodable requests
    answered INVALID_ARGUMENT.

    Arrival is when this interceptor runs: on the server's polling thread, as soon as gRPC Python takes
    the new call from gRPC's core and before the call is queued for a handler thread. So the time a call
    waits in the queue for a free thread is measured; the time before Python sees it (the call in the
    core's queue while the polling thread waits for the GIL) is not, and cannot be from Python.

    - Shed calls: past `maximum_concurrent_rpcs` the sync server rejects the call with
      RESOURCE_EXHAUSTED right after this runs, under its state lock and from the count read here (a
      private attribute of grpc's server state: when it is missing, shed calls are not counted).
    - Every other call gets a stream-unary handler around the servicer's unary one, so its behavior runs
      before the request message is read, and sees the calls whose message never arrives:
      undecodable bytes (answered INVALID_ARGUMENT), a message over `max_message_bytes` (gRPC answers it
      RESOURCE_EXHAUSTED itself and hands no message on), a deadline that passed in the queue
      (DEADLINE_EXCEEDED). gRPC's server API does not tell an oversize message from a call its client
      cancelled before the message was read: both count as RESOURCE_EXHAUSTED.
    - A call whose handler returns after its caller left (deadline passed, cancelled) counts with the
      code the caller got, DEADLINE_EXCEEDED or CANCELLED, not OK.
    """

    def __init__(
        self, metrics: WorkerMetrics | None, max_message_bytes: int, stages: StageTimes | None = None
    ) -> None:
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self.stages = stages  # per-stage CPU for benchmarks (edge/stage_times.py); None: off
        self._state: Any = None
        self._decoders: dict[str, Callable[[bytes], Any] | None] = {}
        self._serializers: dict[str, Callable[[Any], bytes] | None] = {}

    def bind(self, server: grpc.Server) -> None:
        state = getattr(server, "_state", None)
        if hasattr(state, "active_rpc_count") and hasattr(state, "maximum_concurrent_rpcs"):
            self._state = state

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        arrived = time.perf_counter()
        stages = self.stages
        t = now_ns() if stages is not None else 0
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        known = _METHODS.get(method)
        if known is None or handler is None or handler.unary_unary is None:
            return handler  # health, reflection, unknown methods: not counted
        rpc, message = known
        state = self._state
        if state is not None:
            limit = state.maximum_concurrent_rpcs
            if limit is not None and state.active_rpc_count >= limit:
                if self._metrics is not None:
                    self._metrics.shed()
                    self._metrics.observe_rpc(rpc, "RESOURCE_EXHAUSTED", time.perf_counter() - arrived)
                return handler  # gRPC rejects it at once
        decoder = self._decoders.get(method, _UNSET)
        serializer = handler.response_serializer
        if decoder is _UNSET:
            # A method without a deserializer (Decide's wire path) gets its bytes as they are: nothing to
            # decode, nothing undecodable, so no decoder (two Python calls less per call) unless timed.
            decoder = _lenient(handler.request_deserializer) if handler.request_deserializer else None
            if stages is not None:
                decoder = _timed(stages, DECODE, decoder or _identity)
                self._serializers[method] = _timed(stages, SERIALIZE, serializer) if serializer else None
            self._decoders[method] = decoder
        if stages is not None:
            serializer = self._serializers[method]
        call = _MeteredCall(self, rpc, message, handler.unary_unary, decoder, serializer, arrived)
        if stages is not None:
            stages.add(INTERCEPTOR, t)
        return call

    def observe(self, rpc: str, code: str, arrived: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_rpc(rpc, code, time.perf_counter() - arrived)

    def request(self, requests: Iterator[Any], context: grpc.ServicerContext, message: str) -> Any:
        """The call's one request message, or abort with the status its caller gets."""
        try:
            request = next(requests)
        except (StopIteration, grpc.RpcError):
            if _deadline_passed(context):
                context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call was read"
                )
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request: no {message} message arrived: larger than this node's limit of "
                f"{self._max_message_bytes} bytes (limits.max_message_bytes), or the call was cancelled",
            )
        if isinstance(request, _Undecodable):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {message} message ({request.error})"
            )
        return request


if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler  # not subscriptable at run time


class _MeteredCall(_Handler):
    """The handler of one Decide or Track call: stream-unary around the servicer's unary behavior, so it
    runs before the request message is read (`_CallMeter`). A small class rather than
    `grpc.stream_unary_rpc_method_handler` and a closure: this is built for every call."""

    request_streaming = True
    response_streaming = False
    unary_unary = None
    unary_stream = None
    stream_stream = None

    def __init__(
        self,
        meter: _CallMeter,
        rpc: str,
        message: str,
        unary: Callable[[Any, grpc.ServicerContext], Any],
        decoder: Callable[[bytes], Any] | None,
        serializer: Callable[[Any], bytes] | None,
        arrived: float,
    ) -> None:
        self._meter, self._rpc, self._message, self._arrived = meter, rpc, message, arrived
        self._unary = unary
        self.request_deserializer = decoder
        self.response_serializer = serializer

    def stream_unary(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        code = "UNKNOWN"
        stages = self._meter.stages
        t = 0
        try:
            response = self._unary(self._meter.request(requests, context, self._message), context)
            t = now_ns() if stages is not None else 0
            code = _code_after_return(context)
            return response
        except Exception:
            code = _code_of(context)
            raise
        finally:
            self._meter.observe(self._rpc, code, self._arrived)
            if stages is not None and t:
                stages.add(INTERCEPTOR, t)


_T = TypeVar("_T")
_R = TypeVar("_R")


def _timed(stages: StageTimes, stage: int, function: Callable[[_T], _R]) -> Callable[[_T], _R]:
    """`function`, its thread CPU charged to `stage`."""

    def timed(argument: _T) -> _R:
        t = now_ns()
        try:
            return function(argument)
        finally:
            stages.add(stage, t)

    return timed


def _identity(data: bytes) -> bytes:
    return data


def _deadline_passed(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _code_after_return(context: grpc.ServicerContext) -> str:
    """The code the caller of a handler that returned gets: OK (or a code the handler set), unless the
    caller is gone by now (its deadline passed, or it cancelled)."""
    if not context.is_active():
        return "DEADLINE_EXCEEDED" if _deadline_passed(context) else "CANCELLED"
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


def _code_of(context: grpc.ServicerContext) -> str:
    """The status code an aborted call ends with (UNKNOWN for an unexpected exception)."""
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _add_personalizer(servicer: PersonalizerServicer, server: grpc.Server) -> None:
    """The generated `add_PersonalizerServicer_to_server`, but Decide is served by `decide_wire`, which
    reads the request's bytes and answers with the response's (no deserializer, no serializer: gRPC hands
    on bytes as they are; undecodable ones are its to refuse). A servicer without it (a stand-in in
    tests) is served as generated."""
    wire = getattr(servicer, "decide_wire", None)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Decide": grpc.unary_unary_rpc_method_handler(
            wire or servicer.Decide,
            request_deserializer=None if wire is not None else _pb.DecideRequest.FromString,
            response_serializer=None if wire is not None else _pb.DecideResponse.SerializeToString,
        ),
        "Track": grpc.unary_unary_rpc_method_handler(
            servicer.Track,
            request_deserializer=_pb.TrackRequest.FromString,
            response_serializer=_pb.TrackResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PERSONALIZER_SERVICE, handlers),))
    server.add_registered_method_handlers(PERSONALIZER_SERVICE, handlers)


def build_server(
    servicer: PersonalizerServicer,
    listen: str,
    *,
    threads: int = 8,
    reuse_port: bool = False,
    max_concurrent_rpcs: int | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    metrics: WorkerMetrics | None = None,
    stages: StageTimes | None = None,
) -> EdgeServer:
    """Bind `listen` (HOST:PORT, port 0 = any free port) and register every service; not started yet.

    `reuse_port`: several worker processes share the port (SO_REUSEPORT, the kernel spreads
    connections). `max_concurrent_rpcs`: calls past it are shed with RESOURCE_EXHAUSTED at once.
    `metrics`: every Decide and Track call is counted there by the code its caller gets, and timed from
    its arrival, shed calls included (`_CallMeter`). `stages`: per-stage CPU of each Decide for benchmarks
    (edge/stage_times.py)."""
    meter = _CallMeter(metrics, max_message_bytes, stages)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc"),
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs or threads * 16,
        interceptors=[meter],
    )
    meter.bind(server)
    _add_personalizer(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (PERSONALIZER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {listen}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot listen on {listen} (in use, or not an address of this host)")
    edge = EdgeServer(server, health_servicer, port)
    edge.set_serving(False)
    return edge
