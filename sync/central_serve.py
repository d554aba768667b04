"""`control serve --nats`: connect to the JetStream cluster and make the local control store a replica
cache of its change log (docs/central.md), or say why not.

What cannot work stops the start with a message (`control serve` exits 2): no NATS client installed
(`pip install 'edgewise[nats]'`), no server of the list answering, a TLS or credential file that cannot
be read, a login the servers refuse or a server certificate `nats.ca` does not trust
(`sync/nats_security.py`), a stream `EDGEWISE_LOG` created with
settings the tier cannot use, a data directory holding an embedded control plane's store (never
overwritten). A cache that is not a view of this cluster's log (built from another cluster, or ahead of a
recreated stream) is rebuilt: emptied and bootstrapped from the newest snapshot and the tail, with a
`replica_cache_rebuilt` warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgewise.sync.central_events import CentralEvents
from edgewise.sync.central_log import DUPLICATE_WINDOW_S, CentralLog, LogSettingsError
from edgewise.sync.central_replica import CacheMismatch, Replica
from edgewise.sync.control_config import NatsConfig
from edgewise.sync.control_store import ControlStore, ControlStoreError
from edgewise.sync.nats_bridge import NatsBridge, NatsUnavailable, parse_nats_urls
from edgewise.sync.nats_security import NatsSecurity, load_security

log = logging.getLogger(__name__)

__all__ = ["CentralStart", "ReplicaStartError", "nats_security", "open_replica"]


class ReplicaStartError(RuntimeError):
    """The replica cannot start (the message says why and what to do)."""


@dataclass
class CentralStart:
    bridge: NatsBridge
    replica: Replica
    store: ControlStore  # the cache (a new object when it was rebuilt)
    events: CentralEvents

    def close(self) -> None:
        self.replica.stop()
        self.bridge.close()


def nats_security(config: NatsConfig) -> NatsSecurity:
    """The TLS files and credentials `[nats]` names, read and checked (NatsSecurityError, a ValueError)."""
    return load_security(
        ca=config.ca,
        cert=config.cert,
        key=config.key,
        user=config.user,
        password_file=config.password_file,
        token_file=config.token_file,
        creds=config.creds,
    )


def _wipe(path: Path) -> None:
    for name in ("data.mdb", "lock.mdb"):
        (path / name).unlink(missing_ok=True)


def open_replica(
    urls_text: str,
    replicas: int,
    store: ControlStore,
    reopen: Callable[[], ControlStore],
    *,
    partitions: int = 8,
    retain_events_s: float = 0.0,
    duplicate_window_s: float = DUPLICATE_WINDOW_S,
    security: Callable[[], NatsSecurity] = NatsSecurity,
) -> CentralStart:
    """Connect, check or bootstrap `store` against the cluster's log (see the module doc). `reopen` opens
    the store again after a rebuild; `security` reads the TLS files and credentials to connect with
    (`nats_security.load_security`). ReplicaStartError when the replica cannot start; `store` is closed
    then."""
    try:
        urls = parse_nats_urls(urls_text)
        bridge = NatsBridge(urls, security=security())
    except (ValueError, NatsUnavailable) as exc:
        store.close()
        raise ReplicaStartError(str(exc)) from exc
    try:
        replica = Replica(store, CentralLog(bridge, replicas=replicas))
        try:
            replica.open()
        except CacheMismatch as exc:
            if store.replicated_position() == 0 and store.head_version() > 0:
                raise ReplicaStartError(
                    f"{store.path} holds an embedded control plane's store (version {store.head_version()}), "
                    "not a replica cache: give the replica a data directory of its own (it is never "
                    "overwritten)"
                ) from exc
            log.warning("replica_cache_rebuilt", extra={"path": str(store.path), "reason": str(exc)})
            store.close()
            _wipe(store.path)
            store = reopen()
            replica = Replica(store, CentralLog(bridge, replicas=replicas))
            replica.open()
        events = CentralEvents(
            bridge,
            replicas=replicas,
            partitions=partitions,
            retain_s=retain_events_s,
            duplicate_window_s=duplicate_window_s,
        )
        events.open()
    except (LogSettingsError, NatsUnavailable, CacheMismatch, ControlStoreError) as exc:
        store.close()
        bridge.close()
        raise ReplicaStartError(str(exc)) from exc
    except BaseException:
        store.close()
        bridge.close()
        raise
    return CentralStart(bridge, replica, store, events)
