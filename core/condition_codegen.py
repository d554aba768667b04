"""Segment conditions compiled to generated Python: one function per condition, built once per rules version.

`compile_condition(doc)` checks a condition document exactly as `edgewise.core.conditions` does (it calls
the same checks, so it raises the same `ConditionError`s) and returns a `Condition` with the same verdict
as `compile_closures(doc)` for every source: it reads the same paths in the same order and stops at the
same point. The semantics are specified in docs/conditions.md.

The generated function. Nested $and / $or are flattened into one `and` / `or` chain; equality, $ne,
$exists, $in / $nin (a string against the operand's set; anything else by the full test), $gt / $gte /
$lt / $lte (a number against a number, a string against a string; anything else by the full test),
$regex (through a per-regex memo of verdicts by distinct string, bounded by REGEX_MEMO_SIZE), $not and
$elemMatch with an operator object are inlined; $size, $all, $type and $elemMatch with a condition call
their closures. The function has two bodies: one for an `edgewise.core.feature_view.FeatureView` that
records no reads, which reads each path with the direct slot accessor `feature_view.inline_read` gives
for it (consent rule included), and one for any other source (and for views that record reads, for
`explain`), which calls `source.get(path)` for every read.

Safety (the invariant): the source is made only of fixed text, generated identifiers (`_k<n>` constants,
`_v<n>` values, `_h<n>` helpers) and, from the view, context field names matched against a fixed list;
every value taken from the document (attribute names, operands, sets, compiled regexes, closures) is
bound in the namespace dict the source is executed in and never spelled into it. A condition whose
source is longer than _SOURCE_LIMIT, or that Python cannot compile, keeps the closures. Nesting is
bounded before anything is generated: a condition deeper than `core.json_limits.MAX_DEPTH` levels is
refused (ConditionError), which keeps the generator's recursion and the source's parentheses far below
Python's limits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from edgewise.core.conditions import (
    COMPARE,
    VERSION_COMPARE,
    Condition,
    ConditionError,
    ValueCondition,
    attribute_parts,
    check_condition_key,
    check_depth,
    check_list,
    check_not_empty,
    compile_closures,
    compile_compare,
    compile_equals,
    compile_exists,
    compile_operator,
    compile_version,
    group_test,
    groups_in_scope,
    in_sets,
    in_test,
    is_operator_object,
    json_type,
    regex_memo,
)
from edgewise.core.feature_view import FeatureView, inline_read
from edgewise.core.features import MISSING, Path
from edgewise.core.js_values import padded_version, padded_version_text

__all__ = ["compile_condition"]

# The traversal below mirrors the closure compiler (`compile_closures` / `compile_value`) and
# calls the same checks, so it raises the same ConditionErrors; value tests render as expressions over a
# variable name, conditions as expressions over `src`.

_COMPARE_SYMBOL: Final[Mapping[str, str]] = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_VERSION_SYMBOL: Final[Mapping[str, str]] = {
    "$veq": "==",
    "$vne": "!=",
    "$vgt": ">",
    "$vgte": ">=",
    "$vlt": "<",
    "$vlte": "<=",
}
_SOURCE_LIMIT: Final = 200_000  # characters of generated source; a larger condition keeps its closures

_ValueGen = Callable[[str], str]
"""A value test: renders as a Python expression over the variable name it is given (None: MISSING)."""


class _Codegen:
    """One condition's generated names: constants and helpers live in `namespace`, helper functions'
    source in `helpers`. Every identifier in the source is made here, from a fixed prefix and a count."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"_MISSING": MISSING}
        self.helpers: list[str] = []
        self._count = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, value: Any) -> str:
        """The name the generated source uses for `value` (bound in the namespace, never spelled out)."""
        name = self.fresh("_k")
        self.namespace[name] = value
        return name

    def call(self, fn: ValueCondition) -> _ValueGen:
        name = self.const(fn)
        return lambda x: f"{name}({x})"


def _gen_not(test: _ValueGen) -> _ValueGen:
    return lambda x: f"(not {test(x)})"


def _gen_all(tests: Sequence[_ValueGen]) -> _ValueGen:
    if len(tests) == 1:
        return tests[0]
    return lambda x: "(" + " and ".join(test(x) for test in tests) + ")"


