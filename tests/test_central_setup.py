"""A replica started while its JetStream cluster cannot yet place a 3-copy stream (the third server of
three has not joined yet, as when a cluster is still forming) waits for it, bounded
(`sync/central_log.set_up`), instead of exiting: it serves once the server is there."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgewise.client import ControlClient
from edgewise.nats_cluster import NatsCluster
from edgewise.processes import Process, Processes
from tests.nats_support import require_nats
from tests.sync_support import start_control

pytestmark = pytest.mark.slow

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-s", "EDGEWISE_EDGE_TOKEN": "edge-secret-s"}


def test_a_replica_waits_for_a_server_it_needs_to_place_its_streams(tmp_path: Path, bundle_dir: Path) -> None:
    require_nats()
    # two of three servers: a quorum, so a meta leader, but a peer short of a 3-copy stream
    with NatsCluster(tmp_path / "nats", size=3).start(count=2) as nats_cluster:
        _replica_waits(tmp_path, nats_cluster, bundle_dir)


def _replica_waits(tmp_path: Path, nats_cluster: NatsCluster, bundle_dir: Path) -> None:
    started: list[Process] = []
    failed: list[BaseException] = []
    with Processes(tmp_path / "run", env=OPS) as processes:

        def start() -> None:
            try:
                started.append(
                    start_control(
                        processes, tmp_path / "ra", "--nats", nats_cluster.url_list, env=OPS, timeout=60
                    )
                )
            except BaseException as exc:  # reported by the test's thread below
                failed.append(exc)

        starter = threading.Thread(target=start)
        starter.start()
        log = tmp_path / "run"
        retried = False
        for _ in range(300):  # until the replica says it is waiting (at most 30 s)
            retried = any("jetstream_setup_retry" in p.read_text(errors="replace") for p in log.glob("*.log"))
            if retried or failed or started:
                break
            threading.Event().wait(0.1)
        assert retried, f"the replica did not wait for the cluster: {failed or started}"
        nats_cluster.restart(2)
        starter.join(90)
        assert not failed, failed
        (replica,) = started
        with ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
            assert ops.push(bundle_dir).version >= 1
