"""The central tier's events stream (docs/central.md): where `Forward` stores what edges send.

Stream `EDGEWISE_EVENTS`, subjects `edgewise.events.<partition>.<user token>`: the partition is a hash of
the user id modulo `partitions` (one user's records stay in one partition, in order), the user token
the first 32 hex digits of the SHA-256 of the user id (so forgetting a user is one purge of the subjects
`edgewise.events.*.<token>`, no scan). One message per record, its payload as the edge stored it, with
headers `Nats-Msg-Id` = the record's id (a record forwarded again within the duplicate window,
`nats.duplicate_window`, 2 minutes by default, is stored once: the edge retried after a lost reply) and
`Edgewise-Node`, `Edgewise-Kind`. File storage, `replicas` copies, limits retention with `max_age` =
`events.retain` (0: none).

`store` returns once JetStream acknowledged every record (a majority of the stream's replicas stored it):
only then does `Forward` answer the edge, which deletes its outbox entries. Every replica follows the
stream (`follow`) into its local event store (`sync/event_store.py`) under the stream's sequence numbers,
so the jobs' cursors mean the same on every replica, and a record stored twice (after the duplicate
window) is kept once (the event store de-duplicates by id).

So `events_total` is counted in that copy, not in the stream: the distinct records, however late a batch
was sent again. `wait_copied` makes the count read what the stream held when it was asked: it waits
(bounded) until the copy reached the stream's last sequence, or the follower found nothing more to
read (the last messages were purged by a forget), and the copy stored all it was handed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from edgewise.sync.central_log import DUPLICATE_WINDOW_S, LogSettingsError, LogUnavailable, set_up
from edgewise.sync.event_partitions import partition_of
from edgewise.sync.event_store import IngestResult
from edgewise.sync.nats_bridge import NatsBridge, follow_stream, transient_setup_error

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.api import StreamConfig

log = logging.getLogger(__name__)

__all__ = ["EVENTS_STREAM", "CentralEvents", "StoredRecord", "partition_of", "user_token"]

EVENTS_STREAM: Final = "EDGEWISE_EVENTS"
EVENTS_PREFIX: Final = "edgewise.events"
NODE_HEADER: Final = "Edgewise-Node"
KIND_HEADER: Final = "Edgewise-Kind"

StoredRecord = tuple[int, str, str, str, bytes]  # (stream sequence, node, kind, id, payload)


def user_token(user: str) -> str:
    return hashlib.sha256(user.encode()).hexdigest()[:32]


class CentralEvents:
    """The events stream of one cluster, over a `NatsBridge` (see the module doc)."""

    def __init__(
        self,
        bridge: NatsBridge,
        *,
        replicas: int = 3,
        partitions: int = 8,
        retain_s: float = 0.0,
        duplicate_window_s: float = DUPLICATE_WINDOW_S,
        timeout: float = 10.0,
    ) -> None:
        self.bridge = bridge
        self.replicas = replicas
        self.partitions = partitions
        self.retain_s = retain_s
        self.duplicate_window_s = duplicate_window_s
        self.timeout = timeout
        self._delivered = 0  # the last stream sequence `follow` handed over
        self._idle_at = 0.0  # when `follow` last found nothing more to read (monotonic)

    def _wanted(self) -> StreamConfig:
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        return StreamConfig(
            name=EVENTS_STREAM,
            description="edgewise forwarded events and exposures (docs/central.md)",
            subjects=[f"{EVENTS_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window_s,
            max_age=self.retain_s or None,
        )

    def open(self) -> None:
        """Create the stream or check the one that exists (LogSettingsError / NatsUnavailable)."""
        set_up(self.bridge, self._open, self.timeout * 3, "the events stream")

    async def _open(self) -> None:
        from nats.js.errors import BadRequestError, NotFoundError

        try:
            info = await self.bridge.js.stream_info(EVENTS_STREAM)
        except NotFoundError:
            try:
                info = await self.bridge.js.add_stream(self._wanted())
            except BadRequestError as exc:
                if transient_setup_error(exc):  # too few peers online yet: set_up tries again
                    raise
                info = await self.bridge.js.stream_info(EVENTS_STREAM)
        config = info.config
        problems = []
        if list(config.subjects or []) != [f"{EVENTS_PREFIX}.>"]:
            problems.append(f"subjects = {config.subjects} (needs exactly ['{EVENTS_PREFIX}.>'])")
        for name in ("max_msgs", "max_bytes", "max_msgs_per_subject"):
            value = getattr(config, name)
            if value not in (None, -1, 0):
                problems.append(f"{name} = {value} (needs no limit: a stored event must not be dropped)")
        if (config.num_replicas or 1) != self.replicas:
            problems.append(f"replicas = {config.num_replicas} (nats.replicas here is {self.replicas})")
        if problems:
            raise LogSettingsError(
                f"the JetStream stream {EVENTS_STREAM} exists with settings the control plane cannot use: "
                + "; ".join(problems)
            )
        if abs((config.duplicate_window or 0) - self.duplicate_window_s) > 0.001:
            log.warning(
                "events_duplicate_window_differs",
                extra={
                    "stream_duplicate_window_s": config.duplicate_window or 0,
                    "nats_duplicate_window_s": self.duplicate_window_s,
                },
            )
        if (config.max_age or 0) != (self.retain_s or 0):
            log.warning(
                "events_retention_differs",
                extra={"stream_max_age_s": config.max_age or 0, "events_retain_s": self.retain_s},
            )

    # -- Forward ---------------------------------------------------------------------------------------

    def store(
        self, node_id: str, records: list[tuple[str, str, bytes]], users: list[str], deadline_s: float = 15.0
    ) -> IngestResult:
        """Publish checked records (kind, id, payload) of `users`; once every one is acknowledged, how many
        were new and how many JetStream had already (within the duplicate window). LogUnavailable when
        not all were acknowledged in time (the edge keeps them and sends them again)."""
        try:
            return self.bridge.run(self._store(node_id, records, users, deadline_s), deadline_s + 5)
        except LogUnavailable:
            raise
        except Exception as exc:
            raise LogUnavailable(f"JetStream did not store the events: {type(exc).__name__}: {exc}") from exc

    async def _store(
        self, node_id: str, records: list[tuple[str, str, bytes]], users: list[str], deadline_s: float
    ) -> IngestResult:
        js = self.bridge.js
        pending = list(zip(records, users, strict=True))
        accepted = duplicates = 0
        end = time.monotonic() + deadline_s
        while pending:
            futures = []
            for (kind, event_id, payload), user in pending:
                subject = f"{EVENTS_PREFIX}.{partition_of(user, self.partitions)}.{user_token(user)}"
                headers = {"Nats-Msg-Id": event_id, NODE_HEADER: node_id, KIND_HEADER: kind}
                futures.append(await js.publish_async(subject, payload, headers=headers))
            results = await asyncio.gather(
                *(asyncio.wait_for(f, max(0.5, min(5.0, end - time.monotonic()))) for f in futures),
                return_exceptions=True,
            )
            failed = []
            for item, result in zip(pending, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append(item)
                elif result.duplicate:
                    duplicates += 1
                else:
                    accepted += 1
            if failed and time.monotonic() > end:
                raise LogUnavailable(f"JetStream did not acknowledge {len(failed)} of {len(records)} events")
            pending = failed  # the same ids: JetStream stores each once
        return IngestResult(accepted, duplicates)

    # -- reading ---------------------------------------------------------------------------------------

    def wait_copied(self, position: Callable[[], int], timeout: float) -> bool:
        """Until the local copy (its position: `position()`) holds every record the stream holds now (see
        the module doc); False after `timeout` seconds."""
        asked = time.monotonic()
        info = self.bridge.run(self.bridge.js.stream_info(EVENTS_STREAM), self.timeout)
        last = int(info.state.last_seq)
        deadline = asked + timeout
        while True:
            copied = position()
            if copied >= last or (self._idle_at > asked and copied >= self._delivered):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def count(self) -> int:
        """Events and exposures stored in the stream (a record sent again after the duplicate window is in
        it twice: `events_total` counts the local copy instead)."""
        info = self.bridge.run(self.bridge.js.stream_info(EVENTS_STREAM), self.timeout)
        return int(info.state.messages)

    def forget(self, user: str) -> int:
        """Delete every stored record of `user` (all partitions); how many."""
        request = json.dumps({"filter": f"{EVENTS_PREFIX}.*.{user_token(user)}"}).encode()
        reply = self.bridge.run(
            self.bridge.nc.request(f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}", request, timeout=self.timeout),
            self.timeout + 2,
        )
        doc = json.loads(reply.data)
        if "error" in doc:
            raise LogUnavailable(f"JetStream did not delete the user's events: {doc['error']}")
        return int(doc.get("purged", 0))

    def follow(self, start: int, deliver: Callable[[StoredRecord], None]) -> Callable[[], None]:
        """Deliver every record from stream sequence `start` on, in order, to `deliver` (on the loop
        thread: it must not block); returns the function that stops following."""

        def on_message(msg: Msg) -> None:
            headers = msg.headers or {}
            seq = int(msg.metadata.sequence.stream)
            deliver(
                (
                    seq,
                    headers.get(NODE_HEADER, ""),
                    headers.get(KIND_HEADER, "event"),
                    headers.get("Nats-Msg-Id", ""),
                    msg.data,
                )
            )
            self._delivered = seq

        def on_idle() -> None:
            self._idle_at = time.monotonic()

        return follow_stream(
            self.bridge, EVENTS_STREAM, f"{EVENTS_PREFIX}.>", start, on_message, on_idle=on_idle
        )
