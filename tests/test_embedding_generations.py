"""Embedding generations (core/embedding_slots.py) and the paced embeddings refresh
(sync/embedding_refresh.py): the slot choice and the staging plan against references; the profile codec,
its check (Python and the compiled scan) with the new keys, hostile ones refused with clear messages;
the folder, the profile cache and a pushed delta keep a staged slot; and on real stores (a control
store, an edge store applying each commit with its syncer's checks, the decision pipeline): a refresh
lands as paced staging commits and one flip, the edge decides with the old vectors until the flip and
with the new ones from it, a run stopped mid-staging leaves the active generation alone and the next run
replaces its stale vectors, a rollback of the flip returns the old generation, and a forget removes the
user's vectors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
from numpy.typing import NDArray

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.decisions import DecideRequest, PlacementRequest
from edgewise.core.embedding_slots import (
    GENERATION_MODEL,
    MAX_GENERATION,
    active_generation,
    encode_generation,
    slot_with,
    vector_for,
)
from edgewise.core.pipeline import Pipeline
from edgewise.core.profile_cache import ProfileCache
from edgewise.core.profile_check import check_profiles, scan_profile, scan_profile_py
from edgewise.core.profile_fold import fold_profile
from edgewise.core.records import (
    ProfileRecord,
    RecordError,
    check_profile,
    decode_array,
    decode_profile,
    encode_array,
    encode_profile,
)
from edgewise.core.store import Store
from edgewise.sync.bundle import load_bundle
from edgewise.sync.bundle_write import write_bundle
from edgewise.sync.changes import bundle_records, parse_delta, stored_generation
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.sync.embedding_refresh import (
    CatalogChanged,
    StagingPlan,
    TrainedRefresh,
    flip_changes,
    plan_staging,
    refresh_changes,
    staging_batches,
    staging_changes,
)
from tests.refresh_support import RULES, T0
from tests.test_embedding_refresh import apply_on_edge, load_edge

E = [np.eye(4, dtype=np.float32)[i] for i in range(4)]


def _v(vector: NDArray[np.float32]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


# --- the pure parts ---------------------------------------------------------------------------------------


def _vector_for_reference(slots: list[tuple[int, bytes | None]], generation: int) -> bytes | None:
    matching = [vector for g, vector in slots if g == generation]
    return matching[0] if matching else None


@pytest.mark.parametrize(
    ("slots", "generation"),
    [
        ([], 0),
        ([(0, b"a")], 0),
        ([(0, b"a")], 1),
        ([(0, b"a"), (1, b"b")], 1),
        ([(0, b"a"), (1, None)], 1),
        ([(3, b"a"), (2, b"b")], 2),
        ([(3, b"a"), (2, b"b")], 4),
    ],
)
def test_the_vector_of_a_generation_is_its_slots(
    slots: list[tuple[int, bytes | None]], generation: int
) -> None:
    assert vector_for(slots, generation) == _vector_for_reference(slots, generation)


def test_writing_a_slot_keeps_the_one_named_and_replaces_the_other() -> None:
    # a refresh staging generation 1 beside the active 0, then 2 beside the active 1
    staged = slot_with(((0, b"old"),), 1, b"new", keep=0)
    assert staged == ((0, b"old"), (1, b"new"))
    assert slot_with(staged, 2, b"next", keep=1) == ((1, b"new"), (2, b"next"))
    # staging again (a run killed before): the stale slot of the same generation is replaced
    assert slot_with(staged, 1, b"again", keep=0) == ((0, b"old"), (1, b"again"))
    # no vector of the active generation: the written one alone
    assert slot_with(((5, b"x"), (6, b"y")), 7, None, keep=1) == ((7, None),)
    # a push of the active generation's vector keeps the staged one
    assert slot_with(staged, 0, b"pushed", keep=1) == ((1, b"new"), (0, b"pushed"))


def test_the_generation_record() -> None:
    assert active_generation(None) == 0
    for g in (0, 1, 7, MAX_GENERATION):
        assert active_generation(decode_array(encode_array(encode_generation(g)))) == g
    assert active_generation(np.zeros(2, dtype=np.int32)) == 0  # not one entry
    assert active_generation(np.ones(1, dtype=np.float32)) == 0  # not an int
    with pytest.raises(ValueError, match=r"not in 0\.\."):
        encode_generation(MAX_GENERATION + 1)


@pytest.mark.parametrize(("n", "size"), [(0, 3), (1, 3), (9, 3), (10, 3), (10, 0), (10, 100), (5, 1)])
def test_the_staging_batches_cover_every_user_once_in_order(n: int, size: int) -> None:
    users = [f"u{i:02d}" for i in range(n)]
    batches = staging_batches(users, size)
    assert [u for batch in batches for u in batch] == users
    if n:
        assert len(batches) == (1 if size == 0 else -(-n // size))
        assert all(len(b) <= size for b in batches) or size == 0
    else:
        assert batches == []


# --- the record, its check and the writers that keep its slots ---------------------------------------------


def test_a_profile_of_generation_0_encodes_as_before_and_both_slots_round_trip() -> None:
    plain = ProfileRecord("u1", 1, {"a": 1}, {"personalization": 5}, _v(E[0]))
    raw = encode_profile(plain)
    assert msgpack.unpackb(raw).keys() == {"s", "v", "a", "c", "e"}  # no generation keys: bytes as before
    assert decode_profile("u1", raw) == plain
    assert decode_profile("u1", raw, 1).embedding is None  # an old-space vector is none in generation 1

    both = ProfileRecord("u1", 1, {}, {}, None, vectors=((0, _v(E[0])), (1, _v(E[1]))))
    raw = encode_profile(both)
    assert msgpack.unpackb(raw)["eg"] == 0 and msgpack.unpackb(raw)["ng"] == 1
    for generation, vector in ((0, _v(E[0])), (1, _v(E[1])), (2, None)):
        decoded = decode_profile("u1", raw, generation)
        assert decoded.embedding == vector and decoded.vectors == both.vectors
        assert encode_profile(decoded) == raw  # decoded and encoded again: every slot kept
    check_profile("u1", raw)
    assert scan_profile(b"u1", raw) and scan_profile_py(b"u1", raw)


def _doc(**extra: object) -> bytes:
    doc = {"s": 1, "v": 1, "a": {}, "c": {}, "e": _v(E[0])}
    doc.update(extra)
    return msgpack.packb(doc, use_bin_type=True)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"eg": "1"}, "'eg' must be an embedding generation (an int in 0..2147483647), got '1'"),
        ({"eg": -1}, "'eg' must be an embedding generation"),
        ({"eg": True}, "'eg' must be an embedding generation"),
        ({"eg": 2**31}, "'eg' must be an embedding generation"),
        ({"n": _v(E[1]), "ng": 1.0}, "'ng' must be an embedding generation"),
        ({"n": _v(E[1])}, "'n' (a second embedding) and 'ng' (its generation) go together"),
        ({"ng": 1}, "'n' (a second embedding) and 'ng' (its generation) go together"),
        ({"n": "abcd", "ng": 1}, "'n' must be float32 little-endian bytes"),
        ({"n": b"abc", "ng": 1}, "'n' must be float32 little-endian bytes"),
        ({"n": [1.0], "ng": 1}, "'n' must be float32 little-endian bytes"),
        ({"n": _v(E[1]), "ng": 0}, "'e' and 'n' hold the same embedding generation 0"),
        ({"eg": 3, "n": None, "ng": 3}, "'e' and 'n' hold the same embedding generation 3"),
    ],
)
def test_hostile_generation_keys_are_refused_with_a_clear_message(
    extra: dict[str, object], message: str
) -> None:
    raw = _doc(**extra)
    assert not scan_profile(b"u7", raw) and not scan_profile_py(b"u7", raw)  # left to check_profile
    with pytest.raises(RecordError) as refused:
        check_profile("u7", raw)
    assert str(refused.value).startswith("profile 'u7': " + message)
    with pytest.raises(RecordError, match="u7"):
        check_profiles([("profiles", b"u7", raw)])
    decode_profile("u7", raw, 1)  # a decoder never raises for them: the edge's syncer refused them already


@pytest.mark.parametrize(
    "extra",
    [
        {"eg": 0},
        {"eg": 5},
        {"eg": 200},  # uint8
        {"eg": 70_000},  # uint32
        {"eg": 2**31 - 1},
        {"n": None, "ng": 1},
        {"eg": 1, "n": _v(E[1]), "ng": 0},
        {"n": b"", "ng": 300},  # uint16
    ],
)
def test_good_generation_keys_are_vouched_for_by_the_scan(extra: dict[str, object]) -> None:
    raw = _doc(**extra)
    check_profile("u", raw)
    assert scan_profile(b"u", raw) and scan_profile_py(b"u", raw)


def test_a_repeated_generation_key_is_left_to_check_profile() -> None:
    head = b"\x87\xa1s\x01\xa1v\x01\xa1a\x80\xa1c\x80\xa1e\xc0"
    raw = head + b"\xa2eg\x01\xa2eg\x02"  # the last one wins in a dict: eg 2
    assert not scan_profile(b"u", raw) and not scan_profile_py(b"u", raw)
    check_profile("u", raw)
    assert decode_profile("u", raw, 2).vectors == ((2, None),)


def test_the_folder_and_the_cache_keep_the_slots(tmp_path: Path) -> None:
    record = ProfileRecord("u1", 1, {}, {"personalization": T0}, None, vectors=((0, _v(E[0])), (1, _v(E[1]))))
    event = Event("x1", "view", "u1", "s", "i1", "", "", 1.0, T0 + 1, True, True)
    folded = fold_profile("u1", encode_profile(record), [event], ActivityLimits())
    assert folded is not None
    assert decode_profile("u1", folded).vectors == record.vectors  # the staged slot survives a fold

    with Store(tmp_path / "edge") as store:
        with store._env.begin(write=True) as txn:  # test-only direct write
            txn.put(b"u1", folded, db=store._dbs["profiles"])
        cache = ProfileCache()
        with store.read() as view:
            assert (p0 := cache.profile(view, "u1", 0)) is not None and p0.embedding == _v(E[0])
            assert (p1 := cache.profile(view, "u1", 1)) is not None and p1.embedding == _v(E[1])
            assert cache.profile(view, "u1", 1) is p1  # the same bytes and generation: the cached record
            assert (p2 := view.profile("u1", 2)) is not None and p2.embedding is None


def test_a_pushed_embedding_is_the_active_generations_and_keeps_the_staged_one(tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path / "bundle"))
    with ControlStore(tmp_path / "control") as store:
        store.replace_all(bundle_records(bundle), kind="push")
        staged = ProfileRecord("u1", 1, {}, {}, None, vectors=((0, _v(E[0])), (1, _v(E[1]))))
        store.commit(
            [
                RecordChange("profiles", "u1", encode_profile(staged)),
                RecordChange("models", GENERATION_MODEL, encode_array(encode_generation(1))),
            ],
            kind="push",
        )
        delta = tmp_path / "delta.jsonl"
        profile = {"id": "u1", "attributes": {"country": "DE"}, "consent": {"personalization": T0}}
        delta.write_text(
            "\n".join(
                [
                    msgpack_json({"op": "upsert", "profile": profile, "embedding": [0, 0, 1, 0]}),
                    msgpack_json({"op": "upsert", "profile": {**profile, "id": "u2"}}),
                ]
            )
            + "\n"
        )
        with store.read() as view:
            changes = {c.key: c.value for c in parse_delta(delta.read_text().splitlines(), view)}
    u1 = changes["u1"]
    assert u1 is not None
    # the pushed vector is generation 1's (the active one); the other slot (here generation 0's, as a
    # rollback of the flip would want it; mid-staging, the staged one) is kept
    assert decode_profile("u1", u1, 1).embedding == _v(E[2])
    assert decode_profile("u1", u1, 0).embedding == _v(E[0])
    # without an embedding the stored slots are carried as they are (u2: the bundle's, generation 0)
    u2 = changes["u2"]
    assert u2 is not None and decode_profile("u2", u2, 0).embedding == _v(E[0])


def msgpack_json(doc: object) -> str:
    import json

    return json.dumps(doc)


# --- on real stores: a control store, an edge store, the pipeline ------------------------------------------

OLD_ITEMS = np.array([E[0], E[1], E[2], E[3], 0.2 * E[0], 0.2 * E[2]], dtype=np.float32)
# the new space permutes the items: i2 = e0, i3 = e1, i0 = e2, i1 = e3. u0's old vector (e0) picks i0
# among the old items and i2 among the new; its new vector (e1) picks i1 among the old and i3 among the
# new: each of the four combinations picks its own item, so a Decide shows which spaces it scored in
NEW_ITEMS = np.array([E[2], E[3], E[0], E[1], 0.2 * E[2], 0.2 * E[0]], dtype=np.float32)
PICKS = {("old", "old"): "i0", ("new", "old"): "i1", ("old", "new"): "i2", ("new", "new"): "i3"}
USERS = [f"u{u}" for u in range(10)]
FOR_YOU = {
    "kind": "items",
    "default_count": 1,
    "default": {"strategy": "popular"},
    "campaigns": [{"id": "personal", "serve": {"strategy": "personalized"}}],
}


def _bundle(out: Path) -> Path:
    return write_bundle(
        out,
        version=1,
        schema={"profile_fields": {"country": {"type": "string", "purpose": "personalization"}}},
        items=[
            {"id": f"i{i}", "category": "shop/things", "price": 1.0 + i, "regions": ["*"]} for i in range(6)
        ],
        profiles=[
            {"id": u, "attributes": {"country": "DE"}, "consent": {"personalization": T0 - 1}} for u in USERS
        ],
        rules={**RULES, "placements": {**RULES["placements"], "foryou": FOR_YOU}},
        item_embeddings=OLD_ITEMS,
        user_embeddings=np.array([E[0]] * 5 + [E[1]] * 5, dtype=np.float32),
        item_popularity=np.arange(6, 0, -1, dtype=np.float32),
    )


def _trained(store: ControlStore, users: dict[str, NDArray[np.float32]]) -> TrainedRefresh:
    with store.read() as view:
        rows = {key: int(msgpack.unpackb(raw)["r"]) for key, raw in view.items("items")}
    return TrainedRefresh(
        item_rows=rows,
        dim=4,
        item_embeddings=NEW_ITEMS,
        user_vectors=users,
        carry_map=None,  # the spaces are not related: an unseen user's vector is dropped
        events=1,
        skipped=0,
        unknown_items=0,
        items_trained=6,
        items_carried=0,
        seconds=0.0,
    )


class Planes:
    """A control store with the bundle and an edge store following it commit by commit."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = ControlStore(tmp_path / "control")
        self.store.replace_all(bundle_records(load_bundle(_bundle(tmp_path / "bundle"))), kind="push")
        self.edge = load_edge(self.store, tmp_path / "edge")
        self.synced = self.store.head_version()
        self.pipeline = Pipeline()

    def commit(self, changes: list[RecordChange], description: str = "") -> None:
        """Commit as the job does (a batch with nothing to write makes no commit) and sync the edge."""
        self.store.commit(changes, kind="refresh", description=description)
        self.sync()

    def sync(self) -> None:
        """Apply every commit since the last sync to the edge, with the syncer's checks."""
        for info, changes in list(self.store.commits_after(self.synced)):
            apply_on_edge(self.edge, info.version, changes)
            self.synced = info.version

    def pick(self, user: str) -> str:
        request = DecideRequest(
            user_id=user, consent=frozenset({"personalization"}), placements=(PlacementRequest("foryou"),)
        )
        with self.edge.read() as view:
            items = self.pipeline.decide(view, request).placements[0].items
        return items[0].id if items else ""

    def generation(self) -> int:
        with self.edge.read() as view:
            return self.pipeline.state(view).embedding_generation

    def close(self) -> None:
        self.edge.close()
        self.store.close()


