"""The LMDB store: atomic snapshot replacement, zero-copy model arrays, durable idempotent events."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.records import (
    Activity,
    RecordError,
    decode_activity,
    decode_array,
    encode_activity,
    encode_array,
)
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Store
from edgewise.sync import snapshot as snapshot_module
from edgewise.sync.bundle import BundleError, load_bundle
from edgewise.sync.snapshot import apply_bundle


def _event(event_id: str, kind: str = "view", item: str = "i1", user: str = "u1") -> Event:
    return Event(event_id, kind, user, "", item, "", "", 0.0, 1_000)


def test_array_codec_roundtrip_is_zero_copy() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    buf = encode_array(a)
    b = decode_array(memoryview(buf))
    assert b.shape == (3, 4) and b.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not b.flags.writeable and not b.flags.owndata
    with pytest.raises(RecordError):
        decode_array(buf[:-4])
    with pytest.raises(ValueError):
        encode_array(np.zeros((2, 2, 2), dtype=np.float32))


def test_apply_bundle_replaces_everything_and_records_the_version(tmp_path: Path, bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    with Store(tmp_path / "s", map_size=1 << 30) as store:
        assert not store.has_snapshot()
        apply_bundle(store, bundle)
        with store.read() as view:
            assert view.version == bundle.version
            assert view.count("items") == len(bundle.items)
            assert view.count("profiles") == len(bundle.profiles)
            emb = view.array("item_embeddings")
            assert emb is not None
            np.testing.assert_array_equal(emb, bundle.item_embeddings)
            profile = view.profile(bundle.profiles[0].id)
            assert profile is not None and profile.consent == bundle.profiles[0].consent
            generation = view.generation
        apply_bundle(store, bundle)
        with store.read() as view:
            assert view.generation == generation + 1


def _holds(store: Store, user: str) -> list[str]:
    """What the store keeps of `user`: profile, live activity, outbox entries."""
    found = []
    with store.read() as view:
        if view.profile(user) is not None:
            found.append("profile")
        if view.activity(f"u:{user}") is not None:
            found.append("activity")
    if any(msgpack.unpackb(p, raw=False).get("u") == user for _, p in store.outbox_batch(10_000)):
        found.append("outbox")
    return found


def test_a_bundle_load_is_a_snapshot_apply_and_purges_users_newly_forgotten_in_it(
    tmp_path: Path, bundle_dir: Path
) -> None:
    """Bundle files carry no `forgotten` records (docs/bundle-format.md), but their records go through
    the one replicated apply the syncer uses: with such a record among them, the user is purged, the
    profile the same snapshot brings included."""
    bundle = load_bundle(bundle_dir)
    user, other = bundle.profiles[0].id, bundle.profiles[1].id
    with Store(tmp_path / "s", map_size=1 << 30) as store:
        info = apply_bundle(store, bundle)
        assert store.snapshot_info() == info and info.source == "bundle" and info.version == bundle.version
        store.record_events([_event("e1", user=user), _event("e2", user=other)], ActivityLimits())
        assert _holds(store, user) == _holds(store, other) == ["profile", "activity", "outbox"]
        with store.read() as view:
            generation = view.generation
        changes = [*snapshot_module._bundle_changes(bundle), ("forgotten", user.encode(), b"\0" * 8)]
        assert store.apply_replicated(
            bundle.version, changes, snapshot=True, info=info, check=snapshot_module._check_state
        )
        assert _holds(store, user) == []
        assert _holds(store, other) == ["profile", "activity", "outbox"]
        with store.read() as view:
            assert view.generation == generation + 1 and view.count("forgotten") == 1
        # The same snapshot again: nobody is newly forgotten; the bundle's profile stays this time.
        store.apply_replicated(bundle.version, changes, snapshot=True, info=info)
        assert _holds(store, user) == ["profile"]


def test_a_bundle_whose_state_does_not_build_is_refused_and_changes_nothing(
    tmp_path: Path, bundle_dir: Path
) -> None:
    bundle = load_bundle(bundle_dir)
    with Store(tmp_path / "s", map_size=1 << 30) as store:
        info = apply_bundle(store, bundle)
        with store.read() as view:
            before = (view.generation, view.version, view.replicated_digest())
        broken = dataclasses.replace(bundle, version=bundle.version + 1, rules_doc={"placements": 5})
        with pytest.raises(BundleError, match=r"do not make a servable state.*placements: must be an object"):
            apply_bundle(store, broken)
        with store.read() as view:
            assert (view.generation, view.version, view.replicated_digest()) == before
        assert store.snapshot_info() == info


def test_a_reader_sees_old_or_new_snapshot_never_a_mix(tmp_path: Path, bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    with Store(tmp_path / "s", map_size=1 << 30) as store:
        apply_bundle(store, bundle)
        with store.read() as view:
            before = view.version
            n_items = view.count("items")
            # A whole new snapshot commits while this read transaction is open ...
            store.apply_replicated(99, [], snapshot=True, info=SnapshotInfo(version=99))
            # ... and this view still sees the old one, entirely.
            assert view.version == before
            assert view.count("items") == n_items
            assert view.array("item_embeddings") is not None
        with store.read() as view:
            assert view.version == 99
            assert view.count("items") == 0
            assert view.array("item_embeddings") is None


def _killed_mid_apply(path: str, bundle_path: str) -> None:
    bundle = load_bundle(bundle_path)
    store = Store(path, map_size=1 << 30)

    def slow_items():  # type: ignore[no-untyped-def]
        for n in range(10_000_000):
            if n == 1000:
                os.kill(os.getpid(), signal.SIGKILL)
            yield "items", f"x{n}".encode(), b"junk"

    version = bundle.version + 1
    store.apply_replicated(version, slow_items(), snapshot=True, info=SnapshotInfo(version=version))


@pytest.mark.slow
def test_kill_9_mid_apply_leaves_the_previous_snapshot(tmp_path: Path, bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    with Store(tmp_path / "s", map_size=1 << 30) as store:
        apply_bundle(store, bundle)
    proc = mp.get_context("spawn").Process(
        target=_killed_mid_apply, args=(str(tmp_path / "s"), str(bundle_dir))
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    with Store(tmp_path / "s", map_size=1 << 30) as store, store.read() as view:
        assert view.version == bundle.version
        assert view.count("items") == len(bundle.items)
        assert view.item("x0") is None


def test_record_events_dedupes_and_updates_activity(tmp_path: Path) -> None:
    limits = ActivityLimits(max_views=3)
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        r = store.record_events(
            [_event("e1", item="i1"), _event("e2", item="i2"), _event("e1", item="i9")], limits
        )
        assert (r.accepted, r.duplicates) == (2, 1)
        r = store.record_events([_event("e2"), _event("e3", "add_to_cart", "i5")], limits)
        assert (r.accepted, r.duplicates) == (1, 1)
        for n in range(4, 10):
            store.record_events([_event(f"e{n}", item=f"i{n}")], limits)
        with store.read() as view:
            activity = view.activity("u:u1")
            assert activity is not None
            assert [v for v, _ in activity.views] == ["i7", "i8", "i9"]  # bounded, most recent last
            assert activity.cart_items() == ("i5",)
            assert view.count("outbox") == 9
            assert view.count("events") == 9
        store.record_events([_event("e-buy", "purchase", "i5")], limits)
        with store.read() as view:
            activity = view.activity("u:u1")
            assert activity is not None and activity.cart == () and activity.purchases[0][0] == "i5"


@pytest.mark.slow
def test_events_survive_kill_9_after_acknowledgement(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_record_then_hang, args=(str(tmp_path / "s"), ready))
    proc.start()
    assert ready.wait(30)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    with Store(tmp_path / "s", map_size=1 << 28) as store, store.read() as view:
        assert view.count("events") == 200


def _record_then_hang(path: str, ready: object) -> None:
    with Store(path, map_size=1 << 28) as store:
        for n in range(200):
            store.record_events([_event(f"e{n}")], ActivityLimits())
        ready.set()  # type: ignore[attr-defined]
        time.sleep(60)


def test_what_is_kept_follows_the_event_s_consent(tmp_path: Path) -> None:
    from dataclasses import replace

    with Store(tmp_path / "s", map_size=1 << 28) as store:
        base = _event("e-none", item="i1", user="u-x")
        store.record_events([replace(base, analytics=False, personalization=False)], ActivityLimits())
        store.record_events([replace(base, event_id="e-an", personalization=False)], ActivityLimits())
        store.record_events([replace(base, event_id="e-pe", analytics=False, item_id="i2")], ActivityLimits())
        r = store.record_events([replace(base, analytics=False, personalization=False)], ActivityLimits())
        assert (r.accepted, r.duplicates) == (0, 1)  # the id alone still makes Track idempotent
        with store.read() as view:
            assert view.count("events") == 3
            assert view.count("outbox") == 1  # only the analytics one
            activity = view.activity("u:u-x")
            assert activity is not None and [i for i, _ in activity.views] == ["i2"]  # only personalization


def test_activity_expires_after_its_ttl() -> None:
    from edgewise.core.activity import apply_event, expire
    from edgewise.core.records import Activity

    limits = ActivityLimits(ttl_ms=1000, purchases_ttl_ms=10_000)
    a = Activity()
    a = apply_event(a, Event("1", "view", "u", "", "i1", "", "", 0.0, 1_000), limits)
    a = apply_event(a, Event("2", "purchase", "u", "", "i2", "", "", 0.0, 1_500), limits)
    a = apply_event(a, Event("3", "view", "u", "", "i3", "", "", 0.0, 2_600), limits)
    assert [i for i, _ in a.views] == ["i3"]  # i1 expired when i3 arrived
    assert expire(a, 5_000, limits).views == ()
    assert [i for i, _ in expire(a, 5_000, limits).purchases] == ["i2"]
    assert expire(a, 20_000, limits).purchases == ()


def test_activity_pairs_of_other_types_are_converted() -> None:
    # Our encoder writes (str, int) pairs, taken as they are; anything else is converted as before.
    activity = Activity((("i1", 5), ("i2", 7)), (), (("i3", 9),), (("i1", 2),))
    assert decode_activity(encode_activity(activity)) == activity
    odd = msgpack.packb({"views": [[1, 5.0], ["i2", 7]], "imp": [["i1", True]]})
    decoded = decode_activity(odd)
    assert decoded.views == (("1", 5), ("i2", 7))
    assert decoded.impressions == (("i1", 1),)
    assert decoded.cart == () and decoded.purchases == ()