def _gen_equals(cg: _Codegen, expected: Any, path: str) -> _ValueGen:
    deep = compile_equals(expected, path)  # checks the operand; the test itself for arrays and objects
    if expected is None:
        return lambda x: f"({x} is None)"
    if expected is True:
        return lambda x: f"({x} is True)"
    if expected is False:
        return lambda x: f"({x} is False)"
    if isinstance(expected, str):
        k = cg.const(expected)
        return lambda x: f"({x} == {k} and isinstance({x}, str))"
    if isinstance(expected, (int, float)):
        k = cg.const(expected)
        return lambda x: f"({x} == {k} and {x}.__class__ is not bool and isinstance({x}, (int, float)))"
    return cg.call(deep)


def _gen_operator(cg: _Codegen, op: str, operand: Any, path: str) -> _ValueGen:
    if op == "$eq":
        return _gen_equals(cg, operand, path)
    if op == "$ne":
        return _gen_not(_gen_equals(cg, operand, path))
    if op in ("$in", "$nin"):
        # a string against the set directly; anything else (arrays, booleans, ...) by the full test
        frozen_keys, frozen_bools = in_sets(operand, path)
        keys, full = cg.const(frozen_keys), cg.const(in_test(frozen_keys, frozen_bools))

        def is_in(x: str) -> str:
            return f"({x} in {keys} if {x}.__class__ is str else {full}({x}))"

        return is_in if op == "$in" else _gen_not(is_in)
    if op in COMPARE:
        full = cg.const(compile_compare(op, operand, path))
        symbol, k = _COMPARE_SYMBOL[op], cg.const(operand)
        if isinstance(operand, str):
            return lambda x: f"({x} {symbol} {k} if {x}.__class__ is str else {full}({x}))"
        return lambda x: (
            f"({x} {symbol} {k} if {x}.__class__ is int or {x}.__class__ is float else {full}({x}))"
        )
    if op in VERSION_COMPARE:
        # a non-empty string through the padded-version memo directly; anything else by the full test
        full = cg.const(compile_version(op, operand, path))
        symbol, k, pad = _VERSION_SYMBOL[op], cg.const(padded_version(operand)), cg.const(padded_version_text)
        return lambda x: f"({pad}({x}) {symbol} {k} if {x}.__class__ is str and {x} else {full}({x}))"
    if op in ("$inGroup", "$notInGroup"):
        group = groups_in_scope(operand, path)  # checks the operand, or names the unknown group
        # a string straight against the members' set when the group has one (MemberIndex: the same
        # bytecode as $in's), else through its `contains`
        members = getattr(group, "members", None)
        full = cg.const(group_test(group))
        if isinstance(members, frozenset):
            k = cg.const(members)

            def in_group(x: str) -> str:
                return f"({x} in {k} if {x}.__class__ is str else {full}({x}))"
        else:
            contains = cg.const(group.contains)

            def in_group(x: str) -> str:
                return f"({contains}({x}) if {x}.__class__ is str else {full}({x}))"

        return in_group if op == "$inGroup" else _gen_not(in_group)
    if op == "$exists":
        compile_exists(operand, path)  # checks the operand: true or false
        return (lambda x: f"({x} is not None)") if operand else (lambda x: f"({x} is None)")
    if op == "$regex":
        matches, memo = regex_memo(operand, path)
        m, full = cg.const(memo), cg.const(matches)
        # the memo's verdict for a known string, else the memoizing test (which fills the memo)
        return lambda x: (
            f"(_r if (_r := {m}.get({x}) if {x}.__class__ is str else None) is not None else {full}({x}))"
        )
    if op == "$not":
        return _gen_not(_gen_value(cg, operand, path))
    if op == "$elemMatch" and isinstance(operand, dict) and operand and is_operator_object(operand, path):
        element_matches = _gen_value(cg, operand, path)
        helper = cg.fresh("_h")
        cg.helpers.append(
            f"def {helper}(v):\n"
            "    if not isinstance(v, (list, tuple)):\n"
            "        return False\n"
            "    for e in v:\n"
            f"        if {element_matches('e')}:\n"
            "            return True\n"
            "    return False\n"
        )
        return lambda x: f"{helper}({x})"
    return cg.call(compile_operator(op, operand, path))  # checks the operand, or names the bad operator


def _gen_value(cg: _Codegen, doc: Any, path: str) -> _ValueGen:
    if isinstance(doc, dict):
        check_not_empty(doc, path)
        if is_operator_object(doc, path):
            return _gen_all([_gen_operator(cg, op, operand, f"{path}.{op}") for op, operand in doc.items()])
    return _gen_equals(cg, doc, path)


