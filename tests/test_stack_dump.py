"""`kill -USR1` on a real edge supervisor, one of its workers and a real control plane writes every
thread's Python stack to the process's log, and the process goes on serving and stops on SIGTERM as
always (what docs/operations.md tells an operator to do with a process that does not exit); a process
that outlives the bound it set when it began to stop writes its stacks and exits 1 instead of hanging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from conftest import start_edge
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sync_support import start_control

from edgewise.processes import Process, Processes

pytestmark = pytest.mark.slow  # real processes


def _dumps(process: Process) -> int:
    """How many stack dumps the process's log holds (faulthandler starts each thread's with this)."""
    return process.logs().count("(most recent call first)")


def _wait_for_dump(process: Process, pid: int, before: int) -> str:
    """Send SIGUSR1 to `pid` (a process writing to `process`'s log) and wait for its dump."""
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while _dumps(process) <= before:
        assert time.monotonic() < deadline, f"no stack dump in the log:\n{process.log_tail()}"
        time.sleep(0.05)
    time.sleep(0.2)  # the other threads' stacks follow the first
    return process.logs()


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def test_sigusr1_dumps_the_stacks_of_an_edge_and_its_worker_and_both_go_on(
    processes: Processes, bundle_dir: Path, tmp_path: Path
) -> None:
    edge = start_edge(processes, tmp_path / "data", bundle_dir)
    logs = _wait_for_dump(edge, edge.pid, 0)
    assert "_run_until_stopped" in logs, "the supervisor's main thread, in its loop"
    worker = edge.ready()["workers"][0]  # type: ignore[index]
    logs = _wait_for_dump(edge, int(worker), _dumps(edge))
    assert "worker_main" in logs, "the worker's main thread, waiting for its stop"
    assert _serving(edge.address)
    assert edge.stop(signal.SIGTERM) == 0
    assert edge.log_events()[-1]["event"] == "stopped"


def test_sigusr1_dumps_the_stacks_of_a_control_plane_and_it_goes_on(
    processes: Processes, tmp_path: Path
) -> None:
    control = start_control(processes, tmp_path / "control")
    logs = _wait_for_dump(control, control.pid, 0)
    assert "control_serve.py" in logs, "the main thread, waiting for SIGTERM"
    assert _serving(control.address)
    assert control.stop(signal.SIGTERM) == 0
    assert control.log_events()[-1]["event"] == "control_stopped"


def test_a_stopping_process_that_outlives_its_bound_dumps_its_stacks_and_exits_1() -> None:
    """A thread that never ends would keep the interpreter from exiting for ever: the bound ends it."""
    program = (
        "import threading\n"
        "from edgewise.stacks import bound_the_exit\n"
        "def stuck_for_ever():\n"
        "    threading.Event().wait()\n"
        "threading.Thread(target=stuck_for_ever, name='stuck').start()\n"
        "bound_the_exit(1.0)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    assert "Timeout (0:00:01)!" in done.stderr
    assert "in stuck_for_ever" in done.stderr


def test_a_process_that_exits_within_its_bound_keeps_its_status() -> None:
    program = "import sys\nfrom edgewise.stacks import bound_the_exit\nbound_the_exit(30.0)\nsys.exit(3)\n"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (3, "")
