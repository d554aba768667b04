"""examples/nginx.conf with real nginx in front of two real edges (gRPC and JSON over HTTP).

The shipped file is used as is but for addresses, ports, file paths and the worker count: nginx runs
with its own prefix, config, pid and log files under tmp_path on free loopback ports, in the
foreground (`daemon off`), and is killed by its pid. Skipped where nginx is not installed (Debian's
`nginx` package; .ci/run installs it).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import EdgeProcess, edge_args
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from edgewise.processes import Processes
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # real nginx, real edge processes

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nginx.conf"
CONSENT = ["personalization", "analytics"]
MIN_BUDGET_MS = 1000  # a deadline shorter than this reaching an edge gets the fast default


def _consenting_users(bundle: Path, count: int) -> list[str]:
    users = []
    for line in (bundle / "profiles.jsonl").read_text().splitlines():
        profile = json.loads(line)
        if "personalization" in profile["consent"]:
            users.append(str(profile["id"]))
    return users[:count]


def _nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"examples/nginx.conf no longer has {old!r}: update tests/test_nginx.py"
    return text.replace(old, new)


def nginx_config(
    example: str, grpc_edges: list[str], http_edges: list[str], ports: tuple[int, int], run: Path
) -> str:
    """The example with these edges, listen ports and files under `run`."""
    text = _replace(example, "worker_processes auto;", "worker_processes 1;")
    for i, (grpc_address, http_address) in enumerate(zip(grpc_edges, http_edges, strict=True)):
        text = _replace(text, f"server 10.0.0.1{i + 1}:50051 ", f"server {grpc_address} ")
        text = _replace(text, f"server 10.0.0.1{i + 1}:8081 ", f"server {http_address} ")
    text = _replace(text, "listen 50050 http2;", f"listen 127.0.0.1:{ports[0]} http2;")
    text = _replace(text, "listen 8080;", f"listen 127.0.0.1:{ports[1]};")
    text = _replace(text, "/var/log/nginx/", f"{run}/")
    temp = "".join(
        f"    {kind}_temp_path {run}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return _replace(text, "\nhttp {\n", f"\nhttp {{\n{temp}")


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    run: Path
    grpc_port: int
    http_port: int

    def log(self) -> str:
        return "\n".join(
            f.read_text(errors="replace")[-3000:] for f in sorted(self.run.glob("*.log")) if f.is_file()
        )


@dataclass
class Fleet:
    edges: list[EdgeProcess]
    nginx: Nginx
    channel: grpc.Channel


def _wait_listening(nginx: Nginx, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nginx.process.poll() is not None:
            raise AssertionError(f"nginx exited with {nginx.process.returncode}:\n{nginx.log()}")
        try:
            with socket.create_connection(("127.0.0.1", nginx.http_port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx did not listen within {timeout}s:\n{nginx.log()}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[Fleet]:
    binary = _nginx()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install -y nginx; .ci/run installs it)")
    root = tmp_path_factory.mktemp("nginx")
    with Processes(root / "edges", exit_signal=signal.SIGKILL, grace=10) as processes:
        edges = [
            processes.start(
                f"edge{i}",
                edge_args(
                    root / f"data{i}",
                    bundle_dir,
                    "--http-listen",
                    "127.0.0.1:0",
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--workers",
                    "1",
                    "--min-budget-ms",
                    str(MIN_BUDGET_MS),
                ),
            )
            for i in range(2)
        ]
        for edge in edges:
            edge.wait_ready()
        run = root / "nginx"
        run.mkdir()
        ports = (_free_port(), _free_port())
        config = nginx_config(
            EXAMPLE.read_text(),
            [e.address for e in edges],
            [str(e.wait_ready()["http"]) for e in edges],
            ports,
            run,
        )
        (run / "nginx.conf").write_text(config)
        process = subprocess.Popen(
            [
                binary, "-p", f"{run}/", "-c", str(run / "nginx.conf"), "-e", str(run / "startup-error.log"),
                "-g", f"daemon off; pid {run}/nginx.pid;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(run / "stderr.log").open("wb"),
            start_new_session=True,
        )  # fmt: skip
        nginx = Nginx(process, run, *ports)
        try:
            _wait_listening(nginx)
            with grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
                yield Fleet(edges, nginx, channel)
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the master and its workers: their own group
            process.wait(10)


def _decide_calls(edge: EdgeProcess) -> float:
    """Decide calls answered OK by this edge so far (its /metrics)."""
    conn = http.client.HTTPConnection(*str(edge.wait_ready()["metrics"]).rsplit(":", 1), timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edgewise_rpc_total" and sample.labels == {"rpc": "Decide", "code": "OK"}:
                return sample.value
    raise AssertionError("no edgewise_rpc_total{rpc=Decide,code=OK} in /metrics")


def _grpc_decide(fleet: Fleet, user: str, timeout: float = 5.0) -> pb.DecideResponse:
    stub = pb_grpc.PersonalizerStub(fleet.channel)
    request = pb.DecideRequest(
        user_id=user, consent=CONSENT, placements=[pb.PlacementRequest(placement_id="home", count=5)]
    )
    response: pb.DecideResponse = stub.Decide(request, timeout=timeout, metadata=[("x-edgewise-user", user)])
    return response


def _http(
    fleet: Fleet, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", fleet.nginx.http_port, timeout=10)
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, json.loads(payload)


def _http_decide(fleet: Fleet, user: str, **headers: str) -> tuple[int, dict[str, Any]]:
    body = {"userId": user, "consent": CONSENT, "placements": [{"placementId": "home", "count": 5}]}
    return _http(fleet, "POST", "/v1/decide", body, {"X-Edgewise-User": user, **headers})


def test_grpc_decide_track_and_health_through_nginx(fleet: Fleet, bundle_dir: Path) -> None:
    user = _consenting_users(bundle_dir, 1)[0]
    health = health_pb2_grpc.HealthStub(fleet.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    first = _grpc_decide(fleet, user)
    assert first.snapshot_version == 1 and len(first.placements[0].items) == 5
    shown = first.placements[0].items[0].id
    event = pb.Event(event_id=uuid.uuid4().hex, type="view", user_id=user, item_id=shown)
    stub = pb_grpc.PersonalizerStub(fleet.channel)
    tracked = stub.Track(
        pb.TrackRequest(events=[event], consent=CONSENT), timeout=5, metadata=[("x-edgewise-user", user)]
    )
    assert tracked.accepted == 1
    # the same edge answers the next Decide of u3: the view it tracked is left out
    assert shown not in [i.id for i in _grpc_decide(fleet, user).placements[0].items]
    with pytest.raises(grpc.RpcError) as raised:
        stub.Decide(
            pb.DecideRequest(placements=[pb.PlacementRequest(placement_id="home", count=500)]), timeout=5
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_callers_deadline_reaches_the_edge(fleet: Fleet) -> None:
    """grpc-timeout and X-Edgewise-Timeout-Ms pass through nginx: below the edge's min budget, the fast
    default answers."""
    reasons = {p.fallback_reason for p in _grpc_decide(fleet, "u1", timeout=0.5).placements}
    assert reasons == {pb.FALLBACK_REASON_BUDGET_EXCEEDED}
    status, answer = _http_decide(fleet, "u1", **{"X-Edgewise-Timeout-Ms": "500"})
    assert status == 200
    assert {p["fallbackReason"] for p in answer["placements"]} == {"FALLBACK_REASON_BUDGET_EXCEEDED"}


def test_json_decide_track_and_health_through_nginx(fleet: Fleet, bundle_dir: Path) -> None:
    user = _consenting_users(bundle_dir, 2)[1]
    assert _http(fleet, "GET", "/v1/health") == (200, {"status": "SERVING"})
    status, first = _http_decide(fleet, user)
    assert status == 200 and first["snapshotVersion"] == "1"
    shown = first["placements"][0]["items"][0]["id"]
    event = {"eventId": uuid.uuid4().hex, "type": "view", "userId": user, "itemId": shown}
    status, tracked = _http(
        fleet, "POST", "/v1/track", {"events": [event], "consent": CONSENT}, {"X-Edgewise-User": user}
    )
    assert (status, tracked) == (200, {"accepted": 1, "duplicates": 0})
    status, after = _http_decide(fleet, user)
    assert shown not in [item["id"] for item in after["placements"][0]["items"]]
    status, error = _http(
        fleet, "POST", "/v1/decide", {"placements": [{"placementId": "home", "count": 500}]}
    )
    assert status == 400 and error["error"]["status"] == "INVALID_ARGUMENT"
    status, error = _http(fleet, "GET", "/nope")
    assert status == 404 and error["error"]["status"] == "NOT_FOUND"


def _edge_of_each_user(fleet: Fleet, users: list[str], decide: Any) -> dict[str, int]:
    """Which edge answered each user's three Decides (each must have answered all three or none)."""
    chosen = {}
    for user in users:
        before = [_decide_calls(e) for e in fleet.edges]
        for _ in range(3):
            decide(user)
        deltas = [_decide_calls(e) - b for e, b in zip(fleet.edges, before, strict=True)]
        assert sorted(deltas) == [0, 3], (user, deltas)
        chosen[user] = deltas.index(3)
    return chosen


