"""A Forward batch sent again after JetStream's duplicate window (docs/central.md, "Events counted once"):
the stream stores it a second time (its `Nats-Msg-Id` de-duplication only looks back that far), and
`events_total` still counts each record once, through either replica: it is counted in each replica's
local copy of the stream, which de-duplicates by record id. The window is `nats.duplicate_window`, 1 s
here (2 minutes by default). A real 3-server cluster and two replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import msgpack
import pytest

from edgewise.client import ControlClient
from edgewise.nats_cluster import NatsCluster
from edgewise.processes import Process
from edgewise.v1 import sync_pb2, sync_pb2_grpc
from tests.nats_support import nats_cluster  # noqa: F401  (fixture)
from tests.sync_support import nats_replicas, wait_for

pytestmark = pytest.mark.slow

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-d"}
EDGE = {"EDGEWISE_EDGE_TOKEN": "edge-secret-d"}
WINDOW_S = 1.0


@pytest.fixture
def replicas(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[Callable[..., Process]]:  # noqa: F811
    window = ("--nats-duplicate-window", f"{WINDOW_S:g}s")
    with nats_replicas(tmp_path, nats_cluster.url_list, {**OPS, **EDGE}, *window, timeout=60) as start:
        yield start


def _view(n: int, now: int) -> bytes:
    record = {"id": f"dup-{n}", "t": "view", "u": f"u{n % 7}", "s": "", "i": "i1", "d": "", "p": ""}
    return msgpack.packb({**record, "v": 0.0, "ts": now, "pz": True, "an": True}, use_bin_type=True)


def _batch(count: int) -> list[sync_pb2.OutboxRecord]:
    now = int(time.time() * 1000)
    return [sync_pb2.OutboxRecord(seq=n + 1, kind="event", payload=_view(n, now)) for n in range(count)]


def _forward(replica: Process, records: list[sync_pb2.OutboxRecord]) -> sync_pb2.ForwardReply:
    with grpc.insecure_channel(replica.address) as channel:
        reply: sync_pb2.ForwardReply = sync_pb2_grpc.ControlPlaneStub(channel).Forward(
            sync_pb2.ForwardRequest(node_id="edge-d", records=records),
            metadata=(("authorization", f"Bearer {EDGE['EDGEWISE_EDGE_TOKEN']}"),),
            timeout=30,
        )
    return reply


def _events_total(replica: Process) -> int:
    with ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=30) as ops:
        return ops.status().events_total


def _stream_messages(cluster: NatsCluster) -> int:
    async def read() -> int:
        import nats

        nc = await nats.connect(cluster.urls)
        try:
            return int((await nc.jetstream().stream_info("EDGEWISE_EVENTS")).state.messages)
        finally:
            await nc.close()

    return asyncio.run(read())


def test_a_batch_sent_again_after_the_duplicate_window_is_counted_once(
    replicas: Callable[..., Process],
    nats_cluster: NatsCluster,  # noqa: F811
) -> None:
    a, b = replicas("ra"), replicas("rb")
    batch = _batch(40)
    assert _forward(a, batch).accepted == 40
    assert _forward(a, batch).duplicates == 40  # within the window: JetStream keeps it once
    assert _events_total(a) == 40  # read after the copy caught up: no waiting in the test
    assert _events_total(b) == 40

    time.sleep(WINDOW_S + 0.5)
    _forward(b, batch)  # the edge lost the reply and sends the batch again, after the window
    assert _stream_messages(nats_cluster) == 80  # past the window, JetStream stored it again
    assert _events_total(a) == 40
    assert _events_total(b) == 40

    more = _batch(45)[40:]  # new records after it are counted as usual
    _forward(b, more)
    assert _events_total(a) == 45
    wait_for(lambda: _events_total(b) == 45, 5, "replica B counting the new records")
