"""A node's LMDB map filling up (issue 16, item 2): caps derived from what the snapshot leaves, Track refused
with RESOURCE_EXHAUSTED (never a retryable UNAVAILABLE) while the store is full, exposures dropped and
counted instead of failing Track commits, housekeeping that frees a full map in smaller steps, and Track
coming back by itself. Real LMDB stores on tiny maps, and a real node."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import lmdb
import pytest

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.store import Store, StoreError
from edgewise.edge.group_commit import GroupCommitter
from edgewise.edge.housekeeping import Housekeeper
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess, rewrite_manifest

FLOOD_S = 6.0  # each flooding thread stops after this long, or after FLOOD_CALLS calls
FLOOD_CALLS = 3_000
RECOVERY_S = 20.0  # after the flood, Track must answer OK again within this long


def _track_request(prefix: str, n: int) -> pb.TrackRequest:
    url = "https://example.com/" + "p" * 200
    events = [
        pb.Event(
            event_id=f"{prefix}-{uuid.uuid4()}",
            type="view",
            session_id=str(uuid.uuid4()),
            item_id="i1",
            context=pb.Context(url=url),
        )
        for _ in range(n)
    ]
    return pb.TrackRequest(events=events, consent=["analytics", "personalization"])


def _flood(address: str, codes: Counter[str], messages: dict[str, str], decide: bool) -> None:
    """Track (or Decide with analytics consent) as fast as one thread can, for FLOOD_S or FLOOD_CALLS."""
    deadline = time.monotonic() + FLOOD_S
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        for call in range(FLOOD_CALLS):
            if time.monotonic() > deadline:
                break
            try:
                if decide:
                    request = pb.DecideRequest(
                        session_id=f"d{call}",
                        consent=["analytics"],
                        placements=[pb.PlacementRequest(placement_id="home")],
                    )
                    stub.Decide(request, timeout=10)
                else:
                    stub.Track(_track_request("flood", 50), timeout=10)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
                messages.setdefault(exc.code().name, exc.details() or "")


def _flood_node(address: str) -> tuple[Counter[str], Counter[str], dict[str, str]]:
    """Two threads of Track and one of Decide with analytics consent, each bounded in time and count: the
    status codes of Track and of Decide, and the first message of each code."""
    track_codes: Counter[str] = Counter()
    decide_codes: Counter[str] = Counter()
    messages: dict[str, str] = {}
    threads = [
        threading.Thread(target=_flood, args=(address, track_codes, messages, False)),
        threading.Thread(target=_flood, args=(address, track_codes, messages, False)),
        threading.Thread(target=_flood, args=(address, decide_codes, messages, True)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(FLOOD_S + 60)
    return track_codes, decide_codes, messages


def _track_until_ok(address: str) -> float:
    """Seconds until a Track call is stored again (fails past RECOVERY_S)."""
    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        while True:
            try:
                assert stub.Track(_track_request("after", 5), timeout=10).accepted == 5
                return time.monotonic() - started
            except grpc.RpcError as exc:
                waited = time.monotonic() - started
                assert waited < RECOVERY_S, (
                    f"Track still fails {waited:.0f} s after the flood: {exc.details()}"
                )
                time.sleep(0.2)


@pytest.mark.slow
def test_a_tiny_node_flooded_with_track_and_decide_says_full_and_recovers_by_itself(
    edge_factory: Callable[..., EdgeProcess], bundle_copy: Path, tmp_path: Path
) -> None:
    """An 8 MiB map: a flood of Track and Decide gets OK or RESOURCE_EXHAUSTED "store is full" (never a
    retryable UNAVAILABLE), Track is stored again soon after the flood without a restart, and the caps
    left room for a reload of the bundle."""
    edge = edge_factory(tmp_path / "data", bundle_copy, "--workers", "1", "--map-size-mb", "8")
    track_codes, decide_codes, messages = _flood_node(edge.address)
    print("flood: Track", dict(track_codes), "Decide", dict(decide_codes), "messages", messages)
    assert decide_codes["OK"] == sum(decide_codes.values())  # Decide never depends on room in the store
    assert set(track_codes) <= {"OK", "RESOURCE_EXHAUSTED"}, messages  # never a retryable UNAVAILABLE
    if "RESOURCE_EXHAUSTED" in messages:
        assert "store is full" in messages["RESOURCE_EXHAUSTED"]
    print(f"Track answered OK {_track_until_ok(edge.address):.1f} s after the flood")

    rewrite_manifest(bundle_copy, version=2)  # the same data as a new version: a reload writes it again
    edge.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while not any(e.get("event") == "bundle_loaded" and e.get("version") == 2 for e in edge.log_events()):
        refused = [e for e in edge.log_events() if e.get("event") == "bundle_not_applied"]
        assert not refused, refused
        assert time.monotonic() < deadline, "the reload never finished"
        time.sleep(0.2)
    assert edge.proc.poll() is None


def _event(n: int) -> Event:
    """Event n, with an id and a session as random as real ones (their keys land all over their trees)."""
    key = uuid.uuid5(uuid.NAMESPACE_OID, str(n))
    return Event(
        f"ev-{key}", "view", "", f"s-{key}", "i1", "", "", 0.0, 1_000, analytics=True, personalization=True
    )


LIMITS = ActivityLimits()


def test_exposures_that_do_not_fit_are_dropped_and_track_goes_on(tmp_path: Path) -> None:
    """3,000 exposure records that the store has no room for (12 MB against an 8 MiB map) wait in the
    committer when a Track call comes: the Track is stored, and so is every later one; the exposures are
    dropped and counted, not put back to fail every later commit."""
    with Store(tmp_path / "s", map_size=8 << 20) as store:
        committer = GroupCommitter(store, LIMITS, exposure_flush_s=60.0)
        committer.note_exposures([b"x" * 4_000 for _ in range(3_000)])
        for n in range(3):
            assert committer.submit([_event(n)], timeout=10).accepted == 1
        assert store.outbox_pending() == 3  # the three events, no exposure
        assert committer.exposures_dropped == 3_000
        assert committer.exposures_dropped_by == {"queue_full": 0, "store_full": 3_000, "commit_failed": 0}
        committer.close()


def _fill_with_track(store: Store) -> int:
    """Track's writes until the store refuses them: new event ids, sessions and outbox entries, 200
    events a commit, then outbox records of halving sizes down to 4 KiB; the number of events stored."""
    n = 0
    while True:
        try:
            store.record_events([_event(n + k) for k in range(200)], LIMITS, now_ms=1_000)
        except (StoreError, lmdb.Error):
            break
        n += 200
    size = 1 << 20
    while size >= 4 << 10:
        try:
            store.record_events([], LIMITS, [b"x" * size], now_ms=1_000)
        except (StoreError, lmdb.Error):
            size //= 2
    return n


def _housekeeper(store: Store, cap: int) -> Housekeeper:
    return Housekeeper(
        store,
        72 * 3_600_000,
        LIMITS,
        outbox_max_bytes=cap,
        ids_max_bytes=cap,
        activity_max_bytes=cap,
        clock_ms=lambda: 2_000,
    )


def test_housekeeping_runs_on_a_store_too_full_for_track(tmp_path: Path) -> None:
    """Track fills a 16 MiB store until it is refused; housekeeping's steps then still run (each one
    failed with MDB_MAP_FULL before: deleting needs free pages too), bring the namespaces under their
    caps, and Track is stored again, without reopening anything."""
    with Store(tmp_path / "s", map_size=16 << 20) as store:
        stored = _fill_with_track(store)
        print(f"{stored} events stored; data file {store.usage().high_water_bytes / (1 << 20):.1f} MiB")
        keeper = _housekeeper(store, 1 << 20)
        for _ in range(20):
            keeper.step()
        assert store.record_events([_event(stored + 1_000)], LIMITS, now_ms=2_000).accepted == 1


def test_a_step_too_big_for_a_full_map_goes_on_in_smaller_steps(tmp_path: Path) -> None:
    """A map filled to where LMDB itself refuses (no write reserve: Track stops only at MDB_MAP_FULL): a
    full housekeeping step does not fit, so it is tried again smaller until it does, and the sizes grow
    back once steps fit."""
    with Store(tmp_path / "s", map_size=8 << 20, write_reserve=0) as store:
        _fill_with_track(store)
        keeper = _housekeeper(store, 256 << 10)
        for _ in range(40):
            keeper.step()  # never raises: a step that does not fit is tried again smaller
        assert keeper.steps_shrunk > 0 and keeper._shrink == 1
        assert store.record_events([_event(10**6)], LIMITS, now_ms=2_000).accepted == 1
