"""The caller's side of the conversion (edge/client_convert.py) against the servicer's (edge/convert.py):
what a client sends is what the edge reads, and what the edge answers is what the client returns; plus
the dict forms of requests (edgewise.client.dicts)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from edgewise.client.dicts import decide_request, event
from edgewise.core.activity import Event
from edgewise.core.decisions import (
    Context,
    DecideRequest,
    DecideResponse,
    Explanation,
    FallbackReason,
    ItemExplanation,
    ItemResult,
    PlacementDecision,
    PlacementExplanation,
    PlacementRequest,
    RequestError,
)
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store, TrackResponse
from edgewise.edge.client_convert import (
    decide_request_to_pb,
    decide_response_from_pb,
    track_request_to_pb,
    track_response_from_pb,
    track_response_to_pb,
)
from edgewise.edge.convert import Limits, decide_input, decide_response, tracked_events
from edgewise.sync.bundle import load_bundle
from edgewise.sync.snapshot import apply_bundle
from edgewise.v1 import personalizer_pb2 as pb
from tests.test_fuzz import decide_requests

LIMITS = Limits()
NOW = 1_780_000_000_000


# --- requests: core -> pb -> what the edge reads ---------------------------------------------------------


@settings(derandomize=True, max_examples=300, deadline=None)
@given(message=decide_requests())
def test_a_decide_request_reaches_the_edge_unchanged(message: pb.DecideRequest) -> None:
    try:
        request = decide_input(message, LIMITS, NOW)  # a request the edge accepts, as core data
    except RequestError:
        return
    assert decide_input(decide_request_to_pb(request), LIMITS, NOW) == request


def test_every_request_field_is_sent() -> None:
    request = DecideRequest(
        user_id="u1",
        session_id="s1",
        context=Context(
            channel="web",
            device="mobile",
            language="de-DE",
            country="DE",
            region="DE-BY",
            journey_stage="cart",
            page_type="pdp",
            local_time="2026-11-25T18:00:00+01:00",
            url="https://shop.example/p/1",
            referrer="https://search.example/",
            attributes={"campaign": "xmas"},
        ),
        consent=frozenset({"personalization", "analytics"}),
        placements=(
            PlacementRequest("home", 5, ("i1", "i2"), ("i3",), ("i4",), "category", {"category": "fashion"}),
            PlacementRequest("hero_banner"),
        ),
        explain=True,
        now_ms=NOW,
    )
    assert decide_input(decide_request_to_pb(request), LIMITS, NOW) == request


def test_events_reach_the_edge_unchanged_and_consent_decides_the_purposes() -> None:
    events = [
        Event("e1", "purchase", "u1", "", "i1", "d" * 32, "home", 12.5, NOW - 1000),
        Event("e2", "view", "", "s1", "i2", "", "", 0.0, 0),  # 0: the time of receipt
    ]
    for consent, analytics, personalization in (
        (["analytics", "personalization"], True, True),
        (["analytics"], True, False),
        ([], False, False),
    ):
        read = tracked_events(track_request_to_pb(events, consent), LIMITS, NOW)
        expected = [
            dataclasses.replace(e, analytics=analytics, personalization=personalization) for e in events
        ]
        expected[1] = dataclasses.replace(expected[1], timestamp_ms=NOW)
        assert read == expected


def test_track_responses_round_trip() -> None:
    message = pb.TrackResponse(accepted=3, duplicates=2)
    result = track_response_from_pb(message)
    assert result == TrackResponse(accepted=3, duplicates=2)
    assert track_response_to_pb(result) == message


# --- responses: what the edge answers -> core --------------------------------------------------------


def _as_float32(decision: DecideResponse) -> DecideResponse:
    """`decision` as the wire carries it: scores and score parts are float32 there, and a placement's
    campaign and bandit segment and the response's `segments` are not on the wire."""
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    placements = [
        dataclasses.replace(
            p,
            items=[dataclasses.replace(i, score=f32(i.score)) for i in p.items],
            campaign="",
            bandit_segment="",
        )
        for p in decision.placements
    ]
    why = decision.explanation
    if why is not None:
        why = dataclasses.replace(
            why,
            placements=[
                dataclasses.replace(
                    p,
                    items=[
                        dataclasses.replace(i, parts={k: f32(v) for k, v in i.parts.items()}) for i in p.items
                    ],
                )
                for p in why.placements
            ],
        )
    return dataclasses.replace(decision, placements=placements, explanation=why, segments=())


