"""`edgewise edge serve`: an edge node serving one data directory with N worker processes.

The supervisor (this process) is the node's single writer of replicated data: it loads `--bundle` into
the store at start (skipped when that exact bundle is already loaded) and again on SIGHUP; an invalid
bundle is refused with a message naming file, record and field, and the last good snapshot keeps
serving. It starts `--workers` processes (spawn) that share the port with SO_REUSEPORT and read the
same LMDB environment: a new snapshot is visible to every worker the moment it commits. A worker that
dies is restarted. SIGTERM / SIGINT: every worker turns health NOT_SERVING, drains in-flight calls for
`--grace` seconds and exits; then the supervisor exits 0. SIGUSR1 (to the supervisor or a worker) writes
every thread's stack to stderr and it goes on; a stop that takes over `--grace` + 60 s writes the stacks
and exits 1 instead of hanging.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Final

import lmdb

from edgewise.core.activity import ActivityLimits
from edgewise.core.records import RecordError
from edgewise.core.rules import compile_rules
from edgewise.core.store import Store, StoreError
from edgewise.core.store_budget import StoreBudget
from edgewise.edge.config import (
    EdgeConfig,
    add_config_arguments,
    cli_config,
    queues_exposures,
    store_limits,
)
from edgewise.edge.convert import Limits
from edgewise.edge.heartbeat_stats import NodeCounters, attach_heartbeat_stats
from edgewise.edge.housekeeping import Housekeeper
from edgewise.edge.metrics import MetricsLayout, NodeMetrics, make_run_dir
from edgewise.edge.metrics_export import node_registry
from edgewise.edge.servicer import ServingOptions
from edgewise.edge.shadow_stats import write_status
from edgewise.edge.sync_setup import NodeSync, SyncSetupError, start_syncer
from edgewise.edge.worker import WorkerSpec, worker_main
from edgewise.logs import configure_logging
from edgewise.metrics_http import serve_metrics
from edgewise.stacks import bound_the_exit, dump_stacks_on_sigusr1
from edgewise.sync.bundle import BundleError, load_bundle
from edgewise.sync.edge_sync import EdgeSyncer
from edgewise.sync.snapshot import apply_bundle

log = logging.getLogger(__name__)

__all__ = ["STEP_LOG_INTERVAL_S", "StepGuard", "add_arguments", "load_bundle_file", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="once serving, write {address, port, pid, snapshot_version, workers} as JSON here (for scripts)",
    )


def _manifest_digest(bundle_dir: Path) -> str:
    try:
        return hashlib.sha256((bundle_dir / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        return ""


def load_bundle_file(store: Store, bundle_dir: Path) -> bool:
    """Validate and apply a bundle; log the outcome; False (and nothing changed) when it is refused."""
    digest = _manifest_digest(bundle_dir)
    current = store.snapshot_info()
    if digest and current.manifest_sha256 == digest:
        log.info("bundle_already_loaded", extra={"bundle": str(bundle_dir), "version": current.version})
        return True
    started = time.monotonic()
    try:
        bundle = load_bundle(bundle_dir)
        info = apply_bundle(store, bundle, manifest_sha256=digest)
    except BundleError as exc:
        log.error(
            "bundle_refused",
            extra={"bundle": str(bundle_dir), "error": str(exc), "serving_version": current.version or None},
        )
        return False
    except StoreError as exc:
        log.error("bundle_not_applied", extra={"bundle": str(bundle_dir), "error": str(exc)})
        return False
    except Exception as exc:  # a failure the checks did not foresee: the last good snapshot keeps serving
        log.error(
            "bundle_not_applied",
            exc_info=exc,
            extra={"bundle": str(bundle_dir), "error": f"{type(exc).__name__}: {_cut(str(exc), 500)}"},
        )
        return False
    log.info(
        "bundle_loaded",
        extra={
            "bundle": str(bundle_dir),
            "version": info.version,
            "items": info.items,
            "profiles": info.profiles,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return True


def _write_ready_file(path: Path, payload: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def _reserve_port(host: str, port: int = 0) -> tuple[socket.socket, int]:
    """Bind (not listen) a SO_REUSEPORT socket on `port` (0: a free one), so every worker can share that
    port; the socket and its port."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock, int(sock.getsockname()[1])


