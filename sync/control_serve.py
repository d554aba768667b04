"""`edgewise control serve`: the control plane process (its store, event store, gRPC server, health,
background jobs) until SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgewise.core.bandit_learning import LearningSchedule
from edgewise.logs import configure_logging
from edgewise.sync.auth import (
    EDGE_TOKEN_ENV,
    OPS_TOKEN_ENV,
    load_token,
    make_interceptors,
    server_credentials,
)
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore, ControlStoreError
from edgewise.sync.event_retention import DEFAULT_RETAIN_MS
from edgewise.sync.event_store import EventStore, EventStoreError
from edgewise.v1 import sync_pb2_grpc

log = logging.getLogger(__name__)

__all__ = [
    "CONTROL_SERVE_DOC",
    "add_control_serve_arguments",
    "duration_ms",
    "retention_ms",
    "run_control_serve",
]

SERVICE_NAME: Final = "edgewise.v1.ControlPlane"

CONTROL_SERVE_DOC = """Run the control plane: its own LMDB store (current state per namespace, a change log
with a sequence number per accepted change, tombstones, retained full snapshots for rollback) and the
ControlPlane gRPC service edges subscribe to and ops push to (`edgewise ctl`).

Tokens: edges present the edge token, ops the ops token (`authorization: Bearer ...`); an edge token can
only subscribe. Without any token, authentication is off (a warning is logged): use that on loopback only.

examples:
  edgewise control serve --data /var/lib/edgewise-control --listen 0.0.0.0:50061 \\
      --edge-token-file /etc/edgewise/edge.token --ops-token-file /etc/edgewise/ops.token
  edgewise control serve --data ctl --listen 127.0.0.1:0 --ready-file ctl.json
