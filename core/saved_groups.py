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
change log and the edges get one small record per member changed, never the list again. A worker reads
the members once per rules version (one cursor pass over the prefix) into its `MemberIndex`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from edgewise.core.conditions import ConditionError, json_type
from edgewise.core.js_values import js_number_to_string

__all__ = [
    "GROUP_ID",
    "GROUP_PREFIX",
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MEMBER_VALUE",
    "MemberIndex",
    "check_member",
    "compile_saved_groups",
    "declarations",
    "member_key",
    "parse_member_key",
]

GROUP_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
GROUP_PREFIX: Final = "group/"
"""Keys of member records in the `rules` namespace start with this."""
MEMBER_VALUE: Final = b"\x01"
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

    __slots__ = ("_members", "contains", "contains_str")

    def __init__(self, members: frozenset[str | float]) -> None:
        self._members = members
        has = members.__contains__

        def contains(value: Any) -> bool:
            cls = value.__class__
            if cls is str or cls is float or cls is int:
                return has(value)
            return False

        self.contains = contains
        self.contains_str = has  # for a value known to be a str (generated conditions check the class)

    @classmethod
    def build(cls, values: Iterable[Any]) -> MemberIndex:
        """From a list of members (anything that cannot be one, e.g. a boolean, is skipped)."""
        return cls(
            frozenset(v if isinstance(v, str) else float(v) for v in values if check_member(v) is None)
        )

    def __len__(self) -> int:
        return len(self._members)


def compile_saved_groups(
    doc: Any, stored: Mapping[str, Iterable[str | float]] | None = None
) -> dict[str, MemberIndex]:
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
        groups[gid] = MemberIndex.build(itertools.chain(values, stored.get(gid, ())))
    return groups


def group_sizes(groups: Mapping[str, MemberIndex]) -> dict[str, int]:
    return {gid: len(group) for gid, group in groups.items()}
