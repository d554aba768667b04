"""Generated conditions: same verdicts as the closures they replace (a differential fuzz over random
conditions and attributes, through a DictSource and through a FeatureView's direct reads), safe source
(document values are never spelled into it), flattening and read order, the closures kept for what Python
cannot compile, and the bounded $regex memo."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from conftest import examples
from feature_source import DictSource
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgewise.core.condition_codegen as codegen
from edgewise.core.condition_codegen import compile_condition
from edgewise.core.conditions import (
    REGEX_MEMO_SIZE,
    ConditionError,
    compile_closures,
    compile_value,
    regex_memo,
)
from edgewise.core.decisions import Context
from edgewise.core.feature_view import FeatureView
from edgewise.core.json_limits import MAX_DEPTH
from edgewise.core.records import ProfileRecord
from edgewise.core.version_state import VersionState


@pytest.fixture
def sources(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The source of every condition compiled while the fixture is active."""
    seen: list[str] = []
    real_compile = compile

    def spy(source: str, filename: str, mode: str) -> Any:
        seen.append(source)
        return real_compile(source, filename, mode)

    monkeypatch.setattr(codegen, "compile", spy, raising=False)
    yield seen


def test_document_values_are_never_spelled_into_the_source(sources: list[str]) -> None:
    hostile = '") or __import__("os") or print("x\n") or ("'  # no dots: it is also an attribute name
    doc = {
        f"profile.{hostile}": hostile,
        "context.attributes.a'b\nc": {"$in": [hostile, "x"]},
        "profile.n": {"$gt": "0", "$regex": hostile.replace("(", r"\(").replace(")", r"\)")},
        "$or": [{"profile.k": {"$elemMatch": {"$eq": hostile}}}, {"user.id": {"$ne": "'"}}],
    }
    condition = compile_condition(doc)
    [source] = sources
    assert hostile not in source and "a'b" not in source and "'" not in source and '"' not in source
    data: dict[str, Any] = {
        "profile": {hostile: hostile, "n": 5, "k": ["z", hostile]},
        "context": {"attributes": {}},
    }
    assert condition(DictSource(data)) is False  # $in on a missing attribute
    data["context"]["attributes"]["a'b\nc"] = "x"
    assert condition(DictSource(data)) is False  # $regex needs a string, n is 5
    data["profile"]["n"] = "9 " + hostile
    assert condition(DictSource(data)) is True
    assert compile_closures(doc)(DictSource(data)) is True


def test_and_or_chains_are_flattened_and_read_in_order() -> None:
    doc = {"$and": [{"$and": [{"a": 1}, {"b": 2}]}, {"c": 3}], "$or": [{"$or": [{"d": 1}, {"e": 1}]}]}
    root = codegen._gen_object(codegen._Codegen(), doc, "condition")
    assert isinstance(root, codegen._Chain) and root.joiner == "and"  # a and b and c and (d or e)
    assert [type(part).__name__ for part in root.parts] == ["_Attribute"] * 3 + ["_Chain"]
    assert len(cast(codegen._Chain, root.parts[3]).parts) == 2
    condition = compile_condition(doc)
    source = DictSource({"a": 1, "b": 2, "c": 3, "e": 1})
    assert condition(source) is True
    assert source.reads == [("a",), ("b",), ("c",), ("d",), ("e",)]
    source = DictSource({"a": 1, "b": 3})
    assert condition(source) is False
    assert source.reads == [("a",), ("b",)]


def test_conditions_python_cannot_compile_keep_their_closures(sources: list[str]) -> None:
    doc = {"$or": [{"a": i} for i in range(3000)]}  # a source far over _SOURCE_LIMIT
    condition = compile_condition(doc)
    assert sources == []  # never handed to compile(): the closures serve
    assert condition(DictSource({"a": 2999})) is True
    assert condition(DictSource({"a": 3000})) is False


def _nested_not(levels: int) -> dict[str, Any]:
    """A condition nesting `levels` objects: {"$not": {"$not": ... {"a": 1}}}."""
    doc: dict[str, Any] = {"a": 1}
    for _ in range(levels - 1):
        doc = {"$not": doc}
    return doc


