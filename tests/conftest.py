"""Shared fixtures: small synthetic bundles, real edge processes on free loopback ports (started through
`edgewise.processes`), and the Hypothesis profiles.

Hypothesis profiles (chosen by EDGEWISE_HYPOTHESIS_PROFILE, default `ci`):

    ci    today's budgets: Hypothesis' default of 100 examples, and each test's own `examples(N)`
    dev   a tenth of those (at least 5 examples a test): for the fast loop, `pytest -m "not slow"`

A test that sets its own budget writes `@settings(max_examples=examples(N))`: N under `ci`, scaled
under `dev`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import grpc
import pytest
from hypothesis import settings

from edgewise.offline.synth import synth_bundle
from edgewise.processes import Process, Processes

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

# --- Hypothesis profiles -------------------------------------------------------------------------------

HYPOTHESIS_PROFILE_ENV: Final = "EDGEWISE_HYPOTHESIS_PROFILE"
HYPOTHESIS_SCALE: Final = {"ci": 1.0, "dev": 0.1}  # of each test's example budget
MIN_EXAMPLES: Final = 5

settings.register_profile("ci", max_examples=100)  # Hypothesis' default: today's budget of a test
settings.register_profile("dev", max_examples=10)
HYPOTHESIS_PROFILE: Final = os.environ.get(HYPOTHESIS_PROFILE_ENV, "ci")
if HYPOTHESIS_PROFILE not in HYPOTHESIS_SCALE:
    raise pytest.UsageError(
        f"{HYPOTHESIS_PROFILE_ENV}={HYPOTHESIS_PROFILE!r}: choose one of {', '.join(HYPOTHESIS_SCALE)}"
    )
settings.load_profile(HYPOTHESIS_PROFILE)


def examples(ci_budget: int) -> int:
    """The example budget of a test whose budget under the `ci` profile is `ci_budget` (at least 5)."""
    return max(MIN_EXAMPLES, round(ci_budget * HYPOTHESIS_SCALE[HYPOTHESIS_PROFILE]))


# --- bundles -------------------------------------------------------------------------------------------


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


# --- real edge processes -------------------------------------------------------------------------------

# The tests annotate an edge node with this name: an `edgewise edge serve` child (`edgewise.processes`).
EdgeProcess = Process

EDGE_GRACE_S: Final = "2"


def process_group(workdir: Path) -> Processes:
    """A group for the processes of one test or module: whatever still runs at its end is SIGKILLed
    (nothing there to drain)."""
    return Processes(workdir, exit_signal=signal.SIGKILL, grace=10)


def edge_args(data: Path, bundle: Path | None, *extra: str, grace: str = EDGE_GRACE_S) -> list[str]:
    """`edgewise edge serve` on port 0 with `data` (and `bundle`, if given), then `extra`."""
    args = ["edge", "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--grace", grace, *extra]
    return args if bundle is None else [*args, "--bundle", str(bundle)]


def start_edge(
    processes: Processes, data: Path, bundle: Path | None, *extra: str, timeout: float = 60
) -> EdgeProcess:
    """Start `edgewise edge serve` as a real process on port 0 in `processes` and wait until it serves."""
    return processes.serve("edge", edge_args(data, bundle, *extra), timeout=timeout)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """The processes one test starts (files in tmp_path/run); SIGKILLed at its end if still running."""
    with process_group(tmp_path / "run") as group:
        yield group


@pytest.fixture
def edge_factory(processes: Processes) -> Callable[..., EdgeProcess]:
    """`factory(data, bundle, *extra)`: a serving edge node, stopped at the end of the test."""

    def factory(data: Path, bundle: Path | None, *extra: str) -> EdgeProcess:
        return start_edge(processes, data, bundle, *extra)

    return factory


@pytest.fixture
def edge(edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path) -> EdgeProcess:
    return edge_factory(tmp_path / "data", bundle_dir)


@pytest.fixture
def channel(edge: EdgeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(edge.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def shared_edge(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[EdgeProcess]:
    """One edge node on `bundle_dir` for a whole test module, for tests that only read from it (Decide,
    health, reflection, requests it refuses); a test that tracks events, signals or restarts a node
    uses `edge` or `edge_factory` instead."""
    root = tmp_path_factory.mktemp("shared-edge")
    with process_group(root / "run") as processes:
        yield start_edge(processes, root / "data", bundle_dir)


@pytest.fixture(scope="module")
def shared_channel(shared_edge: EdgeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(shared_edge.address) as ch:
        yield ch