class _PortInUse(OSError):
    """Another program (another edge node, say) listens on the port or holds it bound."""


EXIT_MARGIN_S: Final = 60.0
"""How long past `server.grace_seconds` a stopping node may take (its workers are killed at grace + 5 s,
its syncer stops within 15 s) before it writes every thread's stack to the log and exits 1."""

_PORT_WAIT_S: Final = 2.0
"""How long a node waits for its port to come free before refusing it: the workers of a previous run
whose supervisor was killed let go of the port within a fraction of a second."""


def _port_is_free(host: str, port: int) -> bool:
    """Whether nothing else holds HOST:PORT: a plain bind (SO_REUSEADDR, so a previous run's connections
    in TIME_WAIT do not count, but without SO_REUSEPORT) fails while anything listens there (on this
    address or a wildcard one), or another node's reservation holds it bound."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


_GRPC_SETTING: Final = "server.listen, --listen"
_HTTP_SETTING: Final = "server.http_listen, --http-listen"


def _wait_port_free(host: str, port: int, wait_s: float = _PORT_WAIT_S, setting: str = _GRPC_SETTING) -> None:
    """Return once nothing else holds HOST:PORT (waiting up to `wait_s`); `_PortInUse` if it stays taken."""
    deadline = time.monotonic() + wait_s
    while not _port_is_free(host, port):
        if time.monotonic() >= deadline:
            raise _PortInUse(
                errno.EADDRINUSE,
                f"port {port} is in use by another program (another edge node?); a node shares its port "
                f"only among its own workers: stop that program, or choose another port ({setting})",
            )
        time.sleep(0.1)


def _claim_port(
    host: str, port: int, wait_s: float = _PORT_WAIT_S, setting: str = _GRPC_SETTING
) -> socket.socket:
    """Make sure no other program serves HOST:PORT, then reserve it for this node's workers.

    The workers bind with SO_REUSEPORT, and the kernel lets any process of the same user join them on
    that port, splitting connections between the two silently. So a node first checks that the port is
    free (waiting up to `wait_s` for it), then binds its own SO_REUSEPORT reservation for its lifetime:
    from then on the check of any other node fails on it, before this node's workers listen too.
    `_PortInUse` when the port stays taken."""
    _wait_port_free(host, port, wait_s, setting)
    reserved, _ = _reserve_port(host, port)
    return reserved


def _refuse_a_taken_port(listen: str, setting: str = _GRPC_SETTING) -> None:
    """Before the store is opened: a node whose explicit port another program serves exits 2 at once, so
    it loads no bundle into a data directory that node may share. Only a taken port is refused here;
    an address this host cannot bind is reported by the reservation step, as before."""
    host, _, port_text = listen.rpartition(":")
    try:
        port = int(port_text)
        if port:
            _wait_port_free(host, port, setting=setting)
    except _PortInUse as exc:
        log.error("listen_failed", extra={"error": f"cannot listen on {listen}: {exc.strerror}"})
        raise _Exit(2) from exc
    except (ValueError, OSError):
        return


@dataclass
class _Slot:
    spec: WorkerSpec
    process: BaseProcess | None = None
    restarts: int = 0
    last_start: float = 0.0


class Supervisor:
    """Starts the workers, restarts any that dies, stops them all on request."""

    def __init__(self, specs: list[WorkerSpec]) -> None:
        self._ctx = mp.get_context("spawn")
        self.slots = [_Slot(spec) for spec in specs]
        self.restarts = 0

    def _start(self, slot: _Slot, timeout: float, stop: threading.Event | None = None) -> None:
        """Start the slot's worker and wait until it is ready (RuntimeError if it is not within `timeout`
        seconds, or exits first). With `stop`: the wait ends early once it is set (the node is
        stopping; `stop_all` stops the worker wherever it got)."""
        parent, child = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_main, args=(slot.spec, child), name=f"edgewise-worker-{slot.spec.index}"
        )
        process.start()
        child.close()
        slot.process = process
        slot.last_start = time.monotonic()
        deadline = slot.last_start + timeout
        while not parent.poll(min(0.1, max(0.0, deadline - time.monotonic()))):
            if stop is not None and stop.is_set():
                parent.close()
                return
            if time.monotonic() >= deadline:
                parent.close()
                raise RuntimeError(f"worker {slot.spec.index} did not become ready in {timeout:.0f}s")
        try:
            parent.recv()
        except EOFError:
            process.join(5)
            raise RuntimeError(
                f"worker {slot.spec.index} exited with {process.exitcode} before serving (see its log lines)"
            ) from None
        finally:
            parent.close()

    def start_all(self, timeout: float = 60.0) -> None:
        for slot in self.slots:
            self._start(slot, timeout)

    def alive(self) -> int:
        return sum(1 for slot in self.slots if slot.process is not None and slot.process.is_alive())

    def pids(self) -> list[int]:
        return [slot.process.pid or 0 for slot in self.slots if slot.process is not None]

    def check(self, stop: threading.Event | None = None) -> None:
        """Restart workers that died (at most one restart per slot per second); a restart waits for the
        worker to be ready, unless `stop` is set meanwhile."""
        for slot in self.slots:
            if stop is not None and stop.is_set():
                return
            process = slot.process
            if process is None or process.is_alive():
                continue
            if time.monotonic() - slot.last_start < 1.0:
                continue
            log.error(
                "worker_died",
                extra={"worker": slot.spec.index, "pid": process.pid, "exitcode": process.exitcode},
            )
            slot.restarts += 1
            self.restarts += 1
            try:
                self._start(slot, 60.0, stop)
                log.info(
                    "worker_restarted",
                    extra={
                        "worker": slot.spec.index,
                        "pid": slot.process.pid if slot.process else None,
                        "restarts": slot.restarts,
                    },
                )
            except RuntimeError as exc:
                log.error("worker_restart_failed", extra={"worker": slot.spec.index, "error": str(exc)})

    def stop_all(self, grace: float) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive() and slot.process.pid:
                os.kill(slot.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + 5.0
        for slot in self.slots:
            if slot.process is None:
                continue
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.warning(
                    "worker_killed", extra={"worker": slot.spec.index, "error": "did not stop in time"}
                )
                slot.process.kill()
                slot.process.join(5)


def run(args: argparse.Namespace) -> int:
    config = cli_config(args)
    return config if isinstance(config, int) else serve(config, args.ready_file)


def serve(config: EdgeConfig, ready_file: Path | None = None) -> int:
    """Run the node until SIGTERM/SIGINT; return the exit status: 0 once stopped, 2 when it cannot start
    (a log line says why; 0 too when stopped while still waiting for its first snapshot). Each step
    registers what it acquires (store, signal handlers, syncer, port, metrics endpoint, workers) on one
    exit stack, which releases it exactly once, newest first, on every path."""
    configure_logging(config.log.level)
    dump_stacks_on_sigusr1()
    with contextlib.ExitStack() as acquired:
        try:
            _refuse_a_taken_port(config.server.listen)
            if config.server.http_listen:
                _refuse_a_taken_port(config.server.http_listen, _HTTP_SETTING)
            store = _open_store(config, acquired)
            signals = _install_signals(acquired)
            sync = _load_snapshot(store, config, signals, acquired)
            with store.read() as view:
                placements = tuple(compile_rules(view.rules_doc()).placements)
            address, port = _reserve_listen(config.server.listen, acquired)
            http_address = (
                _reserve_listen(config.server.http_listen, acquired, _HTTP_SETTING)[0]
                if config.server.http_listen
                else ""
            )
            node_metrics, metrics_address = _start_metrics(config, store, placements, acquired)
            counters = (
                attach_heartbeat_stats(sync.syncer, node_metrics, store, config.sync.shadow_max_sample)
                if sync is not None and node_metrics is not None
                else None
            )
            specs = _worker_specs(config, address, placements, node_metrics, http_address)
            supervisor = _start_workers(specs, config.server.grace_seconds, acquired)
        except _Exit as exit_:
            return exit_.code
        limits = _StoreLimits(store, config)
        if node_metrics is not None:
            node_metrics.set_workers_alive(supervisor.alive())
            node_metrics.set_store(store.used_bytes(), store.write_limit, limits.budget.caps)
        _announce(store, supervisor, address, port, metrics_address, ready_file, http_address)
        _run_until_stopped(store, config, signals, sync, supervisor, node_metrics, limits, counters)
        log.info("stopping", extra={"grace_seconds": config.server.grace_seconds})
        bound_the_exit(config.server.grace_seconds + EXIT_MARGIN_S)
    log.info("stopped")
    return 0


class _Exit(Exception):
    """A start step could not go on (it logged why): `serve` returns `code` once all is released."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class _Signals:
    stop: threading.Event
    reload: threading.Event


