"""Shared fixtures: small synthetic bundles and real edge processes on free loopback ports."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgewise.offline.synth import synth_bundle
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def rewrite_manifest(bundle: Path, version: int | None = None) -> None:
    """Recompute a bundle's checksums after a test edited its files (optionally with a new version)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    if version is not None:
        manifest["bundle_version"] = version
    for name in manifest["files"]:
        data = (bundle / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic bundle (read-only for tests: copy it before changing it)."""
    return synth_bundle(tmp_path_factory.mktemp("bundle") / "b", users=400, items=300, seed=11)


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(bundle_dir, out)
    return out


@dataclass
class EdgeProcess:
    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text()

    def log_events(self) -> list[dict[str, object]]:
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stub(self, channel: grpc.Channel) -> pb_grpc.PersonalizerStub:
        return pb_grpc.PersonalizerStub(channel)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def start_edge(
    data: Path, bundle: Path | None, workdir: Path, *extra: str, timeout: float = 60
) -> EdgeProcess:
    """Start `edgewise edge serve` as a real process on port 0 and wait until it serves."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"ready-{time.monotonic_ns()}.json"
    log_path = workdir / f"edge-{time.monotonic_ns()}.log"
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
        "2",
        *extra,
    ]
    if bundle is not None:
        cmd += ["--bundle", str(bundle)]
    proc, info = launch(cmd, ready, log_path, timeout, "edge")
    return EdgeProcess(proc, info["address"], log_path)


def launch(
    cmd: list[str], ready: Path, log_path: Path, timeout: float, what: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start `cmd` (output to `log_path`) and wait until it writes its JSON ready file."""
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} not ready in {timeout}s: {log_path.read_text()}")
        time.sleep(0.02)
    return proc, dict(json.loads(ready.read_text()))


@pytest.fixture
def edge_factory(tmp_path: Path) -> Iterator[Callable[..., EdgeProcess]]:
    started: list[EdgeProcess] = []

    def factory(data: Path, bundle: Path | None, *extra: str) -> EdgeProcess:
        edge = start_edge(data, bundle, tmp_path / "run", *extra)
        started.append(edge)
        return edge

    yield factory
    for edge in started:
        if edge.proc.poll() is None:
            edge.proc.kill()
            edge.proc.wait()


@pytest.fixture
def edge(edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path) -> EdgeProcess:
    return edge_factory(tmp_path / "data", bundle_dir)


@pytest.fixture
def channel(edge: EdgeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(edge.address) as ch:
        yield ch
