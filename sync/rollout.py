"""Canary and shadow rollouts (docs/rollouts.md): what one rollout is, how it is kept in the control store,
and which edges form its canary set.

A rollout starts with a push that names a canary (`--canary PERCENT` or `--canary-nodes`): the pushed
commit (the candidate, `version`) is in the log like any other, but the fan-out sends it, and every commit
after it, only to the edges of `canary_nodes` until it is promoted; the others stay at `base_version` (the
head before the candidate). An abort publishes a rollback commit to the base version's state
(`rollback_version`); the edges that never had the candidate move from `base_version` to
`rollback_version` by one collapsed commit (`Skip`), never applying the candidate's content.

Pure: no gRPC, no store; the document is a msgpack map with unknown keys ignored.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import msgpack

__all__ = [
    "ABORTED",
    "CANARY",
    "PROMOTED",
    "Rollout",
    "RolloutError",
    "canary_count",
    "choose_canary",
    "decode_rollout",
    "decode_skips",
    "encode_rollout",
    "encode_skips",
]

CANARY: Final = "canary"
PROMOTED: Final = "promoted"
ABORTED: Final = "aborted"
State = Literal["canary", "promoted", "aborted"]


class RolloutError(ValueError):
    """A rollout that cannot start or change as asked; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Rollout:
    """One rollout of version `version` over `base_version`. `final`: the health figures and shadow sums
    when it ended (a JSON-ready map, kept so `ctl status` and `ctl report --rollout` still show what
    decided it), empty while it runs."""

    version: int
    base_version: int
    state: State
    canary_nodes: tuple[str, ...]
    shadow: bool = False
    shadow_sample: float = 0.0
    started_at_ms: int = 0
    ended_at_ms: int = 0
    reason: str = ""
    rollback_version: int = 0
    final: Mapping[str, Any] = field(default_factory=dict)

    @property
    def in_progress(self) -> bool:
        return self.state == CANARY

    def ended(
        self, state: State, reason: str, at_ms: int, final: Mapping[str, Any], rollback_version: int = 0
    ) -> Rollout:
        return replace(
            self,
            state=state,
            reason=reason,
            ended_at_ms=at_ms,
            final=dict(final),
            rollback_version=rollback_version,
        )


def encode_rollout(rollout: Rollout) -> bytes:
    doc = {
        "v": rollout.version,
        "b": rollout.base_version,
        "s": rollout.state,
        "n": list(rollout.canary_nodes),
        "sh": rollout.shadow,
        "ss": rollout.shadow_sample,
        "t0": rollout.started_at_ms,
        "t1": rollout.ended_at_ms,
        "r": rollout.reason,
        "rb": rollout.rollback_version,
        "f": dict(rollout.final),
    }
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


def decode_rollout(raw: bytes) -> Rollout:
    doc = msgpack.unpackb(raw, raw=False)
    state = str(doc["s"])
    if state not in (CANARY, PROMOTED, ABORTED):
        raise RolloutError(f"stored rollout has an unknown state {state!r}")
    return Rollout(
        version=int(doc["v"]),
        base_version=int(doc["b"]),
        state=state,  # type: ignore[arg-type]  # checked above
        canary_nodes=tuple(str(n) for n in doc.get("n", ())),
        shadow=bool(doc.get("sh", False)),
        shadow_sample=float(doc.get("ss", 0.0)),
        started_at_ms=int(doc.get("t0", 0)),
        ended_at_ms=int(doc.get("t1", 0)),
        reason=str(doc.get("r", "")),
        rollback_version=int(doc.get("rb", 0)),
        final=dict(doc.get("f") or {}),
    )


def encode_skips(skips: Mapping[int, int]) -> bytes:
    """The aborted candidates' skips, base version -> rollback version (tiny: two numbers per abort)."""
    packed: bytes = msgpack.packb(sorted(skips.items()))
    return packed


def decode_skips(raw: bytes | None) -> dict[int, int]:
    return {} if raw is None else {int(b): int(r) for b, r in msgpack.unpackb(raw)}


def canary_count(percent: float, edges: int) -> int:
    """`percent` of `edges`, rounded to the nearest whole edge (halves up), at least one."""
    if not 0 < percent <= 100:
        raise RolloutError(f"--canary: a percentage in (0, 100], got {percent:g}")
    return max(1, math.floor(edges * percent / 100 + 0.5))


def choose_canary(percent: float, edges: Iterable[str], version: int) -> tuple[str, ...]:
    """`canary_count(percent, n)` of the `edges`, chosen by a hash of node id and version (a different
    spread for every rollout, the same one for the same inputs), sorted by node id."""
    known = sorted(set(edges))
    if not known:
        raise RolloutError(
            "--canary: no edge follows this control plane yet; name the canary edges with --canary-nodes"
        )
    count = canary_count(percent, len(known))

    def rank(node: str) -> bytes:
        return hashlib.sha256(f"{version}\0{node}".encode()).digest()

    return tuple(sorted(sorted(known, key=rank)[:count]))
