"""The control plane's own LMDB store: the current replicated state, a log of every change, snapshots.

Pure storage: no gRPC, no bundle parsing. Every accepted change gets a global, monotonically increasing
sequence number starting at 1. A *commit* groups the changes accepted together (one push, one delta
file, one rollback); its `version` is the sequence number of its last change and its `base_version` the
head before it, so the commits form an unbroken chain 0 -> v1 -> v2 -> ... -> head. Deletes are
tombstones in the log.

Data layout (one LMDB environment, `sync=True`; every write is one write transaction, so it lands
completely or not at all, and a reader sees a consistent state and version):

- `state-profiles`, `state-items`, `state-models`, `state-rules`, `state-forgotten`: record key (UTF-8)
  -> value bytes, the current state. `forgotten` holds one record per forgotten user (key: the user id,
  value: the 8-byte forget time in Unix ms), written only by `forget` and never deleted: edges purge
  their own copies of a user when its record arrives.
- `log`: 8-byte big-endian seq -> msgpack `[namespace, key, value or nil]` (nil = tombstone).
- `commits`: 8-byte big-endian version -> msgpack map of the `CommitInfo` fields except `version`.
- `snapshots`: 8-byte big-endian version + 1 namespace byte + key -> value, the full state at that
  version.
- `profile-log`: profile key -> the 8-byte seqs of its logged upserts (sorted duplicates): what `forget`
  redacts, without reading the whole log. Entries leave with the log entries `compact` drops.
- `forgotten`: profile key -> 8-byte version of its forget commit: users `forget` removed; their profile is
  never written again.
- `meta`: `layout` -> b"2" (a layout-1 store is upgraded when opened: its profile-log index is built, and
  its forgotten list, one `("rules", "forgotten")` record, becomes one `forgotten` record per user, in a
  "forget" commit); `lineage` -> a random id made when the store is created (versions are only
  comparable within one lineage: an edge whose version came from another store gets a snapshot);
  `head` and `log_start` -> 8-byte big-endian; `snapshots` -> msgpack list of
  the retained snapshot versions, ascending; `cursor:<name>` -> a consumer's 8-byte position and
  `consumer_state:<name>` -> the state it keeps beside it (`commit_at`).

The namespace byte of a snapshot key is the namespace's index in `REPLICATED` (append only: never
reorder it). Keys are limited to `MAX_KEY_BYTES` of UTF-8 so that every key fits a snapshot key.

The log holds the commits with `version > log_start` (`log_start` is 0 until `compact` drops the oldest
ones); commit metadata is kept for every commit, so `history` covers the whole life of the store. An edge
at version `v >= log_start` catches up with `commits_after(v)`; an edge below needs a full snapshot.
`replace_all` (and `rollback`, which goes through it) also keeps a full snapshot of the new state; the
newest `retain_snapshots` are kept. The state at an older version is rebuilt from the newest snapshot at
or below it plus the logged changes after that snapshot.
"""

from __future__ import annotations

import heapq
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import lmdb
import msgpack

if TYPE_CHECKING:
    from lmdb import _Database as Database

__all__ = [
    "KINDS",
    "MAX_KEY_BYTES",
    "REPLICATED",
    "CommitHook",
    "CommitInfo",
    "ControlStore",
    "ControlStoreError",
    "ControlView",
    "LogCompacted",
    "PastView",
    "RecordChange",
    "RolloutHook",
    "RolloutWrite",
    "RolloutWritten",
]

REPLICATED: Final = ("profiles", "items", "models", "rules", "forgotten")
KINDS: Final = ("push", "delta", "rollback", "forget", "refresh")  # "refresh": sync/model_refresh.py
LEGACY_FORGOTTEN_KEY: Final = "forgotten"
"""("rules", "forgotten"): layout 1's msgpack list of every forgotten user, rewritten by each forget. Still
reserved: a rollback to a version that had it does not bring it back."""

_U64: Final = struct.Struct(">Q")  # big-endian: keys sort by number
_LMDB_MAX_KEY: Final = 511  # LMDB's default compile-time key limit
_SNAPSHOT_PREFIX_BYTES: Final = _U64.size + 1
MAX_KEY_BYTES: Final = _LMDB_MAX_KEY - _SNAPSHOT_PREFIX_BYTES

_LAYOUT: Final = b"2"
_LAYOUT_1: Final = b"1"
_META_LAYOUT: Final = b"layout"
_META_HEAD: Final = b"head"
_META_LINEAGE: Final = b"lineage"
_META_CURSOR: Final = b"cursor:"  # + consumer name -> 8-byte position in its input (commit_at)
_META_CONSUMER: Final = b"consumer_state:"  # + consumer name -> its state bytes (commit_at), not replicated
_META_LOG_START: Final = b"log_start"
_META_SNAPSHOTS: Final = b"snapshots"
_META_POSITION: Final = b"replicated_position"  # where this store is in an external log (central tier)
_META_ROLLOUT: Final = b"rollout"  # the rollout in progress or the last one (sync/rollout.py's document)
_META_SKIPS: Final = b"rollout_skips"  # aborted candidates: base version -> rollback version


class ControlStoreError(RuntimeError):
    """The control store cannot do what was asked; the message says why and what to do."""


class LogCompacted(ControlStoreError):
    """Commits after a version were asked for, but the log no longer holds them: send a snapshot."""


@dataclass(frozen=True, slots=True)
class RecordChange:
    namespace: str
    key: str
    value: bytes | None  # None = delete (tombstone)


@dataclass(frozen=True, slots=True)
class CommitInfo:
    version: int  # seq of the last change
    base_version: int  # head before this commit
    first_seq: int
    changes: int
    kind: str  # "push" | "delta" | "rollback"
    created_at_ms: int
    description: str


RolloutWritten = tuple[bytes, "tuple[int, int] | None"]
"""The rollout state a commit writes: the rollout document and, for an abort, the skip (base version,
rollback version) to add."""

CommitHook = Callable[[CommitInfo, list[RecordChange], int, dict[str, int], RolloutWritten | None], int]
"""Called inside the write transaction of every new commit, before it commits, with the commit, its
changes in seq order, the store's replicated position, the consumer cursors the commit moves
(`commit_at`) and the rollout state written with it (None: none); returns the new position, written in
the same transaction. Raising aborts the transaction: nothing of the commit lands (the central tier
publishes each commit to its JetStream change log this way, docs/central.md)."""

RolloutHook = Callable[[bytes, "tuple[int, int] | None", int], int]
"""Like CommitHook, for rollout state written without a commit (a promote; an abort with nothing to roll
back): called with the document, the skip and the replicated position inside the write transaction;
returns the new position (the central tier publishes it to the change log)."""


RolloutWrite = Callable[[CommitInfo | None], "RolloutWritten | None"]
"""Called inside the write transaction of a push, rollback or abort with its commit (None: nothing
changed), before the commit hook; returns the rollout document to store with it and, for an abort, the
skip (base version, rollback version) to add, or None to store nothing: the rollout state lands with
its commit or not at all."""