class _Node:
    """A condition (or part of one) to render as an expression over `src`."""

    def render(self, cg: _Codegen, fast: bool) -> str:
        raise NotImplementedError


class _Chain(_Node):
    """Conditions joined by `and` (all of them; none at all: true) or by `or` (any of them)."""

    def __init__(self, joiner: str, parts: list[_Node]) -> None:
        self.joiner = joiner
        self.parts: list[_Node] = []
        for part in parts:  # flattened: a chain of one is its part; a chain inside one of its kind joins it
            while isinstance(part, _Chain) and len(part.parts) == 1:
                part = part.parts[0]
            if isinstance(part, _Chain) and part.joiner == joiner:
                self.parts.extend(part.parts)
            else:
                self.parts.append(part)

    def render(self, cg: _Codegen, fast: bool) -> str:
        if not self.parts:
            return "True" if self.joiner == "and" else "False"
        if len(self.parts) == 1:
            return self.parts[0].render(cg, fast)
        return "(" + f" {self.joiner} ".join(part.render(cg, fast) for part in self.parts) + ")"


class _Not(_Node):
    def __init__(self, part: _Node) -> None:
        self.part = part

    def render(self, cg: _Codegen, fast: bool) -> str:
        return f"(not {self.part.render(cg, fast)})"


class _Attribute(_Node):
    def __init__(self, cg: _Codegen, parts: Path, test: _ValueGen) -> None:
        self.parts = parts
        self.path_name = cg.const(parts)
        self.var = cg.fresh("_v")
        self.test = test

    def render(self, cg: _Codegen, fast: bool) -> str:
        v, test = self.var, self.test(self.var)
        read = inline_read(self.parts, cg.const) if fast else None
        if read is not None:  # never MISSING: bind it (`x is x` is true) and test it
            return f"(({v} := {read}) is {v} and {test})"
        return f"((({v} := src.get({self.path_name})) is not _MISSING or ({v} := None) is None) and {test})"


def _gen_list(cg: _Codegen, doc: Any, path: str) -> list[_Node]:
    check_list(doc, path, "conditions")
    return [_gen_object(cg, element, f"{path}[{i}]") for i, element in enumerate(doc)]


def _gen_object(cg: _Codegen, doc: Any, path: str) -> _Node:
    if not isinstance(doc, dict):
        raise ConditionError(path, f"must be an object, got {json_type(doc)}")
    nodes: list[_Node] = []
    for key, value in doc.items():
        key_path = check_condition_key(key, path)
        if key == "$and":
            nodes.append(_Chain("and", _gen_list(cg, value, key_path)))
        elif key == "$or":
            nodes.append(_Chain("or", _gen_list(cg, value, key_path)))
        elif key == "$nor":
            nodes.append(_Not(_Chain("or", _gen_list(cg, value, key_path))))
        elif key == "$not":
            nodes.append(_Not(_gen_object(cg, value, key_path)))
        else:
            nodes.append(_Attribute(cg, attribute_parts(key, key_path), _gen_value(cg, value, key_path)))
    return _Chain("and", nodes)


def _generate(doc: Any, path: str) -> Condition | None:
    """The condition as a generated function, or None when its source is larger than _SOURCE_LIMIT or
    Python cannot compile it: then the closures serve."""
    cg = _Codegen()
    root = _gen_object(cg, doc, path)
    cg.namespace["_FeatureView"] = FeatureView
    fast, generic = root.render(cg, True), root.render(cg, False)
    source = (
        "".join(cg.helpers)
        + "def condition(src):\n"
        + "    if src.__class__ is _FeatureView and src.reads is None:\n"
        + f"        return {fast}\n"
        + f"    return {generic}\n"
    )
    if len(source) > _SOURCE_LIMIT:
        return None
    try:
        code = compile(source, "<edgewise.core.condition_codegen: generated>", "exec")
    except (SyntaxError, RecursionError, MemoryError):
        return None
    exec(code, cg.namespace)  # the source holds generated names only; the values are in the namespace
    condition: Condition = cg.namespace["condition"]
    condition.__qualname__ = condition.__name__ = "compiled_condition"
    return condition


def compile_condition(doc: Any, path: str = "condition") -> Condition:
    """Compile a condition document; raise ConditionError naming the path of the part that is wrong (a
    condition nested deeper than MAX_DEPTH levels included: the generator recurses once per level)."""
    check_depth(doc, path)
    generated = _generate(doc, path)
    return generated if generated is not None else compile_closures(doc, path)
