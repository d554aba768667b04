"""The compiled exposure packer (core/_exposure.pyx) against its Python reference: the same bytes for
any decision, and the fallback to the reference for values the compiled one does not write."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from edgewise.core._exposure import exposure_records as compiled
from edgewise.core.decisions import (
    Context,
    DecideRequest,
    DecideResponse,
    FallbackReason,
    ItemResult,
    PlacementDecision,
    PlacementRequest,
)
from edgewise.core.exposure import _exposure_records_py, exposure_records

# Lengths across every msgpack size class (fixstr < 32 <= str8 < 256 <= str16), non-ASCII included.
_text = st.one_of(st.text(max_size=40), st.text(min_size=250, max_size=300), st.just("é" * 140))
_ints = st.one_of(
    st.integers(0, 300),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -32, -33, -128, -129, -32768]),
    st.sampled_from([-32769, -(2**31), -(2**31) - 1, 1_764_000_000_000]),
)
_floats = st.floats(allow_nan=False) | st.sampled_from([0.0, -0.0, 1.0, 0.25])
_placement = st.builds(
    PlacementDecision,
    placement_id=_text,
    items=st.lists(st.builds(ItemResult, id=_text, score=_floats, reason=_text), max_size=20),
    content_id=_text,
    experiment_id=_text,
    variant_id=_text,
    propensity=_floats,
    strategy=_text,
    fallback=st.sampled_from(list(FallbackReason)),
    campaign=_text,
    bandit_segment=_text,
)


@st.composite
def _decisions(draw: st.DrawFn) -> tuple[str, DecideRequest, DecideResponse]:
    context = Context(channel=draw(_text), device=draw(_text), country=draw(_text))
    request = DecideRequest(
        user_id=draw(_text),
        session_id=draw(_text),
        context=context,
        consent=frozenset({"analytics"}),
        placements=(PlacementRequest("p"),),
        now_ms=draw(_ints),
    )
    decision = DecideResponse(
        snapshot_version=draw(_ints),
        placements=draw(st.lists(_placement, max_size=4)),
        segments=tuple(draw(st.lists(_text, max_size=20))),
    )
    return draw(_text), request, decision


@given(_decisions())
def test_the_compiled_records_are_the_reference_bytes(
    case: tuple[str, DecideRequest, DecideResponse],
) -> None:
    assert compiled(*case) == _exposure_records_py(*case)
    assert exposure_records(*case) == _exposure_records_py(*case)


def test_a_value_the_compiled_packer_does_not_write_falls_back_to_the_reference() -> None:
    request = DecideRequest(user_id="u1", consent=frozenset({"analytics"}), now_ms=1)
    for odd in (None, True, 2**64 - 1, b"raw"):
        placement = PlacementDecision("home", propensity=odd)  # type: ignore[arg-type]
        decision = DecideResponse(3, [placement])
        expected = _exposure_records_py("d1", request, decision)
        assert exposure_records("d1", request, decision) == expected
        assert msgpack.unpackb(expected[0])["pr"] == odd


def test_no_records_without_the_analytics_purpose() -> None:
    request = DecideRequest(user_id="u1", consent=frozenset({"personalization"}))
    assert exposure_records("d1", request, DecideResponse(1, [PlacementDecision("home")])) == []
