"""Shadow rollouts on the edge (docs/shadow.md): the comparison, the candidate kept beside the store, the
syncer receiving shadow commits from a real control plane, and the worker's shadow decisions against real
LMDB stores. Real processes: tests/test_shadow_edge.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgewise.core.decisions import (
    DecideRequest,
    DecideResponse,
    FallbackReason,
    ItemResult,
    PlacementDecision,
    PlacementRequest,
)
from edgewise.core.pipeline import Pipeline
from edgewise.core.shadow_compare import compare, overlap_at_k
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Change, Store
from edgewise.edge.heartbeat_stats import shadow_proto
from edgewise.edge.metrics import MetricsLayout, NodeMetrics, WorkerMetrics
from edgewise.edge.servicer import PersonalizerServicer
from edgewise.edge.shadow import ShadowDecider
from edgewise.edge.shadow_stats import ShadowCounter, read_status, write_status
from edgewise.sync.bundle import load_bundle
from edgewise.sync.edge_sync import EdgeSyncer, SyncTarget
from edgewise.sync.shadow_candidate import SHADOW_DIR, ShadowCandidates, read_candidate
from edgewise.sync.shard import parse_shard
from edgewise.sync.snapshot import apply_bundle
from edgewise.sync.wire import Assembler
from edgewise.v1 import sync_pb2
from tests.rollout_support import failing_bundle, recording_control_plane, shadow_messages
from tests.sync_support import wait_for

MAP = 1 << 28
ITEM_PLACEMENTS = (PlacementRequest("home", 8), PlacementRequest("deals", 6))


def ask(user: int, placements: tuple[PlacementRequest, ...] = ITEM_PLACEMENTS) -> DecideRequest:
    return DecideRequest(
        user_id=f"u{user}",
        consent=frozenset({"personalization"}),
        placements=placements,
        now_ms=1_790_000_000_000,
    )


def candidate_changes(bundle: Path, version: int) -> list[Change]:
    """The changes of a shadow commit of `bundle`, as the edge puts them back together."""
    assembler = Assembler()
    messages = shadow_messages(bundle, version, 1.0)
    for message in messages[:-1]:
        assembler.add(message.chunk)
    return assembler.finish(messages[-1].commit)


@pytest.fixture(scope="module")
def bad_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return failing_bundle(bundle_dir, tmp_path_factory.mktemp("bad") / "b")


@pytest.fixture
def live(tmp_path: Path, bundle_dir: Path) -> Iterator[Store]:
    """A node's store serving the conftest bundle."""
    with Store(tmp_path / "data", map_size=MAP) as store:
        apply_bundle(store, load_bundle(bundle_dir))
        yield store


# --- the comparison ------------------------------------------------------------------------------------


def _placement(
    items: list[str], fallback: int = 0, variant: str = "", campaign: str = "c"
) -> PlacementDecision:
    return PlacementDecision(
        "p",
        items=[ItemResult(i, 1.0, "r") for i in items],
        fallback=FallbackReason(fallback),
        variant_id=variant,
        campaign=campaign,
    )


def test_overlap_at_k_is_shared_items_over_the_longer_list() -> None:
    assert overlap_at_k(["a", "b", "c", "d"], ["d", "c", "x", "y"]) == 0.5
    assert overlap_at_k(["a", "b"], ["a", "b", "c", "d"]) == 0.5
    assert overlap_at_k(["a"], ["b"]) == 0.0
    assert overlap_at_k([], []) == 1.0


def test_compare_counts_variants_and_fallbacks_both_ways() -> None:
    served = DecideResponse(
        1,
        [
            _placement(["a", "b"]),
            _placement(["a"], fallback=4),
            _placement([], variant="v1"),
            _placement(["a", "b"]),
        ],
    )
    candidate = DecideResponse(
        2,
        [
            _placement(["b", "c"], fallback=4),
            _placement(["a"]),
            _placement([], variant="v2"),
            _placement(["a", "b"], campaign="other"),
        ],
    )
    c = compare(served, candidate)
    assert (c.placements, c.item_placements, c.overlap_sum) == (4, 3, 0.5 + 1.0 + 1.0)
    assert (c.variant_changes, c.new_fallbacks, c.fixed_fallbacks) == (2, 1, 1)


@given(
    st.lists(
        st.tuples(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=6), st.integers(0, 7)),
        max_size=5,
    )
)
def test_an_answer_compared_with_itself_changes_nothing(placements: list[tuple[list[str], int]]) -> None:
    response = DecideResponse(1, [_placement(items, fallback) for items, fallback in placements])
    c = compare(response, response)
    assert c.placements == len(placements)
    assert c.overlap_sum == c.item_placements == sum(1 for items, _ in placements if items)
    assert c.variant_changes == c.new_fallbacks == c.fixed_fallbacks == 0


