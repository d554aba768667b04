"""`edgewise control serve`: the control plane process (its store, event store, gRPC server, health,
background jobs) until SIGTERM."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from types import FrameType
from typing import Any, Final

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgewise.config import DurationError
from edgewise.config import duration_ms as config_duration_ms
from edgewise.core.bandit_learning import LearningSchedule
from edgewise.core.embedding_training import IMPLICIT_METHODS, TrainingUnavailable, import_implicit
from edgewise.logs import configure_logging
from edgewise.metrics_http import serve_metrics
from edgewise.stacks import bound_the_exit, dump_stacks_on_sigusr1
from edgewise.sync.admission import EdgeAdmission, EdgeLimits, control_grpc_server
from edgewise.sync.auth import (
    EDGE_TOKEN_ENV,
    OPS_TOKEN_ENV,
    NodeIdentity,
    TokenAuth,
    load_node_tokens,
    load_token,
    make_interceptors,
    server_credentials,
)
from edgewise.sync.control_config import add_config_arguments, cli_config
from edgewise.sync.control_metrics import CallMeter, control_registry
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore, ControlStoreError
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
EXIT_BOUND_S: Final = 60.0
"""How long a stopping control plane may take (calls drain for 2 s, each background job stops within 5 s)
before it writes every thread's stack to the log and exits 1."""

CONTROL_SERVE_DOC = """Run the control plane: its own LMDB store (current state per namespace, a change log
with a sequence number per accepted change, tombstones, retained full snapshots for rollback) and the
ControlPlane gRPC service edges subscribe to and ops push to (`edgewise ctl`).

Configuration: a TOML file (--config), then EDGEWISE_CONTROL_<SECTION>_<KEY> environment variables, then
the flags below, each overriding the one before; --print-config shows every effective value and where it
came from (docs/operations.md lists the keys). A wrong value stops the start with exit status 2, naming
the key and its source.

Tokens: edges present the edge token, ops the ops token (`authorization: Bearer ...`); an edge token can
only subscribe and forward. With --node-tokens-file each edge has a token of its own, bound to its node
id and shards; with the shared edge token any holder can act as any node (a warning is logged). Without
any token, authentication is off (a warning is logged): use that on loopback only. The health service
answers without a token.

Signals: SIGTERM / SIGINT stop it (calls drain for 2 s; exit 0); SIGUSR1 writes every thread's stack to
stderr and it goes on. A stop that takes over 60 s writes the stacks and exits 1 instead of hanging.

examples:
  edgewise control serve --data /var/lib/edgewise-control --listen 0.0.0.0:50061 \\
      --edge-token-file /etc/edgewise/edge.token --ops-token-file /etc/edgewise/ops.token
  edgewise control serve --config /etc/edgewise/control.toml [--print-config]
  edgewise control serve --data ctl --listen 127.0.0.1:0 --ready-file ctl.json
"""


def retention_ms(text: str) -> int:
    """`--retain-events`: a duration (`duration_ms`), or 0 to keep everything."""
    return 0 if text.strip() == "0" else duration_ms(text)


