"""The rollout state in the central tier's change log, without a cluster (docs/rollouts.md, "The NATS
central tier"): what a store publishes with a canary push, a promote and an abort rebuilds the same
rollout record on another store; the log messages and snapshots carry it; the shared fleet carries the
edges' serving figures; the gate holds every edge while a replica applies rollout state; a fan-out never
sends an edge outside the canary a candidate that committed after it read its plan."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import pytest

from edgewise.sync.central_fleet import decode_entry, encode_entry
from edgewise.sync.central_log import CentralLog, Snapshot, decode_snapshot, encode_snapshot
from edgewise.sync.commit_cache import CommitCache
from edgewise.sync.control_store import CommitInfo, ControlStore, RecordChange, RolloutWritten
from edgewise.sync.fanout import Fanout
from edgewise.sync.fleet import EdgeEntry, Fleet
from edgewise.sync.rollout import ABORTED, CANARY, PROMOTED, Rollout, decode_rollout, encode_rollout
from edgewise.sync.rollout_gate import Plan, RolloutGate
from edgewise.sync.shard import Shard
from edgewise.v1 import sync_pb2

Published = tuple[CommitInfo | None, list[RecordChange], int, dict[str, int], RolloutWritten | None]


def _recording(store: ControlStore) -> list[Published]:
    log: list[Published] = []

    def commit(
        info: CommitInfo,
        changes: list[RecordChange],
        position: int,
        cursors: dict[str, int],
        rollout: RolloutWritten | None = None,
    ) -> int:
        log.append((info, list(changes), position + 1, dict(cursors), rollout))
        return position + 1

    def rollout_only(doc: bytes, skip: tuple[int, int] | None, position: int) -> int:
        log.append((None, [], position + 1, {}, (doc, skip)))
        return position + 1

    store.on_commit = commit
    store.on_rollout = rollout_only
    return log


def _item(key: str, value: bytes) -> RecordChange:
    return RecordChange("items", key, value)


def test_a_rollout_published_by_one_store_is_the_same_rollout_on_another(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "a") as a, ControlStore(tmp_path / "b") as b:
        b.adopt_lineage(a.lineage)
        published = _recording(a)
        base = a.replace_all([_item("i1", b"one"), RecordChange("rules", "rules", b"r")], kind="push")
        assert base is not None

        def start(info: CommitInfo | None) -> RolloutWritten | None:
            assert info is not None
            return encode_rollout(Rollout(info.version, info.base_version, CANARY, ("edge-a",))), None

        candidate = a.commit([_item("i2", b"two")], kind="delta", rollout=start)
        assert candidate is not None
        started = decode_rollout(a.rollout_record()[0] or b"")
        a.put_rollout(encode_rollout(started.ended(PROMOTED, "ok", 1, {})))  # no commit: a message alone

        def abort(info: CommitInfo | None) -> RolloutWritten | None:
            to = info.version if info is not None else a.head_version()
            ended = started.ended(ABORTED, "bad", 2, {}, rollback_version=to)
            return encode_rollout(ended), (base.version, to)

        rolled = a.rollback(base.version, rollout=abort)
        assert rolled is not None
        assert [(p[0].kind if p[0] else None, p[4] is not None) for p in published] == [
            ("push", False),
            ("delta", True),
            (None, True),
            ("rollback", True),
        ]
        for info, changes, position, cursors, rollout in published:
            if info is None:
                assert rollout is not None
                assert b.apply_rollout(rollout[0], rollout[1], position)
                assert not b.apply_rollout(rollout[0], rollout[1], position)  # delivered again: skipped
            else:
                assert b.apply_commit(info, changes, position, cursors, rollout=rollout)
        assert b.rollout_record() == a.rollout_record()
        assert b.replicated_position() == a.replicated_position() == 4
        ended = decode_rollout(b.rollout_record()[0] or b"")
        assert ended.state == ABORTED and ended.rollback_version == rolled.version
        assert msgpack.unpackb(b.rollout_record()[1] or b"") == [[base.version, rolled.version]]

        _, _, _, _, _, record = a.replica_image()
        with ControlStore(tmp_path / "c") as c:  # a replica bootstrapped from a snapshot has it too
            position, commits, forgotten, records, cursors = a.image_and_cursors()
            c.install_snapshot(
                lineage=a.lineage,
                commits=commits,
                records=records,
                forgotten=forgotten,
                position=position,
                cursors=cursors,
                rollout=record,
            )
            assert c.rollout_record() == a.rollout_record()


def test_log_messages_and_snapshots_carry_the_rollout_state() -> None:
    central = CentralLog(bridge=None)  # type: ignore[arg-type]  # encode and decode only
    central.lineage = "L"
    info = CommitInfo(8, 7, 8, 1, "delta", 5, "d")
    doc = encode_rollout(Rollout(8, 7, CANARY, ("edge-a",)))
    message, payload = central.encode(info, [_item("i2", b"two")], {}, (doc, None))
    assert payload is None
    entry = central.decode(3, msgpack.packb(message, use_bin_type=True))
    assert entry.info == info and entry.rollout == (doc, None)
    plain, _ = central.encode(info, [_item("i2", b"two")], {})
    assert central.decode(3, msgpack.packb(plain, use_bin_type=True)).rollout is None
    alone = {"f": 1, "l": "L", "ro": doc, "sk": [7, 9]}
    entry = central.decode(4, msgpack.packb(alone, use_bin_type=True))
    assert entry.info is None and entry.changes == [] and entry.rollout == (doc, (7, 9))

    snapshot = Snapshot(4, "L", [info], {}, [_item("i2", b"two")], {}, rollout=(doc, b"\x90"))
    assert decode_snapshot(encode_snapshot(snapshot)).rollout == (doc, b"\x90")
    older = Snapshot(4, "L", [info], {}, [], {})  # a snapshot of a release before rollouts on NATS
    assert decode_snapshot(encode_snapshot(older)).rollout is None


def test_the_shared_fleet_carries_the_serving_and_shadow_figures() -> None:
    entry = EdgeEntry("edge-a", "", "peer", applied_version=9, connected=True, last_seen_ms=5)
    entry.serving = sync_pb2.ServingStats(version=9, decisions=300, placements=900, fallbacks=12)
    entry.shadow = sync_pb2.ShadowStats(version=10, base_version=9, sampled=7)
    shared, replica, published = decode_entry(encode_entry(entry, "r1", 77))
    assert (shared, replica, published) == (entry, "r1", 77)
    bare = EdgeEntry("edge-b", "", "peer")
    assert decode_entry(encode_entry(bare, "r1", 1))[0] == bare


def test_the_gate_holds_every_edge_while_rollout_state_is_applied(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "a") as store:
        gate = RolloutGate(store)
        assert gate.plan("edge-a").limit is None
        gate.hold(7)
        assert gate.plan("edge-a").limit == 7 and gate.rollout is None
        gate.release()
        assert gate.plan("edge-a").limit is None


class _CandidateAfterPlan(RolloutGate):
    """A gate whose first plan is read just before a canary push commits (the push lands between the plan
    and what the fan-out sends): the candidate commits, with its rollout, right after the plan is made."""

    def __init__(self, store: ControlStore, changes: list[RecordChange]) -> None:
        super().__init__(store)
        self.store = store
        self.changes = changes
        self.candidate = 0

    def plan(self, node_id: str) -> Plan:
        plan = super().plan(node_id)
        if not self.candidate:

            def start(info: CommitInfo | None) -> RolloutWritten | None:
                assert info is not None
                return encode_rollout(Rollout(info.version, info.base_version, CANARY, ("canary",))), None

            info = self.store.commit(self.changes, kind="delta", rollout=start)
            assert info is not None
            self.candidate = info.version
            self.reload(self.store)
        return plan


@pytest.mark.parametrize("sent", ["nothing (a full snapshot)", "the first commit (deltas)"])
def test_a_candidate_that_commits_after_the_plan_is_not_sent_to_an_edge_outside_the_canary(
    tmp_path: Path, sent: str
) -> None:
    with ControlStore(tmp_path / "a") as store:
        first = store.commit([_item("i1", b"one"), RecordChange("rules", "rules", b"r")], kind="delta")
        base = store.commit([_item("i2", b"two")], kind="delta")
        assert first is not None and base is not None
        gate = _CandidateAfterPlan(store, [_item("i3", b"candidate")])
        fleet = Fleet()
        fanout = Fanout(CommitCache(store), fleet, heartbeat_seconds=60, gate=gate)
        edge_at = 0 if sent.startswith("nothing") else first.version
        entry = fleet.connect("other", "all", "p", edge_at)
        deadline = time.monotonic() + 1.5  # the stream ends then: every message it had for the edge
        stream = fanout.stream(entry, Shard(), edge_at, store.lineage, lambda: time.monotonic() < deadline)
        versions = [m.commit.version for m in stream if m.WhichOneof("kind") == "commit"]
        assert gate.candidate > base.version
        assert versions and max(versions) == base.version, versions  # held at the base, never the candidate
