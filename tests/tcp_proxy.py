"""A fault-injecting TCP proxy for tests (in the spirit of asyncpg's test fuzzer).

    proxy = FaultProxy("127.0.0.1", server_port)   # listens on 127.0.0.1:proxy.port at once
    channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
    proxy.drop_all()        # reset every live connection (RST: SO_LINGER 0), both sides
    proxy.stall(2.0)        # forward nothing for 2 s (None: until unstall()); connections stay open
    proxy.unstall()
    proxy.hold_replies(True)  # pass client -> target bytes on, hold the target's replies (a lost ACK)
    proxy.set_refuse(True)  # accept new connections and reset them at once
    proxy.close()           # or use it as a context manager

One thread runs a selector loop that owns every socket; the control methods hand it a command and wait
until it ran, so after `drop_all()` returns every connection that was live is closed. Bytes are forwarded
through a bounded buffer per direction (back-pressure: a stalled or slow side stops the reads), and a
half-close (EOF one way) is passed on with `shutdown(SHUT_WR)`.

Counters (read any time): `accepted`, `active`, `refused`, `dropped` (by `drop_all`), `upstream_failures`
(the target did not accept), `bytes_up` (client -> target) and `bytes_down` (target -> client).
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

BUFFER_LIMIT = 256 * 1024
_RECV_SIZE = 64 * 1024


def _reset(sock: socket.socket) -> None:
    """Close `sock` abruptly: with SO_LINGER 0 the kernel sends RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass(eq=False)
class _Pipe:
    """One direction of a connection: bytes read from `src`, waiting in `buffer`, written to `dst`."""

    src: socket.socket
    dst: socket.socket
    up: bool  # client -> target
    buffer: bytearray = field(default_factory=bytearray)
    eof: bool = False  # src sent FIN
    shut: bool = False  # FIN passed on to dst


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    upstream: socket.socket
    up: _Pipe = field(init=False)
    down: _Pipe = field(init=False)
    closed: bool = False

    def __post_init__(self) -> None:
        self.up = _Pipe(self.client, self.upstream, up=True)
        self.down = _Pipe(self.upstream, self.client, up=False)