def _open_store(config: EdgeConfig, acquired: contextlib.ExitStack) -> Store:
    try:
        store = Store(config.data.dir, map_size=config.data.map_size_mb << 20)
    except StoreError as exc:
        log.error("store_unavailable", extra={"error": str(exc)})
        raise _Exit(2) from exc
    acquired.callback(store.close)
    return store


def _install_signals(acquired: contextlib.ExitStack) -> _Signals:
    """SIGTERM / SIGINT set `stop`, SIGHUP sets `reload`; the previous handlers are put back at exit."""
    signals = _Signals(threading.Event(), threading.Event())

    def on_stop(signum: int, frame: FrameType | None) -> None:
        signals.stop.set()

    def on_reload(signum: int, frame: FrameType | None) -> None:
        signals.reload.set()

    for signum, handler in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_reload)):
        previous = signal.signal(signum, handler)
        if previous is not None:  # None: a handler not installed from Python, which cannot be put back
            acquired.callback(signal.signal, signum, previous)
    return signals


def _load_snapshot(
    store: Store, config: EdgeConfig, signals: _Signals, acquired: contextlib.ExitStack
) -> NodeSync | None:
    """Load `--bundle` and start the syncer (with `--control`), waiting for its first snapshot when the
    store has none; the syncer, when started. `_Exit` when there is still nothing to serve."""
    if config.data.bundle is not None:
        load_bundle_file(store, config.data.bundle)
    sync: NodeSync | None = None
    if config.sync.control:
        try:
            sync = start_syncer(store, config)
        except SyncSetupError as exc:
            log.error("sync_unavailable", extra={"error": str(exc)})
            raise _Exit(2) from exc
        acquired.callback(sync.stop)
        if not store.has_snapshot():
            log.info("waiting_for_snapshot", extra={"control": config.sync.control})
            while not signals.stop.is_set() and not sync.syncer.wait_for_version(lambda v: v > 0, 0.5):
                pass
    if not store.has_snapshot():
        log.error(
            "no_snapshot",
            extra={
                "data": str(config.data.dir),
                "error": "nothing to serve: no snapshot in the data directory and no valid --bundle",
            },
        )
        raise _Exit(2 if sync is None else 0)
    return sync


