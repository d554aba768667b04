"""MurmurHash3 x86_32 and bucketing: reference vectors (also in docs/bucketing.md)."""

from __future__ import annotations

import random

import pytest

from edgewise.core._hashing import layered_bucket
from edgewise.core.bucketing import BUCKETS, bucket, bucket_reference, murmur3_32, murmur3_32_reference


@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        (b"", 0, 0x00000000),
        (b"", 1, 0x514E28B7),
        (b"\xff\xff\xff\xff", 0, 0x76293B50),
        (b"\x21\x43\x65\x87", 0, 0xF55B516B),
        (b"\x21\x43\x65", 0, 0x7E4A8634),
        (b"\x21\x43", 0, 0xA0F7B07A),
        (b"\x21", 0, 0x72661CF4),
        (b"Hello, world!", 1234, 0xFAF6CDB3),
        (b"The quick brown fox jumps over the lazy dog", 0, 0x2E4FF723),
    ],
)
def test_murmur3_reference_vectors(data: bytes, seed: int, expected: int) -> None:
    assert murmur3_32(data, seed) == expected
    assert murmur3_32_reference(data, seed) == expected


def test_compiled_hash_matches_the_reference_on_random_inputs() -> None:
    rng = random.Random(20261125)
    for _ in range(5000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        seed = rng.randrange(2**32)
        assert murmur3_32(data, seed) == murmur3_32_reference(data, seed), (data, seed)


@pytest.mark.parametrize(
    ("salt", "unit", "expected"),
    [
        ("hero_test", "u1", 2202),
        ("hero_test", "u2", 3130),
        ("hero_test", "s-abc", 3001),
        ("exp", "ü-ñ", 4158),
    ],
)
def test_bucket_vectors(salt: str, unit: str, expected: int) -> None:
    assert bucket(salt, unit) == expected
    assert bucket_reference(salt, unit) == expected


def test_compiled_bucket_matches_the_reference_on_random_keys() -> None:
    rng = random.Random(20261126)
    alphabet = "ab-_:.0123456789üñ€😀\u0800\U0010ffff"
    for _ in range(3000):
        salt = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        unit = "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 3, 7, 20, 100, 300])))
        assert bucket(salt, unit) == bucket_reference(salt, unit), (salt, unit)
    long_key = ("s" * 255, "u" * 1000)  # longer than the compiled bucket's stack buffer
    assert bucket(*long_key) == bucket_reference(*long_key)


def test_bucket_refuses_what_utf8_cannot_encode() -> None:
    with pytest.raises(UnicodeEncodeError):
        bucket_reference("exp", "\ud800")
    with pytest.raises(UnicodeEncodeError):
        bucket("exp", "\ud800")
    with pytest.raises(TypeError):
        bucket("exp", None)  # type: ignore[arg-type]


def test_layered_bucket_checks_the_layer_range_first() -> None:
    for n in range(2000):
        unit = f"u{n}"
        layer = bucket_reference("layer-x", unit)
        expected = bucket_reference("x", unit) if 2000 <= layer < 5000 else -1
        assert layered_bucket("layer-x", 2000, 5000, "x", unit) == expected
        assert layered_bucket(None, 0, 0, "x", unit) == bucket_reference("x", unit)  # no layer


def test_buckets_are_uniform() -> None:
    counts = [0] * 10
    for n in range(20_000):
        counts[bucket("uniformity", f"u{n}") * 10 // BUCKETS] += 1
    assert all(1800 < c < 2200 for c in counts), counts
