"""The control plane's model refresh jobs: forwarded events become model deltas (docs/refresh.md).

One `RefreshJob` per model (`core/model_refresh.ModelRefresh`: popularity, trending, neighbours; the
embeddings: `sync/embedding_refresh_job.py`), a thread of its own (`sync/periodic.py`) ticking at start
and then every `every` seconds (`RefreshStats`: runs, failures, the last run's duration and the last
version committed, which the control plane's /metrics shows per model). A tick reads the forwarded
events the model needs (an incremental model: those stored since its cursor `refresh:<name>`, in
batches; a windowed model: every stored event of its window, when an item event arrived since its last
run), turns them into `RefreshEvent`s, asks the model for the new state, and commits what changed as one
commit of kind "refresh" through the change log (so it is versioned, listed by `ctl history`, rolled
back like any push and sent to the edges like any commit), with its cursor moved in the same transaction
(`ControlStore.commit_at`): each event counts once, also across crashes and lease moves. Only arrays
(and manifest keys, profiles) whose bytes differ are committed; a run that changes nothing commits
nothing (its cursor still moves).

The model is computed outside the push lock (neighbours take a while); the commit is made under it,
and only if no other commit landed since the state was read, else the run is made again under the lock.

Context (for a `scoped` model): an event carries no country or segments. A job remembers, from the
exposure records it reads, each decision's and each unit's (user, else session) last country and
matched segments (the newest 100,000 of each), and gives an event its decision's context, else its
unit's, else the country attribute of its user's profile.

New items (`new_items`, the popularity job only): an item id that events name and the catalog lacks
gets a record (`core/model_refresh.new_item_record`) once `NewItems` has seen it from enough units; the
records are made as delta upserts (`sync/changes.parse_delta`), which give the item the next row and
grow every per-item array as a delta would, then the model refreshes the grown state, in one commit.
The counts per unknown id are kept in the control store beside the cursor (`consumer_state`
`new_items:<model>`: msgpack `[cursor position, [[id, first ms, [units]], ...]]`, oldest id first),
written in the same transaction as the commit and the cursor move, so a crash neither loses nor repeats
a unit. A job loads them when its counts are not those of the store's cursor (at start; when another
replica moved the cursor through the central tier's log, which does not carry them); when the record
is missing or as of another position, it rebuilds them from the stored events up to the cursor.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

import msgpack
import numpy as np
from numpy.typing import NDArray

from edgewise.core.embedding_slots import with_active_vector
from edgewise.core.exposure import EXPOSURE_KIND
from edgewise.core.forwarded import latest_ms, record_problem
from edgewise.core.model_refresh import (
    ITEM_EVENT_TYPES,
    ModelRefresh,
    ModelState,
    NewItems,
    RefreshEvent,
    RefreshResult,
    new_item_record,
)
from edgewise.core.records import (
    RecordError,
    decode_array,
    decode_item,
    decode_profile,
    encode_array,
    encode_profile,
)
from edgewise.sync.bundle import _id_problem
from edgewise.sync.changes import MANIFEST_KEY, parse_delta, stored_generation
from edgewise.sync.control_store import CommitInfo, ControlStore, ControlView, RecordChange
from edgewise.sync.event_store import EventStore
from edgewise.sync.periodic import Periodic
from edgewise.sync.skipped_records import SkippedRecords

log = logging.getLogger(__name__)

__all__ = ["CURSOR_PREFIX", "NEW_ITEMS_STATE", "EventContext", "RefreshJob", "RefreshStats"]

CURSOR_PREFIX: Final = "refresh:"
KIND: Final = "refresh"
_CONTEXTS: Final = 100_000
_ATTEMPTS: Final = 3
NEW_ITEMS_STATE: Final = "new_items:"  # + model name: the consumer state of its new-item counts
_REBUILD_BATCH: Final = 10_000
_PAIR: Final = b"\x92"  # msgpack: an array of two elements (the new-item counts' record)


@dataclass(slots=True)
class RefreshStats:
    """A refresh job's figures since start (the control plane's /metrics, per model): scheduled runs
    (ticks that computed), runs that raised, the last run's seconds (NaN before the first), the version
    of the last refresh commit it published (0: none yet) and its commits."""

    runs: int = 0
    failures: int = 0
    last_seconds: float = math.nan
    last_version: int = 0
    commits: int = 0
    staged: int = 0  # the embeddings refresh's staging commits (core/embedding_slots.py)

    def run(self, work: Callable[[], None]) -> None:
        """Call `work` as one run: counted, timed, and counted as a failure when it raises (re-raised).
        Written by the job's thread only; a scrape reads the fields as they are."""
        started = time.perf_counter()
        self.runs += 1
        try:
            work()
        except Exception:
            self.failures += 1
            raise
        finally:
            self.last_seconds = time.perf_counter() - started

    def committed(self, version: int) -> None:
        self.commits += 1
        self.last_version = version