@dataclass(frozen=True, slots=True)
class _Dbs:
    state: dict[str, Database]
    log: Database
    commits: Database
    snapshots: Database
    meta: Database
    forgotten: Database
    profile_log: Database


# -- encoding ------------------------------------------------------------------------------------------


def _check_namespace(namespace: str) -> None:
    if namespace not in REPLICATED:
        raise ControlStoreError(
            f"unknown namespace {namespace!r}: the replicated namespaces are {', '.join(REPLICATED)}"
        )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ControlStoreError(f"unknown commit kind {kind!r}: use one of {', '.join(KINDS)}")


def _encode_key(namespace: str, key: str) -> bytes:
    """The LMDB key of a record, after checking the namespace and the key's size."""
    _check_namespace(namespace)
    if not isinstance(key, str):
        raise ControlStoreError(f"key {key!r} in {namespace} must be a str, not {type(key).__name__}")
    try:
        raw = key.encode()
    except UnicodeEncodeError as exc:
        raise ControlStoreError(f"key {key!r} in {namespace} is not valid UTF-8 text: {exc}") from exc
    if not 0 < len(raw) <= MAX_KEY_BYTES:
        raise ControlStoreError(
            f"key {key[:40]!r} in {namespace} is {len(raw)} bytes of UTF-8; keys must be 1 to "
            f"{MAX_KEY_BYTES} bytes"
        )
    return raw


def _check_value(namespace: str, key: str, value: object) -> None:
    if value is not None and not isinstance(value, bytes):
        raise ControlStoreError(
            f"the value of {namespace}/{key} must be bytes or None, not {type(value).__name__}"
        )


def _pack_u64(number: int) -> bytes:
    return _U64.pack(number)


def _unpack_u64(raw: bytes) -> int:
    return int(_U64.unpack(raw)[0])


def _encode_change(namespace: str, key: str, value: bytes | None) -> bytes:
    return msgpack.packb([namespace, key, value], use_bin_type=True)


def _decode_change(raw: bytes) -> RecordChange:
    namespace, key, value = msgpack.unpackb(raw, raw=False)
    return RecordChange(str(namespace), str(key), None if value is None else bytes(value))


def _encode_commit(info: CommitInfo) -> bytes:
    return msgpack.packb(
        {
            "base_version": info.base_version,
            "first_seq": info.first_seq,
            "changes": info.changes,
            "kind": info.kind,
            "created_at_ms": info.created_at_ms,
            "description": info.description,
        },
        use_bin_type=True,
    )


def _decode_commit(key: bytes, raw: bytes) -> CommitInfo:
    fields = msgpack.unpackb(raw, raw=False)
    return CommitInfo(
        version=_unpack_u64(key),
        base_version=int(fields["base_version"]),
        first_seq=int(fields["first_seq"]),
        changes=int(fields["changes"]),
        kind=str(fields["kind"]),
        created_at_ms=int(fields["created_at_ms"]),
        description=str(fields["description"]),
    )


def _purge_profile(txn: lmdb.Transaction[bytes], dbs: _Dbs, user_id: str, raw_key: bytes) -> None:
    """Remove every logged value and every snapshot copy of one profile (for forget). A logged upsert
    becomes a tombstone (the commit keeps its number of changes; replaying it now deletes the profile).
    The profile-log index names the log entries to redact, so this reads only the profile's own."""
    redacted = _encode_change("profiles", user_id, None)
    with txn.cursor(db=dbs.profile_log) as cursor:
        seqs = [bytes(seq) for seq in cursor.iternext_dup(keys=False)] if cursor.set_key(raw_key) else []
        if seqs and cursor.set_key(raw_key):  # iternext_dup leaves the cursor past the last one
            cursor.delete(dupdata=True)
    for seq in seqs:
        raw = txn.get(seq, db=dbs.log)
        if raw is None:
            continue
        change = _decode_change(raw)
        if change.namespace == "profiles" and change.key == user_id and change.value is not None:
            txn.put(seq, redacted, db=dbs.log)
    for version in _snapshot_list(txn, dbs):
        txn.delete(_snapshot_prefix(version, "profiles") + raw_key, db=dbs.snapshots)


def _profile_log_key(namespace: str, key: str, value: bytes | None) -> bytes | None:
    """The profile-log index key of a logged change: the profile key of an upsert, None otherwise."""
    return key.encode() if namespace == "profiles" and value is not None else None


def _index_profile_log(
    txn: lmdb.Transaction[bytes], dbs: _Dbs, seq: bytes, namespace: str, key: str, value: bytes | None
) -> None:
    """Add one logged change to the profile-log index (profile upserts only)."""
    index_key = _profile_log_key(namespace, key, value)
    if index_key is not None:
        txn.put(index_key, seq, db=dbs.profile_log, dupdata=True)


def _upgrade_layout_1(txn: lmdb.Transaction[bytes], dbs: _Dbs) -> None:
    """Layout 1 -> 2, in the opening write transaction: index the logged profile upserts, and turn the
    forgotten list into one `forgotten` record per user (its forget commit's time), published in a
    "forget" commit with the list's tombstone. Edges purge those users once more: nothing is left."""
    with txn.cursor(db=dbs.log) as cursor:
        for seq, raw in cursor:
            change = _decode_change(raw)
            _index_profile_log(txn, dbs, bytes(seq), change.namespace, change.key, change.value)
    legacy = LEGACY_FORGOTTEN_KEY.encode()
    if txn.get(legacy, db=dbs.state["rules"]) is None:
        return
    batch = _Batch(txn, dbs)
    with txn.cursor(db=dbs.forgotten) as cursor:
        forgotten = [(bytes(key), _unpack_u64(value)) for key, value in cursor]
    for raw_key, version in forgotten:
        commit = _get_commit(txn, dbs, version)
        at = commit.created_at_ms if commit is not None else _now_ms()
        batch.put_owned("forgotten", raw_key.decode(), raw_key, _pack_u64(at))
    batch.retire_legacy_forgotten()
    batch.finish("forget", f"{len(forgotten)} forgotten users, one record each (store layout 2)")


def _drop_log_range(txn: lmdb.Transaction[bytes], dbs: _Dbs, first: bytes, last: bytes) -> int:
    """Delete the log entries with seq in [first, last] and their profile-log index entries; return how
    many log entries were deleted."""
    deleted = 0
    with txn.cursor(db=dbs.log) as cursor, txn.cursor(db=dbs.profile_log) as index:
        if not cursor.set_range(first):
            return 0
        while cursor.key() and cursor.key() <= last:
            seq = bytes(cursor.key())
            change = _decode_change(cursor.value())
            index_key = _profile_log_key(change.namespace, change.key, change.value)
            if index_key is not None and index.set_key_dup(index_key, seq):
                index.delete()
            cursor.delete()  # moves to the next key; key() is b"" past the end
            deleted += 1
    return deleted


def _snapshot_prefix(version: int, namespace: str) -> bytes:
    return _pack_u64(version) + bytes([REPLICATED.index(namespace)])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- transaction helpers -------------------------------------------------------------------------------


