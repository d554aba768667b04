"""The control plane's store of events forwarded by edges: de-duplicated by event id, in arrival order.

One LMDB environment (`<control data>/events`, `sync=True`), separate from the control store so that a
busy event stream never holds up pushes:

- `ids`: event id (UTF-8) -> 8-byte big-endian sequence number: the de-duplication index.
- `log`: 8-byte big-endian sequence -> msgpack `{"node": node id, "kind": "event" | "exposure", "e":
  payload}` where payload is the record as the edge stored it (`Event.encode`, or an exposure
  record of `core/exposure.py`, whose id is "<decision id>:<placement id>").
- `users`: user id (UTF-8) -> the 8-byte sequences of that user's records (sorted duplicates): what
  `forget` deletes, without reading the whole log. A store from before it is indexed when opened
  (`meta` `users_indexed` marks it done).
- `parts` (only when opened with `partitions` > 0: a central-tier replica's copy of the events stream):
  2-byte big-endian partition (`sync/event_partitions.partition_of` of the record's user; for a record
  without a user id, `partitions`, the `anonymous` one) + 8-byte sequence -> empty: the records of one
  partition in order, so a job working some partitions reads only theirs (`batch_in`). Built when
  opened if missing or made for another number of partitions (`meta` `parts` says for which).
- `meta`: `seq` -> the last sequence number.

`ingest` stores a batch in one write transaction: an acknowledged batch is on disk, and a batch sent
again (the edge crashed before it deleted its outbox entries, or the reply was lost) is counted once.

Nothing the log holds stops a reader. A stored record whose bytes do not decode (written by an older
version, or damaged) is read as the map `{UNREADABLE: why}` (`core/forwarded.py`), which the consumers
skip and count; `forget` deletes such a record when the user index names it (else it cannot tell whose
it is) and `expire` deletes it as expired (it has no time, and nothing can use it).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Final

import lmdb
import msgpack

from edgewise.core.forwarded import UNREADABLE
from edgewise.sync.event_partitions import partition_of

log = logging.getLogger(__name__)

__all__ = ["EventStore", "EventStoreError", "IngestResult"]

_SEQ: Final = struct.Struct(">Q")
_PART: Final = struct.Struct(">H")
_META_SEQ: Final = b"seq"
_META_PARTS: Final = b"parts"
_META_USERS_INDEXED: Final = b"users_indexed"
MAX_ID_BYTES: Final = 400
_MAX_KEY_BYTES: Final = 511  # LMDB's default key size limit


class EventStoreError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int


def event_id_of(payload: bytes) -> str:
    """The event id inside a forwarded payload; ValueError says what is wrong with it."""
    return forwarded_keys(payload)[0]


def forwarded_keys(payload: bytes) -> tuple[str, str]:
    """The event id and the user id ("" for none) inside a forwarded payload (an event or an exposure
    record); ValueError says what is wrong with it."""
    try:
        doc = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on corrupt input
        raise ValueError(f"not a msgpack event: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("not a msgpack map")
    event_id = doc.get("id")
    if not isinstance(event_id, str) or not event_id or len(event_id.encode()) > MAX_ID_BYTES:
        raise ValueError(f"event id must be a string of 1-{MAX_ID_BYTES} bytes, got {event_id!r:.80}")
    user = doc.get("u")
    return event_id, user if isinstance(user, str) else ""


def _id_key(event_id: object) -> bytes | None:
    """The `ids` key of a stored record's id; None when it has none that can be a key."""
    if not isinstance(event_id, str):
        return None
    raw = event_id.encode()
    return raw if 0 < len(raw) <= _MAX_KEY_BYTES else None


def _index_key(user: str) -> bytes | None:
    """The `users` index key of a user id; None for none, and for ids longer than an LMDB key allows
    (their records are found by a full scan)."""
    raw = user.encode()
    return raw if 0 < len(raw) <= MAX_ID_BYTES else None


def _user_of(payload: bytes) -> str:
    """The user id inside a stored payload ("" when it has none, is not a map or does not decode)."""
    user = _decoded(payload).get("u")
    return user if isinstance(user, str) else ""


