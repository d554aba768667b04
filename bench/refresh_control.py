"""Where a paced embeddings refresh costs CPU, phase by phase, in one process: the control plane's
training, plan, each staging commit (its changes, the commit), the encoding of each commit for the
edges' Subscribe streams, the flip; and the edge supervisor's share of one staging commit (assembly,
check, the write transaction).

    python -m bench.refresh_control              # the 100k-user x 10k-item bundle bench.pipeline caches
    python -m bench.refresh_control --quick      # 20k users x 10k items
    python -m bench.refresh_control --profile    # and cProfile's top functions of the staging commits

What bench.refresh does to the control plane in one refresh round, without processes or a load: a
control store holding the bundle (as a push of it leaves it), 20,000 item events stored (bench.refresh's
`_item_events`), then `sync/embedding_refresh.py`'s steps as `EmbeddingRefreshJob.run_once` makes
them, each timed by this thread's CPU clock and by the wall clock: `train_refresh` (ALS by default),
`plan_staging`, then per batch of `--commit-profiles` users `staging_changes` and `commit_at`, the
commit read back from the log and encoded as the Subscribe stream sends it (`CommitCache.encoded`), and
the flip. The edge's share: one staging commit's messages serialized, parsed, assembled, checked and
applied to an edge store (`Store.apply_replicated`). "cpu" is this thread's CPU time, "process cpu"
every thread's (numpy's BLAS workers too). Nothing here runs beside a load: BENCHMARKS.md,
"Model refresh applied during Decide", has the figures with Decide running (python -m bench.refresh).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from edgewise.bench.pipeline import prepare_bundle
from edgewise.bench.refresh import _item_events
from edgewise.core.embedding_training import TrainingSettings
from edgewise.core.profile_check import check_profiles
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Store
from edgewise.sync.changes import bundle_records
from edgewise.sync.commit_cache import CommitCache
from edgewise.sync.control_store import ControlStore
from edgewise.sync.embedding_refresh import (
    EmbeddingRefreshSettings,
    flip_changes,
    plan_staging,
    staging_changes,
    train_refresh,
)
from edgewise.sync.event_store import EventStore
from edgewise.sync.shard import Shard
from edgewise.sync.wire import Assembler
from edgewise.v1 import sync_pb2

T = TypeVar("T")


def _cpu_s() -> float:
    return time.thread_time()  # CLOCK_THREAD_CPUTIME_ID: ns, not the scheduler's ticks


class _Phases:
    """CPU and wall seconds per named phase, summed over its calls."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[float]] = {}
        self.process: dict[str, list[float]] = {}  # every thread's: BLAS's workers too
        self.wall: dict[str, list[float]] = {}

    def timed(self, name: str, fn: Callable[[], T]) -> T:
        c, p, w = _cpu_s(), time.process_time(), time.perf_counter()
        out = fn()
        self.wall.setdefault(name, []).append(time.perf_counter() - w)
        self.cpu.setdefault(name, []).append(_cpu_s() - c)
        self.process.setdefault(name, []).append(time.process_time() - p)
        return out

    def table(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "calls": len(cpu),
                "cpu_ms": round(1000 * sum(cpu), 1),
                "process_cpu_ms": round(1000 * sum(self.process[name]), 1),
                "wall_ms": round(1000 * sum(self.wall[name]), 1),
                "cpu_ms_median": round(1000 * statistics.median(cpu), 2),
            }
            for name, cpu in self.cpu.items()
        }


