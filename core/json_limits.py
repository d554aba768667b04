"""Limits on the JSON documents edgewise reads: how deep they nest, and how large their integers are.

Every reader of a document recurses once per level of nesting (`json.loads`, the rules and condition
compilers, msgpack's packer, a compiled condition's evaluation), and Python's recursion limit (about
1,000 frames) is far below what a hostile or broken file can nest. `MAX_DEPTH` bounds them all: no
document a bundle, a delta or a rules upsert carries may nest objects and arrays deeper than 64 levels
(`{"a": [1]}` nests 2 levels). The check comes before the recursion: `text_too_deep` scans a JSON text
before it is parsed, `find_problem` walks a parsed value (iteratively) before it is compiled or stored.

Integers: the store encodes documents with msgpack, which holds integers in [-2**63, 2**64 - 1]; a
larger one cannot be stored, and one beyond a float's range cannot be compared as a number, so
`find_problem` refuses integers outside that range too.

Pure functions; docs/bundle-format.md ("Limits") documents the numbers.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["INT_MAX", "INT_MIN", "MAX_DEPTH", "find_problem", "int_in_range", "join_path", "text_too_deep"]

MAX_DEPTH: Final = 64
"""The deepest nesting of objects and arrays in any document edgewise reads."""

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**64 - 1
"""The integers msgpack (so the store) holds."""

# The characters that matter for nesting: brackets, and the quotes and backslashes that delimit strings.
_SPECIAL: Final = re.compile(r'[\[\]{}"\\]')


def text_too_deep(text: str, limit: int = MAX_DEPTH) -> int | None:
    """The offset of the bracket that opens level `limit + 1` of the JSON text, or None if nothing in it
    nests deeper than `limit` (brackets inside strings do not count). One pass over the brackets, quotes
    and backslashes (linear whatever the text), and two `str.count`s when the text holds at most `limit`
    opening brackets (a JSON line of a bundle, nearly always). An invalid text may be scanned loosely;
    the parser refuses it afterwards."""
    if text.count("[") + text.count("{") <= limit:
        return None
    depth = 0
    in_string = False
    skip_to = 0  # the character after a backslash inside a string is escaped
    for match in _SPECIAL.finditer(text):
        at = match.start()
        if at < skip_to:
            continue
        char = text[at]
        if in_string:
            if char == "\\":
                skip_to = at + 2
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "[" or char == "{":
            depth += 1
            if depth > limit:
                return at
        elif char == "]" or char == "}":
            depth -= 1
    return None


def int_in_range(value: int) -> bool:
    """True if msgpack (so the store) can hold the integer `value`."""
    return INT_MIN <= value <= INT_MAX


def find_problem(
    value: Any, *, max_depth: int = MAX_DEPTH, check_ints: bool = True
) -> tuple[str, str] | None:
    """The first part of a parsed JSON value that breaks a limit, as (path, reason), or None.

    `path` is relative to `value` in the dotted form the rules errors use (`placements.home.campaigns[0]`;
    "" for `value` itself): the container that opens level `max_depth + 1`, or (with `check_ints`) an
    integer outside [INT_MIN, INT_MAX]. Walks without recursion, depth first, in document order."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            if depth + 1 > max_depth:
                return path, f"nested deeper than {max_depth} levels of objects and arrays"
            for key, child in reversed(list(node.items())):
                name = _key(key)
                stack.append((child, depth + 1, f"{path}.{name}" if path else name))
        elif isinstance(node, list | tuple):
            if depth + 1 > max_depth:
                return path, f"nested deeper than {max_depth} levels of objects and arrays"
            for i in range(len(node) - 1, -1, -1):
                stack.append((node[i], depth + 1, f"{path}[{i}]"))
        elif check_ints and isinstance(node, int) and not isinstance(node, bool) and not int_in_range(node):
            return path, f"integer out of range (must be in [-2**63, 2**64 - 1]), got {_digits(node)}"
    return None


def join_path(prefix: str, path: str) -> str:
    """`path` (from `find_problem`) inside the part at dotted path `prefix`."""
    if not path:
        return prefix
    if not prefix:
        return path
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


_MAX_KEY: Final = 64  # characters of a key shown in a path (keys of a hostile document have any length)


def _key(key: Any) -> str:
    text = str(key)
    return text if len(text) <= _MAX_KEY else text[: _MAX_KEY - 3] + "..."


def _digits(value: int) -> str:
    # str() of an integer over 4,300 digits raises ValueError (sys.int_info.default_max_str_digits)
    return str(value) if abs(value) < 10**60 else f"an integer of {value.bit_length()} bits"