def _reserve_listen(
    listen: str, acquired: contextlib.ExitStack, setting: str = _GRPC_SETTING
) -> tuple[str, int]:
    """The address the workers listen on (HOST:PORT), reserved for them all: port 0 reserves a free port;
    a given port is refused (exit 2) while another program serves it."""
    host, _, port_text = listen.rpartition(":")
    try:
        port = int(port_text)
        if port == 0:
            reserved, port = _reserve_port(host)
        else:
            reserved = _claim_port(host, port, setting=setting)
        acquired.callback(reserved.close)
    except _PortInUse as exc:
        log.error("listen_failed", extra={"error": f"cannot listen on {listen}: {exc.strerror}"})
        raise _Exit(2) from exc
    except (ValueError, OSError) as exc:
        log.error("listen_failed", extra={"error": f"cannot listen on {listen}: {exc}"})
        raise _Exit(2) from exc
    return f"{host}:{port}", port


def _start_metrics(
    config: EdgeConfig, store: Store, placements: tuple[str, ...], acquired: contextlib.ExitStack
) -> tuple[NodeMetrics | None, str]:
    """The node's metrics, with `--metrics-listen` or a control plane (its heartbeats carry how the
    version served is doing, edge/serving_stats.py), and the address of its /metrics endpoint ("": none)."""
    if not config.metrics.listen and not config.sync.control:
        return None, ""
    # Stale means "no word from the control plane for too long": a standalone node has none to hear from
    stale_after = config.health.stale_after_seconds if config.sync.control else None
    run_dir = make_run_dir()
    acquired.callback(shutil.rmtree, run_dir, ignore_errors=True)
    node_metrics = NodeMetrics(run_dir, MetricsLayout(placements), stale_after_seconds=stale_after)
    _note_snapshot(node_metrics, store)
    if not config.metrics.listen:
        return node_metrics, ""
    try:
        metrics_server, _ = serve_metrics(config.metrics.listen, node_registry(node_metrics))
    except OSError as exc:
        log.error(
            "metrics_listen_failed", extra={"error": f"cannot listen on {config.metrics.listen}: {exc}"}
        )
        raise _Exit(2) from exc
    acquired.callback(metrics_server.server_close)
    acquired.callback(metrics_server.shutdown)
    metrics_host = config.metrics.listen.rpartition(":")[0]
    return node_metrics, f"{metrics_host}:{metrics_server.server_address[1]}"


