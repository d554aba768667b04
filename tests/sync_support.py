"""Real control-plane processes, ops clients (`ControlClient`, and `edgewise ctl` for the tests of the CLI
itself) and edge-store probes for the sync tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgewise.client import ControlClient
from edgewise.core.store import Store
from edgewise.processes import Process, Processes
from tests.conftest import EdgeProcess, edge_args, process_group

# The tests annotate a control plane with this name: an `edgewise control serve` child.
ControlProcess = Process


@contextmanager
def control_planes(tmp_path: Path, env: Mapping[str, str]) -> Iterator[Callable[..., ControlProcess]]:
    """A starter of control planes (`start(data=None, *extra, listen=..., timeout=...)`, data defaulting
    to tmp_path/"control", tokens from `env`); every one still running at the end is killed."""
    with process_group(tmp_path / "run") as processes:

        def start(
            data: Path | None = None, *extra: str, listen: str = "127.0.0.1:0", timeout: float = 30
        ) -> ControlProcess:
            return start_control(
                processes, data or tmp_path / "control", *extra, listen=listen, env=env, timeout=timeout
            )

        yield start


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
    processes: Processes,
    data: Path,
    *extra: str,
    listen: str = "127.0.0.1:0",
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> ControlProcess:
    """Start `edgewise control serve` as a real process in `processes` and wait until it serves."""
    args = ["control", "serve", "--data", str(data), "--listen", listen, "--heartbeat", "0.5", *extra]
    return processes.serve("control", args, env=env, timeout=timeout)


@contextmanager
def nats_replicas(
    directory: Path, urls: str, env: Mapping[str, str], *common: str, timeout: float = 30
) -> Iterator[Callable[..., ControlProcess]]:
    """A starter of `control serve --nats URLS` replicas in one `Processes` under `directory`:
    `start(name, *extra)`, its data in directory/name, `common` and `extra` added to its flags."""
    with Processes(directory / "run", env=dict(env)) as processes:

        def start(name: str, *extra: str) -> ControlProcess:
            flags = ("--nats", urls, *common, *extra)
            return start_control(processes, directory / name, *flags, env=env, timeout=timeout)

        yield start


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
    processes: Processes, data: Path, *extra: str, env: Mapping[str, str] | None = None
) -> EdgeProcess:
    """Start `edgewise edge serve` in `processes` without waiting for it to serve: it has no address
    until `edge_address(edge)` waited for it."""
    return processes.start("edge", edge_args(data, None, *extra, grace="1"), env=env)


def edge_address(edge: EdgeProcess, timeout: float = 30) -> str:
    """Wait until a spawned edge serves; its address."""
    edge.wait_ready(timeout)
    return edge.address


def kill_edge(edge: EdgeProcess, timeout: float = 10) -> None:
    """SIGKILL an edge's supervisor (by pid) and reap it; its workers notice and stop by themselves."""
    edge.stop(signal.SIGKILL, timeout)


def applied_events(edge: EdgeProcess) -> list[dict[str, object]]:
    """The edge's `sync_applied` log lines, in order."""
    return [e for e in edge.log_events() if e.get("event") == "sync_applied"]


def check_applied_order(versions: list[int]) -> None:
    """Commits were applied in increasing version order, none twice."""
    assert len(versions) == len(set(versions)), f"a version was applied twice: {versions}"
    assert versions == sorted(versions), f"versions applied out of order: {versions}"


def applied_versions(edge: EdgeProcess) -> list[int]:
    """The versions the edge applied, in order, checked to be increasing and applied once each."""
    versions = [int(str(e["version"])) for e in applied_events(edge)]
    check_applied_order(versions)
    return versions


def control_state_digest(store: Any) -> tuple[int, str]:
    """(head version, digest) of a ControlStore's current state, computed like
    `ReadView.replicated_digest` on an edge (same namespaces, key order and framing)."""
    from edgewise.core.store import replicated_digest

    with store.read() as view:
        digest = replicated_digest(lambda name: ((k.encode(), v) for k, v in view.items(name)))
        return int(view.version), digest