class EventContext:
    """The country and segments of decisions and units, from the exposure records read (see the module
    doc), and the forwarded records as `RefreshEvent`s."""

    def __init__(self, capacity: int = _CONTEXTS) -> None:
        self.capacity = capacity
        self._decisions: OrderedDict[str, tuple[str, tuple[str, ...]]] = OrderedDict()
        self._units: OrderedDict[str, tuple[str, tuple[str, ...]]] = OrderedDict()

    def _remember(
        self,
        table: OrderedDict[str, tuple[str, tuple[str, ...]]],
        key: str,
        value: tuple[str, tuple[str, ...]],
    ) -> None:
        table.pop(key, None)
        table[key] = value
        while len(table) > self.capacity:
            table.popitem(last=False)

    def events(
        self, records: Sequence[Mapping[str, Any]], country_of: Callable[[str], str]
    ) -> list[RefreshEvent]:
        """The item events among `records` (checked ones, in stored order), with their context."""
        out: list[RefreshEvent] = []
        for record in records:
            unit = str(record.get("u") or record.get("s") or "")
            if record.get("k") == EXPOSURE_KIND:
                segments = record.get("sg")
                context = (
                    str(record.get("co") or ""),
                    tuple(str(s) for s in segments) if isinstance(segments, list) else (),
                )
                self._remember(self._decisions, str(record.get("d", "")), context)
                if unit:
                    self._remember(self._units, unit, context)
                continue
            kind, item = record.get("t"), record.get("i")
            if kind not in ITEM_EVENT_TYPES or not isinstance(item, str) or not item or not unit:
                continue
            known = self._decisions.get(str(record.get("d") or "")) or self._units.get(unit)
            if known is None:
                user = record.get("u")
                known = (country_of(user) if isinstance(user, str) and user else "", ())
            out.append(RefreshEvent(str(kind), unit, item, int(record.get("ts", 0)), known[0], known[1]))
        return out


