"""Fault tests of the central tier (docs/central.md): a real 3-server JetStream cluster, 2 replicas, 3 edges
(edge 1 follows replica A, edges 2 and 3 replica B, edge 3 through the TCP fault proxy).

- A replica SIGKILLed in the middle of a burst of pushes through both replicas (and restarted on its
  port and cache), an edge cut off from its replica by the proxy meanwhile: every acknowledged push is in
  the history once, every edge ends at the head with the same digest, every event forwarded is stored once.
- A NATS server SIGKILLed during a burst of pushes and forwarded events: the same, and purchases folded
  into the profile once.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from edgewise.client import ClientError, ControlClient
from edgewise.core.store import Store
from edgewise.nats_cluster import NatsCluster
from edgewise.processes import Process, Processes
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess
from tests.nats_support import nats_cluster  # noqa: F401  (fixture)
from tests.sync_support import edge_state, following_edge, start_control, versions_reach, wait_for
from tests.tcp_proxy import FaultProxy

pytestmark = pytest.mark.slow

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-f"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-secret-f"}


@dataclass
class Tier:
    cluster: NatsCluster
    processes: Processes
    tmp: Path
    a: Process
    b: Process
    edges: list[EdgeProcess]
    datas: list[Path]
    proxy: FaultProxy


@pytest.fixture
def tier(
    tmp_path: Path,
    nats_cluster: NatsCluster,  # noqa: F811
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
) -> Iterator[Tier]:
    with Processes(tmp_path / "run", env={**OPS, **EDGE}) as processes:
        a, b = (
            start_control(processes, tmp_path / name, "--nats", nats_cluster.url_list, env={**OPS, **EDGE})
            for name in ("ra", "rb")
        )
        with _ops(a) as ops:
            version = ops.push(bundle_dir).version
        with FaultProxy("127.0.0.1", b.port) as proxy:
            targets = [a.address, b.address, proxy.address]
            datas = [tmp_path / f"edge{i}" for i in range(3)]
            edges = [following_edge(edge_factory, datas[i], targets[i], f"edge-{i}", EDGE) for i in range(3)]
            wait_for(versions_reach(datas, version), 30, "three edges at the first push")
            yield Tier(nats_cluster, processes, tmp_path, a, b, edges, datas, proxy)


def _ops(replica: Process) -> ControlClient:
    return ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=30)


def _delta(name: str) -> list[dict[str, object]]:
    return [
        {
            "op": "upsert",
            "item": {"id": f"it-{name}", "category": "home/kitchen", "price": 2.0, "regions": ["*"]},
        }
    ]


class Pusher:
    """Deltas pushed one after another through `address`, recording which were acknowledged."""

    def __init__(self, address: str, prefix: str, count: int) -> None:
        self.address, self.prefix, self.count = address, prefix, count
        self.acked: dict[str, int] = {}
        self.failed: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for i in range(self.count):
            name = f"{self.prefix}{i}"
            try:
                with ControlClient(self.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=20) as ops:
                    self.acked[name] = ops.push_delta(_delta(name), name=f"{name}.jsonl").version
            except ClientError:
                self.failed.append(name)
            time.sleep(0.05)


def _history(replica: Process) -> list[tuple[int, str]]:
    with _ops(replica) as ops:
        return [(c.version, c.description) for c in ops.history(limit=500).commits]


def _check_converged(tier: Tier, replicas: list[Process], pushers: list[Pusher]) -> None:
    head = max(_history(r)[0][0] for r in replicas)
    wait_for(lambda: all(_history(r)[0][0] == head for r in replicas), 30, "every replica at the head")
    history = _history(replicas[0])
    assert history == _history(replicas[-1])
    descriptions = [d for _, d in history]
    for pusher in pushers:
        for name, version in pusher.acked.items():
            assert descriptions.count(f"{name}.jsonl") == 1, name  # an acknowledged push, once
            assert (version, f"{name}.jsonl") in history
    wait_for(versions_reach(tier.datas, head), 40, "every edge at the head")

    # fold commits of the events tracked during the burst may still land after the pushes: wait until
    # every edge holds the replicas' newest head, with the same data
    def converged() -> bool:
        newest = max(_history(r)[0][0] for r in replicas)
        states = [edge_state(d) for d in tier.datas]
        return states[0][0] == newest and all(s == states[0] for s in states)

    wait_for(converged, 40, "every edge at the newest head with the same data")


def _track(address: str, ids: list[str], kind: str = "view", user: str | None = None) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        for start in range(0, len(ids), 25):
            events = [
                pb.Event(
                    event_id=i, type=kind, user_id=user or f"u{n % 40}", item_id=f"i{n % 30}", value=12.5
                )
                for n, i in enumerate(ids[start : start + 25], start)
            ]
            stub.Track(pb.TrackRequest(events=events, consent=["analytics"]), timeout=10)


def _outbox_empty(datas: list[Path]) -> Callable[[], bool]:
    def check() -> bool:
        for data in datas:
            with Store(data, readonly=True) as store, store.read() as view:
                if view.count("outbox"):
                    return False
        return True

    return check


def _events_total(replica: Process) -> int:
    with _ops(replica) as ops:
        return ops.status().events_total


def _orders(data: Path, user: str) -> int:
    with Store(data, readonly=True) as store, store.read() as view:
        profile = view.profile(user)
        return int(profile.attributes.get("orders", 0)) if profile is not None else -1


def test_a_replica_killed_mid_push_and_an_edge_cut_off_converge(tier: Tier) -> None:
    ids = [f"ev-{n}" for n in range(150)]
    pushers = [Pusher(tier.a.address, "a", 8), Pusher(tier.b.address, "b", 8)]
    for p in pushers:
        p.thread.start()
    _track(tier.edges[0].address, ids[:100])  # forwarded to A
    _track(tier.edges[2].address, ids[50:])  # to B through the proxy (50 ids sent to both)
    wait_for(lambda: len(pushers[0].acked) >= 2, 20, "pushes through A")
    tier.proxy.set_refuse(True)  # edge 2 cut off from B
    tier.proxy.drop_all()
    tier.a.stop(signal.SIGKILL)  # mid-push
    for p in pushers:
        p.thread.join(120)
    assert len(pushers[1].acked) == 8  # B kept taking pushes
    tier.proxy.set_refuse(False)
    a2 = start_control(
        tier.processes,
        tier.a.data,
        "--nats",
        tier.cluster.url_list,
        listen=f"127.0.0.1:{tier.a.port}",
        env={**OPS, **EDGE},
    )  # the same cache, the same port: edge 0 reconnects

    _check_converged(tier, [a2, tier.b], pushers)
    wait_for(_outbox_empty(tier.datas), 30, "every outbox forwarded")
    wait_for(lambda: _events_total(tier.b) == 150, 20, "150 distinct events stored")
    assert _events_total(a2) == 150


def test_a_nats_server_killed_mid_burst_loses_nothing_acknowledged(tier: Tier) -> None:
    user = "u7"
    before = _orders(tier.datas[1], user)
    pushers = [Pusher(tier.a.address, "a", 10), Pusher(tier.b.address, "b", 10)]
    for p in pushers:
        p.thread.start()
    views = threading.Thread(target=_track, args=(tier.edges[0].address, [f"ev-{n}" for n in range(200)]))
    views.start()
    wait_for(lambda: sum(len(p.acked) for p in pushers) >= 3, 30, "the burst under way")
    tier.cluster.kill(0)
    _track(tier.edges[1].address, [f"buy-{n}" for n in range(4)], kind="purchase", user=user)
    views.join(60)
    for p in pushers:
        p.thread.join(180)
    assert sum(len(p.acked) for p in pushers) >= 10, [p.failed for p in pushers]
    _check_converged(tier, [tier.a, tier.b], pushers)
    wait_for(_outbox_empty(tier.datas), 40, "every outbox forwarded")
    wait_for(lambda: _events_total(tier.a) == 204 and _events_total(tier.b) == 204, 30, "204 events stored")
    wait_for(lambda: _orders(tier.datas[1], user) == before + 4, 30, "the purchases folded")
    time.sleep(1.5)
    assert _orders(tier.datas[1], user) == before + 4 == _orders(tier.datas[0], user)
