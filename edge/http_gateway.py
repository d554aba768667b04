"""Decide and Track as JSON over HTTP/1.1, for callers that cannot speak gRPC (CDN workers, scripts).

    POST /v1/decide   a DecideRequest in protobuf's canonical JSON mapping -> a DecideResponse
    POST /v1/track    a TrackRequest -> a TrackResponse
    GET  /v1/health   200 {"status": "SERVING"}, 503 {"status": "NOT_SERVING"} (as grpc.health.v1)

Each worker process serves the HTTP port beside its gRPC port (SO_REUSEPORT: the kernel spreads
connections over the workers, as it does for gRPC) and hands every call to the same
`PersonalizerServicer` the gRPC server calls, in process: the same validation, limits, consent,
deadlines (`X-Edgewise-Timeout-Ms`: the caller's budget in milliseconds, as a gRPC deadline), overload
handling and metrics (counted under the same `rpc` and gRPC code labels as gRPC calls). Only the
encoding differs: protobuf's canonical JSON mapping both ways, as `google.protobuf.json_format`
parses and prints it (edge/json_mapping.py: the same results, several times faster). Requests take
lowerCamelCase or proto field names; an unknown field is INVALID_ARGUMENT naming it, so a misspelt
`consents` cannot silently decide without consent. Responses print every field (enums by name, 64-bit
integers as strings).

Errors are JSON too, in the shape Google's JSON APIs use, with the HTTP status mapped from the gRPC code
(`HTTP_STATUS`, as grpc-gateway maps them):

    {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "placements[0].count: ..."}}

The server is the standard library's `ThreadingHTTPServer` speaking HTTP/1.1 with keep-alive (a thread
per connection, at most `max_connections` per worker; idle connections close after `idle_timeout_s`,
longer than nginx's and most CDN pools' 60 s, so the client side closes first). A request body needs a
Content-Length (no chunked bodies) of at most `limits.max_message_bytes`. With `overload = "reject"`,
calls past `server.max_in_flight` in flight on a worker's HTTP port are shed with 429
RESOURCE_EXHAUSTED, as the gRPC server sheds its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, NoReturn

import grpc
from google.protobuf.message import Message

from edgewise.edge.json_mapping import compile_mappings, message_to_dict, parse_message
from edgewise.edge.metrics import WorkerMetrics
from edgewise.edge.servicer import PersonalizerServicer
from edgewise.v1 import personalizer_pb2 as _pb

log = logging.getLogger(__name__)

__all__ = [
    "DECIDE_PATH",
    "HEALTH_PATH",
    "HTTP_STATUS",
    "TIMEOUT_HEADER",
    "TRACK_PATH",
    "GatewayOptions",
    "HttpGateway",
    "build_gateway",
]

DECIDE_PATH: Final = "/v1/decide"
TRACK_PATH: Final = "/v1/track"
HEALTH_PATH: Final = "/v1/health"
TIMEOUT_HEADER: Final = "X-Edgewise-Timeout-Ms"

#: The HTTP status of each gRPC code (google.rpc.Code's documented mapping, as grpc-gateway uses it).
HTTP_STATUS: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    max_in_flight: int = 64  # calls handled at once on this port (per worker)
    reject_past_max_in_flight: bool = True  # overload = "reject": shed past it with 429
    max_message_bytes: int = 4 << 20  # request bodies larger than this: 413 RESOURCE_EXHAUSTED
    max_connections: int = 1024  # open connections per worker (a thread each); more get 503 and close
    idle_timeout_s: float = 75.0  # a kept-alive connection idle this long is closed


class _Aborted(Exception):
    """What `HttpCallContext.abort` raises: the call ends with this code and message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class HttpCallContext(grpc.ServicerContext):
    """The servicer's view of one HTTP call: its deadline, headers and peer; `abort` ends the call with a
    gRPC code, which the gateway maps to an HTTP status. No metadata goes back over HTTP."""

    def __init__(self, deadline: float | None, headers: Sequence[tuple[str, str]], peer: str) -> None:
        self._deadline = deadline  # time.monotonic() value, None: no deadline
        self._headers = headers
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None

    def time_remaining(self) -> float:
        """Seconds left of the caller's budget; infinite without one (gRPC says None, its stub float)."""
        return math.inf if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(code, details)

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        raise _Aborted(status.code, status.details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def is_active(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return tuple(self._headers)

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, Any]:
        return {}

    def set_compression(self, compression: grpc.Compression) -> None:
        return None

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        return None

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        return None

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ()

    def disable_next_message_compression(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class _Method:
    rpc: str  # the metrics' rpc label, as gRPC names it
    request: type[Message]
    call: Callable[[Any, grpc.ServicerContext], Message]


class _Reply:
    """One response: status, JSON body, whether the connection closes after it."""

    __slots__ = ("body", "close", "code", "extra", "status")

    def __init__(
        self, status: int, body: bytes, *, close: bool = False, extra: str = "", code: str = "OK"
    ) -> None:
        self.status = status
        self.body = body
        self.close = close
        self.extra = extra  # more header lines, each ending in \r\n
        self.code = code  # the gRPC code's name


def _error(code: grpc.StatusCode, message: str, status: int | None = None, **kw: Any) -> _Reply:
    http = HTTP_STATUS[code] if status is None else status
    body = {"error": {"code": http, "status": code.name, "message": message}}
    return _Reply(http, json.dumps(body, ensure_ascii=False).encode(), code=code.name, **kw)


class _HttpDate:
    """The Date header's value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._text = formatdate(second, usegmt=True)
            self._second = second
        return self._text


class HttpGateway:
    """The HTTP listener of one worker: built bound, `start()` serves from a thread, `stop(grace)`."""

    def __init__(
        self,
        servicer: PersonalizerServicer,
        listen: str,
        *,
        reuse_port: bool = False,
        options: GatewayOptions | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.options = options or GatewayOptions()
        self._metrics = metrics
        self._methods = {
            DECIDE_PATH: _Method("Decide", _pb.DecideRequest, servicer.Decide),
            TRACK_PATH: _Method("Track", _pb.TrackRequest, servicer.Track),
        }
        compile_mappings(_pb.DecideRequest, _pb.DecideResponse, _pb.TrackRequest, _pb.TrackResponse)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._connections: dict[socket.socket, bool] = {}  # open connection -> busy with a request
        self._serving = False
        self._draining = False
        self._date = _HttpDate()
        self._thread: threading.Thread | None = None
        self._server = _bind(listen, reuse_port, self)
        self.port = int(self._server.server_address[1])

    # --- life cycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True
        )
        self._thread.start()

    def set_serving(self, serving: bool) -> None:
        self._serving = serving

    def stop(self, grace: float) -> None:
        """NOT_SERVING, stop accepting, let calls in flight finish for up to `grace` seconds (responses
        say `Connection: close` meanwhile), then close every connection."""
        deadline = time.monotonic() + grace
        self._serving = False
        self._draining = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        self._close_connections(idle_only=True)
        while time.monotonic() < deadline and self._busy():
            time.sleep(0.01)
        self._close_connections(idle_only=False)

    def _busy(self) -> bool:
        with self._lock:
            return self._in_flight > 0 or any(self._connections.values())

    def _close_connections(self, idle_only: bool) -> None:
        with self._lock:
            chosen = [s for s, busy in self._connections.items() if not (idle_only and busy)]
        for sock in chosen:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # its thread wakes from its read and ends

    # --- connections -----------------------------------------------------------------------------------

    def admit_connection(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._draining or len(self._connections) >= self.options.max_connections:
                return False
            self._connections[sock] = False
            return True

    def connection_busy(self, sock: socket.socket, busy: bool) -> None:
        with self._lock:
            if sock in self._connections:
                self._connections[sock] = busy

    def connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.pop(sock, None)

    def refusal(self) -> bytes:
        reply = _error(
            grpc.StatusCode.UNAVAILABLE,
            "this edge is shutting down; retry on another"
            if self._draining
            else f"too many connections to this worker (more than {self.options.max_connections}); "
            "reuse kept-alive connections, or retry",
            close=True,
        )
        return self.encode(reply)

    # --- calls -----------------------------------------------------------------------------------------

    def health(self) -> _Reply:
        if self._serving:
            return _Reply(200, b'{"status":"SERVING"}')
        return _Reply(503, b'{"status":"NOT_SERVING"}')

    def call(
        self, path: str, body: bytes, headers: Sequence[tuple[str, str]], peer: str, arrived: float
    ) -> _Reply:
        """Answer one POST whose body was read (the path was checked: `method(path)`)."""
        method = self._methods[path]
        admitted = False
        code = grpc.StatusCode.UNKNOWN
        try:
            with self._lock:
                if self.options.reject_past_max_in_flight and self._in_flight >= self.options.max_in_flight:
                    if self._metrics is not None:
                        self._metrics.shed()
                    code = grpc.StatusCode.RESOURCE_EXHAUSTED
                    return _error(
                        code,
                        f"this worker is handling {self.options.max_in_flight} calls "
                        "(server.max_in_flight); retry with backoff or on another edge",
                    )
                self._in_flight += 1
                admitted = True
            reply, code = self._answer(method, body, headers, peer)
            return reply
        finally:
            if admitted:
                with self._lock:
                    self._in_flight -= 1
            if self._metrics is not None:
                self._metrics.observe_rpc(method.rpc, code.name, time.perf_counter() - arrived)

    def _answer(
        self, method: _Method, body: bytes, headers: Sequence[tuple[str, str]], peer: str
    ) -> tuple[_Reply, grpc.StatusCode]:
        deadline, problem = _deadline(headers)
        if problem:
            return _error(grpc.StatusCode.INVALID_ARGUMENT, problem), grpc.StatusCode.INVALID_ARGUMENT
        try:
            request = parse_message(body, method.request)
        except Exception as exc:  # ParseError, or what a parser raises on hostile text (RecursionError)
            message = (
                f"request: not a valid {method.request.DESCRIPTOR.name} in protobuf's JSON mapping "
                f"({_cut(str(exc) or type(exc).__name__, 500)})"
            )
            return _error(grpc.StatusCode.INVALID_ARGUMENT, message), grpc.StatusCode.INVALID_ARGUMENT
        context = HttpCallContext(deadline, headers, peer)
        try:
            response = method.call(request, context)
        except _Aborted as exc:
            return _error(exc.code, exc.details), exc.code
        except Exception as exc:
            log.error(
                "http_call_failed", exc_info=exc, extra={"rpc": method.rpc, "error": f"{type(exc).__name__}"}
            )
            return _error(grpc.StatusCode.INTERNAL, "internal error; retry"), grpc.StatusCode.INTERNAL
        encoded = json.dumps(message_to_dict(response), ensure_ascii=False, separators=(",", ":")).encode()
        return _Reply(200, encoded), grpc.StatusCode.OK

    def method(self, path: str) -> bool:
        return path in self._methods

    def refused(self, path: str, reply: _Reply, arrived: float) -> None:
        """Count a call to a known path refused before it was read (as gRPC counts those)."""
        method = self._methods.get(path)
        if method is not None and self._metrics is not None:
            self._metrics.observe_rpc(method.rpc, reply.code, time.perf_counter() - arrived)

    def encode(self, reply: _Reply) -> bytes:
        """The whole response, headers and body, for one write."""
        close = reply.close or self._draining
        head = (
            f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}\r\n"
            f"Date: {self._date.now()}\r\nServer: edgewise\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(reply.body)}\r\n"
            f"{'Connection: close' + chr(13) + chr(10) if close else ''}{reply.extra}\r\n"
        )
        return head.encode("latin-1") + reply.body

    @property
    def draining(self) -> bool:
        return self._draining


def _deadline(headers: Sequence[tuple[str, str]]) -> tuple[float | None, str]:
    """The call's deadline (time.monotonic() value) from `X-Edgewise-Timeout-Ms`, and a problem."""
    wanted = TIMEOUT_HEADER.lower()
    for name, value in headers:
        if name.lower() == wanted:
            try:
                ms = float(value)
            except ValueError:
                ms = -1.0
            if not (0 <= ms <= 3_600_000):
                return None, (
                    f"{TIMEOUT_HEADER}: {_cut(value, 40)!r} must be a number of milliseconds, 0 to 3600000"
                )
            return time.monotonic() + ms / 1000, ""
    return None, ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Handler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 requests in a row (keep-alive) until the client or the gateway closes."""

    protocol_version = "HTTP/1.1"
    server_version = "edgewise"
    sys_version = ""
    disable_nagle_algorithm = True  # one write per response; no wait for the client's ACK
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.gateway.options.idle_timeout_s)  # idle keep-alive ends

    def handle(self) -> None:
        gateway = self.server.gateway
        try:
            super().handle()
        except OSError:  # reset by the peer, or shut down by `stop`
            pass
        finally:
            gateway.connection_closed(self.connection)

    def handle_one_request(self) -> None:
        gateway = self.server.gateway
        try:
            super().handle_one_request()
        finally:
            gateway.connection_busy(self.connection, False)
        if gateway.draining:
            self.close_connection = True

    def parse_request(self) -> bool:
        self.server.gateway.connection_busy(self.connection, True)
        return super().parse_request()

    def _send(self, reply: _Reply) -> None:
        if reply.close:
            self.close_connection = True
        self.wfile.write(self.server.gateway.encode(reply))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            self._send(self.server.gateway.health())
        elif self.server.gateway.method(path):
            self._send(
                _error(grpc.StatusCode.UNIMPLEMENTED, f"{path} takes POST", 405, extra="Allow: POST\r\n")
            )
        else:
            self._send(_not_found(path))

    def do_HEAD(self) -> None:
        self.close_connection = True
        self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def do_POST(self) -> None:
        arrived = time.perf_counter()
        gateway = self.server.gateway
        path = self.path.split("?", 1)[0]
        body = self._body(gateway.options.max_message_bytes)
        if body is None:
            return
        if isinstance(body, _Reply):
            self._send(body)
            gateway.refused(path, body, arrived)
            return
        if not gateway.method(path):
            self._send(_not_found(path))
            return
        content_type = (self.headers.get("Content-Type") or "application/json").split(";", 1)[0].strip()
        if content_type.lower() != "application/json":
            reply = _error(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Content-Type {content_type!r}: send application/json (protobuf's JSON mapping)",
                415,
            )
            self._send(reply)
            gateway.refused(path, reply, arrived)
            return
        host, port = self.client_address[:2]
        peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        self._send(gateway.call(path, body, self.headers.items(), peer, arrived))

    def _body(self, limit: int) -> bytes | _Reply | None:
        """The request body, or the answer why it is not read (the connection then closes), or None when
        the client left before sending it all."""
        if self.headers.get("Transfer-Encoding"):
            return _error(
                grpc.StatusCode.INVALID_ARGUMENT,
                "send the body with a Content-Length (chunked bodies are not read)",
                411,
                close=True,
            )
        text = self.headers.get("Content-Length")
        try:
            length = int(text) if text is not None else 0
        except ValueError:
            length = -1
        if text is None or length < 0:
            return _error(
                grpc.StatusCode.INVALID_ARGUMENT, "a Content-Length header is required", 411, close=True
            )
        if length > limit:
            return _error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request: {length} bytes, more than this node's limit of {limit} bytes "
                "(limits.max_message_bytes)",
                413,
                close=True,
            )
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    def log_message(self, format: str, *args: Any) -> None:
        return None  # per-request lines would fill the logs; errors go out as our own JSON lines


def _not_found(path: str) -> _Reply:
    return _error(
        grpc.StatusCode.NOT_FOUND,
        f"no such path {_cut(path, 100)!r}: POST {DECIDE_PATH}, POST {TRACK_PATH}, GET {HEALTH_PATH}",
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a connection thread never holds the process at exit
    block_on_close = False
    request_queue_size = 1024  # the listen backlog (socketserver's default is 5)

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, reuse_port: bool) -> None:
        self.address_family = family
        self.allow_reuse_port = reuse_port
        self.gateway: HttpGateway = None  # type: ignore[assignment]  # set by _bind before serving
        super().__init__(address, _Handler, bind_and_activate=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("http_connection_failed", extra={"peer": str(client_address)})

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.gateway.admit_connection(request):
            with contextlib.suppress(OSError):
                request.sendall(self.gateway.refusal())
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)


def _bind(listen: str, reuse_port: bool, gateway: HttpGateway) -> _Server:
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        server = _Server((host, int(port_text)), family, reuse_port)
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot listen on {listen}: {exc}") from exc
    server.gateway = gateway
    return server


def build_gateway(
    servicer: PersonalizerServicer,
    listen: str,
    *,
    reuse_port: bool = False,
    options: GatewayOptions | None = None,
    metrics: WorkerMetrics | None = None,
) -> HttpGateway:
    """Bind `listen` (HOST:PORT, port 0 = any free port); not serving yet (`start`, `set_serving`)."""
    return HttpGateway(servicer, listen, reuse_port=reuse_port, options=options, metrics=metrics)
