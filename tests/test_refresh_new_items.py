"""New items' counts per unknown id kept in the control store beside the refresh cursor
(sync/model_refresh.py, docs/refresh.md "New items"): across a restart, an aborted commit, a kill, a
cursor moved by another replica, and within the bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from edgewise.core.model_refresh import NewItems, PopularityRefresh
from edgewise.sync.bundle import load_bundle
from edgewise.sync.changes import bundle_records
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh import NEW_ITEMS_STATE, RefreshJob
from tests.refresh_support import N_ITEMS, T0, event, tiny_bundle

DAY = 86_400_000
STATE = NEW_ITEMS_STATE + "popularity"


def _push(path: Path, bundle_dir: Path) -> None:
    with ControlStore(path) as store:
        store.replace_all(bundle_records(load_bundle(tiny_bundle(bundle_dir))), kind="push")


def _job(store: ControlStore, events: EventStore, min_units: int, **kwargs: Any) -> RefreshJob:
    return RefreshJob(
        store,
        events,
        threading.Lock(),
        lambda: None,
        PopularityRefresh(half_life_ms=7 * DAY),
        every=60,
        new_items=NewItems(min_units, **kwargs),
    )


def _has(store: ControlStore, item: str) -> bool:
    with store.read() as view:
        return view.get("items", item) is not None


def _record(store: ControlStore) -> dict[str, Any]:
    raw = store.consumer_state(STATE)
    assert raw is not None
    at, ids = msgpack.unpackb(raw, raw=False)
    return {"at": at, "ids": ids}


def test_the_counts_survive_a_restart(tmp_path: Path) -> None:
    _push(tmp_path / "control", tmp_path / "bundle")
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        events.ingest("n1", [event("a", "view", "u1", "fresh")])
        _job(store, events, 2).run_once()
        assert not _has(store, "fresh")
        assert _record(store) == {"at": 1, "ids": [["fresh", T0, ["u1"]]]}
    # the control plane stopped and started: new stores, a new job over the same files
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        events.ingest("n1", [event("b", "view", "u2", "fresh", ts=T0 + 5)])
        job = _job(store, events, 2)
        info = job.run_once()
        assert info is not None and not isinstance(info, int) and "1 new items" in info.description
        assert _has(store, "fresh") and job.items_added == 1
        assert _record(store) == {"at": 2, "ids": []}


def test_an_aborted_commit_neither_loses_nor_repeats(tmp_path: Path) -> None:
    _push(tmp_path / "control", tmp_path / "bundle")
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        job = _job(store, events, 3)
        events.ingest("n1", [event("a", "view", "u1", "fresh"), event("x", "view", "u1", "i1")])
        job.run_once()
        before = (store.cursor("refresh:popularity"), _record(store))
        assert before == (2, {"at": 2, "ids": [["fresh", T0, ["u1"]]]})

        def crash(*_: object) -> int:
            raise RuntimeError("the process dies inside the commit's transaction")

        events.ingest(
            "n1",
            [
                event("b", "view", "u1", "fresh"),
                event("c", "view", "u2", "fresh"),
                event("y", "view", "u2", "i2"),
            ],
        )
        store.on_commit = crash
        with pytest.raises(RuntimeError):
            job.run_once()
        store.on_commit = None
        assert (store.cursor("refresh:popularity"), _record(store)) == before  # nothing of the run landed
        job.run_once()  # the same job, its counts reloaded from the store: u1 and u2, once each
        assert _record(store) == {"at": 5, "ids": [["fresh", T0, ["u1", "u2"]]]}
        assert not _has(store, "fresh")
        events.ingest("n1", [event("d", "view", "u3", "fresh")])
        job.run_once()
        assert _has(store, "fresh")


def test_the_bound_holds_across_a_restart(tmp_path: Path) -> None:
    _push(tmp_path / "control", tmp_path / "bundle")
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        events.ingest("n1", [event(f"e{n}", "view", "u1", f"new{n}", ts=T0 + n) for n in range(5)])
        job = _job(store, events, 2, capacity=3)
        job.run_once()
        assert [entry[0] for entry in _record(store)["ids"]] == ["new2", "new3", "new4"]
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        job = _job(store, events, 2, capacity=2)  # a smaller bound after the restart
        events.ingest("n1", [event("f", "view", "u2", "new4"), event("g", "view", "u2", "new0")])
        job.run_once()
        assert job.new_items is not None and job.new_items.pending() == 2
        assert [entry[0] for entry in _record(store)["ids"]] == ["new3", "new0"]
        assert _has(store, "new4") and not _has(store, "new0")


def test_a_cursor_moved_elsewhere_rebuilds_the_counts_from_the_events(tmp_path: Path) -> None:
    """The central tier: another replica's refresh moved the cursor through the log (which carries the
    cursor, not the counts); this store's record is as of an older position."""
    _push(tmp_path / "control", tmp_path / "bundle")
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        events.ingest("n1", [event("a", "view", "u1", "fresh"), event("b", "view", "u1", "other")])
        _job(store, events, 3).run_once()
        events.ingest("n1", [event("c", "view", "u2", "fresh", ts=T0 - 10), event("d", "view", "u3", "i2")])
        store.commit_at([], kind="refresh", cursor="refresh:popularity", position=4)  # as apply_commit does
        assert _record(store)["at"] == 2
        events.ingest("n1", [event("e", "view", "u4", "other")])
        job = _job(store, events, 3)
        job.run_once()
        assert _record(store) == {
            "at": 5,
            "ids": [["fresh", T0 - 10, ["u1", "u2"]], ["other", T0, ["u1", "u4"]]],
        }


