"""A standalone node (a bundle, no control plane; issue 16, item 13): never reported stale, and no exposure
records queued that nothing would forward, unless `track.queue_exposures = "always"` asks for them."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess


def _metrics(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in lines if not line.startswith("#"))
    }


def _decide_with_analytics(address: str, calls: int) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        for n in range(calls):
            request = pb.DecideRequest(
                session_id=f"s{n}",
                consent=["analytics", "personalization"],
                placements=[pb.PlacementRequest(placement_id="home")],
            )
            stub.Decide(request, timeout=10)


def _serving_metrics(edge: EdgeProcess) -> str:
    serving = next(e for e in edge.log_events() if e.get("event") == "serving")
    return str(serving["metrics"])


@pytest.mark.slow
def test_a_standalone_node_is_never_stale_and_queues_no_exposures(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    edge = edge_factory(
        tmp_path / "data",
        bundle_dir,
        "--workers",
        "1",
        "--stale-after",
        "0.5",
        "--metrics-listen",
        "127.0.0.1:0",
    )
    metrics = _serving_metrics(edge)
    _decide_with_analytics(edge.address, 20)
    time.sleep(1.5)  # three times the staleness threshold; exposures are committed every 0.2 s
    reading = _metrics(metrics)
    print("stale", reading["edgewise_stale"], "outbox entries", reading["edgewise_outbox_entries"])
    assert reading["edgewise_snapshot_age_seconds"] > 0.5
    assert reading["edgewise_stale"] == 0  # nothing to be stale against: there is no control plane
    assert reading["edgewise_outbox_entries"] == 0  # nothing would ever forward them


@pytest.mark.slow
def test_queue_exposures_always_queues_them_on_a_standalone_node(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('[track]\nqueue_exposures = "always"\n')
    edge = edge_factory(
        tmp_path / "data",
        bundle_dir,
        "--config",
        str(config),
        "--workers",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    )
    metrics = _serving_metrics(edge)
    _decide_with_analytics(edge.address, 20)
    deadline = time.monotonic() + 10
    while _metrics(metrics)["edgewise_outbox_entries"] < 20:  # one placement a decision
        assert time.monotonic() < deadline, "the exposures were never queued"
        time.sleep(0.1)


def test_queue_exposures_auto_means_with_a_control_plane(tmp_path: Path) -> None:
    from edgewise.edge.config import load_config, queues_exposures

    def queues(**flags: object) -> bool:
        config, _ = load_config(None, {}, {"data.dir": str(tmp_path), **flags})
        return queues_exposures(config)

    assert not queues()  # auto, standalone
    assert queues(**{"sync.control": "127.0.0.1:7000"})  # auto, following a control plane
    assert queues(**{"track.queue_exposures": "always"})
    assert not queues(**{"track.queue_exposures": "never", "sync.control": "127.0.0.1:7000"})
