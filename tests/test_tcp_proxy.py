"""The fault-injecting TCP proxy (tests/tcp_proxy.py) with a plain echo server and a real gRPC server."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from tcp_proxy import FaultProxy

FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[int]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo) as p:
        yield p


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def is_cut(sock: socket.socket) -> bool:
    """The connection was closed by the other side (a reset, or at least an EOF)."""
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def is_turned_away(proxy: FaultProxy) -> bool:
    """A new connection is accepted and cut at once (the reset may even arrive during connect)."""
    try:
        sock = connect(proxy)
    except ConnectionResetError:
        return True
    with sock:
        return is_cut(sock)


# --- with an echo server ------------------------------------------------------------------------------


def test_forwards_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as a, connect(proxy) as b:
        assert roundtrip(a, b"hello") == b"hello"
        assert roundtrip(b, b"world!") == b"world!"
        assert proxy.wait_for(lambda p: p.active == 2)
    assert proxy.wait_for(lambda p: p.active == 0)
    stats = proxy.stats()
    assert (stats.accepted, stats.refused, stats.dropped, stats.upstream_failures) == (2, 0, 0, 0)
    assert stats.bytes_up == stats.bytes_down == 11


def test_large_payload_with_backpressure(proxy: FaultProxy) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    with connect(proxy, timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = recv_exactly(sock, len(payload))
        sender.join()
    assert received == payload
    # The loop thread counts a send just after it returned: the client may have read the bytes first.
    assert proxy.wait_for(lambda p: p.bytes_up == p.bytes_down == len(payload))


def test_half_close_is_passed_on(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(100):
            data += chunk
    assert data == b"last words"
    assert proxy.wait_for(lambda p: p.active == 0)


def test_drop_all_resets_live_connections(proxy: FaultProxy) -> None:
    a, b = connect(proxy), connect(proxy)
    with a, b:
        assert roundtrip(a) == roundtrip(b) == b"ping"
        assert proxy.drop_all() == 2
        assert proxy.active == 0
        for sock in (a, b):
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
    assert proxy.dropped == 2
    with connect(proxy) as c:
        assert roundtrip(c) == b"ping"
    assert proxy.wait_for(lambda p: p.active == 0)
    assert proxy.drop_all() == 0
    assert proxy.dropped == 2


def test_stall_keeps_connections_but_forwards_nothing(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.stall()
        assert proxy.stalled
        sock.sendall(b"held")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4)
        with connect(proxy, timeout=0.3) as late:  # new connections are accepted, but get nothing either
            late.sendall(b"late")
            with pytest.raises(TimeoutError):
                late.recv(4)
            proxy.unstall()
            late.settimeout(2)
            assert recv_exactly(late, 4) == b"late"
        sock.settimeout(2)
        assert recv_exactly(sock, 4) == b"held"
        assert proxy.active >= 1


def test_stall_for_some_seconds(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        started = time.monotonic()
        proxy.stall(0.4)
        sock.sendall(b"soon")
        sock.settimeout(0.1)
        with pytest.raises(TimeoutError):
            sock.recv(4)
        sock.settimeout(3)
        assert recv_exactly(sock, 4) == b"soon"
        assert time.monotonic() - started >= 0.35
        assert not proxy.stalled


def test_refuse_new_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as live:
        assert roundtrip(live) == b"ping"
        proxy.set_refuse(True)
        assert is_turned_away(proxy)
        assert roundtrip(live) == b"ping"  # live connections are left alone
        proxy.set_refuse(False)
        with connect(proxy) as again:
            assert roundtrip(again) == b"ping"
    assert proxy.refused == 1
    assert proxy.accepted == 3


def test_target_down() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]  # bound, not listening: connections are refused
        with FaultProxy("127.0.0.1", dead_port) as proxy:
            assert is_turned_away(proxy)
            assert proxy.wait_for(lambda p: p.upstream_failures == 1)
            assert proxy.active == 0


def test_close_resets_and_stops_listening(echo: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo)
    port = proxy.port
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.close()
        assert is_cut(sock)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    proxy.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        proxy.drop_all()


# --- with a real gRPC server --------------------------------------------------------------------------


@pytest.fixture
def grpc_port() -> Iterator[int]:
    def echo_call(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo_call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


@pytest.fixture
def grpc_proxy(grpc_port: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", grpc_port) as p:
        yield p


@pytest.fixture
def echo_call(grpc_proxy: FaultProxy) -> Iterator[grpc.UnaryUnaryMultiCallable[bytes, bytes]]:
    with grpc.insecure_channel(grpc_proxy.address, options=FAST_RECONNECT) as channel:
        yield channel.unary_unary("/test.Echo/Echo")


def test_grpc_recovers_after_drop_all(
    grpc_proxy: FaultProxy, echo_call: grpc.UnaryUnaryMultiCallable[bytes, bytes]
) -> None:
    assert echo_call(b"one", timeout=5) == b"one"
    assert grpc_proxy.active == 1
    assert grpc_proxy.drop_all() == 1
    # The channel sees the reset and reconnects; at most the first call after it may fail.
    try:
        echo_call(b"two", timeout=5)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert echo_call(b"three", timeout=5, wait_for_ready=True) == b"three"
    assert grpc_proxy.accepted == 2
    assert grpc_proxy.dropped == 1


def test_grpc_stall_times_out_then_resumes(
    grpc_proxy: FaultProxy, echo_call: grpc.UnaryUnaryMultiCallable[bytes, bytes]
) -> None:
    assert echo_call(b"one", timeout=5) == b"one"
    grpc_proxy.stall()
    with pytest.raises(grpc.RpcError) as info:
        echo_call(b"stuck", timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    grpc_proxy.unstall()
    assert echo_call(b"two", timeout=5) == b"two"
    assert grpc_proxy.accepted == 1  # the same connection throughout


def test_grpc_refused_then_accepted(
    grpc_proxy: FaultProxy, echo_call: grpc.UnaryUnaryMultiCallable[bytes, bytes]
) -> None:
    assert echo_call(b"one", timeout=5) == b"one"
    grpc_proxy.set_refuse(True)
    grpc_proxy.drop_all()
    # Every call fails while the proxy turns connections away (the first may fail on the dropped one).
    deadline = time.monotonic() + 5
    while grpc_proxy.refused < 2 and time.monotonic() < deadline:
        with pytest.raises(grpc.RpcError) as info:
            echo_call(b"refused", timeout=1)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert grpc_proxy.refused >= 2
    grpc_proxy.set_refuse(False)
    assert echo_call(b"two", timeout=5, wait_for_ready=True) == b"two"


def test_hold_replies_passes_requests_on_and_holds_the_answers(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        # the proxy counts bytes after it sent them: the client can have the reply before it is counted
        assert proxy.wait_for(lambda p: p.bytes_down >= 4)
        up, down = proxy.bytes_up, proxy.bytes_down
        proxy.hold_replies(True)
        sock.sendall(b"held")
        assert proxy.wait_for(lambda p: p.bytes_up == up + 4)  # the request reached the target
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4)
        assert proxy.bytes_down == down
        proxy.hold_replies(False)
        sock.settimeout(2)
        assert recv_exactly(sock, 4) == b"held"
        assert roundtrip(sock) == b"ping"
