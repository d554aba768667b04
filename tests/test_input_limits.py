"""Malformed and hostile inputs on every load path (hardening, issue 16 item 3): a document nested
100,000 deep, a `.npy` header declaring shape (2000, 10**9), integers the store cannot hold.

Each one becomes the path's own clear error (BundleError naming file, record and field; RuleError;
ConditionError) instead of RecursionError / MemoryError / OverflowError: in a bundle (every JSON file,
every model array), in a delta line, in a rules document however it arrives, in `edgewise bundle
validate` (exit 1, never a traceback) and in a push through a real control plane (INVALID_ARGUMENT, no
server path in the message). A node reloading such bundles on SIGHUP: tests/test_supervisor_loop.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import msgpack
import numpy as np
import pytest
from bad_bundles import (
    DEEP,
    deep_array,
    deep_rules_bundle,
    huge_npy_bundle,
    lie_about_shape,
    npy_files,
    put_deep,
    with_member,
)
from conftest import rewrite_manifest
from sync_support import control_planes, ops_client

from edgewise.core.json_limits import MAX_DEPTH, find_problem, text_too_deep
from edgewise.core.records import RecordError, decode_array, decode_profile
from edgewise.core.rules import RuleError, compile_rules
from edgewise.offline.synth import synth_bundle
from edgewise.sync.bundle import BundleError, load_bundle
from edgewise.sync.changes import bundle_records, parse_delta
from edgewise.sync.push_chunks import bundle_files, file_chunks
from edgewise.v1 import sync_pb2, sync_pb2_grpc

# --------------------------------------------------------------------------------------------------
# bundles


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic bundle holding every optional file (all model arrays)."""
    return synth_bundle(tmp_path_factory.mktemp("good") / "b", users=60, items=50, seed=5)


@pytest.fixture
def bad(good_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good_dir, tmp_path / "bad"))


def refusal(root: Path) -> BundleError:
    with pytest.raises(BundleError) as err:
        load_bundle(root)
    return err.value


JSON_FILES = ["manifest.json", "schema.json", "rules.json", "items.jsonl", "profiles.jsonl"]


@pytest.mark.parametrize("name", JSON_FILES)
def test_deep_json_in_every_json_file_of_a_bundle_is_refused(bad: Path, name: str) -> None:
    put_deep(bad, name)
    err = refusal(bad)
    assert err.file == name
    last_line = (bad / name).read_text().count("\n") + 1  # where put_deep added the member
    assert err.record == ("line 2" if name.endswith(".jsonl") else f"line {last_line}")
    assert f"nested deeper than {MAX_DEPTH} levels of objects and arrays" in err.reason


