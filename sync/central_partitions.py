"""One lease per partition of the events stream (docs/central.md): which replica folds which partitions.

In the KV bucket `EDGEWISE_LEASES` (every key expires `LEASE_S` after it was last written):

- `member.<replica id>`: each replica's heartbeat, written every `LEASE_S` / 3 seconds: the live members;
  its value is the replica's number of partitions. A replica that finds a member with another number
  (`nats.partitions` differs) holds no partition and logs `partitions_differ` every round: two
  partitionings of one stream would fold the same events twice.
- `fold.<p>` for each partition p < `partitions`: the id of the replica that folds p, created only when
  absent (`create`) and renewed with its revision (`update(last=...)`), so two replicas never both
  renew it.

Each round (every `LEASE_S` / 3 seconds) a replica renews what it holds, counts the live members and
holds at most its fair share, ceil(partitions / members): it releases (deletes, at its revision) the
partitions above the share, so a replica that joins finds some free, and takes free ones up to the share,
starting at an offset of its own so replicas do not race for the same keys. A replica that dies stops
renewing: its keys expire and the others take them within about `LEASE_S` + 1 s. A round that fails (the
bucket does not answer in time) gives up every partition: another replica may take them once they
expire, and this one must not work them meanwhile.

The lease decides who works a partition, not whether its effects count once: that is the fold commit's
job (a commit lands only at the log position its state was read at, with the partition's cursor in it;
`sync/profile_folder.py`), so a holder paused past its lease cannot fold an event twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from edgewise.sync.central_jobs import LEASE_S, lease_bucket
from edgewise.sync.nats_bridge import NatsBridge

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

__all__ = ["FOLD_PREFIX", "MEMBER_PREFIX", "PartitionLeases", "PartitionsDiffer"]

FOLD_PREFIX: Final = "fold."
MEMBER_PREFIX: Final = "member."


class PartitionsDiffer(RuntimeError):
    """Another live replica works another number of partitions (the message says which)."""


class PartitionLeases:
    """The partitions this replica holds (see the module doc); `on_change(held)` after each change."""

    def __init__(
        self,
        bridge: NatsBridge,
        partitions: int,
        holder_id: str,
        on_change: Callable[[frozenset[int]], None],
        *,
        replicas: int = 3,
        lease_s: float = LEASE_S,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be 1 or more, got {partitions}")
        self.bridge = bridge
        self.partitions = partitions
        self.holder_id = holder_id
        self.on_change = on_change
        self.replicas = replicas
        self.lease_s = lease_s
        self.members = 0  # live members seen by the last round
        self._revisions: dict[int, int] = {}  # partition -> revision of our fold.<p>
        self._held: frozenset[int] = frozenset()
        self._offset = int.from_bytes(hashlib.sha256(holder_id.encode()).digest()[:4], "big") % partitions
        self._kv: KeyValue | None = None
        self._checked: set[str] = set()  # member keys whose partition count is ours
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="partition-leases", daemon=True)

    def held(self) -> frozenset[int]:
        """The partitions this replica holds now."""
        return self._held

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing, give up every partition (`on_change` with none) and delete our keys, so the other
        replicas take them over at once."""
        self._stop.set()
        self._thread.join(10.0)
        revisions, self._revisions = self._revisions, {}
        self._publish()
        kv = self._kv
        if kv is None:
            return
        try:
            self.bridge.run(self._release_all(kv, revisions), 3.0)
        except Exception as exc:
            log.info("partition_release_failed", extra={"error": repr(exc)[:200]})

    async def _release_all(self, kv: KeyValue, revisions: dict[int, int], *, member: bool = True) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        for partition, revision in revisions.items():
            with contextlib.suppress(KeyWrongLastSequenceError):  # expired and taken meanwhile
                await kv.delete(f"{FOLD_PREFIX}{partition}", last=revision)
        if member:
            await kv.delete(f"{MEMBER_PREFIX}{self.holder_id}")

    def _order(self) -> list[int]:
        """The partitions in this replica's order of preference (its offset first)."""
        return [(self._offset + i) % self.partitions for i in range(self.partitions)]

    async def _round(self, held: dict[int, int]) -> dict[int, int]:
        """One round over a copy of what we hold (partition -> revision); what we hold after it."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError

        if self._kv is None:
            self._kv = await lease_bucket(self.bridge, replicas=self.replicas, lease_s=self.lease_s)
        kv = self._kv
        value = self.holder_id.encode()
        await kv.put(f"{MEMBER_PREFIX}{self.holder_id}", str(self.partitions).encode())
        for partition, revision in list(held.items()):
            try:
                held[partition] = await kv.update(f"{FOLD_PREFIX}{partition}", value, last=revision)
            except KeyWrongLastSequenceError:  # expired and taken by another replica
                del held[partition]
                log.warning("fold_partition_lost", extra={"partition": partition})
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        members = [k for k in keys if k.startswith(MEMBER_PREFIX)]
        self.members = max(1, len(members))
        for key in members:  # a member counting partitions otherwise would fold the same events again
            if key in self._checked:
                continue
            with contextlib.suppress(KeyNotFoundError):  # expired meanwhile
                entry = await kv.get(key)
                theirs = (entry.value or b"").decode()
                if theirs != str(self.partitions):
                    await self._release_all(kv, held, member=False)
                    raise PartitionsDiffer(
                        f"replica {key[len(MEMBER_PREFIX) :]} works {theirs} partitions of the events "
                        f"stream, this one {self.partitions} (nats.partitions): every replica of a cluster "
                        "needs the same number; this replica folds and learns nothing until they agree"
                    )
            self._checked.add(key)
        taken = {k[len(FOLD_PREFIX) :] for k in keys if k.startswith(FOLD_PREFIX)}
        share = math.ceil(self.partitions / self.members)
        order = self._order()
        for partition in reversed(order):  # over the share: give the last preferred back
            if len(held) <= share:
                break
            if partition in held:
                revision = held.pop(partition)
                with contextlib.suppress(KeyWrongLastSequenceError):  # expired meanwhile
                    await kv.delete(f"{FOLD_PREFIX}{partition}", last=revision)
        for partition in order:
            if len(held) >= share:
                break
            if partition in held or str(partition) in taken:
                continue
            try:
                held[partition] = await kv.create(f"{FOLD_PREFIX}{partition}", value)
            except KeyWrongLastSequenceError:  # another replica was first
                continue
        return held

    def _publish(self) -> None:
        held = frozenset(self._revisions)
        if held == self._held:
            return
        self._held = held
        log.info(
            "fold_partitions",
            extra={"holder": self.holder_id, "partitions": sorted(held), "members": self.members},
        )
        self.on_change(held)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._revisions = self.bridge.run(self._round(dict(self._revisions)), self.lease_s)
            except PartitionsDiffer as exc:
                log.error("partitions_differ", extra={"error": str(exc)})
                self._revisions = {}
            except Exception as exc:
                if self._revisions:
                    log.warning("fold_partitions_lost", extra={"error": repr(exc)[:200]})
                self._revisions = {}
            self._publish()
            self._stop.wait(self.lease_s / 3)