class RefreshJob:
    """One model's refresh on a schedule (see the module doc)."""

    def __init__(
        self,
        store: ControlStore,
        events: EventStore,
        lock: AbstractContextManager[object],
        on_commit: Callable[[], None],
        model: ModelRefresh,
        *,
        every: float,
        new_items: NewItems | None = None,
        batch: int = 200_000,
    ) -> None:
        self.store = store
        self.events = events
        self._lock = lock
        self._on_commit = on_commit
        self.model = model
        self.new_items = new_items
        self.batch = batch
        self.cursor = CURSOR_PREFIX + model.name
        self.context = EventContext()
        self.skipped = SkippedRecords(f"refresh_{model.name}")
        self.stats = RefreshStats()  # for the control plane's /metrics
        self.items_added = 0
        self._new_items_state = NEW_ITEMS_STATE + model.name
        self._new_items_at: int | None = None  # the cursor position `new_items` counts are as of
        self._packed: tuple[int, bytes] | None = None  # (new_items.changes, its packed ids) last written
        self._loop = Periodic(
            f"refresh-{model.name}", every, self._tick, "model_refresh_failed", first_now=True
        )

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

    @property
    def name(self) -> str:
        """The model's name (the `model` label of the refresh metrics)."""
        return self.model.name

    @property
    def commits(self) -> int:
        """Refresh commits published since start."""
        return self.stats.commits

    def _tick(self) -> None:
        try:
            self.stats.run(self._cycle)
        finally:
            self.skipped.flush()

    def _cycle(self) -> None:
        while self.run_once() is not None and not self.model.window_ms and not self._loop.stopping:
            pass

    # ---- one run

    def run_once(self) -> CommitInfo | int | None:
        """Refresh from the events the model needs: the commit, the position read when nothing changed,
        or None when no event arrived since the last run."""
        try:
            return self._run_once()
        except BaseException:
            self._new_items_at = None  # counts may be ahead of the store: load them again
            raise

    def _run_once(self) -> CommitInfo | int | None:
        after = self.store.cursor(self.cursor)
        if self.new_items is not None and self._new_items_at != after:
            self._load_new_items(after)
        if self.model.window_ms:
            last = self.events.last_seq()
            if last <= after:
                return None
            if not self._item_event_after(after):  # exposures only (most records): nothing to recompute
                self.store.commit_at(
                    [], kind=KIND, cursor=self.cursor, position=last, consumer_state=self._counts_at(last)
                )
                self._moved(last)
                return last
            rows = list(self.events.events(0))
        else:
            rows = self.events.batch_after(after, self.batch)
        if not rows:
            return None
        position = rows[-1][0]
        first_seq = next((seq for seq, _, _ in rows if seq > after), rows[0][0])
        records = self._usable(rows)
        countries: dict[str, str] = {}  # per run: a user's profile country, read once

        def country_of(user: str) -> str:
            if user not in countries:
                countries[user] = self._country_of(user)
            return countries[user]

        events = self.context.events(records, country_of)
        if self.model.window_ms and events:
            start = max(e.ts_ms for e in events) - self.model.window_ms
            events = [e for e in events if e.ts_ms >= start]
        ready: dict[str, int] = {}
        if self.new_items is not None:
            with self.store.read() as view:
                known = {key for key, _ in view.items("items")}
            ready = {
                item: ms
                for item, ms in self.new_items.observe(events, known).items()
                if _id_problem(item) is None
            }
        counts = self._counts_at(position)  # packed outside the push lock (100k ids: ~0.2 s)
        info: CommitInfo | None = None
        for attempt in range(_ATTEMPTS):
            last_try = attempt == _ATTEMPTS - 1
            if last_try:
                with self._lock:
                    changes, description = self._changes(events, ready, first_seq, position)
                    info = self._commit(changes, description, position, counts)
                break
            version = self.store.head_version()
            changes, description = self._changes(events, ready, first_seq, position)
            with self._lock:
                if self.store.head_version() != version:
                    continue  # a push or another job committed meanwhile: compute again on the new state
                info = self._commit(changes, description, position, counts)
                break
        self._moved(position)
        if info is None:
            return position
        self.stats.committed(info.version)
        self.items_added += len(ready)
        log.info(
            "model_refreshed",
            extra={
                "model": self.model.name,
                "version": info.version,
                "changes": info.changes,
                "new_items": len(ready),
                "events_to": position,
            },
        )
        self._on_commit()
        return info

    def _item_event_after(self, after: int) -> bool:
        """Whether an item event (not an exposure) was stored after sequence `after`."""
        return any(record.get("t") in ITEM_EVENT_TYPES for _, _, record in self.events.events(after))

    def _usable(self, rows: Sequence[tuple[int, str, dict[str, Any]]]) -> list[dict[str, Any]]:
        latest = latest_ms(time.time_ns() // 1_000_000)
        out = []
        scoped = self.model.scoped
        for seq, _, record in rows:
            if record.get("k") == EXPOSURE_KIND:
                if not scoped:
                    continue
            elif record.get("t") not in ITEM_EVENT_TYPES:
                continue
            problem = record_problem(record, latest)
            if problem is not None:
                self.skipped.skip(seq, problem)
                continue
            out.append(record)
        return out

    def _country_of(self, user: str) -> str:
        with self.store.read() as view:
            raw = view.get("profiles", user)
        if raw is None:
            return ""
        try:
            country = decode_profile(user, raw).attributes.get("country")
        except (RecordError, KeyError, ValueError):
            return ""
        return country if isinstance(country, str) else ""

    def _commit(
        self,
        changes: list[RecordChange],
        description: str,
        position: int,
        counts: Mapping[str, bytes] | None,
    ) -> CommitInfo | None:
        return self.store.commit_at(
            changes,
            kind=KIND,
            description=description,
            cursor=self.cursor,
            position=position,
            consumer_state=counts,
        )

    # ---- new-item counts kept beside the cursor

    def _counts_at(self, position: int) -> dict[str, bytes] | None:
        """The consumer state to write with a cursor move to `position` (None without new items):
        msgpack `[position, [[id, first ms, [units]], ...]]`, the ids packed again only when they changed."""
        if self.new_items is None:
            return None
        if self._packed is None or self._packed[0] != self.new_items.changes:
            self._packed = (
                self.new_items.changes,
                msgpack.packb(self.new_items.entries(), use_bin_type=True),
            )
        return {self._new_items_state: _PAIR + msgpack.packb(position) + self._packed[1]}

    def _moved(self, position: int) -> None:
        if self.new_items is not None:
            self._new_items_at = position

    def _load_new_items(self, at: int) -> None:
        """Make the in-memory counts those of cursor position `at`: the stored record when it is as of
        `at`, else rebuilt from the stored events up to `at`."""
        assert self.new_items is not None
        raw = self.store.consumer_state(self._new_items_state)
        doc: object = None
        try:
            doc = msgpack.unpackb(raw, raw=False) if raw is not None else None
            if isinstance(doc, list) and len(doc) == 2 and doc[0] == at:
                self.new_items.load(
                    (str(i), int(first), [str(u) for u in units]) for i, first, units in doc[1]
                )
                self._new_items_at = at
                log.info(
                    "new_items_loaded",
                    extra={"model": self.model.name, "events_to": at, "pending": self.new_items.pending()},
                )
                return
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            log.warning("new_items_unreadable", extra={"model": self.model.name, "error": str(exc)})
        self._rebuild_new_items(at, stored_at=doc[0] if isinstance(doc, list) and doc else None)

    def _rebuild_new_items(self, at: int, stored_at: object) -> None:
        """Count the unknown ids of the stored events up to position `at` (the ids already ready then:
        their row was rolled back or their id is refused, start over)."""
        assert self.new_items is not None
        started = time.perf_counter()
        self.new_items.load([])
        with self.store.read() as view:
            known = {key for key, _ in view.items("items")}
        latest = latest_ms(time.time_ns() // 1_000_000)
        batch: list[RefreshEvent] = []
        read = 0
        for seq, _, record in self.events.events(0):
            if seq > at:
                break
            read += 1
            event = _item_event(record, latest)
            if event is not None and event.item not in known:
                batch.append(event)
            if len(batch) >= _REBUILD_BATCH:
                self.new_items.observe(batch, known)
                batch.clear()
        self.new_items.observe(batch, known)
        self._new_items_at = at
        log.info(
            "new_items_rebuilt",
            extra={
                "model": self.model.name,
                "events_to": at,
                "stored_at": stored_at,
                "records": read,
                "pending": self.new_items.pending(),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    def _changes(
        self, events: Sequence[RefreshEvent], ready: Mapping[str, int], first_seq: int, last_seq: int
    ) -> tuple[list[RecordChange], str]:
        """The record changes of this run (only those that differ from the store) and their description."""
        with self.store.read() as view:
            staged: dict[tuple[str, str], bytes | None] = {}
            if ready:
                lines = [
                    json.dumps({"op": "upsert", "item": new_item_record(item, ms)})
                    for item, ms in sorted(ready.items())
                ]
                for change in parse_delta(lines, view, file="refresh new items"):
                    staged[(change.namespace, change.key)] = change.value
            state = self._state(view, staged)
            result = self.model.refresh(state, events)
            self._stage(view, state, result, staged)
            changes = [
                RecordChange(namespace, key, value)
                for (namespace, key), value in staged.items()
                if value != view.get(namespace, key)
            ]
        times = [e.ts_ms for e in events]
        window = f"{_iso(min(times))}..{_iso(max(times))}" if times else "no item events"
        parts = [result.summary] if result.summary else []
        if ready:
            parts.append(f"{len(ready)} new items")
        what = ", ".join(parts) or "no change"
        description = f"refresh {self.model.name}: {what}; events {first_seq}..{last_seq} ({window})"
        return changes, description

    def _state(self, view: ControlView, staged: Mapping[tuple[str, str], bytes | None]) -> ModelState:
        rows: dict[str, int] = {}
        for key, stored in view.items("items"):
            if ("items", key) not in staged:
                rows[key] = decode_item(key, stored).row
        for (namespace, key), value in staged.items():
            if namespace == "items" and value is not None:
                rows[key] = decode_item(key, value).row
        arrays: dict[str, NDArray[Any]] = {}
        for (namespace, key), value in staged.items():
            if namespace == "models" and value is not None and self.model.reads(key):
                arrays[key] = decode_array(value)
        for key, stored in view.items("models"):
            if key not in arrays and ("models", key) not in staged and self.model.reads(key):
                arrays[key] = decode_array(stored)
        return ModelState(rows=rows, arrays=arrays, manifest=_manifest(view))

    def _stage(
        self,
        view: ControlView,
        state: ModelState,
        result: RefreshResult,
        staged: dict[tuple[str, str], bytes | None],
    ) -> None:
        """Add the result's records to `staged` (over the new items' changes)."""
        n = state.n_items
        for name, array in result.arrays.items():
            if array.shape[0] != n:
                raise ValueError(
                    f"refresh {self.model.name}: array {name!r} has {array.shape[0]} rows, not {n}"
                )
            staged[("models", name)] = encode_array(np.ascontiguousarray(array))
        if result.manifest:
            manifest = {**state.manifest, **result.manifest}
            staged[("rules", MANIFEST_KEY)] = msgpack.packb(manifest, use_bin_type=True)
        active = stored_generation(view) if result.profile_embeddings else 0
        for user, vector in result.profile_embeddings.items():
            raw = view.get("profiles", user)
            if raw is None:
                continue  # no profile (and no consent) to carry it
            embedding = None if vector is None else np.asarray(vector, dtype="<f4").tobytes()
            # the vector of the active embedding generation; a slot a refresh is staging is kept
            profile = decode_profile(user, raw)
            slots = with_active_vector(profile.stored_vectors(), active, embedding)
            staged[("profiles", user)] = encode_profile(replace(profile, embedding=embedding, vectors=slots))


def _item_event(record: Mapping[str, Any], latest: int) -> RefreshEvent | None:
    """A stored record as the new-item counts read it (no context), None when it is not a usable item
    event."""
    kind, item = record.get("t"), record.get("i")
    unit = str(record.get("u") or record.get("s") or "")
    if record.get("k") == EXPOSURE_KIND or kind not in ITEM_EVENT_TYPES or not isinstance(item, str):
        return None
    if not item or not unit or record_problem(record, latest) is not None:
        return None
    return RefreshEvent(str(kind), unit, item, int(record.get("ts", 0)))


def _manifest(view: ControlView) -> dict[str, Any]:
    raw = view.get("rules", MANIFEST_KEY)
    doc = msgpack.unpackb(raw, raw=False) if raw is not None else {}
    return doc if isinstance(doc, dict) else {}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
