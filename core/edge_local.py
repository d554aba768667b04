"""The edge-local namespaces of a node's store: Track's writes, the outbox, and housekeeping.

`activity` (live activity per user and session), `events` and `event_times` (Track's de-duplication),
`outbox` (events and exposures queued for the control plane) are this node's own: never replicated, and
changed only here. `EdgeLocal` works in the environment `core/store.py` opens; `Store` exposes its
methods (`Store.record_events`, `Store.sweep`, ...). `forget_users` purges forgotten users' local data
inside the replicated apply's write transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import lmdb
import msgpack

from edgewise.core.activity import (
    CONSENT_EVENT,
    ActivityLimits,
    Event,
    activity_key,
    apply_event,
    expire,
    newest_ms,
)
from edgewise.core.records import Activity, decode_activity, encode_activity
from edgewise.core.store_budget import StoreFull

if TYPE_CHECKING:
    from lmdb import _Database as Database

__all__ = [
    "EDGE_LOCAL",
    "FORGET_INLINE_OUTBOX",
    "EdgeLocal",
    "SweepResult",
    "TrackResponse",
    "db_usage",
    "forget_users",
    "oldest_arrival",
    "used_bytes",
]

EDGE_LOCAL: Final = ("activity", "events", "outbox", "event_times")
"""`events`: event id -> 8-byte arrival time (Unix ms), Track's de-duplication; `event_times`: arrival
time (8 bytes, big-endian) + event id -> b"", the same ids in arrival order, so `sweep` deletes those
past the dedupe window oldest first without reading the others."""
FORGET_INLINE_OUTBOX: Final = 50_000
"""Outbox entries a forget reads inside the sync transaction (about 30 ms); past this many, the
forgotten users' outbox entries are purged by housekeeping steps (`EdgeLocal.purge_step`) instead, so a
forget during a large backlog does not hold the write lock (and every Track commit) for seconds."""

# keys of the `meta` namespace written here
_EVENT_TIMES_BUILT: Final = b"event_times_built"
_OUTBOX_SEQ_KEY: Final = b"outbox_seq"
_PURGE_PREFIX: Final = b"purge:"  # + sha256(user id) -> user id: outbox entries still to purge
_ARRIVAL: Final = struct.Struct(">Q")  # big-endian: `event_times` keys sort by arrival
_U64: Final = struct.Struct("<Q")
_SEQ: Final = struct.Struct(">Q")  # big-endian so outbox keys sort by sequence
MIB: Final = 1 << 20
COPIES_KEPT_FREE: Final = 3  # Track's write limit counts this many times the pages a commit copies


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one `EdgeLocal.sweep` step deleted, and where the next step starts in each namespace."""

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
class TrackResponse:
    accepted: int
    duplicates: int
    new: tuple[bool, ...] = ()  # per event, in order: True = stored now, False = a duplicate


