"""Saved groups: named id lists of a rules version (`"saved_groups"` in rules.json), referenced by the
condition operators `$inGroup` / `$notInGroup` (docs/rules.md, "Saved groups").

    "saved_groups": {
        "crm_vips": {"description": "CRM export", "values": ["c-1001", "c-1002", ...]},
        "beta_testers": {"values": [17, 42]}
    }

Members are strings and finite numbers (1 and 1.0 are the same member, "1" is another). A group is
compiled once per rules version into a `MemberIndex`, a hash set: a request's lookup is one hash probe
(the cost of a `$in` on a short list), never a pass over the list and never a decode. A delta changes a
group's members with `{"op": "upsert", "saved_group": "<id>", "add": [...], "remove": [...]}`
(sync/changes.py) instead of re-sending the list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from edgewise.core.conditions import ConditionError, json_type

__all__ = ["GROUP_ID", "MAX_MEMBERS", "MemberIndex", "check_member", "compile_saved_groups"]

GROUP_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_MEMBERS: Final = 10_000_000
"""Members one group may hold."""
_FIELDS: Final = ("values", "description")


def check_member(value: Any) -> str | None:
    """Why `value` cannot be a member (None: it can)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"members are strings or numbers, got {json_type(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"numbers must be finite, got {value!r}"
    return None


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


def compile_saved_groups(doc: Any) -> dict[str, MemberIndex]:
    """The `saved_groups` object of a rules document, checked; ConditionError names the bad field."""
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
        values = body.get("values")
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
        groups[gid] = MemberIndex.build(values)
    return groups


def group_sizes(groups: Mapping[str, MemberIndex]) -> dict[str, int]:
    return {gid: len(group) for gid, group in groups.items()}
