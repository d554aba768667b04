"""Prometheus exposition of an edge node: a collector that reads the node's counters at scrape time.

`NodeCollector.collect()` takes one `NodeMetrics.read()` (every worker's counter file summed, plus the
gauges the supervisor sets) and yields it as prometheus-client metric families; `node_registry` puts
it in a `CollectorRegistry` of its own, which edgewise.metrics_http serves (GET /metrics). Nothing
here runs per request: workers only write their counters (edge/metrics.py).

The families below are a public contract that dashboards and alerts rely on (docs/operations.md,
"Metrics"): names, types, labels, label values, histogram buckets. Counter families are created with
their `_total` name (prometheus-client keeps it on the samples) and without a created time, so no
`_created` series appears; tests/test_metrics_export.py checks a real node's output against the list.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from edgewise.edge.metrics import (
    BUCKETS,
    EXPOSURE_DROP_REASONS,
    FALLBACK_REASONS,
    MAX_PLACEMENT_LABELS,
    OTHER,
    RPCS,
    STATUS_CODES,
    STORE_LIMIT_KEYS,
    TRACK_RESULTS,
    NodeMetrics,
    NodeReading,
)

__all__ = ["NodeCollector", "node_families", "node_registry"]

#: A reading with nothing counted and every gauge 0: the families and their series, for `describe`.
_EMPTY = NodeReading(
    totals={},
    placements=(OTHER,),
    snapshot_version=0,
    snapshot_age_seconds=math.nan,
    stale=False,
    workers_alive=0,
    worker_restarts=0,
    outbox_entries=0,
    outbox_bytes=0,
    outbox_dropped=0,
    forwarded=0,
    housekept={},
    dedupe_window_seconds=0.0,
    activity_bytes=0,
    activity_window_seconds=0.0,
)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def node_families(r: NodeReading) -> Iterator[Metric]:
    """The node's metric families from one reading, in exposition order."""
    duration = HistogramMetricFamily(
        "edgewise_rpc_duration_seconds",
        "Time from an RPC's arrival at a worker (queueing for a thread included) to its answer, by RPC.",
        labels=["rpc"],
    )
    for rpc in RPCS:
        cumulative, buckets = 0.0, []
        for i, bound in enumerate((*BUCKETS, math.inf)):
            cumulative += r.count("bucket", rpc, str(i))
            buckets.append((_le(bound), cumulative))
        duration.add_metric([rpc], buckets, r.count("sum", rpc))
    yield duration

    rpcs = CounterMetricFamily(
        "edgewise_rpc_total",
        "RPCs answered, shed and refused ones included, by RPC and the gRPC status code the caller got.",
        labels=["rpc", "code"],
    )
    for rpc in RPCS:
        for code in STATUS_CODES:
            rpcs.add_metric([rpc, code], r.count("rpc", rpc, code))
    yield rpcs

    decisions = CounterMetricFamily(
        "edgewise_decisions_total",
        f"Placement decisions, by placement (the first {MAX_PLACEMENT_LABELS} of the rules; "
        f'others as "{OTHER}").',
        labels=["placement"],
    )
    for placement in r.placements:
        decisions.add_metric([placement], r.count("decision", placement))
    yield decisions

    fallbacks = CounterMetricFamily(
        "edgewise_fallbacks_total", "Placements answered with the default, by reason.", labels=["reason"]
    )
    for reason in FALLBACK_REASONS:
        fallbacks.add_metric([reason], r.count("fallback", reason))
    yield fallbacks

    track = CounterMetricFamily(
        "edgewise_track_events_total", "Tracked events: newly accepted, or duplicates.", labels=["result"]
    )
    for result in TRACK_RESULTS:
        track.add_metric([result], r.count("track", result))
    yield track

    yield CounterMetricFamily(
        "edgewise_shed_total", "Calls shed under overload (rejected or fast default).", r.count("shed")
    )
    yield GaugeMetricFamily(
        "edgewise_snapshot_version", "Version of the snapshot being served.", r.snapshot_version
    )
    yield GaugeMetricFamily(
        "edgewise_snapshot_age_seconds",
        "Seconds since the last sync (NaN before the first).",
        r.snapshot_age_seconds,
    )
    yield CounterMetricFamily(
        "edgewise_worker_restarts_total", "Worker processes restarted by the supervisor.", r.worker_restarts
    )
    yield GaugeMetricFamily("edgewise_workers_alive", "Worker processes running.", r.workers_alive)
    yield GaugeMetricFamily(
        "edgewise_stale",
        "1 when the last sync from the control plane is older than the staleness threshold (always 0 "
        "on a node without one).",
        float(r.stale),
    )
    yield GaugeMetricFamily(
        "edgewise_outbox_entries", "Events and exposure records waiting to go upstream.", r.outbox_entries
    )
    yield GaugeMetricFamily(
        "edgewise_outbox_bytes", "Bytes of the store's pages the outbox takes.", r.outbox_bytes
    )
    yield CounterMetricFamily(
        "edgewise_outbox_dropped_total",
        "Oldest outbox records deleted unsent because the outbox was over data.outbox_max_mb.",
        r.outbox_dropped,
    )
    yield CounterMetricFamily(
        "edgewise_forwarded_total", "Records the control plane accepted from this node.", r.forwarded
    )

    housekept = CounterMetricFamily(
        "edgewise_housekeeping_deleted_total",
        "Expired event ids and live activities deleted by housekeeping, by kind.",
        labels=["kind"],
    )
    for kind, count in r.housekept.items():
        housekept.add_metric([kind], count)
    yield housekept

    yield GaugeMetricFamily(
        "edgewise_dedupe_window_seconds",
        "Age of the oldest event id kept: how far back a retried Track is still recognized.",
        r.dedupe_window_seconds,
    )
    yield GaugeMetricFamily(
        "edgewise_activity_bytes", "Bytes of the store's pages holding live activity.", r.activity_bytes
    )
    yield GaugeMetricFamily(
        "edgewise_activity_window_seconds",
        "While live activity is over track.activity_max_mb: how long ago a user or session may have been "
        "last active and keep its activity (0: only the TTLs apply).",
        r.activity_window_seconds,
    )

    dropped = CounterMetricFamily(
        "edgewise_exposures_dropped_total",
        "Exposure records not stored, by reason: queue_full (too many waiting), store_full (no room in "
        "the store: Track's events went first), commit_failed.",
        labels=["reason"],
    )
    for reason in EXPOSURE_DROP_REASONS:
        dropped.add_metric([reason], r.count("exposures_dropped", reason))
    yield dropped
    yield GaugeMetricFamily(
        "edgewise_store_used_bytes", "Bytes of the store's pages in use, every namespace.", r.store_used_bytes
    )
    yield GaugeMetricFamily(
        "edgewise_store_write_limit_bytes",
        "Bytes of pages in use past which Track is refused (RESOURCE_EXHAUSTED, store full).",
        r.store_write_limit_bytes,
    )
    limits = GaugeMetricFamily(
        "edgewise_store_limit_bytes",
        "Size limits in force, derived from what the snapshot leaves of the map, by config key.",
        labels=["limit"],
    )
    in_force = dict(r.store_limits)
    for key in STORE_LIMIT_KEYS:
        limits.add_metric([key], in_force.get(key, 0))
    yield limits

    # added with control-plane replicas (issue 18): which one the node follows
    yield CounterMetricFamily(
        "edgewise_sync_control_switches_total",
        "Moves to another control-plane replica of sync.control (the one followed was lost).",
        r.control_switches,
    )
    following = GaugeMetricFamily(
        "edgewise_sync_control_info",
        "1 for the control-plane replica the node follows now (no series on a node without sync.control).",
        labels=["control"],
    )
    if r.control:
        following.add_metric([r.control], 1)
    yield following

    # added with shadow rollouts (issue 21): decisions of a sample with a candidate version, never served
    yield from _shadow_families(r)