def test_conditions_nest_at_most_max_depth_levels(sources: list[str]) -> None:
    deepest = _nested_not(MAX_DEPTH)  # the deepest allowed: generated and compiled by Python
    condition = compile_condition(deepest)
    assert len(sources) == 1
    assert condition(DictSource({"a": 1})) is (MAX_DEPTH % 2 == 1)  # MAX_DEPTH - 1 negations
    assert compile_closures(deepest)(DictSource({"a": 1})) is (MAX_DEPTH % 2 == 1)
    # one level more, or 100,000 (python's own recursion limit is about 1,000): refused by both
    # compilers, naming the path of the object that opens level MAX_DEPTH + 1
    for levels in (MAX_DEPTH + 1, 100_000):
        for compiler in (compile_condition, compile_closures):
            with pytest.raises(ConditionError, match=f"nested deeper than {MAX_DEPTH} levels") as err:
                compiler(_nested_not(levels), "segments.s.condition")
            assert err.value.path == "segments.s.condition" + ".$not" * MAX_DEPTH
    with pytest.raises(ConditionError) as err:  # arrays count too: $or lists
        compile_condition(_nested_or(40))
    assert err.value.path == "condition" + ".$or[0]" * (MAX_DEPTH // 2)  # the object at level 65


def _nested_or(levels: int) -> dict[str, Any]:
    """{"$or": [{"$or": [ ... {"a": 1}]}]}: 2 levels (an object and a list) per $or."""
    doc: dict[str, Any] = {"a": 1}
    for _ in range(levels):
        doc = {"$or": [doc]}
    return doc


def test_regex_memo_is_bounded_and_stays_exact() -> None:
    matches, memo = regex_memo("^a.*7$", "p")
    for n in range(REGEX_MEMO_SIZE + 500):
        text = f"a{n}"
        assert matches(text) is text.endswith("7")
        assert len(memo) <= REGEX_MEMO_SIZE
    assert matches(5) is False and matches(None) is False

    class Sub(str):
        pass

    assert matches(Sub("ab7")) is True
    condition = compile_condition({"x": {"$regex": "^a.*7$"}})
    for n in range(REGEX_MEMO_SIZE + 50):
        assert condition(DictSource({"x": f"a{n}"})) is f"a{n}".endswith("7")


def test_compile_value_stays_a_closure_with_the_same_answers() -> None:
    assert compile_value({"$regex": "^s"})("sports") is True
    assert compile_value({"$in": ["a"], "$ne": "b"})("a") is True
    assert compile_value({"$elemMatch": {"$gt": 2}})([1, 3]) is True


# --- differential fuzz: generated == closures ------------------------------------------------------------

NAMES = ["a", "b", "c"]
# few distinct values, so operands and attributes often meet (equal, bordering, numeric strings)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, 2.5, 1.0]),
    st.sampled_from(["", "a", "ab", "1", "2.5"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner, max_size=2),
    max_leaves=6,
)
in_operands = st.lists(scalars, min_size=1, max_size=4)
compare_operands = st.sampled_from([0, 1, 2.5, "", "a", "1"])


LEAF_OPERANDS: dict[str, st.SearchStrategy[Any]] = {
    "$eq": values,
    "$ne": values,
    "$in": in_operands,
    "$nin": in_operands,
    "$gt": compare_operands,
    "$gte": compare_operands,
    "$lt": compare_operands,
    "$lte": compare_operands,
    "$exists": st.booleans(),
    "$regex": st.sampled_from(["^a", "b$", "1", ".", "^$"]),
    "$type": st.sampled_from(["string", "number", "boolean", "array", "object", "null"]),
    "$size": st.integers(0, 3),
    "$all": st.lists(scalars, min_size=1, max_size=2),
}
NESTED = ("$not", "$elemMatch", "$size", "$all")


@st.composite
def operator_objects(draw: st.DrawFn, depth: int) -> dict[str, Any]:
    ops = draw(st.lists(st.sampled_from(sorted(LEAF_OPERANDS)), min_size=1, max_size=3, unique=True))
    doc = {op: draw(LEAF_OPERANDS[op]) for op in ops}
    if depth > 0 and draw(st.booleans()):
        op = draw(st.sampled_from(NESTED))
        if op == "$elemMatch" and draw(st.booleans()):
            doc[op] = draw(condition_docs(depth - 1, NAMES))  # elements as objects
        elif op == "$all":
            doc[op] = draw(st.lists(operator_objects(depth - 1) | scalars, min_size=1, max_size=2))
        elif op == "$not":
            doc[op] = draw(operator_objects(depth - 1) | values)
        else:
            doc[op] = draw(operator_objects(depth - 1))
    return doc


@st.composite
def condition_docs(draw: st.DrawFn, depth: int, keys: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["attribute", "attribute", "logical"] if depth > 0 else ["attribute"]))
        if kind == "attribute":
            doc[draw(st.sampled_from(keys))] = draw(operator_objects(depth) | values)
        else:
            op = draw(st.sampled_from(["$and", "$or", "$nor", "$not"]))
            inner = condition_docs(depth - 1, keys)
            doc[op] = draw(inner) if op == "$not" else draw(st.lists(inner, min_size=1, max_size=3))
    return doc


