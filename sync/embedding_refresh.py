"""The embeddings half of the control plane's model refresh: forwarded events -> a model delta.

Two steps, so that training (seconds) never holds the push lock:

1. `train_refresh(view, events, settings)`, outside the lock: reads the catalog (item id -> row of every
   `items` record), the current `models/item_embeddings` and the dim (that array's, else the manifest's),
   and the forwarded Track events in the event store (`EventStore.events`; exposure records and records
   `core/forwarded.record_problem` refuses are skipped, and so is every event its caller did not give the
   `personalization` purpose, which is what training a user's vector is for); weighs them per
   (user, item) (`core/embedding_training.interactions_from_events`: purchase 1, add_to_cart 0.5, click
   0.25, view 0.1, with a half-life; summed for ALS and BPR, the largest for the hybrid) and trains
   (`train_embeddings`: implicit's ALS or BPR, or the hybrid model of `core/hybrid_embeddings.py`, which
   also reads each item's tags (its words; none for an item made from events, whose one tag
   `from_events` says nothing about it) and `models/item_popularity` (the prior; distinct users per item
   in the events when the state has no such array of one entry per row)). Events of items not in the
   catalog are counted, not trained (rows for new items come from the refresh that adds them to `items`;
   the next embeddings refresh then trains them; the hybrid gives every row of the catalog a vector,
   also an item without events, from its tags).
2. Under the lock, on the state each commit is written to, in paced commits (core/embedding_slots.py):
   `plan_staging(view, trained)`: the run stages embedding generation G = active + 1 (the active one is
   `models/embedding_generation`, 0 when absent: the bundle's) for the profiles there are now;
   `staging_changes(view, trained, plan, users)`, one commit per batch of users
   (`[refresh] embeddings_commit_profiles`): each profile's vector of generation G, written into the slot
   that does not hold the active generation's vector, so the edge keeps using the active one (inert until
   the flip). A seen user's profile gets the new vector; a profile whose user was not seen gets its
   active vector carried into the new factor space (`carry_users`), or, when the spaces cannot be related
   (`carry_map` None: too few items known to both models), none (the edge then ranks by the mean of
   recent views or falls back; a personalization miss, never an error). A vector of generation G a run
   killed before this one left in a profile is replaced, or cleared when this run has none for it.
   Everything else in a profile record is kept byte for byte (the msgpack map is edited, not re-encoded
   from a schema: core/slot_edit.py edits it in its bytes, in C, for every record its walk is sure of).
   Users seen without a profile get none: the profile folder creates profiles, with
   their consent. Then `flip_changes(view, trained, plan)`, one commit: `models/item_embeddings` whole
   (rows of items without interactions carried over, see core/embedding_training.py) and
   `models/embedding_generation` = G together: from that version on the edge scores users and items of
   generation G, never one against the other's space. A profile created after the plan has no vector of
   G (a miss until the next refresh). If the catalog (a push moved rows or the dim) or the active
   generation (a rollback, a snapshot) changed since training or planning, `CatalogChanged` is raised and
   nothing more is written; the next run trains and stages again. `refresh_changes(view, trained)`: all
   of a run in one commit.

The control plane's scheduled refresh (`[refresh] embeddings`) is
`sync/embedding_refresh_job.EmbeddingRefreshJob`: step 1 outside the service's push lock, each commit of
step 2 under it (kind "refresh"; the flip with the job's cursor, as the other refresh jobs do).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import msgpack
import numpy as np
from numpy.typing import NDArray

from edgewise.core.activity import Event
from edgewise.core.embedding_slots import (
    GENERATION_MODEL,
    MAX_GENERATION,
    Slot,
    encode_generation,
    slot_with,
    vector_for,
)
from edgewise.core.embedding_training import (
    DEFAULT_EVENT_WEIGHTS,
    TrainingSettings,
    carry_users,
    interactions_from_events,
    train_embeddings,
)
from edgewise.core.exposure import EXPOSURE_KIND
from edgewise.core.forwarded import latest_ms, record_problem
from edgewise.core.model_refresh import NEW_ITEM_FLAG
from edgewise.core.records import (
    RecordError,
    decode_array,
    decode_item,
    encode_array,
)
from edgewise.core.slot_edit import record_slots, record_with_slots
from edgewise.sync.changes import EMBEDDINGS, MANIFEST_KEY, POPULARITY, StateReader, stored_generation
from edgewise.sync.control_store import RecordChange
from edgewise.sync.event_store import EventStore

log = logging.getLogger(__name__)

__all__ = [
    "CatalogChanged",
    "EmbeddingRefreshSettings",
    "StagingPlan",
    "TrainedRefresh",
    "flip_changes",
    "plan_staging",
    "refresh_changes",
    "staging_batches",
    "staging_changes",
    "train_refresh",
]


class CatalogChanged(RuntimeError):
    """The catalog (item rows or embedding dim) changed between training and writing: retrain."""


@dataclass(frozen=True, slots=True)
class EmbeddingRefreshSettings:
    training: TrainingSettings = field(default_factory=TrainingSettings)
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    half_life_days: float | None = 90.0
    min_events: int = 1  # fewer usable events than this: no refresh


@dataclass(frozen=True, slots=True)
class TrainedRefresh:
    """What `train_refresh` made, and the catalog it was made for."""

    item_rows: Mapping[str, int]
    dim: int
    item_embeddings: NDArray[np.float32]
    user_vectors: Mapping[str, NDArray[np.float32]]  # user id -> new vector (the users seen)
    carry_map: NDArray[np.float64] | None
    events: int  # events that counted
    skipped: int  # stored records that could not be used
    unknown_items: int  # distinct item ids of events not in the catalog
    items_trained: int
    items_carried: int
    seconds: float  # reading and training
    first_ms: int = 0  # the times of the oldest and newest usable events read (0: none)
    last_ms: int = 0


def _catalog(view: StateReader) -> dict[str, int]:
    rows: dict[str, int] = {}
    for item_id, raw in view.items("items"):
        try:
            rows[item_id] = decode_item(item_id, raw).row
        except (RecordError, KeyError, TypeError) as exc:
            raise CatalogChanged(f"item {item_id!r} does not decode: {exc}") from exc
    return rows


def _item_terms(view: StateReader, n_items: int) -> list[tuple[str, ...]]:
    """Each row's words for the hybrid model: its item's tags (none for an item made from events)."""
    terms: list[tuple[str, ...]] = [()] * n_items
    for item_id, raw in view.items("items"):
        record = decode_item(item_id, raw)  # decodes: `_catalog` read the same records
        if 0 <= record.row < n_items and not record.flags.get(NEW_ITEM_FLAG):
            terms[record.row] = record.tags
    return terms


def _popularity(view: StateReader, n_items: int) -> NDArray[np.float32] | None:
    """`models/item_popularity` as the hybrid's prior, when it has one finite entry >= 0 per row."""
    raw = view.get("models", POPULARITY)
    if raw is None:
        return None
    array = decode_array(raw)
    if array.ndim != 1 or array.shape[0] != n_items:
        return None
    values = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(values)) or float(values.min(initial=0.0)) < 0.0:
        return None
    return values.copy()