@pytest.fixture
def planes(tmp_path: Path) -> Iterator[Planes]:
    p = Planes(tmp_path)
    try:
        yield p
    finally:
        p.close()


def _run(planes: Planes, trained: TrainedRefresh, size: int, *, stop_after: int | None = None) -> StagingPlan:
    """A run as the job makes it: its staging commits, checking after each that the edge still decides
    in the old space, then (unless stopped) the flip."""
    with planes.store.read() as view:
        plan = plan_staging(view, trained)
    for i, users in enumerate(plan.batches(size)):
        if stop_after is not None and i == stop_after:
            return plan
        with planes.store.read() as view:
            planes.commit(staging_changes(view, trained, plan, users), f"staging {i}")
        assert planes.generation() == plan.active
        assert planes.pick("u0") == PICKS[("old", "old")]  # the active vector against the active items
    with planes.store.read() as view:
        planes.commit(flip_changes(view, trained, plan), "flip")
    return plan


def test_a_paced_refresh_switches_users_and_items_together(planes: Planes) -> None:
    assert planes.pick("u0") == PICKS[("old", "old")] and planes.generation() == 0
    trained = _trained(planes.store, {u: E[1] for u in USERS[:8]})
    before = planes.store.head_version()
    plan = _run(planes, trained, 3)
    assert (plan.active, plan.generation) == (0, 1)
    commits = [c for c in planes.store.history(20) if c.version > before]
    assert [c.description for c in commits][::-1] == ["staging 0", "staging 1", "staging 2", "flip"]
    assert [c.changes for c in commits][::-1] == [3, 3, 2, 2]  # u8, u9 unseen: nothing to stage
    assert planes.generation() == 1
    assert planes.pick("u0") == PICKS[("new", "new")]
    # an unseen user has no vector of generation 1 (the spaces are not related): no personalized pick, a
    # personalization miss (the default), never an error
    assert planes.pick("u9") == "i0"
    with planes.edge.read() as view:
        profile = view.profile("u9", 1)
        assert profile is not None and profile.embedding is None
    with planes.store.read() as view:
        assert stored_generation(view) == 1
        # a second run stages generation 2 beside 1 (generation 0's slot replaced)
        again = plan_staging(view, trained)
        assert (again.active, again.generation) == (1, 2)


