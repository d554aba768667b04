"""Control-plane operations benchmark: what a forget costs as the change log grows, and how long the
bandit learner takes to resume over stored records.

Run from the repository root:

    python -m bench.control            # about 30 s: logs of 100,000 and 1,000,000 profile changes
    python -m bench.control --quick    # a few seconds, for a smoke test
    python -m bench.control --json     # machine-readable output

Forget: a real `ControlStore` in a temp dir gets a change log of N profile upserts (commits of 20,000,
one profile each, so the log holds every one), then 20 users are forgotten one at a time; each
`forget` is timed (its write transaction, redaction of the user's logged values and the commit
included). Also reported: the changes in each forget commit.

Event store forget: an `EventStore` with R records (bandit exposures and a click for every tenth,
ingested 20,000 at a time with their user ids, as `Forward` passes them), then 20 users forgotten one
at a time (`EventStore.forget`, the control plane's second step of a forget), each timed.

Learner resume: an `EventStore` with R bandit exposures (and a click for every tenth), the learner's
published cursor at the end; timed are building the `BanditLearner` (what the control plane does
before it serves) and its first read (the re-read of up to `REPLAY_RECORDS` records before the
cursor, on the learner's own thread in the control plane), with the process's peak RSS after each.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgpack

from edgewise.core.activity import Event
from edgewise.sync.bandit_learner import CURSOR, BanditLearner
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.sync.event_store import EventStore

__all__ = ["main", "measure_forget", "measure_learner_resume"]

FORGETS: Final = 20
COMMIT_SIZE: Final = 20_000
T0: Final = 1_767_225_600_000  # 2026-01-01 UTC, in ms


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_forget(log_changes: int, root: Path) -> dict[str, Any]:
    """Median and max time of FORGETS forgets over a log of `log_changes` profile upserts."""
    value = msgpack.packb({"attributes": {"country": "DE", "ltv": 120.5}, "consent": ["personalization"]})
    with ControlStore(root / f"forget-{log_changes}", map_size=16 << 30) as store:
        started = time.perf_counter()
        for start in range(0, log_changes, COMMIT_SIZE):
            stop = min(start + COMMIT_SIZE, log_changes)
            store.commit([RecordChange("profiles", f"u{n}", value) for n in range(start, stop)], kind="delta")
        write_s = time.perf_counter() - started
        step = max(1, log_changes // FORGETS)
        times: list[float] = []
        changes: list[int] = []
        for n in range(0, step * FORGETS, step):
            t0 = time.perf_counter()
            info = store.forget(f"u{n}")
            times.append(time.perf_counter() - t0)
            changes.append(info.changes if info is not None else 0)
    return {
        "log_changes": log_changes,
        "write_seconds": round(write_s, 2),
        "forget_ms_median": round(statistics.median(times) * 1000, 2),
        "forget_ms_max": round(max(times) * 1000, 2),
        "changes_per_forget": sorted(set(changes)),
    }


def _records(exposures: int) -> list[tuple[str, str, bytes]]:
    out: list[tuple[str, str, bytes]] = []
    for n in range(exposures):
        record: dict[str, Any] = {
            "k": "exposure",
            "id": f"d{n}:promo_slot",
            "d": f"d{n}",
            "u": f"u{n}",
            "s": "",
            "p": "promo_slot",
            "c": "promo",
            "x": "promo",
            "v": "ship" if n % 3 else "ten",
            "pr": 0.5,
            "st": "bandit",
            "f": 0,
            "i": [],
            "ct": "promo",
            "ts": T0 + n * 1_000,
            "bs": "",
        }
        out.append(("exposure", str(record["id"]), msgpack.packb(record, use_bin_type=True)))
        if n % 10 == 0:
            click = Event(f"c{n}", "click", f"u{n}", "", "", f"d{n}", "promo_slot", 0.0, T0 + n * 1_000 + 9)
            out.append(("event", click.event_id, click.encode()))
    return out


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def measure_event_forget(exposures: int, root: Path) -> dict[str, Any]:
    """Ingest `exposures` exposures (+10% clicks), then time FORGETS `EventStore.forget` calls."""
    with EventStore(root / f"event-forget-{exposures}", map_size=4 << 30) as events:
        records = _records(exposures)
        users = [str(msgpack.unpackb(payload)["u"]) for _, _, payload in records]
        started = time.perf_counter()
        for start in range(0, len(records), COMMIT_SIZE):
            stop = start + COMMIT_SIZE
            events.ingest("edge-a", records[start:stop], users[start:stop])
        ingest_s = time.perf_counter() - started
        step = max(1, exposures // FORGETS)
        times: list[float] = []
        removed: list[int] = []
        for n in range(0, step * FORGETS, step):
            t0 = time.perf_counter()
            removed.append(events.forget(f"u{n}"))
            times.append(time.perf_counter() - t0)
        return {
            "stored_records": events.count() + sum(removed),
            "ingest_records_per_s": round(len(records) / ingest_s),
            "forget_ms_median": round(statistics.median(times) * 1000, 2),
            "forget_ms_max": round(max(times) * 1000, 2),
            "records_per_forget": sorted(set(removed)),
        }


def measure_learner_resume(exposures: int, root: Path) -> dict[str, Any]:
    """Build a learner over `exposures` stored exposures (+10% clicks) with its cursor at the end."""
    store = ControlStore(root / f"learner-{exposures}", map_size=4 << 30)
    events = EventStore(root / f"events-{exposures}", map_size=4 << 30)
    try:
        records = _records(exposures)
        for start in range(0, len(records), COMMIT_SIZE):
            events.ingest("edge-a", records[start : start + COMMIT_SIZE])
        stored = events.count()
        store.commit_at([], kind="delta", cursor=CURSOR, position=stored)
        rss0 = _peak_rss_mib()
        t0 = time.perf_counter()
        learner = BanditLearner(store, events, _NoLock(), lambda: None)
        built = time.perf_counter() - t0
        rss1 = _peak_rss_mib()
        t1 = time.perf_counter()
        learner.read_once()
        first_read = time.perf_counter() - t1
        return {
            "stored_records": stored,
            "build_seconds": round(built, 3),
            "first_read_seconds": round(first_read, 2),
            "peak_rss_mib": [round(rss0), round(rss1), round(_peak_rss_mib())],
        }
    finally:
        events.close()
        store.close()


def run(log_sizes: Sequence[int], exposures: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgewise-bench-control-") as tmp:
        root = Path(tmp)
        forget = []
        for size in log_sizes:
            print(f"[bench.control] forget over a log of {size:,} changes", file=sys.stderr)
            forget.append(measure_forget(size, root))
        print(f"[bench.control] event store forget over {exposures:,} exposures", file=sys.stderr)
        event_forget = measure_event_forget(exposures, root)
        print(f"[bench.control] learner resume over {exposures:,} exposures", file=sys.stderr)
        learner = measure_learner_resume(exposures, root)
    return {"forget": forget, "event_forget": event_forget, "learner_resume": learner}


def _print(result: dict[str, Any]) -> None:
    print("forget (20 users, one at a time)")
    print(f"{'log changes':>12} {'write s':>8} {'median ms':>10} {'max ms':>8}  changes per forget")
    for row in result["forget"]:
        print(
            f"{row['log_changes']:>12,} {row['write_seconds']:>8} {row['forget_ms_median']:>10} "
            f"{row['forget_ms_max']:>8}  {row['changes_per_forget']}"
        )
    e = result["event_forget"]
    print()
    print(
        f"event store over {e['stored_records']:,} records (ingested at {e['ingest_records_per_s']:,}/s): "
        f"forget median {e['forget_ms_median']} ms, max {e['forget_ms_max']} ms, "
        f"records per forget {e['records_per_forget']}"
    )
    r = result["learner_resume"]
    print()
    print(
        f"learner over {r['stored_records']:,} stored records: built in {r['build_seconds']} s, "
        f"first read (the re-read) {r['first_read_seconds']} s; peak RSS before / built / after the "
        f"first read {r['peak_rss_mib'][0]} / {r['peak_rss_mib'][1]} / {r['peak_rss_mib'][2]} MiB"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.control", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not figures")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    sizes = (20_000,) if args.quick else (100_000, 1_000_000)
    result = run(sizes, 5_000 if args.quick else 200_000)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