def _worker_specs(
    config: EdgeConfig,
    address: str,
    placements: tuple[str, ...],
    node_metrics: NodeMetrics | None,
    http_address: str = "",
) -> list[WorkerSpec]:
    server = config.server
    cpus = sorted(os.sched_getaffinity(0))
    options = ServingOptions(
        max_in_flight=server.max_in_flight,
        overload=server.overload,
        min_budget_ms=server.min_budget_ms,
        queue_exposures=queues_exposures(config),
    )
    limits = Limits(**{f.name: getattr(config.limits, f.name) for f in dataclasses.fields(Limits)})
    return [
        WorkerSpec(
            index=i,
            data_dir=config.data.dir,
            map_size=config.data.map_size_mb << 20,
            listen=address,
            threads=server.threads,
            grace=server.grace_seconds,
            pin_cpu=cpus[i % len(cpus)] if server.pin else None,
            options=options,
            limits=limits,
            activity_limits=_activity_limits(config),
            group_commit_max_events=config.track.group_commit_max_events,
            group_commit_max_wait_s=config.track.group_commit_max_wait_ms / 1000,
            log_level=config.log.level,
            max_message_bytes=config.limits.max_message_bytes,
            metrics_path=node_metrics.worker_path(i) if node_metrics is not None else None,
            placements=placements,
            http_listen=http_address,
            shadow_max_sample=config.sync.shadow_max_sample if config.sync.control else 0.0,
            shadow_queue=config.sync.shadow_queue,
        )
        for i in range(server.workers)
    ]


def _activity_limits(config: EdgeConfig) -> ActivityLimits:
    return ActivityLimits(
        max_views=config.track.activity_max_views,
        ttl_ms=int(config.track.activity_ttl_hours * 3_600_000),
        purchases_ttl_ms=int(config.track.activity_purchases_ttl_days * 86_400_000),
    )


def _start_workers(specs: list[WorkerSpec], grace: float, acquired: contextlib.ExitStack) -> Supervisor:
    """Every worker serving, or `_Exit` (those started are stopped at once). At exit the workers drain
    in-flight calls for `grace` seconds."""
    supervisor = Supervisor(specs)
    try:
        supervisor.start_all()
    except RuntimeError as exc:
        log.error("start_failed", extra={"error": str(exc)})
        supervisor.stop_all(0.0)
        raise _Exit(2) from exc
    acquired.callback(supervisor.stop_all, grace)
    return supervisor


def _announce(
    store: Store,
    supervisor: Supervisor,
    address: str,
    port: int,
    metrics_address: str,
    ready_file: Path | None,
    http_address: str = "",
) -> None:
    """The `serving` log line, and the ready file for scripts."""
    version = store.version()
    log.info(
        "serving",
        extra={
            "address": address,
            "snapshot_version": version,
            "pid": os.getpid(),
            "workers": supervisor.pids(),
            "metrics": metrics_address or None,
            "http": http_address or None,
        },
    )
    if ready_file is not None:
        _write_ready_file(
            ready_file,
            {
                "address": address,
                "port": port,
                "pid": os.getpid(),
                "snapshot_version": version,
                "workers": supervisor.pids(),
                "metrics": metrics_address,
                "http": http_address,
            },
        )


STEP_LOG_INTERVAL_S: Final = 60.0
"""A supervisor step failing on every tick logs at most one line per this many seconds (with a count)."""


