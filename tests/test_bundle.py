"""Bundles: reading and validation (edgewise.sync.bundle), writing (edgewise.sync.bundle_write) and the
generator (edgewise.offline.synth).

Every refusal test copies a good synthetic bundle, breaks one thing, re-writes the manifest checksums
where needed (so the check under test, not the checksum, is what refuses) and asserts that the message
names the file, the record and the field.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgewise.offline.synth import synth_bundle
from edgewise.sync.bundle import Bundle, BundleError, bundle_summary, load_bundle
from edgewise.sync.bundle_write import write_bundle

SMALL_USERS = 300
SMALL_ITEMS = 200


# --------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_bundle(tmp_path_factory.mktemp("good") / "b", users=SMALL_USERS, items=SMALL_ITEMS, seed=3)


@pytest.fixture(scope="module")
def good(good_dir: Path) -> Bundle:
    return load_bundle(good_dir)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(synth_bundle(tmp_path_factory.mktemp("large") / "b", users=2000, items=1000, seed=11))


@pytest.fixture
def bad(good_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the good bundle, to break."""
    return Path(shutil.copytree(good_dir, tmp_path / "bad"))


def rewrite_manifest(root: Path) -> None:
    """Recompute size and sha256 of every file the manifest lists (and that still exists)."""
    manifest = json.loads((root / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (root / name).read_bytes()
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry["bytes"] = len(data)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def edit_jsonl(root: Path, name: str, line_no: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply `edit` to the object on 1-based line `line_no` of a JSONL file, then fix the manifest."""
    lines = (root / name).read_text().splitlines()
    record = json.loads(lines[line_no - 1])
    edit(record)
    lines[line_no - 1] = json.dumps(record)
    (root / name).write_text("\n".join(lines) + "\n")
    rewrite_manifest(root)


def edit_json(root: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((root / name).read_text())
    edit(doc)
    (root / name).write_text(json.dumps(doc, indent=2))
    rewrite_manifest(root)


def replace_npy(root: Path, name: str, array: np.ndarray[Any, Any]) -> None:
    np.save(root / name, array)
    rewrite_manifest(root)


def refusal(root: Path) -> BundleError:
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    return info.value


# --------------------------------------------------------------------------------------------------
# the synthetic bundle


def test_synth_bundle_loads_with_expected_shape(good: Bundle) -> None:
    assert good.version == 1
    assert [item.id for item in good.items] == [f"i{n}" for n in range(SMALL_ITEMS)]
    assert [profile.id for profile in good.profiles] == [f"u{n}" for n in range(SMALL_USERS)]
    assert good.dim == 32
    assert good.item_embeddings.shape == (SMALL_ITEMS, 32)
    assert good.item_embeddings.dtype == np.float32 and good.item_embeddings.flags.c_contiguous
    assert good.item_popularity.shape == (SMALL_ITEMS,) and good.item_popularity.dtype == np.float32
    assert good.user_embeddings is not None and good.user_embeddings.shape == (SMALL_USERS, 32)
    np.testing.assert_allclose(np.linalg.norm(good.item_embeddings, axis=1), 1.0, rtol=1e-5)


def test_synth_catalog_is_realistic(large: Bundle) -> None:
    categories = {item.category for item in large.items}
    assert 20 <= len(categories) <= 40
    assert all(len(category.split("/")) == 2 for category in categories)
    assert all(item.price > 0 for item in large.items)
    restricted = np.mean([item.regions != ("*",) for item in large.items])
    assert 0.14 <= restricted <= 0.26
    assert any(item.flags.get("sale") for item in large.items)
    assert any(item.tags for item in large.items)
    # log-normal prices per category: electronics cost more than books on average
    mean_price = {
        top: np.mean([i.price for i in large.items if i.category.startswith(top + "/")])
        for top in ("electronics", "books")
    }
    assert mean_price["electronics"] > 5 * mean_price["books"]


def test_synth_popularity_is_zipf_like(large: Bundle) -> None:
    popularity = np.sort(large.item_popularity)[::-1]
    top_decile = popularity[: len(popularity) // 10].sum() / popularity.sum()
    assert top_decile > 0.5
    assert (popularity >= 0).all()


def test_synth_consent_shares(large: Bundle) -> None:
    without = np.mean(["personalization" not in p.consent for p in large.profiles])
    analytics = np.mean(["analytics" in p.consent for p in large.profiles])
    assert 0.07 <= without <= 0.13
    assert 0.65 <= analytics <= 0.75


def test_synth_profiles_follow_the_schema(large: Bundle) -> None:
    declared = set(large.schema["profile_fields"])
    assert large.schema["profile_fields"]["email"]["pii"] is True
    for profile in large.profiles:
        assert set(profile.attributes) <= declared - {"email"}
        assert 1 <= len(profile.attributes["interests"]) <= 3
    countries = {p.attributes["country"] for p in large.profiles}
    assert {"DE", "FR", "GB", "US"} <= countries


def test_user_embeddings_point_at_their_interests(large: Bundle) -> None:
    assert large.user_embeddings is not None
    categories = np.array([item.category for item in large.items])
    interest_cos: list[float] = []
    random_cos: list[float] = []
    for row, profile in enumerate(large.profiles[:500]):
        mask = np.zeros(len(categories), dtype=bool)
        for interest in profile.attributes["interests"]:
            mask |= (categories == interest) | np.char.startswith(categories, interest + "/")
        if not mask.any():
            continue
        scores = large.item_embeddings @ large.user_embeddings[row]
        interest_cos.append(float(scores[mask].mean()))
        random_cos.append(float(scores.mean()))
    assert len(interest_cos) > 400
    assert np.mean(interest_cos) > np.mean(random_cos) + 0.2


def test_synth_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def files(path: Path) -> dict[str, Any]:
        return dict(json.loads((path / "manifest.json").read_text())["files"])

    first = synth_bundle(tmp_path / "a", users=100, items=50, seed=42)
    second = synth_bundle(tmp_path / "b", users=100, items=50, seed=42)
    other = synth_bundle(tmp_path / "c", users=100, items=50, seed=43)
    assert files(first) == files(second)
    assert files(first)["items.jsonl"] != files(other)["items.jsonl"]


def test_synth_reports_progress(tmp_path: Path) -> None:
    messages: list[str] = []
    synth_bundle(tmp_path / "b", users=50, items=20, seed=1, progress=messages.append)
    assert "profiles 50/50" in messages
    assert any(message.startswith("items") for message in messages)


def test_placements_and_experiment(good: Bundle) -> None:
    placements = good.rules.placements
    assert {"home", "pdp_similar", "hero_banner", "deals", "promo_slot"} <= set(placements)
    assert (placements["home"].kind, placements["home"].default_count) == ("items", 10)
    assert (placements["pdp_similar"].kind, placements["pdp_similar"].default_count) == ("items", 8)
    assert placements["hero_banner"].kind == "content"
    assert placements["hero_banner"].default_content == "hero_default"
    assert [c.experiment_id for c in placements["hero_banner"].campaigns] == ["hero_test", "hero_mv"]
    experiment = good.rules.experiments["hero_test"]
    assert 2 <= len(experiment.variants) <= 3
    assert experiment.variants[-1].bucket_end == 10_000


def test_bundle_summary(good: Bundle) -> None:
    summary = bundle_summary(good)
    json.dumps(summary)  # JSON-ready
    assert summary["items"] == SMALL_ITEMS and summary["profiles"] == SMALL_USERS
    assert summary["dim"] == 32 and summary["version"] == 1
    assert summary["placements"]["home"]["kind"] == "items"
    assert summary["placements"]["hero_banner"] == {
        "kind": "content",
        "campaigns": ["hero_ab", "hero_multivariate"],
    }
    assert set(summary["experiments"]) == {"hero_test", "hero_mv", "home_algo"}
    assert summary["bandits"] == ["promo_bandit"]
    assert "cart_abandoners" in summary["segments"]


# --------------------------------------------------------------------------------------------------
# write_bundle


def test_write_bundle_refuses_a_non_bundle_directory(tmp_path: Path, good: Bundle) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an edgewise bundle"):
        _rewrite(good, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_write_bundle_replaces_an_existing_bundle(tmp_path: Path, good: Bundle) -> None:
    out = tmp_path / "b"
    _rewrite(good, out, version=1, with_users=True)
    _rewrite(good, out, version=2, with_users=False)
    again = load_bundle(out)
    assert again.version == 2
    assert again.user_embeddings is None
    assert not (out / "models" / "user_embeddings.npy").exists()
    assert [item.id for item in again.items] == [item.id for item in good.items]
    np.testing.assert_array_equal(again.item_embeddings, good.item_embeddings)


def test_write_bundle_validates_its_output(tmp_path: Path, good: Bundle) -> None:
    items = [_item_dict(item) for item in good.items]
    items[4]["price"] = -1.0
    with pytest.raises(BundleError) as info:
        write_bundle(
            tmp_path / "b",
            version=1,
            schema=good.schema,
            items=items,
            profiles=[],
            rules=good.rules_doc,
            item_embeddings=good.item_embeddings,
            item_popularity=good.item_popularity,
        )
    assert str(info.value).startswith('bundle refused: items.jsonl line 5 (id "i4"): field "price"')


def _item_dict(item: Any) -> dict[str, Any]:
    return {
        "id": item.id,
        "category": item.category,
        "tags": list(item.tags),
        "price": item.price,
        "regions": list(item.regions),
        "launch_date": item.launch_date,
        "flags": item.flags,
    }


def _rewrite(bundle: Bundle, out: Path, *, version: int = 1, with_users: bool = False) -> Path:
    return write_bundle(
        out,
        version=version,
        schema=bundle.schema,
        items=(_item_dict(item) for item in bundle.items),
        profiles=({"id": p.id, "attributes": p.attributes, "consent": p.consent} for p in bundle.profiles),
        rules=bundle.rules_doc,
        item_embeddings=bundle.item_embeddings,
        item_popularity=bundle.item_popularity,
        user_embeddings=bundle.user_embeddings if with_users else None,
    )


# --------------------------------------------------------------------------------------------------
# refusals: manifest and files


def test_refuses_missing_file(bad: Path) -> None:
    (bad / "models" / "item_popularity.npy").unlink()
    err = refusal(bad)
    assert err.file == "models/item_popularity.npy"
    assert "missing" in err.reason
    assert str(err).startswith(
        "bundle refused: models/item_popularity.npy: listed in manifest.json but missing"
    )


def test_refuses_checksum_mismatch(bad: Path) -> None:
    text = (bad / "schema.json").read_text()
    (bad / "schema.json").write_text(text.replace('"country"', '"countrz"'))  # same size
    err = refusal(bad)
    assert err.file == "schema.json"
    assert "checksum mismatch" in str(err) and "sha256" in str(err)


def test_refuses_size_mismatch(bad: Path) -> None:
    with (bad / "rules.json").open("a") as fh:
        fh.write("\n")
    err = refusal(bad)
    assert err.file == "rules.json"
    assert "size mismatch" in str(err)


def test_refuses_unlisted_file_but_ignores_hidden_files(bad: Path) -> None:
    (bad / ".DS_Store").write_bytes(b"\0")
    load_bundle(bad)
    (bad / "models" / "extra.npy").write_bytes(b"x")
    err = refusal(bad)
    assert err.file == "models/extra.npy"
    assert "not listed in manifest.json" in str(err)


def test_refuses_unsupported_format_version(bad: Path) -> None:
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["format_version"] = 2
    (bad / "manifest.json").write_text(json.dumps(manifest))
    err = refusal(bad)
    assert (err.file, err.field) == ("manifest.json", "format_version")
    assert str(err) == (
        "bundle refused: manifest.json: format_version: unsupported format version 2 (this edgewise reads 1)"
    )


# --------------------------------------------------------------------------------------------------
# refusals: items and profiles


def test_refuses_bad_json_line(bad: Path) -> None:
    lines = (bad / "profiles.jsonl").read_text().splitlines()
    lines[4] = lines[4][:20]
    (bad / "profiles.jsonl").write_text("\n".join(lines) + "\n")
    rewrite_manifest(bad)
    err = refusal(bad)
    assert (err.file, err.record) == ("profiles.jsonl", "line 5")
    assert str(err).startswith("bundle refused: profiles.jsonl line 5: invalid JSON")


def test_refuses_nan_price(bad: Path) -> None:
    edit_jsonl(bad, "items.jsonl", 12, lambda item: item.update(price=float("nan")))
    err = refusal(bad)
    assert (err.file, err.record, err.field) == ("items.jsonl", 'line 12 (id "i11")', "price")
    assert str(err) == (
        'bundle refused: items.jsonl line 12 (id "i11"): field "price": must be a finite number >= 0, got NaN'
    )


def test_refuses_duplicate_item_id(bad: Path) -> None:
    edit_jsonl(bad, "items.jsonl", 6, lambda item: item.update(id="i2"))
    err = refusal(bad)
    assert (err.file, err.record, err.field) == ("items.jsonl", 'line 6 (id "i2")', "id")
    assert "duplicate id (first on line 3)" in str(err)


def test_refuses_bad_item_id_charset(bad: Path) -> None:
    edit_jsonl(bad, "items.jsonl", 2, lambda item: item.update(id="i 1"))
    err = refusal(bad)
    assert (err.file, err.record, err.field) == ("items.jsonl", 'line 2 (id "i 1")', "id")


def test_refuses_duplicate_profile_id(bad: Path) -> None:
    edit_jsonl(bad, "profiles.jsonl", 10, lambda profile: profile.update(id="u0"))
    err = refusal(bad)
    assert (err.file, err.record, err.field) == ("profiles.jsonl", 'line 10 (id "u0")', "id")
    assert "duplicate id (first on line 1)" in str(err)


def test_refuses_profile_carrying_pii_marked_field(bad: Path) -> None:
    edit_jsonl(bad, "profiles.jsonl", 3, lambda p: p["attributes"].update(email="someone@example.com"))
    err = refusal(bad)
    assert (err.file, err.record, err.field) == ("profiles.jsonl", 'line 3 (id "u2")', "attributes.email")
    assert str(err).startswith(
        'bundle refused: profiles.jsonl line 3 (id "u2"): field "attributes.email": PII-marked field'
    )


def test_refuses_plainly_pii_attribute_even_when_undeclared(bad: Path) -> None:
    edit_jsonl(bad, "profiles.jsonl", 4, lambda p: p["attributes"].update(phone="+49 30 1234"))
    err = refusal(bad)
    assert (err.file, err.record, err.field) == ("profiles.jsonl", 'line 4 (id "u3")', "attributes.phone")
    assert "PII" in err.reason


def test_refuses_undeclared_attribute(bad: Path) -> None:
    edit_jsonl(bad, "profiles.jsonl", 7, lambda p: p["attributes"].update(shoe_size=42))
    err = refusal(bad)
    assert (err.file, err.record, err.field) == ("profiles.jsonl", 'line 7 (id "u6")', "attributes.shoe_size")
    assert "undeclared attribute" in err.reason


def test_refuses_attribute_of_wrong_type(bad: Path) -> None:
    edit_jsonl(bad, "profiles.jsonl", 8, lambda p: p["attributes"].update(orders=2.5))
    err = refusal(bad)
    assert (err.file, err.record, err.field) == ("profiles.jsonl", 'line 8 (id "u7")', "attributes.orders")
    assert "must be an integer" in err.reason


# --------------------------------------------------------------------------------------------------
# refusals: rules and schema


def test_refuses_unknown_placement_in_experiment(bad: Path) -> None:
    edit_json(bad, "rules.json", lambda rules: rules["experiments"]["hero_test"].update(placement="hero"))
    err = refusal(bad)
    assert (err.file, err.record, err.field) == ("rules.json", None, "experiments.hero_test.placement")
    assert str(err).startswith(
        "bundle refused: rules.json: experiments.hero_test.placement: unknown placement"
    )
    assert "hero" in err.reason


def test_refuses_unknown_field_type_in_schema(bad: Path) -> None:
    edit_json(bad, "schema.json", lambda schema: schema["profile_fields"]["ltv"].update(type="money"))
    err = refusal(bad)
    assert (err.file, err.field) == ("schema.json", "profile_fields.ltv.type")
    assert 'unknown type "money"' in err.reason


# --------------------------------------------------------------------------------------------------
# refusals: model arrays


def test_refuses_nan_in_item_embedding_row(bad: Path, good: Bundle) -> None:
    embeddings = good.item_embeddings.copy()
    embeddings[40, 3] = np.nan
    replace_npy(bad, "models/item_embeddings.npy", embeddings)
    err = refusal(bad)
    assert (err.file, err.record) == ("models/item_embeddings.npy", 'row 40 (item "i40")')
    assert str(err) == 'bundle refused: models/item_embeddings.npy: row 40 (item "i40"): NaN in vector'


def test_refuses_inf_in_user_embedding_row(bad: Path, good: Bundle) -> None:
    assert good.user_embeddings is not None
    embeddings = good.user_embeddings.copy()
    embeddings[7, 0] = np.inf
    replace_npy(bad, "models/user_embeddings.npy", embeddings)
    err = refusal(bad)
    assert (err.file, err.record) == ("models/user_embeddings.npy", 'row 7 (profile "u7")')
    assert "infinite value" in err.reason


def test_refuses_negative_popularity(bad: Path, good: Bundle) -> None:
    popularity = good.item_popularity.copy()
    popularity[9] = -1.0
    replace_npy(bad, "models/item_popularity.npy", popularity)
    err = refusal(bad)
    assert (err.file, err.record) == ("models/item_popularity.npy", 'row 9 (item "i9")')
    assert ">= 0" in err.reason


def test_refuses_wrong_npy_dtype(bad: Path, good: Bundle) -> None:
    replace_npy(bad, "models/item_embeddings.npy", good.item_embeddings.astype(np.float64))
    err = refusal(bad)
    assert err.file == "models/item_embeddings.npy"
    assert str(err) == (
        "bundle refused: models/item_embeddings.npy: dtype must be little-endian float32 ('<f4'), got '<f8'"
    )


def test_refuses_big_endian_npy(bad: Path, good: Bundle) -> None:
    replace_npy(bad, "models/item_popularity.npy", good.item_popularity.astype(">f4"))
    err = refusal(bad)
    assert err.file == "models/item_popularity.npy"
    assert "got '>f4'" in err.reason


def test_refuses_shape_mismatch(bad: Path, good: Bundle) -> None:
    replace_npy(bad, "models/item_embeddings.npy", good.item_embeddings[:-1])
    err = refusal(bad)
    assert err.file == "models/item_embeddings.npy"
    assert f"shape must be [{SMALL_ITEMS} items, dim >= 1]" in err.reason
    assert f"got [{SMALL_ITEMS - 1}, 32]" in err.reason


def test_refuses_user_embedding_dim_mismatch(bad: Path, good: Bundle) -> None:
    assert good.user_embeddings is not None
    replace_npy(bad, "models/user_embeddings.npy", good.user_embeddings[:, :16].copy())
    err = refusal(bad)
    assert err.file == "models/user_embeddings.npy"
    assert "dim 16 differs from the item embeddings' dim 32" in err.reason


def test_refuses_pickled_npy(bad: Path) -> None:
    replace_npy(bad, "models/item_popularity.npy", np.array([{"a": 1}] * SMALL_ITEMS, dtype=object))
    err = refusal(bad)
    assert err.file == "models/item_popularity.npy"
    assert "got '|O'" in err.reason


def test_bundle_error_survives_pickling() -> None:
    import pickle

    err = BundleError("items.jsonl", "must be a finite number >= 0, got NaN", record="line 2", field="price")
    again = pickle.loads(pickle.dumps(err))
    assert (again.file, again.record, again.field) == (err.file, err.record, err.field)
    assert again.reason == err.reason
    assert str(again) == str(err)


# --------------------------------------------------------------------------------------------------
# optional co-purchase neighbors (models/item_neighbors.npy + models/item_neighbor_scores.npy)

NEIGHBORS_FILE = "models/item_neighbors.npy"
SCORES_FILE = "models/item_neighbor_scores.npy"


def _neighbor_arrays(n_items: int, k: int = 4) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Row i lists i+1 .. i+k (mod n), best first; row 5 is padded after two neighbors."""
    rows = np.arange(n_items)
    neighbors = np.stack([(rows + j) % n_items for j in range(1, k + 1)], axis=1).astype(np.int32)
    scores = np.tile(np.linspace(1.0, 0.25, k, dtype=np.float32), (n_items, 1))
    neighbors[5, 2:] = -1
    scores[5, 2:] = 0.0
    return neighbors, scores


def _write_with_neighbors(bundle: Bundle, out: Path, neighbors: Any, scores: Any) -> Path:
    return write_bundle(
        out,
        version=1,
        schema=bundle.schema,
        items=(_item_dict(item) for item in bundle.items),
        profiles=({"id": p.id, "attributes": p.attributes, "consent": p.consent} for p in bundle.profiles),
        rules=bundle.rules_doc,
        item_embeddings=bundle.item_embeddings,
        item_popularity=bundle.item_popularity,
        item_neighbors=neighbors,
        item_neighbor_scores=scores,
    )


@pytest.fixture
def with_neighbors(good: Bundle, tmp_path: Path) -> Path:
    return _write_with_neighbors(good, tmp_path / "nb", *_neighbor_arrays(len(good.items)))


def test_neighbors_round_trip(with_neighbors: Path, good: Bundle) -> None:
    loaded = load_bundle(with_neighbors)
    expected_rows, expected_scores = _neighbor_arrays(len(good.items))
    assert loaded.item_neighbors is not None and loaded.item_neighbor_scores is not None
    assert loaded.item_neighbors.dtype == np.int32 and loaded.item_neighbor_scores.dtype == np.float32
    np.testing.assert_array_equal(loaded.item_neighbors, expected_rows)
    np.testing.assert_array_equal(loaded.item_neighbor_scores, expected_scores)
    assert bundle_summary(loaded)["item_neighbors"] == 4
    # Synthetic bundles carry 50 embedding neighbors per item (the arrays are optional in general).
    assert good.item_neighbors is not None and bundle_summary(good)["item_neighbors"] == 50


def test_write_bundle_wants_both_neighbor_arrays(good: Bundle, tmp_path: Path) -> None:
    rows, _ = _neighbor_arrays(len(good.items))
    with pytest.raises(ValueError, match="give both or neither"):
        _write_with_neighbors(good, tmp_path / "nb", rows, None)


def test_refuses_one_neighbor_file_without_the_other(with_neighbors: Path) -> None:
    manifest = json.loads((with_neighbors / "manifest.json").read_text())
    del manifest["files"][SCORES_FILE]
    (with_neighbors / "manifest.json").write_text(json.dumps(manifest))
    (with_neighbors / SCORES_FILE).unlink()
    err = refusal(with_neighbors)
    assert err.file == NEIGHBORS_FILE
    assert "comes with models/item_neighbor_scores.npy" in err.reason


def test_refuses_neighbors_of_the_wrong_dtype(with_neighbors: Path, good: Bundle) -> None:
    rows, _ = _neighbor_arrays(len(good.items))
    replace_npy(with_neighbors, NEIGHBORS_FILE, rows.astype(np.int64))
    err = refusal(with_neighbors)
    assert str(err) == (
        "bundle refused: models/item_neighbors.npy: dtype must be little-endian int32 ('<i4'), got '<i8'"
    )


def test_refuses_neighbor_shape_mismatches(with_neighbors: Path, good: Bundle) -> None:
    rows, scores = _neighbor_arrays(len(good.items))
    replace_npy(with_neighbors, NEIGHBORS_FILE, rows[:-1])
    err = refusal(with_neighbors)
    assert err.file == NEIGHBORS_FILE
    assert f"shape must be [{SMALL_ITEMS} items, k >= 1]" in err.reason
    replace_npy(with_neighbors, NEIGHBORS_FILE, rows)
    replace_npy(with_neighbors, SCORES_FILE, scores[:, :3].copy())
    err = refusal(with_neighbors)
    assert err.file == SCORES_FILE
    assert (
        f"shape must match models/item_neighbors.npy's [{SMALL_ITEMS}, 4], got [{SMALL_ITEMS}, 3]"
        in err.reason
    )


@pytest.mark.parametrize(
    ("row", "col", "value", "reason"),
    [
        (7, 1, SMALL_ITEMS, f"neighbor 1: {SMALL_ITEMS} is not an item row in [0, {SMALL_ITEMS})"),
        (7, 1, -2, "neighbor 1: -2 is not an item row"),
        (9, 0, 9, "neighbor 0: an item is not its own neighbor"),
        (5, 3, 40, "neighbor 3 follows padding (-1 only at the end of a row)"),
        (11, 2, 12, "duplicate neighbor 12"),
    ],
)
def test_refuses_bad_neighbor_rows(
    with_neighbors: Path, good: Bundle, row: int, col: int, value: int, reason: str
) -> None:
    rows, _ = _neighbor_arrays(len(good.items))
    rows[row, col] = value
    replace_npy(with_neighbors, NEIGHBORS_FILE, rows)
    err = refusal(with_neighbors)
    assert (err.file, err.record) == (NEIGHBORS_FILE, f'row {row} (item "i{row}")')
    assert reason in err.reason


def test_refuses_bad_neighbor_scores(with_neighbors: Path, good: Bundle) -> None:
    _, scores = _neighbor_arrays(len(good.items))
    scores[3, 1] = np.nan
    replace_npy(with_neighbors, SCORES_FILE, scores)
    err = refusal(with_neighbors)
    assert (err.file, err.record) == (SCORES_FILE, 'row 3 (item "i3")')
    assert "score 1: must be finite, got nan" in err.reason
    _, scores = _neighbor_arrays(len(good.items))
    scores[5, 3] = 0.5  # row 5 is padded from column 2
    replace_npy(with_neighbors, SCORES_FILE, scores)
    err = refusal(with_neighbors)
    assert (err.file, err.record) == (SCORES_FILE, 'row 5 (item "i5")')
    assert "score 3: must be 0 where models/item_neighbors.npy is -1 (padding), got 0.5" in err.reason