#: edgewise_shadow_<name>_total per shadow counter (edge/metrics.py SHADOW_COUNTERS), and its help.
_SHADOW_TOTALS: Final = {
    "sampled": ("sampled", "Requests decided again with the shadow candidate (never served)."),
    "placements": ("placements", "Placements of those requests compared with the answer served."),
    "item_placements": (
        "item_placements",
        "Placements compared that had ranked items in both answers.",
    ),
    "overlap_sum": (
        "item_overlap",
        "Sum of overlap@k (shared items / the longer list) over the placements with items in both "
        "answers: divided by edgewise_shadow_item_placements_total, the mean overlap.",
    ),
    "variant_changes": (
        "variant_changes",
        "Placements whose campaign, experiment variant or bandit arm differ with the candidate.",
    ),
    "new_fallbacks": (
        "new_fallbacks",
        "Placements the candidate answers with a fallback where the served answer has none.",
    ),
    "fixed_fallbacks": (
        "fixed_fallbacks",
        "Placements answered with a fallback whose candidate answer has none.",
    ),
    "errors": ("errors", "Requests the candidate failed to decide."),
    "dropped": ("dropped", "Sampled requests not decided again: a worker's shadow queue was full."),
}


def _shadow_families(r: NodeReading) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "edgewise_shadow_candidate_version",
        "Version of the shadow candidate this node decides a sample with (0: none).",
        r.shadow_version,
    )
    yield GaugeMetricFamily(
        "edgewise_shadow_sample",
        "Share of requests decided again with the shadow candidate (0: none).",
        r.shadow_sample,
    )
    for counter, (name, text) in _SHADOW_TOTALS.items():
        yield CounterMetricFamily(f"edgewise_shadow_{name}_total", text, r.count("shadow", counter))
    cpu = CounterMetricFamily(
        "edgewise_shadow_pipeline_cpu_seconds_total",
        "Pipeline CPU time of the sampled requests, with the version served and with the candidate.",
        labels=["version"],
    )
    cpu.add_metric(["served"], r.count("shadow", "served_us") / 1e6)
    cpu.add_metric(["candidate"], r.count("shadow", "shadow_us") / 1e6)
    yield cpu


class NodeCollector(Collector):
    """The node's families, read from `node` when scraped (a scrape maps every worker file once)."""

    def __init__(self, node: NodeMetrics) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        return node_families(self.node.read())

    def describe(self) -> Iterator[Metric]:
        """The same families without reading the node: the registry learns their names at register."""
        return node_families(_EMPTY)


def node_registry(node: NodeMetrics) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one) holding the node's collector."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(node))
    return registry
