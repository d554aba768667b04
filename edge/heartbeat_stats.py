"""What an edge's heartbeats tell its control plane besides its version: `ServingStats` (how the version
it serves is doing, edge/serving_stats.py) and `ShadowStats` (its shadow decisions with a candidate
version, edge/shadow_stats.py). The control plane compares canary edges with the rest from them
(docs/rollouts.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgewise.core.store import Store
from edgewise.edge.metrics import NodeMetrics
from edgewise.edge.serving_stats import ServingCounter
from edgewise.edge.shadow_stats import ShadowCounter, ShadowReading
from edgewise.sync.edge_sync import EdgeSyncer
from edgewise.sync.ops_replies import ServingStats
from edgewise.v1 import sync_pb2

__all__ = ["NodeCounters", "attach_heartbeat_stats", "serving_proto", "shadow_proto"]


def serving_proto(reading: ServingStats) -> sync_pb2.ServingStats:
    return sync_pb2.ServingStats(**asdict(reading))


def shadow_proto(reading: ShadowReading) -> sync_pb2.ShadowStats:
    """The heartbeat's ShadowStats (the reading's `sample` and `dropped` are the node's own, for `edge
    status`)."""
    return sync_pb2.ShadowStats(**asdict(reading.stats))


@dataclass(frozen=True, slots=True)
class NodeCounters:
    serving: ServingCounter
    shadow: ShadowCounter


def attach_heartbeat_stats(
    syncer: EdgeSyncer, node: NodeMetrics, store: Store, shadow_max_sample: float = 1.0
) -> NodeCounters:
    """Every heartbeat of `syncer` carries the node's ServingStats from now on, counted since the version
    it serves was applied, and its ShadowStats while it holds a shadow candidate, counted since it
    arrived (the syncer tells the counters of every commit applied and every candidate)."""
    serving = ServingCounter(node, store.version())
    shadow = ShadowCounter(node, syncer.shadow.current, store.version, shadow_max_sample)
    syncer.on_applied = serving.applied
    syncer.on_shadow = shadow.received

    def stats() -> tuple[sync_pb2.ServingStats | None, sync_pb2.ShadowStats | None]:
        serving.applied(store.version())  # a commit applied before this was attached
        shadowed = shadow.reading()
        return serving_proto(serving.reading()), shadow_proto(shadowed) if shadowed is not None else None

    syncer.heartbeat_stats = stats
    return NodeCounters(serving, shadow)
