"""The control plane's LMDB store: versions, diffs, the change log, compaction, snapshots, rollback."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgewise.core import store as edge_store
from edgewise.sync.control_store import (
    REPLICATED,
    CommitInfo,
    ControlStore,
    ControlStoreError,
    LogCompacted,
    RecordChange,
)

State = dict[tuple[str, str], bytes]
MAP_SIZE = 1 << 30


def put(namespace: str, key: str, value: bytes) -> RecordChange:
    return RecordChange(namespace, key, value)


def delete(namespace: str, key: str) -> RecordChange:
    return RecordChange(namespace, key, None)


def state_of(store: ControlStore) -> State:
    with store.read() as view:
        return {(ns, key): value for ns in REPLICATED for key, value in view.items(ns)}


def records(state: State) -> Iterator[RecordChange]:
    for (namespace, key), value in state.items():
        yield RecordChange(namespace, key, value)


def apply(state: State, changes: list[RecordChange]) -> None:
    for change in changes:
        if change.value is None:
            del state[(change.namespace, change.key)]  # a tombstone always names a present key
        else:
            state[(change.namespace, change.key)] = change.value


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ControlStore]:
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE) as s:
        yield s


def test_replicated_namespaces_match_the_edge_store() -> None:
    assert REPLICATED == edge_store.REPLICATED


def test_an_empty_store_is_at_version_zero(store: ControlStore) -> None:
    assert store.head_version() == 0
    assert store.log_start_version() == 0
    assert store.history() == []
    assert store.snapshot_versions() == []
    assert list(store.commits_after(0)) == []
    with store.read() as view:
        assert view.version == 0
        assert view.get("profiles", "u1") is None
        assert view.count("items") == 0


def test_commit_assigns_increasing_versions_and_drops_no_ops(store: ControlStore) -> None:
    first = store.commit(
        [put("profiles", "u1", b"a"), put("items", "i1", b"x")], kind="push", description="d"
    )
    assert first is not None
    assert (first.version, first.base_version, first.first_seq, first.changes) == (2, 0, 1, 2)
    assert (first.kind, first.description) == ("push", "d")
    assert first.created_at_ms > 0

    # Same bytes and a delete of an absent key are no-ops; only the real change gets a sequence number.
    second = store.commit(
        [put("profiles", "u1", b"a"), delete("items", "nope"), put("items", "i1", b"y")], kind="delta"
    )
    assert second is not None
    assert (second.version, second.base_version, second.first_seq, second.changes) == (3, 2, 3, 1)

    assert store.commit([put("profiles", "u1", b"a"), delete("rules", "r")], kind="delta") is None
    assert store.commit([], kind="delta") is None
    assert store.head_version() == 3

    third = store.commit([delete("profiles", "u1")], kind="delta")
    assert third is not None and third.version == 4
    assert state_of(store) == {("items", "i1"): b"y"}
    with store.read() as view:
        assert view.version == 4


def test_the_last_change_to_a_key_in_one_commit_wins(store: ControlStore) -> None:
    store.commit([put("items", "gone", b"1")], kind="push")
    info = store.commit(
        [
            put("items", "k", b"1"),
            put("items", "other", b"o"),
            put("items", "k", b"2"),
            delete("items", "gone"),
            put("items", "gone", b"1"),  # back to the current value: a no-op overall
        ],
        kind="delta",
    )
    assert info is not None and info.changes == 2
    [(_, changes)] = list(store.commits_after(1))
    assert changes == [put("items", "other", b"o"), put("items", "k", b"2")]


def test_bad_input_is_refused_with_a_clear_message_and_nothing_is_written(store: ControlStore) -> None:
    with pytest.raises(ControlStoreError, match="unknown namespace 'activity'"):
        store.commit([put("items", "i1", b"x"), put("activity", "u1", b"x")], kind="push")
    with pytest.raises(ControlStoreError, match="unknown commit kind 'snapshot'"):
        store.commit([put("items", "i1", b"x")], kind="snapshot")
    with pytest.raises(ControlStoreError, match="keys must be 1 to"):
        store.commit([put("items", "", b"x")], kind="push")
    with pytest.raises(ControlStoreError, match="keys must be 1 to"):
        store.commit([put("items", "k" * 600, b"x")], kind="push")
    with pytest.raises(ControlStoreError, match="must be bytes"):
        store.commit([RecordChange("items", "i1", "text")], kind="push")  # type: ignore[arg-type]
    with pytest.raises(ControlStoreError, match="unknown namespace 'users'"), store.read() as view:
        view.get("users", "u1")
    assert store.head_version() == 0 and state_of(store) == {}


def test_replace_all_logs_only_the_differences(store: ControlStore) -> None:
    base = {("profiles", f"u{i}"): b"p%d" % i for i in range(5)} | {("rules", "rules"): b"r1"}
    first = store.replace_all(records(base), kind="push")
    assert first is not None and first.changes == 6

    new = dict(base)
    new[("profiles", "u1")] = b"changed"
    new[("items", "i9")] = b"added"
    del new[("profiles", "u3")]
    del new[("rules", "rules")]
    second = store.replace_all(records(new), kind="push", description="v2")
    assert second is not None
    assert (second.base_version, second.changes, second.version) == (6, 4, 10)
    [(info, changes)] = list(store.commits_after(6))
    assert info == second
    assert sorted(changes, key=lambda c: (c.namespace, c.key)) == [
        put("items", "i9", b"added"),
        put("profiles", "u1", b"changed"),
        delete("profiles", "u3"),
        delete("rules", "rules"),
    ]
    assert state_of(store) == new

    # The same state again is no new version and no new snapshot.
    assert store.replace_all(records(new), kind="push") is None
    assert store.head_version() == 10
    assert store.snapshot_versions() == [6, 10]


def test_replace_all_refuses_deletes_and_duplicate_keys_atomically(store: ControlStore) -> None:
    store.replace_all([put("items", "a", b"1")], kind="push")
    with pytest.raises(ControlStoreError, match="leave a key out to delete it"):
        store.replace_all([put("items", "b", b"2"), delete("items", "a")], kind="push")
    with pytest.raises(ControlStoreError, match="twice"):
        store.replace_all([put("items", "b", b"2"), put("items", "b", b"3")], kind="push")
    assert state_of(store) == {("items", "a"): b"1"}
    assert store.head_version() == 1


def test_replace_all_with_nothing_deletes_everything(store: ControlStore) -> None:
    store.commit([put("items", "a", b"1"), put("models", "m", b"2")], kind="push")
    info = store.replace_all([], kind="push")
    assert info is not None and info.changes == 2
    assert state_of(store) == {}
    assert store.snapshot_versions() == [4]


def _random_change(rng: random.Random, keys: int) -> RecordChange:
    namespace = rng.choice(("profiles", "items", "models"))
    key = f"k{rng.randrange(keys)}"
    if rng.random() < 0.25:
        return delete(namespace, key)
    return put(namespace, key, rng.choice((b"a", b"b", b"c", bytes(rng.randrange(50)))))


def _random_history(store: ControlStore, rng: random.Random, commits: int) -> dict[int, State]:
    """Random commits and full replacements; returns the state at every version (0 included)."""
    states: dict[int, State] = {0: {}}
    for _ in range(commits):
        if rng.random() < 0.1:
            target = dict(states[store.head_version()])
            for change in (_random_change(rng, 30) for _ in range(rng.randrange(1, 12))):
                if change.value is None:
                    target.pop((change.namespace, change.key), None)
                else:
                    target[(change.namespace, change.key)] = change.value
            store.replace_all(records(target), kind="push")
        else:
            store.commit([_random_change(rng, 30) for _ in range(rng.randrange(1, 8))], kind="delta")
        states[store.head_version()] = state_of(store)
    return states


def test_commits_after_replays_any_older_state_to_the_current_one(tmp_path: Path) -> None:
    rng = random.Random(7)
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE) as store:
        states = _random_history(store, rng, 200)
        head = store.head_version()
        current = states[head]
        assert state_of(store) == current
        for version in sorted(states):
            replay = dict(states[version])
            previous = version
            for info, changes in store.commits_after(version):
                assert info.base_version == previous and info.base_version >= version
                assert info.changes == len(changes) == info.version - info.first_seq + 1
                apply(replay, changes)
                assert replay == states[info.version]
                previous = info.version
            assert previous == head
            assert replay == current
        assert list(store.commits_after(head)) == []
        assert len(store.history(limit=1000)) == len(states) - 1


def test_commits_after_stops_at_the_head_of_the_call(store: ControlStore) -> None:
    store.commit([put("items", "a", b"1")], kind="push")
    pending = store.commits_after(0)
    store.commit([put("items", "b", b"2")], kind="push")
    assert [info.version for info, _ in pending] == [1]


def test_compaction_drops_whole_commits_and_old_versions_need_a_snapshot(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE, retain_log_changes=10) as store:
        versions = []
        for n in range(6):  # 3 changes per commit: versions 3, 6, ..., 18
            info = store.commit([put("items", f"k{n}-{j}", b"v") for j in range(3)], kind="delta")
            assert info is not None
            versions.append(info.version)
        # Compaction runs after every commit; 18 changes logged, at most 10 kept, whole commits only.
        assert store.log_start_version() == 9
        assert store.compact() == 0
        with pytest.raises(LogCompacted, match="older than the start of the log"):
            store.commits_after(8)
        with pytest.raises(LogCompacted):
            store.commits_after(0)
        assert [info.version for info, _ in store.commits_after(9)] == [12, 15, 18]
        assert [info.version for info, _ in store.commits_after(15)] == [18]
        # The commits themselves stay in the history.
        assert [info.version for info in store.history()] == versions[::-1]

    # A smaller retention applied on reopen by an explicit compact().
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE, retain_log_changes=3) as store:
        assert store.compact() == 6
        assert store.log_start_version() == 15
        assert [info.version for info, _ in store.commits_after(15)] == [18]


def test_a_commit_larger_than_the_log_retention_leaves_only_the_head(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE, retain_log_changes=2) as store:
        store.commit([put("items", "a", b"1")], kind="push")
        info = store.commit([put("items", f"k{j}", b"v") for j in range(5)], kind="delta")
        assert info is not None
        assert store.log_start_version() == info.version
        assert list(store.commits_after(info.version)) == []


def test_rollback_to_a_snapshot_version(store: ControlStore) -> None:
    v1 = store.replace_all([put("items", "a", b"1"), put("items", "b", b"1")], kind="push")
    assert v1 is not None
    store.commit([put("items", "a", b"2"), put("rules", "rules", b"r")], kind="delta")
    store.replace_all([put("items", "c", b"3")], kind="push")
    before = store.head_version()

    info = store.rollback(v1.version)
    assert info is not None
    assert (info.kind, info.base_version, info.description) == ("rollback", before, "rollback to version 2")
    assert state_of(store) == {("items", "a"): b"1", ("items", "b"): b"1"}
    # The rollback is an ordinary commit: edges catch up through the log, and it is a snapshot itself.
    [(logged, _)] = list(store.commits_after(before))
    assert logged == info
    assert store.snapshot_versions()[-1] == info.version
    # Rolling back to the head changes nothing.
    assert store.rollback(info.version) is None


def test_rollback_between_snapshots_uses_the_snapshot_and_the_log(tmp_path: Path) -> None:
    rng = random.Random(3)
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE, retain_snapshots=3) as store:
        states = _random_history(store, rng, 120)
        snapshots = store.snapshot_versions()
        assert len(snapshots) == 3
        targets = [v for v in states if 0 < v < store.head_version()]
        between = [v for v in targets if snapshots[0] < v and v not in snapshots]
        before_any = [v for v in targets if v < snapshots[0]]  # log_start is 0: rebuilt from the empty state
        for version in [*rng.sample(between, 5), *rng.sample(before_any, 3), snapshots[0]]:
            info = store.rollback(version, description=f"back to {version}")
            assert state_of(store) == states[version]
            assert info is None or info.description == f"back to {version}"
            states[store.head_version()] = states[version]


def test_rollback_is_refused_when_it_cannot_be_rebuilt(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE, retain_snapshots=2, retain_log_changes=4) as store:
        v: list[int] = []
        for n in range(10):
            info = store.commit([put("items", "k", b"%d" % n), put("items", f"x{n}", b"v")], kind="delta")
            assert info is not None
            v.append(info.version)
            if n in (3, 5):
                snap = store.replace_all(
                    [put("items", "k", b"%d" % n), put("items", "snap", b"%d" % n)], kind="push"
                )
                assert snap is not None
                v.append(snap.version)
        snapshots = store.snapshot_versions()
        log_start = store.log_start_version()
        assert len(snapshots) == 2 and log_start > snapshots[-1]

        old = v[0]
        message = (
            f"cannot roll back to version {old}: it is older than every retained snapshot "
            f"({snapshots[0]}, {snapshots[1]}) and the log starts at {log_start}"
        )
        with pytest.raises(ControlStoreError, match="^" + re.escape(message)):
            store.rollback(old)
        gap = next(x for x in v if snapshots[-1] < x <= log_start)
        with pytest.raises(
            ControlStoreError, match=f"newest retained snapshot at or below it is {snapshots[-1]}"
        ):
            store.rollback(gap)
        with pytest.raises(ControlStoreError, match="not a commit version"):
            store.rollback(v[0] - 1)
        with pytest.raises(ControlStoreError, match="the head is version"):
            store.rollback(store.head_version() + 1)
        head = store.head_version()

        # A retained snapshot still works even though the log before it is gone.
        assert store.rollback(snapshots[-1]) is not None
        assert state_of(store) == {("items", "k"): b"5", ("items", "snap"): b"5"}
        assert store.head_version() > head


def test_retention_keeps_only_the_newest_snapshots(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE, retain_snapshots=2) as store:
        made = []
        for n in range(4):
            info = store.replace_all([put("items", f"k{j}", b"%d" % n) for j in range(50)], kind="push")
            assert info is not None
            made.append(info.version)
        assert store.snapshot_versions() == made[-2:]
        # The dropped snapshots' keys are gone too (two snapshots of 50 keys each remain).
        with store._env.begin() as txn:
            assert txn.stat(store._dbs.snapshots)["entries"] == 100

    with ControlStore(tmp_path / "none", map_size=MAP_SIZE, retain_snapshots=0) as store:
        store.replace_all([put("items", "a", b"1")], kind="push")
        assert store.snapshot_versions() == []


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    rng = random.Random(5)
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE, retain_log_changes=40) as store:
        states = _random_history(store, rng, 40)
        expected = (
            store.head_version(),
            store.log_start_version(),
            store.snapshot_versions(),
            store.history(1000),
            state_of(store),
            list(store.commits_after(store.log_start_version())),
        )
        assert expected[1] > 0
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE, retain_log_changes=40) as store:
        reopened = (
            store.head_version(),
            store.log_start_version(),
            store.snapshot_versions(),
            store.history(1000),
            state_of(store),
            list(store.commits_after(store.log_start_version())),
        )
        assert reopened == expected
        assert state_of(store) == states[store.head_version()]
        info = store.commit([put("rules", "rules", b"new")], kind="delta")
        assert info is not None and info.base_version == expected[0]


def test_history_is_newest_first_and_limited(store: ControlStore) -> None:
    for n in range(5):
        store.commit([put("items", "k", b"%d" % n)], kind="delta", description=f"c{n}")
    history = store.history(limit=3)
    assert [(c.version, c.description) for c in history] == [(5, "c4"), (4, "c3"), (3, "c2")]
    assert all(isinstance(c, CommitInfo) for c in history)
    assert store.history(limit=0) == []


def test_view_reads_one_consistent_state(store: ControlStore) -> None:
    store.commit([put("items", "b", b"2"), put("items", "a", b"1"), put("models", "m", b"\x00")], kind="push")
    with store.read() as view:
        store.commit([put("items", "c", b"3")], kind="delta")
        assert view.version == 3
        assert list(view.items("items")) == [("a", b"1"), ("b", b"2")]
        assert view.count("items") == 2
        assert view.get("models", "m") == b"\x00"
        assert view.get("items", "c") is None
    with store.read() as view:
        assert view.version == 4 and view.count("items") == 3


def test_the_store_refuses_an_unusable_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ControlStoreError, match="cannot open the control store"):
        ControlStore(blocker / "cp", map_size=MAP_SIZE)
    with pytest.raises(ControlStoreError, match="must be 0 or more"):
        ControlStore(tmp_path / "cp", retain_snapshots=-1)


def test_a_full_map_is_reported_and_the_state_is_unchanged(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "cp", map_size=1 << 20) as store:
        store.commit([put("items", "a", b"1")], kind="push")
        with pytest.raises(ControlStoreError, match="larger map_size"):
            store.commit([put("models", "big", bytes(4 << 20))], kind="push")
        assert state_of(store) == {("items", "a"): b"1"}
        assert store.head_version() == 1


@pytest.mark.slow  # 200,000 records twice: over 2 s
def test_a_large_replace_all_streams_and_diffs(tmp_path: Path) -> None:
    n = 200_000

    def profiles(changed: int) -> Iterator[RecordChange]:
        for i in range(n):
            if i % 1000 == 999:
                continue  # dropped in the second push when changed > 0
            value = b"changed" if i < changed else b"p%07d" % i
            yield put("profiles", f"user-{i:07d}", value)

    started = time.perf_counter()
    with ControlStore(tmp_path / "cp", map_size=MAP_SIZE) as store:
        first = store.replace_all(
            (put("profiles", f"user-{i:07d}", b"p%07d" % i) for i in range(n)), kind="push"
        )
        assert first is not None and first.changes == n
        second = store.replace_all(profiles(changed=100), kind="push")
        assert second is not None
        assert second.changes == 100 + n // 1000
        with store.read() as view:
            assert view.count("profiles") == n - n // 1000
            assert view.get("profiles", "user-0000050") == b"changed"
            assert view.get("profiles", "user-0000999") is None
        assert store.snapshot_versions() == [first.version, second.version]
        assert store.replace_all(profiles(changed=100), kind="push") is None
    assert time.perf_counter() - started < 15
