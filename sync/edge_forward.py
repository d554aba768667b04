"""The edge's forwarder: drains the outbox (Track events with the analytics purpose) to the control plane.

At least once, in order: it reads the oldest `batch` outbox entries, sends them with `Forward`, and
deletes them only after the control plane acknowledged them (`acked_seq`); the control plane
de-duplicates by event id, so a batch sent again after a crash or a lost reply is counted once. While
the control plane is away the outbox keeps growing on disk (nothing is dropped) and the forwarder
retries with jittered exponential backoff (0.2 s doubling to 30 s); an acknowledged batch resets it,
and so does `wake` (the node's syncer calls it when it hears from the control plane again), so after a
long outage draining starts when the sync does, not up to 30 s later; the other way round, its first ACK
after failures calls `on_recovered` (the syncer's `wake`).
Backpressure: one batch in flight at a time, and a full batch is followed at once by the next.

With several control-plane replicas it sends to the one the node follows (`sync/control_replicas.py`,
shared with the syncer): a failed call (connection refused or reset, UNAVAILABLE, past its deadline,
RESOURCE_EXHAUSTED, ...; not a refusal of the request itself) loses that replica and the node moves to
the next; the same batch then goes there. Nothing is lost (entries leave
the outbox only after an ACK) nor counted twice: the control plane keeps one copy per event id (an
exposure's id is its decision id and placement), so a batch a replica stored but whose ACK never came
back is answered as duplicates by the next, as long as the replicas share their event store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

import grpc
import msgpack

from edgewise.core.exposure import EXPOSURE_KIND
from edgewise.core.store import Store
from edgewise.sync.auth import bearer_metadata, open_channel
from edgewise.sync.control_replicas import ControlReplicas, loses_replica
from edgewise.sync.edge_sync import KEEPALIVE_OPTIONS, Backoff, SyncTarget, rpc_error_text
from edgewise.v1 import sync_pb2, sync_pb2_grpc

log = logging.getLogger(__name__)

__all__ = ["OutboxForwarder"]

FORWARD_BATCH: Final = 2000
"""Outbox entries per Forward call. bench.sync (stage events): 2,000 stored 14,034 and 14,027 events/s
upstream while tracking, 500 stored 9,104 and 9,790/s (the control plane's per-call cost dominates);
2,000 exposure records are about 800 KB, under the control plane's 8 MB message limit and its
MAX_FORWARD_RECORDS of 5,000."""

_IDLE_WAIT: Final = 0.1  # seconds between looks at an empty outbox


def _kind(payload: bytes) -> str:
    """ "exposure" for exposure records (core/exposure.py), else "event" (a Track event)."""
    doc = msgpack.unpackb(payload, raw=False)
    return EXPOSURE_KIND if isinstance(doc, dict) and doc.get("k") == EXPOSURE_KIND else "event"


class OutboxForwarder:
    def __init__(
        self,
        store: Store,
        target: SyncTarget,
        *,
        replicas: ControlReplicas | None = None,
        batch: int = FORWARD_BATCH,
        timeout: float = 10.0,
        on_recovered: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.target = target
        # The replica the node follows (shared with the syncer, which moves it too).
        self.replicas = replicas if replicas is not None else ControlReplicas(target.controls)
        self.batch = batch
        self.timeout = timeout
        self.on_recovered = on_recovered  # called when a call succeeds after failures (wakes the syncer)
        self.forwarded = 0  # events acknowledged upstream by this process
        self.last_error = ""
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by wake() and stop(): ends a backoff wait early
        self._thread = threading.Thread(target=self._run, name="outbox-forward", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def wake(self) -> None:
        """Retry now with a fresh backoff: the control plane answers again (the syncer heard from it)."""
        self._wake.set()

    def _pause(self, backoff: Backoff) -> bool:
        """Wait out the next backoff delay, or less if woken (which starts the backoff over); returns
        whether it was woken."""
        if not self._wake.wait(backoff.next()):
            return False
        self._wake.clear()
        backoff.reset()
        return True

    def _connect(self, address: str) -> tuple[grpc.Channel, sync_pb2_grpc.ControlPlaneStub]:
        channel = open_channel(
            address,
            ca=self.target.tls_ca,
            cert=self.target.tls_cert,
            key=self.target.tls_key,
            options=KEEPALIVE_OPTIONS,  # its own subchannels: a new channel connects afresh
        )
        return channel, sync_pb2_grpc.ControlPlaneStub(channel)

    def _run(self) -> None:
        backoff = Backoff()
        address = self.replicas.current
        channel, stub = self._connect(address)
        metadata = bearer_metadata(self.target.token)
        try:
            while not self._stop.is_set():
                try:
                    entries = self.store.outbox_batch(self.batch)
                    if not entries:
                        self._stop.wait(_IDLE_WAIT)
                        continue
                    if self.replicas.current != address:  # the node moved on (the syncer lost `address`)
                        channel.close()
                        address = self.replicas.current
                        channel, stub = self._connect(address)
                    request = sync_pb2.ForwardRequest(
                        node_id=self.target.node_id,
                        records=[sync_pb2.OutboxRecord(seq=s, kind=_kind(p), payload=p) for s, p in entries],
                    )
                    reply = stub.Forward(request, timeout=self.timeout, metadata=metadata)
                    self.store.outbox_ack(reply.acked_seq)
                    self.forwarded += reply.accepted
                    if reply.rejected:  # records the control plane can never store: dropped there
                        log.warning("outbox_records_rejected", extra={"records": reply.rejected})
                    if self.last_error:
                        if self.on_recovered is not None:
                            self.on_recovered()
                        log.info(
                            "outbox_forwarding",
                            extra={
                                "control": address,
                                "pending": self.store.outbox_pending(),
                                "duplicates": reply.duplicates,  # stored by a replica whose ACK was lost
                            },
                        )
                    self.last_error = ""
                    backoff.reset()
                except grpc.RpcError as exc:
                    error = rpc_error_text(exc)
                    if error != self.last_error:
                        log.warning("outbox_forward_failed", extra={"control": address, "error": error})
                    self.last_error = error
                    if loses_replica(exc):
                        self.replicas.lost(address, error, link="forward")
                    self._pause(backoff)
                    # A channel that failed to connect waits out gRPC's own reconnect backoff (up to
                    # minutes) and fails calls fast meanwhile: a new one connects now, to the replica the
                    # node follows now.
                    channel.close()
                    address = self.replicas.current
                    channel, stub = self._connect(address)
                except Exception as exc:
                    self.last_error = repr(exc)
                    log.error("outbox_forward_failed", extra={"error": self.last_error})
                    self._pause(backoff)
        finally:
            channel.close()
