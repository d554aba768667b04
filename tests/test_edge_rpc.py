"""The RPC boundary of a real edge node: what a caller sees and what the metrics count for calls that
never reach the servicer's logic (shed, undecodable, oversize), port collisions, and Track's checks.

Issue 16, items 8 (overload visible in the metrics), 9 (port collision refused), 10 (undecodable
requests are INVALID_ARGUMENT) and 12 (Track's event type and context).
"""

from __future__ import annotations

import socket
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import EdgeProcess, edge_args

from edgewise.processes import Processes
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # every test here runs a real edge process

DECIDE = "/edgewise.v1.Personalizer/Decide"
TRACK = "/edgewise.v1.Personalizer/Track"
HOME = pb.DecideRequest(session_id="s", placements=[pb.PlacementRequest(placement_id="home", count=5)])


def _metrics(edge: EdgeProcess) -> dict[str, float]:
    """The node's /metrics as {series: value}."""
    address = next(e["metrics"] for e in edge.log_events() if e.get("event") == "serving")
    body = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _counted(values: dict[str, float], rpc: str) -> Counter[str]:
    """edgewise_rpc_total of one RPC by code (codes counted 0 left out)."""
    prefix = 'edgewise_rpc_total{code="'
    out: Counter[str] = Counter()
    for name, value in values.items():
        if name.startswith(prefix) and name.endswith(f'rpc="{rpc}"}}') and value:
            out[name[len(prefix) : name.index('"', len(prefix))]] = int(value)
    return out


def _code(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


# --- item 9: a node refuses a port another node serves -----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_second_node_on_a_served_port_refuses_to_start(
    processes: Processes, bundle_dir: Path, tmp_path: Path
) -> None:
    port = _free_port()
    listen = ["--listen", f"127.0.0.1:{port}"]
    first = processes.serve("first", [*edge_args(tmp_path / "a", bundle_dir, "--workers", "2"), *listen])
    assert first.port == port  # both workers of the first node share the explicit port

    # The second node: another data directory (another dataset), the same port.
    second = processes.start("second", [*edge_args(tmp_path / "b", bundle_dir), *listen])
    assert second.proc.wait(timeout=60) == 2
    refused = [e for e in second.log_events() if e.get("event") == "listen_failed"]
    assert refused and f"127.0.0.1:{port}" in refused[0]["error"], second.logs()
    assert "in use" in refused[0]["error"]

    # Every call on a new connection is answered by the first node.
    for n in range(20):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert pb_grpc.PersonalizerStub(ch).Decide(HOME, timeout=5).snapshot_version == 1, n
    assert first.proc.poll() is None


def test_a_node_restarted_on_its_port_starts_again(
    processes: Processes, bundle_dir: Path, tmp_path: Path
) -> None:
    # The check must not refuse the port its own previous run just left (connections in TIME_WAIT).
    port = _free_port()
    args = [*edge_args(tmp_path / "a", bundle_dir), "--listen", f"127.0.0.1:{port}"]
    first = processes.serve("first", args)
    for _ in range(5):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            pb_grpc.PersonalizerStub(ch).Decide(HOME, timeout=5)
    assert first.stop() == 0
    again = processes.serve("again", args)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        assert pb_grpc.PersonalizerStub(ch).Decide(HOME, timeout=5).snapshot_version == 1
    assert again.port == port


# --- item 12: Track checks the event type exactly, and the event's context like Decide's -------------


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (pb.Event(event_id="e", type="view\n", user_id="u1"), "events[0].type"),
        (
            pb.Event(event_id="e", type="view", user_id="u1", context=pb.Context(url="u" * 3000)),
            "events[0].context.url",
        ),
        (
            pb.Event(
                event_id="e",
                type="view",
                user_id="u1",
                context=pb.Context(attributes={f"k{i}": "v" for i in range(65)}),
            ),
            "events[0].context.attributes",
        ),
    ],
    ids=["type-newline", "context-url", "context-attributes"],
)
def test_track_checks_the_type_and_the_context(
    shared_channel: grpc.Channel, event: pb.Event, field: str
) -> None:
    stub = pb_grpc.PersonalizerStub(shared_channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Track(pb.TrackRequest(events=[event]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()