def test_a_stopped_run_leaves_the_generation_and_the_next_replaces_its_vectors(planes: Planes) -> None:
    first = _trained(planes.store, {u: E[1] for u in USERS})
    _run(planes, first, 4, stop_after=2)  # u0..u7 staged, then the run died: no flip
    assert planes.generation() == 0 and planes.pick("u0") == PICKS[("old", "old")]
    with planes.store.read() as view:
        assert stored_generation(view) == 0
        raw = view.get("profiles", "u1")
        assert raw is not None and decode_profile("u1", raw, 1).embedding == _v(E[1])  # staged, inert
    # the next run trains other vectors and sees u1 no more: its stale vector of generation 1 is cleared
    second = _trained(planes.store, {u: E[3] for u in USERS if u != "u1"})
    plan = _run(planes, second, 4)
    assert plan.generation == 1
    assert planes.generation() == 1 and planes.pick("u0") == "i1"  # e3 against the new items: i1
    with planes.edge.read() as view:
        u1 = view.profile("u1", 1)
        assert u1 is not None and u1.embedding is None


def test_the_catalog_or_the_generation_changing_mid_staging_stops_the_run(planes: Planes) -> None:
    trained = _trained(planes.store, {u: E[1] for u in USERS})
    with planes.store.read() as view:
        plan = plan_staging(view, trained)
    planes.commit([RecordChange("models", GENERATION_MODEL, encode_array(encode_generation(4)))])
    with planes.store.read() as view, pytest.raises(CatalogChanged, match=r"generation changed from 0 to 4"):
        staging_changes(view, trained, plan, plan.users)
    wider = encode_array(np.zeros((6, 5), dtype=np.float32))
    planes.commit([RecordChange("models", "item_embeddings", wider)])
    with planes.store.read() as view, pytest.raises(CatalogChanged, match="catalog changed"):
        flip_changes(view, trained, plan)


