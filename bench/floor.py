"""`edgewise bench floor-server`: a no-op Personalizer served the way an edge node serves, for the gRPC floor.

Same service (`edgewise.v1.Personalizer`), same transport: sync `grpc.server` worker processes sharing
one port with `grpc.so_reuseport` = 1, started with the multiprocessing `spawn` method and creating
their server in the child (gRPC does not survive a fork), optionally pinned one per CPU, the same
message-size options and the same cap on calls in flight per worker, plus `grpc.health.v1` and server
reflection. The handlers do nothing: `Decide` answers an empty `DecideResponse` carrying a fresh
`decision_id`, `Track` answers `accepted = len(events)`. Whatever `edgewise bench load` measures
against it is the cost of gRPC, protobuf and the client: the floor under the edge's own figures.

Port 0 picks a free port: it is reserved with a bound (not listening) SO_REUSEPORT socket, every
worker binds it, and `--ready-file` gets `{address, port, pid, workers, worker_pids}` once all of them
serve. SIGTERM / SIGINT: health NOT_SERVING, drain for `--grace` seconds, exit 0. If a worker dies the
floor server stops the others and exits 1 (it is a benchmark tool: no restarts, so no figure is ever
measured on fewer workers than asked for).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgewise.edge.metrics import MetricsLayout, WorkerMetrics
from edgewise.edge.server import _CallMeter
from edgewise.edge.stage_times import stage_times_from_env
from edgewise.v1 import personalizer_pb2 as _pb
from edgewise.v1 import personalizer_pb2_grpc as _pb_grpc

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FLOOR_LISTEN",
    "FloorConfig",
    "FloorError",
    "FloorServer",
    "FloorServicer",
    "floor_worker_main",
    "serve_floor",
]

DEFAULT_FLOOR_LISTEN: Final = "127.0.0.1:50052"
MAX_MESSAGE_BYTES: Final = 4 << 20  # as the edge (edge/server.py)
READY_TIMEOUT_S: Final = 60.0
PERSONALIZER_SERVICE: Final = _pb.DESCRIPTOR.services_by_name["Personalizer"].full_name


class FloorError(RuntimeError):
    """The floor server could not start (bad address, port in use, a worker failed)."""


@dataclass(frozen=True)
class FloorConfig:
    """What `edgewise bench floor-server` runs; defaults mirror `edgewise edge serve`."""

    listen: str = DEFAULT_FLOOR_LISTEN  # HOST:PORT; port 0 = a free port
    workers: int = 0  # 0 = one per CPU this process may run on
    threads: int = 8  # gRPC handler threads per worker
    max_in_flight: int = 64  # per worker; past it gRPC sheds with RESOURCE_EXHAUSTED
    pin: bool = False  # pin worker i to CPU i
    grace: float = 2.0  # seconds to drain in-flight calls on shutdown
    ready_file: Path | None = None
    # Behind the edge's `_CallMeter` (edge/server.py) with a metrics file, as an edge worker serves
    # Decide: the cost of the edge's transport wrapping, measured against the plain floor.
    metered: bool = False

    def validated(self) -> FloorConfig:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise FloorError(f"--listen must be HOST:PORT (port 0..65535), got {self.listen!r}")
        if self.workers < 0:
            raise FloorError(f"--workers must be >= 0 (0 = one per CPU), got {self.workers}")
        if self.threads < 1:
            raise FloorError(f"--threads must be >= 1, got {self.threads}")
        if self.max_in_flight < 1:
            raise FloorError(f"--max-in-flight must be >= 1, got {self.max_in_flight}")
        if self.grace < 0:
            raise FloorError(f"--grace must be >= 0, got {self.grace}")
        return self

    def worker_count(self) -> int:
        return self.workers or len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class _WorkerSpec:
    index: int
    listen: str  # with a concrete port
    threads: int
    max_in_flight: int
    pin_cpu: int | None
    grace: float
    metered: bool = False


def floor_worker_main(spec: _WorkerSpec, ready: Connection) -> None:
    """Entry point of one floor worker process (spawned): serve until SIGTERM/SIGINT or orphaned."""
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    parent = os.getppid()
    if spec.pin_cpu is not None:
        os.sched_setaffinity(0, {spec.pin_cpu})
    metrics_dir = Path(tempfile.mkdtemp(prefix="edgewise-floor-metrics-")) if spec.metered else None
    try:
        server, health_servicer = _build_server(spec, metrics_dir)
    except Exception as exc:  # reported to the parent, which names it
        ready.send(("error", f"worker {spec.index}: {exc}"))
        ready.close()
        return
    stages = stage_times_from_env()  # benchmarks: the worker's threads and GC collections (no stages)
    server.start()
    _set_serving(health_servicer, True)
    ready.send(("ready", os.getpid()))
    ready.close()
    while not stop.wait(0.2):
        if os.getppid() != parent:  # the parent is gone: do not linger
            break
        if stages is not None:
            stages.write()
    health_servicer.enter_graceful_shutdown()
    server.stop(spec.grace).wait()
    if stages is not None:
        stages.write()
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)


class FloorServicer(_pb_grpc.PersonalizerServicer):
    """The Personalizer service doing nothing, as cheaply as the protocol allows."""

    def Decide(self, request: _pb.DecideRequest, context: grpc.ServicerContext) -> _pb.DecideResponse:
        return _pb.DecideResponse(decision_id=os.urandom(16).hex())

    def Track(self, request: _pb.TrackRequest, context: grpc.ServicerContext) -> _pb.TrackResponse:
        return _pb.TrackResponse(accepted=len(request.events))


def _build_server(spec: _WorkerSpec, metrics_dir: Path | None) -> tuple[grpc.Server, health.HealthServicer]:
    meter = (
        _CallMeter(WorkerMetrics(metrics_dir / "metrics.bin", MetricsLayout(())), MAX_MESSAGE_BYTES)
        if metrics_dir is not None
        else None
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=spec.threads, thread_name_prefix="rpc"),
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
        maximum_concurrent_rpcs=spec.max_in_flight,
        interceptors=[meter] if meter is not None else None,
    )
    if meter is not None:
        meter.bind(server)
    _pb_grpc.add_PersonalizerServicer_to_server(FloorServicer(), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (PERSONALIZER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(spec.listen)
    except RuntimeError as exc:
        raise FloorError(f"cannot listen on {spec.listen}: {exc}") from exc
    if port == 0:
        raise FloorError(f"cannot listen on {spec.listen} (in use, or not an address of this host)")
    _set_serving(health_servicer, False)
    return server, health_servicer


def _set_serving(health_servicer: health.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", PERSONALIZER_SERVICE):
        health_servicer.set(service, status)


def _reserve_port(host: str) -> tuple[socket.socket, int]:
    """Bind (not listen) a SO_REUSEPORT socket on a free port, so every worker can share that port."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bare, 0))
    except OSError as exc:
        sock.close()
        raise FloorError(f"cannot reserve a port on {host}: {exc}") from exc
    return sock, int(sock.getsockname()[1])


