"""Delta sync under faults, with real processes: many random deltas, corrupted chunks and invalid
commits, edges and the control plane killed with SIGKILL mid-stream, a TCP proxy that drops and stalls
connections. Every test checks convergence by the edges' LMDB content digests (`edge_state`) and that
each edge applied its commits in increasing version order, none twice (`sync_applied` log lines)."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

import edgewise.sync.commit_cache as commit_cache
from edgewise.client import ControlClient
from edgewise.offline.synth import synth_bundle
from edgewise.processes import Processes
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from edgewise.v1 import sync_pb2, sync_pb2_grpc
from tests.conftest import EdgeProcess
from tests.sync_support import (
    ControlProcess,
    applied_events,
    check_applied_order,
    control_state_digest,
    edge_address,
    edge_state,
    kill_edge,
    spawn_edge,
    start_control,
    wait_for,
)
from tests.tcp_proxy import FaultProxy

pytestmark = pytest.mark.slow  # every test here runs a control plane and edges as real processes

OPS_TOKEN = "ops-fault-token-1"
EDGE_TOKEN = "edge-fault-token-1"
TOKENS = {"EDGEWISE_OPS_TOKEN": OPS_TOKEN, "EDGEWISE_EDGE_TOKEN": EDGE_TOKEN}


# --- fixtures and helpers ----------------------------------------------------------------------------


class Cluster:
    """Control planes and edges started by one test; everything still running is SIGKILLed at the end."""

    def __init__(self, tmp_path: Path, processes: Processes) -> None:
        self.tmp = tmp_path
        self.processes = processes

    def control(self, *extra: str, data: Path | None = None, listen: str = "127.0.0.1:0") -> ControlProcess:
        return start_control(self.processes, data or self.tmp / "control", *extra, listen=listen, env=TOKENS)

    def edge(self, data: Path, control_address: str, node: str, *extra: str) -> EdgeProcess:
        return spawn_edge(
            self.processes,
            data,
            "--control",
            control_address,
            "--node-id",
            node,
            "--workers",
            "1",
            *extra,
            env={"EDGEWISE_EDGE_TOKEN": EDGE_TOKEN},
        )


@pytest.fixture
def cluster(tmp_path: Path, processes: Processes) -> Cluster:
    return Cluster(tmp_path, processes)


def _ops(address: str, token: str | None = OPS_TOKEN) -> ControlClient:
    return ControlClient(address, token=token, timeout=120)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _states(datas: list[Path]) -> list[tuple[int, str]]:
    return [edge_state(d) for d in datas]


def _all_at(datas: list[Path], version: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return all(edge_state(d)[0] == version for d in datas)
        except Exception:
            return False

    return check


def _applied_versions(edge: EdgeProcess) -> list[int]:
    return [int(e["version"]) for e in applied_events(edge)]  # type: ignore[call-overload]


def _decide_version(address: str, user: str = "u1") -> int:
    with grpc.insecure_channel(address) as channel:
        request = pb.DecideRequest(
            user_id=user,
            consent=["personalization"],
            placements=[pb.PlacementRequest(placement_id="home", count=3)],
        )
        return int(pb_grpc.PersonalizerStub(channel).Decide(request, timeout=10).snapshot_version)


class DeltaGen:
    """Random valid delta files against a model of the control plane's state: profile upserts with
    attributes taken from the bundle's profiles.jsonl, profile deletes and re-adds, item price changes."""

    def __init__(self, bundle: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.profiles = {p["id"]: p for p in _read_jsonl(bundle / "profiles.jsonl")}
        self.pool = list(self.profiles.values())
        self.items = {i["id"]: i for i in _read_jsonl(bundle / "items.jsonl")}
        self.item_ids = sorted(self.items)
        self.live = set(self.profiles)
        self.deleted: set[str] = set()
        self.counts = {"upsert": 0, "delete": 0, "readd": 0, "price": 0}

    def _profile_line(self, user: str) -> dict[str, Any]:
        source = self.rng.choice(self.pool)  # another user's attributes: a real, schema-valid record
        attributes = dict(source["attributes"])
        attributes["ltv"] = round(self.rng.uniform(0, 5000), 2)  # always a change
        profile = {"id": user, "attributes": attributes, "consent": self.profiles[user]["consent"]}
        return {"op": "upsert", "profile": profile}

    def _price_line(self) -> dict[str, Any]:
        item = dict(self.items[self.rng.choice(self.item_ids)])
        old = float(item["price"])
        price = old
        while price == old:
            price = round(self.rng.uniform(1, 500), 2)
        item["price"] = price
        self.items[item["id"]] = item
        return {"op": "upsert", "item": item}

    def delta(self) -> list[dict[str, Any]]:
        """One delta file: 1-3 lines touching distinct records."""
        lines: list[dict[str, Any]] = []
        touched: set[str] = set()
        for _ in range(self.rng.randint(1, 3)):
            roll = self.rng.random()
            if roll < 0.15:
                lines.append(self._price_line())
                self.counts["price"] += 1
                continue
            if roll < 0.35 and len(self.live - touched) > 50:
                user = self.rng.choice(sorted(self.live - touched))
                self.live.discard(user)
                self.deleted.add(user)
                touched.add(user)
                lines.append({"op": "delete", "profile": user})
                self.counts["delete"] += 1
                continue
            if roll < 0.55 and self.deleted - touched:
                user = self.rng.choice(sorted(self.deleted - touched))
                self.deleted.discard(user)
                self.live.add(user)
                touched.add(user)
                lines.append(self._profile_line(user))
                self.counts["readd"] += 1
                continue
            user = self.rng.choice(sorted(self.live - touched))
            touched.add(user)
            lines.append(self._profile_line(user))
            self.counts["upsert"] += 1
        return lines


def _push_bundle_and_edges(
    cluster: Cluster, control: ControlProcess, bundle: Path, count: int, address: str | None = None
) -> tuple[list[EdgeProcess], list[Path], int]:
    with _ops(control.address) as ops:
        version = ops.push(bundle).version
    datas = [cluster.tmp / f"edge{i}" for i in range(count)]
    spawned = [cluster.edge(d, address or control.address, f"edge-{i}") for i, d in enumerate(datas)]
    for edge in spawned:
        edge_address(edge, timeout=60)
    wait_for(_all_at(datas, version), 30, "every edge at the bundle's version")
    return spawned, datas, version


# --- 1a: many random deltas ---------------------------------------------------------------------------


def test_three_edges_converge_after_1000_random_deltas(cluster: Cluster, bundle_dir: Path) -> None:
    control = cluster.control()
    edges, datas, first = _push_bundle_and_edges(cluster, control, bundle_dir, 3)
    gen = DeltaGen(bundle_dir, seed=5)
    versions = [first]
    started = time.monotonic()
    with _ops(control.address) as ops:
        for _ in range(1000):
            versions.append(ops.push_delta(gen.delta()).version)
    push_seconds = time.monotonic() - started
    head = versions[-1]
    assert versions == sorted(set(versions)), "every delta must be one new commit"
    assert gen.counts["delete"] > 50 and gen.counts["readd"] > 50 and gen.counts["price"] > 50
    wait_for(_all_at(datas, head), 60, f"every edge at the head {head}")
    states = _states(datas)
    assert {s for s in states} == {(head, states[0][1])}, states
    for edge in edges:
        applied = _applied_versions(edge)
        check_applied_order(applied)
        assert applied[0] == first and applied[-1] == head
        assert set(applied) <= set(versions)
    control.stop()
    with ControlStore(control.data) as store:
        assert control_state_digest(store) == states[0], "the edges hold exactly the control plane's state"
    print(f"1000 deltas pushed in {push_seconds:.1f}s; ops {gen.counts}")


# --- 1b: a corrupted chunk and an invalid commit, control plane in-process ----------------------------


@pytest.fixture
def inprocess_control(tmp_path: Path) -> Iterator[tuple[ControlPlaneService, str]]:
    store = ControlStore(tmp_path / "control", map_size=1 << 30)
    service = ControlPlaneService(store, heartbeat_seconds=0.5)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="ctl-test"))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait(5)
        store.close()


