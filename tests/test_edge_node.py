"""The multi-process edge node: real processes, real signals (issue 4's process model and fault tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import EdgeProcess, rewrite_manifest, start_edge

from edgewise.core.store import Store
from edgewise.offline.synth import synth_bundle
from edgewise.processes import Processes
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # every test here runs edge node processes

CONSENT = ["personalization", "analytics"]


def _ready(edge: EdgeProcess) -> dict[str, object]:
    for event in edge.log_events():
        if event.get("event") == "serving":
            return event
    raise AssertionError(edge.logs())


def _home(stub: pb_grpc.PersonalizerStub, **kw: object) -> pb.DecideResponse:
    request = pb.DecideRequest(placements=[pb.PlacementRequest(placement_id="home", count=5)], **kw)  # type: ignore[arg-type]
    response: pb.DecideResponse = stub.Decide(request, timeout=5)
    return response


def test_two_workers_share_one_port(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    edge = edge_factory(tmp_path / "data", bundle_dir, "--workers", "2")
    workers = _ready(edge)["workers"]
    assert isinstance(workers, list) and len(workers) == 2 and edge.proc.pid not in workers
    seen_ok = 0
    for _ in range(20):  # new connections: the kernel spreads them over both listeners
        with grpc.insecure_channel(edge.address) as ch:
            seen_ok += _home(pb_grpc.PersonalizerStub(ch), session_id="s").snapshot_version == 1
    assert seen_ok == 20
    worker_lines = [e for e in edge.log_events() if e.get("event") == "worker_serving"]
    assert {e["pid"] for e in worker_lines} == set(workers)
    assert edge.stop() == 0


def test_kill_9_one_worker_the_other_keeps_answering(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    edge = edge_factory(tmp_path / "data", bundle_dir, "--workers", "2")
    victim = int(_ready(edge)["workers"][0])  # type: ignore[index]
    errors: list[str] = []
    ok = [0]
    stop = threading.Event()
    clients = 4

    def client() -> None:
        with grpc.insecure_channel(edge.address) as ch:
            stub = pb_grpc.PersonalizerStub(ch)
            while not stop.is_set():
                try:
                    _home(stub, session_id="s")
                    ok[0] += 1
                except grpc.RpcError as exc:
                    errors.append(exc.code().name)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not any(e.get("event") == "worker_restarted" for e in edge.log_events()):
        assert time.monotonic() < deadline, edge.logs()
        time.sleep(0.1)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(10)
    assert ok[0] > 100
    # Only calls caught on the dead worker's connections fail: the one in flight per client, plus at
    # most one more sent on that connection before the client saw it close. Never a stream of errors.
    assert len(errors) <= 2 * clients, errors
    restarted = next(e for e in edge.log_events() if e.get("event") == "worker_restarted")
    assert restarted["pid"] != victim
    assert edge.stop() == 0


def _track_burst(address: str, prefix: str, n: int, acked: list[str], lock: threading.Lock) -> None:
    """Send n Track calls of one event each; record the ids the edge acknowledged as new."""
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.PersonalizerStub(ch)
        for i in range(n):
            event_id = f"{prefix}-{uuid.uuid4().hex}"
            event = pb.Event(event_id=event_id, type="view", user_id=f"u{i % 50}", item_id=f"i{i % 100}")
            response = stub.Track(pb.TrackRequest(events=[event], consent=CONSENT), timeout=10)
            if response.accepted == 1:
                with lock:
                    acked.append(event_id)


def test_acknowledged_track_events_survive_kill_9_of_the_node(
    processes: Processes, bundle_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    acked: list[str] = []
    cycles = int(os.environ.get("EDGEWISE_KILL_CYCLES", "10"))  # more: EDGEWISE_KILL_CYCLES=100
    for cycle in range(cycles):
        edge = start_edge(processes, data, bundle_dir, "--workers", "1")
        try:
            cycle_acked: list[str] = []
            lock = threading.Lock()
            threads = [
                threading.Thread(target=_track_burst, args=(edge.address, f"c{cycle}", 25, cycle_acked, lock))
                for _ in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            # Right after the last acknowledgement: kill -9 the supervisor and its workers together.
            workers = _ready(edge)["workers"]
            for pid in [edge.proc.pid, *workers]:  # type: ignore[misc]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            edge.proc.wait(10)
        finally:  # a failure midway leaves no node behind (its workers stop when it is gone)
            if edge.proc.poll() is None:
                edge.proc.kill()
                edge.proc.wait(10)
        assert len(cycle_acked) == 100
        acked += cycle_acked
    with Store(data, map_size=8 << 30) as store, store.read() as view:
        assert view.count("events") == len(acked) == cycles * 100
        for event_id in acked[:: max(1, len(acked) // 200)]:
            assert view._txn.get(event_id.encode(), db=view._dbs["events"]) is not None
        assert view.count("outbox") == len(acked)  # exactly once: no duplicates in the outbox


def test_a_decide_never_mixes_two_snapshot_versions(
    edge_factory: Callable[..., EdgeProcess], tmp_path: Path
) -> None:
    v1 = synth_bundle(tmp_path / "v1", users=200, items=300, seed=1)
    v2 = synth_bundle(tmp_path / "v2", users=200, items=300, seed=2, version=2)
    live = tmp_path / "live"
    import shutil

    shutil.copytree(v1, live)
    edge = edge_factory(tmp_path / "data", live, "--workers", "2")
    expected: dict[int, list[str]] = {}
    with grpc.insecure_channel(edge.address) as ch:
        expected[1] = [i.id for i in _home(pb_grpc.PersonalizerStub(ch)).placements[0].items]
    seen: dict[int, int] = {1: 0, 2: 0}
    bad: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with grpc.insecure_channel(edge.address) as ch:
            stub = pb_grpc.PersonalizerStub(ch)
            while not stop.is_set():
                response = _home(stub)
                version = response.snapshot_version
                items = [i.id for i in response.placements[0].items]
                seen[version] += 1
                if version in expected and items != expected[version]:
                    bad.append(f"v{version}: {items}")

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    shutil.rmtree(live)
    shutil.copytree(v2, live)
    rewrite_manifest(live)
    edge.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while seen[2] < 50:
        assert time.monotonic() < deadline, edge.logs()
        time.sleep(0.05)
    with grpc.insecure_channel(edge.address) as ch:
        expected[2] = [i.id for i in _home(pb_grpc.PersonalizerStub(ch)).placements[0].items]
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(10)
    assert expected[1] != expected[2]
    assert seen[1] > 0 and seen[2] > 0
    assert not bad, bad[:3]


def test_too_little_deadline_left_gets_the_fast_default(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    edge = edge_factory(tmp_path / "data", bundle_dir, "--workers", "1", "--min-budget-ms", "60000")
    with grpc.insecure_channel(edge.address) as ch:
        stub = pb_grpc.PersonalizerStub(ch)
        request = pb.DecideRequest(
            user_id="u1",
            consent=CONSENT,
            placements=[
                pb.PlacementRequest(placement_id="home", count=5),
                pb.PlacementRequest(placement_id="hero_banner"),
            ],
        )
        rushed = stub.Decide(request, timeout=5)  # 5 s left < 60 s budget
        relaxed = stub.Decide(request)  # no deadline: the full decision
    assert {p.fallback_reason for p in rushed.placements} == {pb.FALLBACK_REASON_BUDGET_EXCEEDED}
    assert len(rushed.placements[0].items) == 5 and rushed.placements[1].content_id == "hero_default"
    assert relaxed.placements[0].fallback_reason != pb.FALLBACK_REASON_BUDGET_EXCEEDED


def test_overload_is_shed_with_resource_exhausted(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    import urllib.request

    edge = edge_factory(
        tmp_path / "data",
        bundle_dir,
        "--workers",
        "1",
        "--threads",
        "1",
        "--max-in-flight",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    )
    codes: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with grpc.insecure_channel(edge.address) as ch:
            stub = pb_grpc.PersonalizerStub(ch)
            for _ in range(30):
                try:
                    _home(stub, session_id="s")
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(codes) == 180
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert "RESOURCE_EXHAUSTED" in codes and "OK" in codes
    # Every call gRPC shed is counted in edgewise_shed_total.
    metrics = str(_ready(edge)["metrics"])
    body = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    shed = next(
        float(line.split()[-1]) for line in body.splitlines() if line.startswith("edgewise_shed_total")
    )
    assert shed == codes.count("RESOURCE_EXHAUSTED")
    # The node recovers when the load drops.
    with grpc.insecure_channel(edge.address) as ch:
        stub = pb_grpc.PersonalizerStub(ch)
        assert all(_home(stub, session_id="s").snapshot_version == 1 for _ in range(10))


@pytest.mark.parametrize("bad_args", [["--workers", "-1"], ["--listen", "127.0.0.1:notaport"]])
def test_bad_serving_arguments_are_refused(bundle_dir: Path, tmp_path: Path, bad_args: list[str]) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgewise.cli",
            "edge",
            "serve",
            "--data",
            str(tmp_path / "d"),
            "--bundle",
            str(bundle_dir),
            *bad_args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert bad_args[0] in result.stderr or bad_args[1] in result.stderr, result.stderr


def test_metrics_endpoint_counts_calls_of_every_worker(
    edge_factory: Callable[..., EdgeProcess], bundle_dir: Path, tmp_path: Path
) -> None:
    import urllib.request

    edge = edge_factory(tmp_path / "data", bundle_dir, "--workers", "2", "--metrics-listen", "127.0.0.1:0")
    metrics_address = str(_ready(edge)["metrics"])
    for n in range(20):
        with grpc.insecure_channel(edge.address) as ch:  # new connections: both workers answer some
            stub = pb_grpc.PersonalizerStub(ch)
            _home(stub, session_id=f"s{n}")
            event = pb.Event(event_id=f"m{n}", type="view", session_id=f"s{n}", item_id="i1")
            stub.Track(pb.TrackRequest(events=[event, event]), timeout=5)
            with contextlib.suppress(grpc.RpcError):
                stub.Decide(pb.DecideRequest(), timeout=5)  # INVALID_ARGUMENT
    body = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['edgewise_rpc_total{code="OK",rpc="Decide"}'] == 20
    assert values['edgewise_rpc_total{code="INVALID_ARGUMENT",rpc="Decide"}'] == 20
    assert values['edgewise_track_events_total{result="accepted"}'] == 20
    assert values['edgewise_track_events_total{result="duplicate"}'] == 20
    assert values['edgewise_decisions_total{placement="home"}'] == 20
    assert values["edgewise_workers_alive"] == 2
    assert values["edgewise_snapshot_version"] == 1
    assert 'edgewise_rpc_duration_seconds_count{rpc="Decide"}' in values
    assert not any("u1" in name or "s1" in name for name in values)  # no user or session ids as labels
    # Without a control plane, events with the analytics purpose wait in the outbox: the gauge shows them.
    with grpc.insecure_channel(edge.address) as ch:
        events = [pb.Event(event_id=f"ob{n}", type="view", session_id="ob", item_id="i1") for n in range(3)]
        pb_grpc.PersonalizerStub(ch).Track(pb.TrackRequest(events=events, consent=["analytics"]), timeout=5)
    deadline = time.monotonic() + 10
    while True:
        body = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).read().decode()
        lines = body.splitlines()
        outbox = next(float(line.split()[-1]) for line in lines if line.startswith("edgewise_outbox_"))
        if outbox >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert outbox >= 3 and "edgewise_forwarded_total 0" in body


def test_print_config_shows_values_and_sources(bundle_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "edge.toml"
    config.write_text(f'[server]\nthreads = 4\n[data]\ndir = "{tmp_path / "d"}"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgewise.cli",
            "edge",
            "serve",
            "--config",
            str(config),
            "--workers",
            "3",
            "--print-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EDGEWISE_SERVER_GRACE_SECONDS": "7"},
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines() if " = " in line}
    assert "flag:--workers" in lines["server.workers"] and "= 3" in lines["server.workers"]
    assert f"file:{config}" in lines["server.threads"]
    assert "env:EDGEWISE_SERVER_GRACE_SECONDS" in lines["server.grace_seconds"]
    assert "default" in lines["server.max_in_flight"]
    config.write_text("[server]\nthreds = 4\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgewise.cli",
            "edge",
            "serve",
            "--config",
            str(config),
            "--print-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "server.threds" in result.stderr
