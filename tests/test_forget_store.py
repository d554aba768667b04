"""Forget in the stores: the control store's per-user `forgotten` records and its profile-log index (what
a forget redacts), the upgrade of a layout-1 store, the event store's per-user index, and an edge store
purging a user when the user's record arrives. The whole flow over real processes: tests/test_forget.py."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import lmdb
import msgpack
import pytest

from edgewise.core import edge_local
from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.records import ProfileRecord, encode_profile
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Store
from edgewise.edge.housekeeping import Housekeeper
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.sync.event_store import EventStore

MAP_SIZE = 1 << 28
U64 = struct.Struct(">Q")


def _profile(n: int) -> bytes:
    return msgpack.packb({"attributes": {"n": n}, "consent": ["personalization"]})


def _profile_values(store: ControlStore, user: str) -> list[bytes]:
    """Every value of `user`'s profile the log still holds."""
    return [
        c.value
        for _, changes in store.commits_after(store.log_start_version())
        for c in changes
        if c.namespace == "profiles" and c.key == user and c.value is not None
    ]


def _index_entries(path: Path) -> int:
    with lmdb.open(str(path), max_dbs=16, readonly=True, lock=False) as env:
        db = env.open_db(b"profile-log", dupsort=True, create=False)
        with env.begin() as txn:
            return int(txn.stat(db)["entries"])


def test_each_forget_writes_one_record_and_no_push_delta_or_rollback_undoes_it(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE) as store:
        first = store.commit([RecordChange("profiles", f"u{n}", _profile(n)) for n in range(5)], kind="push")
        assert first is not None
        sizes = []
        for n in range(3):
            info = store.forget(f"u{n}")
            assert info is not None
            sizes.append(info.changes)
            changes = next(c for i, c in store.commits_after(info.base_version) if i.version == info.version)
            assert {(c.namespace, c.key, c.value is None) for c in changes} == {
                ("profiles", f"u{n}", True),
                ("forgotten", f"u{n}", False),
            }
        assert sizes == [2, 2, 2]  # one tombstone and one record, however many were forgotten before
        assert store.forget("u0") is None  # again: nothing left to change
        with store.read() as view:
            assert sorted(k for k, _ in view.items("forgotten")) == ["u0", "u1", "u2"]
            assert view.get("rules", "forgotten") is None
        # Neither a delta, a push of the old state, nor a rollback touches the records or the profiles.
        assert store.commit([RecordChange("forgotten", "u0", None)], kind="delta") is None
        assert store.commit([RecordChange("forgotten", "u7", b"x")], kind="delta") is None
        store.replace_all([RecordChange("profiles", f"u{n}", _profile(n)) for n in range(5)], kind="push")
        store.rollback(first.version)
        with store.read() as view:
            assert sorted(k for k, _ in view.items("forgotten")) == ["u0", "u1", "u2"]
            assert sorted(k for k, _ in view.items("profiles")) == ["u3", "u4"]
        assert store.forgotten_version("u1") == store.forgotten()["u1"] > first.version
        assert store.forgotten_version("u3") is None


def test_forget_redacts_every_logged_value_and_compaction_drops_their_index(tmp_path: Path) -> None:
    path = tmp_path / "cp"
    with ControlStore(path, map_size=MAP_SIZE, retain_log_changes=20) as store:
        for n in range(12):  # u1 and u2 change in every commit; u{n} is new in each
            store.commit(
                [RecordChange("profiles", u, _profile(n)) for u in ("u1", "u2", f"x{n}")], kind="delta"
            )
        assert store.log_start_version() > 0  # compaction dropped the oldest commits
        kept = len(_profile_values(store, "u1"))
        assert kept > 0
        # The index holds exactly the profile upserts the log still holds (compaction dropped the rest).
        upserts = sum(
            1
            for _, changes in store.commits_after(store.log_start_version())
            for c in changes
            if c.namespace == "profiles" and c.value is not None
        )
    assert _index_entries(path) == upserts
    with ControlStore(path, map_size=MAP_SIZE, retain_log_changes=20) as store:
        store.forget("u1")
        assert _profile_values(store, "u1") == []
        assert len(_profile_values(store, "u2")) == kept  # nobody else's values
    assert _index_entries(path) == upserts - kept


def _as_layout_1(path: Path, forgotten: dict[str, int]) -> None:
    """Rewrite a closed control store as the layout-1 code left it: no profile-log index, and the
    forgotten users as one ("rules", "forgotten") list."""
    with lmdb.open(str(path), max_dbs=16, map_size=MAP_SIZE) as env:
        meta = env.open_db(b"meta")
        index = env.open_db(b"profile-log", dupsort=True)
        rules = env.open_db(b"state-rules")
        forgotten_db = env.open_db(b"forgotten")
        with env.begin(write=True) as txn:
            txn.put(b"layout", b"1", db=meta)
            txn.drop(index, delete=False)
            txn.put(b"forgotten", msgpack.packb(sorted(forgotten)), db=rules)
            for user, version in forgotten.items():
                txn.put(user.encode(), U64.pack(version), db=forgotten_db)


