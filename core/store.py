"""The LMDB store: one environment, one named database per namespace (see ARCHITECTURE.md).

Replicated namespaces (`profiles`, `items`, `models`, `rules`) change only through
`Store.replace_replicated`, one write transaction that also records the new version in `meta`: a
reader sees the old state or the new one, never a mix, and a crash mid-apply leaves the old one.
Edge-local namespaces (`activity`, `events`, `outbox`) change through `Store.record_events`.
The derived namespace `model_rows` holds row chunks of the large model arrays that requests read a few
rows of (`ROW_CHUNKED`), rebuilt from `models` in the same write transaction that changes them: py-lmdb
touches every 4 KB page of a value it returns (to take page faults without the GIL), so reading a few
rows of a 2 MB array through `ReadView.array` costs hundreds of page touches, through
`ReadView.rows` a few.

Reads go through `Store.read()`: one short read transaction with `buffers=True`. Values are
memoryviews into the map; `ReadView.array` returns arrays over them without copying, so nothing read
from a view may be kept after its `with` block ends.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import lmdb
import msgpack
import numpy as np
from numpy.typing import NDArray

from edgewise.core.activity import (
    CONSENT_EVENT,
    ActivityLimits,
    Event,
    activity_key,
    apply_event,
    expire,
    newest_ms,
)
from edgewise.core.records import (
    Activity,
    ItemRecord,
    ProfileRecord,
    RecordError,
    decode_activity,
    decode_array,
    decode_item,
    decode_profile,
    encode_activity,
    encode_array,
)

__all__ = [
    "DERIVED",
    "EDGE_LOCAL",
    "NAMESPACES",
    "PER_USER",
    "REPLICATED",
    "ROW_CHUNKED",
    "ReadView",
    "Store",
    "StoreError",
    "StoreUsage",
    "SweepResult",
    "TrackResponse",
    "replicated_digest",
]

REPLICATED: Final = ("profiles", "items", "models", "rules", "forgotten")
PER_USER: Final = frozenset({"profiles", "forgotten"})
"""Replicated namespaces whose changes leave the per-version state alone (no new generation)."""
EDGE_LOCAL: Final = ("activity", "events", "outbox", "event_times")
"""`events`: event id -> 8-byte arrival time (Unix ms), Track's de-duplication; `event_times`: arrival
time (8 bytes, big-endian) + event id -> b"", the same ids in arrival order, so `sweep` deletes those
past the dedupe window oldest first without reading the others."""
DERIVED: Final = ("model_rows",)  # rebuilt from replicated records in the transaction that changes them
NAMESPACES: Final = (*REPLICATED, *EDGE_LOCAL, *DERIVED, "meta")
ROW_CHUNKED: Final = frozenset({"item_neighbors", "item_neighbor_scores"})
"""Model arrays also stored as row chunks in `model_rows`, for `ReadView.rows`."""
ROWS_PER_CHUNK: Final = 64
_CHUNK_INDEX: Final = struct.Struct(">I")
_ROWS_META: Final = struct.Struct("<QI")  # (size, crc32) of the models record the chunks were cut from

_VERSION_KEY: Final = b"version"
# ("rules", "forgotten"): the list of users forgotten fleet-wide, from a control plane before the
# `forgotten` namespace (sync/control_store.py `forget`); still applied, by purging the users new in it.
LEGACY_FORGOTTEN_KEY: Final = b"forgotten"
_SNAPSHOT_KEY: Final = b"snapshot"
_EVENT_TIMES_BUILT: Final = b"event_times_built"
_ARRIVAL: Final = struct.Struct(">Q")  # big-endian: `event_times` keys sort by arrival
_OUTBOX_SEQ_KEY: Final = b"outbox_seq"
_PURGE_PREFIX: Final = b"purge:"  # + sha256(user id) -> user id: outbox entries still to purge
FORGET_INLINE_OUTBOX: Final = 50_000
"""Outbox entries a forget reads inside the sync transaction (about 30 ms); past this many, the
forgotten users' outbox entries are purged by housekeeping steps (`Store.purge_step`) instead, so a
forget during a large backlog does not hold the write lock (and every Track commit) for seconds."""
_U64: Final = struct.Struct("<Q")
_GEN_VERSION: Final = struct.Struct("<QQ")
_SEQ: Final = struct.Struct(">Q")  # big-endian so outbox keys sort by sequence

DEFAULT_MAP_SIZE: Final = 8 << 30


class StoreError(RuntimeError):
    """The store cannot be opened or written (full map, permissions, corrupt file)."""


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one `Store.sweep` step deleted, and where the next step starts in each namespace."""

    event_ids: int
    activities: int
    next_activity_key: bytes  # b"": the next step starts over from the first activity
    outbox_dropped: int = 0  # oldest outbox entries deleted unsent: the outbox was over its limit
    event_ids_early: int = 0  # oldest event ids deleted before the dedupe window ended: over their limit
    oldest_id_ms: int = 0  # arrival time of the oldest event id kept (0: none)
    activities_early: int = 0  # activities deleted before their TTLs: last active before activity_before_ms
    activity_bytes: int = 0  # bytes of the activity namespace's pages after the step
    # (last active, key + value bytes) of each activity the step looked at and kept (when asked)
    activity_ages: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class StoreUsage:
    """What a store holds and how much of its map that takes (`Store.usage`)."""

    high_water_bytes: int  # the data file's extent in pages; free pages within it are reused first
    namespaces: Mapping[str, tuple[int, int]]  # name -> (entries, bytes of its pages)
    oldest_event_ms: int  # arrival time of the oldest remembered event id (0: none)
    purges_pending: int  # forgotten users whose outbox entries housekeeping has still to delete
    readers: int  # read transactions slots in use (workers, and this reader)


