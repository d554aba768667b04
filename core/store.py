"""The LMDB store: one environment, one named database per namespace (see ARCHITECTURE.md).

Replicated namespaces (`profiles`, `items`, `models`, `rules`, `forgotten`) change only through
`Store.apply_replicated`: a bundle load (sync/snapshot.py) and the edge's syncer (sync/edge_sync.py)
alike, one write transaction that also records the new version and its `SnapshotInfo` in `meta`, checked
before it commits. A reader sees the old state or the new one, never a mix, and a crash mid-apply leaves
the old one. Edge-local namespaces (`activity`, `events`, `event_times`, `outbox`) change through
core/edge_local.py (`Store.record_events`, `Store.sweep`, ...), in the same environment.
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
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import lmdb
import msgpack
import numpy as np
from numpy.typing import NDArray

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.edge_local import (
    EDGE_LOCAL,
    EdgeLocal,
    SweepResult,
    TrackResponse,
    db_usage,
    forget_users,
    oldest_arrival,
    used_bytes,
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
    encode_array,
)
from edgewise.core.saved_groups import GROUP_PREFIX, SUMMARY_PREFIX, Summary, parse_member_key, unpack_summary
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store_budget import StoreError, StoreFull, headroom_bytes

if TYPE_CHECKING:
    from lmdb import _Database as Database

__all__ = [
    "CATALOG_NAMESPACES",
    "DERIVED",
    "EDGE_LOCAL",
    "NAMESPACES",
    "NOT_CATALOG",
    "PER_USER",
    "REPLICATED",
    "ROW_CHUNKED",
    "Change",
    "ReadView",
    "Store",
    "StoreError",
    "StoreFull",
    "StoreUsage",
    "SweepResult",
    "TrackResponse",
    "replicated_digest",
]

REPLICATED: Final = ("profiles", "items", "models", "rules", "forgotten")
PER_USER: Final = frozenset({"profiles", "forgotten"})
"""Replicated namespaces whose changes leave the per-version state alone (no new generation)."""
DERIVED: Final = ("model_rows",)  # rebuilt from replicated records in the transaction that changes them
NAMESPACES: Final = (*REPLICATED, *EDGE_LOCAL, *DERIVED, "meta")
ROW_CHUNKED: Final = frozenset({"item_neighbors", "item_neighbor_scores"})
"""Model arrays also stored as row chunks in `model_rows`, for `ReadView.rows`."""
ROWS_PER_CHUNK: Final = 64
_CHUNK_INDEX: Final = struct.Struct(">I")
_ROWS_META: Final = struct.Struct("<QI")  # (size, crc32) of the models record the chunks were cut from

Change: TypeAlias = tuple[str, bytes, bytes | None]
"""(namespace, key, value) of one replicated record; value None deletes it."""

_VERSION_KEY: Final = b"version"
# ("rules", "forgotten"): the list of users forgotten fleet-wide, from a control plane before the
# `forgotten` namespace (sync/control_store.py `forget`); still applied, by purging the users new in it.
LEGACY_FORGOTTEN_KEY: Final = b"forgotten"
_SNAPSHOT_KEY: Final = b"snapshot"
_U64: Final = struct.Struct("<Q")
_GEN_VERSION: Final = struct.Struct("<QQ")
# meta `catalog`: the generation at which the items or the rules (with the schema and saved groups) last
# changed, and 8 random bytes (so two stores never share one); a version state built at an older
# generation with the same catalog key can keep its catalog half (core/version_state.py). Absent (a store
# written before it): unknown, rebuild everything.
_CATALOG_KEY: Final = b"catalog"
_CATALOG: Final = struct.Struct("<Q")
CATALOG_NAMESPACES: Final = frozenset({"items", "rules"})
# ("rules", "manifest"): the bundle facts a control plane sends with every model refresh; the syncer reads
# them into the SnapshotInfo (meta), which every build reads again: not part of the catalog.
NOT_CATALOG: Final = frozenset({("rules", b"manifest")})

DEFAULT_MAP_SIZE: Final = 8 << 30


@dataclass(frozen=True, slots=True)
class StoreUsage:
    """What a store holds and how much of its map that takes (`Store.usage`)."""

    high_water_bytes: int  # the data file's extent in pages; free pages within it are reused first
    namespaces: Mapping[str, tuple[int, int]]  # name -> (entries, bytes of its pages)
    oldest_event_ms: int  # arrival time of the oldest remembered event id (0: none)
    purges_pending: int  # forgotten users whose outbox entries housekeeping has still to delete
    readers: int  # read transactions slots in use (workers, and this reader)


@functools.cache  # a handful of array names, looked up per request
def _chunk_prefix(name: str) -> bytes:
    return name.encode() + b"\0"


def _rebuild_model_rows(
    txn: lmdb.Transaction[bytes], dbs: Mapping[str, Database], names: Iterable[str]
) -> None:
    """Re-cut the row chunks of the `ROW_CHUNKED` arrays among `names` from their `models` records."""
    rows_db, models = dbs["model_rows"], dbs["models"]
    for name in sorted(set(names) & ROW_CHUNKED):
        prefix = _chunk_prefix(name)
        with txn.cursor(db=rows_db) as cursor:
            found = cursor.set_range(prefix)
            while found and cursor.key().startswith(prefix):
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


def replicated_digest(
    records: Callable[[str], Iterable[tuple[bytes | memoryview, bytes | memoryview]]],
) -> str:
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

    def __init__(self, txn: lmdb.Transaction, dbs: Mapping[str, Database]) -> None:
        self._txn = txn
        self._dbs = dbs
        self._arrays: dict[str, NDArray[Any] | None] = {}  # decoded once per view (i.e. per transaction)
        raw = txn.get(_VERSION_KEY, db=dbs["meta"])
        # (generation, version): the version says which data; the generation, bumped by every apply
        # that changes more than per-user records, tells two loads of the same version apart (a cache
        # key never goes stale).
        generation, version = _GEN_VERSION.unpack(raw) if raw is not None else (0, 0)
        self.generation: int = generation
        self.version: int = version

    def profile(self, user_id: str, generation: int = 0) -> ProfileRecord | None:
        """The user's profile, its `embedding` that of embedding `generation` (core/embedding_slots.py)."""
        buf = self._txn.get(user_id.encode(), db=self._dbs["profiles"])
        return None if buf is None else decode_profile(user_id, buf, generation)

    def profile_bytes(self, user_id: str) -> bytes | memoryview | None:
        """The user's stored profile record, undecoded: valid only inside this view's `with` block
        (`core.profile_cache` compares it with the bytes it decoded last time)."""
        return self._txn.get(user_id.encode(), db=self._dbs["profiles"])

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

    def _row(self, db: Database, prefix: bytes, row: int) -> NDArray[Any] | None:
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

    def saved_group_summaries(self) -> dict[str, Summary]:
        """Saved group id -> its summary record (core/saved_groups.py), for every group with members."""
        return {
            key[len(SUMMARY_PREFIX) :]: unpack_summary(value)
            for key, value in self._prefixed(SUMMARY_PREFIX, values=True)
        }

    def saved_group_members(self, group_id: str) -> list[str | float]:
        """A saved group's members, from its member records (one cursor pass over their prefix)."""
        members: list[str | float] = []
        for key, _ in self._prefixed(f"{GROUP_PREFIX}{group_id}/", values=False):
            parsed = parse_member_key(key)
            if parsed is not None:
                members.append(parsed[1])
        return members

    def _prefixed(self, prefix: str, *, values: bool) -> Iterator[tuple[str, bytes | None]]:
        """(key, value or None) of the `rules` records whose key starts with `prefix`, in key order."""
        raw = prefix.encode()
        with self._txn.cursor(db=self._dbs["rules"]) as cursor:
            if not cursor.set_range(raw):
                return
            for key, value in cursor.iternext(keys=True, values=True):
                key = bytes(key)
                if not key.startswith(raw):
                    return
                yield key.decode(), bytes(value) if values else None

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

    def catalog_key(self) -> bytes:
        """Which catalog this view reads: the generation at which the items or the rules last changed
        and a random token (b"": unknown, a store written before edgewise recorded it). Two views with
        the same non-empty key hold the same items, rules, schema and saved groups."""
        buf = self._txn.get(_CATALOG_KEY, db=self._dbs["meta"])
        return b"" if buf is None else bytes(buf)

    def snapshot_info(self) -> SnapshotInfo:
        """What the data came from (`SnapshotInfo()` before anything was applied)."""
        buf = self._txn.get(_SNAPSHOT_KEY, db=self._dbs["meta"])
        return SnapshotInfo() if buf is None else SnapshotInfo.decode(buf)

    def count(self, namespace: str) -> int:
        db = self._dbs.get(namespace)  # None: a namespace a read-only open of an older store lacks
        return 0 if db is None else self._txn.stat(db)["entries"]

    def replicated_digest(self) -> str:
        """SHA-256 over every replicated record in key order: equal on two nodes with the same data."""

        def records(name: str) -> Iterator[tuple[bytes | memoryview, bytes | memoryview]]:
            db = self._dbs.get(name)  # None: a namespace a read-only open of an older store lacks
            if db is None:
                return
            with self._txn.cursor(db=db) as cursor:
                yield from cursor

        return replicated_digest(records)


