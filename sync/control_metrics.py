"""Prometheus exposition of a control plane: its calls as they happen, its state read at scrape time.

Two parts, served together by `edgewise.metrics_http` (`control serve --metrics-listen HOST:PORT`):

- `CallMeter`, the first server interceptor, counts every ControlPlane call by method and the status code
  its caller got, refusals by the token check and by admission included, and times the calls with one
  answer (every method but Subscribe; a Subscribe stream is counted when it ends). It also adds up what
  `Forward` answered per record (accepted, duplicate, forgotten, rejected). Health and reflection calls
  are not counted.
- `ControlCollector` reads the rest when scraped: the head and the oldest version of the change log, the
  fleet (edges by state, how far the connected ones are behind the head, NACKs), the open Subscribe
  streams and Forward calls, the event store (records stored, the profile folder's and the bandit
  learner's backlog (on a central-tier replica, per partition of the events stream it works), records
  skipped, expired), the folds, the model refresh jobs (runs, failures, the
  last run's duration and the last version committed, per model), and the forget backlog (forgotten
  users some known edge has not applied yet).

The families are a public contract for dashboards and alerts (docs/operations.md, "Control plane
metrics"; examples/prometheus/ and examples/grafana/ use them). No user, item or node id is a label.
Counter families are built with their `_total` name and without a created time, as the edge's are.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from edgewise.sync.admission import EdgeAdmission
from edgewise.sync.auth import CONTROL_PLANE_SERVICE, METHOD_NAMES
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.embedding_refresh_job import EmbeddingRefreshJob
from edgewise.sync.model_refresh import RefreshJob
from edgewise.v1 import sync_pb2

__all__ = [
    "BUCKETS",
    "FORWARD_RESULTS",
    "METHODS",
    "CallMeter",
    "ControlCollector",
    "control_registry",
]

METHODS: Final = METHOD_NAMES
"""The ControlPlane methods, the values of the `method` label."""
FORWARD_RESULTS: Final = ("accepted", "duplicate", "forgotten", "rejected")
BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the call duration histogram; +Inf is added."""
_PREFIX: Final = f"/{CONTROL_PLANE_SERVICE}/"
_EDGE_STATES: Final = {
    sync_pb2.EDGE_STATE_READY: "ready",
    sync_pb2.EDGE_STATE_STALE: "stale",
    sync_pb2.EDGE_STATE_NOT_SERVING: "not_serving",
}
EDGE_STATES: Final = ("ready", "stale", "not_serving", "unknown", "disconnected")


def _code_of(context: grpc.ServicerContext, *, returned: bool) -> str:
    if returned and not context.is_active():
        return "CANCELLED"
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "OK" if returned else "UNKNOWN"


