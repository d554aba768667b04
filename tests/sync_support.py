"""Real control-plane processes, the `edgewise ctl` client and edge-store probes for the sync tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgewise.core.store import Store


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
        "edgewise.edge.cli",
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
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"control plane exited with {proc.returncode}: {log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"control plane not ready in {timeout}s: {log_path.read_text()}")
        time.sleep(0.02)
    info = json.loads(ready.read_text())
    return ControlProcess(proc, info["address"], int(info["port"]), log_path, data)


def ctl(
    address: str, *args: str, env: Mapping[str, str] | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `edgewise ctl --control ADDRESS ARGS...` and return the finished process."""
    cmd = [sys.executable, "-m", "edgewise.edge.cli", "ctl", "--control", address, *args]
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
