"""What the ControlPlane answers ops, as plain dataclasses (what `edgewise.client.ControlClient` returns),
and their conversion from the protobuf replies (the one place it happens: DESIGN.md, conversion lives in
edge/ and sync/).

Field names and order are the replies' own, and `dataclasses.asdict` of each is the JSON document
`edgewise ctl ... --json` prints (tuples print as lists). An edge's `state` is a name: READY, STALE,
NOT_SERVING, or DISCONNECTED (the edge never reported one); UNKNOWN for a state this version does not
know.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final, TypeVar

from google.protobuf.message import Message

from edgewise.v1 import sync_pb2

__all__ = [
    "BundleInfo",
    "Commit",
    "EdgeStatus",
    "FleetStatus",
    "ForgetResult",
    "ForgetStatus",
    "ForgottenUser",
    "History",
    "PushResult",
    "Rollout",
    "RolloutHealth",
    "ServingStats",
    "ShadowStats",
    "fleet_status_from_pb",
    "forget_result_from_pb",
    "forget_status_from_pb",
    "history_from_pb",
    "push_result_from_pb",
    "rollout_from_pb",
]

_STATES: Final = {
    sync_pb2.EDGE_STATE_UNSPECIFIED: "DISCONNECTED",
    sync_pb2.EDGE_STATE_READY: "READY",
    sync_pb2.EDGE_STATE_STALE: "STALE",
    sync_pb2.EDGE_STATE_NOT_SERVING: "NOT_SERVING",
}


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """The bundle a push uploaded, as validated before the upload."""

    version: int  # the bundle's own version (its manifest), not the control plane's
    items: int
    profiles: int


@dataclass(frozen=True, slots=True)
class RolloutHealth:
    """A group of edges in a rollout (the canary edges, or the rest) as their heartbeats report it."""

    edges: int
    decisions: int
    placements: int
    fallback_rate: float  # fallbacks / placements
    error_rate: float  # errors / (decisions + errors)
    latency_p99_us: int  # the highest of the edges' p99


@dataclass(frozen=True, slots=True)
class ServingStats:
    """An edge's counters for the version it serves, since it applied it (its last heartbeat)."""

    version: int
    decisions: int
    placements: int
    fallbacks: int
    errors: int
    latency_p50_us: int
    latency_p99_us: int

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.placements if self.placements else 0.0

    @property
    def error_rate(self) -> float:
        calls = self.decisions + self.errors
        return self.errors / calls if calls else 0.0


@dataclass(frozen=True, slots=True)
class ShadowStats:
    """Decisions made again with a shadow candidate and how they differed (one edge's, or summed)."""

    version: int
    base_version: int
    sampled: int
    placements: int
    item_placements: int
    overlap_sum: float
    variant_changes: int
    new_fallbacks: int
    fixed_fallbacks: int
    errors: int
    served_latency_us_sum: int
    shadow_latency_us_sum: int


@dataclass(frozen=True, slots=True)
class Rollout:
    """A canary or shadow rollout (docs/rollouts.md): `state` "canary" (in progress), "promoted" or
    "aborted"; `canary`/`rest`: the health of the canary edges (serving the candidate) and of the others
    (serving the base version); `shadow_stats`: the shadow decisions summed over the edges."""

    version: int
    base_version: int
    state: str
    canary_nodes: tuple[str, ...]
    shadow: bool
    shadow_sample: float
    started_at_ms: int
    ended_at_ms: int
    reason: str
    canary: RolloutHealth
    rest: RolloutHealth
    shadow_stats: ShadowStats
    rollback_version: int


@dataclass(frozen=True, slots=True)
class PushResult:
    """A push, delta push or rollback the control plane committed: the new `version` (the head, with
    `changes == 0`, when nothing changed), the records that differ from the previous version, and the
    server's one-line `summary`. `bundle`: what a bundle push uploaded (None for deltas and rollbacks)."""

    version: int
    changes: int
    summary: str
    bundle: BundleInfo | None = None
    rollout: Rollout | None = None  # the rollout the push started, or Promote / Abort ended


@dataclass(frozen=True, slots=True)
class Commit:
    """One commit of the change log."""

    version: int
    base_version: int
    kind: str  # "push", "delta", "rollback", "forget", ...
    changes: int
    created_at_ms: int
    description: str


@dataclass(frozen=True, slots=True)
class History:
    """The change log, newest commit first; commits before `log_start_version` are compacted (an edge
    behind it gets a full snapshot); `snapshot_versions` are the retained rollback targets."""

    head_version: int
    log_start_version: int
    snapshot_versions: tuple[int, ...]
    commits: tuple[Commit, ...]


