"""Replicated state as records, and delta files that change it (docs/delta-format.md).

The control plane holds the replicated state of the edges as records `(namespace, key, value bytes)`
whose values are exactly the edge store's encodings (what `sync/snapshot.py` writes), with every
record's own `version` field set to 0: the control plane versions records itself, so an unchanged
record encodes to the same bytes in two pushes.

`bundle_records` turns a validated bundle into those records. `parse_delta` reads a delta file (JSON
lines: upserts and deletes of profiles and items, a new rules document), validates all of it against
the current state with the bundle format's own checks, and returns the record changes it makes,
keeping the edge's invariants: item rows 0..n-1 and every per-item model array with n rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any, Final, Protocol

import msgpack
import numpy as np
from numpy.typing import NDArray

from edgewise.core.embedding_slots import GENERATION_MODEL, active_generation, with_active_vector
from edgewise.core.records import (
    ItemRecord,
    ProfileRecord,
    decode_array,
    decode_item,
    decode_profile,
    encode_array,
    encode_item,
    encode_profile,
)
from edgewise.core.rules import RuleError, compile_rules
from edgewise.core.saved_groups import (
    MEMBER_VALUE,
    SUMMARY_PREFIX,
    check_member,
    declarations,
    inline_members,
    member_hash,
    member_key,
    pack_summary,
    parse_member_key,
    unpack_summary,
)
from edgewise.sync.bundle import (
    Bundle,
    BundleError,
    _check_item,
    _check_profile,
    _check_schema,
    _id_problem,
    _is_finite_number,
    _parse_json,
    _show,
    _type_name,
)
from edgewise.sync.control_store import RecordChange
from edgewise.sync.snapshot import _item_records, _model_records, _profile_records, _rules_records

__all__ = [
    "MANIFEST_KEY",
    "NEIGHBORS",
    "NEIGHBOR_SCORES",
    "RECORD_VERSION",
    "StateReader",
    "bundle_records",
    "manifest_doc",
    "parse_delta",
    "stored_generation",
    "swap_remove_neighbors",
]

RECORD_VERSION: Final = 0  # the `version` field of every record the control plane holds
MANIFEST_KEY: Final = "manifest"  # ("rules", "manifest"): bundle facts the edge needs
NEIGHBORS: Final = "item_neighbors"
NEIGHBOR_SCORES: Final = "item_neighbor_scores"
EMBEDDINGS: Final = "item_embeddings"
POPULARITY: Final = "item_popularity"
SEGMENT_POPULARITY: Final = "item_popularity@segment:"

_F32_MAX: Final = float(np.finfo(np.float32).max)
_OPS: Final = ("upsert", "delete")
_KINDS: Final = ("profile", "item", "rules", "saved_group")
_ALLOWED: Final[Mapping[tuple[str, str], frozenset[str]]] = {
    ("upsert", "profile"): frozenset({"op", "profile", "embedding"}),
    ("delete", "profile"): frozenset({"op", "profile"}),
    ("upsert", "item"): frozenset({"op", "item", "embedding", "popularity"}),
    ("delete", "item"): frozenset({"op", "item"}),
    ("upsert", "rules"): frozenset({"op", "rules"}),
    # members added (upsert) or removed (delete): core/saved_groups.py
    ("upsert", "saved_group"): frozenset({"op", "saved_group", "values"}),
    ("delete", "saved_group"): frozenset({"op", "saved_group", "values"}),
}


class StateReader(Protocol):
    """Read access to the current replicated records (the control store's read view, or a dict)."""

    def get(self, namespace: str, key: str) -> bytes | None: ...

    def items(self, namespace: str) -> Iterator[tuple[str, bytes]]: ...


def stored_generation(view: StateReader) -> int:
    """The active embedding generation of the state in `view` (`models/embedding_generation`; 0: none)."""
    raw = view.get("models", GENERATION_MODEL)
    return active_generation(decode_array(raw)) if raw is not None else 0


# --------------------------------------------------------------------------------------------------
# a bundle as records


def manifest_doc(bundle: Bundle) -> dict[str, Any]:
    """The ("rules", "manifest") record's document: bundle facts an edge needs besides the data."""
    return {
        "daily_counts_end_ms": bundle.daily_counts_end_ms,
        "created_at": str(bundle.manifest.get("created_at", "")),
        "generator": str(bundle.manifest.get("generator", "")),
        "dim": bundle.dim,
        "bundle_version": bundle.version,
    }


def bundle_records(bundle: Bundle) -> Iterator[RecordChange]:
    """The complete replicated state of a validated bundle as records (record versions 0).

    Profiles, items, models (every per-item array), then `rules`: the rules and schema documents and
    the manifest record. The values are the bytes `apply_bundle` writes, except for the version field.
    """
    for key, value in _profile_records(bundle, RECORD_VERSION):
        yield RecordChange("profiles", key.decode(), value)
    for key, value in _item_records(bundle, RECORD_VERSION):
        yield RecordChange("items", key.decode(), value)
    for key, value in _model_records(bundle):
        yield RecordChange("models", key.decode(), value)
    for key, value in _rules_records(bundle):
        yield RecordChange("rules", key.decode(), value)
    yield RecordChange("rules", MANIFEST_KEY, msgpack.packb(manifest_doc(bundle), use_bin_type=True))


# --------------------------------------------------------------------------------------------------
# delta files


def parse_delta(lines: Iterable[str], state: StateReader, *, file: str = "delta.jsonl") -> list[RecordChange]:
    """Validate a whole delta file against `state` and return the record changes it makes.

    Lines apply in order, each against the state as the lines before it left it. Raises BundleError
    (file `file`, record "line N", the field) on the first problem; nothing is returned then (a line
    nesting deeper than MAX_DEPTH levels is refused before it is parsed, as in a bundle). The
    result holds one change per record whose bytes differ from `state` (None = delete): profiles,
    items (also items whose row moved), whole model arrays, and the rules document.
    """
    delta = _Delta(state, file)
    for line_no, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        where = f"line {line_no}"
        if not line.strip():
            raise BundleError(file, "empty line (one JSON object per line)", record=where)
        doc = _parse_json(file, line, line_no)
        if not isinstance(doc, dict):
            raise BundleError(file, f"must be a JSON object, got {_type_name(doc)}", record=where)
        delta.apply(line_no, doc)
    return delta.changes()


def _line_form(file: str, where: str, doc: dict[str, Any]) -> tuple[str, str]:
    """(op, kind) of a delta line, its keys checked."""
    op = doc.get("op")
    if op not in _OPS:
        reason = "missing" if "op" not in doc else f"unknown op {_show(op)}"
        raise BundleError(file, f"{reason} (ops: upsert, delete)", record=where, field="op")
    kinds = [kind for kind in _KINDS if kind in doc]
    if len(kinds) != 1:
        expected = "one of profile, item, rules, saved_group expected"
        reason = expected if not kinds else f"{', '.join(kinds)} together"
        raise BundleError(file, f"{reason} (one record per line)", record=where)
    kind = kinds[0]
    allowed = _ALLOWED.get((op, kind))
    if allowed is None:
        raise BundleError(
            file, "rules cannot be deleted (upsert the whole document)", record=where, field="op"
        )
    for key in doc:
        if key not in allowed:
            raise BundleError(
                file,
                f"unknown field for {op} {kind} (allowed: {', '.join(sorted(allowed))})",
                record=where,
                field=key,
            )
    return op, kind


def _reraise(file: str, where: str, prefix: str, err: BundleError) -> BundleError:
    field = prefix if err.field is None else f"{prefix}.{err.field}"
    return BundleError(file, err.reason, record=where, field=field)


class _Delta:
    """The state as the lines so far leave it: overlays on `state`, item tables loaded on first use."""

    def __init__(self, state: StateReader, file: str) -> None:
        self.state = state
        self.file = file
        self.profiles: dict[str, bytes | None] = {}  # id -> new value (None = deleted)
        self.rules: bytes | None = None
        self.rules_doc: Any = None  # the document of self.rules (declarations only)
        self.members: dict[str, bytes | None] = {}  # saved group member records: key -> value (None: gone)
        self._schema: tuple[dict[str, str], frozenset[str]] | None = None
        self._state_dim: int | None = None  # embedding dim of the stored state (items not loaded)
        # item tables, loaded by _load_items
        self.loaded = False
        self.row_ids: list[str] = []  # row -> item id
        self.records: dict[str, ItemRecord] = {}
        self.touched: set[str] = set()  # item ids whose record may have changed
        self.arrays: dict[str, NDArray[Any]] = {}
        self.original_arrays: dict[str, bytes] = {}

    # ---- reading the current state

    def _get(self, namespace: str, key: str) -> bytes | None:
        value = self.state.get(namespace, key)
        return None if value is None else bytes(value)

    def _schema_fields(self) -> tuple[dict[str, str], frozenset[str]]:
        if self._schema is None:
            raw = self._get("rules", "schema")
            doc = msgpack.unpackb(raw, raw=False) if raw is not None else {"profile_fields": {}}
            fields = _check_schema(doc)
            kinds = {name: str(spec["type"]) for name, spec in fields.items()}
            pii = frozenset(name for name, spec in fields.items() if spec.get("pii") is True)
            self._schema = kinds, pii
        return self._schema

    def _dim(self) -> int:
        if self.loaded:
            emb = self.arrays.get(EMBEDDINGS)
            return int(emb.shape[1]) if emb is not None else 0
        if self._state_dim is None:  # read once: the stored array is large, and nothing changed it yet
            raw = self._get("models", EMBEDDINGS)
            if raw is not None:
                self._state_dim = int(decode_array(raw).shape[1])
            else:
                manifest = self._get("rules", MANIFEST_KEY)
                self._state_dim = (
                    int(msgpack.unpackb(manifest, raw=False).get("dim", 0)) if manifest is not None else 0
                )
        return self._state_dim

    def _load_items(self) -> None:
        if self.loaded:
            return
        records = sorted(
            (decode_item(key, value) for key, value in self.state.items("items")), key=lambda r: r.row
        )
        n = len(records)
        if any(r.row != i for i, r in enumerate(records)):
            raise ValueError(f"the current state's item rows are not 0..{n - 1}")
        self.row_ids = [r.id for r in records]
        self.records = {r.id: r for r in records}
        for name, value in self.state.items("models"):
            raw = bytes(value)
            array = np.array(decode_array(raw), copy=True)
            if array.shape[0] != n:
                raise ValueError(
                    f"the current state's model array {name!r} has {array.shape[0]} rows, not {n}"
                )
            self.arrays[name] = array
            self.original_arrays[name] = raw
        if (NEIGHBORS in self.arrays) != (NEIGHBOR_SCORES in self.arrays):
            raise ValueError(f"the current state holds one of {NEIGHBORS} and {NEIGHBOR_SCORES}, not both")
        self.loaded = True

    # ---- lines

    def apply(self, line_no: int, doc: dict[str, Any]) -> None:
        where = f"line {line_no}"
        op, kind = _line_form(self.file, where, doc)
        if kind == "rules":
            self._upsert_rules(where, doc["rules"])
        elif kind == "saved_group":
            self._change_members(where, op, doc["saved_group"], doc.get("values"))
        elif kind == "profile":
            if op == "upsert":
                self._upsert_profile(line_no, doc)
            else:
                self._delete_profile(where, doc["profile"])
        elif op == "upsert":
            self._upsert_item(line_no, doc)
        else:
            self._delete_item(where, doc["item"])

    def _refuse(self, where: str, field: str | None, reason: str) -> BundleError:
        return BundleError(self.file, reason, record=where, field=field)

    def _vector(self, where: str, value: Any, dim: int) -> NDArray[np.float32]:
        if not isinstance(value, list):
            raise self._refuse(where, "embedding", f"must be a list of numbers, got {_show(value)}")
        if len(value) != dim:  # the size first: nothing is converted of a list of the wrong size
            raise self._refuse(
                where, "embedding", f"must hold {dim} numbers (the item embeddings' dim), got {len(value)}"
            )
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise self._refuse(where, "embedding", f"must be a list of numbers, got {_show(value)}")
        if not all(_is_finite_number(v) for v in value if isinstance(v, int)):
            raise self._refuse(where, "embedding", "value outside the float32 range")
        vector = np.asarray(value, dtype=np.float64)
        if not np.isfinite(vector).all():
            what = "NaN" if np.isnan(vector).any() else "infinite value"
            raise self._refuse(where, "embedding", f"{what} in vector")
        if vector.size and float(np.abs(vector).max()) > _F32_MAX:
            raise self._refuse(where, "embedding", "value outside the float32 range")
        return vector.astype("<f4")

    def _upsert_rules(self, where: str, doc: Any) -> None:
        if not isinstance(doc, dict):
            raise self._refuse(where, "rules", f"must be a JSON object, got {_type_name(doc)}")
        try:
            rules = compile_rules(doc)
        except RuleError as err:
            raise self._refuse(where, f"rules.{err.path}" if err.path else "rules", err.reason) from None
        # load_bundle's cross-check: popularity per segment only for segments of the rules
        names = self.arrays if self.loaded else dict(self.state.items("models"))
        for name in sorted(names):
            segment = name.removeprefix(SEGMENT_POPULARITY)
            if name.startswith(SEGMENT_POPULARITY) and segment not in rules.segments:
                raise self._refuse(
                    where,
                    "rules.segments",
                    f"segment {_show(segment)} has its own popularity ({name}) but is not in the rules",
                )
        self.rules_doc = declarations(doc)
        self.rules = msgpack.packb(self.rules_doc, use_bin_type=True)
        # inline values replace a group's members; a group no longer declared loses its members
        inline = inline_members(doc)
        declared = self._declared_groups()
        current = self._member_keys()
        for key, (gid, _) in current.items():
            if gid not in declared or gid in inline:
                self.members[key] = None
        for gid, values in inline.items():
            for value in values:
                self.members[member_key(gid, value)] = MEMBER_VALUE

    def _declared_groups(self) -> frozenset[str]:
        doc = self.rules_doc
        if doc is None:
            raw = self._get("rules", "rules")
            doc = msgpack.unpackb(raw, raw=False) if raw is not None else {}
        groups = doc.get("saved_groups") if isinstance(doc, dict) else None
        return frozenset(groups) if isinstance(groups, dict) else frozenset()

    def _member_keys(self) -> dict[str, tuple[str, str | float]]:
        """Every member record as the lines so far leave them: key -> (group id, member)."""
        keys: dict[str, tuple[str, str | float]] = {}
        for key, _ in self.state.items("rules"):
            parsed = parse_member_key(key)
            if parsed is not None and self.members.get(key, MEMBER_VALUE) is not None:
                keys[key] = parsed
        for key, value in self.members.items():
            parsed = parse_member_key(key)
            if value is not None and parsed is not None:
                keys[key] = parsed
        return keys

    def _change_members(self, where: str, op: str, group_id: Any, values: Any) -> None:
        if not isinstance(group_id, str) or group_id not in self._declared_groups():
            raise self._refuse(
                where, "saved_group", f"unknown saved group {_show(group_id)} (declare it in the rules first)"
            )
        if not isinstance(values, list) or not values:
            raise self._refuse(where, "values", "must be a non-empty list of members")
        for i, value in enumerate(values):
            problem = check_member(value)
            if problem is not None:
                raise self._refuse(where, f"values[{i}]", problem)
            self.members[member_key(group_id, value)] = MEMBER_VALUE if op == "upsert" else None

    def _profile_exists(self, profile_id: str) -> bytes | None:
        if profile_id in self.profiles:
            return self.profiles[profile_id]
        return self._get("profiles", profile_id)

    def _upsert_profile(self, line_no: int, doc: dict[str, Any]) -> None:
        where = f"line {line_no}"
        payload = doc["profile"]
        if not isinstance(payload, dict):
            raise self._refuse(where, "profile", f"must be an object, got {_type_name(payload)}")
        kinds, pii = self._schema_fields()
        try:
            profile = _check_profile(line_no, payload, kinds, pii)
        except BundleError as err:
            raise _reraise(self.file, where, "profile", err) from None
        embedding: bytes | None = None
        if "embedding" in doc:
            embedding = self._vector(where, doc["embedding"], self._dim()).tobytes()
        # the stored vector slots are kept (a refresh may be staging the next embedding generation); a
        # given embedding is the active generation's (core/embedding_slots.py)
        current = self._profile_exists(profile.id)
        slots = decode_profile(profile.id, current).stored_vectors() if current is not None else ()
        if "embedding" in doc:
            slots = with_active_vector(slots, stored_generation(self.state), embedding)
        record = ProfileRecord(
            profile.id, RECORD_VERSION, profile.attributes, profile.consent, embedding, vectors=slots
        )
        self.profiles[profile.id] = encode_profile(record)

    def _delete_profile(self, where: str, profile_id: Any) -> None:
        problem = _id_problem(profile_id)
        if problem is not None:
            raise self._refuse(where, "profile", problem)
        if self._profile_exists(profile_id) is None:
            raise self._refuse(where, "profile", f"no profile {_show(profile_id)} to delete")
        self.profiles[profile_id] = None

    def _upsert_item(self, line_no: int, doc: dict[str, Any]) -> None:
        where = f"line {line_no}"
        payload = doc["item"]
        if not isinstance(payload, dict):
            raise self._refuse(where, "item", f"must be an object, got {_type_name(payload)}")
        try:
            item = _check_item(line_no, payload)
        except BundleError as err:
            raise _reraise(self.file, where, "item", err) from None
        self._load_items()
        vector = self._vector(where, doc["embedding"], self._dim()) if "embedding" in doc else None
        popularity: float | None = None
        if "popularity" in doc:
            value = doc["popularity"]
            if not _is_finite_number(value) or not 0 <= value <= _F32_MAX:
                raise self._refuse(where, "popularity", f"must be a finite number >= 0, got {_show(value)}")
            popularity = float(value)
        current = self.records.get(item.id)
        if current is None:
            row = len(self.row_ids)
            self._append_row()
            self.row_ids.append(item.id)
        else:
            row = current.row
        self.records[item.id] = ItemRecord(
            item.id,
            RECORD_VERSION,
            row,
            item.category,
            item.tags,
            item.price,
            item.regions,
            item.launch_date,
            item.flags,
        )
        self.touched.add(item.id)
        if vector is not None and EMBEDDINGS in self.arrays:
            self.arrays[EMBEDDINGS][row] = vector
        if popularity is not None and POPULARITY in self.arrays:
            self.arrays[POPULARITY][row] = popularity

    def _append_row(self) -> None:
        """One more row in every per-item array: -1 in the neighbor lists, 0 everywhere else."""
        for name, array in self.arrays.items():
            fill = -1 if name == NEIGHBORS else 0
            extra = np.full((1, *array.shape[1:]), fill, dtype=array.dtype)
            self.arrays[name] = np.concatenate([array, extra])

    def _delete_item(self, where: str, item_id: Any) -> None:
        problem = _id_problem(item_id)
        if problem is not None:
            raise self._refuse(where, "item", problem)
        self._load_items()
        record = self.records.get(item_id)
        if record is None:
            raise self._refuse(where, "item", f"no item {_show(item_id)} to delete")
        row, last = record.row, len(self.row_ids) - 1
        del self.records[item_id]
        self.touched.add(item_id)
        if row != last:
            moved = self.row_ids[last]
            self.row_ids[row] = moved
            self.records[moved] = replace(self.records[moved], version=RECORD_VERSION, row=row)
            self.touched.add(moved)
        self.row_ids.pop()
        neighbors = self.arrays.get(NEIGHBORS)
        scores = self.arrays.get(NEIGHBOR_SCORES)
        if neighbors is not None and scores is not None:
            self.arrays[NEIGHBORS], self.arrays[NEIGHBOR_SCORES] = _swap_remove_neighbors_inplace(
                neighbors, scores, row
            )
        for name, array in self.arrays.items():
            if name in (NEIGHBORS, NEIGHBOR_SCORES):
                continue
            array[row] = array[last]
            self.arrays[name] = array[:last]

    # ---- the result

    def changes(self) -> list[RecordChange]:
        out: list[RecordChange] = []
        for profile_id, value in self.profiles.items():
            if value != self._get("profiles", profile_id):
                out.append(RecordChange("profiles", profile_id, value))
        for item_id in sorted(self.touched):
            record = self.records.get(item_id)
            value = None if record is None else encode_item(record)
            if value != self._get("items", item_id):
                out.append(RecordChange("items", item_id, value))
        for name, array in self.arrays.items():
            encoded = encode_array(np.ascontiguousarray(array))
            if encoded != self.original_arrays[name]:
                out.append(RecordChange("models", name, encoded))
        if self.rules is not None and self.rules != self._get("rules", "rules"):
            out.append(RecordChange("rules", "rules", self.rules))
        summaries: dict[str, tuple[int, int]] = {}  # group id -> (count, total) changes
        for key in sorted(self.members):
            value = self.members[key]
            if value != self._get("rules", key):
                out.append(RecordChange("rules", key, value))
                parsed = parse_member_key(key)
                assert parsed is not None
                count, total = summaries.get(parsed[0], (0, 0))
                sign = 1 if value is not None else -1
                summaries[parsed[0]] = count + sign, total + sign * member_hash(key)
        for gid, (count, total) in sorted(summaries.items()):  # the summaries kept up to date
            key = f"{SUMMARY_PREFIX}{gid}"
            old_count, old_total = unpack_summary(self._get("rules", key))
            new_count = old_count + count
            summary = (
                pack_summary((new_count, (old_total + total) & 0xFFFFFFFFFFFFFFFF)) if new_count else None
            )
            out.append(RecordChange("rules", key, summary))
        return out


def swap_remove_neighbors(
    neighbors: NDArray[np.int32], scores: NDArray[np.float32], row: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Neighbor lists after item `row` is swap-removed (the last row moves into `row`).

    Entries pointing at `row` become padding (-1, score 0), entries pointing at the last row are
    renumbered to `row`, and every list keeps its padding at its end (order of the rest kept).
    Returns new arrays of one row fewer; the arguments are not changed.
    """
    nb, sc = _swap_remove_neighbors_inplace(
        np.array(neighbors, dtype=np.int32, copy=True), np.array(scores, dtype=np.float32, copy=True), row
    )
    return np.ascontiguousarray(nb), np.ascontiguousarray(sc)


def _swap_remove_neighbors_inplace(
    nb: NDArray[np.int32], sc: NDArray[np.float32], row: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """`swap_remove_neighbors` writing into `nb` and `sc`; returns views of one row fewer."""
    last = nb.shape[0] - 1
    hit = nb == row
    nb[hit] = -1
    sc[hit] = 0
    nb[row] = nb[last]
    sc[row] = sc[last]
    nb, sc = nb[:last], sc[:last]
    if row != last:
        nb[nb == last] = row
    if nb.shape[1] > 1:
        gaps = ((nb[:, :-1] == -1) & (nb[:, 1:] != -1)).any(axis=1)
        for r in np.flatnonzero(gaps):
            order = np.argsort(nb[r] == -1, kind="stable")
            nb[r] = nb[r][order]
            sc[r] = sc[r][order]
    return nb, sc
