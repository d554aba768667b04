"""A bounded loop of bench.pipeline's requests, for profilers: callgrind, cProfile, or a plain timer.

Run from the repository root:

    python -m bench.pipeline_loop setup                  # once: store + requests under $TMPDIR (~10 s)
    python -m bench.pipeline_loop time 3000              # median / p90 of 3000 requests x --rounds
    python -m bench.pipeline_loop time 3000 --placement reference   # the same with rank_items_reference
    python -m bench.pipeline_loop time 3000 --decide reference      # Pipeline._decide_reference
    python -m bench.pipeline_loop profile 3000           # cProfile of 3000 requests, by own time
    OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind \\
        python -m bench.pipeline_loop loop 400           # instructions: run with 0 and 400, subtract

`setup` builds what `python -m bench.pipeline` measures (the same synthetic 10k-item bundle, request
mix and live activity: its own functions) into a directory that later runs reuse, so a run under
valgrind pays only for the import, the warm-up (`--warmup` requests, which build the version state)
and the measured requests. Instruction counts of two runs that differ only in the number of measured
requests give the instructions per request without the setup: `(Ir(400) - Ir(0)) / 400`. They are
repeatable on a loaded machine, unlike wall-clock times (OPENBLAS_NUM_THREADS=1 keeps BLAS's idle
threads out of the count). Each request is decided in its own read transaction, as the edge does.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pickle
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import numpy as np

from edgewise.bench import pipeline as bench_pipeline
from edgewise.core.decisions import DecideRequest
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store
from edgewise.sync.snapshot import apply_bundle

__all__ = ["main"]

DEFAULT_DIR: Final = Path(tempfile.gettempdir()) / "edgewise-bench" / "pipeline-loop"
REQUESTS: Final = 8_000
MAP_SIZE: Final = 4 << 30


def setup(directory: Path, users: int, items: int, seed: int, bundle_dir: Path | None = None) -> None:
    """The store (bundle applied, live activity recorded) and the pickled requests, in `directory`
    (`bundle_dir`: bench.pipeline's --bundle, a bundle or an empty dir to generate one in)."""
    bundle, _, _ = bench_pipeline.prepare_bundle(bundle_dir, users, items, seed)
    rng = np.random.default_rng(seed)
    pop = bench_pipeline.Population.of(bundle, rng)
    requests = bench_pipeline.make_requests(pop, REQUESTS, rng)
    directory.mkdir(parents=True, exist_ok=True)
    store = Store(directory / "store", map_size=MAP_SIZE)
    try:
        apply_bundle(store, bundle)
        bench_pipeline.record_activity(store, pop, requests, rng)
    finally:
        store.close()
    (directory / "requests.pkl").write_bytes(pickle.dumps(requests))


def _decide_all(store: Store, pipeline: Pipeline, requests: list[DecideRequest]) -> None:
    decide = pipeline.decide
    for request in requests:
        with store.read() as view:
            decide(view, request)


def run(mode: str, directory: Path, n: int, warmup: int, rounds: int, compiled: bool = True) -> None:
    requests: list[DecideRequest] = pickle.loads((directory / "requests.pkl").read_bytes())
    if warmup + n > len(requests):
        raise SystemExit(f"at most {len(requests) - warmup} measured requests after {warmup} warm-up")
    store = Store(directory / "store", map_size=MAP_SIZE)
    try:
        pipeline = Pipeline(compiled=compiled)
        _decide_all(store, pipeline, requests[:warmup])
        gc.collect()
        gc.freeze()  # as edge workers do once their state is built
        measured = requests[warmup : warmup + n]
        if mode == "loop":
            _decide_all(store, pipeline, measured)
        elif mode == "profile":
            profiler = cProfile.Profile()
            profiler.enable()
            _decide_all(store, pipeline, measured)
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(40)
        else:
            times: list[int] = []
            decide = pipeline.decide
            for _ in range(rounds):
                for request in measured:
                    t0 = time.perf_counter_ns()
                    with store.read() as view:
                        decide(view, request)
                    times.append(time.perf_counter_ns() - t0)
            us = np.asarray(times, dtype=np.float64) / 1e3
            print(
                f"request median {np.median(us):.1f} us, p90 {np.percentile(us, 90):.1f} us"
                f" ({len(times)} = {n} requests x {rounds} rounds)"
            )
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_loop", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["setup", "loop", "time", "profile"])
    parser.add_argument("n", type=int, nargs="?", default=0, help="measured requests")
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"store + requests (default {DEFAULT_DIR})"
    )
    parser.add_argument("--warmup", type=int, default=300, help="requests decided before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the requests (time)")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    bench_pipeline.add_ab_options(parser)
    parser.add_argument("--bundle", type=Path, help="setup: bench.pipeline's --bundle (default: its cache)")
    args = parser.parse_args(argv)
    if args.mode == "setup":
        setup(args.dir, args.users, args.items, args.seed, args.bundle)
        print(f"store and {REQUESTS} requests in {args.dir}")
        return
    if not (args.dir / "requests.pkl").exists():
        raise SystemExit(f"{args.dir}: no setup yet (python -m bench.pipeline_loop setup)")
    run(args.mode, args.dir, args.n, args.warmup, args.rounds, bench_pipeline.apply_ab_options(args))


if __name__ == "__main__":
    main()
