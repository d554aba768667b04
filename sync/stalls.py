"""Closing subscription streams whose edge stopped reading.

gRPC sends a stream's next message only when the previous one fit into the HTTP/2 flow-control window,
so a subscriber that stops reading (a hung edge, or a caller that never reads on purpose) leaves its
stream's handler waiting forever, holding its thread and, mid-snapshot, one of the few full-snapshot
slots. `StallWatch` times every send: a stream marks `sending()` before it yields a message and `sent()`
when gRPC asks for the next one; a stream that stays in one send longer than `timeout` seconds is
cancelled (the edge sees CANCELLED and reconnects), which ends its handler and frees its slot. Logged as
`edge_stream_stalled` with the node id and the seconds waited.

One daemon thread checks every registered stream a few times per timeout; it runs only while streams are
registered, so a service without streams has no thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

import grpc

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_WRITE_TIMEOUT_SECONDS", "StallWatch", "WatchedStream"]

DEFAULT_WRITE_TIMEOUT_SECONDS: Final = 60.0
_MAX_TICK_SECONDS: Final = 1.0


class WatchedStream:
    """One stream's send timer (see `StallWatch.watch`)."""

    __slots__ = ("_since", "cancelled", "context", "node_id")

    def __init__(self, context: grpc.ServicerContext, node_id: str) -> None:
        self.context = context
        self.node_id = node_id
        self._since: float | None = None  # time.monotonic() the pending send began
        self.cancelled = False

    def sending(self) -> None:
        self._since = time.monotonic()

    def sent(self) -> None:
        self._since = None

    def waited(self, now: float) -> float:
        since = self._since
        return 0.0 if since is None else now - since


class StallWatch:
    """Cancels watched streams stuck in one send for more than `timeout` seconds."""

    def __init__(self, timeout: float = DEFAULT_WRITE_TIMEOUT_SECONDS) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.timeout = timeout
        self._tick = min(_MAX_TICK_SECONDS, timeout / 4)
        self._lock = threading.Lock()
        self._streams: set[WatchedStream] = set()
        self._thread: threading.Thread | None = None

    def watch(self, context: grpc.ServicerContext, node_id: str) -> WatchedStream:
        """Start timing the sends of the stream of `context` (until `unwatch`)."""
        stream = WatchedStream(context, node_id)
        with self._lock:
            self._streams.add(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)
                self._thread.start()
        return stream

    def unwatch(self, stream: WatchedStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def _run(self) -> None:
        try:
            while self._check():
                pass
        except BaseException:
            with self._lock:
                self._thread = None  # the next watch starts a new one
            raise

    def _check(self) -> bool:
        """One look at every stream after a tick; False once none is left to watch."""
        time.sleep(self._tick)
        with self._lock:
            if not self._streams:
                self._thread = None  # under the lock: a watch from now on starts a new thread
                return False
            now = time.monotonic()
            stalled = [s for s in self._streams if not s.cancelled and s.waited(now) > self.timeout]
            for stream in stalled:
                stream.cancelled = True
        for stream in stalled:
            log.warning(
                "edge_stream_stalled",
                extra={
                    "node": stream.node_id,
                    "seconds": round(stream.waited(time.monotonic()), 1),
                    "timeout_seconds": self.timeout,
                },
            )
            try:
                stream.context.cancel()
            except Exception as exc:  # the call ended meanwhile: nothing left to cancel
                log.info("edge_stream_cancel_failed", extra={"node": stream.node_id, "error": repr(exc)})
        return True
