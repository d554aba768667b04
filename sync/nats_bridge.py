"""The central tier's connection to NATS: one asyncio event loop on a thread of its own, which the gRPC
servicer's threads hand coroutines to.

Why a loop thread and not `grpc.aio`: the control plane's servicer, fan-out, commit cache, fleet and jobs
are thread-based (a sync `grpc.server` with pools of their own, `sync/admission.py`), and the central tier
reuses them unchanged; only the calls to JetStream are asyncio (nats-py). `NatsBridge.run(coro, timeout)`
runs one on the loop and blocks the calling thread until it is done, so a Push handler reads as before.
Nothing blocking runs on the loop itself: LMDB writes happen on the caller's threads.

`nats-py` is imported lazily, so the embedded control plane never needs it; without it,
`NatsUnavailable` says what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from edgewise.sync.nats_security import NatsSecurity, connect_problem

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

log = logging.getLogger(__name__)

__all__ = [
    "NATS_EXTRA_HINT",
    "NatsBridge",
    "NatsUnavailable",
    "follow_stream",
    "import_nats",
    "nats_url_problem",
    "parse_nats_urls",
    "transient_setup_error",
]

NATS_EXTRA_HINT: Final = "pip install 'edgewise[nats]'"
T = TypeVar("T")

# JetStream's answers while a cluster is still forming or a server is coming back: a stream that needs
# more peers than are online now (10005 "no suitable peers for placement"), and no JetStream meta leader
# yet (10008 "JetStream system temporarily unavailable"). A replica's start retries them
# (`central_log.set_up`) instead of taking them for an answer.
_TRANSIENT_SETUP_CODES: Final = frozenset({10005, 10008})


class NatsUnavailable(RuntimeError):
    """NATS cannot be used: the client is not installed, or no server of the list answers."""


def import_nats() -> ModuleType:
    """The nats-py package, or NatsUnavailable naming the extra that brings it."""
    try:
        return importlib.import_module("nats")
    except ImportError as exc:
        raise NatsUnavailable(
            f"the central tier (--nats) needs the NATS client, which is not installed: {NATS_EXTRA_HINT}"
        ) from exc


def parse_nats_urls(text: str) -> list[str]:
    """`nats://h1:4222,nats://h2:4222` -> the URLs; ValueError naming what is wrong."""
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise ValueError("--nats needs at least one URL, e.g. nats://127.0.0.1:4222")
    for url in urls:
        problem = nats_url_problem(url)
        if problem is not None:
            raise ValueError(f"--nats: {problem}")
    return urls


def nats_url_problem(url: str) -> str | None:
    """What is wrong with one NATS URL (nats://HOST:PORT or tls://HOST:PORT), or None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("nats", "tls") or not rest:
        return f"{url!r} is not a NATS URL (nats://HOST:PORT or tls://HOST:PORT)"
    return None


class NatsBridge:
    """An event loop thread with one NATS connection (reconnecting forever once connected)."""

    def __init__(
        self,
        urls: list[str],
        *,
        connect_timeout: float = 5.0,
        name: str = "edgewise-control",
        security: NatsSecurity | None = None,
    ) -> None:
        self.urls = urls
        self.security = security or NatsSecurity()
        self._nats = import_nats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-loop", daemon=True)
        self._thread.start()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        try:
            self._nc = self.run(self._connect(connect_timeout, name), connect_timeout * (len(urls) + 1) + 5)
        except Exception:
            self.close()
            raise
        self._js = self._nc.jetstream(timeout=5.0)

    async def _connect(self, timeout: float, name: str) -> Client:
        seen: list[BaseException] = []  # what went wrong while connecting: names the cause if it fails
        options = self.security.connect_options(self.urls)

        fatal = asyncio.Event()  # a certificate no server can pass: nats-py may hang after it, so stop

        async def on_error(exc: Exception) -> None:
            if len(seen) < 50:
                seen.append(exc)
            if isinstance(exc, ssl.SSLError):
                fatal.set()
            log.warning("nats_error", extra={"error": repr(exc)[:300]})

        async def on_disconnected() -> None:
            log.warning("nats_disconnected", extra={})

        async def on_reconnected() -> None:
            url = self._nc.connected_url.netloc if self._nc is not None and self._nc.connected_url else ""
            log.info("nats_reconnected", extra={"server": url})
            if self._nc is not None and "tls" in options and not _tls_required(self._nc):
                log.error("nats_tls_missing", extra={"server": url, "error": "this server does not use TLS"})

        connecting = asyncio.ensure_future(
            self._nats.connect(
                self.urls,
                name=name,
                connect_timeout=max(1, int(timeout)),
                allow_reconnect=True,
                max_reconnect_attempts=2,  # at start: each server a few times, then a clear error
                reconnect_time_wait=0.2,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                **options,
            )
        )
        stopped = asyncio.ensure_future(fatal.wait())
        await asyncio.wait([connecting, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        servers = ", ".join(self.urls)
        if not connecting.done():  # a TLS failure: the cause is known, the client is abandoned
            connecting.cancel()
            problem = connect_problem(seen, self.security) or f"TLS failed: {seen[-1]!r}"
            raise NatsUnavailable(f"{problem} (servers: {servers})")
        try:
            client: Client = connecting.result()
        except Exception as exc:  # nats-py raises several kinds (NoServersError, OSError, TimeoutError)
            cause = connect_problem([*seen, exc], self.security)
            if cause is not None:
                raise NatsUnavailable(f"{cause} (servers: {servers})") from exc
            raise NatsUnavailable(
                f"no NATS server answers at {servers}: {type(exc).__name__}: {exc}".rstrip(": ")
            ) from exc
        if "tls" in options and not _tls_required(client):
            # nats-py upgrades to TLS only when the server asks for it: refuse a server that does not
            url = client.connected_url.netloc if client.connected_url else ""
            await client.close()
            raise NatsUnavailable(
                f"the NATS server at {url} does not use TLS, and TLS is configured (nats.ca, nats.cert or a "
                "tls:// URL): give the servers a tls block, or drop the TLS settings"
            )
        client.options["max_reconnect_attempts"] = -1  # once connected: reconnect for ever (nats-py reads it)
        return client

    @property
    def nc(self) -> Client:
        assert self._nc is not None
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None
        return self._js

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the loop; its result, or its exception (TimeoutError after `timeout` seconds, the
        coroutine cancelled)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            if future.done():  # the coroutine's own TimeoutError (a NATS request timed out): as it is
                raise
            future.cancel()
            raise TimeoutError(f"NATS did not answer within {timeout:g} s") from None

    def close(self) -> None:
        """Close the connection (if any) and stop the loop thread."""
        if self._nc is not None and not self._nc.is_closed:
            try:
                self.run(self._nc.close(), 5.0)
            except Exception as exc:
                log.warning("nats_close_failed", extra={"error": repr(exc)[:300]})
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()


def _tls_required(client: Client) -> bool:
    """Whether the server `client` is connected to made the connection TLS (its INFO says so)."""
    info = getattr(client, "_server_info", None) or {}
    return bool(info.get("tls_required"))


def transient_setup_error(exc: BaseException) -> bool:
    """Whether JetStream refused a setup step only because the cluster is not ready for it yet."""
    return getattr(exc, "err_code", None) in _TRANSIENT_SETUP_CODES


def follow_stream(
    bridge: NatsBridge,
    stream: str,
    subject: str,
    start: int,
    deliver: Callable[[Msg], None],
    *,
    batch: int = 256,
    on_idle: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """Deliver every message of `stream` on `subject` from sequence `start` on, in order and each once, to
    `deliver` (called on the loop thread: it must not block). Returns the function that stops it.

    An ephemeral pull consumer (memory, one replica, no acks) fetched in batches by a task on the loop;
    whatever goes wrong with it (its server died, a request timed out, the connection was lost) ends it,
    and a new one is made from the sequence after the last message delivered, so nothing is skipped or
    delivered twice; the loop owns its position, so a restart of the consumer never depends on the
    client library's recovery. `on_idle` (on the loop thread) is called whenever a fetch found nothing
    more: every message the stream held when it was called had been delivered."""
    stopped = asyncio.Event()

    async def run() -> None:
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        position = max(1, start)
        while not stopped.is_set():
            sub = None
            try:
                sub = await bridge.js.pull_subscribe(
                    subject,
                    stream=stream,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=position,
                        ack_policy=AckPolicy.NONE,
                        inactive_threshold=30.0,
                        mem_storage=True,
                        num_replicas=1,
                    ),
                )
                while not stopped.is_set():
                    try:
                        messages = await sub.fetch(batch, timeout=1.0)
                    except (TimeoutError, NatsTimeout):
                        if on_idle is not None:
                            on_idle()
                        continue
                    for message in messages:
                        seq = int(message.metadata.sequence.stream)
                        if seq >= position:
                            deliver(message)
                            position = seq + 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "stream_follow_retry", extra={"stream": stream, "at": position, "error": repr(exc)[:300]}
                )
                await asyncio.sleep(0.5)
            finally:
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

    task_future = asyncio.run_coroutine_threadsafe(run(), bridge.loop)

    def stop() -> None:
        bridge.loop.call_soon_threadsafe(stopped.set)
        try:
            task_future.result(5.0)
        except Exception:
            task_future.cancel()

    return stop
