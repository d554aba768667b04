"""Snapshot info: a typed record stored as the msgpack map stores have always held, read from maps that
older versions wrote (unknown keys kept), and written back unchanged."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Store

# The maps the previous code wrote: sync/snapshot.py for a bundle load, sync/edge_sync.py for a commit
OLD_BUNDLE_INFO = {
    "manifest_sha256": "ab" * 32,
    "version": 7,
    "source": "bundle",
    "bundle_path": "/srv/bundles/7",
    "created_at": "2026-11-25T18:00:00Z",
    "generator": "edgewise bundle synth --users 1000",
    "loaded_at_ms": 1_767_225_600_000,
    "items": 500,
    "profiles": 1000,
    "dim": 32,
    "daily_counts_end_ms": 1_767_139_200_000,
    "models": ["item_embeddings", "item_popularity", "item_daily_counts"],
}
OLD_CONTROL_INFO = {
    "version": 42,
    "source": "control",
    "control": "127.0.0.1:7000",
    "shard": "2/4",
    "loaded_at_ms": 1_767_225_600_000,
    "commit_kind": "push",
    "lineage": "5f0c",
    "daily_counts_end_ms": 1_767_139_200_000,
    "bundle_version": 7,
}


def test_every_field_round_trips_and_defaults_are_left_out_of_the_map() -> None:
    info = SnapshotInfo(
        version=3,
        source="control",
        loaded_at_ms=5,
        daily_counts_end_ms=6,
        manifest_sha256="ff",
        bundle_path="/b",
        created_at="2026-01-01T00:00:00Z",
        generator="g",
        items=10,
        profiles=20,
        dim=8,
        models=("item_embeddings", "item_popularity"),
        control="127.0.0.1:1",
        shard="1/2",
        lineage="abc",
        commit_kind="delta",
        bundle_version=2,
        extra={"later_key": [1, 2]},
    )
    assert SnapshotInfo.decode(info.encode()) == info
    assert msgpack.unpackb(SnapshotInfo(version=3, source="bundle").encode()) == {
        "version": 3,
        "source": "bundle",
    }
    assert SnapshotInfo.decode(SnapshotInfo().encode()) == SnapshotInfo()


@pytest.mark.parametrize("old", [OLD_BUNDLE_INFO, OLD_CONTROL_INFO], ids=["bundle", "control"])
def test_maps_older_versions_wrote_read_and_write_back_the_same(old: dict[str, object]) -> None:
    stored = {**old, "key_of_an_older_version": {"x": 1}}
    info = SnapshotInfo.decode(msgpack.packb(stored, use_bin_type=True))
    assert info.version == old["version"] and info.source == old["source"]
    assert info.daily_counts_end_ms == old["daily_counts_end_ms"]
    assert info.extra == {"key_of_an_older_version": {"x": 1}}
    # what the old map said, the new one says, unknown keys included (defaults aside)
    rewritten = msgpack.unpackb(info.encode(), raw=False)
    assert rewritten == {k: v for k, v in stored.items() if v not in ("", 0)}


def test_a_bundle_map_reads_as_a_bundle_and_a_control_map_as_a_control_plane() -> None:
    bundle = SnapshotInfo.from_map(OLD_BUNDLE_INFO)
    assert bundle.models == ("item_embeddings", "item_popularity", "item_daily_counts")
    assert (bundle.items, bundle.profiles, bundle.dim) == (500, 1000, 32)
    assert bundle.manifest_sha256 == "ab" * 32 and bundle.shard == "all" and bundle.lineage == ""
    control = SnapshotInfo.from_map(OLD_CONTROL_INFO)
    assert (control.shard, control.lineage, control.commit_kind) == ("2/4", "5f0c", "push")
    assert control.bundle_version == 7 and control.items == 0 and control.models == ()
    # a control plane map without a shard (before shards): all of them, as edge_sync always read it
    assert SnapshotInfo.from_map({"source": "control", "shard": None}).shard == "all"
    with pytest.raises(ValueError, match="not a map"):
        SnapshotInfo.decode(msgpack.packb([1, 2]))


def test_a_store_holding_an_older_map_reads_it(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 24) as store:
        assert store.snapshot_info() == SnapshotInfo()
        with store._env.begin(write=True) as txn:  # the map as the previous code stored it
            txn.put(b"snapshot", msgpack.packb(OLD_BUNDLE_INFO, use_bin_type=True), db=store._dbs["meta"])
    with Store(tmp_path / "s", map_size=1 << 24, readonly=True) as store:
        info = store.snapshot_info()
        assert info == SnapshotInfo.from_map(OLD_BUNDLE_INFO) and info.version == 7
