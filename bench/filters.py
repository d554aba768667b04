"""Caller-chosen filter values on a large catalog: what a new category, tag or flag value costs a Decide.

    python -m bench.filters             # 100k items x 10k users, 3,000 filtered requests: a few minutes
    python -m bench.filters --quick     # 20k items, 300 requests: a smoke test, not figures
    python -m bench.filters --json      # machine-readable output

A request may name its own filter (`filter` + `filter_params`) with any value. Issue 16 (item 6):
on a 100k-item catalog every new value built a mask with a Python pass over all items and cached it
(4,096 of them, then the cache was cleared whole), so Decide's p50 went from 3.6 ms to 104 ms and a
worker's memory grew by 400 MB. This benchmark decides, in-process over a real LMDB store, the same
requests twice:

1. `plain`: bench.pipeline's request mix (home + pdp_similar + hero_banner, Zipf users, ~90%
   consenting), as they are;
2. `filtered`: the same requests, each with a filter on `home` chosen as a caller would: a third
   category, a third tag, a third flag with a value. Half the values (`share_new`) are new ones,
   never asked before (a category that does not exist under a real top level, a tag or flag value of
   the request's own), the other half repeat the catalog's own categories, tags and flags.

Setup, in a process of its own: a synthetic bundle (`edgewise.offline.synth`, cached like
bench.pipeline's) applied to a fresh store, with live activity for the users the requests name. The
measuring process then opens the store, as a worker does (it never holds the bundle), and builds the
version state three times, the best time reported (the filter index's cost lands there), then once
more for the requests. Each request is timed with its read transaction, as
the edge servicer runs it. The process is the worker here: its resident memory (VmRSS,
/proc/self/status) is read after setup, after the plain pass and after the filtered pass, and its
peak (VmHWM) at the end.

The module only uses what the code before the index also has (Pipeline, Store, the version state's
`derived` cache), so the same file measures both: copy it into a checkout of the old commit to get
the before figures in the same run conditions (BENCHMARKS.md, "Caller-chosen filter values").
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgewise.bench.pipeline import (
    Population,
    _machine,
    _percentiles,
    make_requests,
    prepare_bundle,
    record_activity,
)
from edgewise.core.decisions import DecideRequest
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store
from edgewise.core.version_state import VersionState, build_state
from edgewise.sync.bundle import Bundle
from edgewise.sync.snapshot import apply_bundle

__all__ = ["Config", "main", "run"]

HOME: Final = "home"
KINDS: Final = ("category", "tag", "flag")
BUILDS: Final = 3  # version state builds timed (the best is reported)


def _log(message: str) -> None:
    print(f"[bench.filters] {message}", file=sys.stderr, flush=True)


def _memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak, in MB (Linux; empty elsewhere)."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


@dataclass(frozen=True)
class Config:
    users: int
    items: int
    seed: int
    requests: int
    warmup: int
    share_new: float
    bundle: Path | None


@dataclass(frozen=True)
class Catalog:
    """The values a caller could pick from the catalog itself."""

    tops: list[str]  # top-level categories
    categories: list[str]  # every category and top level
    tags: list[str]
    flags: list[tuple[str, str]]  # (flag, value): "" for truthy

    @classmethod
    def of(cls, bundle: Bundle) -> Catalog:
        leaves = sorted({item.category for item in bundle.items})
        tops = sorted({c.split("/")[0] for c in leaves})
        tags = sorted({t for item in bundle.items for t in item.tags})
        names = sorted({name for item in bundle.items for name in item.flags})
        values = sorted(
            {(n, str(v)) for item in bundle.items for n, v in item.flags.items() if n != "replenish_days"}
        )
        return cls(tops, tops + leaves, tags, [(n, "") for n in names] + values)


def filtered_requests(
    requests: Sequence[DecideRequest], catalog: Catalog, share_new: float, rng: np.random.Generator
) -> tuple[list[DecideRequest], list[bool]]:
    """Each request with a filter on home (KINDS in turn) and whether its value is a new one."""
    out: list[DecideRequest] = []
    new: list[bool] = []
    for j, request in enumerate(requests):
        kind = KINDS[j % len(KINDS)]
        fresh = bool(rng.random() < share_new)
        if kind == "category":
            if fresh:
                params = {"category": f"{catalog.tops[j % len(catalog.tops)]}/caller-{j}"}
            else:
                params = {"category": catalog.categories[int(rng.integers(len(catalog.categories)))]}
        elif kind == "tag":
            params = {"tag": f"caller-{j}" if fresh else catalog.tags[int(rng.integers(len(catalog.tags)))]}
        else:
            flag, value = catalog.flags[int(rng.integers(len(catalog.flags)))]
            params = {"flag": flag, "value": f"caller-{j}"} if fresh else {"flag": flag, "value": value}
            if not params["value"]:
                del params["value"]
        placements = tuple(
            replace(p, filter=kind, filter_params=params) if p.placement_id == HOME else p
            for p in request.placements
        )
        out.append(replace(request, placements=placements))
        new.append(fresh)
    return out, new


def _decide_all(store: Store, pipeline: Pipeline, requests: Sequence[DecideRequest]) -> list[int]:
    """Each request decided in its own read transaction; the times (ns)."""
    clock = time.perf_counter_ns
    times: list[int] = []
    for request in requests:
        t0 = clock()
        with store.read() as view:
            pipeline.decide(view, request)
        times.append(clock() - t0)
    return times


def _cache_stats(state: VersionState) -> dict[str, Any]:
    """Entries (and bytes, where the cache counts them) of the version's derived-value cache."""
    cache = getattr(state, "derived_cache", None)
    if cache is not None:
        return {"entries": len(cache), "bytes": cache.nbytes, "max_bytes": cache.max_bytes}
    return {"entries": len(getattr(state, "_derived", {})), "bytes": None, "max_bytes": None}


