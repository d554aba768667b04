"""The edge syncer's check of a commit's profile records before its write transaction, and the priority
it runs at.

A record that is not a profile record this code reads refuses the whole commit (the syncer NACKs it and
applies nothing), as it did inside the transaction; the records are scanned in C
(tests/test_profile_check.py compares that scan with `check_profile`). The syncer thread runs SYNC_NICE
steps below the process and in the lowest best-effort I/O level, so the workers' requests go first; its
write transactions run on a writer thread at the process's priority (sync/commit_writer.py), as they hold
the LMDB write lock the workers' Track writes wait for.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgewise.core.records import ProfileRecord, RecordError, encode_profile
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Store
from edgewise.sync import edge_sync
from edgewise.sync.commit_writer import CommitWriter, WriterStopped
from edgewise.sync.edge_sync import EdgeSyncer, SyncTarget
from edgewise.sync.shard import Shard
from edgewise.sync.thread_priority import IOPRIO_LOWEST_BEST_EFFORT, io_priority

Changes = list[tuple[str, bytes, bytes | None]]


def _profiles(n: int) -> Changes:
    records = [ProfileRecord(f"u{i}", 1, {}, {}, None) for i in range(n)]
    return [("profiles", r.id.encode(), encode_profile(r)) for r in records]


def test_a_bad_record_anywhere_refuses_a_large_commit() -> None:
    good = _profiles(5_000)
    edge_sync.check_profiles(good)
    with pytest.raises(RecordError, match="profile"):
        edge_sync.check_profiles([*good, ("profiles", b"bad", b"\x93\x01\x02\x03")])
    with pytest.raises(RecordError, match="profile"):
        edge_sync.check_profiles([("profiles", b"bad", b"\x93\x01\x02\x03"), *good[:3]])
    edge_sync.check_profiles([*good, ("profiles", b"gone", None), ("models", b"item_popularity", b"x")])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_the_syncer_thread_runs_at_a_lower_cpu_and_io_priority(tmp_path: Path) -> None:
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    my_io = io_priority(threading.get_native_id())
    with Store(tmp_path / "edge") as store:
        # nothing listens on port 1: the syncer tries, fails and backs off; its priority is set first
        syncer = EdgeSyncer(store, SyncTarget(("127.0.0.1:1",), "n1", Shard()))
        syncer.start()
        try:
            tid = syncer._thread.native_id
            assert tid is not None
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (
                os.getpriority(os.PRIO_PROCESS, tid) == mine or io_priority(tid) == my_io
            ):
                time.sleep(0.01)
            assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, mine + edge_sync.SYNC_NICE)
            if my_io is not None:  # ioprio_get answers on this machine
                assert io_priority(tid) == IOPRIO_LOWEST_BEST_EFFORT
            # the write transactions' thread is not lowered: it holds the lock Track waits for
            writer = syncer._writer.native_id
            assert writer is not None
            assert os.getpriority(os.PRIO_PROCESS, writer) == mine
            assert io_priority(writer) == my_io
        finally:
            syncer.stop()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller's unchanged
    assert io_priority(threading.get_native_id()) == my_io


def test_the_commit_writer_runs_calls_in_its_thread_and_refuses_them_once_stopped() -> None:
    writer = CommitWriter()
    with pytest.raises(WriterStopped):
        writer.call(lambda: 1)  # not started
    writer.start()
    try:
        assert writer.call(threading.get_native_id) == writer.native_id != threading.get_native_id()

        def fail() -> None:
            raise ValueError("refused")

        with pytest.raises(ValueError, match="refused"):
            writer.call(fail)
        assert writer.call(lambda: "still serving") == "still serving"
    finally:
        writer.stop()
    with pytest.raises(WriterStopped):
        writer.call(lambda: 1)


# --- one commit, one write transaction: a kill -9 mid-apply leaves the old state or the new ---------------

_APPLY = """
import sys, threading
from edgewise.core.profile_check import check_profiles
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Store
from edgewise.sync.commit_writer import CommitWriter
from edgewise.sync.edge_sync import SYNC_NICE
from edgewise.sync.thread_priority import lower_cpu_priority, lower_io_priority
from tests.test_sync_commit_check import profile_commit