@dataclass(frozen=True, slots=True)
class TrackResponse:
    accepted: int
    duplicates: int
    new: tuple[bool, ...] = ()  # per event, in order: True = stored now, False = a duplicate


@functools.cache  # a handful of array names, looked up per request
def _chunk_prefix(name: str) -> bytes:
    return name.encode() + b"\0"


def _rebuild_model_rows(txn: Any, dbs: Mapping[str, Any], names: Iterable[str]) -> None:
    """Re-cut the row chunks of the `ROW_CHUNKED` arrays among `names` from their `models` records."""
    rows_db, models = dbs["model_rows"], dbs["models"]
    for name in sorted(set(names) & ROW_CHUNKED):
        prefix = _chunk_prefix(name)
        with txn.cursor(db=rows_db) as cursor:
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()).startswith(prefix):
                found = cursor.delete()
        buf = txn.get(name.encode(), db=models)
        if buf is None:
            continue
        try:
            array = decode_array(buf)
        except RecordError:
            continue  # not readable as an array: nothing to cut (readers fall back to the record)
        if array.ndim != 2:
            continue
        for chunk, start in enumerate(range(0, array.shape[0], ROWS_PER_CHUNK)):
            value = encode_array(array[start : start + ROWS_PER_CHUNK])
            txn.put(prefix + _CHUNK_INDEX.pack(chunk), value, db=rows_db)
        txn.put(prefix + b"meta", _ROWS_META.pack(len(buf), zlib.crc32(buf)), db=rows_db)


def _db_usage(txn: Any, db: Any) -> tuple[int, int]:
    """(entries, bytes of its branch, leaf and overflow pages) of a named database: LMDB keeps both."""
    st = txn.stat(db)
    return int(st["entries"]), int(st["psize"]) * (
        int(st["branch_pages"]) + int(st["leaf_pages"]) + int(st["overflow_pages"])
    )


def _oldest_arrival(txn: Any, times_db: Any) -> int:
    """Arrival time of the oldest event id remembered (0: none)."""
    with txn.cursor(db=times_db) as cursor:
        return _ARRIVAL.unpack(bytes(cursor.key())[: _ARRIVAL.size])[0] if cursor.first() else 0


def _delete_oldest_ids(txn: Any, times_db: Any, events_db: Any, limit: int, before: bytes | None) -> int:
    """Delete up to `limit` event ids, oldest arrival first, stopping at the first that arrived at or
    after `before` (a packed arrival time; None: no such stop). Returns how many."""
    deleted = 0
    with txn.cursor(db=times_db) as cursor:
        positioned = cursor.first()
        while positioned and deleted < limit:
            key = bytes(cursor.key())
            if before is not None and key[: _ARRIVAL.size] >= before:
                break
            txn.delete(key[_ARRIVAL.size :], db=events_db)
            cursor.delete()  # moves to the next key; key() is b"" past the end
            deleted += 1
            positioned = bool(cursor.key())
    return deleted


