"""The syncer's check of profile records without unpacking them (core/profile_check.py and
core/_profile_check.pyx): the compiled scan agrees with its Python reference on every input; when it
vouches for a record, `check_profile` (msgpack) accepts it; it vouches for every record the control plane
writes; and `check_profiles` refuses the same commits as the loop of `check_profile` it replaces, with
the same error, on good, truncated, mutated and hostile records."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise.core.profile_check import (
    MAX_DEPTH,
    check_profiles,
    scan_profile,
    scan_profile_py,
    unsure_profiles,
)
from edgewise.core.records import Activity, ProfileRecord, check_profile, encode_profile
from tests.profile_bytes_support import GOOD, good_with, raw_map

Change = tuple[str, bytes, Any]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(width=32),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=3), st.binary(max_size=3)), inner, max_size=4),
    ),
    max_leaves=12,
)
schemas = st.one_of(
    st.sampled_from([1, True, 1.0, 2, 0, False, "1", None, -1, 1.5, b"\x01", 2**64 - 1]),
    values,
)
generations = st.one_of(
    st.sampled_from([0, 1, 2, 127, 128, 2**16, 2**31 - 1, 2**31, -1, True, None, 1.0, "1"]),
    st.integers(-(2**33), 2**33),
)
record_docs = st.fixed_dictionaries(
    {},
    optional={
        "s": schemas,
        "v": values,
        "a": st.dictionaries(st.text(max_size=6), values, max_size=5),
        "c": st.dictionaries(st.text(max_size=6), st.integers(0, 2**42), max_size=3),
        "e": st.one_of(st.none(), st.binary(min_size=0, max_size=64)),
        "act": values,
        "x": values,
        # the embedding generation slots (core/embedding_slots.py)
        "eg": generations,
        "n": st.one_of(st.none(), st.binary(max_size=12), values),
        "ng": generations,
    },
)


def _pack(doc: Any, single_float: bool = False, bin_type: bool = True) -> bytes:
    return msgpack.packb(doc, use_bin_type=bin_type, use_single_float=single_float)


def _accepted(key: bytes, value: Any) -> bool:
    try:
        check_profile(key.decode(), value)
    except Exception:
        return False
    return True


def _agree(key: bytes, value: bytes) -> bool:
    """The compiled scan and the reference give one verdict, and it is never a record msgpack refuses."""
    verdict = scan_profile(key, value)
    assert verdict == scan_profile_py(key, value), (key, value)
    if verdict:
        assert _accepted(key, value), (key, value)
    return verdict


@settings(max_examples=examples(400), deadline=None)
@given(record_docs, st.booleans(), st.booleans())
def test_records_of_any_shape(doc: dict[str, Any], single_float: bool, bin_type: bool) -> None:
    value = _pack(doc, single_float, bin_type)
    # every record msgpack accepts is vouched for (no ext types here, no deep nesting): the fast path
    assert _agree(b"u1", value) == _accepted(b"u1", value)


@settings(max_examples=examples(400), deadline=None)
@given(record_docs, st.data())
def test_truncated_extended_and_mutated_records(doc: dict[str, Any], data: st.DataObject) -> None:
    value = _pack(doc)
    cut = data.draw(st.integers(0, len(value)))
    _agree(b"u", value[:cut])  # truncated anywhere
    _agree(b"u", value + data.draw(st.binary(min_size=1, max_size=4)))  # bytes left over
    mutated = bytearray(value)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    _agree(b"u", bytes(mutated))
    i = data.draw(st.integers(0, len(value)))
    _agree(b"u", value[:i] + data.draw(st.binary(min_size=1, max_size=6)) + value[i:])  # inserted
    j = data.draw(st.integers(0, len(value)))
    _agree(b"u", value[: min(i, j)] + value[max(i, j) :])  # a slice deleted


@settings(max_examples=examples(1_000), deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes(value: bytes) -> None:
    _agree(b"u", value)
    _agree(b"u", b"\x85\xa1s\x01\xa1v\x01\xa1a\x80\xa1c\x80\xa1e" + value)  # a good head, then anything


@settings(max_examples=examples(1_000), deadline=None)
@given(st.binary(max_size=12), st.booleans())
def test_strings_must_be_strict_utf8(raw: bytes, as_key: bool) -> None:
    """Every str is valid UTF-8 as Python's strict decoder reads it (overlong forms, surrogates and code
    points past U+10FFFF are refused), in a key or a value, and so is the record's key."""
    string = bytes([0xA0 | len(raw)]) + raw  # a fixstr
    head = b"\x85\xa1s\x01\xa1v\x01\xa1c\x80\xa1e\xc0"
    value = head + (b"\xa1a\x81" + string + b"\x01" if as_key else b"\xa1a\x81\xa1z" + string)
    valid = _valid_utf8(raw)
    assert _agree(b"u", value) == valid
    assert _agree(raw, encode_profile(ProfileRecord("u", 1, {}, {}, None))) == valid


