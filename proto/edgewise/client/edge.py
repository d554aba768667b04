"""`EdgeClient` and `AsyncEdgeClient`: Decide, Track and health of one edge node, in core types."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias, cast

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from edgewise.client import dicts
from edgewise.client.channels import Metadata, PathLike, Transport, aio_channel, call_metadata, sync_channel
from edgewise.client.errors import client_error
from edgewise.core.activity import Event
from edgewise.core.decisions import DecideRequest, DecideResponse
from edgewise.core.store import TrackResponse
from edgewise.edge.client_convert import (
    decide_request_to_pb,
    decide_response_from_pb,
    track_request_to_pb,
    track_response_from_pb,
)
from edgewise.v1 import personalizer_pb2 as _pb
from edgewise.v1 import personalizer_pb2_grpc as _pb_grpc

__all__ = ["PERSONALIZER_SERVICE", "AsyncEdgeClient", "EdgeClient", "HealthStatus"]

PERSONALIZER_SERVICE: Final = _pb.DESCRIPTOR.services_by_name["Personalizer"].full_name
"""`edgewise.v1.Personalizer`, the service name `health()` asks about by default."""

_HEALTH_CHECK: Final = "/grpc.health.v1.Health/Check"
HealthStatus: TypeAlias = Literal["SERVING", "NOT_SERVING", "UNKNOWN", "SERVICE_UNKNOWN"]
DecideInput: TypeAlias = DecideRequest | Mapping[str, Any]
EventInput: TypeAlias = Event | Mapping[str, Any]


class _EdgeCalls:
    """What the sync and the asyncio client share: arguments checked and converted before any call."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None,
        timeout: float,
        tls_ca: PathLike | None,
        tls_cert: PathLike | None,
        tls_key: PathLike | None,
        credentials: grpc.ChannelCredentials | None,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        if not target:
            raise ValueError("target: HOST:PORT of an edge node is required")
        if not timeout > 0:
            raise ValueError(f"timeout: must be a positive number of seconds, got {timeout}")
        self.target = target
        self.timeout = timeout
        self._metadata: Metadata = call_metadata(token)
        self._transport = Transport(
            tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, credentials=credentials, options=options
        )

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    @staticmethod
    def _decide_message(request: DecideInput) -> _pb.DecideRequest:
        if not isinstance(request, DecideRequest):
            request = dicts.decide_request(request)
        elif isinstance(request.consent, str):  # would be sent as one purpose per letter
            raise ValueError(f"consent: expected a set of purposes, got the string {request.consent!r}")
        return decide_request_to_pb(request)

    @staticmethod
    def _track_message(events: EventInput | Iterable[EventInput], consent: Iterable[str]) -> _pb.TrackRequest:
        if isinstance(events, Event | Mapping):
            events = [events]
        if isinstance(consent, str):
            raise ValueError(f"consent: expected a list of purposes, got the string {consent!r}")
        converted = [
            e if isinstance(e, Event) else dicts.event(e, f"events[{i}]") for i, e in enumerate(events)
        ]
        return track_request_to_pb(converted, consent)

    @staticmethod
    def _health_status(response: health_pb2.HealthCheckResponse) -> HealthStatus:
        return cast(HealthStatus, health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class EdgeClient(_EdgeCalls):
    """A client of one edge node (or of a balancer in front of several): blocking calls, thread-safe.

        with EdgeClient("127.0.0.1:50051") as edge:
            response = edge.decide({"user_id": "u1", "consent": ["personalization"],
                                    "placements": [{"placement_id": "home", "count": 5}]})
            edge.track([{"type": "click", "user_id": "u1", "item_id": response.placements[0].items[0].id,
                         "decision_id": response.decision_id, "placement_id": "home"}],
                       consent=["analytics", "personalization"])

    Requests are core dataclasses (`DecideRequest`, `Event`) or dicts in their shape (see
    `edgewise.client.dicts`); answers are core dataclasses (`DecideResponse` with its `decision_id`,
    `TrackResponse`). A personalization miss is not an error: the placement's `fallback` says why.

    A failed call raises `ClientError` (`.code`, `.details`); a request that cannot be converted raises
    ValueError before anything is sent. `timeout` (seconds) is every call's deadline unless a call gives
    its own; the edge answers with the fast default when too little of it is left. TLS: `tls_ca` (and
    `tls_cert` + `tls_key` for mutual TLS) or `credentials`, for an edge behind a TLS-terminating proxy;
    `token` is sent as `authorization: Bearer <token>` on every call, for a proxy that checks it."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        tls_ca: PathLike | None = None,
        tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            target,
            token=token,
            timeout=timeout,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            credentials=credentials,
            options=options,
        )
        self._channel = sync_channel(target, self._transport)
        self._stub = _pb_grpc.PersonalizerStub(self._channel)
        self._health_check = self._channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    def decide(self, request: DecideInput, *, timeout: float | None = None) -> DecideResponse:
        """One decision per placement of `request`; the response carries the `decision_id` to send back
        with the events it leads to."""
        message = self._decide_message(request)
        try:
            reply = self._stub.Decide(message, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise client_error("Decide", exc) from None
        return decide_response_from_pb(reply)

    def track(
        self,
        events: EventInput | Iterable[EventInput],
        *,
        consent: Iterable[str] = (),
        timeout: float | None = None,
    ) -> TrackResponse:
        """Record `events` (one or several), under the purposes the user grants now (`consent`:
        "analytics" lets them be forwarded, "personalization" lets them shape live activity). Idempotent
        by event id: `duplicates` counts the ones already stored."""
        message = self._track_message(events, consent)
        try:
            reply = self._stub.Track(message, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise client_error("Track", exc) from None
        return track_response_from_pb(reply)

    def health(self, service: str = PERSONALIZER_SERVICE, *, timeout: float | None = None) -> HealthStatus:
        """The standard gRPC health status of `service` ("" = the whole server): "SERVING" once the node
        has a snapshot loaded, "NOT_SERVING" while it starts or drains."""
        try:
            reply = self._health_check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise client_error("Check", exc) from None
        return self._health_status(reply)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncEdgeClient(_EdgeCalls):
    """`EdgeClient` on `grpc.aio`: the same arguments, the same methods as coroutines.

        async with AsyncEdgeClient("127.0.0.1:50051") as edge:
            response = await edge.decide(request)

    Create it inside the event loop that uses it (a grpc.aio channel belongs to one loop)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        tls_ca: PathLike | None = None,
        tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(
            target,
            token=token,
            timeout=timeout,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            credentials=credentials,
            options=options,
        )
        self._channel = aio_channel(target, self._transport)
        self._stub = _pb_grpc.PersonalizerStub(self._channel)
        self._health_check = self._channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    async def decide(self, request: DecideInput, *, timeout: float | None = None) -> DecideResponse:
        """See `EdgeClient.decide`."""
        message = self._decide_message(request)
        try:
            reply = await self._stub.Decide(message, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise client_error("Decide", exc) from None
        return decide_response_from_pb(reply)

    async def track(
        self,
        events: EventInput | Iterable[EventInput],
        *,
        consent: Iterable[str] = (),
        timeout: float | None = None,
    ) -> TrackResponse:
        """See `EdgeClient.track`."""
        message = self._track_message(events, consent)
        try:
            reply = await self._stub.Track(message, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise client_error("Track", exc) from None
        return track_response_from_pb(reply)

    async def health(
        self, service: str = PERSONALIZER_SERVICE, *, timeout: float | None = None
    ) -> HealthStatus:
        """See `EdgeClient.health`."""
        try:
            reply = await self._health_check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise client_error("Check", exc) from None
        return self._health_status(reply)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncEdgeClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
