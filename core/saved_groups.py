"""Saved groups: named id lists of a rules version (`"saved_groups"` in rules.json), referenced by the
condition operators `$inGroup` / `$notInGroup` (docs/rules.md, "Saved groups").

    "saved_groups": {
        "crm_vips": {"description": "CRM export", "values": ["c-1001", "c-1002", ...]},
        "beta_testers": {"values": [17, 42]}
    }

Members are strings and finite numbers (1 and 1.0 are the same member, "1" is another). A group is
compiled once per rules version into a `MemberIndex`, a hash set: a request's lookup is one hash probe,
never a pass over the list and never a decode.

Storage: one record per member in the `rules` namespace, key `group/<group id>/<typed member>` (`s` +
the string, or `n` + the number as JavaScript writes it), value `MEMBER_VALUE`; the stored rules document
keeps each group's declaration without its `values` (`declarations`). A delta line adds or removes
members (`{"op": "upsert" | "delete", "saved_group": "<id>", "values": [...]}`, sync/changes.py): the
change log and the edges get one small record per member changed, never the list again.

Each group with members also has a summary record, key `groupsum/<group id>`: its member count and the
sum (mod 2**64) of a 64-bit hash of each member's key, kept up to date incrementally by whoever writes
member records. A worker reads the summaries of every version (a few bytes each) and reads a group's
members (one cursor pass over its prefix) only when its summary changed: a commit that leaves a group
alone costs that group nothing (`GroupCache`).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import msgpack

from edgewise.core.conditions import ConditionError, json_type
from edgewise.core.js_values import js_number_to_string

__all__ = [
    "GROUP_ID",
    "GROUP_PREFIX",
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MEMBER_VALUE",
    "SUMMARY_PREFIX",
    "GroupCache",
    "MemberIndex",
    "Summary",
    "check_member",
    "compile_saved_groups",
    "declarations",
    "member_hash",
    "member_key",
    "pack_summary",
    "parse_member_key",
    "summarize",
    "unpack_summary",
]

GROUP_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
GROUP_PREFIX: Final = "group/"
"""Keys of member records in the `rules` namespace start with this."""
MEMBER_VALUE: Final = b"\x01"
SUMMARY_PREFIX: Final = "groupsum/"
"""Key prefix of the per-group summary records (`groupsum/<group id>`) in the `rules` namespace."""
Summary = tuple[int, int]
"""(member count, sum of `member_hash` of every member key mod 2**64): changes whenever the members do."""
MAX_MEMBERS: Final = 10_000_000
"""Members one group may hold."""
MAX_MEMBER_BYTES: Final = 256
"""UTF-8 bytes of a string member (its record key must fit LMDB's 511-byte key limit)."""
_FIELDS: Final = ("values", "description")


def check_member(value: Any) -> str | None:
    """Why `value` cannot be a member (None: it can)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"members are strings or numbers, got {json_type(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"numbers must be finite, got {value!r}"
    if isinstance(value, int) and not -(2**53) <= value <= 2**53:
        return f"integers must be within +-2**53 (exact as a JavaScript number), got {value}"
    if isinstance(value, str):
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return "string members must be valid Unicode (no lone surrogates)"
        if size > MAX_MEMBER_BYTES:
            return f"string members are at most {MAX_MEMBER_BYTES} UTF-8 bytes"
    return None


def member_key(group_id: str, value: str | int | float) -> str:
    """The record key of one member (checked with `check_member` first)."""
    typed = "s" + value if isinstance(value, str) else "n" + js_number_to_string(value)
    return f"{GROUP_PREFIX}{group_id}/{typed}"


def member_hash(key: str) -> int:
    """A member record key's 64-bit hash (BLAKE2b): the summary adds it for a member, subtracts it for one
    removed."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def summarize(keys: Iterable[str]) -> Summary:
    """The summary of a group whose member record keys are `keys` (distinct)."""
    count = total = 0
    for key in keys:
        count += 1
        total = (total + member_hash(key)) & 0xFFFFFFFFFFFFFFFF
    return count, total


def pack_summary(summary: Summary) -> bytes:
    return bytes(msgpack.packb(list(summary)))


def unpack_summary(raw: bytes | memoryview | None) -> Summary:
    """A summary record's (count, total); an absent record is an empty group."""
    if raw is None:
        return 0, 0
    count, total = msgpack.unpackb(bytes(raw))
    return int(count), int(total)


def parse_member_key(key: str) -> tuple[str, str | float] | None:
    """(group id, member) of a member record's key, or None for any other key of the namespace."""
    if not key.startswith(GROUP_PREFIX):
        return None
    group_id, sep, typed = key[len(GROUP_PREFIX) :].partition("/")
    if not sep or not typed or typed[0] not in "sn":
        return None
    return group_id, typed[1:] if typed[0] == "s" else float(typed[1:])


def declarations(rules_doc: Any) -> Any:
    """The rules document as stored: each saved group's declaration without its `values` (those become
    member records). Anything that is not a rules document with saved groups comes back unchanged."""
    if not isinstance(rules_doc, dict) or not isinstance(rules_doc.get("saved_groups"), dict):
        return rules_doc
    groups = {
        gid: {k: v for k, v in body.items() if k != "values"} if isinstance(body, dict) else body
        for gid, body in rules_doc["saved_groups"].items()
    }
    return {**rules_doc, "saved_groups": groups}


def inline_members(rules_doc: Any) -> dict[str, list[Any]]:
    """Each saved group's inline `values` (a bundle's rules.json): group id -> members."""
    groups = rules_doc.get("saved_groups") if isinstance(rules_doc, dict) else None
    if not isinstance(groups, dict):
        return {}
    return {
        gid: body["values"]
        for gid, body in groups.items()
        if isinstance(body, dict) and isinstance(body.get("values"), list)
    }


class MemberIndex:
    """One saved group's members, for `$inGroup` (implements `conditions.GroupMembership`).

    A frozenset holding the strings as they are and the numbers as floats: a string never equals a
    number in Python, 1 == 1.0 hash alike, and booleans are turned away before the probe (True == 1)."""

    __slots__ = ("contains", "members")

    def __init__(self, members: frozenset[str | float]) -> None:
        self.members = members
        has = members.__contains__

        def contains(value: Any) -> bool:
            cls = value.__class__
            if cls is str or cls is float or cls is int:
                return has(value)
            return False

        self.contains = contains

    @classmethod
    def build(cls, values: Iterable[Any]) -> MemberIndex:
        """From a list of members (anything that cannot be one, e.g. a boolean, is skipped)."""
        return cls(
            frozenset(v if isinstance(v, str) else float(v) for v in values if check_member(v) is None)
        )

    def __len__(self) -> int:
        return len(self.members)


def compile_saved_groups(doc: Any, stored: Mapping[str, MemberIndex] | None = None) -> dict[str, MemberIndex]:
    """The `saved_groups` object of a rules document, checked; ConditionError names the bad field.

    A group's members are its inline `values` (a bundle's rules.json) and its `stored` members (member
    records, read by the worker); stored members of a group the document does not declare are refused."""
    stored = stored or {}
    for gid in stored:
        if not isinstance(doc, dict) or gid not in doc:
            raise ConditionError(
                f"saved_groups.{gid}", "members are stored for a group the rules do not declare"
            )
    if not isinstance(doc, dict):
        raise ConditionError("saved_groups", f"must be an object of group id -> group, got {json_type(doc)}")
    groups: dict[str, MemberIndex] = {}
    for gid, body in doc.items():
        path = f"saved_groups.{gid}"
        if not isinstance(gid, str) or not GROUP_ID.fullmatch(gid):
            raise ConditionError(
                path, f"invalid saved group id {gid!r}: use 1 to 64 characters of A-Z a-z 0-9 _ . : -"
            )
        if not isinstance(body, dict):
            raise ConditionError(path, f"must be an object with values, got {json_type(body)}")
        for key in body:
            if key not in _FIELDS:
                raise ConditionError(f"{path}.{key}", f"unknown field (allowed: {', '.join(_FIELDS)})")
        values = body.get("values", [])
        if not isinstance(values, list):
            raise ConditionError(f"{path}.values", f"must be a list of ids, got {json_type(values)}")
        if len(values) > MAX_MEMBERS:
            raise ConditionError(f"{path}.values", f"{len(values)} members; at most {MAX_MEMBERS}")
        for i, value in enumerate(values):
            problem = check_member(value)
            if problem is not None:
                raise ConditionError(f"{path}.values[{i}]", problem)
        if not isinstance(body.get("description", ""), str):
            raise ConditionError(f"{path}.description", "must be a string")
        index = stored.get(gid)
        if index is None:
            groups[gid] = MemberIndex.build(values)
        elif values:
            groups[gid] = MemberIndex(index.members | MemberIndex.build(values).members)
        else:
            groups[gid] = index
    return groups


class GroupCache:
    """A worker's saved groups across rules versions: each group's `MemberIndex` with the summary it was
    built for, reused while the stored summary is the same (thread-safe; one per process)."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[Summary, MemberIndex]] = {}
        self._lock = threading.Lock()

    def groups(
        self, summaries: Mapping[str, Summary], read_members: Callable[[str], Iterable[str | float]]
    ) -> dict[str, MemberIndex]:
        """The index of every group of `summaries`, reading (`read_members(group id)`) only those whose
        summary differs from the one their cached index was built for; groups gone are forgotten."""
        with self._lock:
            out: dict[str, MemberIndex] = {}
            for gid, summary in summaries.items():
                cached = self._built.get(gid)
                if cached is None or cached[0] != summary:
                    cached = summary, MemberIndex.build(read_members(gid))
                out[gid] = cached[1]
            self._built = {gid: (summaries[gid], index) for gid, index in out.items()}
            return out


def group_sizes(groups: Mapping[str, MemberIndex]) -> dict[str, int]:
    return {gid: len(group) for gid, group in groups.items()}