def _nacks(edge: EdgeProcess) -> list[dict[str, object]]:
    return [e for e in edge.log_events() if e.get("event") == "sync_nack"]


def test_corrupted_chunk_and_invalid_commit_are_nacked_and_heal(
    cluster: Cluster,
    inprocess_control: tuple[ControlPlaneService, str],
    bundle_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, address = inprocess_control
    store = service.store
    original = commit_cache.encode_commit
    # the first commit newer than target["after"] that is encoded gets its first chunk corrupted, once
    target = {"after": 1 << 62, "version": -1}
    corrupted = threading.Event()
    release = threading.Event()  # holds the resend until the test looked at the NACKed state

    def corrupting(
        commit: sync_pb2.Commit, changes: Any, *, chunk_bytes: int = 1 << 20
    ) -> Iterator[sync_pb2.SyncMessage]:
        if target["version"] < 0 and commit.version > target["after"]:
            target["version"] = commit.version
        if commit.version == target["version"]:
            if not corrupted.is_set():
                corrupted.set()
                for message in original(commit, changes, chunk_bytes=chunk_bytes):
                    if message.WhichOneof("kind") == "chunk" and message.chunk.index == 0:
                        message.chunk.changes[0].value += b"\xff"  # the sha256 stays the old one
                    yield message
                return
            release.wait(30)
        yield from original(commit, changes, chunk_bytes=chunk_bytes)

    monkeypatch.setattr(commit_cache, "encode_commit", corrupting)

    with _ops(address, None) as ops:
        v1 = ops.push(bundle_dir).version
        data = cluster.tmp / "edge"
        edge = cluster.edge(data, address, "edge-nack")
        edge_address(edge, timeout=60)
        wait_for(_all_at([data], v1), 30, "edge at the bundle")
        assert _decide_version(edge.address) == v1

        # 1. a delta whose first chunk is corrupted on the wire, once
        lines = DeltaGen(bundle_dir, seed=9).delta()
        target["after"] = v1
        v2 = ops.push_delta(lines).version
        wait_for(lambda: bool(_nacks(edge)), 15, "the edge's sync_nack of the corrupted chunk")
        assert corrupted.is_set()
        nack = _nacks(edge)[0]
        assert nack["version"] == v2 and "sha256" in str(nack["error"])
        assert edge_state(data)[0] == v1
        assert _decide_version(edge.address) == v1, "the edge keeps serving its last good version"
        wait_for(lambda: _edge_row(service)["last_nack_version"] == v2, 10, "the NACK in the fleet status")
        row = _edge_row(service)
        assert row["last_error"] and row["applied_version"] == v1
        ops_row = next(e for e in ops.status().edges if e.node_id == "edge-nack")
        assert ops_row.last_nack_version == v2 and ops_row.last_error
        release.set()
        wait_for(_all_at([data], v2), 20, "the edge at the corrupted version after the retry")
        assert edge_state(data) == control_state_digest(store)
        assert _decide_version(edge.address) == v2

        # 2. an invalid commit written straight into the store: NACKed until a fixing commit lands
        nacks_before = len(_nacks(edge))
        bad = store.commit([RecordChange("items", "bogus", b"not msgpack")], kind="delta")
        assert bad is not None
        service._notify()
        wait_for(lambda: len(_nacks(edge)) > nacks_before, 15, "the edge's sync_nack of the invalid commit")
        nack = _nacks(edge)[nacks_before]
        assert nack["version"] == bad.version and "refused" in str(nack["error"])
        wait_for(
            lambda: _edge_row(service)["last_nack_version"] == bad.version, 10, "the invalid commit's NACK"
        )
        assert _edge_row(service)["last_error"]
        time.sleep(0.7)  # a resend (full snapshot after the backoff) is NACKed again: still the old state
        assert edge_state(data)[0] == v2
        assert _decide_version(edge.address) == v2
        ops_row = next(e for e in ops.status().edges if e.node_id == "edge-nack")
        assert ops_row.last_nack_version == bad.version and ops_row.applied_version == v2
        assert ops_row.last_error
        fix = store.commit([RecordChange("items", "bogus", None)], kind="delta")
        assert fix is not None
        service._notify()
        wait_for(_all_at([data], fix.version), 40, "the edge at the fixing commit")
        assert edge_state(data) == control_state_digest(store)
        assert _decide_version(edge.address) == fix.version
        wait_for(lambda: _edge_row(service)["last_error"] == "", 10, "the error cleared by an ACK")
    check_applied_order(_applied_versions(edge))


def _edge_row(service: ControlPlaneService) -> dict[str, Any]:
    reply = service.Status(sync_pb2.StatusRequest(), None)  # type: ignore[arg-type]
    row = next(e for e in reply.edges if e.node_id == "edge-nack")
    return {
        "applied_version": row.applied_version,
        "last_nack_version": row.last_nack_version,
        "last_error": row.last_error,
    }


# --- 1c: kill -9 an edge while it applies a full snapshot ---------------------------------------------


def test_edge_killed_mid_snapshot_keeps_old_or_new_state(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    bundles = [
        synth_bundle(tmp_path / "bundle-a", users=20_000, items=500, seed=101, version=1),
        synth_bundle(tmp_path / "bundle-b", users=20_000, items=500, seed=202, version=2),
    ]
    synth_seconds = time.monotonic() - started
    # with a log of 1 change, an edge that is behind always gets a full snapshot
    control = cluster.control("--retain-log-changes", "1")
    data = tmp_path / "edge"
    rng = random.Random(77)
    with _ops(control.address) as ops:
        # the reference digests: the edge applies A, then B (timed: the bootstrap of a snapshot)
        references: list[str] = []
        boots: list[float] = []
        for bundle in bundles:
            version = ops.push(bundle).version
            t0 = time.monotonic()
            edge = cluster.edge(data, control.address, "edge-kill")
            wait_for(_all_at([data], version), 60, "the edge at the reference version", interval=0.02)
            boots.append(time.monotonic() - t0)
            references.append(edge_state(data)[1])
            kill_edge(edge)
        assert references[0] != references[1]
        # delays spread around the measured bootstrap time (stratified 0.3-1.6x, jittered, shuffled)
        bootstrap = sum(boots) / len(boots)
        delays = [bootstrap * (0.3 + 0.145 * i) * rng.uniform(0.9, 1.1) for i in range(10)]
        rng.shuffle(delays)
        current = 1  # the edge holds B
        before_apply = 0
        outcomes: list[str] = []
        push_times: list[float] = []
        catch_up_times: list[float] = []
        for cycle, delay in enumerate(delays):
            new = 1 - current
            t0 = time.monotonic()
            version = ops.push(bundles[new]).version
            push_times.append(time.monotonic() - t0)
            edge = cluster.edge(data, control.address, "edge-kill")
            time.sleep(delay)
            kill_edge(edge)
            applied_before_kill = bool(applied_events(edge))
            got_version, digest = edge_state(data)
            assert digest in (references[current], references[new]), (
                f"cycle {cycle}: a kill after {delay:.2f}s left a state that is neither the old nor the new "
                f"snapshot (version {got_version})"
            )
            if digest == references[current]:
                before_apply += 1
                connected = any(e.get("event") == "sync_connected" for e in edge.log_events())
                outcomes.append(f"{delay:.2f}s:old{'(mid-stream)' if connected else ''}")
                assert not applied_before_kill
            else:
                assert got_version == version
                outcomes.append(f"{delay:.2f}s:new")
            t0 = time.monotonic()
            restarted = cluster.edge(data, control.address, "edge-kill")
            wait_for(_all_at([data], version), 60, f"cycle {cycle}: the restarted edge at the head")
            catch_up_times.append(time.monotonic() - t0)
            assert edge_state(data) == (version, references[new])
            kill_edge(restarted)
            current = new
    print(
        f"synth {synth_seconds:.1f}s, bootstrap {bootstrap:.2f}s, kills before the new state: "
        f"{before_apply}/10 ({', '.join(outcomes)}); push {sum(push_times) / 10:.2f}s, "
        f"catch-up {sum(catch_up_times) / 10:.2f}s on average"
    )
    assert before_apply >= 2, f"only {before_apply} of 10 kills landed before the apply: {outcomes}"


# --- 1d: a proxy that drops and stalls connections ----------------------------------------------------


def test_edges_converge_through_dropping_and_stalling_proxy(cluster: Cluster, bundle_dir: Path) -> None:
    control = cluster.control()
    with FaultProxy("127.0.0.1", control.port) as proxy:
        edges, datas, _ = _push_bundle_and_edges(cluster, control, bundle_dir, 2, address=proxy.address)
        gen = DeltaGen(bundle_dir, seed=21)
        done = threading.Event()
        faults: list[str] = []
        rng = random.Random(3)

        def chaos() -> None:
            # a bounded plan: 4 resets (each doubles the edges' reconnect backoff) and 5 stalls
            plan = ["drop", "stall", "stall", "drop", "stall", "drop+stall", "stall", "drop"]
            for action in plan:
                if done.wait(rng.uniform(0.2, 0.6)):
                    return
                if action.startswith("drop"):
                    faults.append(f"drop:{proxy.drop_all()}")
                if action.endswith("stall"):
                    proxy.stall(None)
                    done.wait(rng.uniform(0.3, 1.5))
                    faults.append("stall")
                    proxy.unstall()

        thread = threading.Thread(target=chaos, name="chaos", daemon=True)
        thread.start()
        with _ops(control.address) as ops:
            versions = [ops.push_delta(gen.delta()).version for _ in range(220)]
        thread.join(timeout=20)
        done.set()
        proxy.unstall()
        head = versions[-1]
        wait_for(_all_at(datas, head), 60, f"both edges at the head {head} after the faults")
        assert proxy.dropped > 0 and "stall" in faults, faults
    states = _states(datas)
    assert states[0] == states[1] and states[0][0] == head
    for edge in edges:
        applied = _applied_versions(edge)
        check_applied_order(applied)
        assert applied[-1] == head
        reconnects = [e for e in edge.log_events() if e.get("event") == "sync_connected"]
        assert len(reconnects) >= 2, "the proxy's resets made the edge reconnect"
    print(f"faults: {faults}; proxy {proxy.stats()}")


# --- 1e: kill -9 the control plane mid-stream ---------------------------------------------------------


def test_control_plane_killed_mid_stream_edges_resume_with_deltas(cluster: Cluster, bundle_dir: Path) -> None:
    control = cluster.control()
    # the edges reach the control plane through a proxy that only counts the bytes streamed to them
    proxy = FaultProxy("127.0.0.1", control.port)
    try:
        edges, datas, first = _push_bundle_and_edges(cluster, control, bundle_dir, 2, address=proxy.address)
        pool = _read_jsonl(bundle_dir / "profiles.jsonl")
        rng = random.Random(8)
        big = [
            {
                "op": "upsert",
                "profile": {"id": f"big{i}", "attributes": pool[i % len(pool)]["attributes"], "consent": {}},
                "embedding": [round(rng.uniform(-1, 1), 4) for _ in range(32)],
            }
            for i in range(12_000)
        ]
        with _ops(control.address) as ops:
            before = proxy.bytes_down
            big_version = ops.push_delta(big, name="big.jsonl").version
        # kill as soon as the big delta (several 1 MiB chunks) has started streaming to the edges
        proxy.wait_for(lambda p: p.bytes_down > before + (256 << 10), timeout=10)
        control.stop(signal.SIGKILL)
        streamed = proxy.bytes_down - before
        killed_at = time.time()
        at_kill = [edge_state(d)[0] for d in datas]
        _run_after_restart(cluster, control, bundle_dir, edges, datas, first, big_version, killed_at)
    finally:
        proxy.close()
    print(f"at the kill {streamed} bytes had streamed; the edges had versions {at_kill} (big {big_version})")


def _run_after_restart(
    cluster: Cluster,
    control: ControlProcess,
    bundle_dir: Path,
    edges: list[EdgeProcess],
    datas: list[Path],
    first: int,
    big_version: int,
    killed_at: float,
) -> None:
    control2 = cluster.control(data=control.data, listen=f"127.0.0.1:{control.port}")
    gen = DeltaGen(bundle_dir, seed=13)
    with _ops(control2.address) as ops:
        versions = [ops.push_delta(gen.delta()).version for _ in range(20)]
    head = versions[-1]
    wait_for(_all_at(datas, head), 60, f"both edges at the head {head} after the restart")
    states = _states(datas)
    assert states[0] == states[1]
    for edge in edges:
        applied = applied_events(edge)
        check_applied_order([int(e["version"]) for e in applied])  # type: ignore[call-overload]
        assert applied[0]["snapshot"] is True and applied[0]["version"] == first
        assert all(e["snapshot"] is False for e in applied[1:]), "the edges resumed with deltas only"
        after = [e for e in applied if float(e["ts"]) > killed_at]  # type: ignore[arg-type]
        assert after and after[-1]["version"] == head
        assert big_version in [e["version"] for e in applied]
    control2.stop()
    with ControlStore(control2.data) as store:
        assert control_state_digest(store) == states[0]