def test_each_user_sticks_to_one_edge_of_two(fleet: Fleet) -> None:
    users = [f"u{i}" for i in range(16)]
    by_grpc = _edge_of_each_user(fleet, users, lambda u: _grpc_decide(fleet, u))
    assert set(by_grpc.values()) == {0, 1}, by_grpc  # both edges get users
    by_http = _edge_of_each_user(fleet, users, lambda u: _http_decide(fleet, u))
    assert set(by_http.values()) == {0, 1}, by_http
    assert _edge_of_each_user(fleet, users[:4], lambda u: _grpc_decide(fleet, u)) == {
        u: by_grpc[u] for u in users[:4]
    }


def _established(port: int) -> int:
    """Established TCP connections to 127.0.0.1:`port` (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


def test_nginx_keeps_upstream_connections_alive(fleet: Fleet) -> None:
    for i in range(20):  # a new client connection for each call: the upstream ones stay
        _http_decide(fleet, f"k{i}")
        _grpc_decide(fleet, f"k{i}")
    http_ports = [int(str(e.wait_ready()["http"]).rsplit(":", 1)[1]) for e in fleet.edges]
    grpc_ports = [e.port for e in fleet.edges]
    kept_http = sum(_established(p) for p in http_ports)
    kept_grpc = sum(_established(p) for p in grpc_ports)
    assert 1 <= kept_http <= 4, kept_http  # one worker, a connection or two per edge, not 20 closed
    assert 1 <= kept_grpc <= 4, kept_grpc


def test_the_example_is_valid_for_nginx(tmp_path: Path) -> None:
    """`nginx -t` on the example with only paths and ports changed (the addresses need not exist)."""
    binary = _nginx()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install -y nginx; .ci/run installs it)")
    config = nginx_config(
        EXAMPLE.read_text(),
        ["10.0.0.11:50051", "10.0.0.12:50051"],
        ["10.0.0.11:8081", "10.0.0.12:8081"],
        (_free_port(), _free_port()),
        tmp_path,
    )
    (tmp_path / "nginx.conf").write_text(config)
    conf, errors, pid = tmp_path / "nginx.conf", tmp_path / "e.log", tmp_path / "nginx.pid"
    result = subprocess.run(
        [binary, "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(errors), "-g", f"pid {pid};"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"syntax is ok", result.stderr)
