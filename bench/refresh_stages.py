"""Where a commit of 100k profile records costs CPU, stage by stage, in one process: the control plane's
encoding, the wire, the edge syncer's assembly, its check (the old one, unpacking every record, and the
scan that replaced it) and the write transaction with its fsync.

    python -m bench.refresh_stages            # the 100k-user bundle bench.pipeline caches; about 20 s
    python -m bench.refresh_stages --quick    # 20k users

The records are the bundle's profiles, each with a new 32-dim embedding (what bench.refresh pushes as
a delta). Each stage is timed by this thread's CPU clock and by the wall clock, `--repeat` times (the
median is printed). Nothing here runs beside a load: BENCHMARKS.md, "Model refresh applied during
Decide", has the figures with Decide running (python -m bench.refresh).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.bench.pipeline import prepare_bundle
from edgewise.core.profile_check import check_profiles
from edgewise.core.records import ProfileRecord, check_profile, encode_profile
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Store
from edgewise.sync.wire import Assembler, encode_commit
from edgewise.v1 import sync_pb2

Changes = list[tuple[str, bytes, bytes | None]]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, dict[str, float]]:
    cpu: list[float] = []
    wall: list[float] = []
    out: Any = None
    for _ in range(repeat):
        c, w = _cpu_s(), time.perf_counter()
        out = fn()
        wall.append(time.perf_counter() - w)
        cpu.append(_cpu_s() - c)
    return out, {
        "cpu_ms": round(1000 * statistics.median(cpu), 1),
        "wall_ms": round(1000 * statistics.median(wall), 1),
    }


def _records(bundle_path: Path, dim: int) -> Changes:
    rng = np.random.default_rng(1)
    changes: Changes = []
    with open(bundle_path / "profiles.jsonl") as f:
        for line in f:
            doc = json.loads(line)
            embedding = np.round(rng.normal(0, 0.3, dim), 4).astype("<f4").tobytes()
            record = ProfileRecord(doc["id"], 1, doc["attributes"], doc["consent"], embedding)
            changes.append(("profiles", record.id.encode(), encode_profile(record)))
    return changes


def _old_check(changes: Changes) -> None:
    """The check before the scan: every record unpacked by `check_profile`."""
    for namespace, key, value in changes:
        if namespace == "profiles" and value is not None:
            check_profile(key.decode(), value)


def run(quick: bool, repeat: int) -> dict[str, Any]:
    users, items = (20_000, 2_000) if quick else (100_000, 10_000)
    bundle, _, _ = prepare_bundle(None, users, items, 7)
    changes = _records(Path(bundle.path), bundle.dim)
    commit = sync_pb2.Commit(version=2, base_version=1, lineage="bench")
    wire_changes = [(ns, key.decode(), value) for ns, key, value in changes]
    stages: dict[str, dict[str, float]] = {}
    messages, stages["encode_commit (control plane)"] = _timed(
        lambda: list(encode_commit(commit, wire_changes)), repeat
    )
    wire, stages["serialize"] = _timed(lambda: [m.SerializeToString() for m in messages], repeat)
    parsed, stages["parse (edge)"] = _timed(
        lambda: [sync_pb2.SyncMessage.FromString(w) for w in wire], repeat
    )

    def assemble() -> Changes:
        assembler = Assembler()
        for message in parsed[:-1]:
            assembler.add(message.chunk)
        return assembler.finish(parsed[-1].commit)

    assembled, stages["Assembler (digests, changes)"] = _timed(assemble, repeat)
    _, stages["check: check_profile per record (before)"] = _timed(lambda: _old_check(assembled), repeat)
    _, stages["check: check_profiles, the C scan (after)"] = _timed(lambda: check_profiles(assembled), repeat)
    with tempfile.TemporaryDirectory(prefix="edgewise-refresh-stages-") as tmp, Store(tmp) as store:
        store.apply_replicated(1, [], snapshot=True, info=SnapshotInfo(version=1))
        versions = iter(range(2, 2 + repeat))

        def apply() -> None:
            version = next(versions)
            store.apply_replicated(version, assembled, snapshot=False, info=SnapshotInfo(version=version))

        _, stages["apply_replicated (puts, commit, fsync)"] = _timed(apply, repeat)
    return {
        "users": users,
        "records": len(changes),
        "record_bytes": sum(len(v) for _, _, v in changes if v is not None),
        "wire_bytes": sum(len(w) for w in wire),
        "messages": len(wire),
        "repeat": repeat,
        "stages": stages,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.refresh_stages", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="20k users instead of 100k")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each stage (the median is shown)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = run(args.quick, args.repeat)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"{results['records']} profile records, {results['record_bytes']} bytes; {results['messages']} "
        f"messages, {results['wire_bytes']} bytes on the wire; median of {results['repeat']}"
    )
    for stage, t in results["stages"].items():
        print(f"{stage:45s} cpu {t['cpu_ms']:>8} ms   wall {t['wall_ms']:>8} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
