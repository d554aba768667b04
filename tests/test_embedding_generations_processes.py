"""The paced embeddings refresh with real processes: an edge following a control plane that stages the
next embedding generation in small commits far apart is SIGKILLed mid-staging; the edge keeps the active
generation (and the personalized pick it gives), and the control plane restarted on the same data and
port completes a run: the flip reaches the edge, which then picks from the new vectors."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgewise.core.embedding_slots import GENERATION_MODEL, active_generation
from edgewise.core.store import Store
from tests.conftest import EdgeProcess
from tests.sync_support import (
    ControlProcess,
    control_planes,
    ops_client,
    pushed_edge,
    versions_reach,
    wait_for,
)
from tests.test_embedding_refresh_job import CO_BOUGHT, EDGE, OPS, _bundle, _for_you, _track

STAGING = "refresh embeddings staging: "


def _flags(pause: str) -> tuple[str, ...]:
    return (
        "--refresh-embeddings",
        "--refresh-embeddings-every",
        "1s",
        "--refresh-embeddings-method",
        "hybrid",  # NumPy only
        "--refresh-embeddings-commit-profiles",
        "3",
        "--refresh-embeddings-commit-pause",
        pause,
    )


def _generation(data: Path) -> int:
    with Store(data, readonly=True) as store, store.read() as view:
        return active_generation(view.array(GENERATION_MODEL))


@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[Callable[..., ControlProcess]]:
    with control_planes(tmp_path, {**OPS, **EDGE}) as start:
        yield start


@pytest.mark.slow
def test_a_control_plane_killed_mid_staging_keeps_the_generation_and_a_later_run_completes(
    control_factory: Callable[..., ControlProcess], edge_factory: Callable[..., EdgeProcess], tmp_path: Path
) -> None:
    control = control_factory(None, *_flags("60s"))  # a staging commit, then a long pause: killed in it
    address = control.address
    pushed, edge = pushed_edge(
        address, edge_factory, _bundle(tmp_path / "bundle"), tmp_path / "edge", "e1", OPS, EDGE
    )
    before = _for_you(edge.address, "u0")
    assert before != ["i4"]
    _track(edge.address, CO_BOUGHT)

    def history(at: str) -> list[tuple[int, str]]:
        with ops_client(at, OPS) as ops:
            return [(c.version, c.description) for c in ops.history(100).commits if c.kind == "refresh"]

    wait_for(lambda: any(d.startswith(STAGING) for _, d in history(address)), 60, "a staging commit", 0.1)
    staged = max(v for v, _ in history(address))
    wait_for(versions_reach([tmp_path / "edge"], staged), 20, "the edge at the staging commit")
    control.stop(signal.SIGKILL)

    # killed before the flip: the edge decides in the active generation, as before the refresh
    assert _generation(tmp_path / "edge") == 0
    assert _for_you(edge.address, "u0") == before

    # restarted on the same data and port: the run is due again (no flip in the log), stages and flips
    restarted = control_factory(None, *_flags("0"), listen=address)
    wait_for(lambda: _generation(tmp_path / "edge") == 1, 90, "the flip on the edge", 0.2)
    wait_for(lambda: _for_you(edge.address, "u0") == ["i4"], 20, "u0's pick from the new vectors", 0.2)
    done = history(restarted.address)
    flips = [d for _, d in done if not d.startswith(STAGING)]
    assert len(flips) == 1 and "generation 1" in flips[0]
    # the killed run's first batch stays in the log; the new run staged the rest (its first batch, the
    # same vectors trained from the same events, changed nothing: no commit) and then flipped
    versions = {d: v for v, d in done}
    assert staged in versions.values() and versions[flips[0]] > staged
    assert any(d.startswith(STAGING + "generation 1, batch 4 of 4,") for d in versions)
    assert pushed < min(v for v, _ in done)
