"""Saved groups as stored: one member record per id in the `rules` namespace, the rules document without
the values; deltas that add or remove members (one record per member changed, never the list again);
the worker's version state reading them; refusals that name the group or the member."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import rewrite_manifest
from feature_source import DictSource
from test_changes import DictState, apply_delta, load_store

from edgewise.core.rules import RuleError, compile_rules
from edgewise.core.saved_groups import (
    MEMBER_VALUE,
    SUMMARY_PREFIX,
    GroupCache,
    MemberIndex,
    member_key,
    parse_member_key,
    summarize,
    unpack_summary,
)
from edgewise.core.version_state import build_state
from edgewise.sync.bundle import BundleError, load_bundle
from edgewise.sync.changes import bundle_records

MEMBERS = ["c-1", "c-2", 7, 2.5]


@pytest.fixture(scope="module")
def group_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("groups") / "b"
    shutil.copytree(bundle_dir, out)
    rules = json.loads((out / "rules.json").read_text())
    rules["saved_groups"] = {"crm": {"description": "CRM", "values": MEMBERS}, "empty": {}}
    rules["segments"]["crm_users"] = {"condition": {"user.id": {"$inGroup": "crm"}}}
    (out / "rules.json").write_text(json.dumps(rules))
    rewrite_manifest(out)
    return out


def _state(bundle: Path) -> DictState:
    return DictState(bundle_records(load_bundle(bundle)))


def _members(state: DictState) -> dict[str, set[Any]]:
    out: dict[str, set[Any]] = {}
    keys: dict[str, list[str]] = {}
    for key, value in state.items("rules"):
        parsed = parse_member_key(key)
        if parsed is not None:
            assert value == MEMBER_VALUE
            out.setdefault(parsed[0], set()).add(parsed[1])
            keys.setdefault(parsed[0], []).append(key)
    summaries = {
        key.removeprefix(SUMMARY_PREFIX): unpack_summary(value)
        for key, value in state.items("rules")
        if key.startswith(SUMMARY_PREFIX)
    }
    assert summaries == {gid: summarize(group_keys) for gid, group_keys in keys.items()}  # kept up to date
    return out


def test_a_bundle_stores_one_record_per_member_and_the_rules_without_values(group_bundle: Path) -> None:
    state = _state(group_bundle)
    assert _members(state) == {"crm": {"c-1", "c-2", 7.0, 2.5}}
    assert member_key("crm", 7) == member_key("crm", 7.0) == "group/crm/n7"
    stored = msgpack.unpackb(state.get("rules", "rules"), raw=False)
    assert stored["saved_groups"] == {"crm": {"description": "CRM"}, "empty": {}}


def test_a_delta_adds_and_removes_members_one_record_each(group_bundle: Path) -> None:
    state = _state(group_bundle)
    changes = apply_delta(
        state,
        {"op": "upsert", "saved_group": "crm", "values": ["c-3", "c-1"]},  # c-1 is already a member
        {"op": "delete", "saved_group": "crm", "values": ["c-2", "nobody"]},
        {"op": "upsert", "saved_group": "empty", "values": [1]},
    )
    assert {(c.key, c.value) for c in changes if not c.key.startswith(SUMMARY_PREFIX)} == {
        ("group/crm/sc-3", MEMBER_VALUE),
        ("group/crm/sc-2", None),
        ("group/empty/n1", MEMBER_VALUE),
    }
    assert {c.key for c in changes if c.key.startswith(SUMMARY_PREFIX)} == {"groupsum/crm", "groupsum/empty"}
    assert _members(state) == {"crm": {"c-1", "c-3", 7.0, 2.5}, "empty": {1.0}}


def test_a_rules_upsert_replaces_inline_groups_and_drops_undeclared_ones(group_bundle: Path) -> None:
    state = _state(group_bundle)
    apply_delta(state, {"op": "upsert", "saved_group": "empty", "values": ["x"]})
    rules = json.loads((group_bundle / "rules.json").read_text())
    rules["saved_groups"] = {"crm": {"values": ["c-9"]}}  # "empty" is gone, crm is now just c-9
    apply_delta(state, {"op": "upsert", "rules": rules})
    assert _members(state) == {"crm": {"c-9"}}


@pytest.mark.parametrize(
    ("doc", "field", "reason"),
    [
        ({"op": "upsert", "saved_group": "vip", "values": ["a"]}, "saved_group", "unknown saved group"),
        ({"op": "upsert", "saved_group": "crm", "values": [True]}, "values[0]", "strings or numbers"),
        ({"op": "delete", "saved_group": "crm", "values": []}, "values", "non-empty"),
        ({"op": "upsert", "saved_group": "crm", "values": ["x" * 300]}, "values[0]", "at most 256"),
    ],
)
def test_bad_member_lines_are_refused_naming_the_field(
    group_bundle: Path, doc: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(BundleError) as err:
        apply_delta(_state(group_bundle), doc)
    assert err.value.field == field and reason in err.value.reason


def test_the_worker_reads_the_members_once_per_version(group_bundle: Path, tmp_path: Path) -> None:
    state = _state(group_bundle)
    apply_delta(state, {"op": "upsert", "saved_group": "crm", "values": ["u5"]})
    with load_store(state, tmp_path / "store") as store, store.read() as view:
        assert sorted(map(str, view.saved_group_members("crm"))) == ["2.5", "7.0", "c-1", "c-2", "u5"]
        assert view.saved_group_summaries() == {
            "crm": summarize(member_key("crm", m) for m in [*MEMBERS, "u5"])
        }
        segments = build_state(view).rules.segments
    assert segments.matches("crm_users", DictSource({"user": {"id": "u5"}}))
    assert not segments.matches("crm_users", DictSource({"user": {"id": "u6"}}))
    assert segments.matches("crm_users", DictSource({"user": {"id": 7}}))


def test_an_unknown_group_is_a_compile_error_naming_it(group_bundle: Path) -> None:
    rules = json.loads((group_bundle / "rules.json").read_text())
    rules["segments"]["vip"] = {"condition": {"user.id": {"$notInGroup": "vips"}}}
    with pytest.raises(RuleError) as err:
        compile_rules(rules)
    assert err.value.path == "segments.vip.condition.user.id.$notInGroup"
    assert "unknown saved group 'vips'" in err.value.reason
    with pytest.raises(RuleError, match="do not declare"):
        compile_rules(rules | {"segments": {}}, {"other": ["a"]})


def test_members_match_strictly() -> None:
    group = MemberIndex.build(["1", 2, "x"])
    assert group.contains("1") and group.contains(2) and group.contains(2.0)
    assert not group.contains(1) and not group.contains("2") and not group.contains(True)


def test_a_worker_reads_a_group_again_only_when_its_summary_changed() -> None:
    reads: list[str] = []

    def read(gid: str) -> list[str]:
        reads.append(gid)
        return [f"{gid}-member"]

    cache = GroupCache()
    first = cache.groups({"a": (1, 10), "b": (1, 20)}, read)
    second = cache.groups({"a": (1, 10), "b": (2, 30)}, read)
    assert reads == ["a", "b", "b"]
    assert second["a"] is first["a"] and second["b"] is not first["b"]
    assert cache.groups({}, read) == {}
