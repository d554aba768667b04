"""Targeting conditions: MongoDB-style documents (GrowthBook's syntax and semantics) checked and compiled
to closures.

The syntax, the semantics (GrowthBook's `evalCondition`, MISSING as null, mixed-type comparisons) and
the deliberate differences from GrowthBook are specified in docs/conditions.md.

`compile_closures(doc)` turns a condition document into a `Condition`, a plain function of a
`FeatureSource` returning bool; `compile_value(doc)` turns the right-hand side of one attribute key (an
operator object or a value) into a `ValueCondition`. A document that is not a valid condition raises
`ConditionError`, whose `path` is the dotted path of the offending part. Everything is checked and
converted once, at compile time: attribute paths are split (and interned), `$in` lists become sets,
regular expressions are compiled and every operator is specialized, so evaluation never looks at an
operator name again.

The closures are the reference semantics. `edgewise.core.condition_codegen.compile_condition`, which
rules versions use, generates one Python function per condition with the same verdicts and the same
reads, built on the checks and closures here (the names without a leading underscore that `__all__`
does not list) and falling back to `compile_closures` for what Python cannot compile.
"""

from __future__ import annotations

import math
import operator
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final, Protocol, TypeVar

from edgewise.core.features import MISSING, FeatureSource, Path, walk
from edgewise.core.js_values import js_number, padded_version
from edgewise.core.json_limits import MAX_DEPTH, find_problem, join_path

__all__ = [
    "OPERATORS",
    "TYPE_NAMES",
    "Condition",
    "ConditionError",
    "GroupMembership",
    "ValueCondition",
    "all_of",
    "compile_closures",
    "compile_value",
    "json_type",
    "saved_groups",
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
    "$veq",
    "$vne",
    "$vgt",
    "$vgte",
    "$vlt",
    "$vlte",
    "$ini",
    "$nini",
    "$alli",
    "$regexi",
    "$notRegex",
    "$notRegexi",
    "$inGroup",
    "$notInGroup",
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


class GroupMembership(Protocol):
    """A saved group's members (strings and numbers), as `$inGroup` / `$notInGroup` look them up."""

    def contains(self, value: Any) -> bool:
        """Whether `value` (a string or a number; 1 and 1.0 are the same member) is a member."""
        ...


_GROUPS: ContextVar[Mapping[str, GroupMembership] | None] = ContextVar("edgewise_saved_groups", default=None)


@contextmanager
def saved_groups(groups: Mapping[str, GroupMembership] | None) -> Iterator[None]:
    """Within the block, conditions compile `$inGroup` / `$notInGroup` against `groups` (group id ->
    members); a group id not in it (or any group, when None) is a compile error naming it."""
    token = _GROUPS.set(groups)
    try:
        yield
    finally:
        _GROUPS.reset(token)


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


def check_list(value: Any, path: str, of: str) -> None:
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


def compile_equals(expected: Any, path: str) -> ValueCondition:
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


def in_sets(operand: Any, path: str) -> tuple[frozenset[Any], frozenset[bool]]:
    """$in's operand checked and split: (strings, numbers and null), (booleans)."""
    check_list(operand, path, "values")
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
    return in_test(*in_sets(operand, path))


def in_test(frozen_keys: frozenset[Any], frozen_bools: frozenset[bool]) -> ValueCondition:
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


COMPARE: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def _as_number(v: Any) -> float | None:
    """A non-number attribute compared with a number, converted as GrowthBook (JavaScript's `Number()`)
    does: None: not comparable (NaN compares false with everything)."""
    if v is None:
        return 0.0
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        number = js_number(v)
        return None if number != number else number
    return None


def compile_compare(op: str, operand: Any, path: str) -> ValueCondition:
    if isinstance(operand, bool) or not isinstance(operand, (int, float, str)):
        raise ConditionError(path, f"must be a number or a string, got {json_type(operand)}")
    _check_json(operand, path)
    cmp = COMPARE[op]
    if isinstance(operand, str):
        s = operand
        s_number = _as_number(s)

        def compare_str(v: Any) -> bool:
            if isinstance(v, str):
                return cmp(v, s)
            if s_number is None:
                return False
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return cmp(v, s_number)
            number = _as_number(v)  # null / MISSING as 0, a boolean as 1 / 0 (JavaScript's `null < "5"`)
            return number is not None and cmp(number, s_number)

        return compare_str
    n = operand

    def compare_num(v: Any) -> bool:
        if v.__class__ is int or v.__class__ is float:
            return cmp(v, n)
        number = _as_number(v)
        return number is not None and cmp(number, n)

    return compare_num


VERSION_COMPARE: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "$veq": operator.eq,
    "$vne": operator.ne,
    "$vgt": operator.gt,
    "$vgte": operator.ge,
    "$vlt": operator.lt,
    "$vlte": operator.le,
}


