"""`edgewise edge serve`: an edge node serving one data directory with N worker processes.

The supervisor (this process) is the node's single writer of replicated data: it loads `--bundle` into
the store at start (skipped when that exact bundle is already loaded) and again on SIGHUP; an invalid
bundle is refused with a message naming file, record and field, and the last good snapshot keeps
serving. It starts `--workers` processes (spawn) that share the port with SO_REUSEPORT and read the
same LMDB environment: a new snapshot is visible to every worker the moment it commits. A worker that
dies is restarted. SIGTERM / SIGINT: every worker turns health NOT_SERVING, drains in-flight calls for
`--grace` seconds and exits; then the supervisor exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from edgewise.core.activity import ActivityLimits
from edgewise.core.store import Store, StoreError
from edgewise.edge.convert import Limits
from edgewise.edge.logs import log
from edgewise.edge.servicer import ServingOptions
from edgewise.edge.worker import WorkerSpec, worker_main
from edgewise.sync.bundle import BundleError, load_bundle
from edgewise.sync.snapshot import apply_bundle

__all__ = ["add_arguments", "load_bundle_file", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="data directory of this node's LMDB store")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="bundle directory to load at start and on SIGHUP (an invalid one is refused; the last good "
        "snapshot keeps serving)",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:50051", help="HOST:PORT to serve gRPC on; port 0 picks a free port"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="worker processes sharing the port (default: one per core)"
    )
    parser.add_argument("--pin", action="store_true", help="pin worker i to CPU i (of this process's CPUs)")
    parser.add_argument("--threads", type=int, default=8, help="gRPC handler threads per worker (default 8)")
    parser.add_argument(
        "--max-in-flight", type=int, default=64, help="calls handled at once per worker before shedding (64)"
    )
    parser.add_argument(
        "--overload",
        choices=("reject", "default"),
        default="reject",
        help="past --max-in-flight: reject with RESOURCE_EXHAUSTED, or answer the fast default (OVERLOADED)",
    )
    parser.add_argument(
        "--min-budget-ms",
        type=float,
        default=2.0,
        help="with less of the caller's deadline left, answer the fast default (BUDGET_EXCEEDED)",
    )
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds to drain in-flight calls on shutdown"
    )
    parser.add_argument(
        "--map-size-mb",
        type=int,
        default=8192,
        help="LMDB map size in MiB (an upper bound, not an allocation)",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="once serving, write {address, port, pid, snapshot_version} as JSON here (for scripts)",
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
    if digest and current.get("manifest_sha256") == digest:
        log("bundle_already_loaded", bundle=str(bundle_dir), version=current.get("version"))
        return True
    started = time.monotonic()
    try:
        bundle = load_bundle(bundle_dir)
        info = apply_bundle(store, bundle, manifest_sha256=digest)
    except BundleError as exc:
        log(
            "bundle_refused",
            level="error",
            bundle=str(bundle_dir),
            error=str(exc),
            serving_version=current.get("version"),
        )
        return False
    except StoreError as exc:
        log("bundle_not_applied", level="error", bundle=str(bundle_dir), error=str(exc))
        return False
    log(
        "bundle_loaded",
        bundle=str(bundle_dir),
        version=info["version"],
        items=info["items"],
        profiles=info["profiles"],
        seconds=round(time.monotonic() - started, 3),
    )
    return True


def _write_ready_file(path: Path, payload: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def _reserve_port(host: str) -> tuple[socket.socket, int]:
    """Bind (not listen) a SO_REUSEPORT socket on a free port, so every worker can share that port."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), 0))
    return sock, int(sock.getsockname()[1])


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

    def _start(self, slot: _Slot, timeout: float) -> None:
        parent, child = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_main, args=(slot.spec, child), name=f"edgewise-worker-{slot.spec.index}"
        )
        process.start()
        child.close()
        slot.process = process
        slot.last_start = time.monotonic()
        if not parent.poll(timeout):
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

    def pids(self) -> list[int]:
        return [slot.process.pid or 0 for slot in self.slots if slot.process is not None]

    def check(self) -> None:
        """Restart workers that died (at most one restart per slot per second)."""
        for slot in self.slots:
            process = slot.process
            if process is None or process.is_alive():
                continue
            if time.monotonic() - slot.last_start < 1.0:
                continue
            log(
                "worker_died",
                level="error",
                worker=slot.spec.index,
                pid=process.pid,
                exitcode=process.exitcode,
            )
            slot.restarts += 1
            self.restarts += 1
            try:
                self._start(slot, 60.0)
                log(
                    "worker_restarted",
                    worker=slot.spec.index,
                    pid=slot.process.pid if slot.process else None,
                    restarts=slot.restarts,
                )
            except RuntimeError as exc:
                log("worker_restart_failed", level="error", worker=slot.spec.index, error=str(exc))

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
                log("worker_killed", level="warning", worker=slot.spec.index, error="did not stop in time")
                slot.process.kill()
                slot.process.join(5)


