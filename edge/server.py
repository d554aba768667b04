"""A gRPC server for the edge: Personalizer, standard health checking and server reflection."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgewise.edge.servicer import PersonalizerServicer
from edgewise.v1 import personalizer_pb2 as _pb
from edgewise.v1 import personalizer_pb2_grpc as _pb_grpc

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


class _ShedCounter(grpc.ServerInterceptor):
    """Counts the calls gRPC sheds past `maximum_concurrent_rpcs` (it rejects them before any handler
    runs, so the servicer never sees them).

    The sync server runs interceptors under its state lock right after it has decided whether the
    concurrency limit is exceeded, from the same count this reads; the count is a private attribute of
    grpc's server state, so when it is missing nothing is counted (and nothing breaks)."""

    def __init__(self, on_shed: Callable[[], None]) -> None:
        self._on_shed = on_shed
        self._state: Any = None

    def bind(self, server: grpc.Server) -> None:
        state = getattr(server, "_state", None)
        if hasattr(state, "active_rpc_count") and hasattr(state, "maximum_concurrent_rpcs"):
            self._state = state

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        state = self._state
        if state is not None:
            limit = state.maximum_concurrent_rpcs
            if limit is not None and state.active_rpc_count >= limit:
                self._on_shed()
        return continuation(handler_call_details)


def build_server(
    servicer: PersonalizerServicer,
    listen: str,
    *,
    threads: int = 8,
    reuse_port: bool = False,
    max_concurrent_rpcs: int | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    on_shed: Callable[[], None] | None = None,
) -> EdgeServer:
    """Bind `listen` (HOST:PORT, port 0 = any free port) and register every service; not started yet.

    `reuse_port`: several worker processes share the port (SO_REUSEPORT, the kernel spreads
    connections). `max_concurrent_rpcs`: calls past it are shed with RESOURCE_EXHAUSTED at once, and
    counted with `on_shed`."""
    counter = _ShedCounter(on_shed) if on_shed is not None else None
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc"),
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs or threads * 16,
        interceptors=[counter] if counter is not None else None,
    )
    if counter is not None:
        counter.bind(server)
    _pb_grpc.add_PersonalizerServicer_to_server(servicer, server)
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