@dataclass
class _Failing:
    failures: int  # since the step last succeeded
    since_logged: int  # failures not logged since the last line
    logged_at: float


class StepGuard:
    """Runs the supervisor loop's steps: an exception in one (any Exception: MemoryError and
    RecursionError too) is logged as `supervisor_step_failed` with the step's name, and the loop goes on
    with the next step. A step that fails on every tick logs its first failure, then at most one line per
    `interval` seconds with the count of failures since; `supervisor_step_recovered` when it succeeds
    again."""

    def __init__(self, interval: float = STEP_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._failing: dict[str, _Failing] = {}
        self.failures = 0  # every failure of every step since start

    def run(self, step: str, action: Callable[[], object]) -> bool:
        """Run `action`; False (and a log line, rate-limited) if it raised."""
        try:
            action()
        except Exception as exc:  # the loop must outlive any step: this is where it does
            self._failed(step, exc)
            return False
        failing = self._failing.pop(step, None)
        if failing is not None:
            log.info("supervisor_step_recovered", extra={"step": step, "failures": failing.failures})
        return True

    def _failed(self, step: str, exc: Exception) -> None:
        self.failures += 1
        now = self._clock()
        failing = self._failing.get(step)
        if failing is None:
            failing = self._failing[step] = _Failing(0, 0, now - self.interval)
        failing.failures += 1
        failing.since_logged += 1
        if now - failing.logged_at < self.interval:
            return
        log.error(
            "supervisor_step_failed",
            exc_info=exc,
            extra={
                "step": step,
                "error": f"{type(exc).__name__}: {_cut(str(exc), 500)}",
                "failures": failing.failures,
                "failures_since_last_line": failing.since_logged,
            },
        )
        failing.since_logged = 0
        failing.logged_at = now


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run_until_stopped(
    store: Store,
    config: EdgeConfig,
    signals: _Signals,
    sync: NodeSync | None,
    supervisor: Supervisor,
    node_metrics: NodeMetrics | None,
    limits: _StoreLimits,
    counters: NodeCounters | None = None,
) -> None:
    """Every 0.2 s until SIGTERM/SIGINT: the size limits recomputed after a new version, one bounded
    housekeeping step, the bundle reloaded after SIGHUP, the metrics brought up to date, dead workers
    restarted. Each step runs under a `StepGuard`: one that raises is logged and the loop goes on, so
    housekeeping, reloads, restarts and SIGTERM keep working."""
    outbox, ids, activity = limits.caps()
    housekeeper = Housekeeper(
        store,
        int(config.track.dedupe_window_hours * 3_600_000),
        _activity_limits(config),
        outbox_max_bytes=outbox,
        ids_max_bytes=ids,
        activity_max_bytes=activity,
    )
    guard = StepGuard()

    def store_limits() -> None:
        if limits.refresh():  # the snapshot changed: so did what it leaves for the caps
            housekeeper.set_limits(*limits.caps())

    def housekeeping() -> None:
        try:
            housekeeper.step()  # one bounded step each tick (edge/housekeeping.py)
        except (StoreError, lmdb.Error, RecordError, ValueError) as exc:
            log.error("housekeeping_failed", extra={"error": str(exc)})

    def reload() -> None:
        if config.data.bundle is None:
            log.warning("reload_ignored", extra={"error": "SIGHUP without --bundle: nothing to reload"})
            return
        load_bundle_file(store, config.data.bundle)
        if node_metrics is not None:
            _note_snapshot(node_metrics, store)

    def metrics(node_metrics: NodeMetrics) -> None:
        forwarded = sync.forwarder.forwarded if sync is not None else 0
        entries, size_bytes = store.outbox_usage()
        node_metrics.set_outbox(entries, forwarded, size_bytes, housekeeper.outbox_dropped)
        node_metrics.set_store(store.used_bytes(), store.write_limit, limits.budget.caps)
        node_metrics.set_housekeeping(
            housekeeper.deleted_ids,
            housekeeper.deleted_activities,
            housekeeper.deleted_ids_early,
            housekeeper.oldest_id_ms,
            housekeeper.deleted_activities_early,
            housekeeper.activity_bytes,
            housekeeper.activity_window_ms,
        )

    def workers() -> None:
        restarts = supervisor.restarts
        try:
            supervisor.check(signals.stop)
        finally:
            if node_metrics is not None:
                if supervisor.restarts > restarts:
                    node_metrics.worker_restarted(supervisor.restarts - restarts)
                node_metrics.set_workers_alive(supervisor.alive())

    shadow_ticks = 0

    def shadow(counters: NodeCounters) -> None:
        """Once a second: the shadow candidate's gauges, and its stats where `edge status` reads them."""
        nonlocal shadow_ticks
        shadow_ticks = (shadow_ticks + 1) % 5
        if shadow_ticks:
            return
        reading = counters.shadow.reading()
        if node_metrics is not None:
            node_metrics.set_shadow(
                reading.stats.version if reading else 0, reading.sample if reading else 0.0
            )
        candidate = sync.syncer.shadow.current() if sync is not None else None
        if reading is not None and candidate is not None:
            write_status(config.data.dir, reading, candidate)

    while not signals.stop.wait(0.2):
        guard.run("store_limits", store_limits)
        guard.run("housekeeping", housekeeping)
        if signals.reload.is_set():
            signals.reload.clear()
            guard.run("reload", reload)
        if node_metrics is not None:
            guard.run("metrics", functools.partial(metrics, node_metrics))
            if sync is not None:
                guard.run("sync_metrics", functools.partial(_note_sync, node_metrics, store, sync.syncer))
        if counters is not None:
            guard.run("shadow", functools.partial(shadow, counters))
        if not signals.stop.is_set():
            guard.run("workers", workers)


class _StoreLimits:
    """The caps in force for the snapshot the store holds (core/store_budget.py), recomputed when the
    served version changes; the first set and each that differs are logged as `store_limits`, a warning
    when the map cannot hold a reload of the snapshot beside it."""

    def __init__(self, store: Store, config: EdgeConfig) -> None:
        self._store = store
        self._config = config
        self._version = -1
        self.budget: StoreBudget = store_limits(config, 0)
        self.refresh()

    def caps(self) -> tuple[int, int, int]:
        """(outbox, event ids, live activity) in bytes."""
        outbox, ids, activity = (cap.effective_bytes for cap in self.budget.caps)
        return outbox, ids, activity

    def refresh(self) -> bool:
        """Recompute after a new version; whether the caps changed."""
        version = self._store.version()
        if version == self._version:
            return False
        first = self._version < 0
        self._version = version
        budget = store_limits(self._config, self._store.snapshot_bytes())
        changed = budget.caps != self.budget.caps
        self.budget = budget
        if not (changed or first):
            return False
        mib = 1 << 20
        fields: dict[str, object] = {
            "version": version,
            "snapshot_mib": round(budget.snapshot_bytes / mib, 1),
            "reload_room_mib": round(budget.reload_bytes / mib, 1),
            "headroom_mib": round(budget.headroom_bytes / mib, 1),
            "write_limit_mib": round(budget.write_limit_bytes / mib, 1),
            **{cap.key: round(cap.effective_bytes / mib, 1) for cap in budget.caps},
        }
        if budget.reload_fits:
            log.info("store_limits", extra=fields)
        else:
            least = (2 * budget.snapshot_bytes + budget.headroom_bytes) // mib + 1
            fields["error"] = (
                f"data.map_size_mb = {self._config.data.map_size_mb} cannot hold a reload of this snapshot "
                f"beside it (a reload would fail: the store is full); give the node at least {least} MiB"
            )
            log.warning("store_limits", extra=fields)
        return changed


def _note_sync(node: NodeMetrics, store: Store, syncer: EdgeSyncer) -> None:
    """With a control plane, staleness is the time since the last message from it; and the replica the
    node follows."""
    age = syncer.contact_age()
    synced_at = time.time() - age if age is not None else None
    node.set_snapshot(store.version(), synced_at)
    node.set_control(syncer.replicas.current, syncer.replicas.switches)


def _note_snapshot(node: NodeMetrics, store: Store) -> None:
    info = store.snapshot_info()
    node.set_snapshot(info.version, info.loaded_at_ms / 1000 if info.loaded_at_ms else None)
