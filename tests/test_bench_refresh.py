"""bench.refresh's inputs: the item events make every model change (neighbours too, and other ones each
round) and the embeddings refresh stage a vector for every profile, and the stand-in profile delta upserts
every profile with a new embedding, valid against the state."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from edgewise.bench.refresh import _ids, _item_events, _profiles_delta
from edgewise.core.embedding_slots import GENERATION_MODEL, active_generation
from edgewise.core.model_refresh import NeighborsRefresh
from edgewise.core.records import decode_array, decode_profile
from edgewise.sync.bundle import load_bundle
from edgewise.sync.changes import bundle_records, parse_delta
from edgewise.sync.control_config import RefreshConfig
from edgewise.sync.control_store import ControlStore
from edgewise.sync.embedding_refresh_job import EmbeddingRefreshJob
from edgewise.sync.event_store import EventStore
from edgewise.sync.model_refresh import RefreshJob
from edgewise.sync.model_refresh_jobs import embedding_settings
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


def test_the_bench_events_make_the_embeddings_refresh_stage_every_profile(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """The user half of a refresh round: the control plane's embeddings refresh (hybrid, as the bench runs
    it) gives every profile a vector of the next generation (seen users new ones, the others carried),
    in paced commits, then flips."""
    bundle = load_bundle(bundle_dir)
    items, users = _ids(bundle_dir / "items.jsonl"), _ids(bundle_dir / "profiles.jsonl")
    with ControlStore(tmp_path / "c") as store, EventStore(tmp_path / "e") as events:
        store.replace_all(bundle_records(bundle), kind="push")
        head = store.head_version()
        settings = embedding_settings(RefreshConfig(embeddings=True, embeddings_method="hybrid"))
        per_commit = max(1, len(users) // 4)
        job = EmbeddingRefreshJob(
            store, events, threading.Lock(), lambda: None, settings, every=1,
            commit_profiles=per_commit, commit_pause=0,
        )  # fmt: skip
        events.ingest("bench", _item_events(items, users, "r0", seed=0))
        flip = job.run_once()
        assert flip is not None and not isinstance(flip, int)
        staged = [c for c in store.history(50) if c.version > head and c.version != flip.version]
        assert sum(c.changes for c in staged) == len(users)  # every profile, in paced commits
        assert all(c.changes <= per_commit for c in staged) and len(staged) >= 4
        with store.read() as view:
            generation = decode_array(view.get("models", GENERATION_MODEL) or b"")
            assert active_generation(generation) == 1
            assert all(
                decode_profile(user, raw, 1).embedding is not None for user, raw in view.items("profiles")
            )
