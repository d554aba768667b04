"""The DecideResponse bytes written in C (edge/_wire.pyx) against the message path they replace
(`decide_response(...).SerializeToString()`): the same bytes for any decision without an explanation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgewise.core.decisions import (
    DecideResponse,
    Explanation,
    FallbackReason,
    ItemResult,
    PlacementDecision,
)
from edgewise.edge._wire import decide_response_bytes
from edgewise.edge.convert import decide_response
from edgewise.v1 import personalizer_pb2 as pb

_text = st.one_of(st.text(max_size=20), st.text(min_size=120, max_size=200))  # 1- and 2-byte lengths
# Scores as the pipeline makes them (float32 values), others rounded to float32 on the way; -0.0 is written.
_floats = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.sampled_from([0.0, -0.0, 1e-45])
_placements = st.builds(
    PlacementDecision,
    placement_id=_text,
    items=st.lists(
        st.builds(ItemResult, id=_text, score=_floats, reason=_text, promoted=st.booleans()), max_size=12
    ),
    content_id=_text,
    experiment_id=_text,
    variant_id=_text,
    propensity=st.floats(allow_nan=False) | st.sampled_from([0.0, -0.0, 1.0]),
    strategy=_text,
    fallback=st.sampled_from(list(FallbackReason)),
)
_decisions = st.builds(
    DecideResponse,
    snapshot_version=st.integers(0, 2**64 - 1),
    placements=st.lists(_placements, max_size=5),
)


@given(_decisions, _text)
def test_the_bytes_are_the_message_paths(decision: DecideResponse, decision_id: str) -> None:
    ours = decide_response_bytes(decision, decision_id)
    assert ours == decide_response(decision, decision_id).SerializeToString()
    assert pb.DecideResponse.FromString(ours) == decide_response(decision, decision_id)


def test_a_decision_with_an_explanation_takes_the_message_path() -> None:
    with pytest.raises(ValueError, match="explanation"):
        decide_response_bytes(DecideResponse(1, [], Explanation()), "d")
