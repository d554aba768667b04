"""Decide request conversion: the fast path (every request) agrees with the field-by-field checks.

`decide_input` first tries `_decide_input_fast`, which validates caps without building field names and
gives up (raises _Recheck) at the first doubt; `_decide_input_checked` then returns the same result or
the RequestError naming the field. Both must agree on every request, valid or not.
"""

from __future__ import annotations

from conftest import examples
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


@settings(derandomize=True, max_examples=examples(600), deadline=None)
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


def test_ids_that_become_keys_are_capped_in_bytes_of_utf8() -> None:
    # 128 characters pass max_id_length, but 128 four-byte characters are 512 bytes: more than an LMDB
    # key holds. Such a Track used to fail at commit with UNAVAILABLE ("retry"), forever.
    from edgewise.edge.convert import MAX_KEY_ID_BYTES, tracked_events

    wide, fits = "😀" * 128, "😀" * 100  # 512 and 400 bytes
    placements = [pb.PlacementRequest(placement_id="home")]
    for field in ("user_id", "session_id"):
        request = pb.DecideRequest(placements=placements, **{field: wide})
        assert _outcome(decide_input, request) == (
            "error",
            f"{field}: is 512 bytes of UTF-8, more than the cap of {MAX_KEY_ID_BYTES}",
        )
        assert not isinstance(
            _outcome(decide_input, pb.DecideRequest(placements=placements, **{field: fits})), tuple
        )
    for field in ("event_id", "user_id", "session_id"):
        event = pb.Event(event_id="e1", type="view", session_id="s1", item_id="i1")
        setattr(event, field, wide)
        try:
            tracked_events(pb.TrackRequest(events=[event]), LIMITS, 7)
            raise AssertionError(f"{field} of 512 bytes accepted")
        except RequestError as exc:
            assert str(exc) == f"events[0].{field}: is 512 bytes of UTF-8, more than the cap of 400"
        setattr(event, field, fits)
        assert len(tracked_events(pb.TrackRequest(events=[event]), LIMITS, 7)) == 1


def test_event_times_far_after_the_node_clock_are_refused() -> None:
    # A timestamp in microseconds (a common slip) is some 57,000 years ahead: its view would never
    # expire from live activity, and behavioural windows would count it for ever.
    from edgewise.edge.convert import tracked_events

    now = 1_795_000_000_000
    day = 86_400_000

    def track(timestamp_ms: int) -> object:
        event = pb.Event(event_id="e1", type="view", user_id="u1", item_id="i1", timestamp_ms=timestamp_ms)
        try:
            return tracked_events(pb.TrackRequest(events=[event]), LIMITS, now)[0].timestamp_ms
        except RequestError as exc:
            return str(exc)

    assert track(0) == now  # the time of receipt
    assert track(now - 400 * day) == now - 400 * day  # late events are fine
    assert track(now // 1000) == (  # seconds
        f"events[0].timestamp_ms: {now // 1000} is before 2000-01-01: Unix time in milliseconds is "
        "expected (not seconds), or 0 for the time of receipt"
    )
    assert str(track(-1)).startswith("events[0].timestamp_ms: -1 is before 2000-01-01")
    assert track(now + day) == now + day  # within a day of clock skew
    assert track(now * 1000) == (
        f"events[0].timestamp_ms: {now * 1000} is more than 86400 s after this node's clock ({now}): "
        "Unix time in milliseconds is expected (not micro- or nanoseconds), or 0 for the time of receipt"
    )
    assert str(track(now + day + 1)).startswith("events[0].timestamp_ms: ")
    strict = Limits(max_future_seconds=0)
    event = pb.Event(event_id="e1", type="view", user_id="u1", item_id="i1", timestamp_ms=now + 1)
    try:
        tracked_events(pb.TrackRequest(events=[event]), strict, now)
        raise AssertionError("an event 1 ms ahead passed max_future_seconds=0")
    except RequestError as exc:
        assert "more than 0 s after" in str(exc)


def test_event_types_are_matched_whole() -> None:
    # `$` matched before a trailing newline: "view\n" was stored as a type no report knows.
    from edgewise.edge.convert import tracked_events

    def track(type_: str) -> object:
        event = pb.Event(event_id="e1", type=type_, user_id="u1", item_id="i1")
        try:
            return tracked_events(pb.TrackRequest(events=[event]), LIMITS, 7)[0].type
        except RequestError as exc:
            return exc.field

    assert track("view") == "view" and track("add_to_cart") == "add_to_cart"
    assert track("a" * 64) == "a" * 64
    for bad in ("view\n", "view\r\n", "\nview", "view ", "a" * 65, "View", ""):
        assert track(bad) == "events[0].type", repr(bad)


def test_an_events_context_gets_the_checks_of_the_decide_context() -> None:
    from edgewise.edge.convert import tracked_events

    def track(context: pb.Context, limits: Limits = LIMITS) -> str:
        events = [
            pb.Event(event_id="e0", type="view", user_id="u1"),
            pb.Event(event_id="e1", type="view", user_id="u1", context=context),
        ]
        try:
            tracked_events(pb.TrackRequest(events=events), limits, 7)
            return "ok"
        except RequestError as exc:
            return str(exc)

    assert track(pb.Context(channel="web", url="https://x/" + "a" * 2000, attributes={"k": "v"})) == "ok"
    assert track(pb.Context(url="u" * 2049)) == (
        "events[1].context.url: is 2049 characters long, more than the cap of 2048"
    )
    assert track(pb.Context(referrer="r" * 11), Limits(max_string_length=10)).startswith(
        "events[1].context.referrer: is 11 characters long"
    )
    assert track(pb.Context(attributes={f"k{i}": "v" for i in range(65)})) == (
        "events[1].context.attributes: has 65 entries, more than the cap of 64"
    )
    assert track(pb.Context(attributes={"k" * 129: "v"})).startswith("events[1].context.attributes[")
    assert track(pb.Context(attributes={"k": "v" * 2049})).startswith("events[1].context.attributes['k']:")
    # The same caps as a Decide's context, message for message.
    for context in (pb.Context(url="u" * 2049), pb.Context(attributes={f"k{i}": "v" for i in range(65)})):
        request = pb.DecideRequest(context=context, placements=[pb.PlacementRequest(placement_id="home")])
        try:
            decide_input(request, LIMITS, 7)
            raise AssertionError("a Decide context over the caps passed")
        except RequestError as exc:
            assert track(context) == str(exc).replace("context.", "events[1].context.", 1)