class _Reading:
    """The context manager `Store.read` returns: begins a read transaction, aborts it on exit."""

    __slots__ = ("_dbs", "_env", "_txn")

    def __init__(self, env: lmdb.Environment, dbs: Mapping[str, Database]) -> None:
        self._env = env
        self._dbs = dbs
        self._txn: lmdb.Transaction[memoryview] | None = None

    def __enter__(self) -> ReadView:
        txn = self._txn = self._env.begin(buffers=True)
        try:
            return ReadView(txn, self._dbs)
        except BaseException:
            txn.abort()
            raise

    def __exit__(self, *exc: object) -> None:
        if self._txn is not None:
            self._txn.abort()  # a read transaction has nothing to commit: abort releases its reader slot
            self._txn = None


class Store:
    """One LMDB environment holding every namespace of a node: the replicated data and its read views
    here, the edge-local namespaces' writes in `EdgeLocal` (core/edge_local.py), exposed as this class's
    methods."""

    def __init__(
        self,
        path: str | Path,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        readonly: bool = False,
        write_reserve: int | None = None,
    ) -> None:
        """`write_reserve`: bytes of the map Track's writes (`record_events`) leave free, for housekeeping
        to delete with (None: half the map's headroom, core/store_budget.py; 0: none, a write fails only
        when the map is full)."""
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
            self._dbs: dict[str, Database] = {}
            for name in NAMESPACES:
                try:
                    self._dbs[name] = self._env.open_db(name.encode(), create=not readonly)
                except lmdb.NotFoundError:
                    # a read-only open of a store written before these existed: read them as empty
                    if name not in (*DERIVED, "forgotten", "event_times"):
                        raise
            self.map_bytes: int = self._env.info()["map_size"]
            reserve = headroom_bytes(self.map_bytes) // 2 if write_reserve is None else write_reserve
            self._local = EdgeLocal(self._env, self._dbs, self.map_bytes - reserve if reserve > 0 else 0)
            if not readonly:
                self._local.index_event_times()
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc

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

    def snapshot_info(self) -> SnapshotInfo:
        with self.read() as view:
            return view.snapshot_info()

    def apply_replicated(
        self,
        version: int,
        changes: Iterable[Change],
        *,
        snapshot: bool,
        info: SnapshotInfo,
        check: Callable[[ReadView], object] | None = None,
    ) -> bool:
        """Apply one commit of replicated data in one write transaction and record `version` and `info`;
        return whether the generation changed. The one write path of the replicated namespaces: a bundle
        load (sync/snapshot.py `apply_bundle`) and every commit of a control plane (sync/edge_sync.py).

        `changes` are (namespace, key, value) with value None for a delete, read once, inside the
        transaction (a bundle's records stream from their generator). A `snapshot` replaces every
        replicated namespace. The generation (the per-version cache key) is bumped when anything but
        per-user records change (`PER_USER`: profiles, forgotten users; a snapshot always), so a profile
        delta or a forget does not make workers rebuild their version state; `meta/catalog` records the
        generation at which the items or rules last changed, so a commit of model arrays alone lets them
        keep the catalog half of it (`ReadView.catalog_key`). Users with a new
        `forgotten` record (or new in a legacy forgotten list) have their profile, live activity and
        queued outbox entries purged (`forget_users`) once the changes are in: after the apply no such
        user has any. `check` sees the new state inside the transaction before it commits; if it raises,
        nothing of the commit is applied and the exception propagates.
        """
        dbs = self._dbs
        forgotten_db, rules_db = dbs["forgotten"], dbs["rules"]
        touched_shared = touched_catalog = snapshot
        try:
            with self._env.begin(write=True) as txn:
                legacy_before = txn.get(LEGACY_FORGOTTEN_KEY, db=rules_db)
                # the users forgotten before this commit: a snapshot lists them all again, after the drop
                forgotten_before: AbstractSet[bytes] | None = None
                if snapshot:
                    with txn.cursor(db=forgotten_db) as cursor:
                        forgotten_before = set(cursor.iternext(keys=True, values=False))
                    for name in (*REPLICATED, *DERIVED):
                        txn.drop(dbs[name], delete=False)
                newly_forgotten: list[str] = []
                legacy_after: bytes | None = None
                models_changed: set[str] = set(ROW_CHUNKED) if snapshot else set()
                for namespace, key, value in changes:
                    if namespace not in REPLICATED:
                        raise ValueError(f"not a replicated namespace: {namespace!r}")
                    if namespace not in PER_USER:
                        touched_shared = True
                    if namespace in CATALOG_NAMESPACES and (namespace, key) not in NOT_CATALOG:
                        touched_catalog = True
                    if namespace == "models":
                        models_changed.add(key.decode(errors="replace"))
                    if value is None:
                        txn.delete(key, db=dbs[namespace])
                        continue
                    if namespace == "forgotten":
                        known = (
                            key in forgotten_before
                            if forgotten_before is not None
                            else txn.get(key, db=forgotten_db) is not None
                        )
                        if not known:
                            newly_forgotten.append(key.decode())
                    elif namespace == "rules" and key == LEGACY_FORGOTTEN_KEY:
                        legacy_after = value
                    txn.put(key, value, db=dbs[namespace])
                if legacy_after is not None:
                    known_users = (
                        set(msgpack.unpackb(legacy_before, raw=False)) if legacy_before is not None else set()
                    )
                    newly_forgotten += [
                        u for u in msgpack.unpackb(legacy_after, raw=False) if u not in known_users
                    ]
                forget_users(txn, dbs, newly_forgotten)
                _rebuild_model_rows(txn, dbs, models_changed)
                meta = dbs["meta"]
                raw = txn.get(_VERSION_KEY, db=meta)
                generation = _GEN_VERSION.unpack(raw)[0] if raw is not None else 0
                if touched_shared or generation == 0:
                    generation += 1
                    if touched_catalog or generation == 1 or txn.get(_CATALOG_KEY, db=meta) is None:
                        txn.put(_CATALOG_KEY, _CATALOG.pack(generation) + os.urandom(8), db=meta)
                txn.put(_VERSION_KEY, _GEN_VERSION.pack(generation, version), db=meta)
                txn.put(_SNAPSHOT_KEY, info.encode(), db=meta)
                if check is not None:
                    check(ReadView(txn, dbs))
        except lmdb.MapFullError as exc:
            raise StoreFull(f"the store at {self.path} is full; raise its map size: {exc}") from exc
        return touched_shared

    @property
    def write_limit(self) -> int:
        """Bytes of pages in use past which Track's writes are refused with `StoreFull` (0: none)."""
        return self._local.write_limit

    def used_bytes(self) -> int:
        """Bytes of the pages every namespace takes (free pages within the data file not counted)."""
        with self._env.begin() as txn:
            return used_bytes(txn, self._dbs)

    def snapshot_bytes(self) -> int:
        """Bytes of the pages the snapshot takes: the replicated namespaces and the derived row chunks (a
        reload writes as much again beside them before the old pages are freed)."""
        with self._env.begin() as txn:
            return used_bytes(txn, {n: db for n, db in self._dbs.items() if n in (*REPLICATED, *DERIVED)})

    def usage(self) -> StoreUsage:
        """Entries and bytes of every namespace and the data file's high-water mark, in one read
        transaction (LMDB keeps the counts: nothing is scanned but the forget marks)."""
        with self._env.begin() as txn:
            namespaces = {name: db_usage(txn, db) for name, db in self._dbs.items()}
            # a read-only store written before `event_times` existed has none
            oldest = oldest_arrival(txn, self._dbs["event_times"]) if "event_times" in self._dbs else 0
        info = self._env.info()
        return StoreUsage(
            high_water_bytes=(info["last_pgno"] + 1) * self._env.stat()["psize"],
            namespaces=namespaces,
            oldest_event_ms=oldest,
            purges_pending=len(self.pending_purges()),
            readers=info["num_readers"],
        )

    # The edge-local namespaces (core/edge_local.py `EdgeLocal`: the contracts are in its docstrings)

    def record_events(
        self,
        events: Sequence[Event],
        limits: ActivityLimits,
        exposures: Sequence[bytes] = (),
        now_ms: int | None = None,
    ) -> TrackResponse:
        """Track's write: event ids, outbox entries and live activity in one transaction."""
        return self._local.record_events(events, limits, exposures, now_ms)

    def outbox_batch(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` outbox entries as (sequence, encoded event), oldest first."""
        return self._local.outbox_batch(limit)

    def outbox_ack(self, upto: int) -> int:
        """Delete the outbox entries with sequence <= `upto`; return how many."""
        return self._local.outbox_ack(upto)

    def outbox_pending(self) -> int:
        return self._local.outbox_pending()

    def outbox_usage(self) -> tuple[int, int]:
        return self._local.outbox_usage()

    def activity_usage(self) -> tuple[int, int]:
        return self._local.activity_usage()

    def pending_purges(self) -> frozenset[str]:
        return self._local.pending_purges()

    def purge_step(self, users: AbstractSet[str], after: bytes, max_entries: int) -> tuple[int, bytes]:
        return self._local.purge_step(users, after, max_entries)

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
        """One bounded step of housekeeping (event ids, live activity, the outbox's limit)."""
        return self._local.sweep(
            now_ms,
            dedupe_window_ms,
            limits,
            after_activity=after_activity,
            max_keys=max_keys,
            max_ids=max_ids,
            outbox_max_bytes=outbox_max_bytes,
            max_outbox=max_outbox,
            ids_max_bytes=ids_max_bytes,
            activity_before_ms=activity_before_ms,
            activity_ages=activity_ages,
        )
