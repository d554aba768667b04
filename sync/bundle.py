"""Bundles: the on-disk bundle format (docs/bundle-format.md), read and validated.

`load_bundle` validates every file of a bundle directory (manifest, checksums, schema, catalog,
profiles, rules, model arrays, optional co-purchase neighbor lists) and returns an immutable
in-memory `Bundle`, or raises `BundleError` on the first problem, naming the file, the record and
the field. `bundle_summary` is the overview `edgewise bundle validate` prints. The file names, the
manifest's format marker and the checksum are defined here once; `edgewise.sync.bundle_write` writes
bundles with them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core.json_limits import MAX_DEPTH, find_problem, int_in_range, join_path, text_too_deep
from edgewise.core.rules import RuleError, Ruleset, compile_rules

__all__ = [
    "BUNDLE_FORMAT",
    "FORMAT_VERSION",
    "OPTIONAL_FILES",
    "PLAIN_PII_NAMES",
    "REQUIRED_FILES",
    "Bundle",
    "BundleError",
    "Item",
    "Profile",
    "bundle_summary",
    "load_bundle",
]

BUNDLE_FORMAT: Final = "edgewise-bundle"
FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
SCHEMA: Final = "schema.json"
ITEMS: Final = "items.jsonl"
PROFILES: Final = "profiles.jsonl"
RULES: Final = "rules.json"
ITEM_EMBEDDINGS: Final = "models/item_embeddings.npy"
ITEM_POPULARITY: Final = "models/item_popularity.npy"
USER_EMBEDDINGS: Final = "models/user_embeddings.npy"
ITEM_NEIGHBORS: Final = "models/item_neighbors.npy"
ITEM_NEIGHBOR_SCORES: Final = "models/item_neighbor_scores.npy"
ITEM_DAILY_COUNTS: Final = "models/item_daily_counts.npy"
# Popularity within a scope: models/popularity/country-DE.npy, models/popularity/segment-vip.npy
POPULARITY_FILE: Final = re.compile(r"^models/popularity/(country|segment)-([A-Za-z0-9_.:-]{1,64})\.npy$")
MAX_DAILY_COUNT_DAYS: Final = 400
MAX_BUNDLE_VERSION: Final = 2**63 - 1
# Model arrays: 1-D or 2-D, each dimension at most this (item rows are int32 in the neighbor lists).
MAX_ARRAY_DIM: Final = 2**31 - 1
REQUIRED_FILES: Final = (SCHEMA, ITEMS, PROFILES, RULES, ITEM_EMBEDDINGS, ITEM_POPULARITY)
OPTIONAL_FILES: Final = (USER_EMBEDDINGS, ITEM_NEIGHBORS, ITEM_NEIGHBOR_SCORES, ITEM_DAILY_COUNTS)
KNOWN_FILES: Final = frozenset(REQUIRED_FILES + OPTIONAL_FILES)

PLAIN_PII_NAMES: Final = frozenset(
    {"email", "phone", "name", "first_name", "last_name", "address", "ip", "ip_address"}
)
FIELD_TYPES: Final = ("string", "number", "integer", "boolean", "string[]", "number[]")
MAX_ID_LEN: Final = 128
_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}")
_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_ITEM_KEYS: Final = frozenset({"id", "category", "tags", "price", "regions", "launch_date", "flags"})
_PROFILE_KEYS: Final = frozenset({"id", "attributes", "consent"})
_SCHEMA_FIELD_KEYS: Final = frozenset({"type", "purpose", "pii", "description"})
_HASH_CHUNK: Final = 1 << 20
_MAX_MS: Final = 2**63 - 1


class BundleError(Exception):
    """A bundle that is refused: `file` (relative to the bundle), `record`, `field` and `reason`."""

    def __init__(
        self, file: str, reason: str, *, record: str | None = None, field: str | None = None
    ) -> None:
        self.file = file
        self.record = record
        self.field = field
        self.reason = reason
        super().__init__(self._render())

    def _render(self) -> str:
        # Every part is cut to a bounded length: a message names a field of a hostile document (keys of
        # any length) and travels in a gRPC status, whose metadata is limited to a few KiB.
        text = f"bundle refused: {_cut(self.file, _MAX_PART)}"
        if self.record is not None:
            # "items.jsonl line 12 (...)", but "models/x.npy: row 40 (...)"
            text += (" " if self.record.startswith("line ") else ": ") + _cut(self.record, _MAX_PART)
        if self.field is not None:
            # a field inside a record is quoted; a dotted path in a whole-file document is not
            field = _cut(self.field, _MAX_PART)
            text += f': field "{field}"' if self.record is not None else f": {field}"
        return f"{text}: {_cut(self.reason, _MAX_REASON)}"

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes despite keyword arguments
        return (_rebuild_error, (self.file, self.reason, self.record, self.field))


_MAX_PART: Final = 300
_MAX_REASON: Final = 1000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rebuild_error(file: str, reason: str, record: str | None, field: str | None) -> BundleError:
    return BundleError(file, reason, record=record, field=field)


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    category: str
    tags: tuple[str, ...]
    price: float
    regions: tuple[str, ...]
    launch_date: str
    flags: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    attributes: dict[str, Any]
    consent: dict[str, int]


@dataclass(frozen=True, eq=False)
class Bundle:
    path: Path
    version: int
    manifest: dict[str, Any]
    schema: dict[str, Any]
    items: list[Item]
    profiles: list[Profile]
    rules_doc: dict[str, Any]
    rules: Ruleset
    item_embeddings: NDArray[np.float32]  # [n_items, dim], C-contiguous
    item_popularity: NDArray[np.float32]  # [n_items]
    user_embeddings: NDArray[np.float32] | None  # [n_profiles, dim]
    # co-purchase neighbors: row indexes into items (-1 = padding) and their scores (0 where padded)
    item_neighbors: NDArray[np.int32] | None = None  # [n_items, k]
    item_neighbor_scores: NDArray[np.float32] | None = None  # [n_items, k]
    # More model arrays by store name: "item_daily_counts" [n_items, days] (column -1 = the day
    # `daily_counts_end_ms` falls in); "item_popularity@country:DE", "item_popularity@segment:<id>".
    extra_models: dict[str, NDArray[np.float32]] = field(default_factory=dict)
    daily_counts_end_ms: int = 0

    @property
    def dim(self) -> int:
        """Embedding dimension shared by item and user embeddings."""
        return int(self.item_embeddings.shape[1])


# --------------------------------------------------------------------------------------------------
# small helpers


def _show(value: Any, limit: int = 60) -> str:
    """A JSON-ish rendering of a bad value for messages (NaN stays NaN), cut to `limit` chars."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        try:
            text = repr(value)
        except ValueError:  # an integer over 4,300 digits
            text = f"<{_type_name(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    """A finite float, or an integer the store can hold (json.loads makes integers of any size)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and int_in_range(value)


