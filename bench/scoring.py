"""Scoring kernel benchmark: top-20 by dot product over a 90% candidate mask.

Run from the repository root:

    python -m bench.scoring            # full run (about 15 s on a 2-core VM)
    python -m bench.scoring --quick    # a few seconds, for a smoke test
    python -m bench.scoring --json     # machine-readable output

For n in 1k/10k/100k items x d in 32/64 it times, interleaved in rounds so that a noisy neighbor hurts
every contender alike:

- kernel: `edgewise.core.scoring.topk_dot_into` with preallocated output buffers, as the decision
  pipeline calls it (its argument checks included); `raw` is the compiled entry point alone.
- half scan / int8 scan: `topk_half_into` and `topk_int8_into` (the pipeline's scans: an approximate
  pass over a half-precision or int8 copy, then the exact rescoring of the rows that may be in the top
  k; `rescored` is how many rows the int8 scan rescored for the query).
- numpy: `topk_dot_numpy` (bench/numpy_topk.py: matmul, compaction to the candidates, argpartition,
  sort of the k) with the BLAS thread count numpy starts with; `numpy 1t` is the same with BLAS limited
  to one thread, as in a worker process pinned to one core (only when OpenBLAS's thread control can be
  reached).
- bounds: `hot read` times one streaming read of the matrix itself (the Cython `stream_sum` probe of
  bench/_probes.pyx), just after the other calls, so it sits at the same cache level as the kernel's
  reads: the in-cache bound. `DRAM bound` is matrix bytes / the read bandwidth measured by streaming a
  large array (256 MB, far past the last-level cache), i.e. what reading the matrix from memory would
  cost.

Every call runs on warm caches (the same matrix again and again): a matrix that fits in cache is read
from cache, and the DRAM bound is then not a floor. Medians are the figures to quote on a shared machine.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgewise.bench._probes import stream_sum
from edgewise.bench.numpy_topk import topk_dot_numpy
from edgewise.core import _scoring
from edgewise.core.scoring import half_index, int8_index, topk_dot_into, topk_half_into, topk_int8_into

__all__ = ["main", "run"]

K: Final = 20
MASK_DENSITY: Final = 0.9
SIZES: Final = ((1_000, 32), (1_000, 64), (10_000, 32), (10_000, 64), (100_000, 32), (100_000, 64))
DRAM_PROBE_BYTES: Final = 256 * 2**20
ROUNDS: Final = 10


class Blas:
    """OpenBLAS's thread control and identity, reached through the library numpy has loaded."""

    _PREFIXES: Final = ("scipy_openblas", "openblas")
    _SUFFIXES: Final = ("64_", "_64_", "")

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None
        self._prefix = ""
        self._suffix = ""
        self.path = ""
        maps = Path("/proc/self/maps")
        if not maps.exists():
            return
        paths = {line.split()[-1] for line in maps.read_text().splitlines() if "openblas" in line.lower()}
        for path in sorted(paths):
            lib = ctypes.CDLL(path)
            for prefix in self._PREFIXES:
                for suffix in self._SUFFIXES:
                    if hasattr(lib, f"{prefix}_set_num_threads{suffix}"):
                        self._lib, self._prefix, self._suffix, self.path = lib, prefix, suffix, path
                        return

    def _fn(self, name: str) -> Any:
        assert self._lib is not None
        return getattr(self._lib, f"{self._prefix}_{name}{self._suffix}")

    @property
    def available(self) -> bool:
        return self._lib is not None

    def threads(self) -> int:
        return int(self._fn("get_num_threads")()) if self._lib is not None else 0

    def set_threads(self, n: int) -> None:
        self._fn("set_num_threads")(ctypes.c_int(n))

    def text(self, name: str) -> str:
        if self._lib is None:
            return ""
        fn = self._fn(name)
        fn.restype = ctypes.c_char_p
        value = fn()
        return value.decode() if isinstance(value, bytes) else ""

    @contextmanager
    def limited(self, n: int) -> Iterator[None]:
        before = self.threads()
        self.set_threads(n)
        try:
            yield
        finally:
            self.set_threads(before)


@dataclass
class Timing:
    median_us: float
    p99_us: float
    samples: int


@dataclass
class Row:
    n: int
    d: int
    matrix_mb: float
    candidates: int
    timings: dict[str, Timing] = field(default_factory=dict)
    dram_bound_us: float = 0.0
    ratios: dict[str, float] = field(default_factory=dict)
    int8_rescored: int = 0  # rows the int8 scan scored exactly for this query (its bound's looseness)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine(blas: Blas) -> dict[str, Any]:
    blas_info = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {})
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": f"{blas_info.get('name', '?')} {blas_info.get('version', '')}".strip(),
        "blas_core": blas.text("get_corename") or "unknown",
        "blas_threads": blas.threads() if blas.available else None,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def _summarize(samples_ns: list[int]) -> Timing:
    arr = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return Timing(float(np.median(arr)), float(np.percentile(arr, 99)), len(samples_ns))