def test_a_hand_made_response_round_trips_with_its_decision_id() -> None:
    decision = DecideResponse(
        snapshot_version=42,
        placements=[
            PlacementDecision(
                "home",
                [ItemResult("i1", 0.5, "embedding"), ItemResult("i9", 0.25, "promotion", promoted=True)],
                content_id="",
                experiment_id="hero_test",
                variant_id="b",
                propensity=0.5,
                strategy="embedding",
                fallback=FallbackReason.NONE,
            ),
            PlacementDecision("deals", [], strategy="popular", fallback=FallbackReason.UNKNOWN_USER),
        ],
        explanation=Explanation(
            user_known=True,
            personalization_allowed=True,
            segments=("deal_seekers",),
            features={"country": "DE"},
            placements=[
                PlacementExplanation(
                    "home",
                    strategy="embedding",
                    rule="r1",
                    bucket=1234,
                    unit_id="user:u1",
                    candidates=280,
                    seed_item_ids=("i3",),
                    notes=["excluded 3 recently viewed"],
                    campaign="spring",
                    experiment_id="hero_test",
                    variant_id="b",
                    items=[ItemExplanation("i1", {"base": 0.5}, ["boosted"])],
                )
            ],
        ),
    )
    back = decide_response_from_pb(decide_response(decision, "ab" * 16))
    assert back == dataclasses.replace(decision, decision_id="ab" * 16)
    no_explanation = dataclasses.replace(decision, explanation=None)
    assert decide_response_from_pb(decide_response(no_explanation, "x")).explanation is None


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("client-convert"), map_size=1 << 30)
    apply_bundle(s, load_bundle(bundle_dir))
    yield s
    s.close()


@pytest.mark.parametrize("user", ["u1", "u7", "nobody"])
def test_real_decisions_round_trip(store: Store, user: str) -> None:
    request = DecideRequest(
        user_id=user,
        consent=frozenset({"personalization"}),
        context=Context(country="DE", channel="web"),
        placements=(
            PlacementRequest("home", 8),
            PlacementRequest("pdp_similar", 5),
            PlacementRequest("deals"),
        ),
        explain=True,
        now_ms=NOW,
    )
    with store.read() as view:
        decision = Pipeline().decide(view, request)
    assert decision.decision_id == "" and decision.placements
    back = decide_response_from_pb(decide_response(decision, "d1"))
    assert back == dataclasses.replace(_as_float32(decision), decision_id="d1")


def test_an_unknown_fallback_reason_is_named() -> None:
    message = pb.DecideResponse(placements=[pb.PlacementDecision(placement_id="home")])
    message.placements[0].fallback_reason = 99  # type: ignore[assignment]
    with pytest.raises(ValueError, match="'home': fallback_reason 99 is not one this client knows"):
        decide_response_from_pb(message)


# --- dicts in the shape of the dataclasses ---------------------------------------------------------------


def test_a_dict_request_is_the_dataclass() -> None:
    as_dict = {
        "user_id": "u1",
        "consent": ["personalization"],
        "context": {"country": "DE", "attributes": {"campaign": "xmas"}},
        "placements": [
            {"placement_id": "home", "count": 5, "exclude_ids": ["i1"], "filter_params": {"min": "10"}},
            {"placement_id": "hero_banner"},
        ],
        "explain": True,
    }
    assert decide_request(as_dict) == DecideRequest(
        user_id="u1",
        context=Context(country="DE", attributes={"campaign": "xmas"}),
        consent=frozenset({"personalization"}),
        placements=(
            PlacementRequest("home", 5, exclude_ids=("i1",), filter_params={"min": "10"}),
            PlacementRequest("hero_banner"),
        ),
        explain=True,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"placement": [{"placement_id": "home"}]}, "unknown key 'placement'"),
        ({"placements": [{"placement_id": "home", "count": "5"}]}, "placements[0].count: expected an int"),
        ({"placements": [{"count": 5}]}, "placements[0].placement_id: is required"),
        ({"placements": [{"placement_id": "a", "exclude_ids": "i1"}]}, "exclude_ids: expected a list"),
        ({"placements": {"placement_id": "home"}}, "placements: expected a list of dicts"),
        ({"consent": "personalization"}, "consent: expected a list of strings"),
        ({"context": {"country": 49}}, "context.country: expected a string"),
        ({"context": {"town": "x"}}, "context: unknown key 'town'"),
        ({"explain": "yes"}, "explain: expected true or false"),
    ],
)
def test_a_bad_dict_request_names_the_path(value: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decide_request(value)


def test_a_dict_event_gets_an_id_and_defaults() -> None:
    a = event({"type": "view", "user_id": "u1", "item_id": "i4"})
    b = event({"type": "view", "user_id": "u1", "item_id": "i4"})
    assert len(a.event_id) == 32 and a.event_id != b.event_id
    assert dataclasses.replace(a, event_id="x") == Event("x", "view", "u1", "", "i4", "", "", 0.0, 0)
    assert event({"event_id": "e1", "type": "purchase", "value": 3}).value == 3.0
    with pytest.raises(ValueError, match=r"events\[2\]\.type: is required"):
        event({"user_id": "u1"}, "events[2]")
    with pytest.raises(ValueError, match=r"event\.value: expected a number"):
        event({"type": "purchase", "value": "3"})