def test_a_layout_1_store_is_upgraded_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "cp"
    with ControlStore(path, map_size=MAP_SIZE) as store:
        for n in range(3):
            store.commit([RecordChange("profiles", u, _profile(n)) for u in ("u1", "u2")], kind="delta")
        old = store.commit([RecordChange("profiles", "u9", _profile(0))], kind="delta")
        assert old is not None
        head = store.head_version()
    _as_layout_1(path, {"old-user": old.version})
    with ControlStore(path, map_size=MAP_SIZE) as store:
        upgrade = store.history(1)[0]
        assert upgrade.kind == "forget" and upgrade.base_version == head
        changes = next(c for i, c in store.commits_after(head) if i.version == upgrade.version)
        assert [(c.namespace, c.key, c.value is None) for c in changes] == [
            ("forgotten", "old-user", False),
            ("rules", "forgotten", True),
        ]
        assert changes[0].value == U64.pack(old.created_at_ms)  # the time of its forget commit
        assert store.forgotten_version("old-user") == old.version
        # The index was rebuilt from the log: a forget now redacts every logged value.
        assert len(_profile_values(store, "u1")) == 3
        store.forget("u1")
        assert _profile_values(store, "u1") == []
        assert len(_profile_values(store, "u2")) == 3
    with ControlStore(path, map_size=MAP_SIZE) as store:  # upgraded once: no second commit
        assert store.history(1)[0].description == "forget u1"


def _event(event_id: str, user: str, item: str) -> Event:
    return Event(event_id, "view", user, "", item, "", "", 0.0, 1_000)


def _holds(store: Store, user: str) -> list[str]:
    found = []
    with store.read() as view:
        if view.profile(user) is not None:
            found.append("profile")
        if view.activity(f"u:{user}") is not None:
            found.append("activity")
    if any(msgpack.unpackb(p, raw=False).get("u") == user for _, p in store.outbox_batch(1_000)):
        found.append("outbox")
    return found


def test_an_edge_purges_a_user_when_the_record_arrives_without_a_new_generation(tmp_path: Path) -> None:
    profile = encode_profile(ProfileRecord("u", 1, {}, {"personalization": 1}, None))
    users = ("u1", "u2", "u3")
    with Store(tmp_path / "edge", map_size=MAP_SIZE) as store:
        store.apply_replicated(
            1, [("profiles", u.encode(), profile) for u in users], snapshot=True, info=SnapshotInfo(version=1)
        )
        store.record_events([_event(f"e-{u}", u, "i1") for u in users], ActivityLimits())
        assert all(_holds(store, u) == ["profile", "activity", "outbox"] for u in users)
        with store.read() as view:
            generation = view.generation
        forget = [("profiles", b"u1", None), ("forgotten", b"u1", U64.pack(5))]
        assert store.apply_replicated(2, forget, snapshot=False, info=SnapshotInfo(version=2)) is False
        with store.read() as view:
            assert view.generation == generation  # workers keep their compiled version state
        assert _holds(store, "u1") == []
        assert _holds(store, "u2") == _holds(store, "u3") == ["profile", "activity", "outbox"]
        # A snapshot (an edge that fell behind the log) lists every forgotten user: the new ones go.
        snapshot = [
            ("profiles", b"u3", profile),
            ("forgotten", b"u1", U64.pack(5)),
            ("forgotten", b"u2", U64.pack(6)),
        ]
        store.apply_replicated(3, snapshot, snapshot=True, info=SnapshotInfo(version=3))
        assert _holds(store, "u2") == []
        assert _holds(store, "u3") == ["profile", "activity", "outbox"]


def _outbox_users(store: Store) -> list[str]:
    return [str(msgpack.unpackb(p, raw=False).get("u")) for _, p in store.outbox_batch(100_000)]