Contender = tuple[Callable[[], object], Callable[[], AbstractContextManager[None]]]


def _time_interleaved(contenders: dict[str, Contender], reps: int) -> dict[str, Timing]:
    """Time each contender `reps` times, in ROUNDS rounds of reps/ROUNDS calls each, round-robin.

    A contender is (call, context): the context is entered around each round's batch of calls, not
    timed (used to limit BLAS threads).
    """
    samples: dict[str, list[int]] = {name: [] for name in contenders}
    per_round = max(1, reps // ROUNDS)
    clock = time.perf_counter_ns
    for fn, context in contenders.values():  # warm-up: caches, BLAS threads, first-call costs
        with context():
            for _ in range(3):
                fn()
    for _ in range(ROUNDS):
        for name, (fn, context) in contenders.items():
            out = samples[name]
            with context():
                for _ in range(per_round):
                    t0 = clock()
                    fn()
                    out.append(clock() - t0)
    return {name: _summarize(values) for name, values in samples.items()}


def measure_dram_bandwidth(nbytes: int, reps: int) -> float:
    """Read bandwidth in bytes/s of one core streaming a large float32 array (median of reps reads)."""
    data = np.ones(nbytes // 4, dtype=np.float32)
    stream_sum(data)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        stream_sum(data)
        times.append(time.perf_counter_ns() - t0)
    return data.nbytes / (statistics.median(times) / 1e9)


def _reps_for(n: int, quick: bool) -> int:
    if quick:
        return 200 if n <= 10_000 else 30
    return 5000 if n <= 1_000 else 4000 if n <= 10_000 else 600


def bench_size(n: int, d: int, reps: int, dram_bw: float, blas: Blas, seed: int = 7) -> Row:
    rng = np.random.default_rng(seed + n + d)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    query = rng.standard_normal(d, dtype=np.float32)
    mask = (rng.random(n) < MASK_DENSITY).astype(np.uint8)
    out_idx = np.empty(K, dtype=np.int32)
    out_scores = np.empty(K, dtype=np.float32)
    flat = matrix.reshape(-1)

    # The contenders agree (scores within float tolerance: the kernel sums in another order).
    written = topk_dot_into(matrix, query, mask, K, out_idx, out_scores)
    ref_idx, ref_scores = topk_dot_numpy(matrix, query, mask, K)
    if written != len(ref_idx) or not np.allclose(out_scores[:written], ref_scores, rtol=1e-4, atol=1e-4):
        raise AssertionError(f"kernel and numpy disagree at n={n} d={d}")

    # The half-precision scan the pipeline runs (its index is built once per snapshot version).
    half = half_index(matrix)
    assert half is not None
    work = np.empty(half.blocks.shape[0] * 8, dtype=np.float32)
    cand = np.empty(n, dtype=np.int32)
    half_idx = np.empty(K, dtype=np.int32)
    half_scores = np.empty(K, dtype=np.float32)
    if (
        topk_half_into(half, matrix, query, mask, K, work, cand, half_idx, half_scores) != written
        or not (half_idx[:written] == out_idx[:written]).all()
    ):
        raise AssertionError(f"half-precision scan and kernel disagree at n={n} d={d}")

    # The int8 scan (the pipeline's default since the int8 index, same results bit for bit as the half one).
    small = int8_index(matrix)
    assert small is not None
    work8 = np.empty(n, dtype=np.float32)
    i8_idx = np.empty(K, dtype=np.int32)
    i8_scores = np.empty(K, dtype=np.float32)
    if (
        topk_int8_into(small, matrix, query, mask, K, work8, cand, i8_idx, i8_scores) != written
        or not (i8_idx[:written] == half_idx[:written]).all()
        or not (i8_scores[:written] == half_scores[:written]).all()
    ):
        raise AssertionError(f"int8 and half-precision scans disagree at n={n} d={d}")
    rescored = _scoring.int8_candidates(
        small.blocks, small.scale, small.tl1, small.err_ratio, query, mask, K, work8, cand, i8_idx, i8_scores
    )

    contenders: dict[str, Contender] = {
        "kernel": (lambda: topk_dot_into(matrix, query, mask, K, out_idx, out_scores), nullcontext),
        "half scan": (
            lambda: topk_half_into(half, matrix, query, mask, K, work, cand, half_idx, half_scores),
            nullcontext,
        ),
        "int8 scan": (
            lambda: topk_int8_into(small, matrix, query, mask, K, work8, cand, i8_idx, i8_scores),
            nullcontext,
        ),
        "raw": (lambda: _scoring.topk_dot_into(matrix, query, mask, K, out_idx, out_scores), nullcontext),
        "numpy": (lambda: topk_dot_numpy(matrix, query, mask, K), nullcontext),
    }
    if blas.available:
        contenders["numpy 1t"] = (lambda: topk_dot_numpy(matrix, query, mask, K), lambda: blas.limited(1))
    contenders["hot read"] = (lambda: stream_sum(flat), nullcontext)

    row = Row(n=n, d=d, matrix_mb=matrix.nbytes / 1e6, candidates=int(np.count_nonzero(mask)))
    row.int8_rescored = int(rescored)
    row.timings = _time_interleaved(contenders, reps)
    row.dram_bound_us = matrix.nbytes / dram_bw * 1e6
    kernel = row.timings["kernel"].median_us
    row.ratios["numpy/kernel"] = row.timings["numpy"].median_us / kernel
    if "numpy 1t" in row.timings:
        row.ratios["numpy1t/kernel"] = row.timings["numpy 1t"].median_us / kernel
    row.ratios["kernel/hot"] = kernel / row.timings["hot read"].median_us
    row.ratios["kernel/dram"] = kernel / row.dram_bound_us
    row.ratios["kernel/half"] = kernel / row.timings["half scan"].median_us
    row.ratios["half/int8"] = row.timings["half scan"].median_us / row.timings["int8 scan"].median_us
    return row


def run(quick: bool = False) -> dict[str, Any]:
    blas = Blas()
    machine = _machine(blas)
    probe = DRAM_PROBE_BYTES // 2 if quick else DRAM_PROBE_BYTES
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        dram_bw = measure_dram_bandwidth(probe, 5 if quick else 15)
        rows = [bench_size(n, d, _reps_for(n, quick), dram_bw, blas) for n, d in SIZES]
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        "machine": machine,
        "k": K,
        "mask_density": MASK_DENSITY,
        "dram_probe_mb": probe / 2**20,
        "dram_read_gb_s": dram_bw / 1e9,
        "rows": [asdict(row) for row in rows],
    }


def _format(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"bench.scoring: top-{result['k']} of n x d float32 by dot product, "
        f"{result['mask_density']:.0%} of rows candidates",
        f"machine: {m['nproc']} cpus, {m['cpu']}; python {m['python']}, numpy {m['numpy']}, "
        f"{m['blas']} (core {m['blas_core']}, {m['blas_threads']} threads; "
        f"OPENBLAS_CORETYPE={m['OPENBLAS_CORETYPE']}, OPENBLAS_NUM_THREADS={m['OPENBLAS_NUM_THREADS']})",
        f"DRAM read bandwidth: {result['dram_read_gb_s']:.1f} GB/s (one core streaming a "
        f"{result['dram_probe_mb']:.0f} MB float32 array, median); hot read = one streaming read of the "
        "matrix itself, at whatever cache level holds it",
        "times in us: median / p99 over interleaved rounds; ratios from medians",
        "",
    ]
    names = ["kernel", "half scan", "int8 scan", "raw", "numpy", "numpy 1t", "hot read"]
    present = [name for name in names if name in result["rows"][0]["timings"]]
    header = f"{'n':>7} {'d':>3} {'MB':>6} |" + "".join(f" {name:>17}" for name in present)
    header += f" {'DRAM bound':>10} | {'np/kern':>7} {'np1t/kern':>9} {'kern/hot':>8} {'kern/DRAM':>9}"
    header += f" {'kern/half':>9} {'half/int8':>9} {'rescored':>8}"
    lines.append(header)
    lines.append("-" * len(header))
    for row in result["rows"]:
        cells = "".join(
            f" {row['timings'][name]['median_us']:>8.1f} /{row['timings'][name]['p99_us']:>7.1f}"
            for name in present
        )
        r = row["ratios"]
        np1t = f"{r['numpy1t/kernel']:>9.2f}" if "numpy1t/kernel" in r else f"{'-':>9}"
        lines.append(
            f"{row['n']:>7} {row['d']:>3} {row['matrix_mb']:>6.2f} |{cells} {row['dram_bound_us']:>10.1f}"
            f" | {r['numpy/kernel']:>7.2f} {np1t} {r['kernel/hot']:>8.2f} {r['kernel/dram']:>9.2f}"
            f" {r.get('kernel/half', float('nan')):>9.2f} {r.get('half/int8', float('nan')):>9.2f}"
            f" {row.get('int8_rescored', 0):>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke test, not figures")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(json.dumps(result, indent=2) if args.json else _format(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
