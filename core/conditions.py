"""Targeting conditions: MongoDB-style documents (GrowthBook's syntax and semantics) compiled to Python.

`compile_condition(doc)` turns a condition document into a `Condition`, a plain function of a
`FeatureSource` returning bool, or raises `ConditionError` naming the dotted path of the offending part.
Everything is checked and converted once, when a rules version is compiled: attribute paths are split,
`$in` lists become sets, regular expressions are compiled, and every operator is specialized, so
evaluation never looks at an operator name again. `compile_value` compiles one operator object (or value)
to a closure.

Code generation. `compile_condition` generates the source of one Python function per condition and
compiles it with `compile()`/`exec` (once per rules version). Nested $and / $or are flattened into one
`and` / `or` chain; equality, $ne, $exists, $in / $nin (a string against the operand's set; anything
else by the full test), $gt / $gte / $lt / $lte (a number against a number, a string against a string;
anything else by the full test), $regex (through a per-regex memo of verdicts by distinct string,
bounded by REGEX_MEMO_SIZE), $not and $elemMatch with an operator object are inlined; $size, $all,
$type and $elemMatch with a condition call their closures. The function has two bodies: one for an
`edgewise.core.feature_view.FeatureView` that records no reads, which reads each path with the direct
slot accessor `feature_view.inline_read` gives for it (consent rule included), and one for any other
source (and for views that record reads, for `explain`), which calls `source.get(path)` for every read.
Both read the same paths in the same order and stop at the same point as the closures would.
Safety: the source is made only of fixed text, generated identifiers (`_k<n>` constants, `_v<n>`
values, `_h<n>` helpers) and, from the view, context field names matched against a fixed list; every
value taken from the document (attribute names, operands, sets, compiled regexes, closures) is bound
in the namespace dict the source is executed in and never spelled into it. A condition whose source
Python cannot compile (nesting deeper than its parser allows) keeps the closures.

Syntax. A condition is an object whose keys are ANDed. A key is either `$and`, `$or`, `$nor` (each a
non-empty list of conditions), `$not` (one condition), or a dotted attribute path such as
`"profile.interests"` or `"context.attributes.campaign"`, read with `FeatureSource.get`. The value of an
attribute key is an operator object (all keys start with `$`, ANDed) or a value to compare with
(strict deep equality). Operators:

    $eq $ne            strict deep equality: no type coercion, true != 1, 5 != "5"; arrays and objects
                       compare element by element
    $in $nin           a non-empty list of strings, numbers, booleans or null; against an array
                       attribute, $in is true when the two share an element, $nin is its negation
    $gt $gte $lt $lte  a number or a string (see "comparisons" below)
    $exists            true / false
    $regex             a Python regular expression, matched with re.search against string attributes
    $not               an operator object or a value; negates it
    $elemMatch         an operator object (applied to each element) or a condition (applied to each
                       element as an object); true when some element of an array attribute matches
    $size              an integer, or an operator object applied to the length of an array attribute
    $all               a non-empty list of values or operator objects; every one must match some
                       element of an array attribute
    $type              "string", "number", "boolean", "array", "object" or "null"

Semantics follow GrowthBook's `evalCondition` (its public test suite, spec 0.7.1, is ported in
tests/data/growthbook_evalcondition_cases.json):

- MISSING (absent, or not readable under the granted consent) is treated like GrowthBook's null: it
  equals `null`, `$exists: false` holds for it, `$ne`/`$nin` hold for it, `$type` is "null", and
  array operators ($in against arrays, $elemMatch, $size, $all) are false for it.
- Comparisons: string with string compares lexicographically (by code point); number with number
  numerically. When exactly one side is a number, the other side is converted like GrowthBook does: a
  numeric string to its number ("8" > 5), a boolean to 1 / 0, null or MISSING to 0 (so
  `{"$lt": 5}` holds for a missing attribute: write `{"$exists": true, "$lt": 5}` to require one).
  Every other mix (string vs null, boolean vs string, arrays, objects, non-numeric strings) is false.
- Operators on a value of the wrong kind are false: $regex on a non-string, $size / $elemMatch / $all
  on a non-array.

Deliberate differences from GrowthBook, all at compile time (GrowthBook evaluates these to a fixed
answer at run time, which hides the rule author's mistake): unknown operators, a `$`-prefixed key at
condition level other than $and/$or/$nor/$not, an operator object mixing `$` keys and plain keys, an
empty operator object, empty $and/$or/$nor/$in/$nin/$all lists, operands of the wrong type and regular
expressions that do not compile are all `ConditionError`s. `$eq`/`$ne` with an array or object operand
compare deeply (GrowthBook: never equal). Regular expressions use Python's `re` syntax.
"""