path, version, seed, users = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
changes = profile_commit(users, seed)
store = Store(path)
writer = CommitWriter()
writer.start()  # from the main thread, at its priority, as EdgeSyncer.start does

def apply():  # as the syncer does: its thread lowered, the check before the write transaction, which
    # the writer thread runs
    lower_cpu_priority(SYNC_NICE)
    lower_io_priority()
    check_profiles(changes)
    print("applying", flush=True)
    writer.call(
        lambda: store.apply_replicated(version, changes, snapshot=False, info=SnapshotInfo(version=version))
    )
    print("applied", flush=True)

thread = threading.Thread(target=apply)
thread.start()
thread.join()
"""
USERS = 40_000  # about 8 MB of profile records: a write transaction of a few hundred ms


def profile_commit(users: int, seed: int) -> Changes:
    """Every profile upserted with a new embedding: the state after it depends on `seed` alone."""
    rng = random.Random(seed)
    changes: Changes = []
    for i in range(users):
        embedding = struct.pack("<32f", *(rng.random() for _ in range(32)))
        record = ProfileRecord(f"u{i}", 1, {"seed": seed, "n": i}, {"p": 1}, embedding)
        changes.append(("profiles", record.id.encode(), encode_profile(record)))
    return changes


def _state(path: Path) -> tuple[int, str]:
    with Store(path) as store, store.read() as view:
        return view.version, view.replicated_digest()


def _apply_in_child(path: Path, version: int, seed: int) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [sys.executable, "-c", _APPLY, str(path), str(version), str(seed), str(USERS)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def _wait_line(child: subprocess.Popen[str], line: str) -> None:
    assert child.stdout is not None
    got = child.stdout.readline().strip()
    assert got == line, f"the child said {got!r}, not {line!r} (exit {child.poll()})"


@pytest.mark.slow
def test_a_kill_during_a_large_profile_commit_leaves_the_old_or_the_new_state(tmp_path: Path) -> None:
    # the digest after each commit (it depends on the commit alone: every profile is upserted)
    digests = {}
    for seed in (1, 2):
        with Store(tmp_path / f"ref-{seed}") as ref:
            ref.apply_replicated(1, profile_commit(USERS, seed), snapshot=True, info=SnapshotInfo(version=1))
        digests[seed] = _state(tmp_path / f"ref-{seed}")[1]
    assert digests[1] != digests[2]
    path = tmp_path / "edge"
    with Store(path) as store:
        store.apply_replicated(1, profile_commit(USERS, 1), snapshot=True, info=SnapshotInfo(version=1))
    # how long the apply takes here: the kills spread over 0.1-1.5x of it after "applying"
    child = _apply_in_child(path, 2, 2)
    _wait_line(child, "applying")
    t0 = time.monotonic()
    _wait_line(child, "applied")
    apply_s = time.monotonic() - t0
    assert child.wait(30) == 0
    version, seed = 2, 2
    assert _state(path) == (2, digests[2])
    rng = random.Random(5)
    delays = [apply_s * (0.1 + 0.2 * i) * rng.uniform(0.9, 1.1) for i in range(8)]
    rng.shuffle(delays)
    outcomes = []
    for delay in delays:
        new_seed = 3 - seed
        child = _apply_in_child(path, version + 1, new_seed)
        _wait_line(child, "applying")
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        state = _state(path)
        assert state in ((version, digests[seed]), (version + 1, digests[new_seed])), (
            f"a kill {delay:.3f} s into the apply left version {state[0]} with neither state"
        )
        if state[0] == version + 1:
            outcomes.append(f"{delay:.3f}s:new")
            version, seed = version + 1, new_seed
        else:
            outcomes.append(f"{delay:.3f}s:old")
    print(f"apply {apply_s:.3f} s; kills: {', '.join(outcomes)}")
    assert any(o.endswith("old") for o in outcomes), f"no kill landed before the commit: {outcomes}"
