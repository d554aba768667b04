"""The control plane's bandit learner (sync/bandit_learner.py) over real stores: a crash between two
publishes neither loses nor repeats a count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from edgewise.core.activity import Event
from edgewise.core.bandit_learning import LearningSchedule
from edgewise.sync.bandit_learner import CURSOR, BanditLearner
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.sync.event_store import EventStore
from tests.test_bandit_learning import T0, rules_doc

NEVER = LearningSchedule(every_rewards=10**9, every_exposures=10**9, every_seconds=1e9)


def _exposure(n: int, arm: str) -> tuple[str, str, bytes]:
    record = {
        "k": "exposure",
        "id": f"d{n}:promo_slot",
        "d": f"d{n}",
        "u": f"u{n}",
        "s": "",
        "p": "promo_slot",
        "c": "promo",
        "x": "promo",
        "v": arm,
        "pr": 0.5,
        "st": "bandit",
        "f": 0,
        "i": [],
        "ct": f"promo_{arm}",
        "ts": T0 + n * 1_000,
    }
    return "exposure", str(record["id"]), msgpack.packb(record, use_bin_type=True)


def _click(n: int, tag: str = "") -> tuple[str, str, bytes]:
    event = Event(
        f"click-{n}{tag}", "click", f"u{n}", "", "", f"d{n}", "promo_slot", 0.0, T0 + n * 1_000 + 500
    )
    return "event", event.event_id, event.encode()


class _Lock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _stores(root: Path) -> tuple[ControlStore, EventStore]:
    store = ControlStore(root / "control", map_size=256 << 20)
    store.commit([RecordChange("rules", "rules", msgpack.packb(rules_doc(), use_bin_type=True))], kind="push")
    return store, EventStore(root / "events", map_size=256 << 20)


def _learner(store: ControlStore, events: EventStore) -> BanditLearner:
    return BanditLearner(store, events, _Lock(), lambda: None, schedule=NEVER, batch=7)


def _arms(store: ControlStore) -> Any:
    with store.read() as view:
        raw = view.get("rules", "rules")
    assert raw is not None
    return msgpack.unpackb(raw, raw=False)["bandits"]["promo"]["arms"]


FIRST = [_exposure(n, "ship" if n % 3 else "ten") for n in range(40)] + [_click(n) for n in range(0, 40, 4)]
# After the first publish: more exposures, late clicks on exposures published before (counted now), and
# second clicks of exposures already rewarded (never counted twice).
SECOND = (
    [_exposure(n, "ten" if n % 2 else "ship") for n in range(40, 70)]
    + [_click(n) for n in range(2, 40, 8)]
    + [_click(n, "-again") for n in range(0, 40, 8)]
    + [_click(n) for n in range(41, 70, 3)]
)


def _read_all(learner: BanditLearner) -> None:
    while learner.read_once():
        pass


def _feed(learner: BanditLearner, events: EventStore, records: list[tuple[str, str, bytes]]) -> None:
    """Store `records` upstream and let the learner count every record stored."""
    events.ingest("edge-a", records)
    _read_all(learner)


def _first_published(root: Path) -> tuple[ControlStore, EventStore, BanditLearner]:
    """Stores under `root` and a learner that has counted and published FIRST."""
    store, events = _stores(root)
    learner = _learner(store, events)
    _feed(learner, events, FIRST)
    learner.publish(0.0)
    return store, events, learner


def test_a_crash_between_publishes_loses_and_repeats_nothing(tmp_path: Path) -> None:
    # Reference: one learner, publishing after FIRST and after SECOND.
    store, events, learner = _first_published(tmp_path / "reference")
    _feed(learner, events, SECOND)
    learner.publish(1.0)
    expected = _arms(store)

    # The same, but the learner dies after counting SECOND and before publishing it.
    store2, events2, first = _first_published(tmp_path / "crash")
    _feed(first, events2, SECOND)
    assert first.stats.new_rewards > 0 and store2.cursor(CURSOR) == len(FIRST)
    del first  # killed: its unpublished counts are gone with it

    second = _learner(store2, events2)
    assert second.position == len(FIRST)  # the published cursor, kept with the posteriors
    assert second.stats.new_exposures == 0 and second.stats.new_rewards == 0
    _read_all(second)
    second.publish(1.0)
    assert _arms(store2) == expected
    assert store2.cursor(CURSOR) == len(FIRST) + len(SECOND)
    # SECOND changed the posteriors
    assert expected != _arms(_first_published(tmp_path / "first-only")[0])


def test_a_restart_without_new_records_publishes_nothing_new(tmp_path: Path) -> None:
    store, events, _ = _first_published(tmp_path)
    published = _arms(store)
    again = _learner(store, events)
    _read_all(again)
    assert again.stats.new_exposures == 0 and again.stats.new_rewards == 0
    again.publish(1.0)
    assert _arms(store) == published  # nothing counted twice


def test_the_records_before_the_cursor_are_re_read_by_the_first_read_not_when_built(tmp_path: Path) -> None:
    # The control plane builds its learner before it serves: building it must not read the event store
    # (200,000 records took 4.4 s here); the learner's thread re-reads them on its first read.
    store, events, _ = _first_published(tmp_path)
    reads: list[int] = []
    read = events.batch_after

    def counted(after: int, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        reads.append(after)
        return read(after, limit)

    events.batch_after = counted  # type: ignore[method-assign]
    learner = _learner(store, events)
    assert reads == [] and learner.position == len(FIRST)
    assert learner.read_once() == 0  # nothing new after the cursor
    assert reads[0] == 0  # the re-read started from the beginning (fewer records than the replay)
    assert learner.stats.new_exposures == 0  # re-read, not counted