@dataclass
class FloorServer:
    """Worker processes of a running floor server. Use as a context manager or call `stop()`:

    with FloorServer.start(FloorConfig(listen="127.0.0.1:0", workers=2)) as floor:
        report = run_load(LoadConfig(target=floor.address, concurrency=32))
    """

    address: str
    port: int
    processes: list[BaseProcess]
    grace: float
    _reserved: socket.socket | None = field(default=None, repr=False)

    @classmethod
    def start(cls, config: FloorConfig) -> FloorServer:
        config = config.validated()
        host, _, port_text = config.listen.rpartition(":")
        reserved: socket.socket | None = None
        port = int(port_text)
        if port == 0:
            reserved, port = _reserve_port(host)
        n = config.worker_count()
        cpus = sorted(os.sched_getaffinity(0))
        ctx = mp.get_context("spawn")
        floor = cls(f"{host}:{port}", port, [], config.grace, reserved)
        waiting: list[tuple[int, Connection]] = []
        try:
            for i in range(n):
                spec = _WorkerSpec(
                    index=i,
                    listen=floor.address,
                    threads=config.threads,
                    max_in_flight=config.max_in_flight,
                    pin_cpu=cpus[i % len(cpus)] if config.pin else None,
                    grace=config.grace,
                    metered=config.metered,
                )
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(
                    target=floor_worker_main, args=(spec, send), name=f"floor-worker-{i}", daemon=True
                )
                process.start()
                send.close()
                floor.processes.append(process)
                waiting.append((i, receive))
            deadline = time.monotonic() + READY_TIMEOUT_S
            for i, receive in waiting:
                if not receive.poll(max(0.0, deadline - time.monotonic())):
                    raise FloorError(f"floor worker {i} did not start within {READY_TIMEOUT_S:.0f} s")
                try:
                    status, detail = receive.recv()
                except EOFError:
                    raise FloorError(f"floor worker {i} exited before serving") from None
                if status != "ready":
                    raise FloorError(str(detail))
        except BaseException:
            floor.stop()
            raise
        finally:
            for _, receive in waiting:
                receive.close()
        return floor

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def dead_worker(self) -> BaseProcess | None:
        """A worker that has exited, if any."""
        for p in self.processes:
            if not p.is_alive():
                return p
        return None

    def stop(self) -> None:
        """SIGTERM every worker (they drain for the grace period), wait, kill any that lingers."""
        for p in self.processes:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 5.0
        for p in self.processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(2.0)
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    def __enter__(self) -> FloorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_ready_file(path: Path, payload: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def serve_floor(config: FloorConfig, stop: threading.Event | None = None) -> int:
    """Run a floor server until SIGTERM/SIGINT (or `stop` is set): 0 on a clean stop, 1 if a worker died.

    Installs signal handlers, so call it from the main thread. Raises FloorError if it cannot start."""

    stop = stop or threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        floor = FloorServer.start(config)
        log.info(
            "floor_serving",
            extra={"address": floor.address, "pid": os.getpid(), "workers": len(floor.processes)},
        )
        if config.ready_file is not None:
            _write_ready_file(
                config.ready_file,
                {
                    "address": floor.address,
                    "port": floor.port,
                    "pid": os.getpid(),
                    "workers": len(floor.processes),
                    "worker_pids": floor.pids,
                },
            )
        code = 0
        with floor:
            while not stop.wait(0.2):
                dead = floor.dead_worker()
                if dead is not None:
                    log.error(
                        "floor_worker_died",
                        extra={
                            "worker": dead.name,
                            "exitcode": dead.exitcode,
                            "error": "a floor worker exited; stopping the others",
                        },
                    )
                    code = 1
                    break
            log.info("floor_stopping", extra={"grace_seconds": config.grace})
        log.info("floor_stopped")
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
