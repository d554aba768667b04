"""Event retention on the control plane: stored events and exposures older than `--retain-events` are
deleted (with their ids and index entries), oldest first, and only once the profile folder has folded
them. Real LMDB stores; the retention job's clock is a parameter."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from edgewise.core.activity import Event
from edgewise.sync.control_serve import retention_ms
from edgewise.sync.control_store import ControlStore
from edgewise.sync.event_retention import EventRetention
from edgewise.sync.event_store import EventStore
from edgewise.sync.profile_folder import CURSOR as FOLDER_CURSOR

DAY = 86_400_000
NOW = 400 * DAY


def _event(n: int, ts: int, user: str = "") -> tuple[str, str, bytes]:
    event = Event(f"e{n}", "view", user or f"u{n % 4}", "", "i1", "", "", 0.0, ts)
    return "event", event.event_id, event.encode()


def _ids(events: EventStore) -> list[str]:
    return [str(e["id"]) for _, _, e in events.events()]


def test_expire_deletes_old_records_up_to_a_sequence_with_their_ids_and_index(tmp_path: Path) -> None:
    with EventStore(tmp_path / "events", map_size=64 << 20) as events:
        # e0-e5 are 100 days old, e6 is new, e7 old again (it arrived late): the sweep stops at e6.
        records = [_event(n, NOW - 100 * DAY) for n in range(6)] + [
            _event(6, NOW),
            _event(7, NOW - 100 * DAY),
        ]
        events.ingest("edge-a", records)
        cutoff = NOW - 90 * DAY
        assert events.expire(cutoff, upto_seq=2) == 2  # only what the consumer has passed
        assert events.expire(cutoff, upto_seq=100, limit=3) == 3  # one bounded transaction
        assert events.expire(cutoff, upto_seq=100) == 1
        assert events.expire(cutoff, upto_seq=100) == 0  # e6 is newer: the sweep stops there
        assert _ids(events) == ["e6", "e7"]
        assert events.forget("u0") == 0  # e0 and e4 went with their index entries
        assert events.forget("u2") == 1  # e6; the expired e2 is no longer indexed
        assert events.ingest("edge-a", [records[0]]).accepted == 1  # its id is free again


def test_the_job_expires_only_what_the_folder_has_folded(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control", map_size=64 << 20)
    events = EventStore(tmp_path / "events", map_size=64 << 20)
    try:
        events.ingest("edge-a", [_event(n, NOW - (200 - n) * DAY) for n in range(200)])  # one a day
        retention = EventRetention(store, events, 30 * DAY, clock_ms=lambda: NOW)
        assert retention.expire_once() == 0  # the folder has not folded anything yet
        store.commit_at([], kind="delta", cursor=FOLDER_CURSOR, position=120)
        assert retention.expire_once() == 120  # folded and more than 30 days old
        store.commit_at([], kind="delta", cursor=FOLDER_CURSOR, position=200)
        assert retention.expire_once() == 50  # e120-e169; the last 30 days stay
        assert _ids(events) == [f"e{n}" for n in range(170, 200)] and retention.expired == 170
    finally:
        events.close()
        store.close()
    with pytest.raises(ValueError):
        EventRetention(store, events, 0)


@pytest.mark.parametrize(
    ("text", "ms"), [("0", 0), ("90d", 90 * DAY), ("12w", 84 * DAY), ("36h", 36 * 3_600_000)]
)
def test_retain_events_durations(text: str, ms: int) -> None:
    assert retention_ms(text) == ms


@pytest.mark.slow
def test_a_bad_retention_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        retention_ms("ninety days")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "edgewise.cli", "control", "serve"),
            *("--data", str(tmp_path / "c"), "--retain-events", "ninety days"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--retain-events" in done.stderr