from __future__ import annotations

import math
import operator
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

from edgewise.core.feature_view import FeatureView, inline_read
from edgewise.core.features import MISSING, FeatureSource, Path

__all__ = [
    "OPERATORS",
    "TYPE_NAMES",
    "Condition",
    "ConditionError",
    "ValueCondition",
    "all_of",
    "compile_condition",
    "compile_value",
    "json_type",
]

Condition = Callable[[FeatureSource], bool]
"""A compiled condition: true when the feature view matches."""

ValueCondition = Callable[[Any], bool]
"""A compiled operator object or value match, applied to one attribute value (None for MISSING)."""

OPERATORS: Final = (
    "$eq",
    "$ne",
    "$in",
    "$nin",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$exists",
    "$regex",
    "$not",
    "$elemMatch",
    "$size",
    "$all",
    "$type",
)
LOGICAL: Final = ("$and", "$or", "$nor", "$not")
TYPE_NAMES: Final = ("string", "number", "boolean", "array", "object", "null")

T = TypeVar("T")


class ConditionError(ValueError):
    """A condition that does not compile; `path` is the dotted path of the offending part."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class _Readable(Protocol):
    """The part of a FeatureSource a condition reads."""

    def get(self, path: Path) -> Any: ...


_Pred = Callable[[_Readable], bool]


def _always(_: Any) -> bool:
    return True


def all_of(preds: Sequence[Callable[[T], bool]]) -> Callable[[T], bool]:
    """A predicate true when every one of `preds` is (in order, stopping at the first false one)."""
    if not preds:
        return _always
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds

        def all2(x: T) -> bool:
            return a(x) and b(x)

        return all2
    if len(preds) == 3:
        a, b, c = preds

        def all3(x: T) -> bool:
            return a(x) and b(x) and c(x)

        return all3
    ps = tuple(preds)

    def all_n(x: T) -> bool:
        # a plain loop: any()/all() over a generator allocates on every evaluation
        for p in ps:  # noqa: SIM110
            if not p(x):
                return False
        return True

    return all_n


def _any_of(preds: Sequence[Callable[[T], bool]]) -> Callable[[T], bool]:
    if len(preds) == 1:
        return preds[0]
    ps = tuple(preds)

    def any_n(x: T) -> bool:
        for p in ps:  # noqa: SIM110 (no generator per evaluation)
            if p(x):
                return True
        return False

    return any_n


def _negate(pred: Callable[[T], bool]) -> Callable[[T], bool]:
    def negated(x: T) -> bool:
        return not pred(x)

    return negated


# --- values -------------------------------------------------------------------------------------------


def json_type(value: Any) -> str:
    """GrowthBook's type name of a value, as `$type` sees it (MISSING and None are "null")."""
    if value is None or value is MISSING:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _is_array(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _check_json(value: Any, path: str) -> None:
    """Refuse operands that are not JSON values (or are non-finite numbers)."""
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConditionError(path, f"numbers must be finite, got {value!r}")
        return
    if isinstance(value, list):
        for i, element in enumerate(value):
            _check_json(element, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str):
                raise ConditionError(path, f"object keys must be strings, got {key!r}")
            _check_json(element, f"{path}.{key}")
        return
    raise ConditionError(path, f"not a JSON value: {type(value).__name__}")


def _check_list(value: Any, path: str, of: str) -> None:
    if not isinstance(value, list):
        raise ConditionError(path, f"must be a list of {of}, got {json_type(value)}")
    if not value:
        raise ConditionError(path, f"must be a non-empty list of {of}, got an empty list")


def _json_equal(value: Any, expected: Any) -> bool:
    """Strict deep equality of an attribute value with a JSON operand (None stands for MISSING)."""
    if expected is None:
        return value is None
    cls = expected.__class__
    if cls is bool:
        return value is expected
    if cls is str:
        return isinstance(value, str) and value == expected
    if cls is int or cls is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == expected
    if cls is list:
        if not _is_array(value) or len(value) != len(expected):
            return False
        return all(_json_equal(v, e) for v, e in zip(value, expected, strict=True))
    # dict (operands are checked JSON)
    if not isinstance(value, Mapping) or len(value) != len(expected):
        return False
    return all(key in value and _json_equal(value[key], e) for key, e in expected.items())


def _compile_equals(expected: Any, path: str) -> ValueCondition:
    _check_json(expected, path)
    if expected is None:
        return _is_none
    if expected is True:
        return _is_true
    if expected is False:
        return _is_false
    if isinstance(expected, str):
        s = expected

        def eq_str(v: Any) -> bool:
            return v == s and isinstance(v, str)

        return eq_str
    if isinstance(expected, (int, float)):
        n = expected

        def eq_num(v: Any) -> bool:
            return v == n and v.__class__ is not bool and isinstance(v, (int, float))

        return eq_num

    def eq_deep(v: Any) -> bool:
        return _json_equal(v, expected)

    return eq_deep


def _is_none(v: Any) -> bool:
    return v is None


def _is_true(v: Any) -> bool:
    return v is True


def _is_false(v: Any) -> bool:
    return v is False


def _not_none(v: Any) -> bool:
    return v is not None


# --- operators ----------------------------------------------------------------------------------------


def _in_sets(operand: Any, path: str) -> tuple[frozenset[Any], frozenset[bool]]:
    """$in's operand checked and split: (strings, numbers and null), (booleans)."""
    _check_list(operand, path, "values")
    keys: set[Any] = set()
    bools: set[bool] = set()
    for i, element in enumerate(operand):
        if isinstance(element, bool):
            bools.add(element)
        elif element is None or isinstance(element, (str, int, float)):
            _check_json(element, f"{path}[{i}]")
            keys.add(element)
        else:
            raise ConditionError(
                f"{path}[{i}]", f"must be a string, number, boolean or null, got {json_type(element)}"
            )
    return frozenset(keys), frozenset(bools)


def _compile_in(operand: Any, path: str) -> ValueCondition:
    """$in: the value is one of the operand's; for an array value, the two share an element."""
    return _in_test(*_in_sets(operand, path))


def _in_test(frozen_keys: frozenset[Any], frozen_bools: frozenset[bool]) -> ValueCondition:
    # Python's True == 1: booleans live in their own set, and the C-level set intersection below is
    # only exact when no key could equal a boolean.
    fast_arrays = not frozen_bools and not any(
        isinstance(k, (int, float)) and (k == 0 or k == 1) for k in frozen_keys
    )

    def scalar_in(v: Any) -> bool:
        if v.__class__ is bool:
            return v in frozen_bools
        try:
            return v in frozen_keys
        except TypeError:  # unhashable (an object inside an array)
            return False

    def is_in(v: Any) -> bool:
        if v.__class__ is list or v.__class__ is tuple:
            if fast_arrays:
                try:
                    return not frozen_keys.isdisjoint(v)
                except TypeError:
                    pass
            return any(scalar_in(element) for element in v)
        return scalar_in(v)

    return is_in


_COMPARE: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def _as_number(v: Any) -> float | None:
    """A non-number attribute compared with a number, converted as GrowthBook does (None: not comparable)."""
    if v is None:
        return 0.0
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _compile_compare(op: str, operand: Any, path: str) -> ValueCondition:
    if isinstance(operand, bool) or not isinstance(operand, (int, float, str)):
        raise ConditionError(path, f"must be a number or a string, got {json_type(operand)}")
    _check_json(operand, path)
    cmp = _COMPARE[op]
    if isinstance(operand, str):
        s = operand
        s_number = _as_number(s)

        def compare_str(v: Any) -> bool:
            if isinstance(v, str):
                return cmp(v, s)
            if s_number is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                return cmp(v, s_number)
            return False

        return compare_str
    n = operand

    def compare_num(v: Any) -> bool:
        if v.__class__ is int or v.__class__ is float:
            return cmp(v, n)
        number = _as_number(v)
        return number is not None and cmp(number, n)

    return compare_num


def _compile_exists(operand: Any, path: str) -> ValueCondition:
    if not isinstance(operand, bool):
        raise ConditionError(path, f"must be true or false, got {json_type(operand)}")
    return _not_none if operand else _is_none


REGEX_MEMO_SIZE: Final = 4096
"""Distinct strings whose $regex verdict one compiled $regex remembers (then it starts over)."""


def _regex_memo(operand: Any, path: str) -> tuple[ValueCondition, dict[str, bool]]:
    """$regex as a memoizing predicate, and its memo (string -> verdict).

    The strings a regex meets (interests, devices, campaigns) are few and recur on every request, so a
    verdict is computed once per distinct string; the memo is bounded (cleared when full)."""
    if not isinstance(operand, str):
        raise ConditionError(path, f"must be a regular expression string, got {json_type(operand)}")
    try:
        search = re.compile(operand).search
    except re.error as exc:
        raise ConditionError(path, f"invalid regular expression {operand!r}: {exc}") from None
    memo: dict[str, bool] = {}

    def matches(v: Any) -> bool:
        if v.__class__ is str:
            verdict = memo.get(v)
            if verdict is None:
                verdict = search(v) is not None
                if len(memo) >= REGEX_MEMO_SIZE:
                    memo.clear()
                memo[v] = verdict
            return verdict
        return isinstance(v, str) and search(v) is not None  # a str subclass: not memoized

    return matches, memo


def _compile_regex(operand: Any, path: str) -> ValueCondition:
    return _regex_memo(operand, path)[0]


def _compile_elem_match(operand: Any, path: str) -> ValueCondition:
    if not isinstance(operand, dict) or not operand:
        raise ConditionError(path, f"must be a non-empty object, got {json_type(operand)}")
    element_matches: ValueCondition
    if _is_operator_object(operand, path):
        element_matches = compile_value(operand, path)
    else:
        element_matches = _as_object_condition(_compile_object(operand, path))

    def elem_match(v: Any) -> bool:
        return _is_array(v) and any(element_matches(element) for element in v)

    return elem_match


def _as_object_condition(condition: _Pred) -> ValueCondition:
    def object_matches(v: Any) -> bool:
        return condition(_ValueView(v))

    return object_matches


def _compile_size(operand: Any, path: str) -> ValueCondition:
    if isinstance(operand, int) and not isinstance(operand, bool):
        if operand < 0:
            raise ConditionError(path, f"must not be negative, got {operand}")
        size = operand

        def size_is(v: Any) -> bool:
            return _is_array(v) and len(v) == size

        return size_is
    if isinstance(operand, dict) and operand and _is_operator_object(operand, path):
        length_matches = compile_value(operand, path)

        def size_matches(v: Any) -> bool:
            return _is_array(v) and length_matches(len(v))

        return size_matches
    raise ConditionError(path, f"must be an integer or an operator object, got {json_type(operand)}")


def _compile_all(operand: Any, path: str) -> ValueCondition:
    _check_list(operand, path, "values or operator objects")
    wanted = tuple(compile_value(element, f"{path}[{i}]") for i, element in enumerate(operand))

    def contains_all(v: Any) -> bool:
        if not _is_array(v):
            return False
        for want in wanted:
            for element in v:
                if want(element):
                    break
            else:
                return False
        return True

    return contains_all


def _compile_type(operand: Any, path: str) -> ValueCondition:
    if operand not in TYPE_NAMES or not isinstance(operand, str):
        raise ConditionError(path, f"must be one of {', '.join(TYPE_NAMES)}, got {operand!r}")
    name = operand

    def type_is(v: Any) -> bool:
        return json_type(v) == name

    return type_is


def _compile_operator(op: str, operand: Any, path: str) -> ValueCondition:
    if op == "$eq":
        return _compile_equals(operand, path)
    if op == "$ne":
        return _negate(_compile_equals(operand, path))
    if op == "$in":
        return _compile_in(operand, path)
    if op == "$nin":
        return _negate(_compile_in(operand, path))
    if op in _COMPARE:
        return _compile_compare(op, operand, path)
    if op == "$exists":
        return _compile_exists(operand, path)
    if op == "$regex":
        return _compile_regex(operand, path)
    if op == "$not":
        return _negate(compile_value(operand, path))
    if op == "$elemMatch":
        return _compile_elem_match(operand, path)
    if op == "$size":
        return _compile_size(operand, path)
    if op == "$all":
        return _compile_all(operand, path)
    if op == "$type":
        return _compile_type(operand, path)
    hint = " ($and, $or, $nor apply to whole conditions, not to one attribute)" if op in LOGICAL else ""
    raise ConditionError(path, f"unknown operator {op!r}{hint}; known: {' '.join(OPERATORS)}")


def _is_operator_object(doc: dict[Any, Any], path: str) -> bool:
    """True if every key starts with `$`, False if none does; mixing both is an error."""
    dollar = sum(1 for key in doc if isinstance(key, str) and key.startswith("$"))
    if dollar and dollar != len(doc):
        plain = next(key for key in doc if not (isinstance(key, str) and key.startswith("$")))
        raise ConditionError(
            path,
            f"mixes operators and plain keys (e.g. {plain!r}): use only operators, or only plain keys "
            "for an exact object match",
        )
    return dollar > 0


def compile_value(doc: Any, path: str = "value") -> ValueCondition:
    """Compile the right-hand side of an attribute key: an operator object, or a value to equal."""
    if isinstance(doc, dict):
        _check_not_empty(doc, path)
        if _is_operator_object(doc, path):
            return all_of([_compile_operator(op, operand, f"{path}.{op}") for op, operand in doc.items()])
    return _compile_equals(doc, path)


def _check_not_empty(doc: dict[Any, Any], path: str) -> None:
    if not doc:
        raise ConditionError(
            path,
            'an empty object is ambiguous: use {"$eq": {}} to match an empty object, or {"$exists": true}',
        )


# --- conditions ---------------------------------------------------------------------------------------


class _ValueView:
    """An array element seen as the attributes of a nested condition ($elemMatch)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def get(self, path: Path) -> Any:
        current = self.value
        for part in path:
            if isinstance(current, Mapping) and part in current:
                current = current[part]
            else:
                return MISSING
        return current


def _attribute_parts(key: str, path: str) -> Path:
    # interned: msgpack interns the keys of the maps it decodes (profiles), so lookups match by identity
    parts: Path = tuple(sys.intern(part) for part in key.split("."))
    if not all(parts):
        raise ConditionError(path, f"attribute path {key!r} has an empty part")
    return parts


def _check_condition_key(key: Any, path: str) -> str:
    """A condition-level key: non-empty, and if `$`-prefixed, one of LOGICAL. Returns its dotted path."""
    if not isinstance(key, str) or not key:
        raise ConditionError(path, f"keys must be non-empty strings, got {key!r}")
    key_path = f"{path}.{key}"
    if key.startswith("$") and key not in LOGICAL:
        hint = " (attribute operators go inside an attribute key)" if key in OPERATORS else ""
        raise ConditionError(
            key_path, f"unknown condition operator {key!r}{hint}; known here: {' '.join(LOGICAL)}"
        )
    return key_path


def _compile_attribute(key: str, doc: Any, path: str) -> _Pred:
    parts = _attribute_parts(key, path)
    value_matches = compile_value(doc, path)
    missing = MISSING

    def attribute_matches(source: _Readable) -> bool:
        v = source.get(parts)
        if v is missing:
            v = None
        return value_matches(v)

    return attribute_matches


def _compile_list(doc: Any, path: str) -> list[_Pred]:
    _check_list(doc, path, "conditions")
    return [_compile_object(element, f"{path}[{i}]") for i, element in enumerate(doc)]


def _compile_object(doc: Any, path: str) -> _Pred:
    if not isinstance(doc, dict):
        raise ConditionError(path, f"must be an object, got {json_type(doc)}")
    preds: list[_Pred] = []
    for key, value in doc.items():
        key_path = _check_condition_key(key, path)
        if key == "$and":
            preds.append(all_of(_compile_list(value, key_path)))
        elif key == "$or":
            preds.append(_any_of(_compile_list(value, key_path)))
        elif key == "$nor":
            preds.append(_negate(_any_of(_compile_list(value, key_path))))
        elif key == "$not":
            preds.append(_negate(_compile_object(value, key_path)))
        else:
            preds.append(_compile_attribute(key, value, key_path))
    return all_of(preds)


# --- code generation ------------------------------------------------------------------------------------
#
# A condition becomes the source of one Python function (see "Code generation" in the module docstring).
# The traversal below mirrors _compile_object / compile_value and calls the same checks, so it raises
# the same ConditionErrors; value tests render as expressions over a variable name, conditions as
# expressions over `src`.

_COMPARE_SYMBOL: Final[Mapping[str, str]] = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
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
    deep = _compile_equals(expected, path)  # checks the operand; the test itself for arrays and objects
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
        frozen_keys, frozen_bools = _in_sets(operand, path)
        keys, full = cg.const(frozen_keys), cg.const(_in_test(frozen_keys, frozen_bools))

        def is_in(x: str) -> str:
            return f"({x} in {keys} if {x}.__class__ is str else {full}({x}))"

        return is_in if op == "$in" else _gen_not(is_in)
    if op in _COMPARE:
        full = cg.const(_compile_compare(op, operand, path))
        symbol, k = _COMPARE_SYMBOL[op], cg.const(operand)
        if isinstance(operand, str):
            return lambda x: f"({x} {symbol} {k} if {x}.__class__ is str else {full}({x}))"
        return lambda x: (
            f"({x} {symbol} {k} if {x}.__class__ is int or {x}.__class__ is float else {full}({x}))"
        )
    if op == "$exists":
        present = _compile_exists(operand, path) is _not_none
        return (lambda x: f"({x} is not None)") if present else (lambda x: f"({x} is None)")
    if op == "$regex":
        matches, memo = _regex_memo(operand, path)
        m, full = cg.const(memo), cg.const(matches)
        # the memo's verdict for a known string, else the memoizing test (which fills the memo)
        return lambda x: (
            f"(_r if (_r := {m}.get({x}) if {x}.__class__ is str else None) is not None else {full}({x}))"
        )
    if op == "$not":
        return _gen_not(_gen_value(cg, operand, path))
    if op == "$elemMatch" and isinstance(operand, dict) and operand and _is_operator_object(operand, path):
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
    return cg.call(_compile_operator(op, operand, path))  # checks the operand, or names the bad operator


def _gen_value(cg: _Codegen, doc: Any, path: str) -> _ValueGen:
    if isinstance(doc, dict):
        _check_not_empty(doc, path)
        if _is_operator_object(doc, path):
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
    _check_list(doc, path, "conditions")
    return [_gen_object(cg, element, f"{path}[{i}]") for i, element in enumerate(doc)]


def _gen_object(cg: _Codegen, doc: Any, path: str) -> _Node:
    if not isinstance(doc, dict):
        raise ConditionError(path, f"must be an object, got {json_type(doc)}")
    nodes: list[_Node] = []
    for key, value in doc.items():
        key_path = _check_condition_key(key, path)
        if key == "$and":
            nodes.append(_Chain("and", _gen_list(cg, value, key_path)))
        elif key == "$or":
            nodes.append(_Chain("or", _gen_list(cg, value, key_path)))
        elif key == "$nor":
            nodes.append(_Not(_Chain("or", _gen_list(cg, value, key_path))))
        elif key == "$not":
            nodes.append(_Not(_gen_object(cg, value, key_path)))
        else:
            nodes.append(_Attribute(cg, _attribute_parts(key, key_path), _gen_value(cg, value, key_path)))
    return _Chain("and", nodes)


def _generate(doc: Any, path: str) -> Condition | None:
    """The condition as a generated function, or None when Python cannot compile its source (nesting
    deeper than the parser allows, or larger than _SOURCE_LIMIT): then the closures serve."""
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
        code = compile(source, "<edgewise.core.conditions: generated>", "exec")
    except (SyntaxError, RecursionError, MemoryError):
        return None
    exec(code, cg.namespace)  # the source holds generated names only; the values are in the namespace
    condition: Condition = cg.namespace["condition"]
    condition.__qualname__ = condition.__name__ = "compiled_condition"
    return condition


def compile_condition(doc: Any, path: str = "condition") -> Condition:
    """Compile a condition document; raise ConditionError naming the path of the part that is wrong."""
    generated = _generate(doc, path)
    return generated if generated is not None else _compile_object(doc, path)