@dataclass(frozen=True, slots=True)
class EdgeStatus:
    """One edge as the control plane last heard of it."""

    node_id: str
    shard: str
    applied_version: int
    lag: int  # versions behind the head
    last_ack_version: int
    last_nack_version: int  # 0: none
    last_error: str
    state: str  # READY, STALE, NOT_SERVING, DISCONNECTED (or UNKNOWN)
    connected: bool
    last_seen_ms: int
    peer: str
    events_forwarded: int
    serving: ServingStats | None = None  # from its last heartbeat (None: the edge does not send them)
    shadow: ShadowStats | None = None
    canary: bool = False  # in the canary set of the rollout in progress


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """The head version, the distinct events stored upstream, every edge the control plane knows, and
    the rollout in progress or the last one (None: never any)."""

    head_version: int
    events_total: int
    edges: tuple[EdgeStatus, ...]
    rollout: Rollout | None = None


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """A forget committed at `version` (an edge that applied it has purged the user), with the stored
    events and exposures of the user deleted upstream."""

    user_id: str
    version: int
    events_removed: int


@dataclass(frozen=True, slots=True)
class ForgottenUser:
    user_id: str
    version: int
    confirmed: tuple[str, ...]  # edges whose applied version reached `version`
    pending: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ForgetStatus:
    """Forgotten users, newest forget first (one user, or at most the limit asked for), and how many
    users are forgotten in all."""

    users: tuple[ForgottenUser, ...]
    total: int


def push_result_from_pb(reply: sync_pb2.PushReply, bundle: BundleInfo | None = None) -> PushResult:
    return PushResult(
        version=reply.version,
        changes=reply.changes,
        summary=reply.summary,
        bundle=bundle,
        rollout=rollout_from_pb(reply.rollout) if reply.HasField("rollout") else None,
    )


_Plain = TypeVar("_Plain", "RolloutHealth", "ServingStats", "ShadowStats")


def _copied(cls: type[_Plain], message: Message) -> _Plain:
    """The dataclass `cls` from a message whose fields have the same names and plain (scalar) values."""
    return cls(**{f.name: getattr(message, f.name) for f in fields(cls)})


def _health(h: sync_pb2.RolloutHealth) -> RolloutHealth:
    return _copied(RolloutHealth, h)


def _serving(s: sync_pb2.ServingStats) -> ServingStats:
    return _copied(ServingStats, s)


def _shadow(s: sync_pb2.ShadowStats) -> ShadowStats:
    return _copied(ShadowStats, s)


def rollout_from_pb(r: sync_pb2.Rollout) -> Rollout:
    return Rollout(
        version=r.version,
        base_version=r.base_version,
        state=r.state,
        canary_nodes=tuple(r.canary_nodes),
        shadow=r.shadow,
        shadow_sample=r.shadow_sample,
        started_at_ms=r.started_at_ms,
        ended_at_ms=r.ended_at_ms,
        reason=r.reason,
        canary=_health(r.canary),
        rest=_health(r.rest),
        shadow_stats=_shadow(r.shadow_stats),
        rollback_version=r.rollback_version,
    )


def history_from_pb(reply: sync_pb2.HistoryReply) -> History:
    return History(
        head_version=reply.head_version,
        log_start_version=reply.log_start_version,
        snapshot_versions=tuple(reply.snapshot_versions),
        commits=tuple(
            Commit(
                version=c.version,
                base_version=c.base_version,
                kind=c.kind,
                changes=c.changes,
                created_at_ms=c.created_at_ms,
                description=c.description,
            )
            for c in reply.commits
        ),
    )


def fleet_status_from_pb(reply: sync_pb2.StatusReply) -> FleetStatus:
    return FleetStatus(
        head_version=reply.head_version,
        events_total=reply.events_total,
        edges=tuple(
            EdgeStatus(
                node_id=e.node_id,
                shard=e.shard,
                applied_version=e.applied_version,
                lag=e.lag,
                last_ack_version=e.last_ack_version,
                last_nack_version=e.last_nack_version,
                last_error=e.last_error,
                state=_STATES.get(e.state, "UNKNOWN"),
                connected=e.connected,
                last_seen_ms=e.last_seen_ms,
                peer=e.peer,
                events_forwarded=e.events_forwarded,
                serving=_serving(e.serving) if e.HasField("serving") else None,
                shadow=_shadow(e.shadow) if e.HasField("shadow") else None,
                canary=e.canary,
            )
            for e in reply.edges
        ),
        rollout=rollout_from_pb(reply.rollout) if reply.HasField("rollout") else None,
    )


def forget_result_from_pb(user_id: str, reply: sync_pb2.ForgetReply) -> ForgetResult:
    return ForgetResult(user_id=user_id, version=reply.version, events_removed=reply.events_removed)


def forget_status_from_pb(reply: sync_pb2.ForgetStatusReply) -> ForgetStatus:
    return ForgetStatus(
        users=tuple(
            ForgottenUser(
                user_id=u.user_id, version=u.version, confirmed=tuple(u.confirmed), pending=tuple(u.pending)
            )
            for u in reply.users
        ),
        total=reply.total,
    )
