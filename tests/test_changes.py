"""Bundles as records and delta files (sync/changes.py) over real synthetic bundles and a real store."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from edgewise.core.decisions import Context, DecideRequest, PlacementRequest
from edgewise.core.pipeline import Pipeline
from edgewise.core.records import decode_array, decode_item, decode_profile
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import REPLICATED, Store
from edgewise.core.version_state import build_state
from edgewise.offline.synth import synth_bundle
from edgewise.sync.bundle import Bundle, BundleError, load_bundle
from edgewise.sync.changes import (
    MANIFEST_KEY,
    NEIGHBOR_SCORES,
    NEIGHBORS,
    StateReader,
    bundle_records,
    parse_delta,
    swap_remove_neighbors,
)
from edgewise.sync.control_store import RecordChange
from edgewise.sync.snapshot import apply_bundle

CONSENT = frozenset({"personalization"})
NEW_ITEM: dict[str, Any] = {"id": "new-1", "category": "sports/running", "price": 10.0, "regions": ["*"]}


class DictState:
    """A StateReader over plain dicts, changed by applying RecordChanges."""

    def __init__(self, records: Iterable[RecordChange]) -> None:
        self.data: dict[str, dict[str, bytes]] = {ns: {} for ns in REPLICATED}
        self.apply(records)

    def get(self, namespace: str, key: str) -> bytes | None:
        return self.data[namespace].get(key)

    def items(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        yield from sorted(self.data[namespace].items())

    def apply(self, changes: Iterable[RecordChange]) -> None:
        for change in changes:
            if change.value is None:
                del self.data[change.namespace][change.key]
            else:
                self.data[change.namespace][change.key] = change.value

    def copy(self) -> DictState:
        out = DictState(())
        out.data = {ns: dict(records) for ns, records in self.data.items()}
        return out

    # decoded views for assertions
    def row_ids(self) -> list[str]:
        records = sorted((decode_item(k, v) for k, v in self.items("items")), key=lambda r: r.row)
        assert [r.row for r in records] == list(range(len(records)))
        return [r.id for r in records]

    def array(self, name: str) -> NDArray[Any]:
        return np.array(decode_array(self.data["models"][name]))


def _state_reader(state: DictState) -> StateReader:
    return state  # DictState satisfies the protocol (checked by mypy)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    # 60 items with 50 neighbors each: deletes hit most neighbor lists
    path = synth_bundle(tmp_path_factory.mktemp("changes") / "b", users=40, items=60, seed=5, dim=8)
    return load_bundle(path)


@pytest.fixture(scope="module")
def base_records(bundle: Bundle) -> list[RecordChange]:
    return list(bundle_records(bundle))


@pytest.fixture
def state(base_records: list[RecordChange]) -> DictState:
    return DictState(base_records)


def lines(*docs: dict[str, Any]) -> list[str]:
    return [json.dumps(doc) + "\n" for doc in docs]


def apply_delta(state: DictState, *docs: dict[str, Any]) -> list[RecordChange]:
    changes = parse_delta(lines(*docs), _state_reader(state))
    for change in changes:  # only records whose bytes change
        assert change.value != state.get(change.namespace, change.key), change.key
    state.apply(changes)
    return changes


def keys(changes: Iterable[RecordChange]) -> set[tuple[str, str]]:
    return {(c.namespace, c.key) for c in changes}


def load_store(state: DictState, path: Path, version: int = 2) -> Store:
    store = Store(path, map_size=1 << 28)
    manifest = msgpack.unpackb(state.data["rules"][MANIFEST_KEY], raw=False)
    store.apply_replicated(
        version,
        [(ns, k.encode(), v) for ns in REPLICATED for k, v in state.items(ns)],
        snapshot=True,
        info=SnapshotInfo(version=version, daily_counts_end_ms=manifest["daily_counts_end_ms"]),
    )
    return store


def decide_ids(store: Store, request: DecideRequest) -> list[str]:
    with store.read() as view:
        out = Pipeline().decide(view, request)
    return [item.id for item in out.placements[0].items]


def check_invariants(state: DictState) -> None:
    n = len(state.row_ids())
    for name in state.data["models"]:
        assert state.array(name).shape[0] == n, name
    nb, sc = state.array(NEIGHBORS), state.array(NEIGHBOR_SCORES)
    assert ((nb >= -1) & (nb < n)).all()
    assert not (nb == np.arange(n)[:, None]).any()
    pad = nb == -1
    assert not (pad[:, :-1] & ~pad[:, 1:]).any(), "padding only at the end of a row"
    assert (sc[pad] == 0).all()
    for row in nb:
        real = row[row >= 0]
        assert len(set(real.tolist())) == len(real)


# --------------------------------------------------------------------------------------------------
# bundle_records


def test_bundle_records_decode_and_are_stable(bundle: Bundle, base_records: list[RecordChange]) -> None:
    assert [(r.namespace, r.key, r.value) for r in bundle_records(bundle)] == [
        (r.namespace, r.key, r.value) for r in base_records
    ]
    assert len(keys(base_records)) == len(base_records)
    state = DictState(base_records)
    assert set(state.data["profiles"]) == {p.id for p in bundle.profiles}
    for key, value in state.items("profiles"):
        profile = decode_profile(key, value)
        assert profile.version == 0 and profile.embedding is not None
        assert len(profile.embedding) == 4 * bundle.dim
    items = [decode_item(k, v) for k, v in state.items("items")]
    assert all(r.version == 0 for r in items)
    assert state.row_ids() == [item.id for item in bundle.items]
    models = set(state.data["models"])
    assert {"item_embeddings", "item_popularity", NEIGHBORS, NEIGHBOR_SCORES, "item_daily_counts"} <= models
    assert any(name.startswith("item_popularity@segment:") for name in models)
    np.testing.assert_array_equal(state.array("item_embeddings"), bundle.item_embeddings)
    rules = {k: msgpack.unpackb(v, raw=False) for k, v in state.items("rules")}
    assert rules["rules"] == bundle.rules_doc and rules["schema"] == bundle.schema
    assert rules[MANIFEST_KEY] == {
        "daily_counts_end_ms": bundle.daily_counts_end_ms,
        "created_at": bundle.manifest["created_at"],
        "generator": bundle.manifest["generator"],
        "dim": bundle.dim,
        "bundle_version": bundle.version,
    }
    assert bundle.daily_counts_end_ms > 0


def test_bundle_records_match_apply_bundle_except_version(
    bundle: Bundle, state: DictState, tmp_path: Path
) -> None:
    with (
        Store(tmp_path / "applied", map_size=1 << 28) as applied,
        load_store(state, tmp_path / "ours") as ours,
    ):
        apply_bundle(applied, bundle)
        with applied.read() as a, ours.read() as b:
            assert {r.id: r.row for r in a.items()} == {r.id: r.row for r in b.items()}
            for item_id in state.data["items"]:
                x, y = a.item(item_id), b.item(item_id)
                assert x is not None and y is not None and x.version == bundle.version and y.version == 0
                assert (x.row, x.category, x.price, x.regions, x.flags) == (
                    y.row,
                    y.category,
                    y.price,
                    y.regions,
                    y.flags,
                )
            for profile_id in state.data["profiles"]:
                p, q = a.profile(profile_id), b.profile(profile_id)
                assert p is not None and q is not None
                assert (p.attributes, p.consent, p.embedding) == (q.attributes, q.consent, q.embedding)
            assert a.model_names() == b.model_names()
            for name in a.model_names():
                np.testing.assert_array_equal(a.array(name), b.array(name))
            assert a.rules_doc() == b.rules_doc() and a.schema_doc() == b.schema_doc()
            sa, sb = build_state(a), build_state(b)
            assert sa.item_ids == sb.item_ids and sa.daily_counts_end_ms == sb.daily_counts_end_ms


# --------------------------------------------------------------------------------------------------
# op forms


def test_profile_upsert_new_existing_and_delete(bundle: Bundle, state: DictState) -> None:
    existing = bundle.profiles[0]
    old = decode_profile(existing.id, state.data["profiles"][existing.id])
    emb = [0.5] * bundle.dim
    changes = apply_delta(
        state,
        {"op": "upsert", "profile": {"id": "u-new", "attributes": {"country": "DE"}, "consent": {}}},
        {"op": "upsert", "profile": {"id": "u-emb", "consent": {"personalization": 1}}, "embedding": emb},
        {"op": "upsert", "profile": {"id": existing.id, "attributes": {"device": "tablet"}}},
        {"op": "delete", "profile": bundle.profiles[1].id},
    )
    assert keys(changes) == {
        ("profiles", "u-new"),
        ("profiles", "u-emb"),
        ("profiles", existing.id),
        ("profiles", bundle.profiles[1].id),
    }
    new = decode_profile("u-new", state.data["profiles"]["u-new"])
    assert new.attributes == {"country": "DE"} and new.embedding is None and new.version == 0
    with_emb = decode_profile("u-emb", state.data["profiles"]["u-emb"])
    assert with_emb.embedding == np.asarray(emb, dtype="<f4").tobytes()
    updated = decode_profile(existing.id, state.data["profiles"][existing.id])
    assert updated.attributes == {"device": "tablet"} and updated.consent == {}
    assert updated.embedding == old.embedding  # no embedding given: kept
    assert bundle.profiles[1].id not in state.data["profiles"]


def test_unchanged_upserts_make_no_changes(bundle: Bundle, state: DictState) -> None:
    item = bundle.items[3]
    doc = {
        "id": item.id,
        "category": item.category,
        "tags": list(item.tags),
        "price": item.price,
        "regions": list(item.regions),
        "launch_date": item.launch_date,
        "flags": item.flags,
    }
    profile = bundle.profiles[2]
    same_profile = {"id": profile.id, "attributes": profile.attributes, "consent": profile.consent}
    assert (
        parse_delta(
            lines(
                {"op": "upsert", "item": doc},
                {"op": "upsert", "profile": same_profile},
                {"op": "upsert", "rules": bundle.rules_doc},
            ),
            state,
        )
        == []
    )
    assert parse_delta([], state) == []


def test_item_upsert_new_appends_a_row_everywhere(bundle: Bundle, state: DictState) -> None:
    n = len(bundle.items)
    before = {name: state.array(name) for name in state.data["models"]}
    emb = list(np.linspace(-1, 1, bundle.dim))
    changes = apply_delta(state, {"op": "upsert", "item": NEW_ITEM, "embedding": emb, "popularity": 7.5})
    assert keys(changes) == {("items", "new-1")} | {("models", name) for name in before}
    assert state.row_ids()[-1] == "new-1" and len(state.row_ids()) == n + 1
    for name, old in before.items():
        new = state.array(name)
        np.testing.assert_array_equal(new[:n], old)
        if name == "item_embeddings":
            np.testing.assert_allclose(new[n], emb, rtol=1e-6)
        elif name == "item_popularity":
            assert new[n] == 7.5
        elif name == NEIGHBORS:
            assert (new[n] == -1).all()
        else:
            assert (new[n] == 0).all(), name
    check_invariants(state)


def test_item_upsert_existing_keeps_its_row(bundle: Bundle, state: DictState) -> None:
    item = bundle.items[5]
    emb = [0.25] * bundle.dim
    doc = {"id": item.id, "category": "home/decor", "price": 1.0, "regions": ["DE"], "tags": ["x"]}
    changes = apply_delta(state, {"op": "upsert", "item": doc, "embedding": emb})
    assert keys(changes) == {("items", item.id), ("models", "item_embeddings")}
    record = decode_item(item.id, state.data["items"][item.id])
    assert (record.row, record.category, record.regions, record.tags) == (5, "home/decor", ("DE",), ("x",))
    assert (state.array("item_embeddings")[5] == 0.25).all()
    np.testing.assert_array_equal(state.array("item_popularity"), bundle.item_popularity)


def test_item_delete_swap_removes(bundle: Bundle, state: DictState) -> None:
    n = len(bundle.items)
    victim, last = bundle.items[7].id, bundle.items[-1].id
    nb_before = state.array(NEIGHBORS)
    changes = apply_delta(state, {"op": "delete", "item": victim})
    assert ("items", victim) in keys(changes) and ("items", last) in keys(changes)
    assert next(c for c in changes if c.key == victim).value is None
    assert state.row_ids()[7] == last and len(state.row_ids()) == n - 1
    np.testing.assert_array_equal(state.array("item_embeddings")[7], bundle.item_embeddings[-1])
    np.testing.assert_array_equal(state.array("item_popularity")[:7], bundle.item_popularity[:7])
    nb = state.array(NEIGHBORS)
    assert not (nb == n - 1).any()
    # the moved item's own list: what it had, minus the victim
    had = [r for r in nb_before[n - 1].tolist() if r not in (-1, 7)]
    assert [r for r in nb[7].tolist() if r != -1] == had
    check_invariants(state)


def test_delete_the_last_item_and_add_then_delete_compose(bundle: Bundle, state: DictState) -> None:
    assert (
        parse_delta(lines({"op": "upsert", "item": NEW_ITEM}, {"op": "delete", "item": "new-1"}), state) == []
    )
    last = bundle.items[-1].id
    changes = apply_delta(state, {"op": "delete", "item": last})
    assert ("items", last) in keys(changes)
    assert len([c for c in changes if c.namespace == "items"]) == 1  # no other row moved
    check_invariants(state)


def test_rules_upsert_with_a_changed_campaign(bundle: Bundle, state: DictState, tmp_path: Path) -> None:
    rules = copy.deepcopy(bundle.rules_doc)
    rules["placements"]["hero_banner"]["campaigns"] = []
    rules["placements"]["hero_banner"]["default_content"] = "hero_spring_sale"
    changes = apply_delta(state, {"op": "upsert", "rules": rules})
    assert keys(changes) == {("rules", "rules")}
    assert msgpack.unpackb(state.data["rules"]["rules"], raw=False) == rules
    with load_store(state, tmp_path / "s") as store, store.read() as view:
        out = Pipeline().decide(view, DecideRequest(placements=(PlacementRequest("hero_banner"),)))
    assert out.placements[0].content_id == "hero_spring_sale"


# --------------------------------------------------------------------------------------------------
# validation


GOOD = {"op": "upsert", "item": NEW_ITEM}


def _bad_cases(bundle: Bundle) -> list[tuple[str, str | None, str]]:
    """(line, field, part of the reason) of refused lines."""
    dim = bundle.dim
    item = json.dumps(NEW_ITEM)
    return [
        ("{not json", None, "invalid JSON"),
        ("[1, 2]", None, "must be a JSON object"),
        ("", None, "empty line"),
        (json.dumps({"item": NEW_ITEM}), "op", "missing"),
        (json.dumps({"op": "merge", "item": NEW_ITEM}), "op", "unknown op"),
        (json.dumps({"op": "upsert"}), None, "one of profile, item, rules"),
        (json.dumps({"op": "upsert", "item": NEW_ITEM, "profile": {"id": "u"}}), None, "together"),
        (json.dumps({**GOOD, "colour": "red"}), "colour", "unknown field"),
        (json.dumps({"op": "delete", "item": "i1", "embedding": [1]}), "embedding", "unknown field"),
        (json.dumps({"op": "upsert", "item": {**NEW_ITEM, "id": "bad id"}}), "item.id", "characters"),
        (json.dumps({"op": "upsert", "item": {**NEW_ITEM, "price": -1}}), "item.price", ">= 0"),
        (json.dumps({"op": "upsert", "item": {**NEW_ITEM, "regions": ["de"]}}), "item.regions", "ISO"),
        (json.dumps({"op": "upsert", "item": {**NEW_ITEM, "size": 3}}), "item.size", "unknown field"),
        ('{"op": "upsert", "item": ' + item + ', "embedding": [1.0]}', "embedding", f"must hold {dim}"),
        (
            '{"op": "upsert", "item": ' + item + ', "embedding": [NaN' + ", 0" * (dim - 1) + "]}",
            "embedding",
            "NaN in vector",
        ),
        (json.dumps({**GOOD, "embedding": [True] * dim}), "embedding", "list of numbers"),
        (json.dumps({**GOOD, "embedding": [1e300] * dim}), "embedding", "float32"),
        (json.dumps({**GOOD, "popularity": -2}), "popularity", ">= 0"),
        ('{"op": "upsert", "item": ' + item + ', "popularity": Infinity}', "popularity", "finite"),
        (json.dumps({"op": "delete", "item": "no-such"}), "item", "no item"),
        (json.dumps({"op": "delete", "item": 7}), "item", "must be a string"),
        (json.dumps({"op": "delete", "profile": "no-such"}), "profile", "no profile"),
        (json.dumps({"op": "upsert", "profile": "u1"}), "profile", "must be an object"),
        (
            json.dumps({"op": "upsert", "profile": {"id": "u9", "attributes": {"email": "a@b.c"}}}),
            "profile.attributes.email",
            "PII",
        ),
        (
            json.dumps({"op": "upsert", "profile": {"id": "u9", "attributes": {"shoe": 42}}}),
            "profile.attributes.shoe",
            "undeclared",
        ),
        (
            json.dumps({"op": "upsert", "profile": {"id": "u9", "attributes": {"orders": 1.5}}}),
            "profile.attributes.orders",
            "integer",
        ),
        (
            json.dumps({"op": "upsert", "profile": {"id": "u9"}, "embedding": [0.0] * (dim + 1)}),
            "embedding",
            f"must hold {dim}",
        ),
        (json.dumps({"op": "delete", "rules": {}}), "op", "cannot be deleted"),
        (json.dumps({"op": "upsert", "rules": []}), "rules", "JSON object"),
        (
            json.dumps({"op": "upsert", "rules": {"placements": {"p": {"kind": "nope"}}}}),
            "rules.placements.p.kind",
            "",
        ),
    ]


def test_validation_failures_name_line_and_field(bundle: Bundle, state: DictState) -> None:
    for text, field, reason in _bad_cases(bundle):
        with pytest.raises(BundleError) as info:
            parse_delta([json.dumps(GOOD), text], state, file="d.jsonl")
        err = info.value
        assert (err.file, err.record) == ("d.jsonl", "line 2"), text
        if field == "rules.placements.p.kind":
            assert err.field is not None and err.field.startswith("rules.placements"), (text, err)
        else:
            assert err.field == field, (text, str(err))
        assert reason in err.reason, (text, str(err))
        assert str(err).startswith("bundle refused: d.jsonl line 2")


def test_rules_need_every_segment_with_its_own_popularity(bundle: Bundle, state: DictState) -> None:
    assert any("@segment:" in name for name in state.data["models"])
    assert parse_delta(lines({"op": "upsert", "rules": bundle.rules_doc}), state) == []
    state.data["models"]["item_popularity@segment:ghost"] = state.data["models"]["item_popularity"]
    with pytest.raises(BundleError) as info:
        parse_delta(lines({"op": "upsert", "rules": bundle.rules_doc}), state)
    assert info.value.field == "rules.segments" and '"ghost" has its own popularity' in info.value.reason


def test_ops_validate_against_the_lines_before(bundle: Bundle, state: DictState) -> None:
    victim = bundle.items[0].id
    with pytest.raises(BundleError) as info:
        parse_delta(lines({"op": "delete", "item": victim}, GOOD, {"op": "delete", "item": victim}), state)
    assert info.value.record == "line 3" and info.value.field == "item"
    snapshot = state.copy()
    with pytest.raises(BundleError):
        parse_delta(lines(GOOD, {"op": "frobnicate"}), state)
    assert snapshot.data == state.data  # nothing changed, nothing returned


# --------------------------------------------------------------------------------------------------
# edge invariants through a real store and the pipeline


def test_item_sequences_keep_the_edge_working(bundle: Bundle, state: DictState, tmp_path: Path) -> None:
    popular = [bundle.items[int(r)].id for r in np.argsort(-bundle.item_popularity)[:5]]
    ops: list[dict[str, Any]] = [{"op": "delete", "item": item_id} for item_id in popular[:3]]
    ops += [
        {"op": "upsert", "item": NEW_ITEM, "popularity": 1e6},
        {"op": "upsert", "item": {**NEW_ITEM, "id": "new-2"}, "embedding": [1.0] * bundle.dim},
        {"op": "delete", "item": "new-2"},
        {"op": "upsert", "item": {**NEW_ITEM, "id": "new-3", "regions": ["FR"]}, "popularity": 2e6},
        {"op": "delete", "item": popular[3]},
        {
            "op": "upsert",
            "profile": {"id": "u-fresh", "consent": {"personalization": 1}},
            "embedding": [0.1] * bundle.dim,
        },
    ]
    apply_delta(state, *ops)
    check_invariants(state)
    deleted = {*popular[:4], "new-2"}
    assert not deleted & set(state.row_ids())
    with load_store(state, tmp_path / "s") as store:
        with store.read() as view:
            vs = build_state(view)
            assert vs.n_items == len(bundle.items) - 4 + 2
            assert vs.dim == bundle.dim and vs.daily_counts_end_ms == bundle.daily_counts_end_ms
            new3 = vs.rows["new-3"]
            assert vs.availability("FR")[new3] and not vs.availability("DE")[new3]
        anonymous = decide_ids(store, DecideRequest(placements=(PlacementRequest("home", 50),)))
        assert anonymous[0] == "new-1" and "new-3" not in anonymous  # new-3 is sold in FR only
        in_fr = decide_ids(
            store, DecideRequest(context=Context(country="FR"), placements=(PlacementRequest("home", 50),))
        )
        personal = decide_ids(
            store,
            DecideRequest(user_id="u-fresh", consent=CONSENT, placements=(PlacementRequest("home", 50),)),
        )
        for out in (anonymous, in_fr, personal):
            assert not deleted & set(out)
        assert personal
        # "similar" reads the remapped neighbor lists: every seed's answer comes from its own list
        row_ids = state.row_ids()
        nb = state.array(NEIGHBORS)
        everywhere = {k for k, v in state.items("items") if "*" in decode_item(k, v).regions}
        for row, seed in enumerate(row_ids):
            similar = decide_ids(
                store, DecideRequest(placements=(PlacementRequest("pdp_similar", 5, seed_item_ids=(seed,)),))
            )
            listed = {row_ids[r] for r in nb[row] if r >= 0} & everywhere
            first = similar[: min(5, len(listed))]  # the rest fills up by embedding
            assert set(first) <= listed and not deleted & set(similar), seed


# --------------------------------------------------------------------------------------------------
# properties


def _reference_after(bundle: Bundle, ops: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Neighbor lists by item id after the ops, done the slow way: ids, not rows."""
    ids = [item.id for item in bundle.items]
    assert bundle.item_neighbors is not None
    lists = {ids[i]: [ids[r] for r in row if r >= 0] for i, row in enumerate(bundle.item_neighbors.tolist())}
    for op, item_id in ops:
        if op == "delete":
            del lists[item_id]
            lists = {k: [x for x in v if x != item_id] for k, v in lists.items()}
        elif item_id not in lists:
            lists[item_id] = []
    return lists