# --- the candidate beside the store -------------------------------------------------------------------


def test_a_candidate_is_installed_beside_the_store_and_dropped(
    tmp_path: Path, bundle_dir: Path, bad_bundle: Path
) -> None:
    candidates = ShadowCandidates(tmp_path, MAP)
    assert candidates.current() is None and candidates.drop() is None
    first = candidates.install(9, 4, 0.25, candidate_changes(bundle_dir, 9), SnapshotInfo(version=9))
    assert read_candidate(tmp_path) == first and (first.version, first.base_version, first.sample) == (
        9,
        4,
        0.25,
    )
    with Store(tmp_path / SHADOW_DIR / first.dir, map_size=MAP, readonly=True) as store:
        assert store.version() == 9 and store.has_snapshot()
    second = candidates.install(12, 4, 0.5, candidate_changes(bad_bundle, 12), SnapshotInfo(version=12))
    assert candidates.current() == second
    assert sorted(p.name for p in (tmp_path / SHADOW_DIR).iterdir()) == sorted([second.dir, "candidate.json"])

    def refuse(view: object) -> None:
        raise ValueError("not a valid state")

    with pytest.raises(ValueError, match="not a valid state"):
        candidates.install(13, 4, 0.5, candidate_changes(bundle_dir, 13), SnapshotInfo(), check=refuse)
    assert candidates.current() == second  # the refused one left nothing
    assert len([p for p in (tmp_path / SHADOW_DIR).iterdir() if p.is_dir()]) == 1
    assert candidates.drop() == second
    assert candidates.current() is None and not [p for p in (tmp_path / SHADOW_DIR).iterdir()]


# --- the syncer and a real control plane --------------------------------------------------------------


def test_the_syncer_keeps_a_shadow_commit_apart_and_acks_nothing_for_it(
    tmp_path: Path, bundle_dir: Path, bad_bundle: Path
) -> None:
    """A real control plane (in process, real gRPC) sends the edge a push, then a shadow candidate: the
    edge's store keeps serving what it had (same version and digest, no ACK of the candidate), the
    candidate lands beside it; a 0-chunk shadow commit drops it; a later candidate is dropped once the
    edge applies a version at least as new."""
    with (
        recording_control_plane(tmp_path / "control") as control,
        Store(tmp_path / "edge", map_size=MAP) as store,
    ):
        served = control.push(bundle_dir)
        target = SyncTarget((control.address,), "n1", parse_shard("all"), heartbeat_seconds=0.1)
        syncer = EdgeSyncer(store, target)
        seen: list[object] = []
        syncer.on_shadow = seen.append
        syncer.start()
        try:
            assert syncer.wait_for_version(lambda v: v >= served, 20)
            with store.read() as view:
                digest = view.replicated_digest()
            control.send("n1", shadow_messages(bad_bundle, served + 2, 0.5))
            wait_for(lambda: len(seen) == 1, 20, "the candidate")  # installed, then the hook told
            candidate = syncer.shadow.current()
            assert candidate is not None
            assert (candidate.version, candidate.base_version, candidate.sample) == (served + 2, served, 0.5)
            assert seen == [candidate]
            control.send("n1", shadow_messages(bad_bundle, served + 2, 0.25))  # sent again: kept
            wait_for(lambda: getattr(syncer.shadow.current(), "sample", 0) == 0.25, 20, "the new share")
            kept = syncer.shadow.current()
            assert kept is not None and kept.dir == candidate.dir and seen == [candidate]  # not rewritten
            with store.read() as view:
                assert (view.version, view.replicated_digest()) == (served, digest)
            with Store(tmp_path / "edge" / SHADOW_DIR / candidate.dir, map_size=MAP, readonly=True) as shadow:
                assert shadow.version() == served + 2
                assert shadow.snapshot_info().source == "control"
            time.sleep(0.3)  # a few heartbeats: an ACK of the candidate would be in by now
            [entry] = control.fleet.edges()
            assert (entry.last_ack_version, entry.last_nack_version, entry.applied_version) == (
                served,
                0,
                served,
            )
            control.send("n1", shadow_messages(None, served + 2, 0.0))
            # the syncer drops the candidate, then tells its hook: wait for the hook, not only the drop
            wait_for(lambda: seen[-1] is None, 20, "the candidate dropped")
            assert syncer.shadow.current() is None

            control.send("n1", shadow_messages(bundle_dir, 10**9, 1.0))
            wait_for(lambda: syncer.shadow.current() is not None, 20, "a new candidate")
            pushed = control.push(bad_bundle)
            assert syncer.wait_for_version(lambda v: v == pushed, 20)
            far = syncer.shadow.current()
            assert far is not None and far.version == 10**9  # not reached: the candidate stays
            control.send("n1", shadow_messages(bundle_dir, pushed + 1, 1.0))  # replaces it
            wait_for(lambda: syncer.shadow.current() not in (None, far), 20, "the next candidate")
            again = control.push(bundle_dir)  # a version past the candidate's: it is served by now
            assert again > pushed + 1 and syncer.wait_for_version(lambda v: v == again, 20)
            wait_for(lambda: syncer.shadow.current() is None, 5, "the superseded candidate dropped")
        finally:
            syncer.stop()


