"""Edge housekeeping benchmark: what one `Store.sweep` step costs (the write lock Track commits wait for).

Run from the repository root:

    python -m bench.housekeeping            # about 20 s
    python -m bench.housekeeping --quick    # a few seconds, for a smoke test
    python -m bench.housekeeping --json     # machine-readable output

A real LMDB store in a temp dir gets N event ids (Track calls of 50 events, each a view by its own
visitor, so also N live activities), recorded 100 hours before "now". Then, with a 72 h dedupe window
and the default TTLs (every id and every activity has aged out), steps are timed as the edge's
supervisor runs them:

- ids: `max_ids` expired ids deleted per step, no activities read;
- activities: `max_keys` activities read (and deleted) per step, no ids due;
- kept: the same walk an hour after the events, when every activity is kept (the usual pass), and
  the same again noting each one's age and size (`activity_ages`, as housekeeping does once live
  activity is past half of `track.activity_max_mb`);
- idle: a step when nothing is due and the activity walk rests (the first-key check of the ids);
- outbox: `max_outbox` of the oldest outbox entries deleted per step (the events went to the outbox
  too: they carry the analytics purpose), as when the outbox is over `data.outbox_max_mb`;
- record: `record_events` per event (50 per call, each call one commit with fsync), for scale.

Medians of the steps; one step holds the store's write lock for its whole duration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from edgewise.core.activity import ActivityLimits, Event
from edgewise.core.store import Store

__all__ = ["main", "run"]

HOUR: Final = 3_600_000
NOW: Final = 10_000 * HOUR
WINDOW: Final = 72 * HOUR
PER_CALL: Final = 50


def _ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 2)


def _walk(store: Store, now_ms: int, limits: ActivityLimits, size: int, ages: bool) -> list[float]:
    """One pass over the activities in steps of `size` keys: each step's seconds (the last, partial
    step left out)."""
    steps: list[float] = []
    after = b""
    while True:
        t0 = time.perf_counter()
        result = store.sweep(
            now_ms, WINDOW, limits, after_activity=after, max_keys=size, max_ids=0, activity_ages=ages
        )
        if not result.next_activity_key:
            return steps
        steps.append(time.perf_counter() - t0)
        after = result.next_activity_key


def run(n: int, step_sizes: Sequence[int]) -> dict[str, Any]:
    limits = ActivityLimits()
    with tempfile.TemporaryDirectory(prefix="edgewise-bench-housekeeping-") as tmp:
        rows: list[dict[str, Any]] = []
        record_us = 0.0
        for size in step_sizes:
            with Store(Path(tmp) / f"s{size}", map_size=4 << 30) as store:
                events = [
                    Event(f"e{j}", "view", f"u{j}", "", f"i{j % 500}", "", "", 0.0, NOW - 100 * HOUR)
                    for j in range(n)
                ]
                started = time.perf_counter()
                for start in range(0, n, PER_CALL):
                    store.record_events(events[start : start + PER_CALL], limits, now_ms=NOW - 100 * HOUR)
                record_us = (time.perf_counter() - started) / n * 1e6
                ids: list[float] = []
                while True:
                    t0 = time.perf_counter()
                    result = store.sweep(NOW, WINDOW, limits, max_keys=0, max_ids=size)
                    if result.event_ids < size:
                        break
                    ids.append(time.perf_counter() - t0)
                kept = [_walk(store, NOW - 99 * HOUR, limits, size, ages) for ages in (False, True)]
                activities = _walk(store, NOW, limits, size, ages=False)  # every activity has aged out
                idle: list[float] = []
                for _ in range(200):
                    t0 = time.perf_counter()
                    store.sweep(NOW, WINDOW, limits, max_keys=0)
                    idle.append(time.perf_counter() - t0)
                outbox: list[float] = []
                while True:  # a limit of 1 byte: every entry is over it
                    t0 = time.perf_counter()
                    result = store.sweep(
                        NOW, WINDOW, limits, max_keys=0, max_ids=0, outbox_max_bytes=1, max_outbox=size
                    )
                    if result.outbox_dropped < size:
                        break
                    outbox.append(time.perf_counter() - t0)
            rows.append(
                {
                    "keys_per_step": size,
                    "ids_step_ms": _ms(ids),
                    "activities_step_ms": _ms(activities),
                    "kept_step_ms": _ms(kept[0]),
                    "kept_ages_step_ms": _ms(kept[1]),
                    "idle_step_ms": _ms(idle),
                    "outbox_step_ms": _ms(outbox),
                    "steps": [len(ids), len(activities), len(outbox)],
                }
            )
    return {"events": n, "record_us_per_event": round(record_us, 1), "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.housekeeping", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not figures")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run(5_000 if args.quick else 100_000, (1_000,) if args.quick else (1_000, 10_000))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['events']:,} event ids and activities, all aged out; record_events "
        f"{result['record_us_per_event']} us per event ({PER_CALL} per call)"
    )
    print(
        f"{'keys per step':>14} {'ids step ms':>12} {'activities step ms':>19} {'kept step ms':>13} "
        f"{'kept+ages step ms':>18} {'idle step ms':>13} {'outbox step ms':>15}"
    )
    for row in result["rows"]:
        print(
            f"{row['keys_per_step']:>14,} {row['ids_step_ms']:>12} {row['activities_step_ms']:>19} "
            f"{row['kept_step_ms']:>13} {row['kept_ages_step_ms']:>18} {row['idle_step_ms']:>13} "
            f"{row['outbox_step_ms']:>15}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
