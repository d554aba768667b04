"""The compiled DecideRequest decoder (edge/_wire.pyx's `decide_request`) against the message path it
replaces (upb parses the bytes, `decide_input` converts): whatever it takes, it converts exactly as
the message path does; what it leaves (None), the message path accepts or refuses on its own."""

from __future__ import annotations

from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz import decide_requests

from edgewise.core.decisions import RequestError
from edgewise.edge import _wire
from edgewise.edge.convert import _FAST_KEY_ID_CHARS, Limits, decide_input
from edgewise.v1 import personalizer_pb2 as pb

LIMITS = Limits()
TIGHT = Limits(
    max_placements=2, max_ids=2, max_seeds=1, max_attributes=2, max_id_length=8, max_string_length=30
)


def _message_path(data: bytes, limits: Limits) -> object:
    try:
        return decide_input(pb.DecideRequest.FromString(data), limits, 7)
    except RequestError as exc:
        return ("error", str(exc))
    except Exception as exc:  # undecodable bytes: the servicer answers INVALID_ARGUMENT
        return ("undecodable", type(exc).__name__)


@settings(derandomize=True, max_examples=examples(600), deadline=None)
@given(request=decide_requests(), tight=st.booleans())
def test_what_the_decoder_takes_it_converts_as_the_message_path(
    request: pb.DecideRequest, tight: bool
) -> None:
    limits = TIGHT if tight else LIMITS
    data = request.SerializeToString()
    fast = _wire.decide_request(data, limits, 7)
    if fast is not None:
        assert fast == _message_path(data, limits)


@settings(derandomize=True, max_examples=examples(600), deadline=None)
@given(
    request=decide_requests(),
    cuts=st.lists(st.tuples(st.integers(0, 400), st.binary(max_size=3)), max_size=3),
)
def test_damaged_bytes_are_taken_only_when_the_message_path_takes_them(
    request: pb.DecideRequest, cuts: list[tuple[int, bytes]]
) -> None:
    data = request.SerializeToString()
    for at, insert in cuts:  # bytes replaced, inserted, truncated
        at = min(at, len(data))
        data = data[:at] + insert + data[at + len(insert) // 2 :]
    fast = _wire.decide_request(data, LIMITS, 7)
    if fast is not None:
        assert fast == _message_path(data, LIMITS)


def test_a_typical_request_is_taken() -> None:
    request = pb.DecideRequest(
        user_id="u1",
        consent=["personalization", "analytics"],
        context=pb.Context(
            channel="web", country="DE", local_time="2026-11-25T10:00:00+01:00", attributes={"c": "x"}
        ),
        placements=[
            pb.PlacementRequest(placement_id="home", count=10),
            pb.PlacementRequest(placement_id="pdp_similar", seed_item_ids=["i1"], filter_params={"a": "b"}),
            pb.PlacementRequest(placement_id="hero_banner"),
        ],
    )
    data = request.SerializeToString()
    assert _wire.decide_request(data, LIMITS, 7) == decide_input(request, LIMITS, 7)


def test_a_field_written_twice_is_left_to_the_message_path() -> None:
    # Concatenated messages merge: the last user_id wins, contexts merge. The decoder leaves those.
    first = pb.DecideRequest(user_id="a", placements=[pb.PlacementRequest(placement_id="home")])
    second = pb.DecideRequest(user_id="b")
    assert _wire.decide_request(first.SerializeToString() + second.SerializeToString(), LIMITS, 7) is None
    assert _wire.decide_request(b"\x0a\x80", LIMITS, 7) is None  # a length past the end
    assert _wire.decide_request(b"\x0a\x02\xc3\x28", LIMITS, 7) is None  # invalid UTF-8


def test_the_id_cap_is_the_converters() -> None:
    assert _wire.FAST_KEY_ID_CHARS == _FAST_KEY_ID_CHARS