def _check_arguments(args: argparse.Namespace) -> str | None:
    checks = [
        (args.workers >= 0, "--workers must be >= 1 (0 = one per core)"),
        (args.threads >= 1, "--threads must be >= 1"),
        (args.max_in_flight >= 1, "--max-in-flight must be >= 1"),
        (args.grace >= 0, "--grace must be >= 0"),
        (args.min_budget_ms >= 0, "--min-budget-ms must be >= 0"),
        (args.map_size_mb >= 1, "--map-size-mb must be >= 1"),
    ]
    return next((message for ok, message in checks if not ok), None)


def run(args: argparse.Namespace) -> int:
    problem = _check_arguments(args)
    if problem is not None:
        log("bad_arguments", level="error", error=problem)
        return 2
    try:
        store = Store(args.data, map_size=args.map_size_mb << 20)
    except StoreError as exc:
        log("store_unavailable", level="error", error=str(exc))
        return 2
    if args.bundle is not None:
        load_bundle_file(store, args.bundle)
    if not store.has_snapshot():
        log(
            "no_snapshot",
            level="error",
            data=str(args.data),
            error="nothing to serve: no snapshot in the data directory and no valid --bundle",
        )
        store.close()
        return 2

    host, _, port_text = args.listen.rpartition(":")
    reserved: socket.socket | None = None
    try:
        port = int(port_text)
        if port == 0:
            reserved, port = _reserve_port(host)
    except (ValueError, OSError) as exc:
        log("listen_failed", level="error", error=f"cannot listen on {args.listen}: {exc}")
        store.close()
        return 2
    address = f"{host}:{port}"
    n_workers = args.workers or os.cpu_count() or 1
    cpus = sorted(os.sched_getaffinity(0))
    options = ServingOptions(
        max_in_flight=args.max_in_flight, overload=args.overload, min_budget_ms=args.min_budget_ms
    )
    specs = [
        WorkerSpec(
            index=i,
            data_dir=args.data,
            map_size=args.map_size_mb << 20,
            listen=address,
            threads=args.threads,
            grace=args.grace,
            pin_cpu=cpus[i % len(cpus)] if args.pin else None,
            options=options,
            limits=Limits(),
            activity_limits=ActivityLimits(),
            group_commit_max_events=256,
        )
        for i in range(n_workers)
    ]

    stop = threading.Event()
    reload = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_reload(signum: int, frame: FrameType | None) -> None:
        reload.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)

    supervisor = Supervisor(specs)
    try:
        supervisor.start_all()
    except RuntimeError as exc:
        log("start_failed", level="error", error=str(exc))
        supervisor.stop_all(0.0)
        store.close()
        return 2
    version = store.version()
    log("serving", address=address, snapshot_version=version, pid=os.getpid(), workers=supervisor.pids())
    if args.ready_file is not None:
        _write_ready_file(
            args.ready_file,
            {
                "address": address,
                "port": port,
                "pid": os.getpid(),
                "snapshot_version": version,
                "workers": supervisor.pids(),
            },
        )
    while not stop.wait(0.2):
        if reload.is_set():
            reload.clear()
            if args.bundle is None:
                log("reload_ignored", level="warning", error="SIGHUP without --bundle: nothing to reload")
            else:
                load_bundle_file(store, args.bundle)
        supervisor.check()
    log("stopping", grace_seconds=args.grace)
    supervisor.stop_all(args.grace)
    if reserved is not None:
        reserved.close()
    store.close()
    log("stopped")
    return 0
