"""Group commit for Track: concurrent submitters share transactions and each gets its own result."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgpack
import pytest

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.decisions import (
    Context,
    DecideRequest,
    DecideResponse,
    ItemResult,
    PlacementDecision,
    PlacementRequest,
)
from edgewise.core.exposure import exposure_records
from edgewise.core.store import Store, TrackResponse
from edgewise.edge.group_commit import CommitterClosed, GroupCommitter


def _event(event_id: str, user: str = "u1") -> Event:
    return Event(event_id, "view", user, "", "i1", "", "", 0.0, 1_000)


def test_concurrent_submitters_each_get_their_result(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        committer = GroupCommitter(store, ActivityLimits())
        results: dict[int, TrackResponse] = {}

        def submit(i: int) -> None:
            # Every caller sends one new event and one it shares with caller 0 (a duplicate for all but one).
            results[i] = committer.submit([_event(f"e{i}", f"u{i}"), _event("shared")], timeout=10)

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        committer.close()
        assert sorted(results) == list(range(24))
        assert sum(r.accepted for r in results.values()) == 24 + 1
        assert sum(r.duplicates for r in results.values()) == 24 - 1
        assert all(r.new[0] for r in results.values())  # each caller's own event is new
        assert committer.events == 48 and committer.batches <= 24
        with pytest.raises(CommitterClosed):
            committer.submit([_event("late")])


def test_a_failed_commit_reaches_every_caller_of_the_batch(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        committer = GroupCommitter(store, ActivityLimits())
        original = store.record_events

        def failing(*args: object, **kwargs: object) -> TrackResponse:
            raise OSError("disk gone")

        store.record_events = failing  # type: ignore[method-assign]
        with pytest.raises(OSError, match="disk gone"):
            committer.submit([_event("e1")], timeout=10)
        store.record_events = original  # type: ignore[method-assign]
        assert committer.submit([_event("e2")], timeout=10).accepted == 1
        committer.close()


def test_a_caller_that_waits_too_long_gets_a_timeout(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        committer = GroupCommitter(store, ActivityLimits())
        original = store.record_events
        release = threading.Event()

        def slow(*args: object, **kwargs: object) -> TrackResponse:
            release.wait(10)
            return original(*args, **kwargs)  # type: ignore[arg-type]

        store.record_events = slow  # type: ignore[method-assign]
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            committer.submit([_event("e1")], timeout=0.2)
        assert time.monotonic() - started < 5
        release.set()
        committer.close()  # the slow commit still completes: the event is stored
        with store.read() as view:
            assert view.count("events") == 1


def test_exposures_of_a_failed_commit_are_dropped_and_counted(tmp_path: Path) -> None:
    # A real LMDB failure: an event id too long for a key (the servicer refuses those; the committer is
    # called directly here). Its Track call fails; the exposures waiting with it are dropped and counted,
    # not put back to ride (and fail) with every later commit.
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        reported: list[tuple[str, int]] = []
        committer = GroupCommitter(
            store, ActivityLimits(), exposure_flush_s=60.0, on_exposures_dropped=lambda *r: reported.append(r)
        )
        committer.note_exposures([b"\x81\xa1k\xa8exposure", b"\x81\xa1k\xa8exposure"])
        with pytest.raises(Exception, match="MDB_BAD_VALSIZE"):
            committer.submit([_event("x" * 600)], timeout=10)
        assert committer.submit([_event("e1")], timeout=10).accepted == 1
        assert store.outbox_pending() == 1  # e1 alone: the exposures went
        assert committer.exposures_dropped == 2 and reported == [("commit_failed", 2)]
        committer.close()


def test_close_ends_promptly_when_commits_keep_failing(tmp_path: Path) -> None:
    """An exposure record that can never fit in the map (2 MiB in a 1 MiB one): its commit fails once and
    the record is dropped, not taken again every flush interval, nor in a loop once the committer is
    closing (which kept close() from returning)."""
    with Store(tmp_path / "s", map_size=1 << 20) as store:
        original = store.record_events
        calls = [0]

        def counted(*args: object, **kwargs: object) -> TrackResponse:
            calls[0] += 1
            return original(*args, **kwargs)  # type: ignore[arg-type]

        store.record_events = counted  # type: ignore[method-assign]
        committer = GroupCommitter(store, ActivityLimits(), exposure_flush_s=0.05)
        committer.note_exposures([b"x" * (2 << 20)])
        time.sleep(0.5)  # ten flush intervals
        in_service = calls[0]
        closing = threading.Thread(target=committer.close, daemon=True)
        started = time.monotonic()
        closing.start()
        closing.join(5)
        print(
            f"commits tried: {in_service} in 0.5 s, {calls[0]} by the end; close alive: {closing.is_alive()}"
        )
        assert not closing.is_alive(), f"close() still running after 5 s ({calls[0]} commits tried)"
        assert time.monotonic() - started < 1
        assert in_service == calls[0] == 1 and committer.exposures_dropped == 1


def _decision(i: int) -> tuple[str, DecideRequest, DecideResponse]:
    request = DecideRequest(
        f"u{i}", "", Context(country="DE"), frozenset({"analytics"}), (PlacementRequest("home", 2),), now_ms=5
    )
    items = [ItemResult(f"i{i}", 1.5, "embedding"), ItemResult("i9", 0.5, "embedding")]
    placements = [PlacementDecision("home", items, strategy="embedding"), PlacementDecision("hero")]
    return f"d{i:031d}", request, DecideResponse(3, placements, segments=("s",))


def test_exposures_noted_reach_the_outbox_in_order_within_the_flush_interval(tmp_path: Path) -> None:
    """Decide appends its records (no lock, no wake-up); the committer takes them within its flush
    interval, in the order they came, with no Track call to ride with."""
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        committer = GroupCommitter(store, ActivityLimits(), exposure_flush_s=0.05)
        records = [r for i in range(100) for r in exposure_records(*_decision(i))]
        for i in range(0, len(records), 2):
            committer.note_exposures(records[i : i + 2])
        deadline = time.monotonic() + 5
        while store.outbox_pending() < len(records) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [record for _, record in store.outbox_batch(1000)] == records
        committer.close()


def test_exposures_past_the_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        reported: list[tuple[str, int]] = []
        committer = GroupCommitter(
            store,
            ActivityLimits(),
            exposure_flush_s=60.0,
            max_exposures=5,
            on_exposures_dropped=lambda *r: reported.append(r),
        )
        for i in range(4):
            committer.note_exposures(exposure_records(*_decision(i)))  # 2 records each
        assert reported == [("queue_full", 2), ("queue_full", 2)]
        committer.close()  # commits the four waiting
        assert store.outbox_pending() == 4 and committer.exposures_dropped_by["queue_full"] == 4


def test_exposure_records_decode_to_one_map_of_every_field() -> None:
    decision_id, request, decision = _decision(7)
    home, hero = (msgpack.unpackb(r) for r in exposure_records(decision_id, request, decision))
    assert home == {
        "k": "exposure",
        "id": f"{decision_id}:home",
        "d": decision_id,
        "u": "u7",
        "s": "",
        "p": "home",
        "c": "",
        "x": "",
        "v": "",
        "pr": 1.0,
        "st": "embedding",
        "f": 0,
        "i": ["i7", "i9"],
        "ct": "",
        "ch": "",
        "co": "DE",
        "dv": "",
        "sv": 3,
        "sg": ["s"],
        "ts": 5,
        "bs": "",
        "cx": [],
    }
    assert len(hero) == 22 and hero["i"] == [] and hero["id"] == f"{decision_id}:hero"