def run(quick: bool, commit_profiles: int, method: str, profile: bool) -> dict[str, Any]:
    users_n, items_n = (20_000, 10_000) if quick else (100_000, 10_000)
    bundle, _, _ = prepare_bundle(None, users_n, items_n, 7)
    phases = _Phases()
    profiler = cProfile.Profile() if profile else None
    with tempfile.TemporaryDirectory(prefix="edgewise-refresh-control-") as tmp:
        root = Path(tmp)
        with ControlStore(root / "control") as store, EventStore(root / "events") as events:
            phases.timed(
                "load the bundle (not in a round)",
                lambda: store.replace_all(bundle_records(bundle), kind="push", description="bench"),
            )
            with open(Path(bundle.path) / "profiles.jsonl") as f:
                user_ids = [str(json.loads(line)["id"]) for line in f]
            with open(Path(bundle.path) / "items.jsonl") as f:
                item_ids = [str(json.loads(line)["id"]) for line in f]
            gc.collect()  # the bundle's objects stay alive here (not in a control plane): out of the
            gc.freeze()  # collector's way, so a full collection does not land in one phase at random
            events.ingest("bench", _item_events(item_ids, random.Random(0).sample(user_ids, 5000), "r0", 0))
            settings = EmbeddingRefreshSettings(training=TrainingSettings(method=method))
            with store.read() as view:
                trained = phases.timed("train_refresh", lambda: train_refresh(view, events, settings))
            if trained is None:
                raise SystemExit("nothing trained")
            with store.read() as view:
                plan = phases.timed("plan_staging", lambda: plan_staging(view, trained))
            cache = CommitCache(store, budget_bytes=256 << 20)
            shard = Shard()  # an edge following everything
            first_messages: list[sync_pb2.SyncMessage] = []
            for users in plan.batches(commit_profiles):
                with store.read() as view:
                    if profiler is not None:
                        profiler.enable()
                    changes = phases.timed(
                        "staging_changes",
                        lambda: staging_changes(view, trained, plan, users),  # noqa: B023
                    )
                    if profiler is not None:
                        profiler.disable()
                info = phases.timed(
                    "commit_at (staging)",
                    lambda: store.commit_at(changes, kind="refresh", description="staging"),  # noqa: B023
                )
                if info is None:
                    continue
                logged = phases.timed(
                    "read the commit back from the log",
                    lambda: next(store.commits_after(info.base_version)),  # noqa: B023
                )
                messages = phases.timed(
                    "encode for Subscribe (CommitCache.encoded)",
                    lambda: cache.encoded(logged[0], logged[1], shard),  # noqa: B023
                )
                if not first_messages:
                    first_messages = messages
            with store.read() as view:
                flip = phases.timed("flip_changes", lambda: flip_changes(view, trained, plan))
            phases.timed(
                "commit_at (flip)", lambda: store.commit_at(flip, kind="refresh", description="flip")
            )
        edge = _edge_share(first_messages, root / "edge")
    report: dict[str, Any] = {
        "users": users_n,
        "items": items_n,
        "method": method,
        "commit_profiles": commit_profiles,
        "staging_commits": len(plan.batches(commit_profiles)),
        "trained_users": len(trained.user_vectors),
        "events": trained.events,
        "control_plane": phases.table(),
        "edge_one_staging_commit": edge,
    }
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        report["profile_staging_changes"] = out.getvalue()
    return report


def _edge_share(messages: list[sync_pb2.SyncMessage], path: Path) -> dict[str, dict[str, float]]:
    phases = _Phases()
    wire = phases.timed("serialize (control plane)", lambda: [m.SerializeToString() for m in messages])
    parsed = phases.timed("parse", lambda: [sync_pb2.SyncMessage.FromString(w) for w in wire])

    def assemble() -> list[tuple[str, bytes, bytes | None]]:
        assembler = Assembler()
        for message in parsed[:-1]:
            assembler.add(message.chunk)
        return assembler.finish(parsed[-1].commit)

    assembled = phases.timed("Assembler", assemble)
    phases.timed("check_profiles", lambda: check_profiles(assembled))
    with Store(path) as store:
        store.apply_replicated(1, [], snapshot=True, info=SnapshotInfo(version=1))
        phases.timed(
            "apply_replicated",
            lambda: store.apply_replicated(2, assembled, snapshot=False, info=SnapshotInfo(version=2)),
        )
    return phases.table()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.refresh_control", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="20k users instead of 100k")
    parser.add_argument("--commit-profiles", type=int, default=5000, help="profiles per staging commit")
    parser.add_argument("--method", default="als", help="training method (default als)")
    parser.add_argument("--profile", action="store_true", help="cProfile the staging commits' changes")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    report = run(args.quick, args.commit_profiles, args.method, args.profile)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{report['users']} users x {report['items']} items, {report['method']} on {report['events']} "
        f"events ({report['trained_users']} users trained), {report['staging_commits']} staging commits "
        f"of {report['commit_profiles']}"
    )
    for title, table in (
        ("control plane", report["control_plane"]),
        ("edge", report["edge_one_staging_commit"]),
    ):
        print(f"-- {title}")
        for name, t in table.items():
            print(
                f"{name:45s} calls {t['calls']:>3}  cpu {t['cpu_ms']:>9} ms  process cpu "
                f"{t['process_cpu_ms']:>9} ms  wall {t['wall_ms']:>9} ms  "
                f"median cpu {t['cpu_ms_median']:>8} ms"
            )
    if "profile_staging_changes" in report:
        print(report["profile_staging_changes"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
