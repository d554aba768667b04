"""The edge syncer's check of a commit's profile records before its write transaction.

A commit of many profile upserts (a refresh of user embeddings) is decoded in a thread at a lower CPU
priority than the syncer, before the write lock is taken; a record that does not decode refuses the
whole commit (the syncer NACKs it and applies nothing), as it did inside the transaction.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

from edgewise.core.records import ProfileRecord, RecordError, encode_profile
from edgewise.sync import edge_sync

Changes = list[tuple[str, bytes, bytes | None]]


def _profiles(n: int) -> Changes:
    records = [ProfileRecord(f"u{i}", 1, {}, {}, None) for i in range(n)]
    return [("profiles", r.id.encode(), encode_profile(r)) for r in records]


def test_a_bad_record_anywhere_refuses_a_large_commit() -> None:
    good = _profiles(edge_sync.LOW_PRIORITY_PROFILES + 5)
    edge_sync._check_profiles(good)
    with pytest.raises(RecordError, match="profile"):
        edge_sync._check_profiles([*good, ("profiles", b"bad", b"\x93\x01\x02\x03")])
    with pytest.raises(RecordError, match="profile"):
        edge_sync._check_profiles([("profiles", b"bad", b"\x93\x01\x02\x03"), *good[:3]])
    edge_sync._check_profiles([*good, ("profiles", b"gone", None), ("models", b"item_popularity", b"x")])


def _where(monkeypatch: pytest.MonkeyPatch, changes: Changes) -> tuple[str, int]:
    seen: list[tuple[str, int]] = []

    def record(_: Changes) -> None:
        tid = threading.get_native_id()
        seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, tid)))

    monkeypatch.setattr(edge_sync, "_profiles_decode", record)
    edge_sync._check_profiles(changes)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_a_large_commit_is_decoded_at_a_lower_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    name, nice = _where(monkeypatch, _profiles(edge_sync.LOW_PRIORITY_PROFILES))
    assert name == "edge-sync-check"
    assert nice == min(19, mine + edge_sync.CHECK_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller's is unchanged
    name, nice = _where(monkeypatch, _profiles(10))  # a small commit: decoded where it is
    assert (name, nice) == (threading.current_thread().name, mine)
