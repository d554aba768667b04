"""The edge syncer's check of a commit's profile records before its write transaction, and the priority
it runs at.

A record that is not a profile record this code reads refuses the whole commit (the syncer NACKs it and
applies nothing), as it did inside the transaction; the records are scanned in C
(tests/test_profile_check.py compares that scan with `check_profile`). The syncer thread runs SYNC_NICE
steps below the process and in the lowest best-effort I/O level, so the workers' requests go first.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from edgewise.core.records import ProfileRecord, RecordError, encode_profile
from edgewise.core.store import Store
from edgewise.sync import edge_sync
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
        finally:
            syncer.stop()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller's unchanged
    assert io_priority(threading.get_native_id()) == my_io