def _current(view: StateReader) -> tuple[NDArray[np.float32] | None, int]:
    """The stored item embeddings (None: none) and the dim (theirs, else the manifest's; 0: unknown)."""
    raw = view.get("models", EMBEDDINGS)
    if raw is not None:
        array = decode_array(raw)
        if array.ndim == 2 and array.dtype == np.float32:
            return np.array(array), int(array.shape[1])
    manifest = view.get("rules", MANIFEST_KEY)
    dim = msgpack.unpackb(manifest, raw=False).get("dim", 0) if manifest is not None else 0
    return None, int(dim) if isinstance(dim, int) else 0


def _usable_events(events: EventStore, skipped: list[int]) -> Iterator[tuple[str, str, str, int]]:
    latest = latest_ms(time.time_ns() // 1_000_000)
    for _, _, record in events.events():
        if record.get("k") == EXPOSURE_KIND:
            continue
        if record_problem(record, latest) is not None:
            skipped[0] += 1
            continue
        event = Event.from_record(record)
        if event.personalization:
            yield event.user_id, event.item_id, event.type, event.timestamp_ms


def train_refresh(
    view: StateReader, events: EventStore, settings: EmbeddingRefreshSettings, *, now_ms: int | None = None
) -> TrainedRefresh | None:
    """Step 1 (module doc). None when there is nothing to train: no catalog, no dim, or fewer than
    `settings.min_events` usable events."""
    started = time.perf_counter()
    rows = _catalog(view)
    previous, dim = _current(view)
    n_items = max(rows.values(), default=-1) + 1
    if n_items == 0 or dim < 1:
        return None
    if previous is not None and previous.shape[0] > n_items:
        previous = previous[:n_items]  # rows past the catalog's (a shrunk catalog): not items any more
    skipped = [0]
    span: list[int] = []  # [oldest, newest] event time read
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms

    def spanned() -> Iterator[tuple[str, str, str, int]]:
        for event in _usable_events(events, skipped):
            ts = event[3]
            span[:] = [min(span[0], ts), max(span[1], ts)] if span else [ts, ts]
            yield event

    hybrid = settings.training.method == "hybrid"
    interactions = interactions_from_events(
        spanned(),
        rows,
        now_ms=now,
        event_weights=settings.event_weights,
        half_life_days=settings.half_life_days,
        combine="max" if hybrid else "sum",
    )
    if skipped[0]:
        log.warning(
            "forwarded_records_skipped", extra={"consumer": "embedding_refresh", "skipped": skipped[0]}
        )
    if interactions.events < max(settings.min_events, 1) or interactions.users.size == 0:
        return None
    result = train_embeddings(
        interactions.users,
        interactions.items,
        interactions.weights,
        n_items=n_items,
        dim=dim,
        previous=previous,
        settings=settings.training,
        item_terms=_item_terms(view, n_items) if hybrid else None,
        popularity=_popularity(view, n_items) if hybrid else None,
    )
    users = {interactions.user_ids[int(u)]: result.users[j] for j, u in enumerate(result.user_rows)}
    return TrainedRefresh(
        item_rows=rows,
        dim=dim,
        item_embeddings=result.items,
        user_vectors=users,
        carry_map=result.carry_map,
        events=interactions.events,
        skipped=skipped[0],
        unknown_items=len(interactions.unknown_items),
        items_trained=int(result.trained.sum()),
        items_carried=result.carried,
        seconds=time.perf_counter() - started,
        first_ms=span[0] if span else 0,
        last_ms=span[1] if span else 0,
    )


@dataclass(frozen=True, slots=True)
class StagingPlan:
    """What one run stages: the users' vectors of `generation` beside those of `active`, the generation
    active when the run planned (module doc); `users`: the profiles then, in key order."""

    active: int
    generation: int
    users: tuple[str, ...]

    def batches(self, size: int) -> list[tuple[str, ...]]:
        """The users in batches of `size` (0: one batch), one staging commit each."""
        return staging_batches(self.users, size)


def staging_batches(users: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """`users` in order, cut into batches of at most `size` (0: one batch; no users: none)."""
    if not users:
        return []
    if size <= 0:
        return [tuple(users)]
    return [tuple(users[i : i + size]) for i in range(0, len(users), size)]


def plan_staging(view: StateReader, trained: TrainedRefresh) -> StagingPlan:
    """The plan of a run against the state in `view` (`CatalogChanged` if it is not the trained one's)."""
    _check_catalog(view, trained)
    active = stored_generation(view)
    if active >= MAX_GENERATION:
        raise CatalogChanged(f"the embedding generation {active} is the last one")
    return StagingPlan(active, active + 1, tuple(user_id for user_id, _ in view.items("profiles")))


def _check_catalog(view: StateReader, trained: TrainedRefresh, plan: StagingPlan | None = None) -> None:
    rows = _catalog(view)
    _, dim = _current(view)
    if rows != trained.item_rows or dim != trained.dim:
        raise CatalogChanged("the catalog changed since the embeddings were trained")
    if plan is not None and stored_generation(view) != plan.active:
        raise CatalogChanged(
            f"the active embedding generation changed from {plan.active} to {stored_generation(view)}"
        )


def _check_staging(view: StateReader, trained: TrainedRefresh, plan: StagingPlan) -> None:
    """`CatalogChanged` unless the dim and the active generation are the plan's (cheap: a staging commit
    checks it; the item rows, decoded from every item, are the flip's check)."""
    raw = view.get("models", EMBEDDINGS)
    dim = _dim_of(raw) if raw is not None else _current(view)[1]
    if dim != trained.dim:
        raise CatalogChanged(f"the embedding dim changed from {trained.dim} to {dim} since training")
    active = stored_generation(view)
    if active != plan.active:
        raise CatalogChanged(f"the active embedding generation changed from {plan.active} to {active}")


def _dim_of(raw: bytes) -> int:
    """The columns of a stored 2-d float32 array, from its header (0: not one)."""
    try:
        array = decode_array(raw)
    except RecordError:
        return 0
    return int(array.shape[1]) if array.ndim == 2 and array.dtype == np.float32 else 0


def staging_changes(
    view: StateReader, trained: TrainedRefresh, plan: StagingPlan, users: Sequence[str]
) -> list[RecordChange]:
    """The changes of one staging commit, against the state in `view`: the vectors of `plan.generation`
    of `users` (module doc), the records that change only. A seen user's profile gets the new vector; a
    profile whose user was not seen gets its active vector carried into the new space (`carry_users`, one
    product for the batch), or none when the spaces cannot be related (`carry_map` None). A profile with
    no vector to stage and none of that generation already (a run killed before) is not written; one
    deleted since the plan is skipped. `CatalogChanged` when the dim or the active generation changed
    since the plan (the item rows matter to the flip only: `flip_changes` checks them)."""
    _check_staging(view, trained, plan)
    undecodable = cleared = 0
    size = 4 * trained.dim  # a stored vector's bytes
    carry_ok = trained.carry_map is not None
    # (user, stored record, its slots, the vector to stage): each record's slots read once
    staged: list[tuple[str, bytes, tuple[Slot, ...], bytes | None]] = []
    carry: list[int] = []  # the indexes in `staged` whose active vector is carried
    carry_from: list[bytes] = []  # their active vectors
    for user_id in users:
        raw = view.get("profiles", user_id)
        if raw is None:
            continue
        slots = record_slots(raw)
        if slots is None:
            undecodable += 1
            continue
        new = trained.user_vectors.get(user_id)
        if new is not None:
            staged.append((user_id, raw, slots, new.astype("<f4").tobytes()))
            continue
        old = vector_for(slots, plan.active)
        if not (isinstance(old, bytes) and len(old) == size):
            old = None  # none, or not a vector of the dim: nothing to carry
        if old is not None and carry_ok:
            carry.append(len(staged))
            carry_from.append(old)
        elif not any(generation == plan.generation for generation, _ in slots):
            continue  # nothing to stage, nothing stale to clear
        else:
            cleared += old is not None
        staged.append((user_id, raw, slots, None))
    if carry:  # one product for the batch, its rows' bytes cut from one buffer
        olds = np.frombuffer(b"".join(carry_from), dtype="<f4").reshape(len(carry), trained.dim)
        with _one_blas_thread():
            carried = carry_users(olds, trained.carry_map).astype("<f4").tobytes()
        for j, i in enumerate(carry):
            staged[i] = (*staged[i][:3], carried[j * size : (j + 1) * size])
    changes: list[RecordChange] = []
    for user_id, raw, slots, vector in staged:
        record = record_with_slots(raw, slot_with(slots, plan.generation, vector, keep=plan.active))
        if record != raw:
            changes.append(RecordChange("profiles", user_id, record))
    log.info(
        "embeddings_staged",
        extra={
            "generation": plan.generation,
            "profiles": len(changes),
            "profiles_carried": len(carry),
            "profiles_cleared": cleared,
            "profiles_undecodable": undecodable,
        },
    )
    return changes


def flip_changes(view: StateReader, trained: TrainedRefresh, plan: StagingPlan) -> list[RecordChange]:
    """The changes of the flip commit: `models/item_embeddings` and `models/embedding_generation`
    together, so the edge switches items and users to the new space at one version (`CatalogChanged`
    as `staging_changes`)."""
    _check_catalog(view, trained, plan)
    log.info(
        "embeddings_refresh_flip",
        extra={
            "generation": plan.generation,
            "items": len(trained.item_rows),
            "items_trained": trained.items_trained,
            "items_carried": trained.items_carried,
            "events": trained.events,
            "unknown_items": trained.unknown_items,
            "seconds": round(trained.seconds, 3),
        },
    )
    return [
        RecordChange("models", EMBEDDINGS, encode_array(trained.item_embeddings)),
        RecordChange("models", GENERATION_MODEL, encode_array(encode_generation(plan.generation))),
    ]


def refresh_changes(view: StateReader, trained: TrainedRefresh) -> list[RecordChange]:
    """Every change of a run in one commit (`[refresh] embeddings_commit_profiles = 0`): the staging of
    every profile and the flip, against the state in `view`."""
    plan = plan_staging(view, trained)
    return [*staging_changes(view, trained, plan, plan.users), *flip_changes(view, trained, plan)]


def _one_blas_thread() -> AbstractContextManager[object]:
    """BLAS on this thread alone while a staging commit carries its batch (a 5,000 x 32 product and the
    pseudo-inverse of a 32 x 32 map: too small to share). OpenBLAS's workers spin-wait after each call;
    with them, 20 carries cost the process ~0.55 s of CPU on the other cores instead of ~0.05 s.
    threadpoolctl comes with implicit (the `train` extra); without it, BLAS as it is."""
    try:
        threadpoolctl = importlib.import_module("threadpoolctl")
    except ImportError:
        return nullcontext()
    limits: AbstractContextManager[object] = threadpoolctl.threadpool_limits(1, "blas")
    return limits