def compile_version(op: str, operand: Any, path: str) -> ValueCondition:
    """$veq ... $vlte: both sides as GrowthBook's padded version strings (`core.js_values.padded_version`:
    a leading `v` and build metadata dropped, pre-releases before their release, missing parts and
    MISSING as "0"), compared as strings."""
    if isinstance(operand, bool) or not isinstance(operand, (str, int, float)):
        raise ConditionError(path, f"must be a version string, got {json_type(operand)}")
    _check_json(operand, path)
    if isinstance(operand, str) and not operand:
        raise ConditionError(path, "must be a non-empty version string")
    cmp, expected = VERSION_COMPARE[op], padded_version(operand)

    def version_matches(v: Any) -> bool:
        return cmp(padded_version(v), expected)

    return version_matches


def _fold(v: Any) -> Any:
    """A value with its strings lower-cased (those of an array too): what the `i` operators compare."""
    if v.__class__ is str:
        return v.lower()
    if v.__class__ is list or v.__class__ is tuple:
        return [e.lower() if isinstance(e, str) else e for e in v]
    return v.lower() if isinstance(v, str) else v


def _compile_in_insensitive(operand: Any, path: str) -> ValueCondition:
    """$ini: $in with strings compared case-insensitively (both sides lower-cased)."""
    check_list(operand, path, "values")
    test = _compile_in([e.lower() if isinstance(e, str) else e for e in operand], path)

    def is_in_insensitive(v: Any) -> bool:
        return test(_fold(v))

    return is_in_insensitive


def _compile_group(operand: Any, path: str) -> ValueCondition:
    """$inGroup: the value (or, for an array, one of its elements) is a member of the named saved group."""
    return group_test(groups_in_scope(operand, path))


def groups_in_scope(operand: Any, path: str) -> GroupMembership:
    """The saved group `operand` names, among those `saved_groups` put in scope; else ConditionError."""
    if not isinstance(operand, str):
        raise ConditionError(path, f"must be a saved group id (a string), got {json_type(operand)}")
    groups = _GROUPS.get()
    group = None if groups is None else groups.get(operand)
    if group is None:
        known = "none are defined" if not groups else "known: " + " ".join(sorted(groups)[:20])
        raise ConditionError(path, f"unknown saved group {operand!r} ({known})")
    return group


def group_test(group: GroupMembership) -> ValueCondition:
    contains = group.contains

    def scalar_in_group(v: Any) -> bool:
        return (v.__class__ is str or v.__class__ is int or v.__class__ is float) and contains(v)

    def in_group(v: Any) -> bool:
        if v.__class__ is list or v.__class__ is tuple:
            return any(scalar_in_group(element) for element in v)
        return scalar_in_group(v)

    return in_group


def compile_exists(operand: Any, path: str) -> ValueCondition:
    if not isinstance(operand, bool):
        raise ConditionError(path, f"must be true or false, got {json_type(operand)}")
    return _not_none if operand else _is_none


REGEX_MEMO_SIZE: Final = 4096
"""Distinct strings whose $regex verdict one compiled $regex remembers (then it starts over)."""


def regex_memo(operand: Any, path: str, flags: int = 0) -> tuple[ValueCondition, dict[str, bool]]:
    """$regex as a memoizing predicate, and its memo (string -> verdict).

    The strings a regex meets (interests, devices, campaigns) are few and recur on every request, so a
    verdict is computed once per distinct string; the memo is bounded (cleared when full)."""
    if not isinstance(operand, str):
        raise ConditionError(path, f"must be a regular expression string, got {json_type(operand)}")
    try:
        search = re.compile(operand, flags).search
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
    return regex_memo(operand, path)[0]


def _compile_elem_match(operand: Any, path: str) -> ValueCondition:
    if not isinstance(operand, dict) or not operand:
        raise ConditionError(path, f"must be a non-empty object, got {json_type(operand)}")
    element_matches: ValueCondition
    if is_operator_object(operand, path):
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
    if isinstance(operand, dict) and operand and is_operator_object(operand, path):
        length_matches = compile_value(operand, path)

        def size_matches(v: Any) -> bool:
            return _is_array(v) and length_matches(len(v))

        return size_matches
    raise ConditionError(path, f"must be an integer or an operator object, got {json_type(operand)}")


