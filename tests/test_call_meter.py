"""edge/server.py's call meter on a real gRPC server in this process (port 0): every Decide and Track
call counted by the code its caller got and timed from its arrival, whatever the servicer did.

A stand-in servicer (sleeps, aborts, raises) drives the cases a real node reaches only under load; the
node-level tests are in tests/test_edge_rpc.py (issue 16, items 8 and 10).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edgewise.edge.metrics import STATUS_CODES, MetricsLayout, NodeMetrics, NodeReading, WorkerMetrics
from edgewise.edge.server import EdgeServer, build_server
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc


class StandIn(pb_grpc.PersonalizerServicer):
    """Decide does what the request's session id says; Track answers at once."""

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:
        what, _, arg = request.session_id.partition(":")
        if what == "sleep":
            time.sleep(float(arg))
        elif what == "abort":
            context.abort(grpc.StatusCode[arg], "as asked")
        elif what == "raise":
            raise RuntimeError("a bug")
        return pb.DecideResponse(snapshot_version=1)

    def Track(self, request: pb.TrackRequest, context: grpc.ServicerContext) -> pb.TrackResponse:
        return pb.TrackResponse(accepted=len(request.events))


Served = tuple[EdgeServer, grpc.Channel, NodeMetrics]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    node = NodeMetrics(tmp_path / "run", MetricsLayout())
    with WorkerMetrics(node.worker_path(0), MetricsLayout()) as metrics:
        edge = build_server(
            StandIn(),  # type: ignore[arg-type]
            "127.0.0.1:0",
            threads=1,
            max_concurrent_rpcs=4,
            max_message_bytes=64 << 10,
            metrics=metrics,
        )
        edge.server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
                yield edge, channel, node
        finally:
            edge.server.stop(0).wait()


def decide(channel: grpc.Channel, session: str, timeout: float = 5) -> str:
    request = pb.DecideRequest(session_id=session)
    try:
        pb_grpc.PersonalizerStub(channel).Decide(request, timeout=timeout)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


def counted(reading: NodeReading, rpc: str = "Decide") -> dict[str, int]:
    return {c: int(reading.count("rpc", rpc, c)) for c in STATUS_CODES if reading.count("rpc", rpc, c)}


def test_answers_and_failures_are_counted_by_their_code(served: Served) -> None:
    _, channel, node = served
    seen = [decide(channel, s) for s in ("ok", "abort:NOT_FOUND", "abort:INVALID_ARGUMENT", "raise:")]
    assert seen == ["OK", "NOT_FOUND", "INVALID_ARGUMENT", "UNKNOWN"]
    pb_grpc.PersonalizerStub(channel).Track(pb.TrackRequest(events=[pb.Event()]), timeout=5)
    reading = node.read()
    assert counted(reading) == {"OK": 1, "NOT_FOUND": 1, "INVALID_ARGUMENT": 1, "UNKNOWN": 1}
    assert counted(reading, "Track") == {"OK": 1}
    # Health checks and reflection are not Personalizer calls: not counted.
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert node.read().totals == reading.totals


def test_a_caller_gone_before_the_answer_counts_as_what_it_got(served: Served) -> None:
    # The handler answers after the caller's deadline: the caller got DEADLINE_EXCEEDED, not OK.
    _, channel, node = served
    assert decide(channel, "sleep:0.4", timeout=0.1) == "DEADLINE_EXCEEDED"
    time.sleep(0.5)
    reading = node.read()
    assert counted(reading) == {"DEADLINE_EXCEEDED": 1}
    assert reading.count("sum", "Decide") >= 0.35  # timed until the handler returned


def test_a_deadline_that_passes_in_the_queue_is_counted_with_the_wait(served: Served) -> None:
    # One handler thread, busy for 0.5 s: the next call's 0.2 s deadline passes while it waits for it.
    _, channel, node = served
    busy = threading.Thread(target=decide, args=(channel, "sleep:0.5"))
    busy.start()
    time.sleep(0.1)
    assert decide(channel, "ok", timeout=0.2) == "DEADLINE_EXCEEDED"
    busy.join()
    time.sleep(0.2)
    reading = node.read()
    assert counted(reading) == {"OK": 1, "DEADLINE_EXCEEDED": 1}
    assert reading.count("sum", "Decide") >= 0.5 + 0.35  # the queued call: from its arrival


def test_shed_oversize_and_undecodable_calls_are_counted(served: Served) -> None:
    _, channel, node = served
    # Four calls admitted at once (one running, three queued): more are shed.
    sleepers = [threading.Thread(target=decide, args=(channel, "sleep:0.3")) for _ in range(4)]
    for t in sleepers:
        t.start()
    time.sleep(0.1)
    shed = [decide(channel, "ok") for _ in range(3)]
    for t in sleepers:
        t.join()
    assert shed == ["RESOURCE_EXHAUSTED"] * 3
    big = decide(channel, "s" * (100 << 10))  # over the 64 KiB max_message_bytes
    junk = channel.unary_unary("/edgewise.v1.Personalizer/Decide")
    with pytest.raises(grpc.RpcError) as err:
        junk(b"\xff\xff\xff", timeout=5)
    assert big == "RESOURCE_EXHAUSTED" and err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    time.sleep(0.2)
    reading = node.read()
    assert counted(reading) == {"OK": 4, "RESOURCE_EXHAUSTED": 4, "INVALID_ARGUMENT": 1}
    assert reading.count("shed") == 3
