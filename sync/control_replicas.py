"""The control-plane replicas an edge follows: one at a time, the next one when it is lost.

`sync.control` names one control plane, or several replicas of one (each serving the same Subscribe and
Forward API over the same change log and event store). The node follows one of them at a time with both
of its links, the syncer's Subscribe stream and the forwarder's Forward calls: the first in the list at
start. When either link loses it (a call that fails, a stream that ends or stays silent past
`sync.silence_seconds`), `lost` moves the node on to the next one in the list (round robin), counts a
switch and logs `sync_control_switched`; the other link follows on its next call or message. A link that
reports a replica the node already left changes nothing, so one outage seen by both links is one switch.
A call the replica answered by refusing the request itself (`REFUSALS`: a bad token, a node id its token
does not cover, ...) loses nothing: every replica would answer the same, and the replica is there.

The node never moves back by itself when a replica it left comes back: every replica serves the same log,
so going back gains nothing, costs a new stream, and a replica that crashes and restarts in a loop would
take every edge that prefers it along. To spread a fleet over the replicas, give the nodes the list in
different orders (each its nearest first).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Final

import grpc

log = logging.getLogger(__name__)

__all__ = ["REFUSALS", "ControlReplicas", "loses_replica"]

REFUSALS: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)
"""Codes of a replica that answered by refusing the request itself: the next replica would too."""


def loses_replica(exc: BaseException) -> bool:
    """Whether a failed call (or stream) means the replica it went to is lost: anything but a refusal
    (`REFUSALS`), including errors that are not gRPC's (a channel that could not be opened)."""
    code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
    return code not in REFUSALS


class ControlReplicas:
    """The replicas (HOST:PORT, in order) and the one the node follows now; thread-safe."""

    def __init__(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise ValueError("no control-plane address to follow")
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"a control-plane address is listed twice: {', '.join(addresses)}")
        self.addresses: tuple[str, ...] = tuple(addresses)
        self._index = 0
        self._switches = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        """The replica the node follows now."""
        with self._lock:
            return self.addresses[self._index]

    @property
    def switches(self) -> int:
        """How often the node moved to another replica since start."""
        with self._lock:
            return self._switches

    def lost(self, address: str, error: str, *, link: str) -> str:
        """`link` ("sync" or "forward") lost `address` (`error` says how): the replica to use now. The
        next one in the list when `address` is the one followed; else (another link already moved on,
        or there is only one) the one followed, unchanged."""
        with self._lock:
            if len(self.addresses) == 1 or self.addresses[self._index] != address:
                return self.addresses[self._index]
            self._index = (self._index + 1) % len(self.addresses)
            self._switches += 1
            now, switches = self.addresses[self._index], self._switches
        log.warning(
            "sync_control_switched",
            extra={"from": address, "to": now, "link": link, "error": error, "switches": switches},
        )
        return now
