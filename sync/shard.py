"""Shard selectors: which profiles an edge holds (catalog, models and rules go to every edge).

Text form (flags, config, status): `all`, `hash:LO-HI/SPACE` (MurmurHash3 x86_32, seed 0, of the user
id modulo SPACE falls in [LO, HI)), or `region:DE,AT` (the profile's `region` attribute, else its
`country`, is one of the tags).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import msgpack

from edgewise.core.bucketing import murmur3_32
from edgewise.v1 import sync_pb2

__all__ = ["Shard", "ShardError", "parse_shard"]

_HASH_RE: Final = re.compile(r"hash:(\d+)-(\d+)/(\d+)")
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class ShardError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Shard:
    hash_space: int = 0  # 0: no hash range
    hash_lo: int = 0
    hash_hi: int = 0
    regions: frozenset[str] = frozenset()

    @property
    def everything(self) -> bool:
        return self.hash_space == 0 and not self.regions

    def text(self) -> str:
        if self.hash_space:
            return f"hash:{self.hash_lo}-{self.hash_hi}/{self.hash_space}"
        if self.regions:
            return "region:" + ",".join(sorted(self.regions))
        return "all"

    def to_proto(self) -> sync_pb2.ShardSelector:
        return sync_pb2.ShardSelector(
            hash_space=self.hash_space,
            hash_lo=self.hash_lo,
            hash_hi=self.hash_hi,
            regions=sorted(self.regions),
        )

    @classmethod
    def from_proto(cls, selector: sync_pb2.ShardSelector) -> Shard:
        shard = cls(selector.hash_space, selector.hash_lo, selector.hash_hi, frozenset(selector.regions))
        problem = shard.problem()
        if problem:
            raise ShardError(problem)
        return shard

    def problem(self) -> str | None:
        if self.hash_space and not (0 <= self.hash_lo < self.hash_hi <= self.hash_space):
            return (
                f"hash range {self.hash_lo}-{self.hash_hi} must satisfy 0 <= LO < HI <= SPACE "
                f"({self.hash_space})"
            )
        if self.hash_space and self.regions:
            return "a shard is a hash range or region tags, not both"
        bad = [r for r in self.regions if not _TAG_RE.fullmatch(r)]
        if bad:
            return f"region tag {bad[0]!r} must be 1-64 characters of A-Z a-z 0-9 _ . : -"
        return None

    def holds(self, user_id: str, profile: bytes | None) -> bool:
        """Whether a profile (its key, and its stored value for region shards) belongs to this shard."""
        if self.hash_space:
            return self.hash_lo <= murmur3_32(user_id.encode(), 0) % self.hash_space < self.hash_hi
        if self.regions:
            if profile is None:  # a delete: every edge may drop what it does not hold
                return True
            attributes = msgpack.unpackb(profile, raw=False).get("a", {})
            tag = attributes.get("region") or attributes.get("country")
            return isinstance(tag, str) and tag in self.regions
        return True


def parse_shard(text: str) -> Shard:
    """`all`, `hash:LO-HI/SPACE` or `region:TAG[,TAG...]`; ShardError says what is wrong."""
    text = text.strip()
    if text in ("", "all"):
        return Shard()
    match = _HASH_RE.fullmatch(text)
    if match:
        lo, hi, space = (int(g) for g in match.groups())
        shard = Shard(hash_space=space, hash_lo=lo, hash_hi=hi)
    elif text.startswith("region:"):
        shard = Shard(regions=frozenset(t.strip() for t in text[len("region:") :].split(",") if t.strip()))
        if not shard.regions:
            raise ShardError("region: needs at least one tag, e.g. region:DE,AT")
    else:
        raise ShardError(
            f"shard {text!r} must be all, hash:LO-HI/SPACE (e.g. hash:0-50/100) or region:TAG,..."
        )
    problem = shard.problem()
    if problem:
        raise ShardError(problem)
    return shard