def _compile_all(operand: Any, path: str, insensitive: bool = False) -> ValueCondition:
    """$all (and $alli: plain string elements equal case-insensitively)."""
    check_list(operand, path, "values or operator objects")
    wanted = tuple(
        _equals_insensitive(element, f"{path}[{i}]")
        if insensitive and isinstance(element, str)
        else compile_value(element, f"{path}[{i}]")
        for i, element in enumerate(operand)
    )

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


def _equals_insensitive(expected: str, path: str) -> ValueCondition:
    folded = expected.lower()

    def eq_insensitive(v: Any) -> bool:
        return isinstance(v, str) and v.lower() == folded

    return eq_insensitive


def _compile_type(operand: Any, path: str) -> ValueCondition:
    if operand not in TYPE_NAMES or not isinstance(operand, str):
        raise ConditionError(path, f"must be one of {', '.join(TYPE_NAMES)}, got {operand!r}")
    name = operand

    def type_is(v: Any) -> bool:
        return json_type(v) == name

    return type_is


def compile_operator(op: str, operand: Any, path: str) -> ValueCondition:
    if op == "$eq":
        return compile_equals(operand, path)
    if op == "$ne":
        return _negate(compile_equals(operand, path))
    if op == "$in":
        return _compile_in(operand, path)
    if op == "$nin":
        return _negate(_compile_in(operand, path))
    if op in COMPARE:
        return compile_compare(op, operand, path)
    if op == "$exists":
        return compile_exists(operand, path)
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
    if op in VERSION_COMPARE:
        return compile_version(op, operand, path)
    if op == "$ini":
        return _compile_in_insensitive(operand, path)
    if op == "$nini":
        return _negate(_compile_in_insensitive(operand, path))
    if op == "$alli":
        return _compile_all(operand, path, insensitive=True)
    if op == "$regexi":
        return regex_memo(operand, path, re.IGNORECASE)[0]
    if op == "$notRegex":
        return _negate(_compile_regex(operand, path))
    if op == "$notRegexi":
        return _negate(regex_memo(operand, path, re.IGNORECASE)[0])
    if op == "$inGroup":
        return _compile_group(operand, path)
    if op == "$notInGroup":
        return _negate(_compile_group(operand, path))
    hint = " ($and, $or, $nor apply to whole conditions, not to one attribute)" if op in LOGICAL else ""
    raise ConditionError(path, f"unknown operator {op!r}{hint}; known: {' '.join(OPERATORS)}")


def is_operator_object(doc: dict[Any, Any], path: str) -> bool:
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
        check_not_empty(doc, path)
        if is_operator_object(doc, path):
            return all_of([compile_operator(op, operand, f"{path}.{op}") for op, operand in doc.items()])
    return compile_equals(doc, path)


def check_not_empty(doc: dict[Any, Any], path: str) -> None:
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
        return walk(self.value, path)


def attribute_parts(key: str, path: str) -> Path:
    # interned: msgpack interns the keys of the maps it decodes (profiles), so lookups match by identity
    parts: Path = tuple(sys.intern(part) for part in key.split("."))
    if not all(parts):
        raise ConditionError(path, f"attribute path {key!r} has an empty part")
    return parts


def check_condition_key(key: Any, path: str) -> str:
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
    parts = attribute_parts(key, path)
    value_matches = compile_value(doc, path)
    missing = MISSING

    def attribute_matches(source: _Readable) -> bool:
        v = source.get(parts)
        if v is missing:
            v = None
        return value_matches(v)

    return attribute_matches


def _compile_list(doc: Any, path: str) -> list[_Pred]:
    check_list(doc, path, "conditions")
    return [_compile_object(element, f"{path}[{i}]") for i, element in enumerate(doc)]


def _compile_object(doc: Any, path: str) -> _Pred:
    if not isinstance(doc, dict):
        raise ConditionError(path, f"must be an object, got {json_type(doc)}")
    preds: list[_Pred] = []
    for key, value in doc.items():
        key_path = check_condition_key(key, path)
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


def check_depth(doc: Any, path: str) -> None:
    """Refuse a condition nesting objects and arrays deeper than MAX_DEPTH levels (checked without
    recursion): compiling and evaluating a condition recurse once per level."""
    problem = find_problem(doc, max_depth=MAX_DEPTH, check_ints=False)
    if problem is not None:
        raise ConditionError(join_path(path, problem[0]), problem[1])


def compile_closures(doc: Any, path: str = "condition") -> Condition:
    """Compile a condition document to closures; raise ConditionError naming the path of the part that is
    wrong (a condition nested deeper than MAX_DEPTH levels included)."""
    check_depth(doc, path)
    return _compile_object(doc, path)
