"""edge/http_gateway.py: Decide and Track as JSON over HTTP/1.1, in front of the same servicer as gRPC.

In this process: a real store with the test bundle, the real servicer, the gateway and a gRPC server on
port 0 side by side, called with a keep-alive `http.client` connection (what a CDN worker's fetch pool
does). The last tests run a real `edgewise edge serve --http-listen` with two workers.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import EdgeProcess
from google.protobuf import json_format

from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store
from edgewise.edge.convert import Limits
from edgewise.edge.http_gateway import GatewayOptions, HttpGateway, build_gateway
from edgewise.edge.metrics import MetricsLayout, NodeMetrics, NodeReading, WorkerMetrics
from edgewise.edge.server import EdgeServer, build_server
from edgewise.edge.servicer import PersonalizerServicer
from edgewise.processes import Processes
from edgewise.sync.bundle import load_bundle
from edgewise.sync.snapshot import apply_bundle
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

CONSENT = ["personalization", "analytics"]


def _user(bundle: Path, *, consent: bool) -> str:
    for line in (bundle / "profiles.jsonl").read_text().splitlines():
        profile = json.loads(line)
        if ("personalization" in profile["consent"]) == consent:
            return str(profile["id"])
    raise AssertionError("no such user in the bundle")


@dataclass
class Node:
    gateway: HttpGateway
    grpc_server: EdgeServer
    stub: pb_grpc.PersonalizerStub
    metrics: NodeMetrics

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.gateway.port, timeout=10)

    def reading(self) -> NodeReading:
        return self.metrics.read()


def _post(
    conn: http.client.HTTPConnection, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    return response.status, json.loads(payload), response


@pytest.fixture
def node(tmp_path: Path, bundle_dir: Path) -> Iterator[Node]:
    store = Store(tmp_path / "data", map_size=256 << 20)
    apply_bundle(store, load_bundle(bundle_dir))
    node_metrics = NodeMetrics(tmp_path / "run", MetricsLayout(("home", "pdp_similar", "hero_banner")))
    metrics = WorkerMetrics(
        node_metrics.worker_path(0), MetricsLayout(("home", "pdp_similar", "hero_banner"))
    )
    servicer = PersonalizerServicer(store, Pipeline(), Limits(), metrics=metrics)
    gateway = build_gateway(
        servicer, "127.0.0.1:0", options=GatewayOptions(max_message_bytes=64 << 10), metrics=metrics
    )
    server = build_server(servicer, "127.0.0.1:0", threads=4, metrics=metrics)
    server.server.start()
    gateway.start()
    gateway.set_serving(True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Node(gateway, server, pb_grpc.PersonalizerStub(channel), node_metrics)
    finally:
        gateway.stop(1.0)
        server.stop(0)
        metrics.close()
        store.close()


def _decide_body(user: str, **extra: Any) -> dict[str, Any]:
    return {
        "userId": user,
        "consent": CONSENT,
        "context": {"country": "DE", "device": "mobile"},
        "placements": [{"placementId": "home", "count": 5}, {"placementId": "hero_banner"}],
        **extra,
    }


def _without_id(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "decisionId"}


def test_decide_over_http_is_the_grpc_decision_in_json(node: Node, bundle_dir: Path) -> None:
    user = _user(bundle_dir, consent=True)
    body = _decide_body(user)
    conn = node.connect()
    status, answer, response = _post(conn, "/v1/decide", body)
    assert status == 200, answer
    assert response.getheader("Content-Type") == "application/json"
    request = json_format.ParseDict(body, pb.DecideRequest())
    expected = json_format.MessageToDict(
        node.stub.Decide(request, timeout=5), always_print_fields_with_no_presence=True
    )
    assert _without_id(answer) == _without_id(expected)
    assert len(answer["decisionId"]) == 32
    home = answer["placements"][0]
    assert home["placementId"] == "home" and len(home["items"]) == 5
    assert home["fallbackReason"] == "FALLBACK_REASON_NONE"
    # proto field names are accepted too, as json_format does
    status, again, _ = _post(
        conn, "/v1/decide", {"user_id": user, "consent": CONSENT, "placements": [{"placement_id": "home"}]}
    )
    assert status == 200 and again["placements"][0]["placementId"] == "home"


def test_keep_alive_many_calls_on_one_connection(node: Node, bundle_dir: Path) -> None:
    conn = node.connect()
    _post(conn, "/v1/decide", _decide_body("u1"))
    sock = conn.sock
    for i in range(20):
        status, _, response = _post(conn, "/v1/decide", _decide_body(f"u{i}"))
        assert status == 200
        assert response.getheader("Connection") is None  # HTTP/1.1: kept alive
    assert conn.sock is sock  # never reconnected


def test_without_consent_nothing_about_the_user_is_read(node: Node, bundle_dir: Path) -> None:
    user = _user(bundle_dir, consent=True)
    status, answer, _ = _post(node.connect(), "/v1/decide", _decide_body(user, consent=[]))
    assert status == 200
    assert {p["fallbackReason"] for p in answer["placements"]} == {"FALLBACK_REASON_NO_CONSENT"}


def test_validation_errors_are_the_grpc_ones_as_json(node: Node) -> None:
    conn = node.connect()
    body = {"userId": "u1", "placements": [{"placementId": "home", "count": 500}]}
    status, answer, _ = _post(conn, "/v1/decide", body)
    with pytest.raises(grpc.RpcError) as raised:
        node.stub.Decide(json_format.ParseDict(body, pb.DecideRequest()), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status == 400
    assert answer == {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": raised.value.details()}}
    assert "placements[0].count" in answer["error"]["message"]
    # the connection stays usable after an error
    status, _, _ = _post(conn, "/v1/decide", _decide_body("u1"))
    assert status == 200


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"userId": "u1", "consents": ["personalization"]}, "consents"),  # a misspelt field is named
        (b"{not json", "DecideRequest"),
        ({"placements": [{"count": "many"}]}, "count"),
        (b"[" * 5000 + b"]" * 5000, "DecideRequest"),  # deep nesting: an answer, not a crash
        ("\udc80".encode("utf-8", "surrogatepass"), "DecideRequest"),
    ],
)
def test_undecodable_json_is_invalid_argument(node: Node, body: Any, words: str) -> None:
    status, answer, _ = _post(node.connect(), "/v1/decide", body)
    assert status == 400
    assert answer["error"]["status"] == "INVALID_ARGUMENT"
    assert words in answer["error"]["message"]


def test_track_is_durable_idempotent_and_feeds_the_next_decision(node: Node, bundle_dir: Path) -> None:
    user = _user(bundle_dir, consent=True)
    conn = node.connect()
    _, first, _ = _post(conn, "/v1/decide", _decide_body(user))
    shown = first["placements"][0]["items"][0]["id"]
    event = {"eventId": uuid.uuid4().hex, "type": "view", "userId": user, "itemId": shown}
    status, answer, _ = _post(conn, "/v1/track", {"events": [event], "consent": CONSENT})
    assert (status, answer) == (200, {"accepted": 1, "duplicates": 0})
    status, answer, _ = _post(conn, "/v1/track", {"events": [event], "consent": CONSENT})
    assert (status, answer) == (200, {"accepted": 0, "duplicates": 1})
    _, after, _ = _post(conn, "/v1/decide", _decide_body(user))
    assert shown not in [item["id"] for item in after["placements"][0]["items"]]
    status, answer, _ = _post(conn, "/v1/track", {"events": [{"type": "view"}]})
    assert status == 400 and "events[0]" in answer["error"]["message"]


def test_deadline_header_and_budget(node: Node) -> None:
    conn = node.connect()
    status, answer, _ = _post(conn, "/v1/decide", _decide_body("u1"), {"X-Edgewise-Timeout-Ms": "0"})
    assert status == 200
    assert {p["fallbackReason"] for p in answer["placements"]} == {"FALLBACK_REASON_BUDGET_EXCEEDED"}
    status, answer, _ = _post(conn, "/v1/decide", _decide_body("u1"), {"X-Edgewise-Timeout-Ms": "50"})
    assert status == 200 and answer["placements"][0]["fallbackReason"] != "FALLBACK_REASON_BUDGET_EXCEEDED"
    status, answer, _ = _post(conn, "/v1/decide", _decide_body("u1"), {"X-Edgewise-Timeout-Ms": "soon"})
    assert status == 400 and "X-Edgewise-Timeout-Ms" in answer["error"]["message"]


def test_http_calls_count_in_the_rpc_metrics(node: Node) -> None:
    conn = node.connect()
    before = node.reading()
    for _ in range(3):
        _post(conn, "/v1/decide", _decide_body("u1"))
    _post(conn, "/v1/decide", {"placements": [{"placementId": "home", "count": 500}]})
    _post(conn, "/v1/track", {"events": [{"eventId": "e1", "type": "view", "userId": "u1", "itemId": "i1"}]})
    _post(conn, "/v1/decide", {"userId": "x" * (65 << 10)})  # too large: refused before it is read
    # A handler thread counts its call after the response is written: read until the counts land (bounded).
    expected = {
        ("rpc", "Decide", "OK"): 3,
        ("rpc", "Decide", "INVALID_ARGUMENT"): 1,
        ("rpc", "Decide", "RESOURCE_EXHAUSTED"): 1,
        ("rpc", "Track", "OK"): 1,
        ("decision", "home"): 3,
        ("track", "accepted"): 1,
    }
    deadline = time.monotonic() + 10
    while True:
        after = node.reading()
        seen = {series: after.count(*series) - before.count(*series) for series in expected}
        if seen == expected or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert seen == expected


def test_transport_errors(node: Node) -> None:
    conn = node.connect()
    conn.request("GET", "/v1/decide")
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "POST"
    assert json.loads(response.read())["error"]["status"] == "UNIMPLEMENTED"
    status, answer, _ = _post(conn, "/v2/decide", {})
    assert status == 404 and "/v1/decide" in answer["error"]["message"]
    conn.request("POST", "/v1/decide", b"{}", {"Content-Type": "text/plain"})
    response = conn.getresponse()
    assert response.status == 415
    response.read()
    # too large: refused before it is read, and the connection closes
    status, answer, response = _post(conn, "/v1/decide", {"userId": "x" * (65 << 10)})
    assert status == 413 and answer["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert response.getheader("Connection") == "close"


def test_health_follows_serving(node: Node) -> None:
    conn = node.connect()
    conn.request("GET", "/v1/health")
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {"status": "SERVING"})
    node.gateway.set_serving(False)
    conn.request("GET", "/v1/health")
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (503, {"status": "NOT_SERVING"})


class _Blocking(pb_grpc.PersonalizerServicer):
    """Decide waits until released; stands in for a busy worker."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:
        self.entered.set()
        self.release.wait(10)
        return pb.DecideResponse(snapshot_version=1)


