"""One worker process of an edge node: a sync gRPC server on the node's port (SO_REUSEPORT), reading
the node's LMDB environment, writing Track events through its own group committer.

Started by the supervisor with the multiprocessing `spawn` method (gRPC does not survive a fork), so
everything here is created in the child. SIGTERM or SIGINT: health NOT_SERVING, drain in-flight calls
for the grace period, exit 0. A worker whose supervisor died stops by itself.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Final

from edgewise.core._placement import set_scan
from edgewise.core.activity import ActivityLimits
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store
from edgewise.edge.convert import Limits
from edgewise.edge.group_commit import GroupCommitter
from edgewise.edge.http_gateway import GatewayOptions, HttpGateway, build_gateway
from edgewise.edge.metrics import MetricsLayout, WorkerMetrics
from edgewise.edge.server import build_server
from edgewise.edge.servicer import PersonalizerServicer, ServingOptions
from edgewise.edge.shadow import ShadowDecider
from edgewise.edge.stage_times import stage_times_from_env
from edgewise.logs import configure_logging
from edgewise.stacks import bound_the_exit, dump_stacks_on_sigusr1

log = logging.getLogger(__name__)

WORKER_EXIT_MARGIN_S: Final = 4.0
"""How long past its grace a stopping worker may take before it writes every thread's stack to the log and
exits 1 (the supervisor kills it a second later)."""

__all__ = ["WorkerSpec", "worker_main"]


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    data_dir: Path
    map_size: int
    listen: str  # HOST:PORT with a concrete port, shared by every worker
    threads: int
    grace: float
    pin_cpu: int | None
    options: ServingOptions
    limits: Limits
    activity_limits: ActivityLimits
    group_commit_max_events: int
    group_commit_max_wait_s: float
    log_level: str
    max_message_bytes: int
    metrics_path: Path | None  # this worker's metrics file (None: metrics off)
    placements: tuple[str, ...]  # placement ids for the metrics layout
    http_listen: str = ""  # HOST:PORT of JSON over HTTP, shared by every worker (empty: off)
    # Shadow decisions (edge/shadow.py): the largest share of requests decided again with a candidate
    # (0: none, a node without a control plane), and the bound of the queue to the shadow thread.
    shadow_max_sample: float = 0.0
    shadow_queue: int = 256


def worker_main(spec: WorkerSpec, ready: Connection) -> None:
    """Entry point of a worker process: serve until told to stop."""
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor reloads; workers see the new version
    if spec.pin_cpu is not None:
        os.sched_setaffinity(0, {spec.pin_cpu})
    parent = os.getppid()
    store = Store(spec.data_dir, map_size=spec.map_size)
    # benchmarks only: EDGEWISE_DECIDE=reference decides with the Python reference (bench.node's A/B)
    pipeline = Pipeline(compiled=os.environ.get("EDGEWISE_DECIDE", "compiled") != "reference")
    # benchmarks only: EDGEWISE_SCAN=half scans the half-precision copy instead of the int8 one (same results)
    set_scan(os.environ.get("EDGEWISE_SCAN", "int8"))
    with store.read() as view:
        pipeline.state(view)  # decode the snapshot before reporting SERVING
    configure_logging(spec.log_level)
    dump_stacks_on_sigusr1()
    metrics = (
        WorkerMetrics(spec.metrics_path, MetricsLayout(spec.placements))
        if spec.metrics_path is not None
        else None
    )
    stages = stage_times_from_env()  # benchmarks only: per-stage CPU of Decide (edge/stage_times.py)
    committer = GroupCommitter(
        store,
        spec.activity_limits,
        max_events=spec.group_commit_max_events,
        max_wait_s=spec.group_commit_max_wait_s,
        on_exposures_dropped=metrics.exposures_dropped if metrics is not None else None,
        stages=stages,
    )
    shadow = (
        ShadowDecider(
            spec.data_dir,
            spec.map_size,
            store,
            metrics,
            max_sample=spec.shadow_max_sample,
            queue_size=spec.shadow_queue,
        )
        if spec.shadow_max_sample > 0
        else None
    )
    servicer = PersonalizerServicer(
        store,
        pipeline,
        spec.limits,
        spec.activity_limits,
        committer=committer,
        options=spec.options,
        metrics=metrics,
        stages=stages,
        shadow=shadow,
    )
    edge = build_server(
        servicer,
        spec.listen,
        threads=spec.threads,
        reuse_port=True,
        max_concurrent_rpcs=spec.options.max_in_flight if spec.options.overload == "reject" else None,
        max_message_bytes=spec.max_message_bytes,
        metrics=metrics,
        stages=stages,
    )
    gateway = _http_gateway(spec, servicer, metrics)
    # Everything built so far (modules, the decoded snapshot state, the server) lives as long as the
    # worker: move it out of the cyclic collector's generations, so collections triggered by request
    # garbage do not walk it again and again (a full collection over it is a latency spike).
    gc.collect()
    gc.freeze()
    if shadow is not None:
        shadow.start()
    edge.server.start()
    if gateway is not None:
        gateway.start()
        gateway.set_serving(True)
    edge.set_serving(True)
    log.info(
        "worker_serving",
        extra={
            "worker": spec.index,
            "pid": os.getpid(),
            "address": spec.listen,
            "http": spec.http_listen or None,
            "cpu": spec.pin_cpu,
        },
    )
    ready.send(("ready", os.getpid()))
    ready.close()
    while not stop.wait(0.2):
        if os.getppid() != parent:
            log.warning("worker_orphaned", extra={"worker": spec.index, "error": "the supervisor is gone"})
            break
        if stages is not None:
            stages.write()
        if shadow is not None:
            try:
                shadow.refresh()  # a shadow candidate appeared, changed or went
            except Exception as exc:  # the worker serves on without shadow decisions
                log.error("shadow_refresh_failed", extra={"worker": spec.index, "error": repr(exc)})
    # the supervisor kills a worker still running `grace` + 5 s after its SIGTERM: its stacks first
    bound_the_exit(spec.grace + WORKER_EXIT_MARGIN_S)
    http_stop = None
    if gateway is not None:  # drains beside the gRPC server, in the same grace period
        http_stop = threading.Thread(target=gateway.stop, args=(spec.grace,), name="http-stop")
        http_stop.start()
    edge.stop(spec.grace)
    if http_stop is not None:
        http_stop.join()
    committer.close()
    if shadow is not None:
        shadow.stop()
    if stages is not None:
        stages.write()
    if metrics is not None:
        metrics.close()
    store.close()
    log.info("worker_stopped", extra={"worker": spec.index, "pid": os.getpid()})


def _http_gateway(
    spec: WorkerSpec, servicer: PersonalizerServicer, metrics: WorkerMetrics | None
) -> HttpGateway | None:
    """JSON over HTTP on `spec.http_listen` (SO_REUSEPORT, like the gRPC port), around the same servicer."""
    if not spec.http_listen:
        return None
    options = GatewayOptions(
        max_in_flight=spec.options.max_in_flight,
        reject_past_max_in_flight=spec.options.overload == "reject",
        max_message_bytes=spec.max_message_bytes,
    )
    return build_gateway(servicer, spec.http_listen, reuse_port=True, options=options, metrics=metrics)