def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("value", "vouched"),
    [
        (raw_map(GOOD), True),
        (raw_map(GOOD[1:]), False),  # no schema
        (raw_map(GOOD[:4]), False),  # no "e"
        (raw_map([(b"\xc4\x01s", b"\x01"), *GOOD[1:]]), False),  # b"s" (bin) is not the key "s"
        (good_with(b"\xa1s", b"\x02"), False),  # the last "s" wins: 2
        (raw_map([(b"\xa1s", b"\x02"), *GOOD]), True),  # ... here 1
        (good_with(b"\xa1s", b"\xc3"), True),  # true == 1
        (good_with(b"\xa1s", b"\xcb" + struct.pack(">d", 1.0)), True),
        (good_with(b"\xa1s", b"\xca" + struct.pack(">f", 1.0)), True),
        (good_with(b"\xa1s", b"\xd3" + (1).to_bytes(8, "big")), True),
        (good_with(b"\xa1s", b"\xa11"), False),  # "1"
        (good_with(b"\x01", b"\x01"), False),  # an int key: msgpack's strict_map_key refuses it
        (good_with(b"\xa1x", b"\xc1"), False),  # the byte never used
        (good_with(b"\xa1x", b"\xd4\x01\x00"), False),  # an ext type: left to msgpack (which takes it)
        (good_with(b"\xa1x", b"\xd6\xff\x00\x00\x00\x00"), False),  # a timestamp: left to msgpack
        (good_with(b"\xa1x", b"\xc7\x01\xf0\x00"), False),  # ext code -16: msgpack refuses it
        (good_with(b"\xa1x", b"\xdb\xff\xff\xff\xff"), False),  # a str of 4 GiB
        (good_with(b"\xa1x", b"\xc6\xff\xff\xff\xff"), False),  # a bin of 4 GiB
        (good_with(b"\xa1x", b"\xdd\xff\xff\xff\xff"), False),  # an array of 4G entries
        (good_with(b"\xa1x", b"\xdf\xff\xff\xff\xff"), False),  # a map of 4G entries
        (b"\xdf\xff\xff\xff\xff" + raw_map(GOOD)[1:], False),  # the record's own map header lies
        (b"\xde\x00\x05" + raw_map(GOOD)[1:], True),  # map16 of 5 entries
        (raw_map(GOOD) + b"\x00", False),  # a byte left over
        (raw_map(GOOD)[:-1], False),  # truncated
        (b"", False),
        (b"\x95\x01\x02\x03\x04\x05", False),  # an array
    ],
)
def test_hostile_and_odd_records(value: bytes, vouched: bool) -> None:
    assert _agree(b"u", value) == vouched


def test_nesting_past_the_limit_is_left_to_msgpack() -> None:
    def nested(depth: int) -> bytes:
        return b"\x91" * depth + b"\x01"

    assert _agree(b"u", good_with(b"\xa1x", nested(MAX_DEPTH - 1)))
    assert not _agree(b"u", good_with(b"\xa1x", nested(MAX_DEPTH)))  # accepted by msgpack, not vouched for
    assert not _agree(b"u", good_with(b"\xa1x", nested(100_000)))  # refused by msgpack (its stack)


def test_every_record_the_control_plane_writes_is_vouched_for() -> None:
    attributes = {"country": "FR", "ltv": 52.5, "app": True, "tags": ["a", "é"]}
    consent = {"personalization": 1786815800673}
    records = [
        ProfileRecord("u1", 1, {}, {}, None),
        ProfileRecord("ü-ß-€-😀", 7, attributes, {}, None),
        ProfileRecord("u3", 2**40, {"nested": {"k": [1, {"x": None}]}}, consent, b"\0" * 128),
        ProfileRecord("u4", 1, {}, {}, None, Activity((("i1", 5),), (("i2", 6),), (), (("i3", 2),))),
    ]
    changes: list[Change] = [("profiles", r.id.encode(), encode_profile(r)) for r in records]
    assert all(scan_profile(k, v) for _, k, v in changes)
    assert unsure_profiles(changes) == []
    check_profiles(changes)


def _old_check(changes: list[Change]) -> None:
    """The check `check_profiles` replaces (sync/edge_sync.py before it)."""
    for namespace, key, value in changes:
        if namespace == "profiles" and value is not None:
            check_profile(key.decode(), value)


def _outcome(check: Any, changes: list[Change]) -> tuple[str, str] | None:
    try:
        check(changes)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None


good_record = st.builds(
    lambda i: encode_profile(ProfileRecord(f"u{i}", 1, {"n": i}, {}, None)), st.integers(0, 1000)
)
bad_record = st.one_of(
    good_record.map(lambda b: b[:-1]),
    good_record.map(lambda b: b + b"\x00"),
    st.binary(max_size=12),
    record_docs.map(_pack),
)
changes_lists = st.lists(
    st.one_of(
        st.tuples(st.just("profiles"), st.just(b"u"), good_record),
        st.tuples(st.just("profiles"), st.sampled_from([b"u", b"\xff", b"\xed\xa0\x80"]), bad_record),
        st.tuples(st.just("profiles"), st.just(b"u"), good_record.map(memoryview)),
        st.tuples(st.just("profiles"), st.just(b"gone"), st.none()),
        st.tuples(st.sampled_from(["models", "items", "forgotten"]), st.just(b"k"), st.binary(max_size=4)),
    ),
    max_size=12,
)


@settings(max_examples=examples(300), deadline=None)
@given(changes_lists)
def test_commits_are_refused_as_before_with_the_same_error(changes: list[Change]) -> None:
    assert _outcome(check_profiles, changes) == _outcome(_old_check, changes)