def test_a_forget_during_a_large_backlog_purges_the_outbox_in_housekeeping_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past FORGET_INLINE_OUTBOX queued entries, the sync transaction only marks the users; the outbox
    entries go in bounded housekeeping steps, and a user forgotten during a pass gets the next one."""
    monkeypatch.setattr(edge_local, "FORGET_INLINE_OUTBOX", 30)
    caplog.set_level(logging.INFO)
    profile = encode_profile(ProfileRecord("u", 1, {}, {"personalization": 1}, None))
    users = ("u1", "u2", "u3")
    with Store(tmp_path / "edge", map_size=MAP_SIZE) as store:
        store.apply_replicated(
            1, [("profiles", u.encode(), profile) for u in users], snapshot=True, info=SnapshotInfo(version=1)
        )
        for n in range(20):  # 60 entries, over the (lowered) threshold
            store.record_events([_event(f"e{n}-{u}", u, "i1") for u in users], ActivityLimits())
        store.apply_replicated(
            2, [("forgotten", b"u1", U64.pack(5))], snapshot=False, info=SnapshotInfo(version=2)
        )
        assert _holds(store, "u1") == ["outbox"]  # profile and activity at once; the outbox later
        assert store.pending_purges() == {"u1"}
        keeper = Housekeeper(store, 72 * 3_600_000, ActivityLimits(), purge_per_step=25)
        keeper.step()  # entries 1-25 of 60
        assert _outbox_users(store).count("u1") == 20 - 9 and store.pending_purges() == {"u1"}
        store.apply_replicated(
            3, [("forgotten", b"u2", U64.pack(6))], snapshot=False, info=SnapshotInfo(version=3)
        )
        assert store.pending_purges() == {"u1", "u2"}
        keeper.step()  # entries 26-50
        keeper.step()  # 51-60 and the end: u1's pass is over, u2 waits for the next
        assert "u1" not in _outbox_users(store) and store.pending_purges() == {"u2"}
        for _ in range(3):
            keeper.step()
        assert _outbox_users(store) == ["u3"] * 20 and store.pending_purges() == frozenset()
        assert keeper.purged_outbox == 40
        logged = [r for r in caplog.records if r.getMessage() == "forget_outbox_purged"]
        assert [(getattr(r, "users", None), getattr(r, "entries", None)) for r in logged] == [
            (1, 20),
            (1, 20),
        ]
        keeper.step()  # nothing pending: no pass
        assert keeper.purged_outbox == 40


def _stored_users(events: EventStore) -> list[str]:
    return sorted(str(e.get("u", "")) for _, _, e in events.events())


def test_the_event_store_forgets_a_user_by_its_index_and_indexes_an_older_store(tmp_path: Path) -> None:
    path = tmp_path / "events"
    records = [
        ("event", f"e{n}", Event(f"e{n}", "view", f"u{n % 3}", "", "i1", "", "", 0.0, n).encode())
        for n in range(30)
    ]
    records.append(("event", "anon", Event("anon", "view", "", "s1", "i1", "", "", 0.0, 99).encode()))
    with EventStore(path, map_size=MAP_SIZE) as events:
        events.ingest("edge-a", records[:20])
        events.ingest("edge-b", records[20:], [str(msgpack.unpackb(p)["u"]) for _, _, p in records[20:]])
        assert events.forget("u1") == 10
        assert _stored_users(events) == [""] + ["u0"] * 10 + ["u2"] * 10
        assert events.forget("u1") == 0
    # A store written before the index: it is built when the store is opened.
    with lmdb.open(str(path), max_dbs=5, map_size=MAP_SIZE) as env:
        users, meta = env.open_db(b"users", dupsort=True), env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.drop(users, delete=False)
            txn.delete(b"users_indexed", db=meta)
    with EventStore(path, map_size=MAP_SIZE) as events:
        assert events.forget("u2") == 10
        assert _stored_users(events) == [""] + ["u0"] * 10
        # forgotten ids are free again (a Forward of them is dropped by the control plane's check)
        assert events.ingest("edge-a", [records[2]]).accepted == 1


def test_event_store_user_ids_too_long_for_an_index_key_are_stored_and_forgotten(tmp_path: Path) -> None:
    # Not indexed (over 400 bytes; over 511, LMDB refuses the key): ingested anyway, forgotten by a scan.
    long_user, longer_user = "x" * 450, "y" * 600
    records = [
        ("event", f"l{n}", Event(f"l{n}", "view", user, "", "i1", "", "", 0.0, n).encode())
        for n, user in enumerate((long_user, "u1", long_user, "", longer_user))
    ]
    with EventStore(tmp_path / "events", map_size=MAP_SIZE) as events:
        assert events.ingest("edge-a", records).accepted == 5
        assert events.forget("") == 0  # no user: nothing (the anonymous record stays)
        assert events.forget(long_user) == 2 and events.forget(longer_user) == 1
        assert _stored_users(events) == ["", "u1"]


def test_an_outbox_entry_that_does_not_decode_is_not_taken_for_a_forgotten_users() -> None:
    matches = edge_local._outbox_matcher(frozenset({"u1"}))
    assert matches(msgpack.packb({"u": "u1", "t": "view"}))
    assert not matches(msgpack.packb({"u": "u2", "t": "view"}))
    assert not matches(b"\xc1 u1 " + msgpack.packb("u1"))  # contains the id, but is not msgpack
    many = edge_local._outbox_matcher(frozenset(f"u{n}" for n in range(20)))  # no substring filter
    assert many(msgpack.packb({"u": "u7"})) and not many(b"\xc1\xc1")
