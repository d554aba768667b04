"""Shadow decisions benchmark: what a shadow candidate costs the requests a worker serves (docs/shadow.md).

Run from the repository root:

    python -m bench.shadow            # about a minute
    python -m bench.shadow --quick    # a few seconds, for a smoke test
    python -m bench.shadow --json     # machine-readable output

Setup (not timed): a synthetic bundle applied to a real LMDB store (the node's), and the same bundle
installed as a shadow candidate beside it (sync/shadow_candidate.py): an identical candidate costs what
the served version does. Requests: home + deals for Zipf-distributed known users, with consent.

One request thread calls `PersonalizerServicer.decide` (the servicer's plain entry point: pipeline,
exposure bookkeeping, counters, and the shadow sampling) in rounds, the configurations interleaved:

- `off`: no shadow decider (a standalone node);
- `idle`: a decider without a candidate (a synced node between rollouts): the request path reads one
  attribute;
- `sample 0.1`, `sample 1.0`: the candidate open, that share of requests queued for the worker's shadow
  thread, which decides them meanwhile (it competes with the request thread for the GIL and the CPU).

Per configuration: the request thread's median and p99 wall time per call over all rounds, and the
shadow decisions made and dropped (queue full). Between rounds the shadow queue is drained, so no round
pays for another's samples. `branch`: the sampling check alone, timed with `timeit` (no candidate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from random import random
from typing import Any

import numpy as np

from edgewise.core.decisions import DecideRequest, PlacementRequest
from edgewise.core.pipeline import Pipeline
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Store
from edgewise.edge.metrics import MetricsLayout, NodeMetrics, WorkerMetrics
from edgewise.edge.servicer import PersonalizerServicer
from edgewise.edge.shadow import ShadowDecider
from edgewise.offline.synth import synth_bundle
from edgewise.sync.bundle import load_bundle
from edgewise.sync.changes import bundle_records
from edgewise.sync.shadow_candidate import ShadowCandidates
from edgewise.sync.snapshot import apply_bundle

__all__ = ["main", "run"]

MAP = 1 << 30
CONFIGS = ("off", "idle", "sample 0.1", "sample 1.0")


def _requests(users: int, count: int, seed: int) -> list[DecideRequest]:
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.8, count), users) - 1
    placements = (PlacementRequest("home", 10), PlacementRequest("deals", 6))
    return [
        DecideRequest(
            user_id=f"u{int(r)}",
            consent=frozenset({"personalization"}),
            placements=placements,
            now_ms=1_790_000_000_000,
        )
        for r in ranks
    ]


def _drain(decider: ShadowDecider) -> None:
    deadline = time.monotonic() + 60
    while decider._queue and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.01)  # the last one popped is being decided


def _branch_ns() -> float:
    class Idle:
        sample = 0.0

    shadow = Idle()
    loops = 2_000_000
    seconds = timeit.timeit(
        "shadow is not None and shadow.sample > 0.0 and random() < shadow.sample",
        globals={"shadow": shadow, "random": random},
        number=loops,
    )
    return seconds / loops * 1e9


def run(*, users: int, items: int, rounds: int, per_round: int, seed: int = 7) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgewise-bench-shadow-") as tmp:
        root = Path(tmp)
        bundle_dir = synth_bundle(root / "bundle", users=users, items=items, seed=seed)
        bundle = load_bundle(bundle_dir)
        with Store(root / "data", map_size=MAP) as store:
            apply_bundle(store, bundle)
            changes = [(c.namespace, c.key.encode(), c.value) for c in bundle_records(bundle)]
            candidates = ShadowCandidates(store.path, MAP)
            candidates.install(store.version() + 1, store.version(), 1.0, changes, SnapshotInfo())
            layout = MetricsLayout(["home", "deals"])
            node = NodeMetrics(root / "run", layout)
            metrics = WorkerMetrics(node.worker_path(0), layout)
            decider = ShadowDecider(store.path, MAP, store, metrics, queue_size=256)
            decider.start()  # opens the candidate
            pipeline = Pipeline()
            servicers = {
                "off": PersonalizerServicer(store, pipeline, metrics=metrics),
                "idle": PersonalizerServicer(store, pipeline, metrics=metrics, shadow=_Idle()),  # type: ignore[arg-type]
                "sample 0.1": PersonalizerServicer(store, pipeline, metrics=metrics, shadow=decider),
                "sample 1.0": PersonalizerServicer(store, pipeline, metrics=metrics, shadow=decider),
            }
            samples = {"sample 0.1": 0.1, "sample 1.0": 1.0}
            requests = _requests(users, per_round, seed)
            for ask in requests[:200]:  # warm up: both versions' state decoded, caches filled
                servicers["off"].decide(ask)
                decider.decide_now(ask)
            times: dict[str, list[float]] = {name: [] for name in CONFIGS}
            shadowed: dict[str, list[int]] = {name: [0, 0] for name in CONFIGS}  # decided, dropped
            for _ in range(rounds):
                for name in CONFIGS:
                    decider.sample = samples.get(name, 0.0)
                    servicer = servicers[name]
                    decided = decider.decided
                    dropped = node.totals()[0].get(("shadow", "dropped"), 0.0)
                    out = times[name]
                    for ask in requests:
                        t0 = time.perf_counter()
                        servicer.decide(ask)
                        out.append(time.perf_counter() - t0)
                    decider.sample = 0.0
                    _drain(decider)
                    shadowed[name][0] += decider.decided - decided
                    shadowed[name][1] += int(node.totals()[0].get(("shadow", "dropped"), 0.0) - dropped)
            decider.stop()
            metrics.close()
    calls = rounds * per_round
    results: dict[str, Any] = {
        "users": users,
        "items": items,
        "rounds": rounds,
        "calls_per_config": calls,
        "branch_ns": round(_branch_ns(), 1),
        "configs": {},
    }
    for name in CONFIGS:
        values = sorted(times[name])
        results["configs"][name] = {
            "median_us": round(statistics.median(values) * 1e6, 1),
            "p99_us": round(values[int(0.99 * (len(values) - 1))] * 1e6, 1),
            "shadow_decided": shadowed[name][0],
            "shadow_dropped": shadowed[name][1],
        }
    return results


class _Idle:
    """A decider without a candidate, as the servicer sees it: `sample` 0."""

    sample = 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: a smoke test, not figures")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        results = run(users=500, items=300, rounds=2, per_round=200)
    else:
        results = run(users=20_000, items=5_000, rounds=6, per_round=1_500)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"shadow decisions: {results['users']:,} users x {results['items']:,} items, "
        f"{results['calls_per_config']:,} calls per configuration in {results['rounds']} interleaved rounds"
    )
    print(f"{'configuration':<14} {'median us':>10} {'p99 us':>10} {'shadow decided':>15} {'dropped':>8}")
    for name, row in results["configs"].items():
        print(
            f"{name:<14} {row['median_us']:>10} {row['p99_us']:>10} {row['shadow_decided']:>15,} "
            f"{row['shadow_dropped']:>8,}"
        )
    print(f"sampling check without a candidate: {results['branch_ns']} ns per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
