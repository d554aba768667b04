"""What an edge's heartbeats tell its control plane besides its version: `ServingStats` (how the version
it serves is doing, edge/serving_stats.py) and `ShadowStats` (its shadow decisions with a candidate
version, edge/shadow_stats.py). The control plane compares canary edges with the rest from them
(docs/rollouts.md)."""

from __future__ import annotations

from edgewise.core.store import Store
from edgewise.edge.metrics import NodeMetrics
from edgewise.edge.serving_stats import ServingCounter, ServingReading
from edgewise.sync.edge_sync import EdgeSyncer
from edgewise.v1 import sync_pb2

__all__ = ["attach_heartbeat_stats", "serving_proto"]


def serving_proto(reading: ServingReading) -> sync_pb2.ServingStats:
    return sync_pb2.ServingStats(
        version=reading.version,
        decisions=reading.decisions,
        placements=reading.placements,
        fallbacks=reading.fallbacks,
        errors=reading.errors,
        latency_p50_us=reading.latency_p50_us,
        latency_p99_us=reading.latency_p99_us,
    )


def attach_heartbeat_stats(syncer: EdgeSyncer, node: NodeMetrics, store: Store) -> ServingCounter:
    """Every heartbeat of `syncer` carries the node's ServingStats from now on, counted since the version
    it serves was applied (the syncer tells the counter after every commit); the counter."""
    serving = ServingCounter(node, store.version())
    syncer.on_applied = serving.applied

    def stats() -> tuple[sync_pb2.ServingStats | None, sync_pb2.ShadowStats | None]:
        serving.applied(store.version())  # a commit applied before this was attached
        return serving_proto(serving.reading()), None

    syncer.heartbeat_stats = stats
    return serving
