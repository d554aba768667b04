"""Real control-plane processes, ops clients (`ControlClient`, and `edgewise ctl` for the tests of the CLI
itself) and edge-store probes for the sync tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgewise.client import ControlClient
from edgewise.core.store import Store
from tests.conftest import EdgeProcess, launch


@dataclass
class ControlProcess:
    proc: subprocess.Popen[bytes]
    address: str
    port: int
    log_path: Path
    data: Path

    def logs(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@contextmanager
def control_planes(tmp_path: Path, env: Mapping[str, str]) -> Iterator[Callable[..., ControlProcess]]:
    """A starter of control planes (`start(data=None, *extra, listen=..., timeout=...)`, data defaulting
    to tmp_path/"control", tokens from `env`); every one still running at the end is killed."""
    started: list[ControlProcess] = []

    def start(
        data: Path | None = None, *extra: str, listen: str = "127.0.0.1:0", timeout: float = 30
    ) -> ControlProcess:
        control = start_control(
            data or tmp_path / "control", tmp_path / "run", *extra, listen=listen, env=env, timeout=timeout
        )
        started.append(control)
        return control

    try:
        yield start
    finally:
        for control in started:
            if control.proc.poll() is None:
                control.proc.kill()
                control.proc.wait()


def following_edge(
    edge_factory: Callable[..., EdgeProcess],
    data: Path,
    address: str,
    node: str,
    token_env: Mapping[str, str],
    *extra: str,
) -> EdgeProcess:
    """An edge (one worker) following the control plane at `address`; its edge token goes into the
    environment the edge process inherits."""
    os.environ.update(token_env)
    return edge_factory(data, None, "--control", address, "--node-id", node, "--workers", "1", *extra)


def ops_client(address: str, env: Mapping[str, str], timeout: float = 120) -> ControlClient:
    """A ControlClient of the control plane at `address` with the ops token of `env`
    (EDGEWISE_OPS_TOKEN; none when it is missing or empty)."""
    return ControlClient(address, token=env.get("EDGEWISE_OPS_TOKEN") or None, timeout=timeout)


def pushed_edge(
    control_address: str,
    edge_factory: Callable[..., EdgeProcess],
    bundle: Path,
    data: Path,
    node: str,
    ops_env: Mapping[str, str],
    edge_env: Mapping[str, str],
    *extra: str,
) -> tuple[int, EdgeProcess]:
    """Push `bundle` to the control plane at `control_address`, start an edge following it
    (`following_edge`) and wait until it applied the push; the pushed version and the edge."""
    with ops_client(control_address, ops_env) as ops:
        version = ops.push(bundle).version
    edge = following_edge(edge_factory, data, control_address, node, edge_env, *extra)
    wait_for(versions_reach([data], version), 20, f"{node} at the pushed version")
    return version, edge


def start_control(
    data: Path,
    workdir: Path,
    *extra: str,
    listen: str = "127.0.0.1:0",
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> ControlProcess:
    """Start `edgewise control serve` as a real process and wait until it serves."""
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = time.monotonic_ns()
    ready = workdir / f"control-ready-{stamp}.json"
    log_path = workdir / f"control-{stamp}.log"
    cmd = [
        sys.executable,
        "-m",
        "edgewise.cli",
        "control",
        "serve",
        "--data",
        str(data),
        "--listen",
        listen,
        "--ready-file",
        str(ready),
        "--heartbeat",
        "0.5",
        *extra,
    ]
    proc, info = launch(cmd, ready, log_path, timeout, "control plane", dict(env or {}))
    return ControlProcess(proc, info["address"], int(info["port"]), log_path, data)


def ctl(
    address: str, *args: str, env: Mapping[str, str] | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `edgewise ctl --control ADDRESS ARGS...` and return the finished process (for the tests of
    the CLI itself: what it prints, its exit codes; other tests call a ControlClient)."""
    cmd = [sys.executable, "-m", "edgewise.cli", "ctl", "--control", address, *args]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done


def pushed_version(done: subprocess.CompletedProcess[str]) -> int:
    """The version `ctl push` / `ctl push-delta` printed ("... version N, ...")."""
    text = done.stdout
    marker = "version "
    start = text.index(marker, text.index(":")) + len(marker)
    return int(text[start:].split(",")[0])


def edge_state(data: Path) -> tuple[int, str]:
    """(applied version, digest of the replicated records) of an edge's store, read from outside."""
    with Store(data, readonly=True) as store, store.read() as view:
        return view.version, view.replicated_digest()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def versions_reach(datas: list[Path], version: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return all(edge_state(d)[0] >= version for d in datas)
        except Exception:
            return False

    return check


# --- helpers for the fault and security tests (test_sync_faults.py, test_sync_security.py) ---------------


def spawn_edge(
    data: Path, workdir: Path, *extra: str, env: Mapping[str, str] | None = None
) -> tuple[EdgeProcess, Path]:
    """Start `edgewise edge serve` without waiting for it to serve: (process, its ready file). The
    returned EdgeProcess has no address until `edge_address(ready)` gives it one."""
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = time.monotonic_ns()
    ready = workdir / f"ready-{stamp}.json"
    log_path = workdir / f"edge-{stamp}.log"
    cmd = [
        sys.executable,
        "-m",
        "edgewise.cli",
        "edge",
        "serve",
        "--data",
        str(data),
        "--listen",
        "127.0.0.1:0",
        "--ready-file",
        str(ready),
        "--grace",
        "1",
        *extra,
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    return EdgeProcess(proc, "", log_path), ready


def edge_address(edge: EdgeProcess, ready: Path, timeout: float = 30) -> str:
    """Wait until a spawned edge wrote its ready file; set and return its address."""
    wait_for(lambda: ready.exists() or edge.proc.poll() is not None, timeout, f"edge ready file {ready.name}")
    if not ready.exists():
        raise AssertionError(f"edge exited with {edge.proc.returncode}: {edge.logs()}")
    edge.address = str(json.loads(ready.read_text())["address"])
    return edge.address


def kill_edge(edge: EdgeProcess, timeout: float = 10) -> None:
    """SIGKILL an edge's supervisor (by pid) and reap it; its workers notice and stop by themselves."""
    if edge.proc.poll() is None:
        edge.proc.send_signal(signal.SIGKILL)
    edge.proc.wait(timeout=timeout)


def applied_events(edge: EdgeProcess) -> list[dict[str, object]]:
    """The edge's `sync_applied` log lines, in order."""
    return [e for e in edge.log_events() if e.get("event") == "sync_applied"]


def check_applied_order(versions: list[int]) -> None:
    """Commits were applied in increasing version order, none twice."""
    assert len(versions) == len(set(versions)), f"a version was applied twice: {versions}"
    assert versions == sorted(versions), f"versions applied out of order: {versions}"


def control_state_digest(store: Any) -> tuple[int, str]:
    """(head version, digest) of a ControlStore's current state, computed like
    `ReadView.replicated_digest` on an edge (same namespaces, key order and framing)."""
    from edgewise.core.store import replicated_digest

    with store.read() as view:
        digest = replicated_digest(lambda name: ((k.encode(), v) for k, v in view.items(name)))
        return int(view.version), digest