def _meta_u64(txn: lmdb.Transaction[bytes], dbs: _Dbs, key: bytes) -> int:
    raw = txn.get(key, db=dbs.meta)
    return 0 if raw is None else _unpack_u64(raw)


def _cursors(txn: lmdb.Transaction[bytes], dbs: _Dbs) -> dict[str, int]:
    found: dict[str, int] = {}
    with txn.cursor(db=dbs.meta) as cursor:
        if cursor.set_range(_META_CURSOR):
            for key, value in cursor.iternext():
                if not key.startswith(_META_CURSOR):
                    break
                found[bytes(key[len(_META_CURSOR) :]).decode()] = _unpack_u64(value)
    return found


def _snapshot_list(txn: lmdb.Transaction[bytes], dbs: _Dbs) -> list[int]:
    raw = txn.get(_META_SNAPSHOTS, db=dbs.meta)
    return [] if raw is None else [int(v) for v in msgpack.unpackb(raw)]


def _get_commit(txn: lmdb.Transaction[bytes], dbs: _Dbs, version: int) -> CommitInfo | None:
    key = _pack_u64(version)
    raw = txn.get(key, db=dbs.commits)
    return None if raw is None else _decode_commit(key, raw)


def _first_commit_after(txn: lmdb.Transaction[bytes], dbs: _Dbs, version: int) -> CommitInfo | None:
    """The oldest commit whose version is greater than `version`."""
    with txn.cursor(db=dbs.commits) as cursor:
        if not cursor.set_range(_pack_u64(version + 1)):
            return None
        return _decode_commit(cursor.key(), cursor.value())


def _read_changes(txn: lmdb.Transaction[bytes], dbs: _Dbs, info: CommitInfo) -> list[RecordChange]:
    changes: list[RecordChange] = []
    last = _pack_u64(info.version)
    with txn.cursor(db=dbs.log) as cursor:
        if cursor.set_range(_pack_u64(info.first_seq)):
            for key, raw in cursor.iternext():
                if key > last:
                    break
                changes.append(_decode_change(raw))
    if len(changes) != info.changes:
        raise ControlStoreError(
            f"the log holds {len(changes)} of the {info.changes} changes of commit {info.version}; "
            "the store is damaged: restore it from a backup"
        )
    return changes


def _delete_prefix(txn: lmdb.Transaction[bytes], db: Database, prefix: bytes) -> int:
    deleted = 0
    with txn.cursor(db=db) as cursor:
        if not cursor.set_range(prefix):
            return 0
        while cursor.key().startswith(prefix):
            cursor.delete()
            deleted += 1
    return deleted


class _Batch:
    """The changes of one commit, written inside one write transaction; no-ops are not logged."""

    __slots__ = ("_dbs", "_hook", "_logged", "_rollout", "_txn", "base_version", "cursors", "seq", "written")

    def __init__(
        self,
        txn: lmdb.Transaction[bytes],
        dbs: _Dbs,
        hook: CommitHook | None = None,
        rollout: RolloutWrite | None = None,
    ) -> None:
        self._txn = txn
        self._dbs = dbs
        self._hook = hook
        self._rollout = rollout
        self.written: RolloutWritten | None = None  # what `rollout` returned for the commit (finish)
        self._logged: list[RecordChange] = []
        self.cursors: dict[str, int] = {}  # consumer cursors this commit moves (commit_at), for the hook
        self.base_version = _meta_u64(txn, dbs, _META_HEAD)
        self.seq = self.base_version

    def _owned(self, namespace: str, key: str, raw_key: bytes) -> bool:
        """Keys only `forget` writes: a forgotten profile, the forgotten users' records (and layout 1's
        list of them)."""
        if namespace == "profiles":
            return self._txn.get(raw_key, db=self._dbs.forgotten) is not None
        return namespace == "forgotten" or (namespace == "rules" and key == LEGACY_FORGOTTEN_KEY)

    def put(self, namespace: str, key: str, raw_key: bytes, value: bytes) -> None:
        if self._owned(namespace, key, raw_key):
            return
        self.put_owned(namespace, key, raw_key, value)

    def put_owned(self, namespace: str, key: str, raw_key: bytes, value: bytes) -> None:
        db = self._dbs.state[namespace]
        if self._txn.get(raw_key, db=db) == value:
            return
        self._txn.put(raw_key, value, db=db)
        self._log(namespace, key, value)

    def delete(self, namespace: str, key: str, raw_key: bytes) -> None:
        if namespace == "forgotten" or (namespace == "rules" and key == LEGACY_FORGOTTEN_KEY):
            return
        if self._txn.delete(raw_key, db=self._dbs.state[namespace]):
            self._log(namespace, key, None)

    def retire_legacy_forgotten(self) -> None:
        """Delete (and log the tombstone of) layout 1's forgotten list (`_upgrade_layout_1`)."""
        if self._txn.delete(LEGACY_FORGOTTEN_KEY.encode(), db=self._dbs.state["rules"]):
            self._log("rules", LEGACY_FORGOTTEN_KEY, None)

    def delete_missing(self, namespace: str, keep: set[bytes]) -> None:
        """Tombstone every key of `namespace` that is not in `keep` (forgotten users' records stay)."""
        if namespace == "forgotten":
            return
        with self._txn.cursor(db=self._dbs.state[namespace]) as cursor:
            positioned = cursor.first()
            while positioned:
                raw_key = cursor.key()
                if raw_key in keep or (namespace == "rules" and raw_key == LEGACY_FORGOTTEN_KEY.encode()):
                    positioned = cursor.next()
                    continue
                cursor.delete()  # moves to the next key
                self._log(namespace, raw_key.decode(), None)
                positioned = bool(cursor.key())

    def _log(self, namespace: str, key: str, value: bytes | None) -> None:
        self.seq += 1
        seq = _pack_u64(self.seq)
        self._txn.put(seq, _encode_change(namespace, key, value), db=self._dbs.log, append=True)
        _index_profile_log(self._txn, self._dbs, seq, namespace, key, value)
        if self._hook is not None:
            self._logged.append(RecordChange(namespace, key, value))

    def finish(self, kind: str, description: str) -> CommitInfo | None:
        """Record the commit and the new head; None (nothing written) when every change was a no-op."""
        if self.seq == self.base_version:
            return None
        info = CommitInfo(
            version=self.seq,
            base_version=self.base_version,
            first_seq=self.base_version + 1,
            changes=self.seq - self.base_version,
            kind=kind,
            created_at_ms=_now_ms(),
            description=description,
        )
        self._txn.put(_pack_u64(info.version), _encode_commit(info), db=self._dbs.commits, append=True)
        self._txn.put(_META_HEAD, _pack_u64(info.version), db=self._dbs.meta)
        self.written = self._rollout(info) if self._rollout is not None else None
        if self._hook is not None:
            position = self._hook(
                info,
                self._logged,
                _meta_u64(self._txn, self._dbs, _META_POSITION),
                self.cursors,
                self.written,
            )
            self._txn.put(_META_POSITION, _pack_u64(position), db=self._dbs.meta)
        return info