class CallMeter(grpc.ServerInterceptor):
    """Counts and times ControlPlane calls (see the module docstring). Install it first, before the token
    check, so the calls that check refuses are counted too."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], int] = {}
        self._buckets: dict[str, list[int]] = {m: [0] * (len(BUCKETS) + 1) for m in METHODS}
        self._sums: dict[str, float] = dict.fromkeys(METHODS, 0.0)
        self._forwarded: dict[str, int] = dict.fromkeys(FORWARD_RESULTS, 0)

    def observe(self, method: str, code: str, seconds: float | None) -> None:
        with self._lock:
            self._calls[method, code] = self._calls.get((method, code), 0) + 1
            if seconds is not None:
                buckets = self._buckets[method]
                buckets[next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1
                self._sums[method] += seconds

    def forwarded(self, reply: Any) -> None:
        if not isinstance(reply, sync_pb2.ForwardReply):
            return
        with self._lock:
            for result, count in zip(
                FORWARD_RESULTS,
                (reply.accepted, reply.duplicates, reply.forgotten, reply.rejected),
                strict=True,
            ):
                self._forwarded[result] += count

    def calls(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._calls)

    def durations(self) -> dict[str, tuple[list[int], float]]:
        with self._lock:
            return {m: (list(self._buckets[m]), self._sums[m]) for m in METHODS}

    def forwarded_records(self) -> dict[str, int]:
        with self._lock:
            return dict(self._forwarded)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        full = handler_call_details.method
        method = full[len(_PREFIX) :] if full.startswith(_PREFIX) else ""
        if handler is None or method not in self._sums:
            return handler
        arrived = self._clock()
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attribute, make in kinds:
            behavior = getattr(handler, attribute)
            if behavior is None:
                continue
            if handler.response_streaming:
                wrapped = self._streaming(behavior, method)
            else:
                wrapped = self._unary(behavior, method, arrived)
            pool = getattr(behavior, "experimental_thread_pool", None)
            if pool is not None:  # admission's pool for edge calls (sync/admission.py)
                wrapped.experimental_thread_pool = pool  # type: ignore[attr-defined]
            made: grpc.RpcMethodHandler[Any, Any] = make(
                wrapped,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return made
        return handler

    def _unary(self, behavior: Callable[..., Any], method: str, arrived: float) -> Callable[..., Any]:
        def metered(request: Any, context: grpc.ServicerContext) -> Any:
            code = "UNKNOWN"
            try:
                reply = behavior(request, context)
                code = _code_of(context, returned=True)
                if method == "Forward" and code == "OK":
                    self.forwarded(reply)
                return reply
            except Exception:
                code = _code_of(context, returned=False)
                raise
            finally:
                self.observe(method, code, self._clock() - arrived)

        return metered

    def _streaming(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def metered(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            code = "UNKNOWN"
            try:
                yield from behavior(request, context)
                code = _code_of(context, returned=True)
            except GeneratorExit:
                code = "CANCELLED"
                raise
            except Exception:
                code = _code_of(context, returned=False)
                raise
            finally:
                self.observe(method, code, None)

        return metered


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


class ControlCollector(Collector):
    """The control plane's families, read from `service`, `meter` and `admission` at scrape time."""

    def __init__(
        self,
        service: ControlPlaneService,
        meter: CallMeter,
        admission: EdgeAdmission | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.meter = meter
        self.admission = admission
        self._clock = clock
        self._forget_lock = threading.Lock()
        self._forget_cache: tuple[tuple[int, int, int], int] | None = None  # (head, oldest, total) -> n

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected at scrape time only: registering reads nothing

    def _forget_backlog(self, head: int, oldest_applied: int, total: int) -> int:
        """Forgotten users whose forget commit is newer than the oldest applied version of a known edge;
        recounted only when the head, that version or the number forgotten changed."""
        key = (head, oldest_applied, total)
        with self._forget_lock:
            if self._forget_cache is not None and self._forget_cache[0] == key:
                return self._forget_cache[1]
            pending = sum(v > oldest_applied for v in self.service.store.forgotten().values())
            self._forget_cache = (key, pending)
            return pending

    def collect(self) -> Iterator[Metric]:
        yield from self._calls()
        yield from self._log()
        yield from self._fleet()
        yield from self._events()
        yield from _refresh_families(self.service.refresh_jobs())

    def _calls(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "edgewise_control_rpc_total",
            "ControlPlane calls by method and the gRPC status code the caller got (refusals by the token "
            "check and by admission included; a Subscribe stream when it ends).",
            labels=["method", "code"],
        )
        counted = self.meter.calls()
        for method in METHODS:
            calls.add_metric([method, "OK"], counted.get((method, "OK"), 0))
        for (method, code), count in sorted(counted.items()):
            if code != "OK":
                calls.add_metric([method, code], count)
        yield calls
        duration = HistogramMetricFamily(
            "edgewise_control_rpc_duration_seconds",
            "Time from a ControlPlane call's arrival to its answer, by method (not Subscribe).",
            labels=["method"],
        )
        for method, (buckets, total) in self.meter.durations().items():
            if method == "Subscribe":
                continue
            cumulative, points = 0.0, []
            for bound, count in zip((*BUCKETS, math.inf), buckets, strict=True):
                cumulative += count
                points.append((_le(bound), cumulative))
            duration.add_metric([method], points, total)
        yield duration
        forwarded = CounterMetricFamily(
            "edgewise_control_forwarded_records_total",
            "Records edges forwarded, by what became of them: accepted (stored), duplicate, forgotten "
            "(a forgotten user's: dropped), rejected (could never be used: dropped).",
            labels=["result"],
        )
        for result, count in self.meter.forwarded_records().items():
            forwarded.add_metric([result], count)
        yield forwarded

    def _log(self) -> Iterator[Metric]:
        store = self.service.store
        yield GaugeMetricFamily(
            "edgewise_control_head_version", "Version of the newest commit.", store.head_version()
        )
        yield GaugeMetricFamily(
            "edgewise_control_log_start_version",
            "Oldest version the change log can send as deltas (an edge older than it gets a full snapshot).",
            store.log_start_version(),
        )
        newest = store.history(1)
        yield GaugeMetricFamily(
            "edgewise_control_last_commit_timestamp_seconds",
            "Unix time of the newest commit (0 before the first).",
            newest[0].created_at_ms / 1000 if newest else 0.0,
        )

    def _fleet(self) -> Iterator[Metric]:
        head = self.service.store.head_version()
        edges = self.service.fleet.edges()
        by_state = dict.fromkeys(EDGE_STATES, 0)
        behind, max_lag, nacking = 0, 0, 0
        for edge in edges:
            if not edge.connected:
                by_state["disconnected"] += 1
                continue
            by_state[_EDGE_STATES.get(edge.state, "unknown")] += 1
            limit = self.service.gate.plan(edge.node_id).limit  # held at a rollout's base version
            lag = max(0, (head if limit is None else min(head, limit)) - edge.applied_version)
            behind += lag > 0
            max_lag = max(max_lag, lag)
            nacking += edge.last_nack_version > edge.last_ack_version
        states = GaugeMetricFamily(
            "edgewise_control_edges",
            "Edges the control plane knows of, by state (connected ones by their reported state).",
            labels=["state"],
        )
        for state, count in by_state.items():
            states.add_metric([state], count)
        yield states
        yield GaugeMetricFamily(
            "edgewise_control_edges_behind",
            "Connected edges whose applied version is behind the head.",
            behind,
        )
        yield GaugeMetricFamily(
            "edgewise_control_fleet_max_lag_versions",
            "How many versions the connected edge furthest behind the head is behind.",
            max_lag,
        )
        yield GaugeMetricFamily(
            "edgewise_control_edges_nacking",
            "Connected edges whose last answer was a NACK (they keep serving their last good version).",
            nacking,
        )
        admission = self.admission
        yield GaugeMetricFamily(
            "edgewise_control_subscribe_streams",
            "Subscribe streams open.",
            admission.open_streams() if admission is not None else 0,
        )
        yield GaugeMetricFamily(
            "edgewise_control_forward_calls",
            "Forward calls running or waiting for a thread.",
            admission.forwards.pending() if admission is not None else 0,
        )
        store = self.service.store
        _, total = store.forgotten_newest(0)
        oldest = min((e.applied_version for e in edges), default=head)
        yield GaugeMetricFamily("edgewise_control_forgotten_users", "Users forgotten in all.", total)
        yield GaugeMetricFamily(
            "edgewise_control_forget_backlog_users",
            "Forgotten users that some edge the control plane knows of has not applied yet.",
            self._forget_backlog(head, oldest, total) if total else 0,
        )

    def _events(self) -> Iterator[Metric]:
        events = self.service.events
        if events is None:
            return
        last = events.last_seq()
        yield GaugeMetricFamily(
            "edgewise_control_events_stored",
            "Forwarded events and exposure records stored (until retention deletes them).",
            events.count(),
        )
        yield CounterMetricFamily(
            "edgewise_control_events_received_total",
            "Records stored since the event store was created (its last sequence number).",
            last,
        )
        figures = self.service.job_figures()
        if figures is None:
            return
        yield from _backlog(
            "edgewise_control_fold_backlog_records",
            "Stored records the profile folder has not read yet",
            figures.fold_backlog,
            figures.fold_backlogs,
        )
        yield CounterMetricFamily(
            "edgewise_control_folds_total",
            "Commits of folded profiles the profile folder published since start.",
            figures.folds,
        )
        yield CounterMetricFamily(
            "edgewise_control_folded_profiles_total",
            "Profile changes those commits carried since start.",
            figures.folded_profiles,
        )
        yield from _backlog(
            "edgewise_control_learner_backlog_records",
            "Stored records the bandit learner has not read yet",
            figures.learner_backlog,
            figures.learner_backlogs,
        )
        yield CounterMetricFamily(
            "edgewise_control_bandit_publishes_total",
            "Commits of bandit posteriors the learner published since start.",
            figures.bandit_publishes,
        )
        published = figures.last_publish
        yield GaugeMetricFamily(
            "edgewise_control_bandit_publish_age_seconds",
            "Seconds since the learner last published (NaN before the first).",
            self._clock() - published if published is not None else math.nan,
        )
        skipped = CounterMetricFamily(
            "edgewise_control_records_skipped_total",
            "Stored records a consumer could not use and skipped, by consumer.",
            labels=["consumer"],
        )
        skipped.add_metric(["profile_folder"], figures.folder_skipped)
        skipped.add_metric(["bandit_learner"], figures.learner_skipped)
        yield skipped
        yield CounterMetricFamily(
            "edgewise_control_events_expired_total",
            "Stored records deleted by retention since start (events.retain).",
            figures.expired,
        )


def _refresh_families(jobs: Sequence[RefreshJob | EmbeddingRefreshJob]) -> Iterator[Metric]:
    """The model refresh jobs' figures since start, one sample per model switched on."""
    if not jobs:
        return
    runs = CounterMetricFamily(
        "edgewise_control_refresh_runs_total",
        "Scheduled runs of a model refresh job since start (the embeddings: runs that were due).",
        labels=["model"],
    )
    failures = CounterMetricFamily(
        "edgewise_control_refresh_failures_total",
        "Runs that failed (logged as model_refresh_failed; the next run comes as planned).",
        labels=["model"],
    )
    commits = CounterMetricFamily(
        "edgewise_control_refresh_commits_total",
        "Refresh commits a job published since start.",
        labels=["model"],
    )
    staged = CounterMetricFamily(
        "edgewise_control_refresh_staging_commits_total",
        "Staging commits of the embeddings refresh since start (the users' vectors of the next generation, "
        "before its flip; docs/refresh.md); 0 for the other models.",
        labels=["model"],
    )
    seconds = GaugeMetricFamily(
        "edgewise_control_refresh_last_run_seconds",
        "How long the last run took, failed or not (NaN before the first).",
        labels=["model"],
    )
    version = GaugeMetricFamily(
        "edgewise_control_refresh_last_version",
        "Version of the last refresh commit a job published since start (0: none yet).",
        labels=["model"],
    )
    for job in jobs:
        stats, model = job.stats, [job.name]
        runs.add_metric(model, stats.runs)
        failures.add_metric(model, stats.failures)
        commits.add_metric(model, stats.commits)
        staged.add_metric(model, stats.staged)
        seconds.add_metric(model, stats.last_seconds)
        version.add_metric(model, stats.last_version)
    yield from (runs, failures, commits, staged, seconds, version)


def control_registry(
    service: ControlPlaneService, meter: CallMeter, admission: EdgeAdmission | None = None
) -> CollectorRegistry:
    """A registry of its own holding the control plane's collector (what `serve_metrics` serves)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControlCollector(service, meter, admission))
    return registry


def _backlog(
    name: str, documentation: str, whole: int | None, partitions: Mapping[int, int] | None
) -> Iterator[GaugeMetricFamily]:
    """One backlog family: one figure (the embedded control plane), or one per partition a central-tier
    replica works (label `partition`; none while it works none)."""
    if whole is not None:
        yield GaugeMetricFamily(name, f"{documentation}.", whole)
    elif partitions is not None:
        family = GaugeMetricFamily(
            name,
            f"{documentation}, per partition of the events stream this replica works.",
            labels=["partition"],
        )
        for partition, count in partitions.items():
            family.add_metric([str(partition)], count)
        yield family
