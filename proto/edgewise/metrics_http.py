"""Prometheus metrics over HTTP: one collector registry, served at GET /metrics on one HOST:PORT.

The exposition and the HTTP server are prometheus-client's: `make_wsgi_app` (text format 0.0.4 by
default; OpenMetrics when the scraper asks for it in `Accept`, gzip when it accepts that) on its
threaded wsgiref server. Around them this module gives what a process's endpoint needs: it binds exactly
the address it is given (port 0: any free port, read back from `server.server_address[1]`;
`[::1]:9100` for IPv6), answers `/metrics` only (`/` says where to look, any other path is 404), turns
a collector that raises into one `metrics_render_failed` log line and a 500, and names the address
when it cannot bind.

Any process serves its metrics the same way: a `CollectorRegistry` of its own (never the global
`REGISTRY`, whose process and platform collectors would add series), a collector that reads the
process's state at scrape time registered in it, and `serve_metrics(address, registry)`. The edge
node's collector is edgewise.edge.metrics_export.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

__all__ = ["serve_metrics"]


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No line per request: a scrape every few seconds would drown the log."""


def _plain(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _routes(metrics: WSGIApplication) -> WSGIApplication:
    """`metrics` at /metrics, a pointer to it at /, 404 elsewhere."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            try:
                return metrics(environ, start_response)  # exposes the registry before it answers
            except Exception as exc:
                log.error("metrics_render_failed", extra={"error": str(exc)})
                return _plain(start_response, "500 Internal Server Error", b"could not render metrics\n")
        if path == "/":
            return _plain(start_response, "200 OK", b"Prometheus metrics: GET /metrics\n")
        return _plain(start_response, "404 Not Found", b"not found: try /metrics\n")

    return app


def serve_metrics(address: str, registry: Collector) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` at GET /metrics on `address` (HOST:PORT; port 0 = any free port; `[::1]:9100`
    for IPv6) from a daemon thread, each request on a thread of its own. Stop with
    `server.shutdown(); server.server_close()`. Raises OSError naming the address when it is not
    HOST:PORT or cannot be bound."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise OSError(f"metrics address {address!r} is not HOST:PORT")
    server_class = _IPv6Server if host.startswith("[") else ThreadingWSGIServer
    app = _routes(make_wsgi_app(registry))
    try:
        server = make_server(host.strip("[]"), int(port), app, server_class, _QuietHandler)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