def _collapse(changes: Iterable[RecordChange]) -> dict[tuple[str, str], tuple[bytes, bytes | None]]:
    """Validate `changes` and keep the last change per key, ordered by that last change."""
    pending: dict[tuple[str, str], tuple[bytes, bytes | None]] = {}
    for change in changes:
        raw_key = _encode_key(change.namespace, change.key)
        _check_value(change.namespace, change.key, change.value)
        ident = (change.namespace, change.key)
        pending.pop(ident, None)
        pending[ident] = (raw_key, change.value)
    return pending


# -- the views -----------------------------------------------------------------------------------------


class PastView:
    """The state at an older version, rebuilt from a retained snapshot and the log, as of one read
    transaction (`ControlStore.read_at`); use it only inside its `with` block."""

    __slots__ = ("_base", "_overlay", "_store", "_txn", "version")

    def __init__(
        self,
        store: ControlStore,
        txn: lmdb.Transaction[bytes],
        version: int,
        base: int,
        overlay: dict[tuple[str, bytes], int],
    ) -> None:
        self._store = store
        self._txn = txn
        self.version = version
        self._base = base
        self._overlay = overlay

    def items(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        """Every record of one namespace at `version` (base snapshot records first, then changed ones)."""
        overlay = {k: seq for k, seq in self._overlay.items() if k[0] == namespace}
        for change in self._store._state_at(self._txn, self._base, overlay, (namespace,)):
            assert change.value is not None
            yield change.key, change.value


class ControlView:
    """The current state as of one read transaction; use it only inside its `with` block."""

    __slots__ = ("_dbs", "_txn", "version")

    def __init__(self, txn: lmdb.Transaction[bytes], dbs: _Dbs) -> None:
        self._txn = txn
        self._dbs = dbs
        self.version: int = _meta_u64(txn, dbs, _META_HEAD)

    def get(self, namespace: str, key: str) -> bytes | None:
        value = self._txn.get(_encode_key(namespace, key), db=self._dbs.state[namespace])
        return None if value is None else bytes(value)

    def items(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        _check_namespace(namespace)
        with self._txn.cursor(db=self._dbs.state[namespace]) as cursor:
            for raw_key, value in cursor:
                yield raw_key.decode(), bytes(value)

    def count(self, namespace: str) -> int:
        _check_namespace(namespace)
        return int(self._txn.stat(self._dbs.state[namespace])["entries"])


# -- the store -----------------------------------------------------------------------------------------


class ControlStore:
    """The control plane's LMDB environment: state, change log, commits and snapshots (see the module doc)."""

    def __init__(
        self,
        path: str | Path,
        *,
        map_size: int = 64 << 30,
        retain_snapshots: int = 3,
        retain_log_changes: int = 5_000_000,
    ) -> None:
        if retain_snapshots < 0 or retain_log_changes < 0:
            raise ControlStoreError(
                f"retain_snapshots ({retain_snapshots}) and retain_log_changes ({retain_log_changes}) "
                "must be 0 or more"
            )
        self.path = Path(path)
        self._map_size = map_size
        self._retain_snapshots = retain_snapshots
        self._retain_log_changes = retain_log_changes
        self._env, self._dbs = self._open()
        self._check_layout()
        self.lineage: str = self._lineage()
        self.on_commit: CommitHook | None = None  # see CommitHook; set by the central tier
        self.on_rollout: RolloutHook | None = None  # see RolloutHook; set by the central tier

    def _open(self) -> tuple[lmdb.Environment, _Dbs]:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            env = lmdb.open(
                str(self.path),
                map_size=self._map_size,
                max_dbs=16,
                max_readers=512,
                lock=True,  # readers must be visible to the writer
                sync=True,
                metasync=True,
                readahead=False,
            )
            dbs = _Dbs(
                state={name: env.open_db(f"state-{name}".encode()) for name in REPLICATED},
                log=env.open_db(b"log"),
                commits=env.open_db(b"commits"),
                snapshots=env.open_db(b"snapshots"),
                forgotten=env.open_db(b"forgotten"),
                meta=env.open_db(b"meta"),
                profile_log=env.open_db(b"profile-log", dupsort=True),
            )
        except (OSError, lmdb.Error) as exc:
            raise ControlStoreError(f"cannot open the control store at {self.path}: {exc}") from exc
        return env, dbs

    def _check_layout(self) -> None:
        with self._write() as txn:
            layout = txn.get(_META_LAYOUT, db=self._dbs.meta)
            if layout is None:
                txn.put(_META_LAYOUT, _LAYOUT, db=self._dbs.meta)
            elif layout == _LAYOUT_1:
                _upgrade_layout_1(txn, self._dbs)
                txn.put(_META_LAYOUT, _LAYOUT, db=self._dbs.meta)
            elif layout != _LAYOUT:
                raise ControlStoreError(
                    f"the control store at {self.path} has layout {layout!r}, this code reads {_LAYOUT!r}: "
                    "open it with a matching release"
                )

    def _lineage(self) -> str:
        with self._write() as txn:
            raw = txn.get(_META_LINEAGE, db=self._dbs.meta)
            if raw is None:
                raw = uuid.uuid4().hex.encode()
                txn.put(_META_LINEAGE, raw, db=self._dbs.meta)
        return bytes(raw).decode()

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> ControlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[lmdb.Transaction[bytes]]:
        """One write transaction: committed when the block ends normally, aborted on any exception."""
        try:
            with self._env.begin(write=True) as txn:
                yield txn
        except lmdb.MapFullError as exc:
            raise ControlStoreError(
                f"the control store at {self.path} is full (map_size {self._map_size} bytes): "
                "reopen it with a larger map_size"
            ) from exc
        except lmdb.Error as exc:
            raise ControlStoreError(f"writing the control store at {self.path} failed: {exc}") from exc

    @contextmanager
    def read(self) -> Iterator[ControlView]:
        """A consistent view of the current state (one read transaction; values are bytes)."""
        with self._env.begin(buffers=False) as txn:
            yield ControlView(txn, self._dbs)

    # -- versions --------------------------------------------------------------------------------------

    def head_version(self) -> int:
        with self._env.begin() as txn:
            return _meta_u64(txn, self._dbs, _META_HEAD)

    def log_start_version(self) -> int:
        with self._env.begin() as txn:
            return _meta_u64(txn, self._dbs, _META_LOG_START)

    def snapshot_versions(self) -> list[int]:
        with self._env.begin() as txn:
            return _snapshot_list(txn, self._dbs)

    def history(self, limit: int = 50) -> list[CommitInfo]:
        """The newest `limit` commits, newest first."""
        found: list[CommitInfo] = []
        if limit <= 0:
            return found
        with self._env.begin() as txn, txn.cursor(db=self._dbs.commits) as cursor:
            if not cursor.last():
                return found
            for key, raw in cursor.iterprev():
                found.append(_decode_commit(key, raw))
                if len(found) >= limit:
                    break
        return found

    # -- writes ----------------------------------------------------------------------------------------

    def commit(
        self,
        changes: Iterable[RecordChange],
        *,
        kind: str,
        description: str = "",
        rollout: RolloutWrite | None = None,
    ) -> CommitInfo | None:
        """Apply `changes` in one write transaction; None when all of them were no-ops. `rollout`: the
        rollout state written in the same transaction (see RolloutWrite)."""
        return self.commit_at(changes, kind=kind, description=description, rollout=rollout)

    def commit_at(
        self,
        changes: Iterable[RecordChange],
        *,
        kind: str,
        description: str = "",
        cursor: str = "",
        position: int = 0,
        rollout: RolloutWrite | None = None,
        cursors: Mapping[str, int] | None = None,
        consumer_state: Mapping[str, bytes] | None = None,
    ) -> CommitInfo | None:
        """`commit`, and, in the same transaction, set the named `cursor` to `position` (and each of
        `cursors` to its position): a consumer that turns an input stream into commits (the profile
        folder) moves its place in that stream exactly when its commit lands, so after a crash it neither
        loses nor repeats any input. `consumer_state`: consumer name -> bytes a consumer keeps beside its
        cursor (`consumer_state`), written in the same transaction; local to this store (no commit, no
        commit hook: the central tier's log does not carry it)."""
        _check_kind(kind)
        pending = _collapse(changes)
        moved = dict(cursors or {})
        if cursor:
            moved[cursor] = position
        if not pending and not moved and not consumer_state:
            return None
        with self._write() as txn:
            batch = _Batch(txn, self._dbs, self.on_commit, rollout)
            batch.cursors.update(moved)
            for (namespace, key), (raw_key, value) in pending.items():
                if value is None:
                    batch.delete(namespace, key, raw_key)
                else:
                    batch.put(namespace, key, raw_key, value)
            info = batch.finish(kind, description)
            if info is not None:
                self._compact_in(txn)
            self._finish_rollout(txn, rollout, info, batch.written)
            for name, at in moved.items():
                txn.put(_META_CURSOR + name.encode(), _pack_u64(at), db=self._dbs.meta)
            for name, value in (consumer_state or {}).items():
                txn.put(_META_CONSUMER + name.encode(), value, db=self._dbs.meta)
        return info

    def consumer_state(self, name: str) -> bytes | None:
        """The state bytes a consumer last wrote with `commit_at` (None: never)."""
        with self._env.begin(buffers=False) as txn:
            raw = txn.get(_META_CONSUMER + name.encode(), db=self._dbs.meta)
        return bytes(raw) if raw is not None else None

    def cursor(self, name: str, default: int = 0) -> int:
        """A consumer's position set by `commit_at` (`default` when never set)."""
        with self._env.begin() as txn:
            raw = txn.get(_META_CURSOR + name.encode(), db=self._dbs.meta)
        return _unpack_u64(raw) if raw is not None else default

    def cursors(self) -> dict[str, int]:
        """Every consumer's position set by `commit_at` (or `apply_commit`, `install_snapshot`)."""
        with self._env.begin() as txn:
            return _cursors(txn, self._dbs)

    def replace_all(
        self,
        records: Iterable[RecordChange],
        *,
        kind: str,
        description: str = "",
        rollout: RolloutWrite | None = None,
    ) -> CommitInfo | None:
        """Make `records` the complete state in one write transaction, logging only real differences,
        and keep a snapshot of it. Streams: memory grows with the number of keys, not value bytes."""
        _check_kind(kind)
        with self._write() as txn:
            return self._replace_in(txn, records, kind, description, rollout)

    def rollback(
        self, version: int, *, description: str | None = None, rollout: RolloutWrite | None = None
    ) -> CommitInfo | None:
        """Publish the state as of commit `version` as a new "rollback" commit (None if it is the head)."""
        text = description if description is not None else f"rollback to version {version}"
        with self._write() as txn:
            head = _meta_u64(txn, self._dbs, _META_HEAD)
            self._check_rollback_target(txn, version, head)
            if version == head:
                self._finish_rollout(txn, rollout, None, None)
                return None
            base = self._reconstruction_base(txn, version)
            overlay = self._log_overlay(txn, base, version)
            records = self._state_at(txn, base, overlay)
            return self._replace_in(txn, records, "rollback", text, rollout)

    # -- rollouts (sync/rollout.py) --------------------------------------------------------------------

    def _finish_rollout(
        self,
        txn: lmdb.Transaction[bytes],
        rollout: RolloutWrite | None,
        info: CommitInfo | None,
        written: RolloutWritten | None,
    ) -> None:
        """Store the rollout state of a push, rollback or abort: `written`, what `rollout(info)` returned
        when its commit was made (and the commit hook got with it); without a commit, `rollout(None)`,
        which goes to the rollout hook by itself."""
        if info is None:
            written = rollout(None) if rollout is not None else None
            if written is not None:
                self._publish_rollout(txn, written)
        self._store_rollout(txn, written)

    def _publish_rollout(self, txn: lmdb.Transaction[bytes], written: RolloutWritten) -> None:
        if self.on_rollout is not None:
            position = self.on_rollout(written[0], written[1], _meta_u64(txn, self._dbs, _META_POSITION))
            txn.put(_META_POSITION, _pack_u64(position), db=self._dbs.meta)

    def _store_rollout(self, txn: lmdb.Transaction[bytes], written: RolloutWritten | None) -> None:
        if written is None:
            return
        doc, skip = written
        txn.put(_META_ROLLOUT, doc, db=self._dbs.meta)
        if skip is not None:
            raw = txn.get(_META_SKIPS, db=self._dbs.meta)
            skips = [] if raw is None else [tuple(p) for p in msgpack.unpackb(raw)]
            if tuple(skip) not in skips:
                skips.append(tuple(skip))
            txn.put(_META_SKIPS, msgpack.packb(sorted(skips)), db=self._dbs.meta)

    def put_rollout(self, doc: bytes) -> None:
        """Store the rollout document (a promote, or a rollout ended without a commit)."""
        with self._write() as txn:
            self._publish_rollout(txn, (doc, None))
            self._store_rollout(txn, (doc, None))

    def apply_rollout(self, doc: bytes, skip: tuple[int, int] | None, position: int) -> bool:
        """The central tier: store rollout state another replica published by itself (a promote), and set
        the replicated position to `position`, in one write transaction; False when already past it."""
        with self._write() as txn:
            if _meta_u64(txn, self._dbs, _META_POSITION) >= position:
                return False
            self._store_rollout(txn, (doc, skip))
            txn.put(_META_POSITION, _pack_u64(position), db=self._dbs.meta)
        return True

    def rollout_record(self) -> tuple[bytes | None, bytes | None]:
        """The stored rollout document and the skips of aborted candidates (msgpack [[base, to], ...])."""
        with self._env.begin() as txn:
            doc = txn.get(_META_ROLLOUT, db=self._dbs.meta)
            skips = txn.get(_META_SKIPS, db=self._dbs.meta)
        return (None if doc is None else bytes(doc)), (None if skips is None else bytes(skips))

    def collapsed(self, base: int, version: int) -> tuple[CommitInfo, list[RecordChange]]:
        """One commit from `base` to `version` (both commit versions): every key changed in between with
        its value at `version` (a tombstone if deleted), so an edge at `base` reaches the state at
        `version` without any value it held only in between. LogCompacted if the log no longer holds
        (base, version]."""
        with self._env.begin() as txn:
            if base < _meta_u64(txn, self._dbs, _META_LOG_START):
                raise LogCompacted(f"the log no longer holds the commits after {base}: send a full snapshot")
            last = _pack_u64(version)
            pending: dict[tuple[str, str], RecordChange] = {}
            with txn.cursor(db=self._dbs.log) as cursor:
                if cursor.set_range(_pack_u64(base + 1)):
                    for key, raw in cursor.iternext():
                        if key > last:
                            break
                        change = _decode_change(raw)
                        ident = (change.namespace, change.key)
                        pending.pop(ident, None)
                        pending[ident] = change
            newest = _get_commit(txn, self._dbs, version)
        changes = list(pending.values())
        info = CommitInfo(
            version=version,
            base_version=base,
            first_seq=base + 1,
            changes=len(changes),
            kind="rollback",
            created_at_ms=newest.created_at_ms if newest is not None else _now_ms(),
            description=f"from version {base} to {version}, without the aborted rollout between them",
        )
        return info, changes

    @contextmanager
    def read_at(self, version: int) -> Iterator[ControlView | PastView]:
        """A view of the state at commit `version` (the head: the current state), as of one read
        transaction; ControlStoreError when no retained snapshot and log can rebuild it."""
        with self._env.begin(buffers=False) as txn:
            head = _meta_u64(txn, self._dbs, _META_HEAD)
            if version == head:
                yield ControlView(txn, self._dbs)
                return
            self._check_rollback_target(txn, version, head)
            base = self._reconstruction_base(txn, version)
            overlay = self._log_overlay(txn, base, version)
            yield PastView(self, txn, version, base, overlay)

    def forget(self, user_id: str) -> CommitInfo | None:
        """Forget a user in one write transaction: the profile is deleted (a tombstone edges apply), and
        every copy of it in the change log and the retained snapshots is purged; the user gets a record
        in the `forgotten` namespace (edges purge their own copies when it arrives), and no later push,
        delta or rollback can bring the profile back. Its cost does not grow with the number of users
        forgotten before or with the length of the log."""
        raw_key = _encode_key("profiles", user_id)
        with self._write() as txn:
            dbs = self._dbs
            already = txn.get(raw_key, db=dbs.forgotten) is not None
            if not already:
                txn.put(raw_key, _pack_u64(0), db=dbs.forgotten)  # the commit's version, below
            _purge_profile(txn, dbs, user_id, raw_key)
            batch = _Batch(txn, dbs, self.on_commit)
            batch.delete("profiles", user_id, raw_key)
            if not already:
                batch.put_owned("forgotten", user_id, raw_key, _pack_u64(_now_ms()))
            info = batch.finish("forget", f"forget {user_id}")
            if info is not None:
                txn.put(raw_key, _pack_u64(info.version), db=dbs.forgotten)
            return info

    def forgotten(self) -> dict[str, int]:
        """Forgotten user id -> the version of its forget commit."""
        with self._env.begin() as txn:
            return {bytes(k).decode(): _unpack_u64(v) for k, v in txn.cursor(db=self._dbs.forgotten)}

    def forgotten_newest(self, limit: int) -> tuple[list[tuple[str, int]], int]:
        """The `limit` most recently forgotten users as (user id, version of the forget), newest first,
        and the number of forgotten users in all."""
        with self._env.begin() as txn:
            total = int(txn.stat(self._dbs.forgotten)["entries"])
            with txn.cursor(db=self._dbs.forgotten) as cursor:
                newest = heapq.nlargest(
                    limit, ((_unpack_u64(v), bytes(k).decode()) for k, v in cursor), key=lambda vu: vu
                )
        return [(user, version) for version, user in newest], total

    def forgotten_among(self, user_ids: Iterable[str]) -> set[str]:
        """The users of `user_ids` that were forgotten (one read transaction)."""
        with self._env.begin() as txn:
            return {
                user
                for user in set(user_ids)
                if user
                and 0 < len(raw := user.encode()) <= MAX_KEY_BYTES
                and txn.get(raw, db=self._dbs.forgotten) is not None
            }

    def forgotten_version(self, user_id: str) -> int | None:
        """The version of the commit that forgot `user_id`, or None if it was not forgotten."""
        with self._env.begin() as txn:
            raw = txn.get(_encode_key("profiles", user_id), db=self._dbs.forgotten)
        return None if raw is None else _unpack_u64(raw)

    def compact(self) -> int:
        """Drop the oldest whole commits from the log while it holds more than `retain_log_changes`
        changes; return the number of changes dropped."""
        with self._write() as txn:
            return self._compact_in(txn)

    def _replace_in(
        self,
        txn: lmdb.Transaction[bytes],
        records: Iterable[RecordChange],
        kind: str,
        description: str,
        rollout: RolloutWrite | None = None,
    ) -> CommitInfo | None:
        batch = _Batch(txn, self._dbs, self.on_commit, rollout)
        seen: dict[str, set[bytes]] = {name: set() for name in REPLICATED}
        for record in records:
            raw_key = _encode_key(record.namespace, record.key)
            if record.value is None:
                raise ControlStoreError(
                    f"replace_all got a delete of {record.namespace}/{record.key}: records are the "
                    "complete new state, so leave a key out to delete it"
                )
            _check_value(record.namespace, record.key, record.value)
            keys = seen[record.namespace]
            if raw_key in keys:
                raise ControlStoreError(
                    f"replace_all got {record.namespace}/{record.key} twice: the new state must name each "
                    "key once"
                )
            keys.add(raw_key)
            batch.put(record.namespace, record.key, raw_key, record.value)
        for name in REPLICATED:
            batch.delete_missing(name, seen[name])
            seen[name] = set()
        info = batch.finish(kind, description)
        if info is not None:
            self._save_snapshot(txn, info.version)
            self._compact_in(txn)
        self._finish_rollout(txn, rollout, info, batch.written)
        return info

    def _save_snapshot(self, txn: lmdb.Transaction[bytes], version: int) -> None:
        """Copy the state into `snapshots` at `version`, then drop all but the newest retained ones."""
        if self._retain_snapshots == 0:
            return
        with txn.cursor(db=self._dbs.snapshots) as out:
            for name in REPLICATED:
                prefix = _snapshot_prefix(version, name)
                with txn.cursor(db=self._dbs.state[name]) as cursor:
                    # `version` is newer than every stored snapshot, so its keys sort last: append.
                    out.putmulti(((prefix + key, value) for key, value in cursor), append=True)
        versions = [*_snapshot_list(txn, self._dbs), version]
        keep = versions[-self._retain_snapshots :]
        for old in versions[: -self._retain_snapshots]:
            _delete_prefix(txn, self._dbs.snapshots, _pack_u64(old))
        txn.put(_META_SNAPSHOTS, msgpack.packb(keep), db=self._dbs.meta)

    def _compact_in(self, txn: lmdb.Transaction[bytes]) -> int:
        log_start = _meta_u64(txn, self._dbs, _META_LOG_START)
        remaining = int(txn.stat(self._dbs.log)["entries"])
        dropped = 0
        while remaining > self._retain_log_changes:
            oldest = _first_commit_after(txn, self._dbs, log_start)
            if oldest is None:
                break
            count = _drop_log_range(txn, self._dbs, _pack_u64(oldest.first_seq), _pack_u64(oldest.version))
            remaining -= count
            dropped += count
            log_start = oldest.version
        if dropped:
            txn.put(_META_LOG_START, _pack_u64(log_start), db=self._dbs.meta)
        return dropped

    # -- rebuilding an older state ---------------------------------------------------------------------

    def _check_rollback_target(self, txn: lmdb.Transaction[bytes], version: int, head: int) -> None:
        if version > head or version < 0:
            raise ControlStoreError(f"cannot roll back to version {version}: the head is version {head}")
        if _get_commit(txn, self._dbs, version) is None:
            raise ControlStoreError(
                f"cannot roll back to version {version}: it is not a commit version; pick one from history()"
            )

    def _reconstruction_base(self, txn: lmdb.Transaction[bytes], version: int) -> int:
        """The version to rebuild `version` from: the newest retained snapshot at or below it, or 0 (the
        empty state); the log must hold every change between the base and `version`."""
        snapshots = _snapshot_list(txn, self._dbs)
        log_start = _meta_u64(txn, self._dbs, _META_LOG_START)
        base = max((s for s in snapshots if s <= version), default=0)
        if base == version or base >= log_start:
            return base
        listed = ", ".join(str(s) for s in snapshots)
        if not snapshots:
            why = "there are no retained snapshots"
        elif base == 0:
            why = f"it is older than every retained snapshot ({listed})"
        else:
            why = f"the newest retained snapshot at or below it is {base} (retained: {listed})"
        raise ControlStoreError(
            f"cannot roll back to version {version}: {why} and the log starts at {log_start}; "
            "roll back to a retained snapshot or a later version"
        )

    def _log_overlay(
        self, txn: lmdb.Transaction[bytes], base: int, version: int
    ) -> dict[tuple[str, bytes], int]:
        """For each key changed in (base, version]: the seq of its last change there."""
        overlay: dict[tuple[str, bytes], int] = {}
        last = _pack_u64(version)
        with txn.cursor(db=self._dbs.log) as cursor:
            if not cursor.set_range(_pack_u64(base + 1)):
                return overlay
            for key, raw in cursor.iternext():
                if key > last:
                    break
                change = _decode_change(raw)
                overlay[(change.namespace, change.key.encode())] = _unpack_u64(key)
        return overlay

    def _state_at(
        self,
        txn: lmdb.Transaction[bytes],
        base: int,
        overlay: dict[tuple[str, bytes], int],
        namespaces: Iterable[str] = REPLICATED,
    ) -> Iterator[RecordChange]:
        """Stream the state at the target version: the base snapshot minus overlaid keys, then the last
        logged value of every overlaid key that was not deleted."""
        if base > 0:
            for name in namespaces:
                prefix = _snapshot_prefix(base, name)
                with txn.cursor(db=self._dbs.snapshots) as cursor:
                    if not cursor.set_range(prefix):
                        continue
                    for key, value in cursor.iternext():
                        if not key.startswith(prefix):
                            break
                        raw_key = key[len(prefix) :]
                        if (name, raw_key) not in overlay:
                            yield RecordChange(name, raw_key.decode(), bytes(value))
        for seq in overlay.values():
            raw = txn.get(_pack_u64(seq), db=self._dbs.log)
            if raw is None:  # `overlay` was read from the log in this transaction
                raise ControlStoreError(f"change {seq} left the log while it was read; the store is damaged")
            change = _decode_change(raw)
            if change.value is not None:
                yield change

    # -- catching up -----------------------------------------------------------------------------------

    def commits_after(self, version: int) -> Iterator[tuple[CommitInfo, list[RecordChange]]]:
        """The commits with `base_version >= version` up to the head at the time of the call, oldest
        first, each with its changes in seq order. Raises LogCompacted (now, not on first iteration) if
        the log no longer holds them. Each commit is read in its own short read transaction."""
        if version < 0:
            raise ControlStoreError(f"version {version} is negative; versions start at 0")
        with self._env.begin() as txn:
            log_start = _meta_u64(txn, self._dbs, _META_LOG_START)
            head = _meta_u64(txn, self._dbs, _META_HEAD)
        if version < log_start:
            raise LogCompacted(
                f"version {version} is older than the start of the log ({log_start}): send a full snapshot"
            )
        return self._iter_commits(version, head)

    def _iter_commits(self, version: int, head: int) -> Iterator[tuple[CommitInfo, list[RecordChange]]]:
        position = version
        while position < head:
            found = self._read_next_commit(position, version)
            if found is None or found[0].version > head:
                return
            position = found[0].version
            yield found

    def _read_next_commit(self, position: int, floor: int) -> tuple[CommitInfo, list[RecordChange]] | None:
        with self._env.begin() as txn:
            info = _first_commit_after(txn, self._dbs, position)
            while info is not None and info.base_version < floor:
                info = _first_commit_after(txn, self._dbs, info.version)
            if info is None:
                return None
            log_start = _meta_u64(txn, self._dbs, _META_LOG_START)
            if info.base_version < log_start:
                raise LogCompacted(
                    f"the log was compacted past version {info.base_version} while it was being read "
                    f"(it now starts at {log_start}): send a full snapshot"
                )
            return info, _read_changes(txn, self._dbs, info)

    # -- the central tier: this store as a materialized view of an external change log ----------------

    def replicated_position(self) -> int:
        """This store's position in the external log it materializes (0: none applied)."""
        with self._env.begin() as txn:
            return _meta_u64(txn, self._dbs, _META_POSITION)

    def apply_commit(
        self,
        info: CommitInfo,
        changes: list[RecordChange],
        position: int,
        cursors: dict[str, int] | None = None,
        rollout: RolloutWritten | None = None,
    ) -> bool:
        """Apply a commit made by another replica, verbatim (its version, seqs, time and kind), with the
        rollout state it wrote, and set the replicated position to `position`, in one write transaction.
        False (nothing written) when the store is already at or past `position`. A commit that does not
        continue the head raises: the store is not the log's materialized view any more (rebuild it)."""
        if len(changes) != info.changes or info.version != info.base_version + info.changes:
            raise ControlStoreError(
                f"commit {info.version} carries {len(changes)} changes for {info.changes} "
                f"(base {info.base_version}): not a commit of this format"
            )
        with self._write() as txn:
            dbs = self._dbs
            if _meta_u64(txn, dbs, _META_POSITION) >= position:
                return False
            head = _meta_u64(txn, dbs, _META_HEAD)
            if info.base_version != head:
                raise ControlStoreError(
                    f"commit {info.version} at log position {position} follows version {info.base_version}, "
                    f"this store is at version {head}: the cache diverged from the log; rebuild it"
                )
            if info.kind == "forget":
                for change in changes:
                    if change.namespace == "forgotten" or (
                        change.namespace == "profiles" and change.value is None
                    ):
                        raw_key = _encode_key("profiles", change.key)
                        if change.namespace == "forgotten":
                            txn.put(raw_key, _pack_u64(info.version), db=dbs.forgotten)
                        _purge_profile(txn, dbs, change.key, raw_key)
            seq = info.base_version
            for change in changes:
                raw_key = _encode_key(change.namespace, change.key)
                _check_value(change.namespace, change.key, change.value)
                state = dbs.state[change.namespace]
                if change.value is None:
                    txn.delete(raw_key, db=state)
                else:
                    txn.put(raw_key, change.value, db=state)
                seq += 1
                packed = _pack_u64(seq)
                txn.put(
                    packed,
                    _encode_change(change.namespace, change.key, change.value),
                    db=dbs.log,
                    append=True,
                )
                _index_profile_log(txn, dbs, packed, change.namespace, change.key, change.value)
            txn.put(_pack_u64(info.version), _encode_commit(info), db=dbs.commits, append=True)
            txn.put(_META_HEAD, _pack_u64(info.version), db=dbs.meta)
            txn.put(_META_POSITION, _pack_u64(position), db=dbs.meta)
            for name, at in (cursors or {}).items():  # the consumer positions this commit moved
                txn.put(_META_CURSOR + name.encode(), _pack_u64(at), db=dbs.meta)
            if info.kind in ("push", "rollback"):
                self._save_snapshot(txn, info.version)
            self._compact_in(txn)
            self._store_rollout(txn, rollout)
        return True

    def install_snapshot(
        self,
        *,
        lineage: str,
        commits: list[CommitInfo],
        records: Iterable[RecordChange],
        forgotten: dict[str, int],
        position: int,
        cursors: Mapping[str, int] | None = None,
        rollout: tuple[bytes | None, bytes | None] | None = None,
    ) -> None:
        """Replace everything with a full snapshot of another store in one write transaction: its lineage,
        state (`records`), forgotten users (user -> version of the forget), the newest `commits` (the head
        first, for history), the consumer cursors at that state (None: keep this store's), its rollout
        record (`rollout_record()`'s pair; None: keep this store's) and the log position it was taken at.
        The log starts at the head."""
        head = commits[0].version if commits else 0
        with self._write() as txn:
            dbs = self._dbs
            for db in (
                *dbs.state.values(),
                dbs.log,
                dbs.commits,
                dbs.snapshots,
                dbs.forgotten,
                dbs.profile_log,
            ):
                txn.drop(db, delete=False)
            txn.delete(_META_SNAPSHOTS, db=dbs.meta)
            for record in records:
                if record.value is None:
                    raise ControlStoreError(f"a snapshot holds a delete of {record.namespace}/{record.key}")
                txn.put(
                    _encode_key(record.namespace, record.key), record.value, db=dbs.state[record.namespace]
                )
            for user, version in forgotten.items():
                txn.put(_encode_key("profiles", user), _pack_u64(version), db=dbs.forgotten)
            for info in sorted(commits, key=lambda c: c.version):
                txn.put(_pack_u64(info.version), _encode_commit(info), db=dbs.commits)
            txn.put(_META_HEAD, _pack_u64(head), db=dbs.meta)
            txn.put(_META_LOG_START, _pack_u64(head), db=dbs.meta)
            txn.put(_META_LINEAGE, lineage.encode(), db=dbs.meta)
            txn.put(_META_POSITION, _pack_u64(position), db=dbs.meta)
            if cursors is not None:
                for name in _cursors(txn, dbs):
                    txn.delete(_META_CURSOR + name.encode(), db=dbs.meta)
                for name, at in cursors.items():
                    txn.put(_META_CURSOR + name.encode(), _pack_u64(at), db=dbs.meta)
            if rollout is not None:
                for meta, raw in zip((_META_ROLLOUT, _META_SKIPS), rollout, strict=True):
                    if raw is None:
                        txn.delete(meta, db=dbs.meta)
                    else:
                        txn.put(meta, raw, db=dbs.meta)
            if head > 0:
                self._save_snapshot(txn, head)
        self.lineage = lineage

    def adopt_lineage(self, lineage: str) -> None:
        """Take the lineage of the log this empty store is to materialize (ControlStoreError if it holds
        commits: those came from elsewhere)."""
        with self._write() as txn:
            if _meta_u64(txn, self._dbs, _META_HEAD) or _meta_u64(txn, self._dbs, _META_POSITION):
                raise ControlStoreError(
                    f"the store at {self.path} is not empty: it cannot take another lineage"
                )
            txn.put(_META_LINEAGE, lineage.encode(), db=self._dbs.meta)
        self.lineage = lineage

    def image(self, commits: int = 50) -> tuple[int, list[CommitInfo], dict[str, int], list[RecordChange]]:
        """Everything a replica needs to start from this store, as of one read transaction: the
        replicated position, the newest `commits` (newest first), forgotten user -> version, and every
        record of the state (`image_and_cursors` adds the consumer cursors)."""
        return self.image_and_cursors(commits)[:4]

    def image_and_cursors(
        self, commits: int = 50
    ) -> tuple[int, list[CommitInfo], dict[str, int], list[RecordChange], dict[str, int]]:
        """`image`, and the consumer cursors at that state (the same read transaction)."""
        return self.replica_image(commits)[:5]

    def replica_image(
        self, commits: int = 50
    ) -> tuple[
        int,
        list[CommitInfo],
        dict[str, int],
        list[RecordChange],
        dict[str, int],
        tuple[bytes | None, bytes | None],
    ]:
        """`image_and_cursors`, and the rollout record at that state (the same read transaction)."""
        with self._env.begin() as txn:
            dbs = self._dbs
            position = _meta_u64(txn, dbs, _META_POSITION)
            infos: list[CommitInfo] = []
            with txn.cursor(db=dbs.commits) as cursor:
                if cursor.last():
                    for key, raw in cursor.iterprev():
                        infos.append(_decode_commit(key, raw))
                        if len(infos) >= commits:
                            break
            forgotten = {bytes(k).decode(): _unpack_u64(v) for k, v in txn.cursor(db=dbs.forgotten)}
            records = [
                RecordChange(name, bytes(key).decode(), bytes(value))
                for name in REPLICATED
                for key, value in txn.cursor(db=dbs.state[name])
            ]
            cursors = _cursors(txn, dbs)
            doc = txn.get(_META_ROLLOUT, db=dbs.meta)
            skips = txn.get(_META_SKIPS, db=dbs.meta)
        rollout = (None if doc is None else bytes(doc)), (None if skips is None else bytes(skips))
        return position, infos, forgotten, records, cursors, rollout