def test_a_candidate_that_does_not_arrive_whole_is_refused(tmp_path: Path, bundle_dir: Path) -> None:
    with (
        recording_control_plane(tmp_path / "control") as control,
        Store(tmp_path / "edge", map_size=MAP) as store,
    ):
        served = control.push(bundle_dir)
        syncer = EdgeSyncer(
            store, SyncTarget((control.address,), "n1", parse_shard("all"), heartbeat_seconds=0.1)
        )
        syncer.start()
        try:
            assert syncer.wait_for_version(lambda v: v >= served, 20)
            messages = shadow_messages(bundle_dir, served + 1, 1.0)
            messages[0].chunk.changes[0].value += b"tampered"
            control.send("n1", messages)
            control.send("n1", shadow_messages(bundle_dir, served, 1.0))  # not newer than what it serves
            wait_for(lambda: len(control.heartbeats("n1")) > 10, 20, "heartbeats after both")
            assert syncer.shadow.current() is None
            assert store.version() == served
        finally:
            syncer.stop()


# --- a worker's shadow decisions ------------------------------------------------------------------------


def _decider(
    live: Store, tmp_path: Path, **kwargs: object
) -> tuple[ShadowDecider, WorkerMetrics, NodeMetrics]:
    node = NodeMetrics(tmp_path / "run", MetricsLayout(["home", "deals"]))
    metrics = WorkerMetrics(node.worker_path(0), MetricsLayout(["home", "deals"]))
    decider = ShadowDecider(live.path, MAP, live, metrics, **kwargs)  # type: ignore[arg-type]
    return decider, metrics, node


def test_shadow_decisions_count_what_the_candidate_changes(
    tmp_path: Path, live: Store, bundle_dir: Path, bad_bundle: Path
) -> None:
    """The servicer serves every request from the node's store; with a candidate open it hands each
    sampled one to the shadow thread, which decides it with the candidate: a candidate whose every item
    placement falls back shows as new fallbacks; served answers stay those of the served version."""
    candidates = ShadowCandidates(live.path, MAP)
    decider, metrics, node = _decider(live, tmp_path)
    counter = ShadowCounter(node, candidates.current, live.version)
    servicer = PersonalizerServicer(live, Pipeline(), metrics=metrics, shadow=decider)
    reference = Pipeline()
    decider.start()
    try:
        assert decider.sample == 0.0 and counter.reading() is None
        candidate = candidates.install(
            50, live.version(), 1.0, candidate_changes(bad_bundle, 50), SnapshotInfo()
        )
        counter.received(candidate)
        decider.refresh()
        assert decider.sample == 1.0
        served_fallbacks = 0
        for user in range(120):
            decision = servicer.decide(ask(user))
            with live.read() as view:
                expected = reference.decide(view, ask(user))
            assert decision.snapshot_version == live.version()
            assert [[i.id for i in p.items] for p in decision.placements] == [
                [i.id for i in p.items] for p in expected.placements
            ]
            served_fallbacks += sum(p.fallback != FallbackReason.NONE for p in decision.placements)
        wait_for(lambda: decider.decided == 120, 20, "120 shadow decisions")
        reading = counter.reading()
        assert reading is not None
        stats = reading.stats
        assert (stats.version, stats.sampled, stats.placements, stats.errors) == (50, 120, 240, 0)
        assert stats.new_fallbacks == 240 - served_fallbacks and stats.fixed_fallbacks == 0
        assert stats.variant_changes > 0  # the candidate's campaigns differ
        assert reading.mean_overlap < 0.9
        assert stats.served_latency_us_sum > 0 and stats.shadow_latency_us_sum > 0
        assert reading.dropped == 0 and reading.sample == 1.0
        assert shadow_proto(reading) == sync_pb2.ShadowStats(**asdict(stats))  # the heartbeat's

        write_status(live.path, reading, candidate)
        assert read_status(live.path, candidate) == {**asdict(stats), "sample": 1.0, "dropped": 0}

        same = candidates.install(51, live.version(), 1.0, candidate_changes(bundle_dir, 51), SnapshotInfo())
        counter.received(same)
        decider.refresh()
        for user in range(60):
            servicer.decide(ask(user))
        wait_for(lambda: decider.decided == 180, 20, "60 more")
        reading = counter.reading()
        assert reading is not None and (reading.stats.version, reading.stats.sampled) == (
            51,
            60,
        )  # from 0 again
        stats = reading.stats
        assert stats.item_placements > 0 and reading.mean_overlap == 1.0  # the same data: the same items
        assert stats.new_fallbacks == stats.fixed_fallbacks == stats.variant_changes == 0

        candidates.drop()
        counter.received(None)
        decider.refresh()
        assert decider.sample == 0.0 and counter.reading() is None
        servicer.decide(ask(1))
        time.sleep(0.05)
        assert decider.decided == 180
    finally:
        decider.stop()
        metrics.close()


