"""Folding per partition of the events stream, without NATS (docs/central.md, "One lease per partition"):
the local copy's index by partition, the folder working some partitions with one cursor each (every
event folded once across folders, the upgrade from the global cursor, a batch dropped when another
replica's commit moved a cursor meanwhile), the jobs' cursors carried by snapshots, retention bounded
by the partitions' cursors; and one bandit learner per partition publishing the posteriors one learner
over every record would (a successor after a crash, a paused holder's publish refused)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import msgpack

from edgewise.core.activity import Event
from edgewise.core.records import decode_profile
from edgewise.sync.bandit_learner import BanditLearner
from edgewise.sync.bandit_learner import partition_cursor as bandit_cursor
from edgewise.sync.control_store import CommitInfo, ControlStore, RecordChange
from edgewise.sync.event_partitions import partition_of
from edgewise.sync.event_store import EventStore
from edgewise.sync.profile_folder import CURSOR, ProfileFolder, folded_upto, partition_cursor
from tests.test_bandit_learner import FIRST, NEVER, SECOND, _arms
from tests.test_bandit_learning import T0, rules_doc

P = 4
USERS = [f"user-{n}" for n in range(12)]


def _purchase(n: int, user: str) -> tuple[str, str, bytes]:
    event = Event(
        event_id=f"buy-{n}",
        type="purchase",
        user_id=user,
        session_id="",
        item_id="i1",
        decision_id="",
        placement_id="",
        value=2.0,
        timestamp_ms=time.time_ns() // 1_000_000,
    )
    return ("event", event.event_id, event.encode())


def _fill(events: EventStore, first: int, count: int) -> None:
    records = [_purchase(n, USERS[n % len(USERS)]) for n in range(first, first + count)]
    events.ingest("node", records, seqs=list(range(first + 1, first + count + 1)))


def _orders(store: ControlStore) -> dict[str, int]:
    with store.read() as view:
        return {
            user: int(decode_profile(user, value).attributes.get("orders", 0))
            for user, value in view.items("profiles")
        }


def _folder(
    store: ControlStore,
    events: EventStore,
    held: set[int],
    lock: AbstractContextManager[object] | None = None,
) -> ProfileFolder:
    return ProfileFolder(
        store,
        events,
        lock if lock is not None else threading.Lock(),
        lambda: None,
        partitions=lambda: held,
        batch=7,
    )


def _drain(folder: ProfileFolder) -> None:
    while folder.fold_once() is not None:
        pass


def test_the_index_reads_one_partition_in_order_and_follows_forget_and_reopening(tmp_path: Path) -> None:
    with EventStore(tmp_path / "ev", partitions=P) as events:
        _fill(events, 0, 60)
        seen = []
        for p in range(P):
            rows = events.batch_in(p, 0, 1000)
            assert [seq for seq, _, _ in rows] == sorted(seq for seq, _, _ in rows)
            assert {partition_of(r["u"], P) for _, _, r in rows} <= {p}
            seen += [seq for seq, _, _ in rows]
            after = rows[2][0]
            assert events.batch_in(p, after, 2) == [r for r in rows if r[0] > after][:2]
        assert sorted(seen) == list(range(1, 61))
        events.ingest("node", [_purchase(99, "")], seqs=[61])  # no user id: indexed apart
        assert [seq for seq, _, _ in events.batch_in(events.anonymous, 0, 10)] == [61]
        assert all(row[0] != 61 for p in range(P) for row in events.batch_in(p, 0, 1000))
        gone = USERS[3]
        assert events.forget(gone) == 5
        assert all(r["u"] != gone for p in range(P) for _, _, r in events.batch_in(p, 0, 1000))
        for p in range(P):  # a consumer's backlog in a partition: what batch_in would still read
            rows = events.batch_in(p, 0, 1000)
            assert events.count_in(p, 0, 1000) == len(rows)
            assert events.count_in(p, rows[1][0], 1000) == len(rows) - 2
            assert events.count_in(p, 0, 3) == 3  # counted up to the limit
            assert events.count_in(p, rows[-1][0], 1000) == 0
        assert events.count_in(events.anonymous, 0, 10) == 1
    with EventStore(tmp_path / "ev", partitions=3) as events:  # another partition count: indexed again
        rows = [row for p in range(3) for row in events.batch_in(p, 0, 1000)]
        assert len(rows) == 55 and len(events.batch_in(events.anonymous, 0, 10)) == 1
        assert all(partition_of(r["u"], 3) == p for p in range(3) for _, _, r in events.batch_in(p, 0, 100))


def test_folders_of_disjoint_partitions_fold_every_event_once(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "c") as store, EventStore(tmp_path / "ev", partitions=P) as events:
        _fill(events, 0, 48)
        one, two = _folder(store, events, {0, 2}), _folder(store, events, {1, 3})
        _drain(one)
        _fill(events, 48, 24)
        _drain(two)
        _drain(one)
        assert _orders(store) == {user: 6 for user in USERS}
        assert {p: store.cursor(partition_cursor(p)) for p in range(P)} == {
            p: max(seq for seq, _, _ in events.batch_in(p, 0, 1000)) for p in range(P)
        }
        assert store.cursor(CURSOR) == 0
        # a partition moves to the other folder (its lease taken over): it resumes at the cursor
        _fill(events, 72, 12)
        _drain(_folder(store, events, {0, 1, 2, 3}))
        assert _orders(store) == {user: 7 for user in USERS}
        assert folded_upto(store, events, range(P)) == 84


def test_the_upgrade_starts_each_partition_at_the_global_cursor(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "c") as store, EventStore(tmp_path / "ev", partitions=P) as events:
        _fill(events, 0, 24)
        ProfileFolder(store, events, threading.Lock(), lambda: None).fold_once()  # one folder, one cursor
        assert store.cursor(CURSOR) == 24
        assert _orders(store) == {user: 2 for user in USERS}
        _fill(events, 24, 36)
        _drain(_folder(store, events, {0, 1}))
        _drain(_folder(store, events, {2, 3}))
        assert _orders(store) == {user: 5 for user in USERS}


class _Interfering:
    """A lock that runs `before` once as it is first taken (another replica's fold, applied here)."""

    def __init__(self, before: Callable[[], object]) -> None:
        self.before: Callable[[], object] | None = before
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        if self.before is not None:
            self.before, before = None, self.before
            before()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_batch_is_dropped_when_another_replica_folded_the_partition_meanwhile(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "c") as store, EventStore(tmp_path / "ev", partitions=P) as events:
        _fill(events, 0, 24)
        other = _folder(store, events, {0, 1, 2, 3})
        interfered: list[object] = []
        paused = _folder(
            store, events, {0, 1, 2, 3}, _Interfering(lambda: interfered.append(other.fold_once()))
        )
        assert paused.fold_once() == 0  # dropped: a cursor it read had moved
        assert isinstance(interfered[0], CommitInfo)
        _drain(paused)
        _drain(other)
        assert _orders(store) == {user: 2 for user in USERS}


def test_snapshots_carry_the_cursors(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "a") as a, ControlStore(tmp_path / "b") as b:
        a.commit_at(
            [RecordChange("items", "i", b"x")], kind="delta", cursors={"profiles.1": 9, "profiles.3": 4}
        )
        position, commits, forgotten, records, cursors = a.image_and_cursors()
        assert cursors == {"profiles.1": 9, "profiles.3": 4}
        b.commit_at([], kind="delta", cursor="profiles.2", position=5)
        b.install_snapshot(
            lineage=a.lineage,
            commits=commits,
            records=records,
            forgotten=forgotten,
            position=position,
            cursors=cursors,
        )
        assert b.cursors() == cursors


# --- learning per partition --------------------------------------------------------------------------


def _learning_stores(root: Path) -> tuple[ControlStore, EventStore]:
    store = ControlStore(root / "control", map_size=256 << 20)
    store.commit([RecordChange("rules", "rules", msgpack.packb(rules_doc(), use_bin_type=True))], kind="push")
    return store, EventStore(root / "events", map_size=256 << 20, partitions=P)


def _learner(store: ControlStore, events: EventStore, partition: int | None) -> BanditLearner:
    return BanditLearner(
        store, events, threading.Lock(), lambda: None, schedule=NEVER, batch=7, partition=partition
    )


def _count_all(learner: BanditLearner) -> None:
    while learner.read_once():
        pass


def test_learners_of_the_partitions_publish_the_posteriors_of_one_learner(tmp_path: Path) -> None:
    store, events = _learning_stores(tmp_path / "one")
    single = _learner(store, events, None)
    for n, records in enumerate((FIRST, SECOND)):
        events.ingest("edge-a", records)
        _count_all(single)
        single.publish(float(n))
    expected = _arms(store)
    assert expected != _arms_of(rules_doc())

    store2, events2 = _learning_stores(tmp_path / "partitions")
    learners = {p: _learner(store2, events2, p) for p in range(P)}
    events2.ingest("edge-a", FIRST)
    for learner in learners.values():
        _count_all(learner)
        learner.publish(0.0)
    events2.ingest("edge-a", SECOND)
    # partition 1's replica dies after counting, before publishing: its successor counts again
    _count_all(learners[1])
    learners[1] = _learner(store2, events2, 1)
    # partition 2's lease moved while its holder was paused: both count, the later publish is refused
    paused = learners[2]
    _count_all(paused)
    learners[2] = _learner(store2, events2, 2)
    for p in (3, 2, 1, 0):
        _count_all(learners[p])
        learners[p].publish(1.0)
    assert paused.publish(2.0) is None  # its cursor moved: it counts again from there
    _count_all(paused)
    paused.publish(3.0)  # nothing new since the successor's publish
    assert _arms(store2) == expected
    assert all(store2.cursor(bandit_cursor(p)) > 0 for p in range(P))


def _arms_of(doc: dict[str, Any]) -> Any:
    return doc["bandits"]["promo"]["arms"]


def test_partition_learners_take_over_from_the_global_cursor(tmp_path: Path) -> None:
    store, events = _learning_stores(tmp_path / "one")
    single = _learner(store, events, None)
    for n, records in enumerate((FIRST, SECOND)):
        events.ingest("edge-a", records)
        _count_all(single)
        single.publish(float(n))
    expected = _arms(store)

    store2, events2 = _learning_stores(tmp_path / "upgraded")
    before = _learner(store2, events2, None)  # the release before: one learner, the global cursor
    events2.ingest("edge-a", FIRST)
    _count_all(before)
    before.publish(0.0)
    events2.ingest("edge-a", SECOND)
    for p in range(P):
        learner = _learner(store2, events2, p)
        assert learner.position == len(FIRST)  # starts where the global cursor is
        _count_all(learner)
        learner.publish(1.0)
    assert _arms(store2) == expected


class _Refused(Exception):
    pass


def test_a_commit_the_log_refuses_is_made_again_after_catching_up(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "c") as store, EventStore(tmp_path / "ev", partitions=P) as events:
        _fill(events, 0, 24)
        refusals = [2]  # the log refuses the next two commits (another replica's came first)
        caught_up: list[Exception] = []

        def publish(
            info: CommitInfo,
            changes: list[RecordChange],
            position: int,
            cursors: dict[str, int],
            rollout: object = None,
        ) -> int:
            if refusals[0]:
                refusals[0] -= 1
                raise _Refused("the change log moved on")
            return position + 1

        store.on_commit = publish
        folder = ProfileFolder(
            store,
            events,
            threading.Lock(),
            lambda: None,
            partitions=lambda: range(P),
            retry_on=(_Refused,),
            catch_up=caught_up.append,
        )
        assert isinstance(folder.fold_once(), CommitInfo)
        assert len(caught_up) == 2 and folder.conflicts == 2
        assert _orders(store) == {user: 2 for user in USERS}
        assert store.replicated_position() == 1


def _anonymous_click(n: int) -> tuple[str, str, bytes]:
    """A click naming its decision, tracked without the user id its exposure had."""
    event = Event(
        f"anon-click-{n}", "click", "", f"s{n}", "", f"d{n}", "promo_slot", 0.0, T0 + n * 1_000 + 500
    )
    return "event", event.event_id, event.encode()


def test_clicks_without_a_user_id_are_attributed_by_the_learner_of_their_exposure(tmp_path: Path) -> None:
    records = [r for r in FIRST if r[0] == "exposure"] + [_anonymous_click(n) for n in range(0, 40, 3)]
    store, events = _learning_stores(tmp_path / "one")
    events.ingest("edge-a", records)
    single = _learner(store, events, None)
    _count_all(single)
    single.publish(0.0)
    expected = _arms(store)

    store2, events2 = _learning_stores(tmp_path / "partitions")
    events2.ingest("edge-a", records)
    anonymous = partition_of("", P)
    assert {partition_of(f"u{n}", P) for n in range(0, 40, 3)} - {anonymous}, "clicks outside its partition"
    for p in range(P):
        learner = _learner(store2, events2, p)
        _count_all(learner)
        learner.publish(0.0)
    assert _arms(store2) == expected
    rewards = sum(a["alpha"] for a in expected) - sum(a["alpha"] for a in _arms_of(rules_doc()))
    assert rewards == 14
