"""bench.refresh's inputs: the item events make every model change (neighbours too, and other ones each
round), and the profile delta upserts every profile with a new embedding, valid against the state."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from edgewise.bench.refresh import _ids, _item_events, _profiles_delta
from edgewise.core.model_refresh import NeighborsRefresh
from edgewise.sync.bundle import load_bundle
from edgewise.sync.changes import bundle_records, parse_delta
from edgewise.sync.control_store import ControlStore
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh import RefreshJob
from tests.refresh_support import tiny_bundle

DAY_MS = 86_400_000


def test_the_bench_inputs_change_every_model_each_round(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = load_bundle(bundle_dir)
    items, users = _ids(bundle_dir / "items.jsonl"), _ids(bundle_dir / "profiles.jsonl")
    with ControlStore(tmp_path / "c") as store, EventStore(tmp_path / "e") as events:
        store.replace_all(bundle_records(bundle), kind="push")
        job = RefreshJob(
            store, events, threading.Lock(), lambda: None, NeighborsRefresh(30 * DAY_MS, 20, 2), every=60
        )
        for r in range(2):
            records = _item_events(items, users, f"r{r}", seed=r)
            assert len(records) == 2 * len(items)
            events.ingest("bench", records)
            info = job.run_once()
            assert info is not None and not isinstance(info, int), r  # new neighbours each round
        delta = tmp_path / "profiles.jsonl"
        assert _profiles_delta(bundle_dir, delta, bundle.dim, seed=1) == len(users)
        with store.read() as view:
            changes = parse_delta(delta.read_text().splitlines(), view)
    assert {c.namespace for c in changes} == {"profiles"} and len(changes) == len(users)


def test_the_profile_delta_keeps_attributes_and_consent(tmp_path: Path) -> None:
    root = tiny_bundle(tmp_path / "b")
    out = tmp_path / "d.jsonl"
    assert _profiles_delta(root, out, 4, seed=0) == 10
    first = out.read_text().splitlines()[0]
    assert '"attributes": {"country": "DE"}' in first and '"consent"' in first
    assert np.asarray(json.loads(first)["embedding"]).shape == (4,)
