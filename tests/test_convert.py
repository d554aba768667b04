"""Decide request conversion: the fast path (every request) agrees with the field-by-field checks.

`decide_input` first tries `_decide_input_fast`, which validates caps without building field names and
gives up (raises _Recheck) at the first doubt; `_decide_input_checked` then returns the same result or
the RequestError naming the field. Both must agree on every request, valid or not.
"""

from __future__ import annotations

from hypothesis import given, settings
from test_fuzz import decide_requests

from edgewise.core.decisions import RequestError
from edgewise.edge.convert import Limits, _decide_input_checked, _decide_input_fast, _Recheck, decide_input
from edgewise.v1 import personalizer_pb2 as pb

LIMITS = Limits()


def _outcome(fn: object, request: pb.DecideRequest) -> object:
    try:
        return fn(request, LIMITS, 7)  # type: ignore[operator]
    except RequestError as exc:
        return ("error", str(exc))


@settings(derandomize=True, max_examples=600, deadline=None)
@given(request=decide_requests())
def test_fast_path_agrees_with_the_checked_path(request: pb.DecideRequest) -> None:
    checked = _outcome(_decide_input_checked, request)
    assert _outcome(decide_input, request) == checked
    try:
        fast = _decide_input_fast(request, LIMITS, 7)
    except _Recheck:
        return
    assert fast == checked  # whatever the fast path accepts, the checked path accepts the same way


def test_fast_path_takes_a_typical_request() -> None:
    request = pb.DecideRequest(
        user_id="u1",
        consent=["personalization"],
        context=pb.Context(channel="web", country="DE", attributes={"campaign": "x"}),
        placements=[
            pb.PlacementRequest(placement_id="home", count=10),
            pb.PlacementRequest(placement_id="pdp_similar", seed_item_ids=["i1"], filter_params={"a": "b"}),
        ],
    )
    assert _decide_input_fast(request, LIMITS, 7) == _decide_input_checked(request, LIMITS, 7)