def test_an_unreadable_record_is_rebuilt(tmp_path: Path) -> None:
    _push(tmp_path / "control", tmp_path / "bundle")
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        events.ingest("n1", [event("a", "view", "u1", "fresh")])
        store.commit_at(
            [], kind="refresh", cursor="refresh:popularity", position=1, consumer_state={STATE: b"\xc1"}
        )
        events.ingest("n1", [event("b", "view", "u2", "fresh")])
        _job(store, events, 2).run_once()
        assert _has(store, "fresh")


_CHILD = textwrap.dedent(
    """
    import sys, threading
    from edgewise.core.model_refresh import NewItems, PopularityRefresh
    from edgewise.sync.control_store import ControlStore
    from edgewise.sync.event_store import EventStore
    from edgewise.sync.model_refresh import RefreshJob

    with ControlStore(sys.argv[1]) as store, EventStore(sys.argv[2]) as events:
        job = RefreshJob(store, events, threading.Lock(), lambda: None, PopularityRefresh(7 * 86_400_000),
                         every=60, new_items=NewItems(4), batch=3)
        while job.run_once() is not None:
            pass
    """
)


def _events(n: int) -> list[tuple[str, str, bytes]]:
    """`n` views: of 12 unknown ids by 5 users, round robin (each id needs 4 users: they get rows), and
    of 7 more by 3 users (they stay counted)."""
    return [
        event(f"e{k}", "view", f"u{k % 5}", f"new{k % 12}", ts=T0 + k)
        if k % 2
        else event(f"e{k}", "view", f"v{k % 3}", f"rare{k % 7}", ts=T0 + k)
        for k in range(n)
    ]


def _final(store: ControlStore) -> tuple[set[str], list[Any]]:
    with store.read() as view:
        added = {key for key, _ in view.items("items")} - {f"i{i}" for i in range(N_ITEMS)}
    return added, _record(store)["ids"]


@pytest.mark.slow
def test_a_kill_between_runs_neither_loses_nor_repeats(tmp_path: Path) -> None:
    ingested = _events(150)
    _push(tmp_path / "ref", tmp_path / "bundle")
    with ControlStore(tmp_path / "ref") as store, EventStore(tmp_path / "ref-events") as events:
        events.ingest("n1", ingested)
        job = _job(store, events, 4)
        job.batch = 3
        while job.run_once() is not None:
            pass
        expected = _final(store)
    assert expected[0] and expected[1]  # some ids got rows, some are still counted

    _push(tmp_path / "control", tmp_path / "bundle")
    with EventStore(tmp_path / "events") as events:
        events.ingest("n1", ingested)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "control"), str(tmp_path / "events")], env=env
    )
    try:
        deadline = time.monotonic() + 30
        with ControlStore(tmp_path / "control") as store:
            while store.cursor("refresh:popularity") < 30 and time.monotonic() < deadline:
                time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        at = store.cursor("refresh:popularity")
        assert 30 <= at < len(ingested), "the kill landed before the end"
        assert _record(store)["at"] == at  # the counts moved with the cursor
        job = _job(store, events, 4)  # the control plane started again
        job.batch = 3
        while job.run_once() is not None:
            pass
        assert _final(store) == expected


def test_consumer_state_is_written_only_with_its_transaction(tmp_path: Path) -> None:
    with ControlStore(tmp_path / "control") as store:
        assert store.consumer_state("x") is None
        store.commit_at([], kind="refresh", cursor="c", position=3, consumer_state={"x": b"one"})
        assert (store.cursor("c"), store.consumer_state("x")) == (3, b"one")

        def crash(*_: object) -> int:
            raise RuntimeError("abort")

        store.on_commit = crash
        change = RecordChange("rules", "note", b"\xa1x")
        with pytest.raises(RuntimeError):
            store.commit_at([change], kind="refresh", cursor="c", position=4, consumer_state={"x": b"two"})
        store.on_commit = None
        assert (store.cursor("c"), store.consumer_state("x"), store.head_version()) == (3, b"one", 0)
        assert store.cursors() == {"c": 3}  # the state is not a cursor