def _ms(stats: dict[str, float]) -> dict[str, float]:
    return {
        "p50_ms": round(stats["median_us"] / 1e3, 3),
        "p99_ms": round(stats["p99_us"] / 1e3, 3),
        "max_ms": round(stats["max_us"] / 1e3, 3),
        "n": stats["n"],
    }


@dataclass(frozen=True)
class Prepared:
    """What the setup process hands the measuring one: the requests and the setup's facts."""

    setup: dict[str, Any]
    plain: list[DecideRequest]
    filtered: list[DecideRequest]
    new: list[bool]


def prepare(config: Config, store_dir: Path, out: Path) -> None:
    """The setup (in a process of its own: the measuring process never holds the bundle, so its memory
    is a worker's): the bundle, the requests, the store with live activity, pickled to `out`."""
    bundle, bundle_s, generated = prepare_bundle(config.bundle, config.users, config.items, config.seed)
    rng = np.random.default_rng(config.seed)
    pop = Population.of(bundle, rng)
    plain = make_requests(pop, config.warmup + config.requests, rng)
    catalog = Catalog.of(bundle)
    filtered, new = filtered_requests(plain[config.warmup :], catalog, config.share_new, rng)
    setup: dict[str, Any] = {
        "bundle": str(bundle.path),
        "bundle_generated": generated,
        "bundle_seconds": round(bundle_s, 1),
        "items": len(bundle.items),
        "profiles": len(bundle.profiles),
        "catalog_values": {
            "categories": len(catalog.categories),
            "tags": len(catalog.tags),
            "flags": len(catalog.flags),
        },
    }
    store = Store(store_dir, map_size=4 << 30)
    try:
        apply_bundle(store, bundle)
        record_activity(store, pop, plain, rng)
    finally:
        store.close()
    out.write_bytes(pickle.dumps(Prepared(setup, plain, filtered, new)))


