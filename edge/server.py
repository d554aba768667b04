"""A gRPC server for the edge: Personalizer, standard health checking and server reflection."""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass
from typing import Final

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


def build_server(
    servicer: PersonalizerServicer,
    listen: str,
    *,
    threads: int = 8,
    reuse_port: bool = False,
    max_concurrent_rpcs: int | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> EdgeServer:
    """Bind `listen` (HOST:PORT, port 0 = any free port) and register every service; not started yet.

    `reuse_port`: several worker processes share the port (SO_REUSEPORT, the kernel spreads
    connections). `max_concurrent_rpcs`: calls past it are shed with RESOURCE_EXHAUSTED at once."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc"),
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs or threads * 16,
    )
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