@st.composite
def item_ops(draw: st.DrawFn, ids: list[str]) -> list[tuple[str, str]]:
    present = list(ids)
    fresh = 0
    ops: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["delete", "delete", "add", "update"]) if present else st.just("add"))
        if kind == "add":
            fresh += 1
            item_id = f"fresh-{fresh}"
            present.append(item_id)
            ops.append(("upsert", item_id))
        else:
            item_id = draw(st.sampled_from(present))
            if kind == "delete":
                present.remove(item_id)
            ops.append(("delete" if kind == "delete" else "upsert", item_id))
    return ops


@settings(max_examples=examples(40), deadline=None)
@given(data=st.data())
def test_item_ops_match_a_slow_reference(
    bundle: Bundle, base_records: list[RecordChange], data: st.DataObject
) -> None:
    ops = data.draw(item_ops([item.id for item in bundle.items]))
    state = DictState(base_records)
    docs: list[dict[str, Any]] = []
    for op, item_id in ops:
        if op == "delete":
            docs.append({"op": "delete", "item": item_id})
        else:
            given_popularity = float(sum(map(ord, item_id)))
            docs.append({"op": "upsert", "item": {**NEW_ITEM, "id": item_id}, "popularity": given_popularity})
    apply_delta(state, *docs)
    check_invariants(state)
    row_ids = state.row_ids()
    want = _reference_after(bundle, ops)
    assert set(row_ids) == set(want)
    nb, sc = state.array(NEIGHBORS), state.array(NEIGHBOR_SCORES)
    old_nb, old_sc = bundle.item_neighbors, bundle.item_neighbor_scores
    assert old_nb is not None and old_sc is not None and nb.shape[1] == old_nb.shape[1]
    original = {item.id: row for row, item in enumerate(bundle.items)}
    popularity, embeddings = state.array("item_popularity"), state.array("item_embeddings")
    for row, item_id in enumerate(row_ids):
        assert [row_ids[r] for r in nb[row] if r >= 0] == want[item_id]
        upserted = ("upsert", item_id) in ops
        if item_id in original:
            old = original[item_id]
            old_scores = {
                bundle.items[r].id: s for r, s in zip(old_nb[old], old_sc[old], strict=True) if r >= 0
            }
            real = nb[row] >= 0
            assert [old_scores[row_ids[r]] for r in nb[row][real]] == sc[row][real].tolist()
            np.testing.assert_array_equal(embeddings[row], bundle.item_embeddings[old])
            expected = float(sum(map(ord, item_id))) if upserted else bundle.item_popularity[old]
            assert popularity[row] == np.float32(expected)
        else:
            assert (nb[row] == -1).all() and (embeddings[row] == 0).all()