def _decoded(payload: object) -> dict[str, Any]:
    """A stored payload (msgpack bytes of a map) decoded; `{UNREADABLE: why}` when it is not one."""
    try:
        doc = msgpack.unpackb(payload, raw=False) if isinstance(payload, bytes) else payload
    except Exception as exc:  # msgpack raises several unrelated types on corrupt input
        return {UNREADABLE: f"stored payload: not msgpack ({exc})"}
    if not isinstance(doc, dict):
        return {UNREADABLE: f"stored payload: a msgpack {type(doc).__name__}, not a map"}
    return doc


def _envelope(raw: bytes) -> tuple[str, dict[str, Any]]:
    """(node id, decoded payload) of a `log` value; the payload `{UNREADABLE: why}` when either does not
    decode."""
    try:
        record = msgpack.unpackb(raw, raw=False)
    except Exception as exc:
        return "", {UNREADABLE: f"stored record: not msgpack ({exc})"}
    if not isinstance(record, dict) or not isinstance(record.get("e"), bytes):
        return "", {UNREADABLE: "stored record: not a map with a payload"}
    return str(record.get("node", "")), _decoded(record["e"])


class EventStore:
    def __init__(self, path: str | Path, *, map_size: int = 64 << 30, partitions: int = 0) -> None:
        if not 0 <= partitions <= 0xFFFF:
            raise EventStoreError(f"partitions must be 0 to 65535, got {partitions}")
        self.path = Path(path)
        self.partitions = partitions
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._env = lmdb.open(str(self.path), map_size=map_size, max_dbs=6, sync=True, metasync=True)
            self._ids = self._env.open_db(b"ids")
            self._log = self._env.open_db(b"log")
            self._meta = self._env.open_db(b"meta")
            self._users = self._env.open_db(b"users", dupsort=True)
            self._parts = self._env.open_db(b"parts")
            self._index_users()
            if partitions:
                self._index_partitions()
        except (OSError, lmdb.Error) as exc:
            raise EventStoreError(f"cannot open the event store at {self.path}: {exc}") from exc

    @property
    def anonymous(self) -> int:
        """The index's own partition of the records without a user id (`partitions`: one past the last)."""
        return self.partitions

    def _part_key(self, user: str, seq: bytes) -> bytes:
        return _PART.pack(partition_of(user, self.partitions) if user else self.anonymous) + seq

    def _index_partitions(self) -> None:
        """Build the `parts` index when missing or made for another number of partitions (one write
        transaction)."""
        wanted = _PART.pack(self.partitions) + b"+anonymous"
        with self._env.begin(write=True) as txn:
            if txn.get(_META_PARTS, db=self._meta) == wanted:
                return
            txn.drop(self._parts, delete=False)
            with txn.cursor(db=self._log) as cursor:
                for key, value in cursor:
                    user = _envelope(value)[1].get("u")
                    user = user if isinstance(user, str) else ""
                    txn.put(self._part_key(user, bytes(key)), b"", db=self._parts)
            txn.put(_META_PARTS, wanted, db=self._meta)

    def _index_users(self) -> None:
        """Build the `users` index of a store written before it (once, in one write transaction)."""
        with self._env.begin(write=True) as txn:
            if txn.get(_META_USERS_INDEXED, db=self._meta) is not None:
                return
            unreadable = 0
            with txn.cursor(db=self._log) as cursor:
                for key, value in cursor:
                    payload = _envelope(value)[1]
                    unreadable += UNREADABLE in payload
                    user = payload.get("u")
                    index_key = _index_key(user) if isinstance(user, str) else None
                    if index_key is not None:
                        txn.put(index_key, bytes(key), db=self._users, dupdata=True)
            txn.put(_META_USERS_INDEXED, b"1", db=self._meta)
        if unreadable:
            log.warning("forwarded_records_skipped", extra={"consumer": "user_index", "skipped": unreadable})

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ingest(
        self,
        node_id: str | Sequence[str],
        records: Sequence[tuple[str, str, bytes]],
        users: Sequence[str] | None = None,
        seqs: Sequence[int] | None = None,
    ) -> IngestResult:
        """Store the records not seen before, in one transaction. `records` are (kind, id, payload) with
        the id `event_id_of(payload)` returned when the caller checked the payload; `users` the user id
        of each (`forwarded_keys`), else read from the payloads. `node_id`: the forwarding node of all,
        or of each. `seqs`: the sequence of each record (the central tier keeps its events stream's), a
        record at or below the last one stored counted as a duplicate; else the next ones."""
        if users is None:
            users = [_user_of(payload) for _, _, payload in records]
        nodes = [node_id] * len(records) if isinstance(node_id, str) else list(node_id)
        accepted = duplicates = 0
        try:
            with self._env.begin(write=True) as txn:
                raw = txn.get(_META_SEQ, db=self._meta)
                seq = _SEQ.unpack(raw)[0] if raw is not None else 0
                for i, ((kind, event_id, payload), user) in enumerate(zip(records, users, strict=True)):
                    node_id = nodes[i]
                    next_seq = seq + 1 if seqs is None else seqs[i]
                    if next_seq <= seq:  # delivered again: stored (or dropped) the first time
                        duplicates += 1
                        continue
                    key = event_id.encode()
                    if not txn.put(key, _SEQ.pack(next_seq), db=self._ids, overwrite=False):
                        duplicates += 1
                        continue
                    seq = next_seq
                    accepted += 1
                    record = msgpack.packb({"node": node_id, "kind": kind, "e": payload}, use_bin_type=True)
                    txn.put(_SEQ.pack(seq), record, db=self._log, append=True)
                    index_key = _index_key(user)
                    if index_key is not None:
                        txn.put(index_key, _SEQ.pack(seq), db=self._users, dupdata=True)
                    if self.partitions:
                        txn.put(self._part_key(user, _SEQ.pack(seq)), b"", db=self._parts)
                txn.put(_META_SEQ, _SEQ.pack(seq), db=self._meta)
        except lmdb.MapFullError as exc:
            raise EventStoreError(f"the event store at {self.path} is full: {exc}") from exc
        return IngestResult(accepted, duplicates)

    def cursor(self, name: str) -> int:
        """A consumer's position (the last sequence it processed; 0 at first)."""
        with self._env.begin() as txn:
            raw = txn.get(b"cursor:" + name.encode(), db=self._meta)
        return _SEQ.unpack(raw)[0] if raw is not None else 0

    def set_cursor(self, name: str, seq: int) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(b"cursor:" + name.encode(), _SEQ.pack(seq), db=self._meta)

    def forget(self, user_id: str) -> int:
        """Delete every stored record (events and exposures) of one user, and their ids; return how many.
        Reads only that user's records (the `users` index). A record that does not decode is deleted when
        the index names it under this user (its id stays in `ids`: unknown), else left alone."""
        if not user_id:
            return 0
        removed = unreadable = 0
        index_key = _index_key(user_id)
        with self._env.begin(write=True) as txn, txn.cursor(db=self._users) as index:
            if index_key is None:  # not indexed: every record is read
                with txn.cursor(db=self._log) as cursor:
                    seqs = [bytes(key) for key, _ in cursor]
            elif index.set_key(index_key):
                seqs = [bytes(seq) for seq in index.iternext_dup(keys=False)]
                index.set_key(index_key)  # iternext_dup leaves the cursor past the last one
                index.delete(dupdata=True)
            else:
                seqs = []
            for seq in seqs:
                raw = txn.get(seq, db=self._log)
                if raw is None:
                    continue
                payload = _envelope(raw)[1]
                if UNREADABLE in payload:
                    unreadable += 1
                    if index_key is None:
                        continue  # whose it is cannot be told
                elif payload.get("u") != user_id:
                    continue
                id_key = _id_key(payload.get("id"))
                if id_key is not None:
                    txn.delete(id_key, db=self._ids)
                txn.delete(seq, db=self._log)
                if self.partitions:
                    txn.delete(self._part_key(user_id, seq), db=self._parts)
                removed += 1
        if unreadable:
            log.warning(
                "forwarded_records_skipped",
                extra={"consumer": "forget", "skipped": unreadable, "indexed": index_key is not None},
            )
        return removed

    def expire(self, older_than_ms: int, upto_seq: int, limit: int = 20_000) -> int:
        """Delete, oldest first, the records with sequence <= `upto_seq` whose time (`ts`, Unix ms) is
        before `older_than_ms`, with their ids and index entries; stop at the first record that is newer
        (the log is in arrival order) or after `limit` (one write transaction). A record without a usable
        time (not an integer, or not decodable) counts as expired: nothing can use it. Return how many."""
        removed = unusable = 0
        with self._env.begin(write=True) as txn, txn.cursor(db=self._log) as cursor:
            positioned = cursor.first()
            while positioned and removed < limit:
                seq = bytes(cursor.key())
                if _SEQ.unpack(seq)[0] > upto_seq:
                    break
                doc = _envelope(cursor.value())[1]
                ts = doc.get("ts")
                if isinstance(ts, int | float) and not isinstance(ts, bool):
                    if ts >= older_than_ms:
                        break
                else:
                    unusable += 1
                id_key, user = _id_key(doc.get("id")), doc.get("u")
                if id_key is not None:
                    txn.delete(id_key, db=self._ids)
                index_key = _index_key(user) if isinstance(user, str) else None
                if index_key is not None:
                    txn.delete(index_key, seq, db=self._users)
                if self.partitions:  # an unreadable record's entry stays: `batch_in` skips it
                    txn.delete(self._part_key(user if isinstance(user, str) else "", seq), db=self._parts)
                cursor.delete()  # moves to the next record
                removed += 1
                positioned = bool(cursor.key())
        if unusable:
            log.warning("forwarded_records_skipped", extra={"consumer": "retention", "skipped": unusable})
        return removed

    def batch_after(self, after: int, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """The next `limit` records after sequence `after` (a consumer's position)."""
        return list(islice(self.events(after), limit))

    def batch_in(self, partition: int, after: int, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """The next `limit` records of `partition` after sequence `after` (the `parts` index; needs a store
        opened with `partitions`). The records without a user id are indexed apart, under `anonymous`."""
        if not 0 <= partition <= self.anonymous:
            raise EventStoreError(f"partition {partition} is not one of this store's {self.partitions}")
        prefix = _PART.pack(partition)
        out: list[tuple[int, str, dict[str, Any]]] = []
        with self._env.begin() as txn, txn.cursor(db=self._parts) as cursor:
            if not cursor.set_range(prefix + _SEQ.pack(after + 1)):
                return out
            for key in cursor.iternext(values=False):
                if not key.startswith(prefix) or len(out) >= limit:
                    break
                seq = key[len(prefix) :]
                raw = txn.get(seq, db=self._log)
                if raw is None:  # deleted (an unreadable record expired)
                    continue
                node, record = _envelope(raw)
                out.append((_SEQ.unpack(seq)[0], node, record))
        return out

    def count_in(self, partition: int, after: int, limit: int) -> int:
        """How many records of `partition` the `parts` index holds after sequence `after`, counted up to
        `limit` (a walk over index keys, no record read): a consumer's backlog in that partition."""
        if not 0 <= partition <= self.anonymous:
            raise EventStoreError(f"partition {partition} is not one of this store's {self.partitions}")
        prefix = _PART.pack(partition)
        counted = 0
        with self._env.begin() as txn, txn.cursor(db=self._parts) as cursor:
            if not cursor.set_range(prefix + _SEQ.pack(after + 1)):
                return 0
            for key in cursor.iternext(values=False):
                if counted >= limit or not key.startswith(prefix):
                    break
                counted += 1
        return counted

    def last_seq(self) -> int:
        """The sequence number of the newest record stored (0 before the first): how many were ever
        stored, deleted ones included."""
        with self._env.begin() as txn:
            raw = txn.get(_META_SEQ, db=self._meta)
        return _SEQ.unpack(raw)[0] if raw is not None else 0

    def count(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._log)["entries"])

    def events(self, after: int = 0) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """(sequence, node id, decoded record) after sequence `after`, in arrival order: Track events, and
        exposure records (their `k` is "exposure"); a record that does not decode as `{UNREADABLE: why}`
        (node "" when the envelope does not decode)."""
        with self._env.begin() as txn, txn.cursor(db=self._log) as cursor:
            if not cursor.set_range(_SEQ.pack(after + 1)):
                return
            for key, value in cursor:
                node, record = _envelope(value)
                yield _SEQ.unpack(key)[0], node, record
