"""JavaScript's conversions as conditions use them: Number(string), String(number), GrowthBook's padded
versions; and the condition semantics built on them (mixed comparisons, dotted paths into arrays,
case-insensitive operators)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from feature_source import DictSource

from edgewise.core.condition_codegen import compile_condition
from edgewise.core.conditions import compile_closures
from edgewise.core.js_values import js_number, js_number_to_string, padded_version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0.0), ("  ", 0.0), (" 12 ", 12.0), ("\u00a012\n", 12.0), ("1e3", 1000.0), (".5", 0.5),
        ("5.", 5.0), ("-0.5", -0.5), ("+7", 7.0), ("0x1F", 31.0), ("0b101", 5.0), ("0o17", 15.0),
        ("Infinity", math.inf), ("-Infinity", -math.inf),
        ("1_000", math.nan), ("inf", math.nan), ("nan", math.nan), ("12abc", math.nan), ("1e", math.nan),
        ("0x", math.nan), ("-0x10", math.nan), ("\uff11", math.nan), ("١", math.nan),
    ],
)  # fmt: skip
def test_js_number(text: str, expected: float) -> None:
    got = js_number(text)
    assert got == expected or (math.isnan(got) and math.isnan(expected))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "1"),
        (1.0, "1"),
        (1.5, "1.5"),
        (1e21, "1e+21"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (-2, "-2"),
    ],
)
def test_js_number_to_string(value: float, expected: str) -> None:
    assert js_number_to_string(value) == expected


def test_padded_versions_order_as_growthbook_does() -> None:
    ordered = ["0.9.0", "1.0.0-alpha", "1.0.0-beta.2", "1.0.0-beta.11", "v1.0.0", "1.2.0", "1.10.0"]
    padded = [padded_version(v) for v in ordered]
    assert padded == sorted(padded) and len(set(padded)) == len(padded)
    assert padded_version("1.0.0+build.9") == padded_version("v1.0.0") == padded_version("1.0.0")
    assert padded_version(None) == padded_version("") == padded_version(True) == padded_version("0")


@pytest.mark.parametrize(
    ("doc", "data", "expected"),
    [
        # mixed comparisons convert as JavaScript does
        ({"a": {"$gt": 5}}, {"a": "8"}, True),
        ({"a": {"$gt": 5}}, {"a": "1_000"}, False),
        ({"a": {"$lt": 5}}, {"a": ""}, True),
        ({"a": {"$lt": "5"}}, {}, True),
        ({"a": {"$gt": "0"}}, {"a": True}, True),
        ({"a": {"$lt": "abc"}}, {}, False),
        ({"a": {"$gt": 5}}, {"a": "Infinity"}, True),
        # dotted paths into arrays
        ({"addresses.0.country": "DE"}, {"addresses": [{"country": "DE"}, {"country": "FR"}]}, True),
        ({"addresses.1.country": "DE"}, {"addresses": [{"country": "DE"}, {"country": "FR"}]}, False),
        ({"addresses.01.country": {"$exists": True}}, {"addresses": [{"country": "DE"}] * 2}, False),
        ({"addresses.2": {"$exists": True}}, {"addresses": [1, 2]}, False),
        ({"tags.length": 2}, {"tags": ["a", "b"]}, True),
        # case-insensitive operators
        ({"c": {"$ini": ["de", "AT"]}}, {"c": "De"}, True),
        ({"c": {"$nini": ["de"]}}, {"c": "DE"}, False),
        ({"t": {"$ini": ["x"]}}, {"t": ["A", "X"]}, True),
        ({"t": {"$alli": ["a", "X"]}}, {"t": ["A", "x", "b"]}, True),
        ({"t": {"$alli": ["5"]}}, {"t": [5]}, False),
        ({"n": {"$regexi": "^ab"}}, {"n": "ABC"}, True),
        ({"n": {"$notRegex": "^ab"}}, {"n": "ABC"}, True),
        ({"n": {"$notRegexi": "^ab"}}, {"n": "ABC"}, False),
        # versions
        ({"v": {"$vgte": "2.10.0"}}, {"v": "v2.10.0+build.3"}, True),
        ({"v": {"$vlt": "2.10.0"}}, {"v": "2.10.0-rc.1"}, True),
        ({"v": {"$vgt": "2.9"}}, {"v": "2.10"}, True),
        ({"v": {"$veq": "1.0.0"}}, {"v": "1.0.0"}, True),
        ({"v": {"$vne": "1.0.0"}}, {"v": "1.0.1"}, True),
        ({"v": {"$vlt": "2.0.0"}}, {}, True),
    ],
)
def test_semantics(doc: dict[str, Any], data: dict[str, Any], expected: bool) -> None:
    assert compile_condition(doc)(DictSource(data)) is expected
    assert compile_closures(doc)(DictSource(data)) is expected
