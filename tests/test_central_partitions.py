"""One lease per partition of the events stream (docs/central.md): a real 3-server JetStream cluster, two
replicas as real processes, a real edge.

- The partitions spread over the two replicas (each holds some, together all of them), and both fold.
- A replica SIGKILLed: the other one takes its partitions over within seconds, and every event forwarded
  before and after the kill is folded exactly once (each user's order count exact on the edge).
- Both replicas learn bandit posteriors from their partitions (logged-in users' decisions, clicks that
  name the decision but not the user): the edge's posteriors hold every impression and click once,
  before and after a replica is SIGKILLed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgewise.client import ControlClient
from edgewise.nats_cluster import NatsCluster
from edgewise.processes import Process
from tests.conftest import EdgeProcess
from tests.nats_support import nats_cluster  # noqa: F401  (fixture)
from tests.sync_support import following_edge, nats_replicas, versions_reach, wait_for

pytestmark = pytest.mark.slow

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-p"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-secret-p"}
PARTITIONS = 8
USERS = [f"buyer-{n}" for n in range(32)]


@pytest.fixture
def replicas(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[Callable[..., Process]]:  # noqa: F811
    with nats_replicas(tmp_path, nats_cluster.url_list, {**OPS, **EDGE}) as start:
        yield start


def _held(replica: Process) -> set[int]:
    """The partitions the replica holds, from its last `fold_partitions` line."""
    held: set[int] = set()
    for event in replica.log_events():
        if event.get("event") == "fold_partitions":
            held = set(event["partitions"])
    return held


def _folds(replica: Process) -> list[dict[str, Any]]:
    return [e for e in replica.log_events() if e.get("event") == "profiles_folded"]


def _buy(address: str, purchases: list[tuple[str, str]]) -> None:
    import grpc

    from edgewise.v1 import personalizer_pb2 as pb
    from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        for start in range(0, len(purchases), 40):
            events = [
                pb.Event(event_id=event_id, type="purchase", user_id=user, item_id="i1", value=3.0)
                for event_id, user in purchases[start : start + 40]
            ]
            stub.Track(pb.TrackRequest(events=events, consent=["analytics"]), timeout=10)


def _orders(data: Path) -> dict[str, int]:
    from edgewise.core.store import Store

    with Store(data, readonly=True) as store, store.read() as view:
        out = {}
        for user in USERS:
            profile = view.profile(user)
            out[user] = int(profile.attributes.get("orders", 0)) if profile is not None else 0
        return out


def _round(tag: str, per_user: int) -> list[tuple[str, str]]:
    return [(f"{tag}-{user}-{k}", user) for k in range(per_user) for user in USERS]


def test_partitions_spread_over_replicas_and_a_killed_ones_are_taken_over_folding_once(
    replicas: Callable[..., Process],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    a = replicas("ra")
    b = replicas("rb")
    with ControlClient(a.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
        version = ops.push(bundle_dir).version
    edge = following_edge(edge_factory, tmp_path / "edge", a.address, "edge-p", EDGE)
    wait_for(versions_reach([tmp_path / "edge"], version), 30, "the edge at the push")

    def spread() -> bool:
        held_a, held_b = _held(a), _held(b)
        return bool(held_a) and bool(held_b) and held_a | held_b == set(range(PARTITIONS))

    wait_for(spread, 20, "the partitions spread over both replicas")
    held_a, held_b = _held(a), _held(b)
    assert not held_a & held_b
    assert len(held_a) == len(held_b) == PARTITIONS // 2

    _buy(edge.address, _round("r1", 3))
    wait_for(lambda: _orders(tmp_path / "edge") == {u: 3 for u in USERS}, 30, "3 orders per user folded")
    assert _folds(a) and _folds(b), "both replicas folded their partitions"

    b.stop(signal.SIGKILL)
    killed = time.monotonic()
    _buy(edge.address, _round("r2", 2))  # forwarded through A; half of them are in B's partitions
    wait_for(lambda: _held(a) == set(range(PARTITIONS)), 15, "A holding every partition")
    takeover_s = time.monotonic() - killed
    assert takeover_s < 8, takeover_s
    wait_for(lambda: _orders(tmp_path / "edge") == {u: 5 for u in USERS}, 30, "5 orders per user folded")
    time.sleep(1.5)  # nothing folded twice shows up late
    assert _orders(tmp_path / "edge") == {u: 5 for u in USERS}
    with ControlClient(a.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
        assert ops.status().events_total == len(USERS) * 5


def test_learners_of_both_replicas_count_every_impression_and_click_once_across_a_kill(
    replicas: Callable[..., Process],
    edge_factory: Callable[..., EdgeProcess],
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    from tests.test_bandit_loop import LEARN_FAST, _arms, _learned_exactly, _serve_and_click

    a = replicas("ra", *LEARN_FAST)
    b = replicas("rb", *LEARN_FAST)
    with ControlClient(a.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
        version = ops.push(bundle_dir).version
    edge = following_edge(edge_factory, tmp_path / "edge", a.address, "edge-l", EDGE)
    wait_for(versions_reach([tmp_path / "edge"], version), 30, "the edge at the push")
    wait_for(lambda: bool(_held(a)) and bool(_held(b)), 20, "the partitions spread over both replicas")
    before = _arms(tmp_path / "edge")
    served: dict[str, int] = {}
    clicked: dict[str, int] = {}
    # logged-in users (their exposures in 8 partitions); the clicks name the decision, not the user
    _serve_and_click(edge.address, range(80), served, clicked, users=USERS)
    wait_for(_learned_exactly(tmp_path / "edge", before, served, clicked), 40, "every impression and click")
    publishers = [r for r in (a, b) if any(e.get("event") == "bandits_published" for e in r.log_events())]
    assert len(publishers) == 2, "both replicas learned their partitions"

    b.stop(signal.SIGKILL)
    _serve_and_click(edge.address, range(80, 160), served, clicked, users=USERS)
    wait_for(_learned_exactly(tmp_path / "edge", before, served, clicked), 40, "the same after the kill")
    time.sleep(2.0)  # nothing counted twice shows up late
    assert _learned_exactly(tmp_path / "edge", before, served, clicked)()


def test_a_replica_with_another_partition_count_makes_both_stop_folding_with_an_error(
    replicas: Callable[..., Process],
) -> None:
    a = replicas("ra")
    wait_for(lambda: _held(a) == set(range(PARTITIONS)), 20, "A holding every partition")
    b = replicas("rb", "--nats-partitions", "4")

    def refused(replica: Process) -> bool:
        return any(e.get("event") == "partitions_differ" for e in replica.log_events())

    wait_for(lambda: refused(a) and refused(b), 20, "both replicas saying the partition counts differ")
    wait_for(lambda: not _held(a) and not _held(b), 10, "neither folding")
    message = next(e["error"] for e in a.log_events() if e.get("event") == "partitions_differ")
    assert "works 4 partitions" in message and "this one 8" in message