def test_nesting_up_to_the_limit_is_accepted_and_brackets_in_strings_do_not_count(bad: Path) -> None:
    def edit_item(edit: Callable[[dict[str, Any]], None]) -> None:
        lines = (bad / "items.jsonl").read_text().splitlines()
        record = json.loads(lines[0])
        edit(record)
        lines[0] = json.dumps(record)
        (bad / "items.jsonl").write_text("\n".join(lines) + "\n")
        rewrite_manifest(bad)

    def nest(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = [value]
        return value

    # the line is level 1 and flags level 2: flags holding MAX_DEPTH - 2 more levels nest MAX_DEPTH deep
    edit_item(lambda r: r.update(flags={"x": nest(MAX_DEPTH - 2)}, tags=["[" * 5000 + '"{']))
    assert load_bundle(bad).items[0].flags == {"x": nest(MAX_DEPTH - 2)}
    edit_item(lambda r: r.update(flags={"x": nest(MAX_DEPTH - 1)}))
    err = refusal(bad)
    assert (err.file, err.record) == ("items.jsonl", "line 1")
    assert "nested deeper than 64 levels" in err.reason


def test_the_bundle_under_test_has_every_kind_of_model_array(good_dir: Path) -> None:
    names = npy_files(good_dir)
    for name in (
        "models/item_embeddings.npy",
        "models/item_popularity.npy",
        "models/user_embeddings.npy",
        "models/item_neighbors.npy",
        "models/item_neighbor_scores.npy",
        "models/item_daily_counts.npy",
    ):
        assert name in names
    assert any(name.startswith("models/popularity/") for name in names)


def test_a_lying_npy_header_is_refused_before_anything_is_allocated(good_dir: Path, tmp_path: Path) -> None:
    """Every model array of the bundle in turn: a header declaring far more data than the file holds
    (shape (2000, 10**9), or 10**12 values), fewer (trailing data), a negative or a third dimension."""
    for name in npy_files(good_dir):
        two_d = np.load(good_dir / name).ndim == 2
        for shape, words in (
            ((2000, 10**9) if two_d else (2 * 10**9,), "bytes of data, but the file holds"),
            ((10**12, 4) if two_d else (10**12,), "must be in [0, 2147483647]"),
            ((1, 1) if two_d else (1,), "trailing bytes"),
            ((-5, -4) if two_d else (-20,), "must be in [0, 2147483647]"),
            ((2, 5, 4), "must be a 1-D or 2-D array"),
        ):
            root = Path(shutil.copytree(good_dir, tmp_path / "lie"))
            lie_about_shape(root, name, shape)
            # the header that would allocate 8 TB, traced on one 2-D and one 1-D array (all share the reader)
            traced = words.startswith("bytes of data") and name.endswith(
                ("_embeddings.npy", "_popularity.npy")
            )
            if traced:
                tracemalloc.start()
            try:
                err = refusal(root)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert err.file == name, (name, shape, str(err))
            assert words in err.reason and str(shape) in err.reason, (name, shape, str(err))
            assert peak < 64 << 20, (name, shape, peak)
            shutil.rmtree(root)


@pytest.mark.parametrize(
    ("name", "edit", "field"),
    [
        ("items.jsonl", lambda r: r.update(price=10**400), "price"),
        ("items.jsonl", lambda r: r.update(flags={"n": [1, 2**64]}), "flags.n[1]"),
        ("profiles.jsonl", lambda r: r["consent"].update(personalization=2**63), "consent.personalization"),
        ("profiles.jsonl", lambda r: r["attributes"].update(orders=-(2**63) - 1), "attributes.orders"),
        ("profiles.jsonl", lambda r: r["attributes"].update(ltv=10**30), "attributes.ltv"),
    ],
)
def test_integers_the_store_cannot_hold_are_refused(
    bad: Path, name: str, edit: Callable[[dict[str, Any]], None], field: str
) -> None:
    lines = (bad / name).read_text().splitlines()
    record = json.loads(lines[0])
    edit(record)
    lines[0] = json.dumps(record)
    (bad / name).write_text("\n".join(lines) + "\n")
    rewrite_manifest(bad)
    err = refusal(bad)
    assert (err.file, err.field) == (name, field), str(err)
    assert err.record is not None and err.record.startswith("line 1")


def test_integers_out_of_range_in_rules_manifest_and_json_text_are_refused(bad: Path, good_dir: Path) -> None:
    rules = json.loads((bad / "rules.json").read_text())
    content = next(iter(rules["contents"]))
    rules["contents"][content]["n"] = 10**30
    (bad / "rules.json").write_text(json.dumps(rules))
    rewrite_manifest(bad)
    err = refusal(bad)
    assert (err.file, err.field) == ("rules.json", f"contents.{content}.n")
    assert "integer out of range" in err.reason

    shutil.copy(good_dir / "rules.json", bad / "rules.json")
    lines = (bad / "items.jsonl").read_text().splitlines()
    lines[2] = with_member(lines[2], '"n": ' + "7" * 5000)  # over Python's 4,300 digits: ValueError
    (bad / "items.jsonl").write_text("\n".join(lines) + "\n")
    rewrite_manifest(bad)
    err = refusal(bad)
    assert (err.file, err.record) == ("items.jsonl", "line 3") and "invalid JSON" in err.reason

    shutil.copy(good_dir / "items.jsonl", bad / "items.jsonl")
    rewrite_manifest(bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["bundle_version"] = 2**64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    err = refusal(bad)
    assert (err.file, err.field) == ("manifest.json", "bundle_version")


def test_messages_stay_short_whatever_the_document(bad: Path) -> None:
    rules = json.loads((bad / "rules.json").read_text())
    rules["k" * 100_000] = 1  # an unknown field with a 100 kB name
    (bad / "rules.json").write_text(json.dumps(rules))
    rewrite_manifest(bad)
    err = refusal(bad)
    assert err.file == "rules.json" and "unknown field" in str(err)
    assert len(str(err)) < 2000


def test_an_unreadable_file_is_a_refusal_naming_it(bad: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    (bad / "models" / "item_popularity.npy").chmod(0)
    err = refusal(bad)
    assert err.file == "models/item_popularity.npy" and "cannot read" in err.reason
    assert str(bad) not in str(err)


# --------------------------------------------------------------------------------------------------
# rules documents, however they arrive (a bundle, a delta, msgpack from a store)


def test_compile_rules_refuses_a_deep_document_built_in_memory(good_dir: Path) -> None:
    rules = json.loads((good_dir / "rules.json").read_text())
    value: Any = 1
    for _ in range(DEEP):
        value = {"a": value}
    rules["contents"][next(iter(rules["contents"]))]["deep"] = value
    with pytest.raises(RuleError, match=f"nested deeper than {MAX_DEPTH} levels") as err:
        compile_rules(rules)
    assert err.value.path.startswith("contents.") and err.value.path.endswith(".a.a")

    condition: Any = {"country": "DE"}
    for _ in range(900):  # parses as JSON (under Python's limit), but compiles to 900 nested $not
        condition = {"$not": condition}
    rules = json.loads((good_dir / "rules.json").read_text())
    rules["segments"]["deep"] = {"condition": condition}
    with pytest.raises(RuleError, match=f"nested deeper than {MAX_DEPTH} levels") as err:
        compile_rules(msgpack.unpackb(msgpack.packb(rules), raw=False))
    assert err.value.path.startswith("segments.deep.condition.$not.$not")


def test_the_limits_module() -> None:
    assert text_too_deep(deep_array(MAX_DEPTH)) is None
    assert text_too_deep(deep_array(MAX_DEPTH + 1)) == MAX_DEPTH
    assert text_too_deep('["' + "[" * 200 + '\\"' + "[" * 10 + '"]') is None  # escapes inside strings
    assert text_too_deep(deep_array(DEEP)) == MAX_DEPTH
    assert text_too_deep('"\\\\"' + deep_array(MAX_DEPTH + 1)) == 4 + MAX_DEPTH  # an escaped backslash
    # linear whatever the text: an unterminated string of a million escaped quotes, then brackets
    started = time.monotonic()
    assert text_too_deep('"' + '\\"' * 1_000_000 + "[" * 100) is None
    assert text_too_deep('\\"' * 1_000_000 + "[" * 100) is None  # the first quote opens a string
    assert time.monotonic() - started < 5
    value: Any = []
    for _ in range(DEEP):
        value = [value]
    problem = find_problem(value)
    assert problem is not None and problem[0] == "[0]" * MAX_DEPTH
    assert find_problem({"a": [1, {"b": 2**64 - 1}], "c": -(2**63)}) is None
    assert find_problem({"a": [1, {"b": 2**64}]}) == (
        "a[1].b",
        "integer out of range (must be in [-2**63, 2**64 - 1]), got 18446744073709551616",
    )
    assert find_problem({"a": 2**20000}, check_ints=True) == (
        "a",
        "integer out of range (must be in [-2**63, 2**64 - 1]), got an integer of 20001 bits",
    )
    assert find_problem({"a": 2**64}, check_ints=False) is None
    assert find_problem({"k" * 1000: [[]]}, max_depth=2) == (
        "k" * 61 + "...[0]",
        "nested deeper than 2 levels of objects and arrays",
    )


# --------------------------------------------------------------------------------------------------
# delta lines


@pytest.fixture(scope="module")
def state(good_dir: Path) -> dict[tuple[str, str], bytes]:
    return {
        (c.namespace, c.key): c.value for c in bundle_records(load_bundle(good_dir)) if c.value is not None
    }


class DictState:
    def __init__(self, records: dict[tuple[str, str], bytes]) -> None:
        self.records = records

    def get(self, namespace: str, key: str) -> bytes | None:
        return self.records.get((namespace, key))

    def items(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        return iter(sorted((k, v) for (ns, k), v in self.records.items() if ns == namespace))


def delta_refusal(lines: list[str], state: dict[tuple[str, str], bytes]) -> BundleError:
    with pytest.raises(BundleError) as err:
        parse_delta(lines, DictState(state), file="d.jsonl")
    return err.value


GOOD_LINE = json.dumps({"op": "delete", "profile": "u1"})


@pytest.mark.parametrize(
    "line",
    [
        '{"op": "upsert", "profile": {"id": "u1", "attributes": {"interests": ' + deep_array(DEEP) + "}}}",
        '{"op": "upsert", "item": {"id": "i1", "flags": {"a": ' + deep_array(DEEP) + "}}}",
        '{"op": "upsert", "rules": {"contents": ' + deep_array(DEEP) + "}}",
        deep_array(DEEP),
    ],
    ids=["profile", "item", "rules", "bare"],
)
def test_deep_json_in_a_delta_line_is_refused(line: str, state: dict[tuple[str, str], bytes]) -> None:
    err = delta_refusal([GOOD_LINE, line], state)
    assert (err.file, err.record) == ("d.jsonl", "line 2")
    assert f"nested deeper than {MAX_DEPTH} levels" in err.reason


def test_deep_rules_and_huge_numbers_in_a_delta_are_refused(
    good_dir: Path, state: dict[tuple[str, str], bytes]
) -> None:
    rules = json.loads((good_dir / "rules.json").read_text())
    condition: Any = {"country": "DE"}
    for _ in range(MAX_DEPTH):  # with the line, rules, segments, ...: 69 levels
        condition = {"$not": condition}
    rules["segments"]["deep"] = {"condition": condition}
    err = delta_refusal([json.dumps({"op": "upsert", "rules": rules})], state)
    assert err.record == "line 1" and "nested deeper than" in err.reason

    dim = load_bundle(good_dir).dim
    embedding = [0.5] * (dim - 1) + [2**70]
    err = delta_refusal(
        [json.dumps({"op": "upsert", "profile": {"id": "u1"}, "embedding": embedding})], state
    )
    assert (err.field, err.reason) == ("embedding", "value outside the float32 range")
    err = delta_refusal(
        [
            json.dumps(
                {
                    "op": "upsert",
                    "item": {"id": "i1", "category": "a", "price": 1, "regions": ["*"]},
                    "popularity": 10**400,
                }
            )
        ],
        state,
    )
    assert err.field == "popularity"
    # a list far longer than the dim is refused by its length, before its values are looked at
    long_list = "[" + ",".join(["0"] * 200_000) + ', "x"]'
    err = delta_refusal(['{"op": "upsert", "profile": {"id": "u1"}, "embedding": ' + long_list + "}"], state)
    assert err.reason == f"must hold {dim} numbers (the item embeddings' dim), got 200001"


# --------------------------------------------------------------------------------------------------
# records: what the store and the wire declare is checked against what they hold


def test_records_declaring_more_than_they_hold_are_record_errors() -> None:
    header = b"EWA1f\x02\x00\x00" + (2000).to_bytes(4, "little") + (10**9).to_bytes(4, "little")
    with pytest.raises(RecordError, match="bytes for shape"):
        decode_array(header + b"\x00" * 64)
    # a msgpack map whose attribute list claims 2**32 - 1 elements
    claim = b"\x85\xa1s\x01\xa1v\x00\xa1a\x81\xa1l\xdd\xff\xff\xff\xff"
    with pytest.raises(RecordError):
        decode_profile("u1", claim)


# --------------------------------------------------------------------------------------------------
# real processes: `edgewise bundle validate`, a control plane's Push


@pytest.mark.slow
def test_bundle_validate_prints_the_refusal_never_a_traceback(good_dir: Path, tmp_path: Path) -> None:
    for root, words in (
        (deep_rules_bundle(good_dir, tmp_path / "deep", 2), "bundle refused: rules.json line "),
        (huge_npy_bundle(good_dir, tmp_path / "huge", 2), "bundle refused: models/item_embeddings.npy"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "edgewise.cli", "bundle", "validate", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith(words), done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr) < 1000


@pytest.mark.slow
def test_a_control_plane_answers_hostile_pushes_with_invalid_argument(good_dir: Path, tmp_path: Path) -> None:
    """A deep rules.json and a huge .npy shape pushed as bundles, and a deep delta line: each answered
    INVALID_ARGUMENT naming the file, without the server's staging path; the head is unchanged."""
    env = {"EDGEWISE_OPS_TOKEN": "ops-secret-1", "EDGEWISE_EDGE_TOKEN": "edge-secret-1"}
    with control_planes(tmp_path, env) as start:
        control = start()
        with ops_client(control.address, env) as ops:
            head = ops.push(good_dir).version
        metadata = (("authorization", f"Bearer {env['EDGEWISE_OPS_TOKEN']}"),)
        deep_delta = tmp_path / "deep.jsonl"
        deep_delta.write_text(GOOD_LINE + "\n" + '{"op": "upsert", "rules": ' + deep_array(DEEP) + "}\n")
        nested = "nested deeper than 64 levels of objects and arrays"
        pushes: list[tuple[int, list[tuple[str, Path | bytes]], tuple[str, ...]]] = [
            (
                sync_pb2.PUSH_KIND_BUNDLE,
                list(bundle_files(deep_rules_bundle(good_dir, tmp_path / "deep", head + 1))),
                ("push refused, nothing changed: bundle refused: rules.json line ", nested),
            ),
            (
                sync_pb2.PUSH_KIND_BUNDLE,
                list(bundle_files(huge_npy_bundle(good_dir, tmp_path / "huge", head + 1))),
                ("models/item_embeddings.npy: the header declares shape (2000, 1000000000)",),
            ),
            (
                sync_pb2.PUSH_KIND_DELTA,
                [("deep.jsonl", deep_delta)],
                ("bundle refused: deep.jsonl line 2: " + nested,),
            ),
        ]
        with grpc.insecure_channel(control.address) as channel:
            stub = sync_pb2_grpc.ControlPlaneStub(channel)
            for kind, files, words in pushes:
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Push(file_chunks(kind, files, "hostile"), metadata=metadata, timeout=60)
                details = refused.value.details() or ""
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
                assert all(w in details for w in words), details
                assert "edgewise-push-" not in details and "/tmp" not in details
        with ops_client(control.address, env) as ops:
            assert ops.status().head_version == head
        assert not [line for line in control.logs().splitlines() if "Traceback" in line]