def _excess_entries(entries: int, used: int, max_bytes: int) -> int:
    """How many of `entries` entries taking `used` bytes are over `max_bytes`, at their mean size
    (rounded up; 0 when within)."""
    if used <= max_bytes or entries == 0:
        return 0
    return min(entries, -(-(used - max_bytes) * entries // used))


def _trim_outbox(txn: Any, db: Any, max_bytes: int, max_entries: int) -> int:
    """Delete the oldest outbox entries (at most `max_entries`) until the outbox's pages come to about
    `max_bytes` (0: no limit): the excess over the mean entry size. Returns how many were deleted."""
    if max_bytes <= 0 or max_entries <= 0:
        return 0
    entries, used = _db_usage(txn, db)
    want = min(max_entries, _excess_entries(entries, used, max_bytes))
    deleted = 0
    with txn.cursor(db=db) as cursor:
        cursor.first()
        while deleted < want and cursor.key():
            cursor.delete()  # moves to the next (newer) entry
            deleted += 1
    return deleted


def _forget_users(txn: Any, dbs: Mapping[str, Any], users: Sequence[str]) -> None:
    """Purge this node's own copies of forgotten users: profile, live activity, queued outbox entries.
    The outbox entries at once when the outbox holds at most FORGET_INLINE_OUTBOX entries; else the
    users are marked for `Store.purge_step` (until then the forwarder may still send their entries: the
    control plane drops records of forgotten users)."""
    if not users:
        return
    wanted = set(users)
    for user in users:
        txn.delete(user.encode(), db=dbs["profiles"])
        txn.delete(activity_key(user, "").encode(), db=dbs["activity"])
    outbox = dbs["outbox"]
    if int(txn.stat(outbox)["entries"]) > FORGET_INLINE_OUTBOX:
        for user in wanted:
            txn.put(_purge_key(user), user.encode(), db=dbs["meta"])
        return
    matches = _outbox_matcher(wanted)
    with txn.cursor(db=outbox) as cursor:
        doomed = [bytes(key) for key, value in cursor if matches(value)]
    for key in doomed:
        txn.delete(key, db=outbox)


def _purge_key(user: str) -> bytes:
    return _PURGE_PREFIX + hashlib.sha256(user.encode()).digest()


def _outbox_matcher(users: AbstractSet[str]) -> Callable[[bytes], bool]:
    """Whether an outbox entry belongs to one of `users`. A few users: an entry that contains none of
    their ids as packed strings is not decoded (about 2x faster over 200,000 queued events)."""
    needles = [msgpack.packb(u) for u in users] if len(users) <= 8 else None

    def matches(value: bytes) -> bool:
        if needles is not None and not any(n in value for n in needles):
            return False
        try:
            return _user_of_entry(value) in users
        except (ValueError, TypeError):  # not a record this code wrote: left for the forwarder
            return False

    return matches


def _user_of_entry(value: bytes) -> object:
    """The `u` (user id) of an outbox entry, None when it has none."""
    record = msgpack.unpackb(value, raw=False)
    return record.get("u") if isinstance(record, dict) else None


def _sweep_keys(
    txn: Any, db: Any, after: bytes, max_keys: int, stale: Callable[[bytes, bytes], bool]
) -> tuple[int, bytes]:
    """Delete the stale entries among the `max_keys` keys after `after` (b"": from the first); return
    how many were deleted and the last key looked at (b"" when the end was reached)."""
    deleted = 0
    last = b""
    with txn.cursor(db=db) as cursor:
        positioned = cursor.set_range(after) if after else cursor.first()
        if positioned and after and cursor.key() == after:
            positioned = cursor.next()
        for _ in range(max_keys):
            if not positioned:
                return deleted, b""
            last = bytes(cursor.key())
            if stale(last, bytes(cursor.value())):
                cursor.delete()  # moves to the next key; key() is b"" past the end
                deleted += 1
                positioned = bool(cursor.key())
            else:
                positioned = cursor.next()
    return deleted, last if positioned else b""


def replicated_digest(records: Callable[[str], Iterable[tuple[bytes, bytes]]]) -> str:
    """SHA-256 over the replicated namespaces' (key, value) records, each namespace in key order:
    `ReadView.replicated_digest`, and the control plane's state computed the same way."""
    h = hashlib.sha256()
    for name in REPLICATED:
        h.update(name.encode() + b"\0")
        for key, value in records(name):
            h.update(_U64.pack(len(key)))
            h.update(key)
            h.update(_U64.pack(len(value)))
            h.update(value)
    return h.hexdigest()


class ReadView:
    """A consistent view of the store for the length of one read transaction."""

    __slots__ = ("_arrays", "_dbs", "_txn", "generation", "version")

    def __init__(self, txn: Any, dbs: Mapping[str, Any]) -> None:
        self._txn = txn
        self._dbs = dbs
        self._arrays: dict[str, NDArray[Any] | None] = {}  # decoded once per view (i.e. per transaction)
        raw = txn.get(_VERSION_KEY, db=dbs["meta"])
        # (generation, version): the version says which data; the generation, bumped on every
        # replace, tells two loads of the same version apart (a cache key never goes stale).
        generation, version = _GEN_VERSION.unpack(raw) if raw is not None else (0, 0)
        self.generation: int = generation
        self.version: int = version

    def profile(self, user_id: str) -> ProfileRecord | None:
        buf = self._txn.get(user_id.encode(), db=self._dbs["profiles"])
        return None if buf is None else decode_profile(user_id, buf)

    def item(self, item_id: str) -> ItemRecord | None:
        buf = self._txn.get(item_id.encode(), db=self._dbs["items"])
        return None if buf is None else decode_item(item_id, buf)

    def items(self) -> Iterator[ItemRecord]:
        with self._txn.cursor(db=self._dbs["items"]) as cursor:
            for key, buf in cursor:
                yield decode_item(bytes(key).decode(), buf)

    def activity(self, key: str) -> Activity | None:
        buf = self._txn.get(key.encode(), db=self._dbs["activity"])
        return None if buf is None else decode_activity(buf)

    def array(self, name: str) -> NDArray[Any] | None:
        """A model array, zero-copy: valid only inside this view's `with` block (decoded once per view)."""
        try:
            return self._arrays[name]
        except KeyError:
            pass
        buf = self._txn.get(name.encode(), db=self._dbs["models"])
        array = None if buf is None else decode_array(buf)
        self._arrays[name] = array
        return array

    def rows(self, name: str, rows: Sequence[int]) -> NDArray[Any] | None:
        """`rows` of the row-chunked model array `name` ([len(rows), width]: a view into this
        transaction's data for one row, a copy for several), or None when the store has no chunks for it
        or a row is out of range (read the whole array instead).

        Only for arrays `chunks_match` confirmed for this version: chunks are rebuilt with their record,
        but a store written by an older edgewise may hold none."""
        db = self._dbs.get("model_rows")
        if db is None:  # a read-only store written before model_rows existed
            return None
        prefix = _chunk_prefix(name)
        if len(rows) == 1:  # the common case, one seed: a view of its chunk, no copy
            return self._row(db, prefix, rows[0])
        parts: list[NDArray[Any]] = []
        for row in rows:
            part = self._row(db, prefix, row)
            if part is None:
                return None
            parts.append(part)
        return np.concatenate(parts) if parts else None

    def _row(self, db: Any, prefix: bytes, row: int) -> NDArray[Any] | None:
        """Row `row` ([1, width], a view into its chunk) of the chunked array with key `prefix`."""
        if row < 0:
            return None
        chunk, offset = divmod(row, ROWS_PER_CHUNK)
        buf = self._txn.get(prefix + _CHUNK_INDEX.pack(chunk), db=db)
        if buf is None:
            return None
        block = decode_array(buf)
        if block.ndim != 2 or offset >= block.shape[0]:
            return None
        return block[offset : offset + 1]

    def chunks_match(self, name: str) -> bool:
        """Whether `model_rows` holds chunks cut from the current `models` record `name` (checked by
        size and CRC-32 of the record: run once per version, not per request)."""
        if "model_rows" not in self._dbs:
            return False
        meta = self._txn.get(_chunk_prefix(name) + b"meta", db=self._dbs["model_rows"])
        record = self._txn.get(name.encode(), db=self._dbs["models"])
        if meta is None or record is None:
            return False
        size, crc = _ROWS_META.unpack(bytes(meta))
        return bool(size == len(record) and crc == zlib.crc32(record))

    def rules_doc(self) -> Any:
        buf = self._txn.get(b"rules", db=self._dbs["rules"])
        return None if buf is None else msgpack.unpackb(buf, raw=False)

    def schema_doc(self) -> Any:
        buf = self._txn.get(b"schema", db=self._dbs["rules"])
        return None if buf is None else msgpack.unpackb(buf, raw=False)

    def model_names(self, prefix: str = "") -> list[str]:
        """Names of the model arrays starting with `prefix`."""
        names: list[str] = []
        start = prefix.encode()
        with self._txn.cursor(db=self._dbs["models"]) as cursor:
            if not cursor.set_range(start):
                return names
            for key in cursor.iternext(keys=True, values=False):
                name = bytes(key).decode()
                if not name.startswith(prefix):
                    break
                names.append(name)
        return names

    def snapshot_info(self) -> dict[str, Any]:
        buf = self._txn.get(_SNAPSHOT_KEY, db=self._dbs["meta"])
        return {} if buf is None else dict(msgpack.unpackb(buf, raw=False))

    def count(self, namespace: str) -> int:
        db = self._dbs.get(namespace)  # None: a namespace a read-only open of an older store lacks
        return 0 if db is None else int(self._txn.stat(db)["entries"])

    def replicated_digest(self) -> str:
        """SHA-256 over every replicated record in key order: equal on two nodes with the same data."""

        def records(name: str) -> Iterator[tuple[bytes, bytes]]:
            db = self._dbs.get(name)  # None: a namespace a read-only open of an older store lacks
            if db is None:
                return
            with self._txn.cursor(db=db) as cursor:
                yield from cursor

        return replicated_digest(records)


class _Reading:
    """The context manager `Store.read` returns: begins a read transaction, aborts it on exit."""

    __slots__ = ("_dbs", "_env", "_txn")

    def __init__(self, env: Any, dbs: Mapping[str, Any]) -> None:
        self._env = env
        self._dbs = dbs
        self._txn: Any = None

    def __enter__(self) -> ReadView:
        self._txn = self._env.begin(buffers=True)
        try:
            return ReadView(self._txn, self._dbs)
        except BaseException:
            self._txn.abort()
            raise

    def __exit__(self, *exc: object) -> None:
        self._txn.abort()  # a read transaction has nothing to commit: abort releases its reader slot
        self._txn = None


class Store:
    """One LMDB environment holding every namespace of a node."""

    def __init__(self, path: str | Path, *, map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False) -> None:
        self.path = Path(path)
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=len(NAMESPACES) + 4,
                max_readers=512,
                readonly=readonly,
                lock=True,  # readers must be visible to the writer (see ../shared/STYLE.md)
                sync=True,
                metasync=True,
                readahead=False,
            )
            self._dbs = {}
            for name in NAMESPACES:
                try:
                    self._dbs[name] = self._env.open_db(name.encode(), create=not readonly)
                except lmdb.NotFoundError:
                    # a read-only open of a store written before these existed: read them as empty
                    if name not in (*DERIVED, "forgotten", "event_times"):
                        raise
            if not readonly:
                self._index_event_times()
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc

    def _index_event_times(self) -> None:
        """Index the event ids of a store written before `event_times` (once; their stored times were
        the events' own, taken as arrival times)."""
        meta, events_db, times_db = self._dbs["meta"], self._dbs["events"], self._dbs["event_times"]
        with self._env.begin(write=True) as txn:
            if txn.get(_EVENT_TIMES_BUILT, db=meta) is not None:
                return
            with txn.cursor(db=events_db) as cursor:
                for key, value in cursor:
                    txn.put(_ARRIVAL.pack(_U64.unpack(value)[0]) + bytes(key), b"", db=times_db)
            txn.put(_EVENT_TIMES_BUILT, b"1", db=meta)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> _Reading:
        """`with store.read() as view:` one read transaction (a plain class: no generator per request)."""
        return _Reading(self._env, self._dbs)

    def has_snapshot(self) -> bool:
        with self.read() as view:
            return view.generation > 0

    def version(self) -> int:
        with self.read() as view:
            return view.version

    def snapshot_info(self) -> dict[str, Any]:
        with self.read() as view:
            return view.snapshot_info()

    def replace_replicated(
        self,
        version: int,
        records: Mapping[str, Iterable[tuple[bytes, bytes]]],
        info: Mapping[str, Any],
    ) -> None:
        """Replace every replicated namespace with `records`, and record `version`, atomically."""
        unknown = set(records) - set(REPLICATED)
        if unknown:
            raise ValueError(f"not replicated namespaces: {sorted(unknown)}")
        try:
            with self._env.begin(write=True) as txn:
                for name in REPLICATED:
                    txn.drop(self._dbs[name], delete=False)
                    db = self._dbs[name]
                    for key, value in records.get(name, ()):
                        txn.put(key, value, db=db, dupdata=False, overwrite=True)
                txn.drop(self._dbs["model_rows"], delete=False)
                _rebuild_model_rows(txn, self._dbs, ROW_CHUNKED)
                meta = self._dbs["meta"]
                raw = txn.get(_VERSION_KEY, db=meta)
                generation = _GEN_VERSION.unpack(raw)[0] + 1 if raw is not None else 1
                txn.put(_VERSION_KEY, _GEN_VERSION.pack(generation, version), db=meta)
                txn.put(_SNAPSHOT_KEY, msgpack.packb(dict(info), use_bin_type=True), db=meta)
        except lmdb.MapFullError as exc:
            raise StoreError(f"the store at {self.path} is full; raise its map size: {exc}") from exc

    def apply_sync(
        self,
        version: int,
        changes: Iterable[tuple[str, bytes, bytes | None]],
        *,
        snapshot: bool,
        info: Mapping[str, Any],
        check: Callable[[ReadView], None] | None = None,
    ) -> bool:
        """Apply one synced commit in one write transaction and record `version`; return whether the
        generation changed.

        `changes` are (namespace, key, value) with value None for a delete. A `snapshot` replaces every
        replicated namespace. The generation (the per-version cache key) is bumped when anything but
        per-user records change (`PER_USER`: profiles, forgotten users), so a profile delta or a forget
        does not make workers rebuild their version state. Users with a new `forgotten` record (or new
        in a legacy forgotten list) have their profile, live activity and queued outbox entries purged.
        `check` sees the new state inside the transaction before it commits; if it raises, nothing of
        the commit is applied and the exception propagates.
        """
        dbs = self._dbs
        touched_shared = snapshot
        changes = list(changes)
        legacy = next(
            (v for ns, k, v in changes if ns == "rules" and k == LEGACY_FORGOTTEN_KEY and v is not None), None
        )
        try:
            with self._env.begin(write=True) as txn:
                # Users forgotten by this commit: their records are new here (a snapshot lists them all).
                forgotten_db = dbs["forgotten"]
                users = [
                    bytes(k).decode()
                    for ns, k, v in changes
                    if ns == "forgotten" and v is not None and txn.get(k, db=forgotten_db) is None
                ]
                if legacy is not None:
                    old = txn.get(LEGACY_FORGOTTEN_KEY, db=dbs["rules"])
                    known = set(msgpack.unpackb(old, raw=False)) if old is not None else set()
                    users += [u for u in msgpack.unpackb(legacy, raw=False) if u not in known]
                _forget_users(txn, dbs, users)
                if snapshot:
                    for name in REPLICATED:
                        txn.drop(dbs[name], delete=False)
                    txn.drop(dbs["model_rows"], delete=False)
                models_changed: set[str] = set(ROW_CHUNKED) if snapshot else set()
                for namespace, key, value in changes:
                    if namespace not in REPLICATED:
                        raise ValueError(f"not a replicated namespace: {namespace!r}")
                    if namespace not in PER_USER:
                        touched_shared = True
                    if namespace == "models":
                        models_changed.add(bytes(key).decode(errors="replace"))
                    if value is None:
                        txn.delete(key, db=dbs[namespace])
                    else:
                        txn.put(key, value, db=dbs[namespace])
                _rebuild_model_rows(txn, dbs, models_changed)
                meta = dbs["meta"]
                raw = txn.get(_VERSION_KEY, db=meta)
                generation = _GEN_VERSION.unpack(raw)[0] if raw is not None else 0
                if touched_shared or generation == 0:
                    generation += 1
                txn.put(_VERSION_KEY, _GEN_VERSION.pack(generation, version), db=meta)
                txn.put(_SNAPSHOT_KEY, msgpack.packb(dict(info), use_bin_type=True), db=meta)
                if check is not None:
                    check(ReadView(txn, dbs))
        except lmdb.MapFullError as exc:
            raise StoreError(f"the store at {self.path} is full; raise its map size: {exc}") from exc
        return touched_shared

    def outbox_batch(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` outbox entries as (sequence, encoded event), oldest first."""
        out: list[tuple[int, bytes]] = []
        with self._env.begin() as txn, txn.cursor(db=self._dbs["outbox"]) as cursor:
            for key, value in cursor:
                out.append((_SEQ.unpack(key)[0], bytes(value)))
                if len(out) >= limit:
                    break
        return out

    def sweep(
        self,
        now_ms: int,
        dedupe_window_ms: int,
        limits: ActivityLimits,
        *,
        after_activity: bytes = b"",
        max_keys: int = 1_000,
        max_ids: int = 10_000,
        outbox_max_bytes: int = 0,
        max_outbox: int = 10_000,
        ids_max_bytes: int = 0,
        activity_before_ms: int = 0,
        activity_ages: bool = False,
    ) -> SweepResult:
        """One bounded step of housekeeping, in one write transaction. Event ids: up to `max_ids` of
        those that arrived more than `dedupe_window_ms` before `now_ms` are deleted, oldest first (a
        Track retried later than that counts again), read from `event_times` without touching the
        others. Live activities: of the next `max_keys` after `after_activity`, those with nothing left
        once expired (`core.activity.expire`: no recent views, cart entries or purchases; impression
        counts for rotation go with them) are deleted. Called repeatedly with the returned key, it walks
        the activities round and round; so both namespaces stay bounded by what the window and the TTLs
        keep. Outbox: while it takes more than `outbox_max_bytes` of the map (0: no limit), up to
        `max_outbox` of its oldest entries are deleted unsent, so that a node nobody drains (no control
        plane, or one unreachable for hours) keeps accepting Track instead of filling its map. Event ids
        likewise: while they (with their arrival index) take more than `ids_max_bytes` (0: no limit), the
        oldest go before their window ends, within the same `max_ids` per step, so a busy node shortens
        its effective dedupe window instead of filling its map (`oldest_id_ms` tells how far back it
        reaches). Activities likewise, decided by the caller (edge/housekeeping.py): with
        `activity_before_ms` set, the walk also deletes those last active before it (`newest_ms`),
        counted apart; with `activity_ages`, it reports when each activity it keeps was last active,
        and its size, so the caller can choose that time from what the store holds."""
        events_db, times_db, activity_db = (
            self._dbs["events"],
            self._dbs["event_times"],
            self._dbs["activity"],
        )
        cutoff = _ARRIVAL.pack(max(0, now_ms - dedupe_window_ms))
        with self._env.begin(write=True) as txn:
            ids = _delete_oldest_ids(txn, times_db, events_db, max_ids, cutoff)
            early = 0
            if ids_max_bytes > 0 and ids < max_ids:
                count, used_ids = _db_usage(txn, events_db)
                used = used_ids + _db_usage(txn, times_db)[1]
                if want := min(max_ids - ids, _excess_entries(count, used, ids_max_bytes)):
                    early = _delete_oldest_ids(txn, times_db, events_db, want, None)
            oldest = _oldest_arrival(txn, times_db)

            kept: list[tuple[int, int]] = []
            early_activities = 0

            def stale(key: bytes, value: bytes) -> bool:
                nonlocal early_activities
                left = expire(decode_activity(value), now_ms, limits)
                if not (left.views or left.cart or left.purchases):
                    return True
                if activity_before_ms or activity_ages:
                    last = newest_ms(left)
                    if last < activity_before_ms:
                        early_activities += 1
                        return True
                    if activity_ages:
                        kept.append((last, len(key) + len(value)))
                return False

            swept, next_activity = (
                _sweep_keys(txn, activity_db, after_activity, max_keys, stale)
                if max_keys > 0
                else (0, after_activity)
            )
            dropped = _trim_outbox(txn, self._dbs["outbox"], outbox_max_bytes, max_outbox)
            activity_bytes = _db_usage(txn, activity_db)[1]
        return SweepResult(
            ids,
            swept - early_activities,
            next_activity,
            dropped,
            early,
            oldest,
            early_activities,
            activity_bytes,
            tuple(kept),
        )

    def outbox_usage(self) -> tuple[int, int]:
        """(entries, bytes of the map's pages) of the outbox."""
        with self._env.begin() as txn:
            return _db_usage(txn, self._dbs["outbox"])

    def usage(self) -> StoreUsage:
        """Entries and bytes of every namespace and the data file's high-water mark, in one read
        transaction (LMDB keeps the counts: nothing is scanned but the forget marks)."""
        with self._env.begin() as txn:
            namespaces = {name: _db_usage(txn, db) for name, db in self._dbs.items()}
            # a read-only store written before `event_times` existed has none
            oldest = _oldest_arrival(txn, self._dbs["event_times"]) if "event_times" in self._dbs else 0
        info = self._env.info()
        return StoreUsage(
            high_water_bytes=(int(info["last_pgno"]) + 1) * int(self._env.stat()["psize"]),
            namespaces=namespaces,
            oldest_event_ms=oldest,
            purges_pending=len(self.pending_purges()),
            readers=int(info["num_readers"]),
        )

    def activity_usage(self) -> tuple[int, int]:
        """(entries, bytes of the map's pages) of live activity."""
        with self._env.begin() as txn:
            return _db_usage(txn, self._dbs["activity"])

    def outbox_ack(self, upto: int) -> int:
        """Delete the outbox entries with sequence <= `upto` (forwarded and acknowledged); return how many."""
        dropped = 0
        with self._env.begin(write=True) as txn, txn.cursor(db=self._dbs["outbox"]) as cursor:
            cursor.first()
            while True:
                key = cursor.key()  # b"" once the cursor is past the last entry
                if not key or _SEQ.unpack(key)[0] > upto:
                    break
                cursor.delete()  # moves to the next entry
                dropped += 1
        return dropped

    def pending_purges(self) -> frozenset[str]:
        """Forgotten users whose outbox entries are still to be purged by `purge_step`."""
        with self._env.begin() as txn, txn.cursor(db=self._dbs["meta"]) as cursor:
            users: set[str] = set()
            positioned = cursor.set_range(_PURGE_PREFIX)
            while positioned and bytes(cursor.key()).startswith(_PURGE_PREFIX):
                users.add(bytes(cursor.value()).decode())
                positioned = cursor.next()
        return frozenset(users)

    def purge_step(self, users: AbstractSet[str], after: bytes, max_entries: int) -> tuple[int, bytes]:
        """One bounded step of a pass over the outbox that deletes `users`' entries: the next
        `max_entries` entries after `after` (b"": from the first), in one write transaction. Returns
        (entries deleted, the last key read; b"" once the pass reached the end, when the users' purge
        marks are removed too)."""
        with self._env.begin(write=True) as txn:
            matches = _outbox_matcher(users)
            deleted, last = _sweep_keys(
                txn, self._dbs["outbox"], after, max_entries, lambda _key, value: matches(value)
            )
            if not last:
                for user in users:
                    txn.delete(_purge_key(user), db=self._dbs["meta"])
        return deleted, last

    def outbox_pending(self) -> int:
        with self.read() as view:
            return view.count("outbox")

    def record_events(
        self,
        events: Sequence[Event],
        limits: ActivityLimits,
        exposures: Sequence[bytes] = (),
        now_ms: int | None = None,
    ) -> TrackResponse:
        """Store new events durably in one transaction: the event id (dedupe) always, with the time it
        arrived (`now_ms`, default the clock: `sweep` forgets it a dedupe window later, whatever the
        event's own time), the outbox entry only with the analytics purpose, live activity only with the
        personalization purpose."""
        now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        arrived, arrival_prefix = _U64.pack(now), _ARRIVAL.pack(now)
        times_db = self._dbs["event_times"]
        accepted = duplicates = 0
        new: list[bool] = []
        events_db, outbox_db, activity_db = (self._dbs[n] for n in ("events", "outbox", "activity"))
        meta = self._dbs["meta"]
        with self._env.begin(write=True) as txn:
            raw_seq = txn.get(_OUTBOX_SEQ_KEY, db=meta)
            seq = _U64.unpack(raw_seq)[0] if raw_seq is not None else 0
            # Exposure records (core/exposure.py) go to the outbox first: the decisions they record came
            # before any outcome tracked in the same batch, and upstream attribution reads in order.
            for record in exposures:
                seq += 1
                txn.put(_SEQ.pack(seq), record, db=outbox_db)
            touched: dict[str, Activity] = {}
            for event in events:
                key = event.event_id.encode()
                if not txn.put(key, arrived, db=events_db, overwrite=False):
                    duplicates += 1
                    new.append(False)
                    continue
                txn.put(arrival_prefix + key, b"", db=times_db)
                accepted += 1
                new.append(True)
                consent_change = event.type == CONSENT_EVENT and bool(event.user_id)
                if event.analytics or consent_change:  # a consent change always goes upstream
                    seq += 1
                    txn.put(_SEQ.pack(seq), event.encode(), db=outbox_db)
                if consent_change and not event.personalization:
                    # revoked: the live activity built under the purpose goes (here now, fleet-wide
                    # when the control plane folds the event)
                    akey = activity_key(event.user_id, "")
                    touched.pop(akey, None)
                    txn.delete(akey.encode(), db=activity_db)
                if not event.personalization:
                    continue
                akey = activity_key(event.user_id, event.session_id)
                if akey not in touched:
                    buf = txn.get(akey.encode(), db=activity_db)
                    touched[akey] = decode_activity(buf) if buf is not None else Activity()
                touched[akey] = apply_event(touched[akey], event, limits)
            for akey, activity in touched.items():
                txn.put(akey.encode(), encode_activity(activity), db=activity_db)
            txn.put(_OUTBOX_SEQ_KEY, _U64.pack(seq), db=meta)
        return TrackResponse(accepted, duplicates, tuple(new))