PROFILE_KEYS = [f"profile.{n}" for n in NAMES] + ["profile.a.b", "context.attributes.a", "user.id"]


def _view(profile: dict[str, Any], campaign: Any, record_reads: bool) -> FeatureView:
    class State:
        field_purposes = dict.fromkeys(NAMES, "p")

    return FeatureView(
        state=cast(VersionState, State()),
        context=Context(attributes={} if campaign is None else {"a": campaign}),
        now_ms=0,
        user_id="u",
        profile=ProfileRecord("u", 1, profile, {"p": 1}, None),
        activity=None,
        granted=frozenset({"p"}),
        record_reads=record_reads,
    )


PLAIN_DOCS = condition_docs(2, NAMES)
VIEW_DOCS = condition_docs(2, PROFILE_KEYS)


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=PLAIN_DOCS, data=st.dictionaries(st.sampled_from(NAMES), values, min_size=2, max_size=3))
def test_generated_conditions_answer_like_the_closures(doc: dict[str, Any], data: dict[str, Any]) -> None:
    try:
        reference = compile_closures(doc)
    except ConditionError as refused:  # the same refusal, naming the same part
        with pytest.raises(ConditionError) as raised:
            compile_condition(doc)
        assert (raised.value.path, raised.value.reason) == (refused.path, refused.reason)
        return
    generated = compile_condition(doc)
    source, reference_source = DictSource(data), DictSource(data)
    assert generated(source) is reference(reference_source)
    assert source.reads == reference_source.reads


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=VIEW_DOCS,
    profile=st.dictionaries(st.sampled_from(NAMES), values, min_size=2, max_size=3),
    campaign=st.none() | st.sampled_from(["a", "ab", ""]),
)
def test_direct_reads_of_a_view_answer_like_the_closures(
    doc: dict[str, Any], profile: dict[str, Any], campaign: Any
) -> None:
    try:
        reference = compile_closures(doc)
    except ConditionError:
        return  # refusals: test_generated_conditions_answer_like_the_closures
    generated = compile_condition(doc)
    expected = reference(_view(profile, campaign, record_reads=True))
    assert generated(_view(profile, campaign, record_reads=False)) is expected  # direct reads
    assert generated(_view(profile, campaign, record_reads=True)) is expected  # through get()


# --- every inlined operator against every kind of value, exhaustively -------------------------------------


class Sub(str):
    pass


ATTRIBUTE_VALUES: list[Any] = [
    None,  # MISSING: the attribute is left out
    True,
    False,
    0,
    1,
    1.0,
    2.5,
    -3,
    "",
    "a",
    "ab",
    "b",
    "1",
    "2.5",
    "x1",
    Sub("a"),
    [],
    ["a", "b"],
    ["a", 1],
    [True],
    [0],
    [None],
    [{"a": 1}],
    ("a", "x"),
    {"a": 1},
]
OPERANDS: dict[str, list[Any]] = {
    "$eq": [None, True, False, 0, 1, 2.5, "", "a", "1", ["a", "b"], {"a": 1}],
    "$ne": [None, True, 1, "a", ["a", "b"]],
    "$in": [["a", "b"], ["1", 1], [True], [0, None], [2.5, "x1"], [False, "a"]],
    "$nin": [["a", "b"], [1], [None], [True, "ab"]],
    "$gt": [0, 1, 2.5, "", "a", "1", "2.5", -3],
    "$gte": [0, 1, "a", "1"],
    "$lt": [0, 1, 2.5, "b", "2"],
    "$lte": [1, "a", "2.5"],
    "$exists": [True, False],
    "$regex": ["^a", "b$", "1", "^$", "."],
    "$not": [{"$regex": "^a"}, "a", {"$in": ["a", 1]}, {"$gt": 0}],
    "$elemMatch": [{"$regex": "^a"}, {"$gt": 0}, {"$in": ["b", True]}, {"a": 1}, {"$not": {"$eq": "a"}}],
    "$size": [0, 2, {"$gt": 1}],
    "$all": [["a"], ["a", {"$regex": "b"}], [1]],
    "$type": ["string", "number", "array", "null"],
}


@pytest.mark.parametrize("op", list(OPERANDS))
def test_every_inlined_operator_answers_like_its_closure(op: str) -> None:
    for operand in OPERANDS[op]:
        doc = {"profile.a": {op: operand}}
        generated, reference = compile_condition(doc), compile_closures(doc)
        for value in ATTRIBUTE_VALUES:
            profile = {} if value is None else {"a": value}
            expected = reference(DictSource({"profile": profile}))
            assert generated(DictSource({"profile": profile})) is expected, (doc, value)
            assert generated(_view(profile, None, record_reads=False)) is expected, (doc, value)
