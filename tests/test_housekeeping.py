"""Edge housekeeping: event ids past the dedupe window and live activity with nothing left after its TTLs
are deleted in bounded steps that walk the store round and round (`Store.sweep`, edge/housekeeping.py),
in a real LMDB store and in a real edge process."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import grpc
import lmdb
import numpy as np
import pytest

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.store import Store
from edgewise.edge.housekeeping import ACTIVITY_REFILL, Housekeeper, _Ages
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess

HOUR = 3_600_000
NOW = 1_000 * HOUR
LIMITS = ActivityLimits(ttl_ms=72 * HOUR, purchases_ttl_ms=400 * 24 * HOUR)


def _event(n: int, ts: int, kind: str = "view", session: str = "") -> Event:
    return Event(f"e{n:03d}", kind, "" if session else f"u{n:03d}", session, "i1", "", "", 0.0, ts)


def _keys(store: Store, namespace: str) -> list[str]:
    with store._env.begin() as txn, txn.cursor(db=store._dbs[namespace]) as cursor:
        return [bytes(k).decode() for k, _ in cursor]


def test_sweep_steps_walk_both_namespaces_and_delete_only_what_aged_out(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        old = [_event(n, NOW - 100 * HOUR) for n in range(0, 25)]  # views past the 72 h TTL
        fresh = [_event(n, NOW - HOUR) for n in range(25, 40)]
        bought = [_event(n, NOW - 100 * HOUR, "purchase") for n in range(40, 45)]  # purchases last 400 days
        # The ids of e000-e039 arrived 73 h ago, those of e040-e044 an hour ago (the event times differ)
        store.record_events([*old, *fresh], LIMITS, now_ms=NOW - 73 * HOUR)
        store.record_events(bought, LIMITS, now_ms=NOW - HOUR)
        mono = [0.0]
        keeper = Housekeeper(
            store,
            72 * HOUR,
            LIMITS,
            keys_per_step=7,
            ids_per_step=7,
            clock_ms=lambda: NOW,
            monotonic=lambda: mono[0],
        )
        for _ in range(7):  # 45 activities in steps of 7: one pass; 40 expired ids, 7 a step
            keeper.step()
        assert keeper.deleted_ids == 40 and keeper.deleted_activities == 25 and keeper.passes == 1
        assert _keys(store, "events") == [f"e{n:03d}" for n in range(40, 45)]
        assert _keys(store, "activity") == [f"u:u{n:03d}" for n in range(25, 45)]
        # A retry of a forgotten id counts again, and its id is kept a window from its new arrival,
        # although the event itself is 100 h old.
        assert store.record_events([old[0]], LIMITS, now_ms=NOW).accepted == 1
        assert store.record_events([bought[0]], LIMITS, now_ms=NOW).duplicates == 1
        for _ in range(8):  # the walk over the activities rests for a minute after a pass
            keeper.step()
        assert _keys(store, "events") == ["e000", *(f"e{n:03d}" for n in range(40, 45))]
        assert keeper.passes == 1
        mono[0] = 61.0
        for _ in range(3):
            keeper.step()
        # the second pass: u000's activity, rebuilt by the retried view, has only that 100 h old view
        assert keeper.passes == 2 and keeper.deleted_activities == 26


@pytest.mark.slow
def test_a_real_edge_forgets_event_ids_after_its_dedupe_window(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text("[track]\ndedupe_window_hours = 0.0005\n")  # 1.8 s
    edge = edge_factory(tmp_path / "data", bundle_dir, "--config", str(config), "--workers", "1")
    event = pb.Event(event_id="hk-1", type="view", session_id="hk-s", item_id="i1")
    request = pb.TrackRequest(events=[event], consent=["personalization"])
    with grpc.insecure_channel(edge.address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        assert stub.Track(request, timeout=10).accepted == 1
        assert stub.Track(request, timeout=10).duplicates == 1  # within the window: idempotent
        deadline = time.monotonic() + 20
        while stub.Track(request, timeout=10).duplicates == 1:  # the id is swept within about 3 s
            assert time.monotonic() < deadline, "the event id was never swept"
            time.sleep(0.5)


def test_the_event_ids_of_an_older_store_are_indexed_when_it_is_opened(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with Store(path, map_size=1 << 28) as store:
        store.record_events([_event(n, NOW) for n in range(10)], LIMITS, now_ms=NOW - 100 * HOUR)
    with lmdb.open(str(path), max_dbs=32, map_size=1 << 28) as env:  # as a store from before the index
        times, meta = env.open_db(b"event_times"), env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.drop(times, delete=False)
            txn.delete(b"event_times_built", db=meta)
    with Store(path, map_size=1 << 28) as store:
        assert store.sweep(NOW, 72 * HOUR, LIMITS).event_ids == 10
        assert _keys(store, "events") == []


def _outbox_seqs(store: Store) -> list[int]:
    with store._env.begin() as txn, txn.cursor(db=store._dbs["outbox"]) as cursor:
        return [int.from_bytes(bytes(k), "big") for k, _ in cursor]


def test_an_outbox_over_its_limit_loses_its_oldest_entries_in_bounded_steps(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        for batch in range(20):  # 4,000 analytics events: the outbox keeps them for upstream
            store.record_events([_event(batch * 200 + n, NOW) for n in range(200)], LIMITS, now_ms=NOW)
        entries, used = store.outbox_usage()
        assert entries == 4_000 and used > 0
        first, last = _outbox_seqs(store)[0], _outbox_seqs(store)[-1]
        unlimited = Housekeeper(store, 72 * HOUR, LIMITS, clock_ms=lambda: NOW)
        unlimited.step()  # no limit (0): nothing leaves the outbox
        assert unlimited.outbox_dropped == 0 and store.outbox_usage()[0] == 4_000
        within = Housekeeper(store, 72 * HOUR, LIMITS, outbox_max_bytes=used, clock_ms=lambda: NOW)
        within.step()
        assert within.outbox_dropped == 0
        keeper = Housekeeper(
            store, 72 * HOUR, LIMITS, outbox_max_bytes=used // 2, outbox_per_step=300, clock_ms=lambda: NOW
        )
        keeper.step()
        assert keeper.outbox_dropped == 300  # bounded per step
        for _ in range(20):
            keeper.step()
        entries_after, used_after = store.outbox_usage()
        assert used_after <= used // 2
        assert 1_000 <= entries_after <= 2_200  # about half the entries, the page accounting aside
        assert keeper.outbox_dropped == 4_000 - entries_after
        # the oldest went: what is left is the newest entries, in order, up to the last one
        assert _outbox_seqs(store) == list(range(last - entries_after + 1, last + 1))
        assert first < last - entries_after + 1
        dropped = keeper.outbox_dropped
        keeper.step()  # under the limit now: nothing more goes
        assert keeper.outbox_dropped == dropped


def _metric(address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in the metrics")


def _edge_with_metrics(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path, toml: str, *flags: str
) -> tuple[EdgeProcess, str]:
    """A one-worker standalone edge with the config file `toml` and `flags`, and its metrics address."""
    config = tmp_path / "edge.toml"
    config.write_text(toml)
    edge = edge_factory(
        tmp_path / "data",
        bundle_dir,
        "--config",
        str(config),
        "--workers",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
        *flags,
    )
    serving = next(e for e in edge.log_events() if e.get("event") == "serving")
    return edge, str(serving["metrics"])


@pytest.mark.slow
def test_a_real_edge_keeps_its_outbox_and_event_ids_under_their_limits(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    """A standalone edge (no control plane) queues analytics events for upstream that nobody forwards:
    past data.outbox_max_mb the oldest are deleted, Track keeps working, and the loss is counted and
    logged. Past track.dedupe_max_mb the oldest event ids go early, counted and logged too."""
    edge, metrics = _edge_with_metrics(
        edge_factory, bundle_dir, tmp_path, "[track]\ndedupe_max_mb = 1\n", "--outbox-max-mb", "1"
    )
    url = "https://example.com/" + "p" * 200
    with grpc.insecure_channel(edge.address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        for call in range(30):  # 15,000 events of about 300 bytes: several times the 1 MiB limit
            events = [
                pb.Event(
                    event_id=f"ob-{call}-{n}",
                    type="view",
                    user_id=f"u{n}",
                    item_id="i1",
                    context=pb.Context(url=url),
                )
                for n in range(500)
            ]
            request = pb.TrackRequest(events=events, consent=["analytics"])
            assert stub.Track(request, timeout=30).accepted == 500
    deadline = time.monotonic() + 30
    while _metric(metrics, "edgewise_outbox_dropped_total") == 0:
        assert time.monotonic() < deadline, "nothing was ever deleted from the outbox"
        time.sleep(0.2)
    while _metric(metrics, "edgewise_outbox_bytes") > 1 << 20:
        assert time.monotonic() < deadline, "the outbox was never brought under its limit"
        time.sleep(0.2)
    assert 0 < _metric(metrics, "edgewise_outbox_entries") < 15_000
    warnings = [e for e in edge.log_events() if e.get("event") == "outbox_over_limit"]
    assert warnings and warnings[0]["level"] == "warning" and int(str(warnings[0]["dropped"])) > 0
    while _labeled(metrics, "edgewise_housekeeping_deleted_total", 'kind="event_ids_early"') == 0:
        assert time.monotonic() < deadline, "no event id ever went early"
        time.sleep(0.2)
    assert 0 < _metric(metrics, "edgewise_dedupe_window_seconds") < 600  # ids of these last seconds only
    shortened = [e for e in edge.log_events() if e.get("event") == "dedupe_window_shortened"]
    assert shortened and shortened[0]["level"] == "warning" and shortened[0]["window_hours"] == 72.0


def _labeled(address: str, name: str, labels: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name}{{{labels}}} "):
                return float(line.split()[1])
    raise AssertionError(f"no {name}{{{labels}}} in the metrics")


def test_event_ids_over_their_limit_go_before_their_window_ends(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        for batch in range(20):  # 4,000 ids, arrived 10 h ago and younger: all within the 72 h window
            events = [_event(batch * 200 + n, NOW) for n in range(200)]
            store.record_events(events, LIMITS, now_ms=NOW - (20 - batch) * HOUR // 2)
        with store._env.begin() as txn:
            used = sum(
                txn.stat(store._dbs[name])["psize"]
                * sum(txn.stat(store._dbs[name])[k] for k in ("branch_pages", "leaf_pages", "overflow_pages"))
                for name in ("events", "event_times")
            )
        keeper = Housekeeper(
            store, 72 * HOUR, LIMITS, ids_per_step=500, ids_max_bytes=used // 2, clock_ms=lambda: NOW
        )
        keeper.step()
        assert keeper.deleted_ids == 0 and keeper.deleted_ids_early == 500  # bounded per step
        assert keeper.oldest_id_ms == NOW - 9 * HOUR  # batches 0 and 1 went, and half of batch 2
        for _ in range(10):
            keeper.step()
        left = _keys(store, "events")
        assert 1_000 <= len(left) <= 2_200 and keeper.deleted_ids_early == 4_000 - len(left)
        # the newest stay, and a retry of a kept one is still a duplicate; of a deleted one, new again
        assert left == [f"e{n:03d}" for n in range(4_000 - len(left), 4_000)]
        assert store.record_events([_event(3_999, NOW)], LIMITS, now_ms=NOW).duplicates == 1
        assert store.record_events([_event(0, NOW)], LIMITS, now_ms=NOW).accepted == 1
        early = keeper.deleted_ids_early
        keeper.step()
        assert keeper.deleted_ids_early == early  # under the limit now
        unlimited = Housekeeper(store, 72 * HOUR, LIMITS, clock_ms=lambda: NOW)
        unlimited.step()
        assert unlimited.deleted_ids_early == 0


def test_ages_say_within_what_age_the_youngest_fill_a_share() -> None:
    ages = _Ages()
    ages.add(NOW, [(NOW - 500, 100), (NOW - 10_000, 100), (NOW - 100_000, 100), (NOW - 1_000_000, 100)])
    assert ages.total == 400
    # half the bytes: the two youngest fit; the bucket edge is within a quarter doubling of 10 s
    assert 10_000 <= ages.keep_ms(0.5) < 100_000 and ages.keep_ms(0.5) <= 10_000 * 2**0.25
    assert ages.keep_ms(0.1) == 1_000  # not even the youngest fits: a second, the least
    assert ages.keep_ms(1.0) >= 1_000_000
    assert _Ages().keep_ms(0.5) == 1_000


def _activity_bytes(store: Store) -> int:
    with store._env.begin() as txn:
        st = txn.stat(store._dbs["activity"])
        return int(st["psize"]) * sum(int(st[k]) for k in ("branch_pages", "leaf_pages", "overflow_pages"))


@contextlib.contextmanager
def _sessions_under_half_their_size(
    tmp_path: Path, ages_minutes: Iterable[int], keys_per_step: int
) -> Iterator[tuple[Store, int, Housekeeper, list[float]]]:
    """A store with one session per age (s0000 last active ages_minutes[0] minutes ago, ...), and a
    Housekeeper (clock held at NOW; `mono` its monotonic clock) limiting their activity to half its size."""
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        events = [_event(n, NOW - age * 60_000, session=f"s{n:04d}") for n, age in enumerate(ages_minutes)]
        store.record_events(events, LIMITS, now_ms=NOW)
        used = _activity_bytes(store)
        mono = [0.0]
        keeper = Housekeeper(
            store,
            72 * HOUR,
            LIMITS,
            keys_per_step=keys_per_step,
            activity_max_bytes=used // 2,
            clock_ms=lambda: NOW,
            monotonic=lambda: mono[0],
        )
        yield store, used, keeper, mono


def test_activity_over_its_limit_loses_the_units_last_active_longest_ago(tmp_path: Path) -> None:
    """2,000 sessions, last active 0 to 33 h ago (all within the 72 h TTL), against a limit of half
    their size: the first pass notes their ages, the second deletes the oldest down to about 80% of
    the limit, and the third, under the limit, lifts the horizon."""
    minute = 60_000
    with _sessions_under_half_their_size(tmp_path, range(2_000), 500) as (store, used, keeper, _mono):
        for _ in range(4):  # one pass: nothing deleted yet, every age noted
            keeper.step()
        assert keeper.passes == 1 and keeper.deleted_activities_early == 0
        assert keeper.activity_bytes == used and keeper.activity_before_ms > 0
        # keep the units active within the age that fills 80% of the limit (40% of the bytes): about
        # 800 of them, so about 800 minutes, give or take a bucket (a quarter of a doubling)
        window = keeper.activity_window_ms
        assert 800 * minute / 2**0.25 <= window <= 800 * minute
        for _ in range(4):  # over the limit: the next pass follows without the pause, and cuts
            keeper.step()
        assert keeper.passes == 2
        left = _keys(store, "activity")
        assert left == [f"s:s{n:04d}" for n in range(len(left))]  # the most recently active stay
        assert keeper.deleted_activities_early == 2_000 - len(left) and keeper.deleted_activities == 0
        assert all(NOW - n * minute >= NOW - window for n in range(len(left)))
        assert 650 <= len(left) <= ACTIVITY_REFILL * 1_000 and keeper.activity_bytes <= used // 2
        assert keeper.activity_before_ms == 0 and keeper.activity_window_ms == 0  # under: lifted
        for _ in range(4):  # under the limit the walk rests for its minute again
            keeper.step()
        assert keeper.passes == 2 and len(_keys(store, "activity")) == len(left)


@pytest.mark.slow
def test_a_real_edge_keeps_live_activity_under_its_limit(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    """15,000 anonymous sessions' views, several times track.activity_max_mb = 1: housekeeping deletes
    the activity of the sessions last active longest ago, counts and logs it, and Track keeps working."""
    edge, metrics = _edge_with_metrics(edge_factory, bundle_dir, tmp_path, "[track]\nactivity_max_mb = 1\n")
    item = "i-" + "x" * 100  # about 200 bytes of activity per session
    with grpc.insecure_channel(edge.address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        for call in range(30):
            events = [
                pb.Event(event_id=f"act-{call}-{n}", type="view", session_id=f"s-{call}-{n}", item_id=item)
                for n in range(500)
            ]
            request = pb.TrackRequest(events=events, consent=["personalization"])
            assert stub.Track(request, timeout=30).accepted == 500
    deadline = time.monotonic() + 60
    while _labeled(metrics, "edgewise_housekeeping_deleted_total", 'kind="activities_early"') == 0:
        assert time.monotonic() < deadline, "no activity ever went before its TTL"
        time.sleep(0.2)
    while _metric(metrics, "edgewise_activity_bytes") > 1 << 20:
        assert time.monotonic() < deadline, "live activity was never brought under its limit"
        time.sleep(0.2)
    early = _labeled(metrics, "edgewise_housekeeping_deleted_total", 'kind="activities_early"')
    assert 0 < early < 15_000
    shortened = [e for e in edge.log_events() if e.get("event") == "activity_window_shortened"]
    assert shortened and shortened[0]["level"] == "warning" and shortened[0]["ttl_hours"] == 72.0
    with grpc.insecure_channel(edge.address) as channel:  # Track still works
        event = pb.Event(event_id="act-after", type="view", session_id="s-after", item_id="i1")
        request = pb.TrackRequest(events=[event], consent=["personalization"])
        assert pb_grpc.PersonalizerStub(channel).Track(request, timeout=30).accepted == 1


def test_sweep_reports_ages_only_when_asked_and_deletes_before_a_time(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 28) as store:
        events = [_event(n, NOW - n * HOUR, session=f"s{n}") for n in range(10)]  # last active 0-9 h ago
        store.record_events(events, LIMITS, now_ms=NOW)
        plain = store.sweep(NOW, 72 * HOUR, LIMITS, max_ids=0)
        assert plain.activity_ages == () and plain.activities == plain.activities_early == 0
        assert plain.activity_bytes == store.activity_usage()[1] > 0
        seen = store.sweep(NOW, 72 * HOUR, LIMITS, max_ids=0, activity_ages=True)
        assert sorted(last for last, _ in seen.activity_ages) == sorted(NOW - n * HOUR for n in range(10))
        assert all(size > len("s:s0") for _, size in seen.activity_ages)
        cut = store.sweep(NOW, 72 * HOUR, LIMITS, max_ids=0, activity_before_ms=NOW - 4 * HOUR - 1)
        assert cut.activities_early == 5 and cut.activities == 0  # 5-9 h ago went, 4 h ago stayed
        assert _keys(store, "activity") == [f"s:s{n}" for n in range(5)]
        assert cut.activity_bytes <= plain.activity_bytes


def test_activity_cut_stops_at_its_data_budget_when_pages_stay_part_empty(tmp_path: Path) -> None:
    """Sessions whose keys do not follow their age: the cut deletes entries all over the key space, so
    LMDB's pages stay part empty and their bytes fall much less than the entries. The horizon is set
    from data bytes at the pages' usual fill (measured by the pass before the cut), so later passes do
    not keep cutting to bring the pages' bytes under the limit."""
    ages = np.random.default_rng(5).permutation(3_000).tolist()
    with _sessions_under_half_their_size(tmp_path, ages, 1_000) as (store, used, keeper, mono):
        for _ in range(6):  # a pass that measures, then at once a pass that cuts
            keeper.step()
        assert keeper.passes == 2
        kept = len(_keys(store, "activity"))
        assert 0.3 * 3_000 <= kept <= 0.5 * 3_000  # about 80% of half the data
        assert keeper.activity_bytes > ACTIVITY_REFILL * used // 2  # the pages did not follow
        for _ in range(3):  # the walk rests after a cut
            keeper.step()
        assert keeper.passes == 2
        mono[0] = 61.0
        for _ in range(3):
            keeper.step()
        assert keeper.passes == 3 and len(_keys(store, "activity")) == kept  # no further cut
        assert keeper.activity_before_ms != 0  # the pages are still over: the horizon stays
