"""edge/json_mapping.py gives exactly what json_format gives for every message of the Personalizer API:
`message_to_dict` = MessageToDict(m, always_print_fields_with_no_presence=True) on random messages
drawn from their descriptors (every field type, empty and set message fields, maps, unknown enum
values, NaN, infinities, float32 rounding); `parse_message` = Parse on their JSON (both name styles)
and on random JSON around them (wrong types, nulls, unknown and duplicate keys, numbers as strings,
surrogates, huge numbers): the same message, or json_format's own ParseError."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from conftest import examples
from google.protobuf import descriptor as _d
from google.protobuf import json_format
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise.edge.json_mapping import _float, message_to_dict, parse_message
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import sync_pb2

F = _d.FieldDescriptor
TEXT = st.text(max_size=8)


def _scalar(field: _d.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.cpp_type
    if kind == F.CPPTYPE_STRING:
        return st.binary(max_size=8) if field.type == F.TYPE_BYTES else TEXT
    if kind == F.CPPTYPE_BOOL:
        return st.booleans()
    if kind == F.CPPTYPE_INT32:
        return st.integers(-(2**31), 2**31 - 1)
    if kind == F.CPPTYPE_UINT32:
        return st.integers(0, 2**32 - 1)
    if kind == F.CPPTYPE_INT64:
        return st.integers(-(2**63), 2**63 - 1)
    if kind == F.CPPTYPE_UINT64:
        return st.integers(0, 2**64 - 1)
    if kind == F.CPPTYPE_FLOAT:
        return st.floats(width=32) | st.sampled_from([0.1, 0.9, 1e-7, 3.4e38])
    if kind == F.CPPTYPE_DOUBLE:
        return st.floats()
    if kind == F.CPPTYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values]) | st.integers(0, 50)
    raise AssertionError(f"no strategy for {field.full_name}")


def _fill(message: Message, draw: st.DrawFn, depth: int) -> None:
    for field in message.DESCRIPTOR.fields:
        if draw(st.booleans()):
            continue  # left at its default
        value_type = field.message_type
        if value_type is not None and value_type.GetOptions().map_entry:
            key_field, value_field = value_type.fields_by_name["key"], value_type.fields_by_name["value"]
            target = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 3))):
                key = draw(_scalar(key_field))
                if value_field.message_type is not None:
                    _fill(target[key], draw, depth + 1)
                else:
                    target[key] = draw(_scalar(value_field))
        elif value_type is not None:
            if depth > 3:
                continue
            if field.is_repeated:
                for _ in range(draw(st.integers(0, 3))):
                    _fill(getattr(message, field.name).add(), draw, depth + 1)
            else:
                getattr(message, field.name).SetInParent()
                _fill(getattr(message, field.name), draw, depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(field)))


def _messages(types: list[type[Message]]) -> st.SearchStrategy[Message]:
    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = draw(st.sampled_from(types))()
        _fill(message, draw, 0)
        return message

    return build()


API = [pb.DecideRequest, pb.DecideResponse, pb.TrackRequest, pb.TrackResponse, pb.Explanation, pb.Event]


def _same(a: Any, b: Any) -> bool:
    """Equal values, NaN equal to NaN nowhere but as the string json_format prints."""
    return a == b and type(a) is type(b) if not isinstance(a, (dict, list)) else _same_nested(a, b)


def _same_nested(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


@settings(max_examples=examples(300), deadline=None)
@given(_messages(API))
def test_the_same_dict_as_json_format(message: Message) -> None:
    expected = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    assert _same(message_to_dict(message), expected)


@settings(max_examples=examples(2000), deadline=None)
@given(st.floats(width=32))
def test_floats_round_as_json_format_rounds_them(value: float) -> None:
    expected = type_checkers.ToShortestFloat(value) if math.isfinite(value) else None
    got = _float(value)
    if expected is None:
        assert got in ("NaN", "Infinity", "-Infinity")
    else:
        assert got == expected and type(got) is float


def test_a_real_response_shape() -> None:
    response = pb.DecideResponse(
        decision_id="d" * 32,
        snapshot_version=7,
        placements=[
            pb.PlacementDecision(
                placement_id="home",
                items=[pb.ItemResult(id="i1", score=0.57995534, reason="embedding")],
                propensity=0.1,
                fallback_reason=pb.FALLBACK_REASON_COLD_START,
            )
        ],
    )
    out = message_to_dict(response)
    assert out == {
        "decisionId": "d" * 32,
        "snapshotVersion": "7",
        "placements": [
            {
                "placementId": "home",
                "items": [{"id": "i1", "score": 0.57995534, "reason": "embedding", "promoted": False}],
                "contentId": "",
                "experimentId": "",
                "variantId": "",
                "propensity": 0.1,
                "strategy": "",
                "fallbackReason": "FALLBACK_REASON_COLD_START",
            }
        ],
    }  # no "explanation": a message field is printed only when set
    assert list(out) == ["decisionId", "snapshotVersion", "placements"]


def test_other_messages_fall_back_to_json_format() -> None:
    message = sync_pb2.ShardSelector(hash_space=100, hash_lo=0, hash_hi=50, regions=["DE"])
    assert message_to_dict(message) == json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True
    )


REQUESTS = [pb.DecideRequest, pb.TrackRequest, pb.Event, pb.Context, pb.PlacementRequest]


def _json_format_parse(data: bytes, cls: type[Message]) -> Message | str:
    message = cls()
    try:
        json_format.Parse(data, message)
    except Exception as exc:  # ParseError, or UnicodeDecodeError on bytes that are not UTF-8
        return f"{type(exc).__name__}: {exc}"
    return message


def _ours(data: bytes, cls: type[Message]) -> Message | str:
    try:
        return parse_message(data, cls)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@settings(max_examples=examples(300), deadline=None)
@given(_messages(REQUESTS), st.booleans())
def test_parse_gives_json_formats_message(message: Message, proto_names: bool) -> None:
    text = json_format.MessageToJson(message, preserving_proto_field_name=proto_names).encode()
    ours, theirs = _ours(text, type(message)), _json_format_parse(text, type(message))
    assert isinstance(ours, Message) and isinstance(theirs, Message), (ours, theirs)
    # compared as bytes: a message holding NaN is not equal to itself
    wire = message.SerializeToString(deterministic=True)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True) == wire


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
    | st.sampled_from(["5", "1e3", "NaN", "\udc80x", "FALLBACK_REASON_NONE", "aGk="]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def _near_requests(draw: st.DrawFn) -> tuple[bytes, type[Message]]:
    """A request's JSON with some values replaced by random JSON, keys renamed or duplicated."""
    cls = draw(st.sampled_from(REQUESTS))
    message = cls()
    _fill(message, draw, 0)
    js = json_format.MessageToDict(message, preserving_proto_field_name=draw(st.booleans()))
    names = [f.json_name for f in cls.DESCRIPTOR.fields] + [f.name for f in cls.DESCRIPTOR.fields]
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(names) | st.text(max_size=4))
        js[key] = draw(JSON_VALUES)
    text = json.dumps(js, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()) and len(js) > 0:  # a duplicate key
        first = next(iter(js))
        text = text[:-1] + ("," if len(js) else "") + json.dumps(first) + ":" + json.dumps(js[first]) + "}"
    return text.encode("utf-8", "surrogatepass"), cls