def _slow_swap_remove(
    nb: list[list[int]], sc: list[list[float]], row: int
) -> tuple[list[list[int]], list[list[float]]]:
    n, k = len(nb), len(nb[0])
    last = n - 1
    order = list(range(n))
    order[row] = last
    order.pop()
    out_nb, out_sc = [], []
    for src in order:
        pairs = [(r, s) for r, s in zip(nb[src], sc[src], strict=True) if r not in (-1, row)]
        pairs = [(row if r == last else r, s) for r, s in pairs]
        pairs += [(-1, 0.0)] * (k - len(pairs))
        out_nb.append([r for r, _ in pairs])
        out_sc.append([s for _, s in pairs])
    return out_nb, out_sc


@st.composite
def neighbor_matrix(draw: st.DrawFn) -> tuple[NDArray[np.int32], NDArray[np.float32], int]:
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 6))
    nb = np.full((n, k), -1, dtype=np.int32)
    sc = np.zeros((n, k), dtype=np.float32)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        chosen = (
            draw(st.lists(st.sampled_from(others), unique=True, max_size=min(k, len(others))))
            if others
            else []
        )
        nb[i, : len(chosen)] = chosen
        sc[i, : len(chosen)] = draw(
            st.lists(st.floats(0.125, 1, width=32), min_size=len(chosen), max_size=len(chosen))
        )
    return nb, sc, draw(st.integers(0, n - 1))


@settings(max_examples=examples(200), deadline=None)
@given(case=neighbor_matrix())
def test_swap_remove_neighbors_matches_a_slow_reference(
    case: tuple[NDArray[np.int32], NDArray[np.float32], int],
) -> None:
    nb, sc, row = case
    got_nb, got_sc = swap_remove_neighbors(nb, sc, row)
    want_nb, want_sc = _slow_swap_remove(nb.tolist(), sc.tolist(), row)
    assert got_nb.dtype == np.int32 and got_sc.dtype == np.float32
    assert got_nb.shape == (nb.shape[0] - 1, nb.shape[1])
    assert got_nb.tolist() == want_nb and got_sc.tolist() == want_sc
