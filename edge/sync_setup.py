"""Building the edge's syncer from its configuration (`[sync]` section, `--control` and friends).

`sync.control` lists one control plane or several replicas of it; the syncer and the outbox forwarder
share one `ControlReplicas`, so the node follows one replica at a time with both links and moves on with
both (sync/control_replicas.py).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from edgewise.core.store import Store
from edgewise.edge.config import EdgeConfig
from edgewise.sync.auth import EDGE_TOKEN_ENV, load_token
from edgewise.sync.control_replicas import ControlReplicas
from edgewise.sync.edge_forward import OutboxForwarder
from edgewise.sync.edge_sync import EdgeSyncer, SyncTarget
from edgewise.sync.shard import ShardError, parse_shard

__all__ = ["NodeSync", "SyncSetupError", "start_syncer", "sync_target"]


class SyncSetupError(RuntimeError):
    pass


def sync_target(config: EdgeConfig) -> SyncTarget:
    sync = config.sync
    try:
        shard = parse_shard(sync.shard)
        token = load_token(None, str(sync.token_file) if sync.token_file else None, EDGE_TOKEN_ENV)
    except (ShardError, ValueError, OSError) as exc:
        raise SyncSetupError(str(exc)) from exc
    if (sync.tls_cert is None) != (sync.tls_key is None):
        raise SyncSetupError("sync.tls_cert and sync.tls_key go together (mutual TLS needs both)")
    return SyncTarget(
        controls=sync.control,
        node_id=sync.node_id or socket.gethostname(),
        shard=shard,
        token=token,
        tls_ca=str(sync.tls_ca) if sync.tls_ca else None,
        tls_cert=str(sync.tls_cert) if sync.tls_cert else None,
        tls_key=str(sync.tls_key) if sync.tls_key else None,
        heartbeat_seconds=sync.heartbeat_seconds,
        stale_after_seconds=config.health.stale_after_seconds,
        silence_seconds=sync.silence_seconds,
    )


@dataclass(frozen=True, slots=True)
class NodeSync:
    """A node's two links to its control plane: the syncer (its writer of replicated data) and the
    outbox forwarder, and the replica both follow."""

    syncer: EdgeSyncer
    forwarder: OutboxForwarder
    replicas: ControlReplicas

    def stop(self) -> None:
        self.syncer.stop()
        self.forwarder.stop()


def start_syncer(store: Store, config: EdgeConfig) -> NodeSync:
    """The syncer and the outbox forwarder of `config.sync`, both started."""
    target = sync_target(config)
    replicas = ControlReplicas(target.controls)
    forwarder = OutboxForwarder(store, target, replicas=replicas)
    # The control plane answering the syncer again ends the forwarder's backoff too.
    syncer = EdgeSyncer(store, target, replicas=replicas, on_connected=forwarder.wake)
    forwarder.on_recovered = syncer.wake  # and the other way round
    syncer.start()
    forwarder.start()
    return NodeSync(syncer, forwarder, replicas)
