"""FeatureView: consent per profile field, lazy construction, `inline_read` (the direct reads compiled
conditions use) against `get`, and compiled conditions over a view: the fast body (direct reads) and the
generic one (`get`, used when reads are recorded) must agree with each other and with a DictSource."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from feature_source import DictSource

from edgewise.core.condition_codegen import compile_condition
from edgewise.core.decisions import CONTEXT_FIELDS, Context
from edgewise.core.feature_view import DENIED, FeatureView, inline_read
from edgewise.core.features import MISSING
from edgewise.core.records import Activity, ProfileRecord
from edgewise.core.version_state import VersionState

CASES: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "growthbook_evalcondition_cases.json").read_text()
)

PURPOSES = {
    "country": "personalization",
    "interests": "personalization",
    "app_user": "personalization",
    "address": "personalization",
    "ltv": "analytics",
    "orders": "analytics",
}
ATTRIBUTES = {
    "country": "DE",
    "interests": ["fashion", "sports/running"],
    "app_user": True,
    "address": {"city": "Berlin", "zip": None},
    "ltv": 420.5,
    "orders": 7,
    "email": "a@example.com",  # stored, but no purpose is declared for it: never readable
}
CONTEXT = Context(
    channel="web", device="mobile", country="AT", language="", attributes={"campaign": "spring", "n": "4"}
)


class _State:
    """The part of a VersionState a FeatureView reads."""

    def __init__(self, purposes: Mapping[str, str]) -> None:
        self.field_purposes = purposes
        self.rows: dict[str, int] = {"i1": 0, "i2": 1, "i3": 2}
        self.categories = ("shoes/running", "shoes/trail", "socks")
        self.flags: tuple[Mapping[str, Any], ...] = ({"replenish_days": 30}, {}, {"replenish_days": True})
        self.replenish_days = {"i1": 30.0}  # build_state keeps the valid flags only


class _EveryFieldDeclared(Mapping[str, str]):
    """Field purposes where every attribute is declared for purpose "p"."""

    def __getitem__(self, key: str) -> str:
        return "p"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def view(
    *,
    attributes: Mapping[str, Any] | None = ATTRIBUTES,
    consent: Mapping[str, int] | None = None,
    granted: frozenset[str] = frozenset({"personalization", "analytics"}),
    context: Context = CONTEXT,
    purposes: Mapping[str, str] = PURPOSES,
    record_reads: bool = False,
    user_id: str = "u1",
    activity: Activity | None = None,
) -> FeatureView:
    profile = None
    if attributes is not None:
        stored = {"personalization": 1, "analytics": 1} if consent is None else consent
        profile = ProfileRecord("u1", 1, attributes, stored, None)
    return FeatureView(
        state=cast(VersionState, _State(purposes)),
        context=context,
        now_ms=1,
        user_id=user_id,
        profile=profile,
        activity=activity,
        granted=granted,
        record_reads=record_reads,
    )


# --- consent -------------------------------------------------------------------------------------------


def test_a_profile_field_needs_its_purpose_granted_by_the_request_and_by_the_profile() -> None:
    full = view()
    assert full.get(("profile", "ltv")) == 420.5 and full.readable("ltv")
    request_only = view(granted=frozenset({"personalization"}))
    assert request_only.get(("profile", "ltv")) is MISSING and not request_only.readable("ltv")
    assert request_only.get(("profile", "country")) == "DE"
    stored_only = view(consent={"personalization": 1})
    assert stored_only.get(("profile", "ltv")) is MISSING and not stored_only.readable("ltv")
    assert stored_only.get(("profile", "interests")) == ["fashion", "sports/running"]
    nothing = view(granted=frozenset())
    assert all(nothing.get(("profile", name)) is MISSING for name in ATTRIBUTES)


def test_undeclared_fields_are_never_readable() -> None:
    assert view().get(("profile", "email")) is MISSING
    assert not view().readable("email")


def test_without_a_profile_only_the_request_grant_counts() -> None:
    anonymous = view(attributes=None)
    assert anonymous.get(("profile", "country")) is MISSING
    assert anonymous.get(("user", "known")) is False
    assert anonymous.readable("country") and not anonymous.readable("email")
    assert not view(attributes=None, granted=frozenset({"analytics"})).readable("country")


def test_building_a_view_reads_nothing() -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"read {name} while building the view")

    poison = cast(Any, Untouchable())
    fv = FeatureView(
        state=poison,
        context=poison,
        now_ms=5,
        user_id="u",
        profile=poison,
        activity=None,
        granted=frozenset({"personalization"}),
    )
    assert fv.now_ms == 5 and fv.activity is None and fv.reads is None


def test_explain_records_every_read_including_refused_ones() -> None:
    fv = view(granted=frozenset({"personalization"}), record_reads=True)
    condition = compile_condition({"profile.country": "DE", "profile.ltv": {"$exists": False}})
    assert condition(fv) is True  # ltv is stored, but not readable: MISSING
    assert fv.reads == {"profile.country": "DE", "profile.ltv": DENIED}


def test_item_lookups_use_the_version_state() -> None:
    fv = view()
    assert fv.item_category("i1") == "shoes/running" and fv.item_category("nope") is None
    assert fv.replenish_days("i1") == 30.0
    assert fv.replenish_days("i2") == 0.0 and fv.replenish_days("i3") == 0.0  # known, no valid interval
    assert fv.replenish_days("nope") is None


def test_the_version_state_keeps_valid_replenishment_intervals_only() -> None:
    from edgewise.core.features import replenish_days

    assert replenish_days({"replenish_days": 30}) == 30.0 and replenish_days({"replenish_days": 0.5}) == 0.5
    for bad in (
        {},
        {"replenish_days": True},
        {"replenish_days": 0},
        {"replenish_days": -3},
        {"replenish_days": "7"},
    ):
        assert replenish_days(bad) is None, bad


# --- inline_read: the direct reads of compiled conditions -----------------------------------------------

PATHS = [
    ("profile",),
    ("profile", "country"),
    ("profile", "ltv"),
    ("profile", "email"),
    ("profile", "absent"),
    ("profile", "address"),
    ("profile", "address", "city"),
    ("profile", "address", "zip"),
    ("profile", "interests", "0"),
    *[("context", name) for name in CONTEXT_FIELDS],
    ("context", "attributes"),
    ("context", "attributes", "campaign"),
    ("context", "attributes", "absent"),
    ("context", "attributes", "campaign", "deeper"),
    ("context", "nope"),
    ("context", "country", "x"),
    ("activity", "views"),
    ("activity", "cart"),
    ("activity", "other"),
    ("user", "id"),
    ("user", "known"),
    ("user", "other"),
    ("other", "x"),
    ("country",),
]

VIEWS = {
    "full": lambda: view(),
    "request grants personalization only": lambda: view(granted=frozenset({"personalization"})),
    "profile consents to personalization only": lambda: view(consent={"personalization": 1}),
    "nothing granted": lambda: view(granted=frozenset()),
    "no profile, no user id": lambda: view(attributes=None, user_id=""),
    "empty context": lambda: view(context=Context()),
    "with activity": lambda: view(activity=Activity(views=(("i1", 1), ("i2", 2)), cart=(("i3", 3),))),
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_inline_reads_answer_like_get(name: str) -> None:
    fv = VIEWS[name]()
    inlined = 0
    for path in PATHS:
        namespace: dict[str, Any] = {}

        def const(value: Any, namespace: dict[str, Any] = namespace) -> str:
            key = f"_k{len(namespace)}"
            namespace[key] = value
            return key

        expression = inline_read(path, const)
        if expression is None:
            continue
        inlined += 1
        expected = fv.get(path)
        got = eval(expression, namespace, {"src": fv})  # the expression a compiled condition embeds
        assert got == (None if expected is MISSING else expected), path
        # names from the path are constants, never spelled into the source
        assert "'" not in expression and '"' not in expression, expression
        if path[0] == "profile" or path[1] == "attributes":
            assert path[-1] in namespace.values(), expression
    assert inlined >= 10


# --- compiled conditions over a view --------------------------------------------------------------------

CONDITIONS: list[dict[str, Any]] = [
    {"profile.country": "DE"},
    {"profile.country": {"$in": ["DE", "AT"]}, "context.device": "mobile"},
    {"profile.ltv": {"$gte": 100}},
    {"profile.ltv": {"$exists": False}},
    {"profile.orders": {"$lt": 5}},
    {"profile.email": {"$exists": True}},
    {"profile.address.city": {"$regex": "^Ber"}},
    {"profile.interests": {"$elemMatch": {"$regex": "^sports/"}}},
    {"profile.interests": {"$in": ["beauty", "fashion"]}, "profile.app_user": True},
    {"$or": [{"context.device": "desktop"}, {"profile.app_user": True}], "context.country": {"$nin": ["DE"]}},
    {"$nor": [{"user.known": False}, {"user.id": {"$exists": False}}]},
    {"context.attributes.n": {"$gt": 3}, "context.attributes.campaign": {"$regex": "ing$"}},
    {"context.language": {"$exists": False}, "context.channel": {"$ne": "app"}},
    {"$not": {"profile.interests": {"$size": 2}}},
    {"activity.views": {"$all": ["i1"]}, "activity.cart": {"$elemMatch": {"$eq": "i3"}}},
    {"user.known": True, "profile.address": {"$type": "object"}},
]


def _as_dict_source(fv: FeatureView) -> DictSource:
    """A DictSource holding what `fv.get` answers for the paths CONDITIONS read."""
    data: dict[str, Any] = {}
    for doc in CONDITIONS:
        for key in _keys(doc):
            parts = tuple(key.split("."))
            value = fv.get(parts)
            if value is MISSING:
                continue
            node = data
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
    return DictSource(data)


def _keys(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("$and", "$or", "$nor"):
                for element in value:
                    yield from _keys(element)
            elif key == "$not":
                yield from _keys(value)
            else:
                yield key


@pytest.mark.parametrize("name", list(VIEWS))
def test_compiled_conditions_read_a_view_as_get_does(name: str) -> None:
    for doc in CONDITIONS:
        condition = compile_condition(doc)
        fast = condition(VIEWS[name]())
        recorded = VIEWS[name]()
        recorded.reads = {}  # records reads: the generic body, through get()
        generic = condition(recorded)
        assert fast is generic, doc
        if name != "with activity":  # DictSource has no activity lists for _as_dict_source to copy
            assert condition(_as_dict_source(VIEWS[name]())) is fast, doc


def _under_profile(condition: Any) -> Any:
    """A GrowthBook condition with its attribute paths moved under `profile.`."""
    if not isinstance(condition, dict):
        return condition
    out: dict[str, Any] = {}
    for key, value in condition.items():
        if key in ("$and", "$or", "$nor"):
            out[key] = [_under_profile(c) for c in value]
        elif key == "$not":
            out[key] = _under_profile(value)
        else:
            out[f"profile.{key}"] = value
    return out


@pytest.mark.parametrize(
    "case",
    [c for c in CASES["cases"] if c["expected"] != "compile_error"],
    ids=lambda c: str(c["name"]),
)
def test_growthbook_suite_over_a_view(case: dict[str, Any]) -> None:
    condition = compile_condition(_under_profile(case["condition"]))
    for record_reads in (False, True):  # the direct reads, then get()
        fv = view(
            attributes=case["attributes"],
            consent={"p": 1},
            granted=frozenset({"p"}),
            purposes=_EveryFieldDeclared(),
            record_reads=record_reads,
        )
        assert condition(fv) is case["expected"]


def test_growthbook_suite_over_a_view_without_consent_reads_everything_as_missing() -> None:
    for case in CASES["cases"]:
        if case["expected"] == "compile_error":
            continue
        condition = compile_condition(_under_profile(case["condition"]))
        refused = view(
            attributes=case["attributes"],
            consent={"p": 1},
            granted=frozenset({"other"}),
            purposes=_EveryFieldDeclared(),
        )
        assert condition(refused) is compile_condition(case["condition"])(DictSource({})), case["name"]


def test_dotted_paths_read_into_profile_and_context_arrays() -> None:
    addresses = [{"country": "DE"}, {"country": "FR", "city": "Lyon"}]
    fv = view(
        attributes={"addresses": addresses},
        purposes=_EveryFieldDeclared(),
        granted=frozenset({"p"}),
        consent={"p": 1},
        context=Context(attributes={"list": ["a", "b"]}),  # type: ignore[dict-item]
    )
    assert fv.get(("profile", "addresses", "1", "city")) == "Lyon"
    assert fv.get(("profile", "addresses", "length")) == 2
    assert fv.get(("profile", "addresses", "01", "city")) is MISSING
    assert fv.get(("profile", "addresses", "2", "city")) is MISSING
    assert fv.get(("context", "attributes", "list", "0")) == "a"
    assert compile_condition({"profile.addresses.0.country": "DE"})(fv) is True