"""


_UNIT_MS: Final = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def retention_ms(text: str) -> int:
    """`--retain-events`: a duration (`duration_ms`), or 0 to keep everything."""
    return 0 if text.strip() == "0" else duration_ms(text)


def duration_ms(text: str) -> int:
    """A duration such as "90s", "30m", "1.5h", "1d" or "2w" in milliseconds (argparse type)."""
    value, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if unit not in _UNIT_MS or not (0 < number < 1e9):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a positive number and a unit, s m h d or w (e.g. 30m, 6h, 1d)"
        )
    ms = round(number * _UNIT_MS[unit])
    if ms < 1_000:
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than one second")
    return ms


# --- control serve -----------------------------------------------------------------------------------


def add_control_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="the control plane's LMDB directory"
    )
    p.add_argument(
        "--listen", default="127.0.0.1:50061", metavar="HOST:PORT", help="gRPC address (port 0: any)"
    )
    p.add_argument("--edge-token-file", type=Path, help=f"edge bearer token (else ${EDGE_TOKEN_ENV})")
    p.add_argument("--ops-token-file", type=Path, help=f"ops bearer token (else ${OPS_TOKEN_ENV})")
    p.add_argument("--tls-cert", type=Path, help="server certificate (TLS on)")
    p.add_argument("--tls-key", type=Path, help="server private key")
    p.add_argument("--tls-ca", type=Path, help="CA that client certificates must chain to (mutual TLS)")
    p.add_argument(
        "--max-snapshots", type=int, default=2, help="full snapshots streaming at once (default 2)"
    )
    p.add_argument(
        "--retain-snapshots", type=int, default=3, help="full snapshots kept for rollback (default 3)"
    )
    p.add_argument(
        "--retain-log-changes",
        type=int,
        default=5_000_000,
        help="changes the log keeps before compacting its oldest commits (default 5,000,000)",
    )
    p.add_argument(
        "--bandit-every-rewards",
        type=int,
        default=100,
        help="publish new bandit posteriors after this many new rewards (default 100)",
    )
    p.add_argument(
        "--bandit-every-seconds",
        type=float,
        default=60.0,
        help="... or this long after the last publish, if anything new arrived (default 60)",
    )
    p.add_argument(
        "--retain-events",
        type=retention_ms,
        default=DEFAULT_RETAIN_MS,
        metavar="DURATION",
        help="delete stored events and exposures older than this, once folded into profiles (e.g. 30d, "
        "12w; 0 keeps them all; default 90d)",
    )
    p.add_argument(
        "--heartbeat", type=float, default=5.0, help="seconds between heartbeats to edges (default 5)"
    )
    p.add_argument("--map-size-mb", type=int, default=65536, help="LMDB map size in MiB (default 65536)")
    p.add_argument("--ready-file", type=Path, help="write {address, port, pid, version} here once serving")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _positive(name: str, value: float, minimum: float = 1) -> str | None:
    return None if value >= minimum else f"{name} must be >= {minimum:g}, got {value:g}"


def run_control_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    for problem in (
        _positive("--max-snapshots", args.max_snapshots),
        _positive("--retain-snapshots", args.retain_snapshots, 0),
        _positive("--retain-log-changes", args.retain_log_changes),
        _positive("--heartbeat", args.heartbeat, 0.05),
        _positive("--bandit-every-rewards", args.bandit_every_rewards),
        _positive("--bandit-every-seconds", args.bandit_every_seconds, 0.1),
    ):
        if problem:
            print(f"edgewise control serve: {problem}", file=sys.stderr)
            return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("edgewise control serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        edge_token = load_token(
            None, str(args.edge_token_file) if args.edge_token_file else None, EDGE_TOKEN_ENV
        )
        ops_token = load_token(None, str(args.ops_token_file) if args.ops_token_file else None, OPS_TOKEN_ENV)
        credentials = (
            server_credentials(
                str(args.tls_cert), str(args.tls_key), str(args.tls_ca) if args.tls_ca else None
            )
            if args.tls_cert
            else None
        )
        store = ControlStore(
            args.data,
            map_size=args.map_size_mb << 20,
            retain_snapshots=args.retain_snapshots,
            retain_log_changes=args.retain_log_changes,
        )
    except (ValueError, OSError, ControlStoreError) as exc:
        print(f"edgewise control serve: {exc}", file=sys.stderr)
        return 2
    if edge_token is None and ops_token is None:
        log.warning("auth_off", extra={"error": "no edge or ops token configured: every caller is trusted"})
    elif ops_token is None:
        log.warning("ops_disabled", extra={"error": "no ops token configured: nobody can push"})
    try:
        events = EventStore(args.data / "events", map_size=args.map_size_mb << 20)
    except EventStoreError as exc:
        print(f"edgewise control serve: {exc}", file=sys.stderr)
        store.close()
        return 2
    service = ControlPlaneService(
        store,
        max_snapshots=args.max_snapshots,
        heartbeat_seconds=args.heartbeat,
        events=events,
        bandit_schedule=LearningSchedule(
            every_rewards=args.bandit_every_rewards,
            every_exposures=None,
            every_seconds=args.bandit_every_seconds,
        ),
        retain_events_ms=args.retain_events,
    )
    interceptors = make_interceptors([edge_token] if edge_token else [], [ops_token] if ops_token else [])
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=256, thread_name_prefix="control"),
        interceptors=interceptors,
        options=(
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 0),
        ),
    )
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        if credentials is not None:
            port = server.add_secure_port(args.listen, credentials)
        else:
            port = server.add_insecure_port(args.listen)
    except RuntimeError as exc:
        print(f"edgewise control serve: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        store.close()
        return 2
    server.start()
    service.start_background()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{args.listen.rpartition(':')[0]}:{port}"
    version = store.head_version()
    log.info(
        "control_serving",
        extra={"address": address, "version": version, "pid": os.getpid(), "tls": credentials is not None},
    )
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"address": address, "port": port, "pid": os.getpid(), "version": version}))
        os.replace(tmp, args.ready_file)
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    stop.wait()
    log.info("control_stopping")
    health_servicer.enter_graceful_shutdown()
    server.stop(2.0).wait(5.0)
    service.stop_background()
    store.close()
    events.close()
    log.info("control_stopped")
    return 0