def _line_record(line_no: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"line {line_no} (id {_show(rid)})" if isinstance(rid, str) else f"line {line_no}"


def _id_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {_type_name(value)}"
    if not _ID_RE.fullmatch(value):
        return f"must be 1..{MAX_ID_LEN} characters of [A-Za-z0-9_.:-], got {_show(value)}"
    return None


def _unreadable(name: str, err: OSError) -> BundleError:
    """A file that cannot be read (the OS's reason, without the path: messages name bundle files only)."""
    return BundleError(name, f"cannot read: {err.strerror or type(err).__name__}")


def _too_deep(name: str, text: str, offset: int, line_no: int | None = None) -> BundleError:
    """The refusal of a JSON text nesting deeper than MAX_DEPTH at `offset` (before it is parsed)."""
    line_start = text.rfind("\n", 0, offset) + 1
    if line_no is None:
        line_no = text.count("\n", 0, offset) + 1
    return BundleError(
        name,
        f"nested deeper than {MAX_DEPTH} levels of objects and arrays (column {offset - line_start + 1})",
        record=f"line {line_no}",
    )


def _parse_json(name: str, text: str, line_no: int | None = None) -> Any:
    """`json.loads(text)` for a whole document (`line_no` None) or one line of a JSON-lines file: the
    nesting checked first (json.loads recurses per level), every parse error a BundleError."""
    offset = text_too_deep(text)
    if offset is not None:
        raise _too_deep(name, text, offset, line_no)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BundleError(
            name,
            f"invalid JSON: {err.msg} (column {err.colno})",
            record=f"line {err.lineno if line_no is None else line_no}",
        ) from None
    except ValueError as err:  # e.g. an integer of more than 4,300 digits
        where = None if line_no is None else f"line {line_no}"
        raise BundleError(name, f"invalid JSON: {err}", record=where) from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_text(root: Path, name: str) -> str:
    try:
        data = (root / name).read_bytes()
    except OSError as err:
        raise _unreadable(name, err) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data.count(b"\n", 0, err.start) + 1
        raise BundleError(name, "not valid UTF-8", record=f"line {line_no}") from None


def _read_json_doc(root: Path, name: str) -> dict[str, Any]:
    doc = _parse_json(name, _read_text(root, name))
    if not isinstance(doc, dict):
        raise BundleError(name, f"must be a JSON object, got {_type_name(doc)}")
    return doc


def _iter_jsonl(root: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each line; refuse blank lines, bad JSON and non-objects."""
    text = _read_text(root, name)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            raise BundleError(name, "empty line (one JSON object per line)", record=f"line {line_no}")
        record = _parse_json(name, line, line_no)
        if not isinstance(record, dict):
            raise BundleError(
                name, f"must be a JSON object, got {_type_name(record)}", record=f"line {line_no}"
            )
        yield line_no, record


# --------------------------------------------------------------------------------------------------
# manifest and files


def _check_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise BundleError(str(root), "not a directory")
    if not (root / MANIFEST).is_file():
        raise BundleError(MANIFEST, f"missing: {root} is not an edgewise bundle")
    manifest = _read_json_doc(root, MANIFEST)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            MANIFEST, f"must be {_show(BUNDLE_FORMAT)}, got {_show(manifest.get('format'))}", field="format"
        )
    fmt_version = manifest.get("format_version")
    if fmt_version != FORMAT_VERSION or isinstance(fmt_version, bool):
        raise BundleError(
            MANIFEST,
            f"unsupported format version {_show(fmt_version)} (this edgewise reads {FORMAT_VERSION})",
            field="format_version",
        )
    version = manifest.get("bundle_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_BUNDLE_VERSION:
        raise BundleError(
            MANIFEST,
            f"must be an integer in [1, 2**63 - 1], got {_show(version)}",
            field="bundle_version",
        )
    for key in ("created_at", "generator"):
        if key in manifest and not isinstance(manifest[key], str):
            raise BundleError(MANIFEST, f"must be a string, got {_type_name(manifest[key])}", field=key)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(MANIFEST, f"must be an object, got {_type_name(files)}", field="files")
    for name, entry in files.items():
        _check_manifest_entry(name, entry)
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(MANIFEST, f"required file {_show(name)} is not listed", field="files")
    return manifest


def _check_manifest_entry(name: str, entry: Any) -> None:
    path = f"files.{name}"
    if name not in KNOWN_FILES and not POPULARITY_FILE.match(name):
        known = ", ".join(sorted(KNOWN_FILES)) + ", models/popularity/{country|segment}-<key>.npy"
        raise BundleError(MANIFEST, f"not a bundle file (known files: {known})", field=path)
    if not isinstance(entry, dict):
        raise BundleError(MANIFEST, f"must be an object, got {_type_name(entry)}", field=path)
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        raise BundleError(
            MANIFEST, f"must be 64 lowercase hex digits, got {_show(sha)}", field=f"{path}.sha256"
        )
    size = entry.get("bytes")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BundleError(MANIFEST, f"must be an integer >= 0, got {_show(size)}", field=f"{path}.bytes")


def _check_files(root: Path, files: Mapping[str, Any]) -> None:
    """Every listed file present with its size and checksum; no unlisted (non-hidden) file."""
    for name, entry in files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(name, "listed in manifest.json but missing from the bundle")
        try:
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise BundleError(
                    name, f"size mismatch: file has {size} bytes, manifest.json says {entry['bytes']}"
                )
            sha = sha256_file(path)
        except OSError as err:
            raise _unreadable(name, err) from None
        if sha != entry["sha256"]:
            raise BundleError(
                name, f"checksum mismatch: file has sha256 {sha}, manifest.json says {entry['sha256']}"
            )
    for name in bundle_dir_files(root):
        if name != MANIFEST and name not in files:
            raise BundleError(name, "file present in the bundle but not listed in manifest.json")


def bundle_dir_files(root: Path) -> list[str]:
    """Relative posix paths of the regular files under `root`, skipping hidden files and folders."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for filename in sorted(filenames):
            if not filename.startswith("."):
                found.append((rel_dir / filename).as_posix())
    return found


# --------------------------------------------------------------------------------------------------
# schema.json


def _check_schema(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    problem = find_problem(doc)
    if problem is not None:
        raise BundleError(SCHEMA, problem[1], field=problem[0] or None)
    for key in doc:
        if key != "profile_fields":
            raise BundleError(SCHEMA, "unknown field (allowed: profile_fields)", field=key)
    fields = doc.get("profile_fields")
    if not isinstance(fields, dict):
        raise BundleError(SCHEMA, f"must be an object, got {_type_name(fields)}", field="profile_fields")
    for name, spec in fields.items():
        path = f"profile_fields.{name}"
        if not _ID_RE.fullmatch(name):
            raise BundleError(SCHEMA, "field names must be 1..128 characters of [A-Za-z0-9_.:-]", field=path)
        if not isinstance(spec, dict):
            raise BundleError(SCHEMA, f"must be an object, got {_type_name(spec)}", field=path)
        for key in spec:
            if key not in _SCHEMA_FIELD_KEYS:
                allowed = ", ".join(sorted(_SCHEMA_FIELD_KEYS))
                raise BundleError(SCHEMA, f"unknown field (allowed: {allowed})", field=f"{path}.{key}")
        if spec.get("type") not in FIELD_TYPES:
            raise BundleError(
                SCHEMA,
                f"unknown type {_show(spec.get('type'))} (known: {', '.join(FIELD_TYPES)})",
                field=f"{path}.type",
            )
        purpose = spec.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            raise BundleError(
                SCHEMA, f"must be a non-empty consent purpose, got {_show(purpose)}", field=f"{path}.purpose"
            )
        if "pii" in spec and not isinstance(spec["pii"], bool):
            raise BundleError(SCHEMA, f"must be true or false, got {_show(spec['pii'])}", field=f"{path}.pii")
    return fields


# --------------------------------------------------------------------------------------------------
# items.jsonl


def _load_items(root: Path) -> list[Item]:
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line_no, record in _iter_jsonl(root, ITEMS):
        item = _check_item(line_no, record)
        first = seen.setdefault(item.id, line_no)
        if first != line_no:
            raise BundleError(
                ITEMS,
                f"duplicate id (first on line {first})",
                record=_line_record(line_no, record),
                field="id",
            )
        items.append(item)
    return items


def _check_item(line_no: int, record: dict[str, Any]) -> Item:
    where = _line_record(line_no, record)

    def refuse(field: str, reason: str) -> BundleError:
        return BundleError(ITEMS, reason, record=where, field=field)

    for key in record:
        if key not in _ITEM_KEYS:
            raise refuse(key, f"unknown field (allowed: {', '.join(sorted(_ITEM_KEYS))})")
    item_id = record.get("id")
    problem = _id_problem(item_id)
    if problem is not None:
        raise refuse("id", problem)
    category = record.get("category")
    if not isinstance(category, str) or not category or any(not part for part in category.split("/")):
        raise refuse("category", f'must be a "/"-separated path like "fashion/shoes", got {_show(category)}')
    price: Any = record.get("price")
    if not _is_finite_number(price) or price < 0:
        raise refuse("price", f"must be a finite number >= 0, got {_show(price)}")
    regions = _check_regions(record.get("regions"), refuse)
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
        raise refuse("tags", f"must be a list of non-empty strings, got {_show(tags)}")
    launch_date = record.get("launch_date", "")
    if launch_date != "" and not _is_iso_date(launch_date):
        raise refuse("launch_date", f"must be an ISO date YYYY-MM-DD, got {_show(launch_date)}")
    flags = record.get("flags", {})
    if not isinstance(flags, dict):
        raise refuse("flags", f"must be an object, got {_type_name(flags)}")
    flags_problem = find_problem(flags)  # free JSON, stored as msgpack: integers the store can hold
    if flags_problem is not None:
        raise refuse(join_path("flags", flags_problem[0]), flags_problem[1])
    return Item(item_id, category, tuple(tags), float(price), regions, launch_date, flags)  # type: ignore[arg-type]


def _check_regions(regions: Any, refuse: Callable[[str, str], BundleError]) -> tuple[str, ...]:
    if not isinstance(regions, list) or not regions:
        raise refuse("regions", f'must be a non-empty list of country codes or ["*"], got {_show(regions)}')
    if regions == ["*"]:
        return ("*",)
    for region in regions:
        if region == "*":
            raise refuse("regions", '"*" (everywhere) must be the only entry')
        if not isinstance(region, str) or not _COUNTRY_RE.fullmatch(region):
            raise refuse("regions", f"must hold ISO 3166-1 alpha-2 codes like DE, got {_show(region)}")
    return tuple(regions)


def _is_iso_date(value: Any) -> bool:
    if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# profiles.jsonl


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return _is_finite_number(value)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and int_in_range(value)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string[]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "number[]":
        return isinstance(value, list) and all(_is_finite_number(v) for v in value)
    return False


_TYPE_WORDS: Final = {
    "string": "a string",
    "number": "a finite number",
    "integer": "an integer in [-2**63, 2**64 - 1]",
    "boolean": "true or false",
    "string[]": "a list of strings",
    "number[]": "a list of finite numbers",
}


def _load_profiles(root: Path, fields: Mapping[str, Mapping[str, Any]]) -> list[Profile]:
    kinds = {name: spec["type"] for name, spec in fields.items()}
    pii = frozenset(name for name, spec in fields.items() if spec.get("pii") is True)
    profiles: list[Profile] = []
    seen: dict[str, int] = {}
    for line_no, record in _iter_jsonl(root, PROFILES):
        profile = _check_profile(line_no, record, kinds, pii)
        first = seen.setdefault(profile.id, line_no)
        if first != line_no:
            raise BundleError(
                PROFILES,
                f"duplicate id (first on line {first})",
                record=_line_record(line_no, record),
                field="id",
            )
        profiles.append(profile)
    return profiles


def _check_profile(
    line_no: int, record: dict[str, Any], kinds: Mapping[str, str], pii: frozenset[str]
) -> Profile:
    def refuse(field: str, reason: str) -> BundleError:
        return BundleError(PROFILES, reason, record=_line_record(line_no, record), field=field)

    for key in record:
        if key not in _PROFILE_KEYS:
            raise refuse(key, f"unknown field (allowed: {', '.join(sorted(_PROFILE_KEYS))})")
    profile_id = record.get("id")
    problem = _id_problem(profile_id)
    if problem is not None:
        raise refuse("id", problem)
    attributes = record.get("attributes", {})
    if not isinstance(attributes, dict):
        raise refuse("attributes", f"must be an object, got {_type_name(attributes)}")
    for name, value in attributes.items():
        if name in pii:
            raise refuse(
                f"attributes.{name}", "PII-marked field (declared pii in schema.json) may not be carried"
            )
        if name.lower() in PLAIN_PII_NAMES:
            raise refuse(f"attributes.{name}", "personal data (PII) may not be carried in a bundle")
        kind = kinds.get(name)
        if kind is None:
            raise refuse(
                f"attributes.{name}", "undeclared attribute (declare it in schema.json profile_fields)"
            )
        if not _type_ok(kind, value):
            raise refuse(f"attributes.{name}", f"must be {_TYPE_WORDS[kind]} ({kind}), got {_show(value)}")
    consent = record.get("consent", {})
    if not isinstance(consent, dict):
        raise refuse(
            "consent", f"must be an object of purpose -> grant time (Unix ms), got {_type_name(consent)}"
        )
    for purpose, granted in consent.items():
        if isinstance(granted, bool) or not isinstance(granted, int) or not 0 <= granted <= _MAX_MS:
            raise refuse(
                f"consent.{purpose}",
                f"must be a grant time in Unix ms (integer in [0, 2**63 - 1]), got {_show(granted)}",
            )
    return Profile(profile_id, attributes, consent)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# models/*.npy


_DTYPE_WORDS: Final = {"<f4": "little-endian float32 ('<f4')", "<i4": "little-endian int32 ('<i4')"}


def _load_npy(root: Path, name: str, want: str = "<f4") -> NDArray[Any]:
    """Read a C-order .npy file (format 1.0/2.0) of dtype `want` ('<f4' or '<i4'), never unpickling.

    The header's shape is checked before anything is allocated: 1-D or 2-D, every dimension in
    [0, MAX_ARRAY_DIM], and exactly the data the file holds after its header (a header that declares
    more, e.g. shape (2000, 10**9) over a small file, is refused, never read)."""
    try:
        fh = (root / name).open("rb")
    except OSError as err:
        raise _unreadable(name, err) from None
    with fh:
        try:
            major, minor = np.lib.format.read_magic(fh)
            if (major, minor) == (1, 0):
                shape, fortran_order, found = np.lib.format.read_array_header_1_0(fh)
            elif (major, minor) == (2, 0):
                shape, fortran_order, found = np.lib.format.read_array_header_2_0(fh)
            else:
                raise BundleError(name, f"unsupported .npy format version {major}.{minor} (need 1.0 or 2.0)")
        except (ValueError, EOFError, SyntaxError) as err:
            raise BundleError(name, f"not a valid .npy file: {err}") from None
        except OSError as err:
            raise _unreadable(name, err) from None
        if found.str != want:
            raise BundleError(name, f"dtype must be {_DTYPE_WORDS[want]}, got {found.str!r}")
        if fortran_order and len(shape) > 1:
            raise BundleError(name, "array must be stored in C order, not Fortran order")
        _check_npy_shape(name, shape)
        data_bytes = os.fstat(fh.fileno()).st_size - fh.tell()
        count = math.prod(shape)
        want_bytes = count * found.itemsize
        if want_bytes > data_bytes:
            raise BundleError(
                name,
                f"the header declares shape {shape}, {want_bytes} bytes of data, but the file holds "
                f"{data_bytes} bytes after its header (truncated, or a wrong header)",
            )
        if want_bytes < data_bytes:
            raise BundleError(
                name, f"trailing bytes after the {shape} array ({data_bytes - want_bytes} bytes)"
            )
        try:
            data = np.fromfile(fh, dtype=want, count=count)
        except OSError as err:
            raise _unreadable(name, err) from None
        if data.size != count:  # the file shrank while it was read
            raise BundleError(name, f"truncated: header says shape {shape}, file holds {data.size} values")
    native = np.float32 if want == "<f4" else np.int32
    return data.astype(native, copy=False).reshape(shape)


def _check_npy_shape(name: str, shape: tuple[int, ...]) -> None:
    if not 1 <= len(shape) <= 2:
        raise BundleError(name, f"must be a 1-D or 2-D array, the header declares shape {shape}")
    for axis, size in enumerate(shape):
        if not 0 <= size <= MAX_ARRAY_DIM:
            raise BundleError(
                name,
                f"dimension {axis} of the declared shape {shape} must be in [0, {MAX_ARRAY_DIM}]",
            )


def _first_bad_row(array: NDArray[np.float32]) -> int | None:
    """Index of the first row holding NaN or inf, or None (vectorized; rows are found only on failure)."""
    finite = np.isfinite(array)
    if finite.all():
        return None
    row_ok = finite if finite.ndim == 1 else finite.all(axis=1)
    return int(np.argmin(row_ok))


def _check_vectors(name: str, array: NDArray[np.float32], ids: list[str], kind: str) -> None:
    row = _first_bad_row(array)
    if row is not None:
        what = "NaN" if np.isnan(array[row]).any() else "infinite value"
        raise BundleError(name, f"{what} in vector", record=f"row {row} ({kind} {_show(ids[row])})")


def _load_neighbors(
    root: Path, files: Mapping[str, Any], item_ids: list[str]
) -> tuple[NDArray[np.int32] | None, NDArray[np.float32] | None]:
    """The optional co-purchase neighbor lists: both files or neither, checked row by row."""
    has_rows, has_scores = ITEM_NEIGHBORS in files, ITEM_NEIGHBOR_SCORES in files
    if not has_rows and not has_scores:
        return None, None
    if has_rows != has_scores:
        present, absent = (
            (ITEM_NEIGHBORS, ITEM_NEIGHBOR_SCORES) if has_rows else (ITEM_NEIGHBOR_SCORES, ITEM_NEIGHBORS)
        )
        raise BundleError(present, f"comes with {absent}, which the bundle lacks (both or neither)")
    n_items = len(item_ids)
    neighbors = _load_npy(root, ITEM_NEIGHBORS, "<i4")
    if neighbors.ndim != 2 or neighbors.shape[0] != n_items or neighbors.shape[1] < 1:
        raise BundleError(
            ITEM_NEIGHBORS,
            f"shape must be [{n_items} items, k >= 1] (one row per line of {ITEMS}), "
            f"got {list(neighbors.shape)}",
        )
    scores = _load_npy(root, ITEM_NEIGHBOR_SCORES)
    if scores.shape != neighbors.shape:
        raise BundleError(
            ITEM_NEIGHBOR_SCORES,
            f"shape must match {ITEM_NEIGHBORS}'s {list(neighbors.shape)}, got {list(scores.shape)}",
        )

    def first(bad: NDArray[np.bool_]) -> tuple[int, int] | None:
        if not bad.any():
            return None
        row, col = np.unravel_index(int(np.argmax(bad)), bad.shape)
        return int(row), int(col)

    def where(row: int) -> str:
        return f"row {row} (item {_show(item_ids[row])})"

    padded = neighbors == -1
    hit = first((neighbors < -1) | (neighbors >= n_items))
    if hit is not None:
        raise BundleError(
            ITEM_NEIGHBORS,
            f"neighbor {hit[1]}: {int(neighbors[hit])} is not an item row in [0, {n_items}) nor -1 (padding)",
            record=where(hit[0]),
        )
    hit = first(neighbors == np.arange(n_items, dtype=np.int32)[:, None])
    if hit is not None:
        raise BundleError(
            ITEM_NEIGHBORS, f"neighbor {hit[1]}: an item is not its own neighbor", record=where(hit[0])
        )
    hit = first(padded[:, :-1] & ~padded[:, 1:])
    if hit is not None:
        raise BundleError(
            ITEM_NEIGHBORS,
            f"neighbor {hit[1] + 1} follows padding (-1 only at the end of a row)",
            record=where(hit[0]),
        )
    ordered = np.sort(neighbors, axis=1)
    hit = first((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0))
    if hit is not None:
        raise BundleError(
            ITEM_NEIGHBORS, f"duplicate neighbor {int(ordered[hit[0], hit[1]])}", record=where(hit[0])
        )
    hit = first(~np.isfinite(scores))
    if hit is not None:
        raise BundleError(
            ITEM_NEIGHBOR_SCORES,
            f"score {hit[1]}: must be finite, got {float(scores[hit])}",
            record=where(hit[0]),
        )
    hit = first(padded & (scores != 0))
    if hit is not None:
        raise BundleError(
            ITEM_NEIGHBOR_SCORES,
            f"score {hit[1]}: must be 0 where {ITEM_NEIGHBORS} is -1 (padding), got {float(scores[hit])}",
            record=where(hit[0]),
        )
    return np.ascontiguousarray(neighbors), np.ascontiguousarray(scores)


def _load_models(
    root: Path, files: Mapping[str, Any], items: list[Item], profiles: list[Profile]
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32] | None]:
    item_ids = [item.id for item in items]
    item_emb = _load_npy(root, ITEM_EMBEDDINGS)
    if item_emb.ndim != 2 or item_emb.shape[0] != len(items) or item_emb.shape[1] < 1:
        raise BundleError(
            ITEM_EMBEDDINGS,
            f"shape must be [{len(items)} items, dim >= 1] (one row per line of {ITEMS}), "
            f"got {list(item_emb.shape)}",
        )
    _check_vectors(ITEM_EMBEDDINGS, item_emb, item_ids, "item")

    popularity = _load_npy(root, ITEM_POPULARITY)
    if popularity.shape != (len(items),):
        raise BundleError(
            ITEM_POPULARITY,
            f"shape must be [{len(items)}] (one value per line of {ITEMS}), got {list(popularity.shape)}",
        )
    bad = ~(np.isfinite(popularity) & (popularity >= 0))
    if bad.any():
        row = int(np.argmax(bad))
        raise BundleError(
            ITEM_POPULARITY,
            f"popularity must be a finite number >= 0, got {float(popularity[row])}",
            record=f"row {row} (item {_show(item_ids[row])})",
        )

    user_emb = None
    if USER_EMBEDDINGS in files:
        user_emb = _load_npy(root, USER_EMBEDDINGS)
        if user_emb.ndim != 2 or user_emb.shape[0] != len(profiles):
            raise BundleError(
                USER_EMBEDDINGS,
                f"shape must be [{len(profiles)} profiles, dim] (one row per line of "
                f"{PROFILES}), got {list(user_emb.shape)}",
            )
        if user_emb.shape[1] != item_emb.shape[1]:
            raise BundleError(
                USER_EMBEDDINGS,
                f"dim {user_emb.shape[1]} differs from the item embeddings' dim {item_emb.shape[1]}",
            )
        _check_vectors(USER_EMBEDDINGS, user_emb, [p.id for p in profiles], "profile")
    return np.ascontiguousarray(item_emb), np.ascontiguousarray(popularity), user_emb


def _nonnegative(name: str, array: NDArray[np.float32], item_ids: list[str]) -> None:
    bad = ~(np.isfinite(array) & (array >= 0))
    if bad.any():
        row = int(np.argmax(bad.any(axis=1))) if bad.ndim == 2 else int(np.argmax(bad))
        raise BundleError(
            name, "values must be finite numbers >= 0", record=f"row {row} (item {_show(item_ids[row])})"
        )


def _load_extra_models(
    root: Path, manifest: Mapping[str, Any], items: list[Item], rules: Ruleset
) -> tuple[dict[str, NDArray[np.float32]], int]:
    """Optional arrays: daily counts (trending) and popularity per country or segment."""
    files: Mapping[str, Any] = manifest["files"]
    item_ids = [item.id for item in items]
    extra: dict[str, NDArray[np.float32]] = {}
    end_ms = 0
    if ITEM_DAILY_COUNTS in files:
        counts = _load_npy(root, ITEM_DAILY_COUNTS)
        if (
            counts.ndim != 2
            or counts.shape[0] != len(items)
            or not 1 <= counts.shape[1] <= MAX_DAILY_COUNT_DAYS
        ):
            raise BundleError(
                ITEM_DAILY_COUNTS,
                f"shape must be [{len(items)} items, days in 1..{MAX_DAILY_COUNT_DAYS}], "
                f"got {list(counts.shape)}",
            )
        _nonnegative(ITEM_DAILY_COUNTS, counts, item_ids)
        raw_end = manifest.get("daily_counts_end") or str(manifest.get("created_at", ""))[:10]
        try:
            end = date.fromisoformat(str(raw_end))
        except ValueError:
            raise BundleError(
                MANIFEST, f"must be an ISO date (YYYY-MM-DD), got {_show(raw_end)}", field="daily_counts_end"
            ) from None
        end_ms = int(datetime(end.year, end.month, end.day, tzinfo=UTC).timestamp() * 1000)
        extra["item_daily_counts"] = np.ascontiguousarray(counts)
    for name in sorted(files):
        match = POPULARITY_FILE.match(name)
        if match is None:
            continue
        kind, key = match.groups()
        if kind == "segment" and key not in rules.segments:
            raise BundleError(
                name, f"popularity for unknown segment {_show(key)} (not in rules.json segments)"
            )
        array = _load_npy(root, name)
        if array.shape != (len(items),):
            raise BundleError(
                name, f"shape must be [{len(items)}] (one value per item), got {list(array.shape)}"
            )
        _nonnegative(name, array, item_ids)
        extra[f"item_popularity@{kind}:{key}"] = np.ascontiguousarray(array)
    return extra, end_ms


# --------------------------------------------------------------------------------------------------
# public API


def load_bundle(path: str | Path) -> Bundle:
    """Validate every file of the bundle at `path` and return it; raise BundleError on the first problem."""
    root = Path(path)
    manifest = _check_manifest(root)
    files: dict[str, Any] = manifest["files"]
    _check_files(root, files)
    schema = _read_json_doc(root, SCHEMA)
    fields = _check_schema(schema)
    items = _load_items(root)
    profiles = _load_profiles(root, fields)
    rules_doc = _read_json_doc(root, RULES)
    try:
        rules = compile_rules(rules_doc)
    except RuleError as err:
        raise BundleError(RULES, err.reason, field=err.path) from None
    item_emb, popularity, user_emb = _load_models(root, files, items, profiles)
    neighbors, neighbor_scores = _load_neighbors(root, files, [item.id for item in items])
    extra, daily_end_ms = _load_extra_models(root, manifest, items, rules)
    return Bundle(
        path=root,
        version=manifest["bundle_version"],
        manifest=manifest,
        schema=schema,
        items=items,
        profiles=profiles,
        rules_doc=rules_doc,
        rules=rules,
        item_embeddings=item_emb,
        item_popularity=popularity,
        user_embeddings=user_emb,
        item_neighbors=neighbors,
        item_neighbor_scores=neighbor_scores,
        extra_models=extra,
        daily_counts_end_ms=daily_end_ms,
    )


def bundle_summary(bundle: Bundle) -> dict[str, Any]:
    """JSON-ready overview of a loaded bundle (for `edgewise bundle validate`)."""
    consented = sum(1 for p in bundle.profiles if "personalization" in p.consent)
    return {
        "path": str(bundle.path),
        "version": bundle.version,
        "created_at": bundle.manifest.get("created_at", ""),
        "generator": bundle.manifest.get("generator", ""),
        "items": len(bundle.items),
        "profiles": len(bundle.profiles),
        "profiles_with_personalization_consent": consented,
        "categories": len({item.category for item in bundle.items}),
        "dim": bundle.dim,
        "user_embeddings": bundle.user_embeddings is not None,
        "item_neighbors": 0 if bundle.item_neighbors is None else int(bundle.item_neighbors.shape[1]),
        "profile_fields": sorted(bundle.schema["profile_fields"]),
        "placements": {
            pid: {"kind": p.kind, "campaigns": [c.id for c in p.campaigns]}
            for pid, p in bundle.rules.placements.items()
        },
        "segments": list(bundle.rules.segments.ids),
        "experiments": {
            eid: {"variants": {v.id: round(v.propensity, 4) for v in exp.variants}}
            for eid, exp in bundle.rules.experiments.items()
        },
        "bandits": sorted(bundle.rules.bandits),
        "bytes": sum(int(entry["bytes"]) for entry in bundle.manifest["files"].values()),
    }
