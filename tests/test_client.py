"""edgewise.client against real processes: EdgeClient and AsyncEdgeClient against an edge serving the
synthetic bundle, ControlClient against a control plane with a following edge. Every answer is a
dataclass, every refusal a ClientError (or, before any call, BundleError / ValueError)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from edgewise.client import (
    AsyncEdgeClient,
    BundleError,
    ClientError,
    ControlClient,
    DecideRequest,
    DecideResponse,
    EdgeClient,
    Event,
    FallbackReason,
    PlacementRequest,
    TrackResponse,
)
from edgewise.core.decisions import Context
from tests.conftest import EdgeProcess
from tests.sync_support import ControlProcess, control_planes, following_edge, versions_reach, wait_for

pytestmark = pytest.mark.slow

OPS_TOKEN = "ops-client-1"
EDGE_TOKEN = "edge-client-1"
OPS = {"EDGEWISE_OPS_TOKEN": OPS_TOKEN}
EDGE = {"EDGEWISE_EDGE_TOKEN": EDGE_TOKEN}
CONSENT = frozenset({"personalization", "analytics"})


# --- EdgeClient ------------------------------------------------------------------------------------------


def test_decide_answers_in_core_types_with_the_decision_id(edge: EdgeProcess) -> None:
    request = DecideRequest(
        user_id="u1",
        consent=CONSENT,
        context=Context(country="DE", channel="web", attributes={"campaign": "xmas"}),
        placements=(PlacementRequest("home", 3), PlacementRequest("hero_banner")),
        explain=True,
    )
    with EdgeClient(edge.address) as client:
        response = client.decide(request)
        as_dict = client.decide(
            {
                "user_id": "u1",
                "consent": sorted(CONSENT),
                "context": {"country": "DE", "channel": "web", "attributes": {"campaign": "xmas"}},
                "placements": [{"placement_id": "home", "count": 3}, {"placement_id": "hero_banner"}],
            }
        )
        with pytest.raises(ClientError) as refused:
            client.decide({"placements": [{"placement_id": "nowhere"}]})
        with pytest.raises(ValueError, match="unknown key 'placement'"):
            client.decide({"placement": "home"})  # refused here, before any call
    assert isinstance(response, DecideResponse)
    assert re.fullmatch("[0-9a-f]{32}", response.decision_id)
    assert response.snapshot_version == 1
    home, hero = response.placements
    assert home.placement_id == "home" and len(home.items) == 3
    assert home.fallback is FallbackReason.NONE and home.items[0].score > 0
    assert hero.placement_id == "hero_banner" and hero.content_id
    assert response.explanation is not None and response.explanation.user_known
    assert [p.placement_id for p in response.explanation.placements] == ["home", "hero_banner"]
    # the dict asks the same (without explain): the same items, a new decision id
    assert [i.id for i in as_dict.placements[0].items] == [i.id for i in home.items]
    assert as_dict.explanation is None and as_dict.decision_id != response.decision_id
    error = refused.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT and error.method == "Decide"
    assert "placements[0].placement_id" in error.details
    assert str(error) == f"INVALID_ARGUMENT: {error.details}"


def test_track_then_decide_shows_the_change(edge: EdgeProcess) -> None:
    view = Event("client-view-1", "view", "", "s9", "i4", "", "", 0.0, 0)
    seeds_then_items: list[tuple[list[str], list[str]]] = []
    with EdgeClient(edge.address, timeout=10) as client:
        ask = {
            "session_id": "s9",
            "consent": ["personalization"],
            "placements": [{"placement_id": "pdp_similar", "count": 5}],
            "explain": True,
        }
        before = client.decide(ask)
        assert client.track([view], consent=["personalization"]) == TrackResponse(accepted=1, duplicates=0)
        # the same event id again is a duplicate; a dict event gets an id of its own
        again = client.track(
            [view, {"type": "view", "session_id": "s9", "item_id": "i4"}], consent=["personalization"]
        )
        assert again == TrackResponse(accepted=1, duplicates=1)
        for response in (before, client.decide(ask)):
            assert response.explanation is not None
            seeds = [s for p in response.explanation.placements for s in p.seed_item_ids]
            seeds_then_items.append((seeds, [i.id for i in response.placements[0].items]))
        with pytest.raises(ClientError) as refused:
            client.track({"type": "view", "item_id": "i4"})  # neither user nor session
    (seeds_before, _), (seeds_after, items_after) = seeds_then_items
    assert "i4" not in seeds_before
    assert seeds_after == ["i4"] and "i4" not in items_after
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT and refused.value.method == "Track"
    assert "events[0].user_id" in refused.value.details


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_health_and_the_async_client(edge: EdgeProcess) -> None:
    with EdgeClient(edge.address) as client:
        assert client.health() == "SERVING"
        assert client.health("") == "SERVING"
        with pytest.raises(ClientError) as unknown:
            client.health("no.such.Service")
    assert unknown.value.code is grpc.StatusCode.NOT_FOUND
    with EdgeClient(f"127.0.0.1:{_closed_port()}", timeout=2) as nobody, pytest.raises(ClientError) as down:
        nobody.decide(DecideRequest(placements=(PlacementRequest("home"),)))
    assert down.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    async def calls() -> tuple[str, DecideResponse, TrackResponse, DecideResponse, ClientError]:
        async with AsyncEdgeClient(edge.address) as client:
            status = await client.health()
            ask = DecideRequest(
                session_id="s-async",
                consent=frozenset({"personalization"}),
                placements=(PlacementRequest("pdp_similar", 5),),
                explain=True,
            )
            first = await client.decide(ask)
            tracked = await client.track(
                {"event_id": "async-1", "type": "view", "session_id": "s-async", "item_id": "i7"},
                consent=["personalization"],
            )
            second = await client.decide(ask)
            try:
                await client.decide(DecideRequest())
            except ClientError as exc:
                error = exc
            return status, first, tracked, second, error

    status, first, tracked, second, error = asyncio.run(calls())
    assert status == "SERVING"
    assert tracked == TrackResponse(accepted=1, duplicates=0)
    assert first.decision_id != second.decision_id
    assert second.explanation is not None and second.explanation.placements[0].seed_item_ids == ("i7",)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT and "placements" in error.details


# --- ControlClient ---------------------------------------------------------------------------------------


@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[Callable[..., ControlProcess]]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start


def test_every_control_call(
    control_factory: Callable[..., ControlProcess],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    bundle_copy: Path,
    tmp_path: Path,
) -> None:
    control = control_factory()
    data = tmp_path / "edge"
    with ControlClient(control.address, token=OPS_TOKEN, timeout=60) as ops:
        # a bundle that fails validation is refused here: nothing is uploaded
        (bundle_copy / "items.jsonl").write_text('{"id": "a"}\n')
        with pytest.raises(BundleError, match=r"items\.jsonl"):
            ops.push(bundle_copy)
        assert ops.history().head_version == 0

        progress: list[tuple[int, int]] = []
        pushed = ops.push(
            bundle_dir, description="first", progress=lambda sent, total: progress.append((sent, total))
        )
        assert pushed.version > 0 and pushed.changes > 0 and "bundle version 1" in pushed.summary
        assert pushed.bundle is not None and (pushed.bundle.items, pushed.bundle.profiles) == (300, 400)
        total = sum(p.stat().st_size for p in bundle_dir.rglob("*") if p.is_file())
        assert progress[-1] == (total, total) and all(t == total for _, t in progress)

        edge = following_edge(edge_factory, data, control.address, "edge-c", EDGE)
        wait_for(versions_reach([data], pushed.version), 20, "the edge at the push")
        wait_for(lambda: bool(ops.status().edges) and ops.status().edges[0].lag == 0, 10, "the edge's ACK")
        status = ops.status()
        assert status.head_version == pushed.version
        (row,) = status.edges
        assert (row.node_id, row.applied_version, row.state, row.connected) == (
            "edge-c",
            pushed.version,
            "READY",
            True,
        )

        # a delta as dicts, and as a file; a refused one changes nothing and names the line
        item = {"id": "client-item", "category": "home/kitchen", "price": 9.5, "regions": ["*"]}
        added = ops.push_delta([{"op": "upsert", "item": item}], description="one item")
        assert added.version > pushed.version and added.changes >= 1 and added.bundle is None
        delta = tmp_path / "d.jsonl"
        delta.write_text(json.dumps({"op": "delete", "profile": "u3"}) + "\n")
        deleted = ops.push_delta(delta)
        assert deleted.version > added.version and deleted.summary.startswith("delta d.jsonl")
        with pytest.raises(ClientError) as bad:
            ops.push_delta([{"op": "frobnicate", "item": "x"}], name="bad.jsonl")
        assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT and bad.value.method == "Push"
        assert "bad.jsonl" in bad.value.details and "line 1" in bad.value.details
        with pytest.raises(FileNotFoundError, match="no such file"):
            ops.push_delta(tmp_path / "missing.jsonl")

        history = ops.history(limit=10)
        assert history.head_version == deleted.version
        assert [(c.kind, c.description) for c in history.commits[:3]] == [
            ("delta", "d.jsonl"),
            ("delta", "one item"),
            ("push", "first"),
        ]
        assert pushed.version in history.snapshot_versions

        rolled = ops.rollback(pushed.version)
        assert rolled.version > deleted.version
        wait_for(versions_reach([data], rolled.version), 20, "the edge at the rollback")
        assert ops.history(limit=1).commits[0].kind == "rollback"
        with pytest.raises(ClientError) as gone:
            ops.rollback(999_999)
        assert gone.value.code is grpc.StatusCode.FAILED_PRECONDITION

        # decisions and clicks on the edge come back in the experiment report
        served = clicks = 0
        with EdgeClient(edge.address, timeout=10) as client:
            for n in range(20):
                response = client.decide(
                    {
                        "session_id": f"s{n}",
                        "consent": ["analytics", "personalization"],
                        "context": {"channel": "web", "country": "DE"},
                        "placements": [{"placement_id": "hero_banner"}],
                    }
                )
                hero = response.placements[0]
                served += hero.experiment_id == "hero_test"
                if n % 2 == 0 and hero.experiment_id == "hero_test":
                    click = {"type": "click", "session_id": f"s{n}", "decision_id": response.decision_id}
                    client.track({**click, "placement_id": "hero_banner"}, consent=["analytics"])
                    clicks += 1
        assert served > 5
        wait_for(lambda: ops.status().events_total >= 20 + clicks, 20, "the exposures and clicks upstream")
        report = ops.report("hero_test", metric="ctr", by="country", confidence=0.9)
        assert report["experiment"] == "hero_test" and report["exposures"] == served
        assert report["attributed"] == clicks
        assert report["confidence"] == 0.9 and {s["group"] for s in report["slices"]} == {"DE"}
        with pytest.raises(ClientError) as missing:
            ops.report("nope")
        assert missing.value.code is grpc.StatusCode.NOT_FOUND and "hero_test" in missing.value.details
        with pytest.raises(ValueError, match="confidence"):
            ops.report("hero_test", confidence=1.5)

        # forget a user: gone from the edge, confirmed by it
        forgot = ops.forget("u5")
        assert forgot.user_id == "u5" and forgot.version > rolled.version
        wait_for(versions_reach([data], forgot.version), 20, "the edge at the forget")
        wait_for(lambda: ops.forget_status("u5").users[0].confirmed == ("edge-c",), 10, "the confirmation")
        everyone = ops.forget_status(limit=5)
        assert everyone.total == 1 and [u.user_id for u in everyone.users] == ["u5"]
        (u5,) = everyone.users
        assert (u5.version, u5.pending) == (forgot.version, ())
        assert ops.forget_status("nobody").users == ()
        with pytest.raises(ValueError, match="limit: must be 1-1000, got 0"):
            ops.forget_status(limit=0)
        with EdgeClient(edge.address) as client:
            home = [{"placement_id": "home"}]
            answer = client.decide({"user_id": "u5", "consent": ["personalization"], "placements": home})
        assert answer.placements[0].fallback is FallbackReason.UNKNOWN_USER


def test_tokens_and_transport_are_errors_a_caller_can_act_on(
    control_factory: Callable[..., ControlProcess], bundle_dir: Path
) -> None:
    control = control_factory()
    for token, code, details in (
        (None, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"),
        ("wrong-token", grpc.StatusCode.UNAUTHENTICATED, "unknown token"),
        (EDGE_TOKEN, grpc.StatusCode.PERMISSION_DENIED, "needs an ops token"),
    ):
        with ControlClient(control.address, token=token, timeout=15) as ops:
            for call in (ops.status, lambda ops=ops: ops.push(bundle_dir)):
                with pytest.raises(ClientError) as refused:
                    call()
                assert refused.value.code is code and details in refused.value.details
                assert token is None or token not in str(refused.value)
    with ControlClient(control.address, token=OPS_TOKEN) as ops:
        assert ops.history().head_version == 0  # nothing was pushed by the refused calls
    # settings that could never work are refused before any call
    with pytest.raises(ValueError, match="printable ASCII"):
        ControlClient(control.address, token="two words")
    with pytest.raises(ValueError, match="needs a CA file"):
        ControlClient(control.address, token=OPS_TOKEN, tls_cert="c.pem", tls_key="k.pem")
    with pytest.raises(ValueError, match="cannot read TLS CA file"):
        ControlClient(control.address, tls_ca="/no/such/ca.pem")
    nobody = ControlClient(f"127.0.0.1:{_closed_port()}", token=OPS_TOKEN, timeout=2)
    with nobody, pytest.raises(ClientError) as down:
        nobody.status()
    assert down.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
