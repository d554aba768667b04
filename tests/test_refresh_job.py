"""The refresh jobs (sync/model_refresh.py) on a real control store and event store: what they commit,
once, and only what changed; new items; rollback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest

from edgewise.core.model_refresh import NeighborsRefresh, NewItems, PopularityRefresh, TrendingRefresh
from edgewise.core.records import decode_array, decode_item
from edgewise.sync.bundle import load_bundle
from edgewise.sync.changes import bundle_records, parse_delta
from edgewise.sync.control_store import ControlStore
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh import RefreshJob
from tests.refresh_support import N_ITEMS, T0, event, exposure, tiny_bundle

DAY = 86_400_000


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[ControlStore, EventStore]]:
    bundle = load_bundle(tiny_bundle(tmp_path / "bundle"))
    with ControlStore(tmp_path / "control") as store, EventStore(tmp_path / "events") as events:
        store.replace_all(bundle_records(bundle), kind="push")
        yield store, events


def _job(store: ControlStore, events: EventStore, model: object, **kwargs: object) -> RefreshJob:
    commits: list[int] = []
    return RefreshJob(store, events, threading.Lock(), lambda: commits.append(1), model, every=60, **kwargs)  # type: ignore[arg-type]


def _array(store: ControlStore, name: str) -> np.ndarray:
    with store.read() as view:
        raw = view.get("models", name)
    assert raw is not None
    return np.array(decode_array(raw))


def test_popularity_refresh_commits_once_and_only_what_changed(
    stores: tuple[ControlStore, EventStore],
) -> None:
    store, events = stores
    job = _job(store, events, PopularityRefresh(half_life_ms=7 * DAY))
    assert job.run_once() is None  # no events yet
    events.ingest("n1", [event(f"e{n}", "purchase", f"u{n}", "i5") for n in range(3)])
    events.ingest("n1", [exposure("d1", "u9", "DE", []), event("e9", "view", "u9", "i4", decision="d1")])
    head = store.head_version()
    info = job.run_once()
    assert info is not None and not isinstance(info, int)
    assert info.kind == "refresh" and info.description.startswith("refresh popularity: 4 events; events 1..5")
    changed = {(c.namespace, c.key) for _, changes in store.commits_after(head) for c in changes}
    assert changed == {
        ("models", "item_popularity"),
        ("models", "item_popularity@country:DE"),
        ("rules", "manifest"),
    }
    np.testing.assert_allclose(_array(store, "item_popularity"), [6, 5, 4, 3, 3, 16])
    # u0..u2's profiles say DE; the view's decision was in DE (its exposure) while u9's profile says FR:
    # the decision's context wins
    np.testing.assert_allclose(_array(store, "item_popularity@country:DE"), [6, 5, 4, 3, 3, 16])
    assert store.cursor("refresh:popularity") == 5
    assert job.run_once() is None  # nothing new: no commit
    assert store.head_version() == info.version
    # a user without context counts in the profile's country
    events.ingest("n1", [event("e10", "view", "u0", "i3")])
    job.run_once()
    np.testing.assert_allclose(_array(store, "item_popularity@country:DE"), [6, 5, 4, 4, 3, 16])


def test_a_refresh_rolls_back_like_any_push(stores: tuple[ControlStore, EventStore]) -> None:
    store, events = stores
    before = store.head_version()
    events.ingest("n1", [event(f"e{n}", "view", f"u{n}", "i5") for n in range(4)])
    info = _job(store, events, PopularityRefresh(half_life_ms=7 * DAY)).run_once()
    assert info is not None and not isinstance(info, int)
    assert _array(store, "item_popularity")[5] == 5
    rolled = store.rollback(before)
    assert rolled is not None and rolled.kind == "rollback"
    np.testing.assert_allclose(_array(store, "item_popularity"), np.arange(N_ITEMS, 0, -1))
    with store.read() as view:
        manifest = msgpack.unpackb(view.get("rules", "manifest"), raw=False)
    assert "refreshed" not in manifest


def test_new_items_get_a_row_in_every_array_as_a_delta_would(stores: tuple[ControlStore, EventStore]) -> None:
    store, events = stores
    job = _job(store, events, PopularityRefresh(half_life_ms=7 * DAY), new_items=NewItems(min_units=2))
    events.ingest("n1", [event("a", "view", "u1", "fresh"), event("b", "view", "u1", "bad id!")])
    job.run_once()
    with store.read() as view:
        assert view.get("items", "fresh") is None  # one user so far
    events.ingest("n1", [event("c", "purchase", "u2", "fresh"), event("d", "view", "u2", "bad id!")])
    info = job.run_once()
    assert info is not None and not isinstance(info, int) and "1 new items" in info.description
    with store.read() as view:
        record = decode_item("fresh", view.get("items", "fresh"))
        assert view.get("items", "bad id!") is None  # not an item id a bundle allows
        models = dict(view.items("models"))
    assert record.row == N_ITEMS and record.regions == ("*",) and record.flags == {"from_events": True}
    assert all(decode_array(raw).shape[0] == N_ITEMS + 1 for raw in models.values())
    popularity = decode_array(models["item_popularity"])
    assert popularity[N_ITEMS] == pytest.approx(5.0)  # the purchase: the view came before its row
    assert decode_array(models["item_neighbors"])[N_ITEMS].tolist() == [-1, -1]


def test_the_new_item_rows_are_those_of_a_delta(tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle(tmp_path / "bundle"))
    with (
        ControlStore(tmp_path / "a") as a,
        ControlStore(tmp_path / "b") as b,
        EventStore(tmp_path / "ev") as events,
    ):
        for store in (a, b):
            store.replace_all(bundle_records(bundle), kind="push")
        events.ingest("n1", [event(f"e{u}", "impression", f"u{u}", "fresh") for u in (5, 6)])
        events.ingest("n1", [event(f"v{u}", "view", f"u{u}", "fresh", ts=T0 + 1) for u in (5, 6)])
        # trending-free popularity job with new items vs the same item pushed as a delta line
        _job(a, events, PopularityRefresh(half_life_ms=7 * DAY), new_items=NewItems(min_units=2)).run_once()
        line = {
            "op": "upsert",
            "item": {
                "id": "fresh",
                "category": "new",
                "price": 0.0,
                "regions": ["*"],
                "tags": ["from_events"],
                "launch_date": "2025-11-24",
                "flags": {"from_events": True},
            },
            "popularity": 2.0,
        }
        with b.read() as view:
            b.commit(parse_delta([json.dumps(line)], view), kind="delta")
        with a.read() as va, b.read() as vb:
            for namespace in ("items", "models"):
                assert dict(va.items(namespace)) == dict(vb.items(namespace)), namespace


def test_trending_and_neighbors_refresh(stores: tuple[ControlStore, EventStore]) -> None:
    store, events = stores
    events.ingest("n1", [event(f"t{u}", "view", f"u{u}", "i2", ts=T0 + DAY) for u in range(3)])
    events.ingest("n1", [event(f"s{u}", "view", f"u{u}", "i4", ts=T0 + DAY + 1) for u in range(3)])
    events.ingest("n1", [event("old", "view", "u0", "i0", ts=T0 - 40 * DAY)])  # outside the window
    trending = _job(store, events, TrendingRefresh(days=5)).run_once()
    assert trending is not None and not isinstance(trending, int)
    counts = _array(store, "item_daily_counts")
    assert counts.shape == (N_ITEMS, 3)  # the bundle's width
    assert counts[2].tolist() == [1, 1, 3] and counts[0].tolist() == [1, 1, 0]
    with store.read() as view:
        manifest = msgpack.unpackb(view.get("rules", "manifest"), raw=False)
    assert manifest["daily_counts_end_ms"] == (T0 + DAY) // DAY * DAY
    job = _job(store, events, NeighborsRefresh(window_ms=30 * DAY, k=5, min_support=2))
    info = job.run_once()
    assert (
        info is not None
        and not isinstance(info, int)
        and info.description.startswith("refresh neighbors: 2 items")
    )
    nb = _array(store, "item_neighbors")
    assert nb[2].tolist() == [4, -1] and nb[4].tolist() == [2, -1]
    assert nb[0].tolist() == [1, -1]  # i0's one old view is outside the window: kept from the bundle
    assert job.run_once() is None  # no new event since