def run(config: Config) -> dict[str, Any]:
    t_run = time.perf_counter()
    machine = _machine()
    with tempfile.TemporaryDirectory(prefix="edgewise-bench-filters-") as tmp:
        store_dir, handoff = Path(tmp) / "store", Path(tmp) / "prepared.pickle"
        child = multiprocessing.get_context("spawn").Process(
            target=prepare, args=(config, store_dir, handoff)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"bench.filters: the setup process failed (exit code {child.exitcode})")
        prepared: Prepared = pickle.loads(handoff.read_bytes())
        setup, plain, filtered, new = prepared.setup, prepared.plain, prepared.filtered, prepared.new
        store = Store(store_dir, map_size=4 << 30)
        try:
            builds = []
            for _ in range(BUILDS):
                t0 = time.perf_counter()
                with store.read() as view:
                    build_state(view)
                builds.append(time.perf_counter() - t0)
            setup["state_build_seconds"] = round(min(builds), 2)
            gc.collect()
            pipeline = Pipeline()
            with store.read() as view:
                state = pipeline.state(view)
            index = getattr(state, "filters", None)
            setup["filter_index_mb"] = round(index.nbytes / 1e6, 1) if index is not None else None
            gc.freeze()  # as edge workers do once their state is built
            memory = {"after_setup": _memory_mb()}
            _log(f"plain: {config.warmup} warm-up + {config.requests} requests")
            _decide_all(store, pipeline, plain[: config.warmup])
            plain_ns = _decide_all(store, pipeline, plain[config.warmup :])
            memory["after_plain"] = _memory_mb()
            cache_plain = _cache_stats(state)
            _log(f"filtered: {config.requests} requests, {sum(new)} with a new value")
            t0 = time.perf_counter()
            filtered_ns = _decide_all(store, pipeline, filtered)
            filtered_s = time.perf_counter() - t0
            memory["after_filtered"] = _memory_mb()
            cache_filtered = _cache_stats(state)
        finally:
            store.close()
    new_ns = [t for t, fresh in zip(filtered_ns, new, strict=True) if fresh]
    repeat_ns = [t for t, fresh in zip(filtered_ns, new, strict=True) if not fresh]
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "config": {
            "users": config.users,
            "items": config.items,
            "seed": config.seed,
            "requests": config.requests,
            "warmup": config.warmup,
            "share_new": config.share_new,
        },
        "machine": machine,
        "setup": setup,
        "plain": _ms(_percentiles(plain_ns)),
        "filtered": _ms(_percentiles(filtered_ns)),
        "filtered_new_value": _ms(_percentiles(new_ns)),
        "filtered_catalog_value": _ms(_percentiles(repeat_ns)),
        "filtered_seconds": round(filtered_s, 1),
        "memory_mb": memory,
        "derived_cache": {"after_plain": cache_plain, "after_filtered": cache_filtered},
        "seconds": round(time.perf_counter() - t_run, 1),
    }


def _format(result: dict[str, Any]) -> str:
    c, m, s, mem = result["config"], result["machine"], result["setup"], result["memory_mb"]
    lines = [
        f"bench.filters: {s['items']} items x {s['profiles']} users, {c['requests']} requests "
        f"(+{c['warmup']} warm-up), share of new filter values {c['share_new']}",
        f"machine: {m['nproc']} cpus, {m['cpu']}; python {m['python']}, numpy {m['numpy']}; load average "
        f"{m['loadavg_at_start']} at start, {m['loadavg_at_end']} at end",
        f"setup: bundle {s['bundle']} ({'generated' if s['bundle_generated'] else 'cached'}), version state "
        f"built in {s['state_build_seconds']} s (best of {BUILDS}; filter index: "
        f"{'none' if s['filter_index_mb'] is None else str(s['filter_index_mb']) + ' MB'}); catalog values "
        f"{s['catalog_values']}",
        "",
        f"{'requests (ms, read txn + decide)':<44} {'p50':>8} {'p99':>8} {'max':>9} {'n':>6}",
    ]
    for key, label in (
        ("plain", "plain (no request filter)"),
        ("filtered", "filtered (all)"),
        ("filtered_new_value", "  with a new value"),
        ("filtered_catalog_value", "  with a catalog value"),
    ):
        t = result[key]
        lines.append(f"{label:<44} {t['p50_ms']:>8.2f} {t['p99_ms']:>8.2f} {t['max_ms']:>9.2f} {t['n']:>6}")
    lines.append("")
    lines.append(
        "worker RSS (MB): "
        f"after setup {mem['after_setup'].get('VmRSS')}, after plain {mem['after_plain'].get('VmRSS')}, "
        f"after filtered {mem['after_filtered'].get('VmRSS')}; peak {mem['after_filtered'].get('VmHWM')}"
    )
    d = result["derived_cache"]
    lines.append(f"derived-value cache: after plain {d['after_plain']}, after filtered {d['after_filtered']}")
    lines.append(f"time: filtered pass {result['filtered_seconds']} s, total {result['seconds']} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.filters", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="20k items, few requests: a smoke test")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--bundle", type=Path, help="bundle dir to use (a synthetic one is generated if empty)"
    )
    parser.add_argument("--users", type=int, default=10_000, help="synthetic profiles (default 10000)")
    parser.add_argument("--items", type=int, help="synthetic items (default 100000, quick 20000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, help="measured requests per pass (default 3000, quick 300)")
    parser.add_argument("--share-new", type=float, default=0.5, help="share of new filter values (0.5)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.share_new <= 1.0:
        parser.error("--share-new must be within 0 .. 1")
    config = Config(
        users=args.users,
        items=args.items if args.items is not None else (20_000 if args.quick else 100_000),
        seed=args.seed,
        requests=args.requests if args.requests is not None else (300 if args.quick else 3_000),
        warmup=100 if args.quick else 500,
        share_new=args.share_new,
        bundle=args.bundle,
    )
    result = run(config)
    print(json.dumps(result, indent=2) if args.json else _format(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
