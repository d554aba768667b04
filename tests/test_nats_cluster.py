"""The test cluster of the central tier: three real nats-server processes with JetStream on loopback
(tests/nats_support.py), an R3 stream that keeps taking writes when a server is SIGKILLed, and the
optimistic-concurrency header the change log relies on."""

from __future__ import annotations

import asyncio
import time

import pytest

from edgewise.nats_cluster import NatsCluster
from tests.nats_support import nats_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


async def _publish_and_kill(cluster: NatsCluster) -> tuple[list[int], int, int]:
    import nats
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import StreamConfig
    from nats.js.errors import APIError, BadRequestError, NoStreamResponseError

    nc = await nats.connect(cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"], num_replicas=3))
        first = await js.publish("t.log", b"a", headers={"Nats-Expected-Last-Subject-Sequence": "0"})
        try:
            await js.publish("t.log", b"b", headers={"Nats-Expected-Last-Subject-Sequence": "0"})
            refused = 0
        except BadRequestError as exc:
            refused = int(exc.err_code or 0)
        cluster.kill(0)
        seqs = [first.seq]
        for i in range(3):
            headers = {"Nats-Expected-Last-Subject-Sequence": str(seqs[-1]), "Nats-Msg-Id": f"c{i}"}
            deadline = time.monotonic() + 30  # a request in flight when its server died is answered by none
            while True:
                try:
                    ack = await js.publish("t.log", b"c", timeout=1.0, headers=headers)
                    break
                except (TimeoutError, NatsTimeout, NoRespondersError, NoStreamResponseError, APIError) as exc:
                    if isinstance(exc, APIError) and exc.code not in (503, 504, None):
                        raise
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            seqs.append(ack.seq)
        info = await js.stream_info("T")
        return seqs, refused, int(info.state.messages)
    finally:
        await nc.close()


def test_an_r3_stream_takes_writes_with_a_server_killed(nats_cluster: NatsCluster) -> None:  # noqa: F811
    assert len(nats_cluster.urls) == 3
    seqs, refused, stored = asyncio.run(_publish_and_kill(nats_cluster))
    assert refused == 10071  # wrong last sequence: the second writer at sequence 0 is refused
    assert seqs == [1, 2, 3, 4]
    assert stored == 4
    assert not nats_cluster.servers[0].running()