def test_calls_past_max_in_flight_are_shed_and_stop_drains(tmp_path: Path) -> None:
    node_metrics = NodeMetrics(tmp_path / "run", MetricsLayout())
    with WorkerMetrics(node_metrics.worker_path(0), MetricsLayout()) as metrics:
        servicer = _Blocking()
        gateway = build_gateway(
            servicer,  # type: ignore[arg-type]
            "127.0.0.1:0",
            options=GatewayOptions(max_in_flight=1),
            metrics=metrics,
        )
        gateway.start()
        gateway.set_serving(True)
        results: list[int] = []

        def slow_call() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
            results.append(_post(conn, "/v1/decide", {})[0])

        caller = threading.Thread(target=slow_call)
        caller.start()
        assert servicer.entered.wait(5)
        idle = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        status, answer, _ = _post(idle, "/v1/decide", {})
        assert status == 429 and answer["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert node_metrics.read().count("shed") == 1
        # stop: the call in flight finishes within the grace period; the idle connection is closed
        stopper = threading.Thread(target=gateway.stop, args=(5.0,))
        started = time.monotonic()
        stopper.start()
        time.sleep(0.2)
        servicer.release.set()
        stopper.join(10)
        caller.join(10)
        assert results == [200]
        assert time.monotonic() - started < 3
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            _post(idle, "/v1/decide", {})


# --- a real node ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_node_serves_http_from_every_worker(processes: Processes, tmp_path: Path, bundle_dir: Path) -> None:
    edge: EdgeProcess = processes.serve(
        "edge",
        [
            "edge", "serve", "--data", str(tmp_path / "data"), "--bundle", str(bundle_dir),
            "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--workers", "2", "--grace", "2",
        ],
    )  # fmt: skip
    info = edge.wait_ready()
    host, _, port = info["http"].rpartition(":")
    assert host == "127.0.0.1" and int(port) != info["port"]
    serving = [e for e in edge.log_events() if e.get("event") == "worker_serving"]
    assert [e["http"] for e in serving] == [info["http"]] * 2  # both workers listen (SO_REUSEPORT)
    user = _user(bundle_dir, consent=True)
    for _ in range(12):  # new connections: the kernel spreads them over the workers
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        status, answer, _ = _post(conn, "/v1/decide", _decide_body(user))
        assert status == 200 and answer["snapshotVersion"] == "1"  # uint64: a string in the JSON mapping
        conn.close()
    metrics = http.client.HTTPConnection(*info["metrics"].rsplit(":", 1), timeout=10)
    metrics.request("GET", "/metrics")
    text = metrics.getresponse().read().decode()
    assert 'edgewise_rpc_total{code="OK",rpc="Decide"} 12.0' in text or (
        'edgewise_rpc_total{rpc="Decide",code="OK"} 12.0' in text
    ), text
    assert edge.stop() == 0


@pytest.mark.slow
def test_http_listen_on_the_grpc_port_is_a_config_error(processes: Processes, tmp_path: Path) -> None:
    edge = processes.start(
        "edge",
        [
            "edge", "serve", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:7001",
            "--http-listen", "127.0.0.1:7001",
        ],
    )  # fmt: skip
    assert edge.proc.wait(30) == 2
    assert "server.http_listen" in edge.logs()


@pytest.mark.slow
def test_a_taken_http_port_is_refused_naming_the_setting(processes: Processes, tmp_path: Path) -> None:
    with socket.socket() as other:  # another program serves the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        edge = processes.start(
            "edge",
            [
                "edge", "serve", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
                "--http-listen", f"127.0.0.1:{port}",
            ],
        )  # fmt: skip
        assert edge.proc.wait(30) == 2
    assert "server.http_listen, --http-listen" in edge.logs()