@settings(max_examples=examples(500), deadline=None)
@given(_near_requests())
def test_parse_accepts_and_refuses_what_json_format_does(case: tuple[bytes, type[Message]]) -> None:
    data, cls = case
    assert _ours(data, cls) == _json_format_parse(data, cls)


@pytest.mark.parametrize(
    "text",
    [
        b'{"userId": "u1", "user_id": "u2"}',  # json_format takes both names; the last wins
        b'{"userId": "u1", "userId": "u2"}',
        b'{"placements": [{"count": 4294967296}]}',
        b'{"placements": [{"count": true}]}',
        b'{"placements": [{"count": "7"}]}',
        b'{"placements": [{"count": 7.0}]}',
        b'{"context": {"attributes": {"a": 1}}}',
        b'{"context": null}',
        b'{"userId": "\\\\udc80"}',  # a backslash and "udc80"
        b'{"userId": "\\udc80"}',  # an unpaired surrogate
        b"[]",
        b"{",
        b'{"explain": 1}',
    ],
)
def test_parse_edge_cases(text: bytes) -> None:
    assert _ours(text, pb.DecideRequest) == _json_format_parse(text, pb.DecideRequest)


def test_plain_requests_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("json_format.Parse called")

    monkeypatch.setattr(json_format, "Parse", refuse)
    text = json.dumps(
        {
            "userId": "u1",
            "session_id": "s1",
            "consent": ["personalization"],
            "context": {"country": "DE", "attributes": {"tier": "gold"}},
            "placements": [{"placementId": "home", "count": 5, "seedItemIds": ["i1"], "filterParams": {}}],
            "explain": True,
        }
    ).encode()
    message = parse_message(text, pb.DecideRequest)
    assert message.user_id == "u1" and message.session_id == "s1" and message.explain
    assert message.context.attributes["tier"] == "gold" and message.placements[0].count == 5
    event = {"eventId": "e", "type": "view", "value": 2, "timestampMs": 1_700_000_000_000, "context": {}}
    track = parse_message(json.dumps({"events": [event]}).encode(), pb.TrackRequest)
    assert track.events[0].value == 2.0 and track.events[0].HasField("context")