def test_rolling_back_the_flip_returns_the_old_generation(planes: Planes) -> None:
    trained = _trained(planes.store, {u: E[1] for u in USERS})
    _run(planes, trained, 5)
    flip = planes.store.head_version()
    assert planes.pick("u0") == PICKS[("new", "new")]
    staged = max(c.version for c in planes.store.history(10) if c.version < flip)
    assert planes.store.rollback(staged) is not None
    planes.sync()
    # the old items and generation 0 at once; the staged vectors stay, inert
    assert planes.generation() == 0 and planes.pick("u0") == PICKS[("old", "old")]
    with planes.edge.read() as view:
        items = view.array("item_embeddings")
        assert items is not None and np.array_equal(items, OLD_ITEMS)


def test_forget_removes_every_vector_of_the_user(planes: Planes) -> None:
    trained = _trained(planes.store, {u: E[1] for u in USERS})
    with planes.store.read() as view:
        plan = plan_staging(view, trained)
        planes.commit(staging_changes(view, trained, plan, plan.users[:3]))
    assert planes.store.forget("u0") is not None
    planes.sync()
    with planes.store.read() as view:
        changes = staging_changes(view, trained, plan, (*plan.users[3:], "u0"))
        assert "u0" not in {c.key for c in changes}  # forgotten since the plan: nothing staged for it
        planes.commit(changes)
        planes.commit(flip_changes(view, trained, plan))
    with planes.edge.read() as view:
        assert view.profile("u0", 0) is None and view.profile("u0", 1) is None
    log = [(info.version, c) for info, changes in planes.store.commits_after(0) for c in changes]
    # no copy left in the change log (the `forgotten` record is the tombstone)
    assert all(c.key != "u0" or c.value is None for _, c in log if c.namespace == "profiles")


def test_one_commit_refresh_is_staging_and_flip_together(planes: Planes) -> None:
    trained = _trained(planes.store, {u: E[1] for u in USERS})
    with planes.store.read() as view:
        changes = refresh_changes(view, trained)
    planes.commit(changes)
    assert planes.generation() == 1 and planes.pick("u0") == PICKS[("new", "new")]
