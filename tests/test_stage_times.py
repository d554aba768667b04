"""edge/stage_times.py: per-stage thread CPU of Decide for benchmarks, off unless EDGEWISE_STAGE_TIMES is set.

The counters per thread, their sums and the file a worker writes; and a real servicer behind a real gRPC
server in this process (port 0) with the counters on: every stage of a Decide that queues exposures is
charged, the calls are counted, and the answers are those of the same servicer with the counters off.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edgewise.core.activity import ActivityLimits
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store
from edgewise.edge.group_commit import GroupCommitter
from edgewise.edge.server import build_server
from edgewise.edge.servicer import PersonalizerServicer
from edgewise.edge.stage_times import ENV, STAGES, StageTimes, now_ns, stage_times_from_env
from edgewise.sync.bundle import load_bundle
from edgewise.sync.snapshot import apply_bundle
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc


def test_each_thread_adds_to_its_own_counters_and_totals_sum_them(tmp_path: Path) -> None:
    stages = StageTimes(tmp_path / "stages.json")

    def work() -> None:
        for _ in range(1000):
            t = now_ns()
            sum(range(100))
            stages.add(STAGES.index("pipeline"), t)
            stages.slots()[len(STAGES)] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals = stages.totals()
    assert totals["calls"] == 4000  # no update lost: every thread has its own counters
    assert totals["pipeline"] > 0
    assert all(totals[s] == 0 for s in STAGES if s != "pipeline")
    stages.write()
    written = json.loads((tmp_path / "stages.json").read_text())
    assert len(written.pop("gc_collections")) == 3  # bench.transport: collections by generation
    assert written.pop("threads")[str(threading.get_native_id())] == threading.current_thread().name
    assert written == totals


def test_off_unless_the_environment_names_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert stage_times_from_env() is None
    monkeypatch.setenv(ENV, str(tmp_path / "d"))
    stages = stage_times_from_env()
    assert stages is not None
    assert stages.path.parent == tmp_path / "d" and stages.path.name.startswith("stages-")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[Store]:
    store = Store(tmp_path_factory.mktemp("store"), map_size=1 << 30)
    apply_bundle(store, load_bundle(bundle_dir))
    yield store
    store.close()


def _serve(store: Store, stages: StageTimes | None) -> tuple[grpc.Server, int, GroupCommitter]:
    committer = GroupCommitter(store, ActivityLimits(), stages=stages, exposure_flush_s=0.01)
    servicer = PersonalizerServicer(store, Pipeline(), committer=committer, stages=stages)
    edge = build_server(servicer, "127.0.0.1:0", threads=2, stages=stages)
    edge.server.start()
    return edge.server, edge.port, committer


def _requests(bundle_dir: Path) -> list[pb.DecideRequest]:
    users = [json.loads(line)["id"] for line in (bundle_dir / "profiles.jsonl").read_text().splitlines()]
    return [
        pb.DecideRequest(
            user_id=u,
            consent=["personalization", "analytics"],
            context=pb.Context(country="DE"),
            placements=[
                pb.PlacementRequest(placement_id=p, count=5) for p in ("home", "pdp_similar", "hero_banner")
            ],
        )
        for u in users[:10]
    ]


def _answers(store: Store, stages: StageTimes | None, requests: list[pb.DecideRequest]) -> list[bytes]:
    server, port, committer = _serve(store, stages)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PersonalizerStub(channel)
            out = []
            for request in requests:
                response: pb.DecideResponse = stub.Decide(request, timeout=5)
                response.decision_id = ""
                out.append(response.SerializeToString())
        time.sleep(0.05)  # the committer commits the exposures
    finally:
        server.stop(0).wait()
        committer.close()
    return out


def test_a_decide_charges_every_stage_and_answers_the_same(
    store: Store, bundle_dir: Path, tmp_path: Path
) -> None:
    requests = _requests(bundle_dir)
    stages = StageTimes(tmp_path / "stages.json")
    timed = _answers(store, stages, requests)
    assert timed == _answers(store, None, requests)
    totals = stages.totals()
    assert totals["calls"] == len(requests)
    charged = {s for s in STAGES if totals[s] > 0}
    # servicer_other may round to nothing; Decide's bytes are written by the servicer (response), so gRPC
    # serializes nothing
    assert charged >= set(STAGES) - {"servicer_other", "serialize"}
