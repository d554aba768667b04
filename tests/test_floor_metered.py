"""`edgewise bench floor-server --metered`: the floor behind the edge's call meter (issue 17's transport
measurement, bench/transport.py), and the threads and GC counts its stage file carries."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import process_group

from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc


@pytest.mark.slow
def test_a_metered_floor_answers_like_the_floor_and_its_meter_refuses_undecodable_bytes(
    tmp_path: Path,
) -> None:
    args = ["bench", "floor-server", "--listen", "127.0.0.1:0", "--workers", "1", "--grace", "1", "--metered"]
    stages = tmp_path / "stages"
    with process_group(tmp_path / "procs") as processes:
        server = processes.serve("floor", args, env={"EDGEWISE_STAGE_TIMES": str(stages)}, timeout=30)
        ready = server.wait_ready()
        with grpc.insecure_channel(str(ready["address"])) as channel:
            decided = pb_grpc.PersonalizerStub(channel).Decide(pb.DecideRequest(user_id="u1"), timeout=5)
            assert len(decided.decision_id) == 32
            raw = channel.unary_unary("/edgewise.v1.Personalizer/Decide")
            with pytest.raises(grpc.RpcError) as refused:
                raw(b"\xff\xff\xff", timeout=5)  # not a DecideRequest: the meter's lenient decoder
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        deadline = time.monotonic() + 10
        written = _written(stages)
        while not any(name.startswith("rpc") for name in written.get("threads", {}).values()):
            assert time.monotonic() < deadline, f"no handler thread in the stage file: {written}"
            time.sleep(0.1)
            written = _written(stages)
        assert len(written["gc_collections"]) == 3
        server.stop(signal.SIGTERM, grace=20)


def _written(stages: Path) -> dict[str, Any]:
    """The worker's stage file, or {} before it is written."""
    for path in stages.glob("stages-*.json"):
        values: dict[str, Any] = json.loads(path.read_text())
        return values
    return {}
