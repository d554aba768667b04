"""A real edge process on port 0, called over a real gRPC channel.

Tests that only read from a node (decisions, refused requests, health) share one per module
(`shared_channel`); a test that tracks events, signals or restarts a node starts its own (`channel`,
`edge_factory`)."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import EdgeProcess, rewrite_manifest, start_edge
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgewise.processes import ProcessError, Processes
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # every test here runs a real edge process

CONSENT = ["personalization", "analytics"]
ALL = ("home", "pdp_similar", "hero_banner")


def _profiles(bundle: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (bundle / "profiles.jsonl").read_text().splitlines()]


def _user(bundle: Path, *, consent: bool) -> str:
    for p in _profiles(bundle):
        if ("personalization" in p["consent"]) == consent:  # type: ignore[operator]
            return str(p["id"])
    raise AssertionError("no such user in the bundle")


def _decide(
    stub: pb_grpc.PersonalizerStub, placements: tuple[str, ...] = ALL, count: int = 5, **kw: object
) -> pb.DecideResponse:
    request = pb.DecideRequest(
        placements=[pb.PlacementRequest(placement_id=p, count=count) for p in placements],
        **kw,  # type: ignore[arg-type]
    )
    response: pb.DecideResponse = stub.Decide(request, timeout=5)
    return response


def _by_id(response: pb.DecideResponse) -> dict[str, pb.PlacementDecision]:
    return {p.placement_id: p for p in response.placements}


def _ids(decision: pb.PlacementDecision) -> list[str]:
    return [i.id for i in decision.items]


def _view(stub: pb_grpc.PersonalizerStub, user: str, item: str) -> pb.TrackResponse:
    event = pb.Event(event_id=uuid.uuid4().hex, type="view", user_id=user, item_id=item)
    response: pb.TrackResponse = stub.Track(pb.TrackRequest(events=[event], consent=CONSENT), timeout=5)
    return response


def test_known_user_gets_personalized_items_and_a_variant(
    shared_channel: grpc.Channel, bundle_dir: Path
) -> None:
    stub = pb_grpc.PersonalizerStub(shared_channel)
    user = _user(bundle_dir, consent=True)
    response = _decide(stub, user_id=user, consent=CONSENT, context=pb.Context(country="DE"))
    assert len(response.decision_id) == 32
    assert response.snapshot_version == 1
    placements = _by_id(response)
    home = placements["home"]
    assert home.strategy == "embedding"
    assert home.fallback_reason == pb.FALLBACK_REASON_NONE
    assert len(home.items) == 5
    scores = [i.score for i in home.items]
    assert scores == sorted(scores, reverse=True)
    hero = placements["hero_banner"]
    assert hero.experiment_id == "hero_test"
    assert hero.variant_id and hero.content_id
    assert 0 < hero.propensity <= 1
    # No explicit seeds and no history: similar items falls back to popularity, honestly labelled.
    assert placements["pdp_similar"].fallback_reason == pb.FALLBACK_REASON_COLD_START


def test_no_consent_user_gets_the_anonymous_default(shared_channel: grpc.Channel, bundle_dir: Path) -> None:
    stub = pb_grpc.PersonalizerStub(shared_channel)
    ctx = pb.Context(country="FR", device="desktop")
    no_consent_profile = _by_id(
        _decide(stub, user_id=_user(bundle_dir, consent=False), consent=CONSENT, context=ctx)
    )
    no_consent_request = _by_id(
        _decide(stub, user_id=_user(bundle_dir, consent=True), consent=[], context=ctx)
    )
    anonymous = _by_id(_decide(stub, session_id="s-anon", consent=CONSENT, context=ctx))
    for placements in (no_consent_profile, no_consent_request):
        for pid in ALL:
            assert placements[pid].fallback_reason == pb.FALLBACK_REASON_NO_CONSENT
        assert _ids(placements["home"]) == _ids(anonymous["home"])
        assert _ids(placements["pdp_similar"]) == _ids(anonymous["pdp_similar"])
        assert placements["hero_banner"].experiment_id == ""
        assert placements["hero_banner"].content_id == "hero_default"
    assert anonymous["home"].fallback_reason == pb.FALLBACK_REASON_UNKNOWN_USER


def test_track_excludes_viewed_items_and_similar_follows(channel: grpc.Channel, bundle_dir: Path) -> None:
    stub = pb_grpc.PersonalizerStub(channel)
    user = _user(bundle_dir, consent=True)
    before = _by_id(_decide(stub, user_id=user, consent=CONSENT))
    viewed = _ids(before["home"])[0]
    ack = _view(stub, user, viewed)
    assert (ack.accepted, ack.duplicates) == (1, 0)
    after = _by_id(_decide(stub, user_id=user, consent=CONSENT, explain=True))
    assert viewed not in _ids(after["home"])
    assert after["pdp_similar"].strategy == "similar"
    assert after["pdp_similar"].fallback_reason == pb.FALLBACK_REASON_NONE
    assert viewed not in _ids(after["pdp_similar"])
    response = _decide(stub, user_id=user, consent=CONSENT, explain=True)
    why = {p.placement_id: p for p in response.explanation.placements}
    assert list(why["pdp_similar"].seed_item_ids) == [viewed]


def test_anonymous_session_history_personalizes(channel: grpc.Channel) -> None:
    stub = pb_grpc.PersonalizerStub(channel)
    event = pb.Event(event_id="e-session-1", type="view", session_id="s-hist", item_id="i3")
    stub.Track(pb.TrackRequest(events=[event], consent=CONSENT), timeout=5)
    home = _by_id(_decide(stub, ("home",), session_id="s-hist", consent=CONSENT))["home"]
    assert home.strategy == "embedding"
    assert home.fallback_reason == pb.FALLBACK_REASON_NONE
    assert "i3" not in _ids(home)


def test_track_is_idempotent(channel: grpc.Channel) -> None:
    stub = pb_grpc.PersonalizerStub(channel)
    events = [pb.Event(event_id=f"e-{i}", type="click", user_id="u1", item_id=f"i{i}") for i in range(3)]
    first = stub.Track(pb.TrackRequest(events=events), timeout=5)
    second = stub.Track(
        pb.TrackRequest(events=[*events, pb.Event(event_id="e-new", type="view", user_id="u1")]), timeout=5
    )
    assert (first.accepted, first.duplicates) == (3, 0)
    assert (second.accepted, second.duplicates) == (1, 3)


def test_similar_items_from_explicit_seeds(shared_channel: grpc.Channel, bundle_dir: Path) -> None:
    stub = pb_grpc.PersonalizerStub(shared_channel)
    request = pb.DecideRequest(
        session_id="s-x",
        placements=[pb.PlacementRequest(placement_id="pdp_similar", count=8, seed_item_ids=["i5"])],
    )
    response = stub.Decide(request, timeout=5)
    similar = response.placements[0]
    assert similar.strategy == "similar"
    assert "i5" not in _ids(similar)
    # The neighbors are the items whose embeddings are closest to the seed's (among items shown everywhere).
    emb = np.load(bundle_dir / "models" / "item_embeddings.npy")
    ids = [json.loads(line)["id"] for line in (bundle_dir / "items.jsonl").read_text().splitlines()]
    scores = {ids[j]: float(emb[j] @ emb[ids.index("i5")]) for j in range(len(ids))}
    returned = [scores[i] for i in _ids(similar)]
    assert returned == pytest.approx([i.score for i in similar.items], rel=1e-4)
    assert min(returned) >= float(np.median(list(scores.values())))


def test_rerank_exclude_and_filters(shared_channel: grpc.Channel, bundle_dir: Path) -> None:
    stub = pb_grpc.PersonalizerStub(shared_channel)
    user = _user(bundle_dir, consent=True)
    candidates = ["i1", "i2", "i3", "i4", "unknown-item"]
    request = pb.DecideRequest(
        user_id=user,
        consent=CONSENT,
        placements=[
            pb.PlacementRequest(placement_id="home", count=10, candidate_ids=candidates, exclude_ids=["i2"])
        ],
    )
    home = stub.Decide(request, timeout=5).placements[0]
    assert set(_ids(home)) <= {"i1", "i3", "i4"}
    items = [json.loads(line) for line in (bundle_dir / "items.jsonl").read_text().splitlines()]
    category = items[0]["category"].split("/")[0]
    request = pb.DecideRequest(
        user_id=user,
        consent=CONSENT,
        placements=[
            pb.PlacementRequest(
                placement_id="home", count=10, filter="category", filter_params={"category": category}
            )
        ],
    )
    home = stub.Decide(request, timeout=5).placements[0]
    cats = {i["id"]: i["category"] for i in items}
    assert home.items and all(cats[i].startswith(category + "/") for i in _ids(home))
    request = pb.DecideRequest(
        placements=[
            pb.PlacementRequest(
                placement_id="home", count=10, filter="price", filter_params={"min": "10", "max": "50"}
            )
        ],
    )
    prices = {i["id"]: i["price"] for i in items}
    home = stub.Decide(request, timeout=5).placements[0]
    assert home.items and all(10 <= prices[i] <= 50 for i in _ids(home))


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"placements": []}, "placements"),
        ({"placements": [pb.PlacementRequest(placement_id="nope")]}, "placements[0].placement_id"),
        ({"placements": [pb.PlacementRequest(placement_id="home", count=10_000)]}, "placements[0].count"),
        ({"placements": [pb.PlacementRequest(placement_id="home", filter="magic")]}, "placements[0].filter"),
        (
            {
                "placements": [
                    pb.PlacementRequest(placement_id="home", filter="price", filter_params={"min": "x"})
                ]
            },
            "placements[0].filter_params",
        ),
        ({"user_id": "u" * 1000, "placements": [pb.PlacementRequest(placement_id="home")]}, "user_id"),
        (
            {"placements": [pb.PlacementRequest(placement_id="home", exclude_ids=["i1"] * 10_000)]},
            "placements[0].exclude_ids",
        ),
        ({"placements": [pb.PlacementRequest(placement_id="home")] * 2}, "placements[1].placement_id"),
    ],
)
def test_bad_decide_requests_are_invalid_argument(
    shared_channel: grpc.Channel, request_fields: dict[str, object], field: str
) -> None:
    stub = pb_grpc.PersonalizerStub(shared_channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(pb.DecideRequest(**request_fields), timeout=5)  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":")


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (pb.Event(type="view", user_id="u1"), "events[0].event_id"),
        (pb.Event(event_id="e", type="View It", user_id="u1"), "events[0].type"),
        (pb.Event(event_id="e", type="view"), "events[0].user_id"),
        (pb.Event(event_id="e", type="purchase", user_id="u1", value=float("nan")), "events[0].value"),
        # 128 characters (the cap) of 4 bytes each: too long for an LMDB key (once UNAVAILABLE, "retry")
        (pb.Event(event_id="😀" * 128, type="view", user_id="u1"), "events[0].event_id"),
        (pb.Event(event_id="e", type="view", user_id="😀" * 128), "events[0].user_id"),
    ],
)
def test_bad_track_requests_are_invalid_argument(
    shared_channel: grpc.Channel, event: pb.Event, field: str
) -> None:
    stub = pb_grpc.PersonalizerStub(shared_channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Track(pb.TrackRequest(events=[event]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":")


def test_health_and_reflection(shared_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(shared_channel)
    for service in ("", "edgewise.v1.Personalizer"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(shared_channel)
    responses = list(
        reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
    )
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"edgewise.v1.Personalizer", "grpc.health.v1.Health"} <= names
    responses = list(
        reflect.ServerReflectionInfo(
            iter(
                [reflection_pb2.ServerReflectionRequest(file_containing_symbol="edgewise.v1.DecideRequest")]
            ),
            timeout=5,
        )
    )
    assert responses[0].file_descriptor_response.file_descriptor_proto


def test_same_user_same_variant_on_two_edge_processes(
    shared_edge: EdgeProcess, edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    a = shared_edge
    b = edge_factory(tmp_path / "b", bundle_dir)
    assert a.proc.pid != b.proc.pid
    users = [f"u{n}" for n in range(60)]
    variants: list[dict[str, str]] = []
    for edge in (a, b):
        with grpc.insecure_channel(edge.address) as ch:
            stub = pb_grpc.PersonalizerStub(ch)
            variants.append(
                {
                    u: _by_id(
                        _decide(
                            stub,
                            ("hero_banner",),
                            user_id=u,
                            consent=CONSENT,
                            context=pb.Context(channel="web" if edge is a else "app"),
                        )
                    )["hero_banner"].variant_id
                    for u in users
                    if _by_id(_decide(stub, ("hero_banner",), user_id=u, consent=CONSENT))[
                        "hero_banner"
                    ].fallback_reason
                    == pb.FALLBACK_REASON_NONE
                }
            )
    assert variants[0] == variants[1]
    assert len(set(variants[0].values())) > 1  # more than one arm is actually served


def test_invalid_bundle_refused_previous_keeps_serving(
    edge_factory: Callable[..., EdgeProcess], bundle_copy: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    edge = edge_factory(data, bundle_copy)
    # Break the bundle in place: a NaN in an item vector (checksums rewritten so the NaN is what is caught).
    emb = np.load(bundle_copy / "models" / "item_embeddings.npy")
    emb[7, 3] = np.nan
    np.save(bundle_copy / "models" / "item_embeddings.npy", emb)
    rewrite_manifest(bundle_copy, version=2)
    edge.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any(e.get("event") == "bundle_refused" for e in edge.log_events()):
        assert time.monotonic() < deadline, edge.logs()
        time.sleep(0.05)
    refused = next(e for e in edge.log_events() if e.get("event") == "bundle_refused")
    assert "models/item_embeddings.npy" in str(refused["error"]) and "NaN" in str(refused["error"])
    with grpc.insecure_channel(edge.address) as ch:
        response = _decide(pb_grpc.PersonalizerStub(ch), session_id="s")
        assert response.snapshot_version == 1
    assert edge.stop() == 0

    # Restarting on the same data directory with the bad bundle: refused again, version 1 serves.
    edge = edge_factory(data, bundle_copy)
    with grpc.insecure_channel(edge.address) as ch:
        assert _decide(pb_grpc.PersonalizerStub(ch), session_id="s").snapshot_version == 1
    assert any(e.get("event") == "bundle_refused" for e in edge.log_events())

    # A fixed bundle with a new version is picked up on SIGHUP without a restart.
    emb[7, 3] = 0.5
    np.save(bundle_copy / "models" / "item_embeddings.npy", emb)
    rewrite_manifest(bundle_copy, version=2)
    edge.proc.send_signal(signal.SIGHUP)
    with grpc.insecure_channel(edge.address) as ch:
        stub = pb_grpc.PersonalizerStub(ch)
        deadline = time.monotonic() + 10
        while _decide(stub, session_id="s").snapshot_version != 2:
            assert time.monotonic() < deadline, edge.logs()
            time.sleep(0.05)


def test_a_fresh_node_with_an_invalid_bundle_refuses_to_start(
    processes: Processes, bundle_copy: Path, tmp_path: Path
) -> None:
    (bundle_copy / "items.jsonl").write_text("not json\n")
    with pytest.raises(ProcessError, match=r"items.jsonl") as err:
        start_edge(processes, tmp_path / "data", bundle_copy, timeout=30)
    assert "no_snapshot" in str(err.value)


def test_sigterm_drains_and_exits_zero(edge: EdgeProcess) -> None:
    with grpc.insecure_channel(edge.address) as ch:
        _decide(pb_grpc.PersonalizerStub(ch), session_id="s")
    assert edge.stop(signal.SIGTERM) == 0
    events = [e["event"] for e in edge.log_events()]
    assert events[-1] == "stopped"
    assert events.index("stopping") < events.index("worker_stopped") < events.index("stopped")


def test_campaigns_through_a_real_edge(channel: grpc.Channel, bundle_dir: Path) -> None:
    """Abandoned cart via Track with event times, a bandit slot and a promoted deal, over gRPC."""
    from edgewise.core.experiments import assign, in_holdout
    from edgewise.sync.bundle import load_bundle

    stub = pb_grpc.PersonalizerStub(channel)
    rules = load_bundle(bundle_dir).rules
    user = next(
        str(p["id"])
        for p in _profiles(bundle_dir)
        if "personalization" in p["consent"]  # type: ignore[operator]
        and not in_holdout(rules.holdout, str(p["id"]))
        and getattr(assign(rules.experiments["home_algo"], str(p["id"]), {}), "variant", None) is None
    )
    items = [json.loads(line) for line in (bundle_dir / "items.jsonl").read_text().splitlines()]
    cart_item = next(i["id"] for i in items if i["regions"] == ["*"])
    forty_minutes_ago = int(time.time() * 1000) - 40 * 60_000
    event = pb.Event(
        event_id=f"cart-{user}",
        type="add_to_cart",
        user_id=user,
        item_id=cart_item,
        timestamp_ms=forty_minutes_ago,
    )
    stub.Track(pb.TrackRequest(events=[event], consent=CONSENT), timeout=5)
    response = _decide(stub, ("home", "promo_slot", "deals"), user_id=user, consent=CONSENT, explain=True)
    placements = _by_id(response)
    assert placements["home"].strategy == "cart" and _ids(placements["home"]) == [cart_item]
    why = {p.placement_id: p for p in response.explanation.placements}
    assert why["home"].campaign == "cart_reminder"
    assert "cart_abandoners" in response.explanation.segments
    slot = placements["promo_slot"]
    assert slot.strategy == "bandit" and slot.content_id.startswith("promo_") and 0 < slot.propensity < 1
    if why["deals"].campaign == "deals_popular":
        assert placements["deals"].items[0].promoted
    else:
        assert why["deals"].campaign == "deals_for_deal_seekers"
