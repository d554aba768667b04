"""How long a worker's Track write waits for the edge syncer's write transaction of a 100k-profile commit,
with that transaction on the lowered syncer thread (as before sync/commit_writer.py) or on the writer
thread at the process's priority (now): the priority inversion, isolated.

    python -m bench.track_wait            # about a minute; --rounds N (default 3 of each), --json

One LMDB store in a temporary directory, as the edge's: the supervisor's syncer is a thread of this
process, lowered as the syncer lowers itself (nice +10, lowest best-effort I/O level), which applies a
commit upserting 100,000 profiles with new 32-dim embeddings (`apply_replicated`, one write transaction);
the workers are `--busy` processes started by this one (same session, so nice orders them: the kernel's
autogroup is per session) that spin, as workers under load do, plus one tracker process that calls
`Store.record_events` (Track's durable write: one event per call) every 5 ms and times each call. Rounds
alternate the two modes; per round: the apply's wall time and the tracker calls that overlapped it
(count, p50, p99, max). Bounded: every process ends with the round.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

from edgewise.core.records import ProfileRecord, encode_profile
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Store
from edgewise.sync.commit_writer import CommitWriter
from edgewise.sync.edge_sync import SYNC_NICE
from edgewise.sync.thread_priority import lower_cpu_priority, lower_io_priority

USERS: Final = 100_000
LEAD_S: Final = 1.0  # the tracker and the spinners run this long before the apply starts
TAIL_S: Final = 0.5

_SPIN = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""
_TRACK = """
import json, os, sys, time
from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.store import Store
path, seconds, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3]
out = []
with Store(path) as store:
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end and not os.path.exists(stop):
        now = int(time.time() * 1000)
        event = Event(f"t{time.time_ns()}-{i}", "view", f"u{i % 1000}", "", "i1", "", "", 0.0, now)
        t0 = time.time()
        store.record_events([event], ActivityLimits())
        out.append((t0, time.time() - t0))
        i += 1
        time.sleep(0.005)
print(json.dumps(out))
"""


def _commit(seed: int) -> list[tuple[str, bytes, bytes | None]]:
    rng = random.Random(seed)
    changes: list[tuple[str, bytes, bytes | None]] = []
    for i in range(USERS):
        embedding = struct.pack("<32f", *(rng.random() for _ in range(32)))
        record = ProfileRecord(f"u{i}", 1, {"seed": seed}, {"p": 1}, embedding)
        changes.append(("profiles", record.id.encode(), encode_profile(record)))
    return changes


def _round(store: Store, writer: CommitWriter, mode: str, version: int, busy: int) -> dict[str, Any]:
    changes = _commit(version)
    duration = LEAD_S + 15.0
    spinners = [subprocess.Popen([sys.executable, "-c", _SPIN, str(duration)]) for _ in range(busy)]
    stop = Path(store.path).parent / f"stop-{version}"
    tracker = subprocess.Popen(
        [sys.executable, "-c", _TRACK, str(store.path), str(duration), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    window: list[float] = []

    def apply() -> None:  # the syncer thread: lowered for its life, as EdgeSyncer._run
        lower_cpu_priority(SYNC_NICE)
        lower_io_priority()
        info = SnapshotInfo(version=version)

        def write() -> bool:
            return store.apply_replicated(version, changes, snapshot=False, info=info)

        t0 = time.time()
        if mode == "writer":
            writer.call(write)
        else:
            write()
        window.extend((t0, time.time()))

    time.sleep(LEAD_S)
    thread = threading.Thread(target=apply)
    thread.start()
    thread.join()
    time.sleep(TAIL_S)
    stop.touch()  # the tracker ends its loop and prints its calls
    out, _ = tracker.communicate(timeout=60)
    for p in spinners:
        p.kill()
        p.wait()
    calls = json.loads(out) if out.strip() else []
    return {"mode": mode, "apply_s": window[1] - window[0], "window": window, "calls": calls}


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """The Track calls that overlapped the apply: how long each took."""
    start, end = row["window"]
    waits = [w for t0, w in row["calls"] if t0 + w >= start and t0 <= end]
    waits.sort()

    def q(p: float) -> float:
        return round(waits[min(len(waits) - 1, int(p * len(waits)))] * 1000, 1) if waits else 0.0

    return {
        "mode": row["mode"],
        "apply_ms": round(row["apply_s"] * 1000, 1),
        "track_calls": len(waits),
        "track_p50_ms": q(0.5),
        "track_p99_ms": q(0.99),
        "track_max_ms": round(max(waits) * 1000, 1) if waits else 0.0,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.track_wait", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each mode (default 3)")
    parser.add_argument("--busy", type=int, default=2, help="spinning worker processes (default 2)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="edgewise-track-wait-") as tmp,
        Store(Path(tmp) / "edge") as store,
    ):
        store.apply_replicated(1, _commit(1), snapshot=True, info=SnapshotInfo(version=1))
        writer = CommitWriter()
        writer.start()
        try:
            version = 1
            for r in range(args.rounds):
                for mode in ("lowered", "writer") if r % 2 == 0 else ("writer", "lowered"):
                    version += 1
                    row = _summary(_round(store, writer, mode, version, args.busy))
                    print(f"[bench.track_wait] round {r} {json.dumps(row)}", file=sys.stderr, flush=True)
                    results.append(row)
        finally:
            writer.stop()
    medians = {
        mode: {
            k: statistics.median(r[k] for r in results if r["mode"] == mode)
            for k in ("apply_ms", "track_p50_ms", "track_p99_ms", "track_max_ms")
        }
        for mode in ("lowered", "writer")
    }
    report = {"rounds": results, "medians": medians, "busy": args.busy, "users": USERS}
    print(json.dumps(report, indent=2) if args.json else json.dumps(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
