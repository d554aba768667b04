"""A rollout's health (docs/rollouts.md): the canary edges' serving figures against the rest's, from the
`ServingStats` every edge sends in its heartbeats, the verdict past the thresholds of the `[rollout]`
section, and the edges' `ShadowStats` summed.

The canary group is the canary edges serving the candidate or a later version; the rest are the other
edges serving a version before the candidate (the base). Both count connected edges only. A rollout is
judged once the canary edges answered `min_decisions` calls and the rest as many (without a baseline
nothing is judged: promote or abort by hand). It is unhealthy when the canary's fallback rate exceeds the
rest's by more than `max_fallback_increase`, its error rate by more than `max_error_increase`, or its p99
latency (the highest of its edges') is more than `max_p99_ratio` times the rest's and above
`p99_floor_ms`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edgewise.sync.rollout import Rollout
from edgewise.v1 import sync_pb2

__all__ = [
    "EdgeServing",
    "RolloutPolicy",
    "health_document",
    "judged",
    "rollout_health",
    "shadow_document",
    "sum_shadow",
    "unhealthy_reason",
]


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """The thresholds of automatic abort and promotion (control config `[rollout]`)."""

    min_decisions: int = 200
    max_fallback_increase: float = 0.05
    max_error_increase: float = 0.01
    max_p99_ratio: float = 2.0
    p99_floor_ms: float = 5.0
    auto_abort: bool = True
    promote_after_seconds: float = 0.0  # 0: never promote automatically
    check_seconds: float = 1.0
    shadow_sample: float = 0.1


@dataclass(frozen=True, slots=True)
class EdgeServing:
    """What the health needs of one edge: its node id, whether it is connected, its last ServingStats."""

    node_id: str
    connected: bool
    serving: sync_pb2.ServingStats | None


def _health(stats: list[sync_pb2.ServingStats]) -> sync_pb2.RolloutHealth:
    decisions = sum(s.decisions for s in stats)
    placements = sum(s.placements for s in stats)
    fallbacks = sum(s.fallbacks for s in stats)
    errors = sum(s.errors for s in stats)
    return sync_pb2.RolloutHealth(
        edges=len(stats),
        decisions=decisions,
        placements=placements,
        fallback_rate=fallbacks / placements if placements else 0.0,
        error_rate=errors / (decisions + errors) if decisions + errors else 0.0,
        latency_p99_us=max((s.latency_p99_us for s in stats), default=0),
    )


def _calls(stats: list[sync_pb2.ServingStats]) -> int:
    return sum(s.decisions + s.errors for s in stats)


def rollout_health(
    rollout: Rollout, edges: Iterable[EdgeServing]
) -> tuple[sync_pb2.RolloutHealth, sync_pb2.RolloutHealth, int, int]:
    """(canary health, rest health, canary calls, rest calls) from the connected edges' last figures."""
    canary_nodes = set(rollout.canary_nodes)
    canary: list[sync_pb2.ServingStats] = []
    rest: list[sync_pb2.ServingStats] = []
    for edge in edges:
        if not edge.connected or edge.serving is None:
            continue
        if edge.node_id in canary_nodes and edge.serving.version >= rollout.version:
            canary.append(edge.serving)
        elif edge.node_id not in canary_nodes and edge.serving.version < rollout.version:
            rest.append(edge.serving)
    return _health(canary), _health(rest), _calls(canary), _calls(rest)


def unhealthy_reason(
    policy: RolloutPolicy,
    canary: sync_pb2.RolloutHealth,
    rest: sync_pb2.RolloutHealth,
    canary_calls: int,
    rest_calls: int,
) -> str | None:
    """Why the canary is worse than the rest past a threshold, or None (healthy, or not judged yet)."""
    if canary_calls < policy.min_decisions or rest_calls < policy.min_decisions:
        return None
    if canary.fallback_rate - rest.fallback_rate > policy.max_fallback_increase:
        return (
            f"fallback rate {canary.fallback_rate:.3f} on the canary vs {rest.fallback_rate:.3f} on the rest "
            f"(max increase {policy.max_fallback_increase:g})"
        )
    if canary.error_rate - rest.error_rate > policy.max_error_increase:
        return (
            f"error rate {canary.error_rate:.4f} on the canary vs {rest.error_rate:.4f} on the rest "
            f"(max increase {policy.max_error_increase:g})"
        )
    floor_us = policy.p99_floor_ms * 1000
    if (
        rest.latency_p99_us > 0
        and canary.latency_p99_us > floor_us
        and canary.latency_p99_us > policy.max_p99_ratio * rest.latency_p99_us
    ):
        return (
            f"p99 latency {canary.latency_p99_us} us on the canary vs {rest.latency_p99_us} us on the rest "
            f"(max ratio {policy.max_p99_ratio:g})"
        )
    return None


def judged(policy: RolloutPolicy, canary_calls: int, rest_calls: int) -> bool:
    """Enough calls on both sides to judge."""
    return canary_calls >= policy.min_decisions and rest_calls >= policy.min_decisions


#: The ShadowStats fields that add up over edges: every one but the two versions.
_SHADOW_SUMS = tuple(
    f.name for f in sync_pb2.ShadowStats.DESCRIPTOR.fields if f.name not in ("version", "base_version")
)


def sum_shadow(rollout: Rollout, stats: Iterable[sync_pb2.ShadowStats | None]) -> sync_pb2.ShadowStats:
    """The edges' shadow figures for the rollout's candidate, summed."""
    total = sync_pb2.ShadowStats(version=rollout.version, base_version=rollout.base_version)
    for one in stats:
        if one is None or one.version != rollout.version:
            continue
        for name in _SHADOW_SUMS:
            setattr(total, name, getattr(total, name) + getattr(one, name))
    return total


def health_document(health: sync_pb2.RolloutHealth) -> dict[str, Any]:
    return {
        "edges": health.edges,
        "decisions": health.decisions,
        "placements": health.placements,
        "fallback_rate": health.fallback_rate,
        "error_rate": health.error_rate,
        "latency_p99_us": health.latency_p99_us,
    }


def shadow_document(stats: sync_pb2.ShadowStats) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": stats.version, "base_version": stats.base_version}
    doc.update({name: getattr(stats, name) for name in _SHADOW_SUMS})
    return doc
