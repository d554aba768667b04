"""A profile record's vector slots read and rewritten in its bytes (core/_slot_edit.pyx, core/slot_edit.py):
the C walk agrees with the Python reference (unpack, `vector_slots` / `set_vector_slots`, repack) on every
record it is sure of: the slots it reads are the reference's, the record it writes decodes to the
reference's map, and is byte-equal to it when the stored record is canonical (what `encode_profile`
writes); every record the control plane writes takes the C path; and every record the walk cannot
parse (truncated, mutated, hostile, a key written twice, ext types, deep nesting) goes the Python way."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise.core._slot_edit import MAX_KEYS, stored_slots, with_slots
from edgewise.core.embedding_slots import MAX_GENERATION, Slot, slot_with
from edgewise.core.records import Activity, ProfileRecord, encode_profile
from edgewise.core.slot_edit import (
    record_slots,
    record_slots_py,
    record_with_slots,
    record_with_slots_py,
)
from tests.profile_bytes_support import GOOD, good_with, raw_map

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, width=32),
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
generations = st.one_of(
    st.sampled_from([0, 1, 2, 127, 128, 255, 256, 2**16 - 1, 2**16, 2**31 - 1, 2**31, -1, True, None]),
    st.integers(-(2**33), 2**33),
)
vectors = st.one_of(st.none(), st.binary(max_size=64), st.binary(min_size=250, max_size=300))
record_docs = st.fixed_dictionaries(
    {"e": st.one_of(vectors, values)},
    optional={
        "s": st.sampled_from([1, 2, True]),
        "v": values,
        "a": st.dictionaries(st.text(max_size=6), values, max_size=5),
        "c": st.dictionaries(st.text(max_size=6), st.integers(0, 2**42), max_size=3),
        "act": values,
        "x": values,
        "eg": generations,
        "n": st.one_of(vectors, values),
        "ng": generations,
    },
)
good_generations = st.one_of(
    st.sampled_from([0, 1, 127, 128, 255, 256, 2**16 - 1, 2**16, MAX_GENERATION]),
    st.integers(0, MAX_GENERATION),
)
float_vectors = st.one_of(  # float32 vectors (a multiple of 4 bytes), or nil
    st.none(), st.integers(0, 80).map(lambda n: np.arange(n, dtype="<f4").tobytes())
)
slot_values = st.one_of(float_vectors, vectors)
slots_of = st.one_of(
    st.tuples(st.tuples(good_generations, slot_values)),
    st.tuples(st.tuples(good_generations, slot_values), st.tuples(good_generations, slot_values)),
)
written_slots = st.one_of(  # what the control plane writes: float32 vectors
    st.tuples(st.tuples(good_generations, float_vectors)),
    st.tuples(st.tuples(good_generations, float_vectors), st.tuples(good_generations, float_vectors)),
)


def _pack(doc: Any, single_float: bool = False, bin_type: bool = True) -> bytes:
    return msgpack.packb(doc, use_bin_type=bin_type, use_single_float=single_float)


def _canonical(raw: bytes) -> bool:
    return _pack(msgpack.unpackb(raw, raw=False)) == raw


def _agree(raw: bytes, slots: tuple[Slot, ...]) -> bool:
    """The C walk and the reference agree on `raw`; True when the C walk was sure (read and write)."""
    reference = record_slots_py(raw)
    read = stored_slots(raw)
    assert record_slots(raw) == reference, raw
    if read is not None:
        assert read == reference, raw
    written = with_slots(raw, slots)
    if reference is None:
        assert read is None and written is None, raw  # what the Python path cannot read, never the C one
        return False
    expected = record_with_slots_py(raw, slots)
    if written is not None:
        assert msgpack.unpackb(written, raw=False) == msgpack.unpackb(expected, raw=False), raw
        if _canonical(raw):
            assert written == expected, raw
    assert msgpack.unpackb(record_with_slots(raw, slots), raw=False) == msgpack.unpackb(expected, raw=False)
    return read is not None and written is not None


@settings(max_examples=examples(500), deadline=None)
@given(record_docs, slots_of, st.booleans(), st.booleans())
def test_records_of_any_shape(
    doc: dict[str, Any], slots: tuple[Slot, ...], single_float: bool, bin_type: bool
) -> None:
    _agree(_pack(doc, single_float, bin_type), slots)


@settings(max_examples=examples(300), deadline=None)
@given(record_docs, slots_of, st.data())
def test_truncated_extended_and_mutated_records(
    doc: dict[str, Any], slots: tuple[Slot, ...], data: st.DataObject
) -> None:
    value = _pack(doc)
    _agree(value[: data.draw(st.integers(0, len(value)))], slots)  # truncated anywhere
    _agree(value + data.draw(st.binary(min_size=1, max_size=4)), slots)  # bytes left over
    mutated = bytearray(value)
    for _ in range(data.draw(st.integers(1, 3))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    _agree(bytes(mutated), slots)


@settings(max_examples=examples(500), deadline=None)
@given(st.binary(max_size=64), slots_of)
def test_random_bytes(value: bytes, slots: tuple[Slot, ...]) -> None:
    _agree(value, slots)
    _agree(b"\x85\xa1s\x01\xa1v\x01\xa1a\x80\xa1c\x80\xa1e" + value, slots)  # a good head, then anything


def _record(i: int, activity: bool, slots: tuple[Slot, ...]) -> bytes:
    attributes = {"country": "FR", "ltv": 52.5, "app": True, "tags": ["a", "é"], "i": i}
    act = Activity((("i1", 5),), (("i2", 6),), (), (("i3", 2),)) if activity else None
    record = ProfileRecord(f"u{i}", i, attributes, {"personalization": 1786815800673}, None, act, slots)
    return encode_profile(record)


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(0, 2**40), st.booleans(), written_slots, written_slots)
def test_every_record_the_control_plane_writes_takes_the_c_path(
    i: int, activity: bool, stored: tuple[Slot, ...], slots: tuple[Slot, ...]
) -> None:
    """Records `encode_profile` writes (one or two slots, any generations), edited the way a staging
    commit edits them (`slot_with`), read and written in C, byte-equal to the Python path."""
    if len(stored) == 2 and stored[0][0] == stored[1][0]:
        stored = stored[:1]  # one vector per generation
    raw = _record(i, activity, stored)
    generation = slots[0][0]
    edited = slot_with(stored, generation, slots[0][1], keep=stored[0][0])
    assert _agree(raw, edited)
    assert stored_slots(raw) is not None
    assert with_slots(raw, edited) == record_with_slots_py(raw, edited)


def test_a_staged_record_decodes_with_the_generation_slots() -> None:
    vector = np.arange(32, dtype="<f4").tobytes()
    raw = _record(1, True, ((0, vector),))
    assert stored_slots(raw) == ((0, vector),)
    staged = with_slots(raw, ((0, vector), (1, vector[::-1])))
    assert staged is not None and stored_slots(staged) == ((0, vector), (1, vector[::-1]))
    flipped = with_slots(staged, ((2, None), (1, vector)))
    assert flipped is not None and stored_slots(flipped) == ((2, None), (1, vector))
    back = with_slots(flipped, ((0, vector),))  # generation 0 alone: `e` only, as before generations
    assert back == raw == record_with_slots_py(flipped, ((0, vector),))


@pytest.mark.parametrize(
    ("value", "sure"),
    [
        (raw_map(GOOD), True),
        (raw_map(GOOD[1:]), False),  # no schema: `_profile_ok` does not vouch, Python edits it
        (raw_map(GOOD[:4]), False),  # no "e"
        (good_with(b"\xa1v", b"\x02"), False),  # a key written twice (the last one wins in a dict)
        (good_with(b"\xa1e", b"\xc0"), False),  # "e" written twice
        (good_with(b"\xc4\x01e", b"\x01"), True),  # b"e" (bin) is not the key "e"
        (good_with(b"\xd9\x01x", b"\x01"), True),  # a str8 key: not canonical, kept as it is
        (good_with(b"\xa1x", b"\xca" + struct.pack(">f", 1.5)), True),  # a float32: kept as it is
        (raw_map([*GOOD[:4], (b"\xa1e", b"\xa3abc")]), False),  # an "e" that is not bin or nil
        (raw_map([*GOOD[:4], (b"\xa1e", b"\x01")]), False),
        (good_with(b"\xa2eg", b"\xcf" + (1).to_bytes(8, "big")), False),  # a generation as uint64
        (good_with(b"\xa2eg", b"\xff"), False),  # a negative generation
        (good_with(b"\xa1n", b"\xc4\x04abcd"), False),  # "n" without "ng"
        (raw_map([*GOOD, (b"\xa1n", b"\xc4\x04abcd"), (b"\xa2ng", b"\x00")]), False),  # both generation 0
        (raw_map([*GOOD, (b"\xa1n", b"\xc4\x04abcd"), (b"\xa2ng", b"\x03")]), True),
        (good_with(b"\x01", b"\x01"), False),  # an int key
        (good_with(b"\xa1x", b"\xc1"), False),  # the byte never used
        (good_with(b"\xa1x", b"\xd4\x01\x00"), False),  # an ext type
        (good_with(b"\xa1x", b"\xd6\xff\x00\x00\x00\x00"), False),  # a timestamp
        (good_with(b"\xa1x", b"\xdb\xff\xff\xff\xff"), False),  # a str of 4 GiB
        (good_with(b"\xa1x", b"\xc6\xff\xff\xff\xff"), False),  # a bin of 4 GiB
        (good_with(b"\xa1x", b"\xdd\xff\xff\xff\xff"), False),  # an array of 4G entries
        (b"\xdf\xff\xff\xff\xff" + raw_map(GOOD)[1:], False),  # the record's own map header lies
        (b"\xde\x00\x05" + raw_map(GOOD)[1:], True),  # map16 of 5 entries
        (raw_map(GOOD) + b"\x00", False),  # a byte left over
        (raw_map(GOOD)[:-1], False),  # truncated
        (good_with(b"\xa1x", b"\xa2\xed\xa0"), False),  # a str that is not UTF-8
        (b"", False),
        (b"\x95\x01\x02\x03\x04\x05", False),  # an array
    ],
)
def test_hostile_and_odd_records(value: bytes, sure: bool) -> None:
    assert _agree(value, ((0, None), (1, b"\0" * 8))) == sure
    assert _agree(value, ((0, b"\1" * 4),)) == sure


def test_many_keys_and_deep_nesting_go_the_python_way() -> None:
    extra = [bytes([0xA2, 0x78, 0x41 + i]) + b"\x01" for i in range(MAX_KEYS - 4)]  # "xA": 1, ...
    many = bytes([0xDE, 0, MAX_KEYS + 1]) + b"".join([k + v for k, v in GOOD] + extra)
    assert record_slots_py(many) is not None
    assert not _agree(many, ((0, None),))
    fewer = bytes([0xDE, 0, MAX_KEYS]) + many[3:-4]
    assert _agree(fewer, ((1, None), (0, b"abcd")))  # 32 keys + eg, n, ng: a map16 header
    assert (
        len(msgpack.unpackb(with_slots(fewer, ((1, None), (0, b"abcd"))) or b"", raw=False)) == MAX_KEYS + 3
    )
    deep = good_with(b"\xa1x", b"\x91" * 40 + b"\x01")
    assert record_slots_py(deep) is not None
    assert not _agree(deep, ((0, None),))


def test_slots_that_are_not_generation_and_bytes_go_the_python_way() -> None:
    raw = raw_map(GOOD)
    for slots in [(), ((0, None),) * 3, ((True, None),), ((-1, None),), ((2**31, None),), ((0, "x"),)]:
        assert with_slots(raw, slots) is None
    assert with_slots(bytearray(raw), ((0, None),)) is None
    assert stored_slots(memoryview(raw)) is None
    assert record_slots(memoryview(raw)) == ((0, None),)  # type: ignore[arg-type]
