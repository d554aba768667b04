"""The central tier's change log on NATS JetStream (docs/central.md): the stream every control-plane
replica appends commits to and materializes, and the object store of full snapshots for bootstrap.

JetStream resources (created by the first replica, checked by every other one):

- stream `EDGEWISE_LOG`, subject `edgewise.log.commit`, file storage, `replicas` copies (Raft), limits
  retention with no limit on count, bytes or age (commits leave only by compaction), a duplicate window
  of 2 minutes (a publish retried after a lost acknowledgement is stored once), and the cluster's
  lineage in its metadata (`edgewise.lineage`: versions are comparable only within one lineage, so a
  replica cache of another cluster is found and rebuilt). One message per commit: msgpack
  `{"l": lineage, "i": [version, base_version, first_seq, changes, kind, created_at_ms, description],
  "c": [[namespace, key, value or nil], ...], "k": {consumer cursor: position}}` (the cursors a job's
  commit moves: the profile folder's and bandit learner's place in the events stream), and, for a
  commit that starts or aborts a canary rollout, `"ro": the rollout document` (sync/rollout.py) and
  `"sk": [base version, rollback version]` (an abort's skip); rollout state written without a commit
  (a promote) is a message of its own, `{"l", "ro", "sk"}` without `"i"`. Keeping the rollout state in
  the log, with the commit it belongs to, is what makes every replica hold the edges outside the canary
  set back from the first moment it has the candidate (docs/rollouts.md, "The NATS central tier"); a
  commit over
  `INLINE_BYTES` is put in the object store as `commit.<position>.<message id>` (the position it is
  published at: `Nats-Expected-Last-Sequence` makes it the only one it can land at) and the message
  carries `"r": object name` instead of `"c"`.
- object store `EDGEWISE_SNAPSHOTS`, same replicas: `snapshot.<position>`, the full state at that log
  position (msgpack `{"l", "p", "commits": the newest commit infos, "forgotten": {user: version},
  "records": [[namespace, key, value], ...], "k": the jobs' cursors, "ro": the rollout document or nil,
  "sk": the skips of aborted candidates (msgpack) or nil}`), and the payloads of large commits
  (`commit.<position>.<id>`).

Compaction (`put_snapshot`: after a snapshot, and with `keep=1` after a forget) purges the log messages
up to the oldest kept snapshot and deletes the large-commit objects at those positions with them (and
those of publishes that never landed there: refused, or not confirmed), so a forgotten user's profile
does not outlive the forget in the object store either. A replica that reads a message whose object was
deleted meanwhile (it was behind the compaction) is told so (`CommitCompacted`) and installs the newest
snapshot instead.

`append` publishes with `Nats-Expected-Last-Sequence` set to the position the caller's state is
at (optimistic concurrency: a replica that missed a commit is refused, `LogConflict`, catches up and
tries again) and a `Nats-Msg-Id` kept across its retries; it returns only once JetStream acknowledged the
message, that is, once a majority of the stream's replicas stored it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgpack

from edgewise.sync.control_store import CommitInfo, RecordChange, RolloutWritten
from edgewise.sync.nats_bridge import NatsBridge, NatsUnavailable, follow_stream, transient_setup_error

if TYPE_CHECKING:
    from nats.js.api import StreamConfig
    from nats.js.client import JetStreamContext
    from nats.js.object_store import ObjectStore

log = logging.getLogger(__name__)

__all__ = [
    "INLINE_BYTES",
    "LINEAGE_KEY",
    "LOG_STREAM",
    "LOG_SUBJECT",
    "SNAPSHOT_BUCKET",
    "CentralLog",
    "CommitCompacted",
    "LogConflict",
    "LogEntry",
    "LogSettingsError",
    "LogUnavailable",
    "Snapshot",
]

LOG_STREAM: Final = "EDGEWISE_LOG"
LOG_SUBJECT: Final = "edgewise.log.commit"
SNAPSHOT_BUCKET: Final = "EDGEWISE_SNAPSHOTS"
LINEAGE_KEY: Final = "edgewise.lineage"
INLINE_BYTES: Final = 512 << 10
DUPLICATE_WINDOW_S: Final = 120.0
WRONG_LAST_SEQUENCE: Final = (10071, 10164)  # "wrong last sequence: N"; the clustered form, without N
_FORMAT: Final = 1


class LogUnavailable(RuntimeError):
    """JetStream did not confirm an operation in time (no quorum, no server): retry later."""


SETUP_S: Final = 30.0
"""How long a replica's start retries setting up a JetStream resource that does not answer (a server of
the cluster just died: its streams and the meta leader are elected again within seconds)."""


def set_up(
    bridge: NatsBridge, make: Callable[[], Any], timeout: float, what: str, within: float = SETUP_S
) -> Any:
    """Run the setup coroutine `make()` on `bridge`, again after a second while JetStream does not answer,
    for up to `within` seconds; LogSettingsError as it comes, NatsUnavailable when time is up."""
    deadline = time.monotonic() + within
    while True:
        try:
            return bridge.run(make(), timeout)
        except (LogSettingsError, NatsUnavailable):
            raise
        except Exception as exc:
            if time.monotonic() + 1.0 >= deadline:
                raise NatsUnavailable(
                    f"JetStream did not set up {what} in {within:g} s: {type(exc).__name__}: {exc}"
                ) from exc
            log.warning("jetstream_setup_retry", extra={"what": what, "error": repr(exc)[:300]})
            time.sleep(1.0)


class LogConflict(Exception):
    """The log moved on past the position a commit was made at: catch up to `last` and make it again."""

    def __init__(self, last: int) -> None:
        super().__init__(f"the change log is at position {last}")
        self.last = last


class CommitCompacted(Exception):
    """The object holding a large commit's changes was deleted: the log was compacted past `position`, so
    the newest snapshot covers it."""

    def __init__(self, position: int, name: str) -> None:
        super().__init__(f"the changes of log position {position} ({name}) were compacted away")
        self.position = position


class LogSettingsError(RuntimeError):
    """A JetStream resource exists with settings this tier cannot work with (the message says which)."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One message of the log: a commit (`info`, `changes`, the `cursors` it moves) with the rollout state
    it writes (`rollout`: the document and an abort's skip), or rollout state alone (`info` None)."""

    position: int
    lineage: str
    info: CommitInfo | None
    changes: list[RecordChange]
    cursors: dict[str, int]
    rollout: RolloutWritten | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    position: int
    lineage: str
    commits: list[CommitInfo]  # newest first
    forgotten: dict[str, int]
    records: list[RecordChange]
    cursors: dict[str, int] | None = None  # the jobs' cursors at that state (None: an older snapshot)
    rollout: tuple[bytes | None, bytes | None] | None = None  # the rollout record (None: an older snapshot)


def _info_fields(info: CommitInfo) -> list[Any]:
    return [
        info.version,
        info.base_version,
        info.first_seq,
        info.changes,
        info.kind,
        info.created_at_ms,
        info.description,
    ]


def _info(fields: list[Any]) -> CommitInfo:
    version, base, first, changes, kind, created, description = fields
    return CommitInfo(
        int(version), int(base), int(first), int(changes), str(kind), int(created), str(description)
    )


def _changes(raw: list[Any]) -> list[RecordChange]:
    return [RecordChange(str(n), str(k), None if v is None else bytes(v)) for n, k, v in raw]


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return msgpack.packb(
        {
            "f": _FORMAT,
            "l": snapshot.lineage,
            "p": snapshot.position,
            "commits": [_info_fields(c) for c in snapshot.commits],
            "forgotten": snapshot.forgotten,
            "records": [[r.namespace, r.key, r.value] for r in snapshot.records],
            "k": snapshot.cursors,
            **({} if snapshot.rollout is None else {"ro": snapshot.rollout[0], "sk": snapshot.rollout[1]}),
        },
        use_bin_type=True,
    )


def decode_snapshot(raw: bytes) -> Snapshot:
    doc = msgpack.unpackb(raw, raw=False)
    return Snapshot(
        position=int(doc["p"]),
        lineage=str(doc["l"]),
        commits=[_info(c) for c in doc["commits"]],
        forgotten={str(k): int(v) for k, v in doc["forgotten"].items()},
        records=_changes(doc["records"]),
        cursors=None if doc.get("k") is None else {str(k): int(v) for k, v in doc["k"].items()},
        rollout=None if "ro" not in doc else (_optional_bytes(doc["ro"]), _optional_bytes(doc.get("sk"))),
    )


def _optional_bytes(raw: Any) -> bytes | None:
    return None if raw is None else bytes(raw)


def _rollout_fields(written: RolloutWritten | None) -> dict[str, Any]:
    if written is None:
        return {}
    doc, skip = written
    return {"ro": doc, "sk": None if skip is None else list(skip)}


def _rollout(doc: dict[str, Any]) -> RolloutWritten | None:
    if doc.get("ro") is None:
        return None
    skip = doc.get("sk")
    return bytes(doc["ro"]), (None if skip is None else (int(skip[0]), int(skip[1])))


def _snapshot_name(position: int) -> str:
    return f"snapshot.{position:016d}"


def _commit_name(position: int, msg_id: str) -> str:
    return f"commit.{position:016d}.{msg_id}"


def _commit_position(name: str) -> int | None:
    """The log position a large commit's object was published for (None: not such an object, or one named
    before positions were in the name, `commit.<id>`)."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "commit" and parts[1].isdigit():
        return int(parts[1])
    return None


class CentralLog:
    """The change log stream and the snapshot store of one cluster, over a `NatsBridge`."""

    def __init__(self, bridge: NatsBridge, *, replicas: int = 3, timeout: float = 10.0) -> None:
        self.bridge = bridge
        self.replicas = replicas
        self.timeout = timeout
        self.lineage = ""
        self._objects: ObjectStore | None = None

    @property
    def js(self) -> JetStreamContext:
        return self.bridge.js

    # -- setting up ------------------------------------------------------------------------------------

    def _wanted(self, lineage: str) -> StreamConfig:
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        return StreamConfig(
            name=LOG_STREAM,
            description="edgewise control plane change log (docs/central.md)",
            subjects=[LOG_SUBJECT],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
            metadata={LINEAGE_KEY: lineage},
        )

    def open(self) -> str:
        """Create the stream and the snapshot store, or check the ones that exist; the cluster's lineage.
        LogSettingsError when a resource has settings this tier cannot use; NatsUnavailable when
        JetStream does not answer."""
        self.lineage = set_up(self.bridge, self._open, self.timeout * 3, "the change log")
        return self.lineage

    async def _open(self) -> str:
        from nats.js.api import ObjectStoreConfig, StorageType
        from nats.js.errors import BadRequestError, NotFoundError

        try:
            info = await self.js.stream_info(LOG_STREAM)
        except NotFoundError:
            try:
                info = await self.js.add_stream(self._wanted(uuid.uuid4().hex))
            except BadRequestError as exc:  # another replica created it first (with another lineage)
                if transient_setup_error(exc):  # too few peers online yet: set_up tries again
                    raise
                info = await self.js.stream_info(LOG_STREAM)
        _check_stream(info.config, self.replicas)
        lineage = (info.config.metadata or {}).get(LINEAGE_KEY, "")
        try:
            self._objects = await self.js.object_store(SNAPSHOT_BUCKET)
        except NotFoundError:
            self._objects = await self.js.create_object_store(
                SNAPSHOT_BUCKET,
                ObjectStoreConfig(
                    description="edgewise control plane snapshots (docs/central.md)",
                    storage=StorageType.FILE,
                    replicas=self.replicas,
                ),
            )
        return lineage

    @property
    def objects(self) -> ObjectStore:
        assert self._objects is not None, "open() first"
        return self._objects

    # -- positions -------------------------------------------------------------------------------------

    def bounds(self) -> tuple[int, int]:
        """(first, last) sequence of the stream (first > last when it is empty)."""
        info = self.bridge.run(self.js.stream_info(LOG_STREAM), self.timeout)
        return int(info.state.first_seq), int(info.state.last_seq)

    # -- appending -------------------------------------------------------------------------------------

    def encode(
        self,
        info: CommitInfo,
        changes: list[RecordChange],
        cursors: dict[str, int],
        rollout: RolloutWritten | None = None,
    ) -> tuple[dict[str, Any], bytes | None]:
        """The message of a commit (without its changes when they are too large to inline) and the
        changes to put in the object store first, if so."""
        body = [[c.namespace, c.key, c.value] for c in changes]
        head: dict[str, Any] = {
            "f": _FORMAT,
            "l": self.lineage,
            "i": _info_fields(info),
            "k": cursors,
            **_rollout_fields(rollout),
        }
        packed = msgpack.packb(body, use_bin_type=True)
        if len(packed) <= INLINE_BYTES:
            return {**head, "c": body}, None
        return head, packed

    def append(
        self,
        info: CommitInfo,
        changes: list[RecordChange],
        expected: int,
        cursors: dict[str, int] | None = None,
        deadline_s: float = 15.0,
        rollout: RolloutWritten | None = None,
    ) -> int:
        """Append one commit made at log position `expected` (with the rollout state it writes, if any);
        its position once JetStream stored it. LogConflict when the log is past `expected`;
        LogUnavailable when no acknowledgement came before the deadline (the commit may or may not be in
        the log: the caller's state follows the log)."""
        doc, payload = self.encode(info, changes, cursors or {}, rollout)
        return self.bridge.run(self._append(doc, payload, expected, deadline_s), deadline_s + 5)

    def append_rollout(self, rollout: RolloutWritten, expected: int, deadline_s: float = 15.0) -> int:
        """Append rollout state written without a commit (a promote) at log position `expected`, as
        `append` does a commit (the same LogConflict and LogUnavailable)."""
        doc = {"f": _FORMAT, "l": self.lineage, **_rollout_fields(rollout)}
        return self.bridge.run(self._append(doc, None, expected, deadline_s), deadline_s + 5)

    async def _append(
        self, doc: dict[str, Any], payload: bytes | None, expected: int, deadline_s: float
    ) -> int:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

        msg_id = uuid.uuid4().hex
        if payload is not None:
            name = _commit_name(expected + 1, msg_id)
            await self._with_retries(lambda: self.objects.put(name, payload), deadline_s)
            doc["r"] = name
        message = msgpack.packb(doc, use_bin_type=True)
        # The stream's last sequence, not the subject's: it survives a purge of every message (the log after
        # a forget's compaction), where the subject's would fall back to 0 and refuse every commit.
        headers = {"Nats-Expected-Last-Sequence": str(expected), "Nats-Msg-Id": msg_id}
        end = time.monotonic() + deadline_s
        while True:
            try:
                ack = await self.js.publish(LOG_SUBJECT, message, timeout=2.0, headers=dict(headers))
                return int(ack.seq)
            except APIError as exc:
                if exc.err_code in WRONG_LAST_SEQUENCE:
                    last = _last_sequence(exc.description)
                    if last == 0:
                        stream = await self.js.stream_info(LOG_STREAM)
                        last = int(stream.state.last_seq)
                    if "r" in doc:  # not in the log: its object goes (else compaction takes it later)
                        await self._delete_object(doc["r"])
                    raise LogConflict(max(last, expected + 1)) from None
                if not isinstance(exc, ServiceUnavailableError) and exc.code not in (503, 504):
                    raise
                problem: Exception = exc
            except (TimeoutError, NatsTimeout, NoRespondersError, NoStreamResponseError) as exc:
                problem = exc
            if time.monotonic() > end:
                raise LogUnavailable(f"JetStream did not store the commit in {deadline_s:g} s: {problem!r}")
            await asyncio.sleep(0.1)

    async def _get_commit(self, position: int, name: str) -> Any:
        from nats.js.errors import NotFoundError

        try:
            return await self._with_retries(lambda: self.objects.get(name), 30.0, fatal=NotFoundError)
        except NotFoundError:
            raise CommitCompacted(position, name) from None

    async def _delete_object(self, name: str) -> bool:
        """Delete one object (its chunks purged); False when JetStream did not (logged: compaction or the
        next forget deletes it)."""
        from nats.js.errors import NotFoundError

        try:
            await self.objects.delete(name)
        except NotFoundError:
            pass
        except Exception as exc:
            log.warning("commit_object_delete_failed", extra={"object": name, "error": repr(exc)[:300]})
            return False
        return True

    async def _with_retries(
        self, call: Callable[[], Any], deadline_s: float, fatal: type[BaseException] | None = None
    ) -> Any:
        end = time.monotonic() + deadline_s
        while True:
            try:
                return await call()
            except Exception as exc:
                if fatal is not None and isinstance(exc, fatal):
                    raise
                if time.monotonic() > end:
                    raise LogUnavailable(f"JetStream did not answer in {deadline_s:g} s: {exc!r}") from exc
                await asyncio.sleep(0.2)

    # -- reading ---------------------------------------------------------------------------------------

    def decode(self, position: int, data: bytes) -> LogEntry:
        """The commit of the message at `position`; CommitCompacted when its changes are in an object that
        compaction deleted (install the newest snapshot instead)."""
        doc = msgpack.unpackb(data, raw=False)
        if "i" not in doc:  # rollout state alone (a promote)
            return LogEntry(position, str(doc["l"]), None, [], {}, _rollout(doc))
        if "r" in doc:
            result = self.bridge.run(self._get_commit(position, str(doc["r"])), 40.0)
            body = msgpack.unpackb(result.data or b"", raw=False)
        else:
            body = doc["c"]
        cursors = {str(k): int(v) for k, v in (doc.get("k") or {}).items()}
        return LogEntry(position, str(doc["l"]), _info(doc["i"]), _changes(body), cursors, _rollout(doc))

    def follow(self, start: int, deliver: Callable[[int, bytes], None]) -> Callable[[], None]:
        """Deliver every message from position `start` on, in order, to `deliver(position, data)` (called
        on the loop thread: it must not block); returns the function that stops following."""
        return follow_stream(
            self.bridge,
            LOG_STREAM,
            LOG_SUBJECT,
            start,
            lambda m: deliver(int(m.metadata.sequence.stream), m.data),
        )

    # -- snapshots -------------------------------------------------------------------------------------

    def put_snapshot(self, snapshot: Snapshot, keep: int = 2) -> None:
        """Store a snapshot, then delete all but the newest `keep` and drop the log messages up to the
        oldest kept one (compaction: a replica further behind bootstraps from a snapshot). `keep=1` after a
        forget: no message or snapshot older than the forget holds the user's profile any more."""
        self.bridge.run(self._put_snapshot(snapshot, keep), 120.0)

    async def _put_snapshot(self, snapshot: Snapshot, keep: int) -> None:
        await self.objects.put(_snapshot_name(snapshot.position), encode_snapshot(snapshot))
        names = sorted(n for n in await self._object_names() if n.startswith("snapshot."))
        for old in names[:-keep]:
            await self.objects.delete(old)
        kept = names[-keep:]
        if len(kept) >= keep:
            oldest = int(kept[0].split(".")[1])
            await self.js.purge_stream(LOG_STREAM, seq=oldest + 1)  # messages below it leave
            await self._drop_commit_objects(oldest)

    async def _drop_commit_objects(self, upto: int) -> int:
        """Delete the large-commit objects of log positions up to `upto` (purged from the log); how many."""
        dropped = 0
        for name in await self._object_names():
            position = _commit_position(name)
            if position is not None and position <= upto and await self._delete_object(name):
                dropped += 1
        if dropped:
            log.info("commit_objects_dropped", extra={"upto": upto, "objects": dropped})
        return dropped

    async def _object_names(self) -> list[str]:
        from nats.js.errors import NotFoundError

        try:
            infos = await self.objects.list()
        except NotFoundError:
            return []
        return [i.name for i in infos if not i.deleted and i.name]

    def newest_snapshot(self) -> Snapshot | None:
        return self.bridge.run(self._newest_snapshot(), 120.0)

    async def _newest_snapshot(self) -> Snapshot | None:
        names = sorted(n for n in await self._object_names() if n.startswith("snapshot."))
        if not names:
            return None
        result = await self.objects.get(names[-1])
        return decode_snapshot(result.data or b"")


def _last_sequence(description: str | None) -> int:
    """`wrong last sequence: 17` -> 17 (0 when the message says nothing else)."""
    text = (description or "").rsplit(":", 1)[-1].strip()
    return int(text) if text.isdigit() else 0


def _check_stream(config: StreamConfig, replicas: int) -> None:
    """LogSettingsError naming each setting of an existing stream this tier cannot work with."""
    from nats.js.api import RetentionPolicy

    problems = []
    if list(config.subjects or []) != [LOG_SUBJECT]:
        problems.append(f"subjects = {config.subjects} (needs exactly [{LOG_SUBJECT!r}])")
    if config.retention not in (None, RetentionPolicy.LIMITS):
        problems.append(f"retention = {config.retention} (needs limits: consumers must not remove commits)")
    for name in ("max_msgs", "max_bytes", "max_msgs_per_subject"):
        value = getattr(config, name)
        if value not in (None, -1, 0):
            problems.append(f"{name} = {value} (needs no limit: a commit must never be dropped)")
    if config.max_age not in (None, 0, 0.0):
        problems.append(f"max_age = {config.max_age} s (needs 0: a commit must never expire)")
    if (config.num_replicas or 1) != replicas:
        problems.append(f"replicas = {config.num_replicas} (nats.replicas here is {replicas})")
    if not (config.metadata or {}).get(LINEAGE_KEY):
        problems.append(f"no {LINEAGE_KEY} in its metadata (not created by edgewise)")
    if problems:
        raise LogSettingsError(
            f"the JetStream stream {LOG_STREAM} exists with settings the control plane cannot use: "
            + "; ".join(problems)
            + f". Remove it (`nats stream rm {LOG_STREAM}`) or point --nats at the cluster it belongs to"
        )