def duration_ms(text: str) -> int:
    """A duration such as "90s", "30m", "1.5h", "1d" or "2w" in milliseconds (argparse type)."""
    try:
        return config_duration_ms(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _node_key(auth: TokenAuth | None) -> Callable[[Iterable[Any] | None], str | None]:
    """The node id of a call's per-node token (its streams count against sync.max_streams_per_token)."""

    def key_of(metadata: Iterable[Any] | None) -> str | None:
        identity = auth.identity(metadata) if auth is not None else None
        return identity.node_id if identity is not None else None

    return key_of


# --- control serve -----------------------------------------------------------------------------------


def add_control_serve_arguments(p: argparse.ArgumentParser) -> None:
    """`--config`, `--print-config` and one flag per key of `ControlConfig` (`--data`, `--listen`, ...)."""
    add_config_arguments(p)


def run_control_serve(args: argparse.Namespace) -> int:
    config = cli_config(args)
    if isinstance(config, int):
        return config
    configure_logging(config.log.level)
    dump_stacks_on_sigusr1()
    # ALS and BPR train with implicit (the `train` extra); the hybrid method needs NumPy only.
    if config.refresh.embeddings and config.refresh.embeddings_method in IMPLICIT_METHODS:
        try:
            import_implicit()
        except TrainingUnavailable as exc:
            print(f"edgewise control serve: refresh.embeddings: {exc}", file=sys.stderr)
            return 2
    data, tls = config.data, config.tls

    def open_store() -> ControlStore:
        return ControlStore(
            data.dir,
            map_size=data.map_size_mb << 20,
            retain_snapshots=data.retain_snapshots,
            retain_log_changes=data.retain_log_changes,
        )

    try:
        edge_token = load_token(
            None, str(config.auth.edge_token_file) if config.auth.edge_token_file else None, EDGE_TOKEN_ENV
        )
        ops_token = load_token(
            None, str(config.auth.ops_token_file) if config.auth.ops_token_file else None, OPS_TOKEN_ENV
        )
        node_tokens: dict[str, NodeIdentity] = (
            load_node_tokens(config.auth.node_tokens_file) if config.auth.node_tokens_file else {}
        )
        interceptors = make_interceptors(
            [edge_token] if edge_token else [], [ops_token] if ops_token else [], node_tokens
        )
        credentials = (
            server_credentials(str(tls.cert), str(tls.key), str(tls.ca) if tls.ca else None)
            if tls.cert
            else None
        )
        store = open_store()
    except (ValueError, OSError, ControlStoreError) as exc:
        print(f"edgewise control serve: {exc}", file=sys.stderr)
        return 2
    if not interceptors:
        log.warning("auth_off", extra={"error": "no edge or ops token configured: every caller is trusted"})
    elif ops_token is None:
        log.warning("ops_disabled", extra={"error": "no ops token configured: nobody can push"})
    if edge_token is not None and not node_tokens:
        log.warning(
            "node_identity_off",
            extra={
                "error": "no per-node tokens (auth.node_tokens_file): any holder of the edge token can "
                "subscribe and forward as any node, to any shard"
            },
        )
    elif node_tokens and edge_token is not None:
        log.warning(
            "node_identity_partial",
            extra={
                "error": f"{len(node_tokens)} per-node tokens, and the shared edge token is still accepted: "
                "its holders can act as any node; remove it once every edge has its own token"
            },
        )
    central = None
    if config.nats.url:  # a replica of the central tier (docs/central.md)
        from edgewise.sync.central_serve import ReplicaStartError, nats_security, open_replica

        try:
            central = open_replica(
                config.nats.url,
                config.nats.replicas,
                store,
                open_store,
                partitions=config.nats.partitions,
                retain_events_s=config.events.retain.total_seconds(),
                duplicate_window_s=config.nats.duplicate_window.total_seconds(),
                security=functools.partial(nats_security, config.nats),
            )
        except (ReplicaStartError, ControlStoreError) as exc:
            print(f"edgewise control serve: --nats: {exc}", file=sys.stderr)
            return 2
        store = central.store
    try:
        events = EventStore(
            data.dir / "events",
            map_size=data.map_size_mb << 20,
            partitions=config.nats.partitions if central is not None else 0,  # indexed by partition
        )
    except EventStoreError as exc:
        print(f"edgewise control serve: {exc}", file=sys.stderr)
        store.close()
        if central is not None:
            central.close()
        return 2
    auth = next((i for i in interceptors if isinstance(i, TokenAuth)), None)
    service_class: Callable[..., ControlPlaneService] = ControlPlaneService
    if central is not None:
        from edgewise.sync.central_service import CentralControlService

        service_class = functools.partial(
            CentralControlService, replica=central.replica, central_events=central.events
        )
    service = service_class(
        store,
        max_snapshots=config.sync.max_snapshots,
        heartbeat_seconds=config.sync.heartbeat_seconds,
        events=events,
        bandit_schedule=LearningSchedule(
            every_rewards=config.bandits.every_rewards,
            every_exposures=None,
            every_seconds=config.bandits.every_seconds,
        ),
        retain_events_ms=config.events.retain // timedelta(milliseconds=1),
        write_timeout_seconds=config.sync.write_timeout_seconds,
        fleet_expire_after_ms=config.fleet.expire_after // timedelta(milliseconds=1),
        fleet_max_entries=config.fleet.max_entries,
        identity_of=auth.identity if auth is not None else None,
        rollout_policy=config.rollout.policy(),
        refresh=config.refresh,
    )
    admission = EdgeAdmission(
        EdgeLimits(
            max_streams=config.sync.max_streams,
            max_streams_per_token=config.sync.max_streams_per_token,
            max_forward_calls=config.events.max_forward_calls,
        ),
        key_of=_node_key(auth),
    )
    listen, ready_file = config.server.listen, config.server.ready_file
    meter = CallMeter()  # first: the calls the token check refuses are counted too
    server = control_grpc_server(
        admission,
        [meter, *interceptors],
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
            port = server.add_secure_port(listen, credentials)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        print(f"edgewise control serve: cannot listen on {listen}: {exc}", file=sys.stderr)
        store.close()
        if central is not None:
            central.close()
        return 2
    metrics_address, metrics_server = "", None
    if config.metrics.listen:
        try:
            metrics_server, _ = serve_metrics(
                config.metrics.listen, control_registry(service, meter, admission)
            )
        except OSError as exc:
            print(f"edgewise control serve: {exc}", file=sys.stderr)
            server.stop(None)
            store.close()
            events.close()
            if central is not None:
                central.close()
            return 2
        metrics_address = f"{config.metrics.listen.rpartition(':')[0]}:{metrics_server.server_address[1]}"
    if central is not None:
        central.replica.start()  # follow the change log before serving
    server.start()
    service.start_background()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{listen.rpartition(':')[0]}:{port}"
    version = store.head_version()
    log.info(
        "control_serving",
        extra={
            "address": address,
            "version": version,
            "pid": os.getpid(),
            "tls": credentials is not None,
            "metrics": metrics_address or None,
        },
    )
    if ready_file:
        tmp = ready_file.with_suffix(".tmp")
        ready = {"address": address, "port": port, "pid": os.getpid(), "version": version}
        tmp.write_text(json.dumps({**ready, "metrics": metrics_address}))
        os.replace(tmp, ready_file)
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    stop.wait()
    log.info("control_stopping")
    bound_the_exit(EXIT_BOUND_S)
    health_servicer.enter_graceful_shutdown()
    server.stop(2.0).wait(5.0)
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    admission.shutdown()
    service.stop_background()
    if central is not None:
        central.close()
    store.close()
    events.close()
    log.info("control_stopped")
    return 0