@dataclass(frozen=True)
class ProxyStats:
    accepted: int
    active: int
    refused: int
    dropped: int
    upstream_failures: int
    bytes_up: int
    bytes_down: int


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, connect_timeout: float = 2.0) -> None:
        self.target = (target_host, target_port)
        self.connect_timeout = connect_timeout
        self.accepted = 0
        self.refused = 0
        self.dropped = 0
        self.upstream_failures = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._conns: set[_Conn] = set()
        self._refuse = False
        self._stalled_until: float | None = None  # monotonic deadline; inf: until unstall()
        self._hold_down = False  # hold_replies(): target -> client bytes stay in the proxy
        self._closed = False
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._sel = selectors.DefaultSelector()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()

    # --- control (any thread) -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def active(self) -> int:
        return len(self._conns)

    @property
    def stalled(self) -> bool:
        until = self._stalled_until
        return until is not None and time.monotonic() < until

    def stats(self) -> ProxyStats:
        return ProxyStats(
            self.accepted,
            self.active,
            self.refused,
            self.dropped,
            self.upstream_failures,
            self.bytes_up,
            self.bytes_down,
        )

    def drop_all(self) -> int:
        """Reset every live connection on both sides; returns how many there were."""
        dropped: list[int] = []

        def run() -> None:
            conns = list(self._conns)
            for conn in conns:
                self._close_conn(conn, abort=True)
            self.dropped += len(conns)
            dropped.append(len(conns))

        self._call(run)
        return dropped[0] if dropped else 0

    def stall(self, seconds: float | None = None) -> None:
        """Stop forwarding bytes (connections stay open, new ones are still accepted) for `seconds`, or
        until `unstall()` when None."""

        def run() -> None:
            self._stalled_until = time.monotonic() + seconds if seconds is not None else float("inf")

        self._call(run)

    def unstall(self) -> None:
        def run() -> None:
            self._stalled_until = None

        self._call(run)

    def hold_replies(self, hold: bool) -> None:
        """While set, bytes from the target to clients are held in the proxy (up to its buffer limit, then
        not read) while client bytes still reach the target: requests arrive, their answers do not (until
        cleared: then what was held is passed on). Connections stay open."""

        def run() -> None:
            self._hold_down = hold

        self._call(run)

    def set_refuse(self, refuse: bool) -> None:
        """While set, new connections are accepted and reset at once; live ones are left alone."""

        def run() -> None:
            self._refuse = refuse

        self._call(run)

    def wait_for(self, predicate: Callable[[FaultProxy], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate(self)` until it holds (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.01)
        return predicate(self)

    def close(self) -> None:
        """Reset every connection, stop listening and stop the loop thread."""
        if self._closed:
            return

        def run() -> None:
            for conn in list(self._conns):
                self._close_conn(conn, abort=True)
            self._closed = True

        self._call(run)
        self._thread.join(timeout=5)
        for sock in (self._listener, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()
        self._sel.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, fn: Callable[[], None]) -> None:
        if self._closed:
            raise RuntimeError("the proxy is closed")
        done = threading.Event()
        self._commands.put((fn, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(timeout=5):
            raise RuntimeError("the proxy loop did not answer within 5 s")

    # --- the loop (its own thread) --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            timeout = None
            if self._stalled_until is not None:
                if time.monotonic() >= self._stalled_until:
                    self._stalled_until = None
                    self._update_all()
                elif self._stalled_until != float("inf"):
                    timeout = max(0.0, self._stalled_until - time.monotonic())
            for key, mask in self._sel.select(timeout):
                if key.data == "wake":
                    self._drain_commands()
                elif key.data == "accept":
                    self._accept()
                else:
                    conn = key.data
                    if not conn.closed:
                        self._service(conn, key.fileobj, mask)
        self._drain_commands()

    def _drain_commands(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                fn, done = self._commands.get_nowait()
            except queue.Empty:
                break
            try:
                fn()
            finally:
                done.set()
        if not self._closed:
            self._update_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.accepted += 1
            if self._refuse:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
            except OSError:
                self.upstream_failures += 1
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, upstream)
            self._conns.add(conn)
            self._sel.register(client, selectors.EVENT_READ, conn)
            self._sel.register(upstream, selectors.EVENT_READ, conn)
            self._update(conn)

    def _service(self, conn: _Conn, sock: object, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                pipe = conn.up if sock is conn.client else conn.down
                self._read(pipe)
            if mask & selectors.EVENT_WRITE and not conn.closed:
                pipe = conn.down if sock is conn.client else conn.up
                self._write(pipe)
        except OSError:
            # A reset or error on one side: pass it on as a reset to the other.
            self._close_conn(conn, abort=True)
            return
        if conn.up.shut and conn.down.shut:
            self._close_conn(conn, abort=False)
        elif not conn.closed:
            self._update(conn)

    def _read(self, pipe: _Pipe) -> None:
        if self.stalled or pipe.eof or len(pipe.buffer) >= BUFFER_LIMIT:
            return
        try:
            data = pipe.src.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            pipe.eof = True
        else:
            pipe.buffer += data
        self._write(pipe)

    def _write(self, pipe: _Pipe) -> None:
        if self.stalled or (self._hold_down and not pipe.up):
            return
        if pipe.buffer:
            try:
                sent = pipe.dst.send(pipe.buffer)
            except (BlockingIOError, InterruptedError):
                return
            del pipe.buffer[:sent]
            if pipe.up:
                self.bytes_up += sent
            else:
                self.bytes_down += sent
        if pipe.eof and not pipe.buffer and not pipe.shut:
            pipe.dst.shutdown(socket.SHUT_WR)
            pipe.shut = True

    def _update_all(self) -> None:
        for conn in list(self._conns):
            self._update(conn)

    def _update(self, conn: _Conn) -> None:
        """Register for what each socket can usefully do now (nothing while stalled)."""
        if conn.closed:
            return
        stalled = self.stalled
        for sock, inbound, outbound in (
            (conn.client, conn.up, conn.down),
            (conn.upstream, conn.down, conn.up),
        ):
            events = 0
            if not stalled:
                if not inbound.eof and len(inbound.buffer) < BUFFER_LIMIT:
                    events |= selectors.EVENT_READ
                held = self._hold_down and not outbound.up
                if not held and (outbound.buffer or (outbound.eof and not outbound.shut)):
                    events |= selectors.EVENT_WRITE
            # A registration with no events is not allowed: park the socket instead.
            registered = self._is_registered(sock)
            if events and registered:
                self._sel.modify(sock, events, conn)
            elif events:
                self._sel.register(sock, events, conn)
            elif registered:
                self._sel.unregister(sock)

    def _is_registered(self, sock: socket.socket) -> bool:
        try:
            self._sel.get_key(sock)
        except KeyError:
            return False
        return True

    def _close_conn(self, conn: _Conn, *, abort: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        for sock in (conn.client, conn.upstream):
            if self._is_registered(sock):
                self._sel.unregister(sock)
            if abort:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()
