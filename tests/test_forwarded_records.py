"""Forwarded records the control plane cannot use (issue 16, item 1): `Forward` refuses them, and a record
an older version stored anyway is skipped and counted by every consumer of the event store (profile
folder, bandit learner, reports, retention, forget), so the records behind it are still folded, learned
from and reported."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import lmdb
import msgpack
import pytest

from edgewise.core.records import decode_profile
from edgewise.sync.bandit_learner import BanditLearner
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.sync.event_retention import EventRetention
from edgewise.sync.event_store import EventStore
from edgewise.sync.profile_folder import CURSOR as FOLDER_CURSOR
from edgewise.sync.profile_folder import ProfileFolder
from edgewise.v1 import sync_pb2, sync_pb2_grpc
from tests.sync_support import ControlProcess, control_planes, ops_client, wait_for
from tests.test_bandit_learner import NEVER
from tests.test_bandit_learning import rules_doc

OPS = {"EDGEWISE_OPS_TOKEN": "ops-fw-1"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-fw-1"}
NOW = 1_750_000_000_000  # the clock of the in-process tests (Unix ms)


def _event(event_id: str, user: str = "u1", **fields: Any) -> dict[str, Any]:
    """A Track event as `Event.encode` writes it (a view with both purposes), with `fields` replaced."""
    record = {
        "id": event_id,
        "t": "view",
        "u": user,
        "s": "",
        "i": "i1",
        "d": "",
        "p": "",
        "v": 0.0,
        "ts": NOW - 60_000,
        "pz": True,
        "an": True,
    }
    return {**record, **fields}


def _exposure(
    decision: str, user: str, experiment: str, variant: str, ts: object, **fields: Any
) -> dict[str, Any]:
    """An exposure record as `core/exposure.py` writes it, with `fields` replaced."""
    record = {
        "k": "exposure",
        "id": f"{decision}:hero_banner",
        "d": decision,
        "u": user,
        "s": "",
        "p": "hero_banner",
        "c": "hero_ab",
        "x": experiment,
        "v": variant,
        "pr": 1 / 3,
        "st": "experiment",
        "f": 0,
        "i": [],
        "ct": "hero_default",
        "ch": "web",
        "co": "DE",
        "dv": "",
        "sv": 1,
        "sg": [],
        "ts": ts,
        "bs": "",
    }
    return {**record, **fields}


def _packed(record: dict[str, Any]) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def _outbox(records: list[dict[str, Any]]) -> list[sync_pb2.OutboxRecord]:
    return [
        sync_pb2.OutboxRecord(
            seq=n, kind="exposure" if r.get("k") == "exposure" else "event", payload=_packed(r)
        )
        for n, r in enumerate(records, 1)
    ]


# --- through a real control plane ------------------------------------------------------------------------


@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[Callable[..., ControlProcess]]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start


def _forward(address: str, records: list[dict[str, Any]]) -> sync_pb2.ForwardReply:
    with grpc.insecure_channel(address) as channel:
        reply: sync_pb2.ForwardReply = sync_pb2_grpc.ControlPlaneStub(channel).Forward(
            sync_pb2.ForwardRequest(node_id="edge-a", records=_outbox(records)),
            metadata=(("authorization", f"Bearer {EDGE['EDGEWISE_EDGE_TOKEN']}"),),
            timeout=10,
        )
    return reply


@pytest.mark.slow
def test_a_record_the_folder_cannot_use_is_refused_at_forward_and_the_events_behind_it_are_folded(
    control_factory: Callable[..., ControlProcess], bundle_dir: Path
) -> None:
    control = control_factory()
    with ops_client(control.address, OPS) as ops:
        ops.push(bundle_dir)
    now = time.time_ns() // 1_000_000
    reply = _forward(
        control.address,
        [
            _event("bad-ts", "u1", ts="yesterday"),  # well-formed msgpack, a time nothing can use
            _event("bad-user", "u" * 600, ts=now),  # a user id no LMDB key can hold
            _event("good-1", "fold-me", ts=now, i="i7"),
            _exposure("d1", "fold-me", "hero_test", "control", now),
        ],
    )
    assert (reply.acked_seq, reply.accepted, reply.rejected) == (4, 2, 2)
    rejected = [e for e in control.log_events() if e.get("event") == "forward_record_rejected"]
    assert rejected and rejected[0]["records"] == 2 and rejected[0]["error"].startswith("ts: ")

    with ops_client(control.address, OPS) as ops:
        wait_for(
            lambda: any(c.description == "events folded up to 2" for c in ops.history(10).commits),
            20,
            "the valid event folded",
        )
        report = ops.report("hero_test")
        assert (report["exposures"], report["skipped"]) == (1, 0)
        assert ops.status().events_total == 2
    assert not [e for e in control.log_events() if e.get("event") == "profile_fold_failed"]
    control.stop()
    with ControlStore(control.data) as store, store.read() as view:
        raw = view.get("profiles", "fold-me")
    assert raw is not None
    activity = decode_profile("fold-me", raw).activity
    assert activity is not None and [item for item, _ in activity.views] == ["i7"]


# --- Forward's checks, in-process ------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ControlPlaneService, EventStore, str]]:
    store = ControlStore(tmp_path / "control", map_size=64 << 20)
    events = EventStore(tmp_path / "events", map_size=64 << 20)
    service = ControlPlaneService(store, events=events)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, events, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()
        events.close()
        store.close()


BAD_EVENTS = {
    "ts a string": {"ts": "yesterday"},
    "ts a float": {"ts": 1.75e12},
    "ts true": {"ts": True},
    "ts in seconds": {"ts": 1_750_000_000},
    "ts in microseconds": {"ts": 1_750_000_000_000_000},
    "ts missing": {"ts": None},
    "user of 600 bytes": {"u": "u" * 600},
    "user of 101 four-byte characters": {"u": "\U0001f600" * 101},
    "session of 401 bytes": {"s": "s" * 401},
    "user a number": {"u": 7},
    "no user, no session": {"u": "", "s": ""},
    "type with a newline": {"t": "view\n"},
    "type upper case": {"t": "View"},
    "type a list": {"t": ["view"]},
    "value infinite": {"v": float("inf")},
    "value a string": {"v": "12.5"},
    "personalization a string": {"pz": "yes"},
    "item a map": {"i": {"x": 1}},
    "item too long": {"i": "i" * 70_000},
    "id of 401 bytes": {"id": "e" * 401},
    "an unknown kind": {"k": "mystery"},
}
BAD_EXPOSURES = {
    "ts a string": {"ts": "now"},
    "propensity above 1": {"pr": 1.5},
    "propensity NaN": {"pr": float("nan")},
    "items a string": {"i": "i1"},
    "items of numbers": {"i": [1, 2]},
    "segments a map": {"sg": {"a": 1}},
    "fallback a string": {"f": "HOLDOUT"},
    "snapshot version negative": {"sv": -1},
    "variant a number": {"v": 2},
    "user of 600 bytes": {"u": "u" * 600},
    "channel a list": {"ch": ["web"]},
}


@pytest.mark.parametrize("fields", BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_forward_refuses_an_event_track_would_refuse(
    served: tuple[ControlPlaneService, EventStore, str], fields: dict[str, Any]
) -> None:
    _, events, address = served
    fields = {"ts": time.time_ns() // 1_000_000, **fields}
    record = {k: v for k, v in _event("bad", **fields).items() if v is not None}
    good = _event("good", ts=time.time_ns() // 1_000_000)
    reply = _forward_unauthenticated(address, [record, good])
    assert (reply.acked_seq, reply.accepted, reply.rejected) == (2, 1, 1)
    assert [e["id"] for _, _, e in events.events()] == ["good"]


@pytest.mark.parametrize("fields", BAD_EXPOSURES.values(), ids=BAD_EXPOSURES.keys())
def test_forward_refuses_an_exposure_no_decision_would_write(
    served: tuple[ControlPlaneService, EventStore, str], fields: dict[str, Any]
) -> None:
    _, events, address = served
    now = time.time_ns() // 1_000_000
    reply = _forward_unauthenticated(
        address,
        [
            {**_exposure("d1", "u1", "hero_test", "control", now), **fields},
            _exposure("d2", "u1", "x", "a", now),
        ],
    )
    assert (reply.acked_seq, reply.accepted, reply.rejected) == (2, 1, 1)
    assert [e["id"] for _, _, e in events.events()] == ["d2:hero_banner"]


def test_forward_refuses_a_record_whose_kind_and_payload_disagree(
    served: tuple[ControlPlaneService, EventStore, str], caplog: pytest.LogCaptureFixture
) -> None:
    address = served[2]
    now = time.time_ns() // 1_000_000
    exposure = _packed(_exposure("d1", "u1", "x", "a", now))
    event = _packed(_event("e1", ts=now))
    records = [
        sync_pb2.OutboxRecord(seq=1, kind="event", payload=exposure),
        sync_pb2.OutboxRecord(seq=2, kind="exposure", payload=event),
        sync_pb2.OutboxRecord(seq=3, kind="event", payload=event),
    ]
    with caplog.at_level(logging.WARNING), grpc.insecure_channel(address) as channel:
        reply = sync_pb2_grpc.ControlPlaneStub(channel).Forward(
            sync_pb2.ForwardRequest(node_id="edge-a", records=records), timeout=10
        )
    assert (reply.acked_seq, reply.accepted, reply.rejected) == (3, 1, 2)
    lines = [r for r in caplog.records if r.getMessage() == "forward_record_rejected"]
    assert len(lines) == 1  # one line per call, however many records it refused
    assert lines[0].__dict__["records"] == 2 and lines[0].__dict__["seq"] == 1
    assert "k: " in lines[0].__dict__["error"]


def test_forward_accepts_what_edges_write(served: tuple[ControlPlaneService, EventStore, str]) -> None:
    # Event.encode and core/exposure.exposure_records of a real decision, unchanged.
    from edgewise.core.activity import Event
    from edgewise.core.decisions import Context, DecideRequest, DecideResponse, PlacementDecision
    from edgewise.core.exposure import exposure_records

    _, events, address = served
    now = time.time_ns() // 1_000_000
    event = Event("e1", "purchase", "u1", "s1", "i1", "dec-1", "home", 12.5, now, True, False)
    request = DecideRequest(
        user_id="u1",
        session_id="s1",
        consent=frozenset({"analytics"}),
        context=Context(channel="web"),
        now_ms=now,
    )
    decision = DecideResponse(
        snapshot_version=3,
        placements=(PlacementDecision(placement_id="home", propensity=0.25, strategy="bandit"),),
        segments=("vip",),
    )
    records = [sync_pb2.OutboxRecord(seq=1, kind="event", payload=event.encode())] + [
        sync_pb2.OutboxRecord(seq=2, kind="exposure", payload=p)
        for p in exposure_records("dec-1", request, decision)
    ]
    with grpc.insecure_channel(address) as channel:
        reply = sync_pb2_grpc.ControlPlaneStub(channel).Forward(
            sync_pb2.ForwardRequest(node_id="edge-a", records=records), timeout=10
        )
    assert (reply.accepted, reply.rejected) == (2, 0)
    assert events.count() == 2


def _forward_unauthenticated(address: str, records: list[dict[str, Any]]) -> sync_pb2.ForwardReply:
    with grpc.insecure_channel(address) as channel:
        reply: sync_pb2.ForwardReply = sync_pb2_grpc.ControlPlaneStub(channel).Forward(
            sync_pb2.ForwardRequest(node_id="edge-a", records=_outbox(records)), timeout=10
        )
    return reply


def test_the_forwarded_caps_are_the_largest_an_edge_allows() -> None:
    # Forward must accept whatever any edge's Track and Decide accept: its caps are the edge's, at their
    # largest configurable values.
    from dataclasses import fields

    from edgewise.core import forwarded
    from edgewise.edge import convert
    from edgewise.edge.config import LimitsConfig

    limits = {f.name: f.metadata for f in fields(LimitsConfig)}
    assert limits["max_id_length"]["max"] == forwarded.MAX_ID_CHARS
    assert limits["max_string_length"]["max"] == forwarded.MAX_STRING_CHARS
    assert limits["max_future_seconds"]["max"] * 1000 <= forwarded.MAX_FUTURE_MS
    assert forwarded.MAX_KEY_ID_BYTES == convert.MAX_KEY_ID_BYTES
    assert forwarded.EARLIEST_EVENT_MS == convert.EARLIEST_EVENT_MS


# --- records an older version stored: every consumer skips and counts them --------------------------------


class _Lock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _store_raw(events: EventStore, node: str, payloads: list[tuple[str, str, bytes]]) -> None:
    """Store records as an older version did: `ingest` checks nothing but the id and user it is given."""
    users = []
    for _, _, payload in payloads:
        try:
            user = msgpack.unpackb(payload).get("u", "")
        except Exception:
            user = ""
        users.append(user if isinstance(user, str) else "")
    events.ingest(node, payloads, users)


def _unreadable_envelope(path: Path, seq: int) -> None:
    """Overwrite the stored record `seq` with bytes that are not msgpack (a damaged record)."""
    env = lmdb.open(str(path), max_dbs=5)
    try:
        log_db = env.open_db(b"log")
        with env.begin(write=True) as txn:
            assert txn.replace(seq.to_bytes(8, "big"), b"\xc1\xc1 not msgpack", db=log_db) is not None
    finally:
        env.close()


OLD_BAD = [
    ("event", "bad-ts", _packed(_event("bad-ts", "fold-me", ts="yesterday"))),
    ("event", "bad-user", _packed(_event("bad-user", "u" * 600))),
    ("event", "bad-map", msgpack.packb(["not", "a", "map"])),
    ("event", "bad-bytes", b"\xc1 not msgpack"),
    ("event", "damaged", _packed(_event("damaged", "fold-me"))),  # its envelope is overwritten below
]


def _with_bad_records(tmp_path: Path) -> tuple[ControlStore, EventStore]:
    """A control store with the rules of a bandit test, and an event store holding the OLD_BAD records
    first, then a valid view of user fold-me, a bandit exposure and a click on it."""
    store = ControlStore(tmp_path / "control", map_size=64 << 20)
    store.commit([RecordChange("rules", "rules", msgpack.packb(rules_doc(), use_bin_type=True))], kind="push")
    events = EventStore(tmp_path / "events", map_size=64 << 20)
    _store_raw(events, "old-edge", OLD_BAD)
    events.close()
    _unreadable_envelope(tmp_path / "events", len(OLD_BAD))
    events = EventStore(tmp_path / "events", map_size=64 << 20)
    good = [
        _event("view-1", "fold-me", i="i9"),
        _exposure(
            "d1", "fold-me", "promo", "ship", NOW - 50_000, st="bandit", p="promo_slot", id="d1:promo_slot"
        ),
        _event("click-1", "fold-me", t="click", d="d1", p="promo_slot", i="", ts=NOW - 40_000),
    ]
    events.ingest("edge-a", [(r.get("k", "event"), r["id"], _packed(r)) for r in good])
    return store, events


def _skip_lines(caplog: pytest.LogCaptureFixture, consumer: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage() == "forwarded_records_skipped" and r.__dict__.get("consumer") == consumer
    ]


def test_the_profile_folder_skips_and_counts_what_it_cannot_use_and_folds_what_follows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, events = _with_bad_records(tmp_path)
    try:
        folder = ProfileFolder(store, events, _Lock(), lambda: None)
        with caplog.at_level(logging.WARNING):
            while folder.fold_once() is not None:
                pass
            folder.skipped.flush()
        assert store.cursor(FOLDER_CURSOR) == len(OLD_BAD) + 3  # past every record
        with store.read() as view:
            raw = view.get("profiles", "fold-me")
        assert raw is not None
        activity = decode_profile("fold-me", raw).activity
        assert activity is not None and [i for i, _ in activity.views] == ["i9"]
        assert folder.skipped.total == len(OLD_BAD)
        lines = _skip_lines(caplog, "profile_folder")
        assert lines and lines[0].__dict__["skipped_total"] >= 1 and lines[0].__dict__["seq"] == 1
        assert "ts: " in lines[0].__dict__["error"]
    finally:
        events.close()
        store.close()


def test_a_user_whose_fold_fails_is_skipped_not_the_users_behind(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control", map_size=64 << 20)
    events = EventStore(tmp_path / "events", map_size=64 << 20)
    try:
        store.commit([RecordChange("profiles", "broken", b"\xc1 a damaged profile")], kind="delta")
        records = [_event("e1", "broken"), _event("e2", "fine", i="i3")]
        events.ingest("edge-a", [("event", r["id"], _packed(r)) for r in records])
        folder = ProfileFolder(store, events, _Lock(), lambda: None)
        assert folder.fold_once() is not None
        assert folder.fold_once() is None
        assert folder.skipped.total == 1
        with store.read() as view:
            fine = view.get("profiles", "fine")
        assert fine is not None and decode_profile("fine", fine).activity is not None
    finally:
        events.close()
        store.close()


def test_the_bandit_learner_skips_and_counts_what_it_cannot_use_and_learns_what_follows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, events = _with_bad_records(tmp_path)
    bad_exposure = _exposure("d0", "u0", "promo", "ship", "soon", st="bandit", id="d0:promo_slot")
    bad_click = _event("click-0", "u0", t="click", d="d0", v="a lot")
    events.ingest(
        "old-edge",
        [("exposure", "d0:promo_slot", _packed(bad_exposure)), ("event", "click-0", _packed(bad_click))],
    )
    try:
        learner = BanditLearner(store, events, _Lock(), lambda: None, schedule=NEVER)
        with caplog.at_level(logging.WARNING):
            while learner.read_once():
                pass
        assert learner.position == len(OLD_BAD) + 5
        assert (learner.stats.new_exposures, learner.stats.new_rewards) == (1, 1)
        # Skipped: the three records that do not decode, the bad exposure and the bad click (the views
        # with a bad time or user are not records the learner counts).
        assert learner.skipped.total == 5
        assert _skip_lines(caplog, "bandit_learner")
        assert learner.publish(1.0) is not None
    finally:
        events.close()
        store.close()


def test_a_report_skips_and_counts_what_it_cannot_use(
    served: tuple[ControlPlaneService, EventStore, str], caplog: pytest.LogCaptureFixture
) -> None:
    service, events, address = served
    doc = rules_doc()
    doc["experiments"] = {
        "hero_test": {
            "salt": "hero_test",
            "variants": [{"id": "control", "weight": 50}, {"id": "treat", "weight": 50}],
        }
    }
    service.store.commit([RecordChange("rules", "rules", msgpack.packb(doc, use_bin_type=True))], kind="push")
    now = time.time_ns() // 1_000_000
    _store_raw(
        events,
        "old-edge",
        [
            ("exposure", "x:hero", _packed(_exposure("x", "u9", "hero_test", "control", "yesterday"))),
            ("exposure", "y:hero", _packed(_exposure("y", "u8", "hero_test", "control", now, i="i1"))),
            ("event", "c-bad", _packed(_event("c-bad", "u1", t="click", v=[1]))),
            ("event", "bad-bytes", b"\xc1 not msgpack"),
        ],
    )
    good = [
        _exposure("d1", "u1", "hero_test", "control", now - 10_000),
        _exposure("d2", "u2", "hero_test", "treat", now - 10_000),
        _event("c1", "u1", t="click", d="d1", p="hero_banner", ts=now - 5_000),
    ]
    events.ingest("edge-a", [(r.get("k", "event"), r["id"], _packed(r)) for r in good])
    with caplog.at_level(logging.WARNING), grpc.insecure_channel(address) as channel:
        reply = sync_pb2_grpc.ControlPlaneStub(channel).Report(
            sync_pb2.ReportRequest(experiment="hero_test"), timeout=10
        )
    report = json.loads(reply.json)
    assert (report["exposures"], report["attributed"], report["skipped"]) == (2, 1, 4)
    assert [line.__dict__["skipped"] for line in _skip_lines(caplog, "report")] == [4]


def test_retention_deletes_what_nothing_can_use_and_stops_at_the_first_newer_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, events = _with_bad_records(tmp_path)
    try:
        folder = ProfileFolder(store, events, _Lock(), lambda: None)
        while folder.fold_once() is not None:
            pass
        retention = EventRetention(store, events, 45_000, clock_ms=lambda: NOW)
        with caplog.at_level(logging.WARNING):
            # Everything but the click (40 s old): the records without a usable time count as expired.
            assert retention.expire_once() == len(OLD_BAD) + 2
        assert [e["id"] for _, _, e in events.events()] == ["click-1"]
        assert [line.__dict__["skipped"] for line in _skip_lines(caplog, "retention")] == [4]
    finally:
        events.close()
        store.close()


def test_forget_deletes_a_damaged_record_the_user_index_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, events = _with_bad_records(tmp_path)
    try:
        with caplog.at_level(logging.WARNING):
            # bad-ts, damaged (named by the index), view-1, the exposure and the click of fold-me
            assert events.forget("fold-me") == 5
        assert all(e.get("u") != "fold-me" for _, _, e in events.events())
        assert events.count() == len(OLD_BAD) + 3 - 5
        assert [line.__dict__["skipped"] for line in _skip_lines(caplog, "forget")] == [1]
    finally:
        events.close()
        store.close()


def test_the_user_index_of_an_older_store_is_built_past_unreadable_records(tmp_path: Path) -> None:
    store, events = _with_bad_records(tmp_path)
    events.close()
    store.close()
    env = lmdb.open(str(tmp_path / "events"), max_dbs=5)
    try:
        with env.begin(write=True) as txn:  # as a store written before the index had it
            txn.delete(b"users_indexed", db=env.open_db(b"meta", txn=txn))
            txn.drop(env.open_db(b"users", txn=txn, dupsort=True), delete=False)
    finally:
        env.close()
    with EventStore(tmp_path / "events", map_size=64 << 20) as reopened:
        assert reopened.forget("fold-me") == 4  # the damaged record is no longer indexed under anyone


def test_an_exposure_naming_a_variant_the_experiment_does_not_have_is_skipped_not_fatal() -> None:
    # One forged exposure (well-formed, so Forward stores it) used to fail every report of the experiment.
    from edgewise.core.experiment_report import experiment_report

    records = [
        _exposure("d1", "u1", "hero_test", "control", NOW - 10_000),
        _exposure("d2", "u2", "hero_test", "treat", NOW - 10_000),
        _exposure("d3", "u3", "hero_test", "zzz", NOW - 9_000),
        _event("c1", "u1", t="click", d="d1", p="hero_banner", ts=NOW - 5_000),
    ]
    report = experiment_report(records, "hero_test", {"control": 1, "treat": 1}, "ctr")
    assert (report.exposures, report.attributed, report.skipped) == (2, 1, 1)