def db_usage(txn: lmdb.Transaction[bytes], db: Database) -> tuple[int, int]:
    """(entries, bytes of its branch, leaf and overflow pages) of a named database: LMDB keeps both."""
    st = txn.stat(db)
    return st["entries"], st["psize"] * (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"])


def used_bytes(txn: lmdb.Transaction[bytes], dbs: Mapping[str, Database]) -> int:
    """Bytes of the pages every named database takes, as `txn` sees them (its own changes included); the
    free pages within the data file, and the small catalog of names, are not counted."""
    return sum(db_usage(txn, db)[1] for db in dbs.values())


def _copied_pages(txn: lmdb.Transaction[bytes], db: Database, keys: int) -> int:
    """Pages a transaction that wrote `keys` keys at random places of `db` copied, at most: a leaf and a
    branch page per key, no more than the tree has, and the path from the root."""
    st = txn.stat(db)
    return min(keys, st["leaf_pages"]) + min(keys, st["branch_pages"]) + st["depth"]


@contextlib.contextmanager
def map_full_as_store_full(what: str) -> Iterator[None]:
    """LMDB's MDB_MAP_FULL as `StoreFull`, naming what did not fit."""
    try:
        yield
    except lmdb.MapFullError as exc:
        raise StoreFull(f"the store is full: {what} did not fit in its map ({exc})") from exc


def oldest_arrival(txn: lmdb.Transaction[bytes], times_db: Database) -> int:
    """Arrival time of the oldest event id remembered (0: none)."""
    with txn.cursor(db=times_db) as cursor:
        return _ARRIVAL.unpack(cursor.key()[: _ARRIVAL.size])[0] if cursor.first() else 0


def _delete_oldest_ids(
    txn: lmdb.Transaction[bytes], times_db: Database, events_db: Database, limit: int, before: bytes | None
) -> int:
    """Delete up to `limit` event ids, oldest arrival first, stopping at the first that arrived at or
    after `before` (a packed arrival time; None: no such stop). Returns how many."""
    deleted = 0
    with txn.cursor(db=times_db) as cursor:
        positioned = cursor.first()
        while positioned and deleted < limit:
            key = cursor.key()
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


def _trim_outbox(txn: lmdb.Transaction[bytes], db: Database, max_bytes: int, max_entries: int) -> int:
    """Delete the oldest outbox entries (at most `max_entries`) until the outbox's pages come to about
    `max_bytes` (0: no limit): the excess over the mean entry size. Returns how many were deleted."""
    if max_bytes <= 0 or max_entries <= 0:
        return 0
    entries, used = db_usage(txn, db)
    want = min(max_entries, _excess_entries(entries, used, max_bytes))
    deleted = 0
    with txn.cursor(db=db) as cursor:
        cursor.first()
        while deleted < want and cursor.key():
            cursor.delete()  # moves to the next (newer) entry
            deleted += 1
    return deleted


def forget_users(txn: lmdb.Transaction[bytes], dbs: Mapping[str, Database], users: Sequence[str]) -> None:
    """Purge this node's own copies of forgotten users: profile, live activity, queued outbox entries.
    The outbox entries at once when the outbox holds at most FORGET_INLINE_OUTBOX entries; else the
    users are marked for `EdgeLocal.purge_step` (until then the forwarder may still send their entries:
    the control plane drops records of forgotten users)."""
    if not users:
        return
    wanted = set(users)
    for user in users:
        txn.delete(user.encode(), db=dbs["profiles"])
        txn.delete(activity_key(user, "").encode(), db=dbs["activity"])
    outbox = dbs["outbox"]
    if txn.stat(outbox)["entries"] > FORGET_INLINE_OUTBOX:
        for user in wanted:
            txn.put(_purge_key(user), user.encode(), db=dbs["meta"])
        return
    matches = _outbox_matcher(wanted)
    with txn.cursor(db=outbox) as cursor:
        doomed = [key for key, value in cursor if matches(value)]
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
    txn: lmdb.Transaction[bytes],
    db: Database,
    after: bytes,
    max_keys: int,
    stale: Callable[[bytes, bytes], bool],
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
            last = cursor.key()
            if stale(last, cursor.value()):
                cursor.delete()  # moves to the next key; key() is b"" past the end
                deleted += 1
                positioned = bool(cursor.key())
            else:
                positioned = cursor.next()
    return deleted, last if positioned else b""


class EdgeLocal:
    """Writes and housekeeping of the edge-local namespaces, each in its own write transaction."""

    __slots__ = ("_dbs", "_env", "write_limit")

    def __init__(self, env: lmdb.Environment, dbs: Mapping[str, Database], write_limit: int = 0) -> None:
        self._env = env
        self._dbs = dbs
        # Bytes of pages in use past which `record_events` refuses to commit (0: only the map's size)
        self.write_limit = write_limit

    def index_event_times(self) -> None:
        """Index the event ids of a store written before `event_times` (once; their stored times were
        the events' own, taken as arrival times)."""
        meta, events_db, times_db = self._dbs["meta"], self._dbs["events"], self._dbs["event_times"]
        with self._env.begin(write=True) as txn:
            if txn.get(_EVENT_TIMES_BUILT, db=meta) is not None:
                return
            with txn.cursor(db=events_db) as cursor:
                for key, value in cursor:
                    txn.put(_ARRIVAL.pack(_U64.unpack(value)[0]) + key, b"", db=times_db)
            txn.put(_EVENT_TIMES_BUILT, b"1", db=meta)

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
        personalization purpose.

        Raises `StoreFull`, with nothing written, when the transaction does not fit in the map or would
        leave more than `write_limit` bytes of pages in use (the rest is housekeeping's room to delete)."""
        with map_full_as_store_full(f"{len(events)} events and {len(exposures)} exposure records"):
            return self._record_events(events, limits, exposures, now_ms)

    def _record_events(
        self, events: Sequence[Event], limits: ActivityLimits, exposures: Sequence[bytes], now_ms: int | None
    ) -> TrackResponse:
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
            if self.write_limit:
                self._check_room(txn, len(events), len(exposures), accepted, len(touched))
        return TrackResponse(accepted, duplicates, tuple(new))

    def _check_room(
        self, txn: lmdb.Transaction[bytes], events: int, exposures: int, new_ids: int, activities: int
    ) -> None:
        """Raise `StoreFull` (the caller's transaction is then aborted) when the pages in use after this
        transaction, with room for COPIES_KEPT_FREE times the pages it copied, would pass `write_limit`.
        LMDB copies each page a write changes and frees the old one at commit, but the next transaction
        cannot reuse a page the one before it freed (the previous meta page still points at it): a
        stream of commits like this one keeps about twice its copies free but not yet reusable, and
        needs its own copies again. Counting them keeps the room left for housekeeping usable. New ids
        and activities land on random leaves of their trees (at most one copy per leaf and branch page);
        the outbox and the arrival index grow at their end."""
        dbs = self._dbs
        copied = _copied_pages(txn, dbs["events"], new_ids) + _copied_pages(txn, dbs["activity"], activities)
        copied += sum(txn.stat(dbs[name])["depth"] for name in ("outbox", "event_times", "meta"))
        used = used_bytes(txn, dbs)
        need = used + COPIES_KEPT_FREE * copied * txn.stat(dbs["meta"])["psize"]
        if need > self.write_limit:
            raise StoreFull(
                f"the store is full: {used / MIB:.1f} MiB of pages in use with these {events} events and "
                f"{exposures} exposure records ({need / MIB:.1f} MiB with room for what commits copy), past "
                f"the {self.write_limit / MIB:.1f} MiB at which Track's writes stop "
                f"(map {self._env.info()['map_size'] / MIB:.0f} MiB)"
            )

    def outbox_batch(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` outbox entries as (sequence, encoded event), oldest first."""
        out: list[tuple[int, bytes]] = []
        with self._env.begin() as txn, txn.cursor(db=self._dbs["outbox"]) as cursor:
            for key, value in cursor:
                out.append((_SEQ.unpack(key)[0], value))
                if len(out) >= limit:
                    break
        return out

    def outbox_ack(self, upto: int) -> int:
        """Delete the outbox entries with sequence <= `upto` (forwarded and acknowledged); return how many."""
        dropped = 0
        with (
            map_full_as_store_full("deleting forwarded outbox entries"),
            self._env.begin(write=True) as txn,
            txn.cursor(db=self._dbs["outbox"]) as cursor,
        ):
            cursor.first()
            while True:
                key = cursor.key()  # b"" once the cursor is past the last entry
                if not key or _SEQ.unpack(key)[0] > upto:
                    break
                cursor.delete()  # moves to the next entry
                dropped += 1
        return dropped

    def outbox_pending(self) -> int:
        """Entries in the outbox."""
        with self._env.begin() as txn:
            return txn.stat(self._dbs["outbox"])["entries"]

    def outbox_usage(self) -> tuple[int, int]:
        """(entries, bytes of the map's pages) of the outbox."""
        with self._env.begin() as txn:
            return db_usage(txn, self._dbs["outbox"])

    def activity_usage(self) -> tuple[int, int]:
        """(entries, bytes of the map's pages) of live activity."""
        with self._env.begin() as txn:
            return db_usage(txn, self._dbs["activity"])

    def pending_purges(self) -> frozenset[str]:
        """Forgotten users whose outbox entries are still to be purged by `purge_step`."""
        with self._env.begin() as txn, txn.cursor(db=self._dbs["meta"]) as cursor:
            users: set[str] = set()
            positioned = cursor.set_range(_PURGE_PREFIX)
            while positioned and cursor.key().startswith(_PURGE_PREFIX):
                users.add(cursor.value().decode())
                positioned = cursor.next()
        return frozenset(users)

    def purge_step(self, users: AbstractSet[str], after: bytes, max_entries: int) -> tuple[int, bytes]:
        """One bounded step of a pass over the outbox that deletes `users`' entries: the next
        `max_entries` entries after `after` (b"": from the first), in one write transaction. Returns
        (entries deleted, the last key read; b"" once the pass reached the end, when the users' purge
        marks are removed too)."""
        with map_full_as_store_full("a forget's purge step"), self._env.begin(write=True) as txn:
            matches = _outbox_matcher(users)
            deleted, last = _sweep_keys(
                txn, self._dbs["outbox"], after, max_entries, lambda _key, value: matches(value)
            )
            if not last:
                for user in users:
                    txn.delete(_purge_key(user), db=self._dbs["meta"])
        return deleted, last

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
        with map_full_as_store_full("a housekeeping step"), self._env.begin(write=True) as txn:
            ids = _delete_oldest_ids(txn, times_db, events_db, max_ids, cutoff)
            early = 0
            if ids_max_bytes > 0 and ids < max_ids:
                count, used_ids = db_usage(txn, events_db)
                used = used_ids + db_usage(txn, times_db)[1]
                if want := min(max_ids - ids, _excess_entries(count, used, ids_max_bytes)):
                    early = _delete_oldest_ids(txn, times_db, events_db, want, None)
            oldest = oldest_arrival(txn, times_db)

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
            activity_bytes = db_usage(txn, activity_db)[1]
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