def test_a_full_queue_drops_samples_and_counts_them(tmp_path: Path, live: Store, bundle_dir: Path) -> None:
    candidates = ShadowCandidates(live.path, MAP)
    candidates.install(50, live.version(), 1.0, candidate_changes(bundle_dir, 50), SnapshotInfo())
    decider, metrics, node = _decider(live, tmp_path, queue_size=3)
    decider.refresh()  # open, but its thread not started: nothing drains the queue
    try:
        servicer = PersonalizerServicer(live, Pipeline(), metrics=metrics, shadow=decider)
        for user in range(10):
            servicer.decide(ask(user))
        assert node.totals()[0][("shadow", "dropped")] == 7
    finally:
        decider.stop()
        metrics.close()


def test_the_node_config_caps_the_share_sampled(tmp_path: Path, live: Store, bundle_dir: Path) -> None:
    ShadowCandidates(live.path, MAP).install(
        50, live.version(), 0.8, candidate_changes(bundle_dir, 50), SnapshotInfo()
    )
    decider, metrics, _ = _decider(live, tmp_path, max_sample=0.05)
    try:
        decider.refresh()
        assert decider.sample == 0.05
        servicer = PersonalizerServicer(live, Pipeline(), metrics=metrics, shadow=decider)
        for user in range(400):
            servicer.decide(ask(user))
        queued = len(decider._queue)
        assert 3 <= queued <= 50, queued  # about 20 of 400
    finally:
        decider.stop()
        metrics.close()


# --- one version per decision ---------------------------------------------------------------------------


def test_served_and_shadow_decisions_each_come_from_one_version(
    tmp_path: Path, live: Store, bundle_dir: Path, bad_bundle: Path
) -> None:
    """While the node's store flips between two versions and the candidate between two others, every
    served decision equals the answer of the version it names, computed on a store holding only that
    version, and so does every shadow decision: none mixes data of two versions."""
    bundles = {1: bundle_dir, 2: bad_bundle, 3: bundle_dir, 4: bad_bundle}
    expected: dict[int, list[list[list[str]]]] = {}
    for version, bundle in bundles.items():
        with Store(tmp_path / f"ref{version}", map_size=MAP) as ref:
            ref.apply_replicated(
                version, candidate_changes(bundle, version), snapshot=True, info=SnapshotInfo()
            )
            pipeline = Pipeline()
            with ref.read() as view:
                expected[version] = [
                    [[i.id for i in p.items] for p in pipeline.decide(view, ask(u)).placements]
                    for u in range(20)
                ]
    assert expected[1] != expected[2]
    changes = {v: candidate_changes(b, v) for v, b in bundles.items()}
    candidates = ShadowCandidates(live.path, MAP)
    decider, metrics, _ = _decider(live, tmp_path)
    stop = threading.Event()
    flips = [0, 0]

    def flip_served() -> None:
        version = 1
        while not stop.is_set():
            version = 2 if version == 1 else 1
            live.apply_replicated(
                version, changes[version], snapshot=True, info=SnapshotInfo(version=version)
            )
            flips[0] += 1

    def flip_candidate() -> None:
        version = 3
        while not stop.is_set():
            version = 4 if version == 3 else 3
            candidates.install(version, 0, 1.0, changes[version], SnapshotInfo(version=version))
            decider.refresh()
            flips[1] += 1

    threads = [threading.Thread(target=flip_served), threading.Thread(target=flip_candidate)]
    pipeline = Pipeline()
    for thread in threads:
        thread.start()
    seen: dict[str, set[int]] = {"served": set(), "shadow": set()}
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline or min(flips) < 3 or min(map(len, seen.values())) < 2:
            for user in range(20):
                with live.read() as view:
                    served = pipeline.decide(view, ask(user))
                assert [[i.id for i in p.items] for p in served.placements] == expected[
                    served.snapshot_version
                ][user]
                seen["served"].add(served.snapshot_version)
                shadow = decider.decide_now(ask(user))
                if shadow is not None:
                    assert shadow.snapshot_version in (3, 4)
                    got = [[i.id for i in p.items] for p in shadow.placements]
                    assert got == expected[shadow.snapshot_version][user]
                    seen["shadow"].add(shadow.snapshot_version)
            assert time.monotonic() < deadline + 30
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        decider.stop()
        metrics.close()
    assert seen == {"served": {1, 2}, "shadow": {3, 4}}
