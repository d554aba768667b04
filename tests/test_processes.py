"""`edgewise.processes` with real `edgewise` children: ready files, failures with the log's tail, stops
with a grace period, and nothing left behind when a group closes (also on Ctrl-C)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from conftest import edge_args
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgewise.processes import ProcessError, Processes

pytestmark = pytest.mark.slow  # every test here starts real processes


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_served_child_is_ready_logs_json_and_stops_cleanly(bundle_dir: Path, tmp_path: Path) -> None:
    with Processes(tmp_path / "run") as group:
        edge = group.serve("edge", edge_args(tmp_path / "data", bundle_dir, "--workers", "1"))
        info = edge.wait_ready()
        assert info["pid"] == edge.pid and edge.address == info["address"] and edge.port == info["port"]
        assert edge.data == tmp_path / "data"
        assert edge.log_path == tmp_path / "run" / "edge.log"
        assert os.getpgid(edge.pid) == edge.pid  # the leader of a group of its own
        with grpc.insecure_channel(edge.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        assert edge.stop() == 0
        assert any(e.get("event") == "stopped" for e in edge.log_events())
        # the same name again: its own files
        again = group.start("edge", edge_args(tmp_path / "data2", bundle_dir))
        assert again.log_path.name == "edge-2.log" and again.ready_path.name == "edge-2.ready.json"


def test_a_child_that_exits_first_fails_with_its_log(tmp_path: Path) -> None:
    with Processes(tmp_path / "run") as group:
        child = group.start("edge", ["edge", "serve", "--data", str(tmp_path / "d"), "--workers", "-1"])
        with pytest.raises(ProcessError, match=r"edge exited with 2:\n(.|\n)*--workers"):
            child.wait_ready(30)


def test_a_child_not_ready_in_time_is_killed(tmp_path: Path) -> None:
    with Processes(tmp_path / "run") as group:
        # no snapshot and a control plane that is not there: it waits, never ready
        args = edge_args(tmp_path / "d", None, "--control", "127.0.0.1:1", "--node-id", "n", "--workers", "1")
        child = group.start("edge", args, env={"EDGEWISE_EDGE_TOKEN": "t"})
        with pytest.raises(ProcessError, match=r"edge not ready in 2 s"):
            child.wait_ready(2)
        assert child.proc.returncode == -signal.SIGKILL


def test_a_child_that_ignores_the_signal_is_killed_after_the_grace(bundle_dir: Path, tmp_path: Path) -> None:
    with Processes(tmp_path / "run") as group:
        edge = group.serve("edge", edge_args(tmp_path / "data", bundle_dir, "--workers", "1"))
        started = time.monotonic()
        assert edge.stop(signal.SIGWINCH, grace=1) == -signal.SIGKILL  # SIGWINCH: ignored
        assert 1 <= time.monotonic() - started < 10


def test_closing_kills_what_a_killed_supervisor_left_behind(bundle_dir: Path, tmp_path: Path) -> None:
    group = Processes(tmp_path / "run")
    with group:
        edge = group.serve("edge", edge_args(tmp_path / "data", bundle_dir, "--workers", "2"))
        workers = [int(pid) for pid in edge.wait_ready()["workers"]]
        for pid in workers:  # stopped workers cannot notice that their supervisor is gone
            os.kill(pid, signal.SIGSTOP)
        assert edge.stop(signal.SIGKILL) == -signal.SIGKILL  # the supervisor alone
        assert all(_alive(pid) for pid in workers)
    assert _gone(workers), "a worker outlived the group"


def test_ctrl_c_in_the_with_block_stops_every_child(bundle_dir: Path, tmp_path: Path) -> None:
    pids: list[int] = []
    with pytest.raises(KeyboardInterrupt), Processes(tmp_path / "run") as group:
        for name in ("a", "b"):
            edge = group.serve(name, edge_args(tmp_path / name, bundle_dir, "--workers", "1"))
            pids += [edge.pid, *(int(p) for p in edge.wait_ready()["workers"])]
        raise KeyboardInterrupt
    assert [p.proc.returncode for p in group.started] == [0, 0]  # SIGTERM: drained and stopped
    assert _gone(pids)
