"""Large catalogs in `python -m bench.pipeline`: memory, and the partitioned scan against the full one.

`memory_figures`: the store's size (the LMDB data file on disk, the pages the snapshot takes) and the
process's resident memory (VmRSS now, VmHWM its peak) once the version state is built and requests have
run, with the bytes of the embedding copies the state holds (float32 matrix, int8 and half-precision
indexes, or partition).

`measure_scan_ab`: for a catalog of PARTITION_MIN_ROWS items or more (the version state holds a
partition, `edgewise.core.partition`), the same requests decided with the partitioned scan, with the
full half-precision scan of every row (the same state with the partition swapped for a half-precision
index) and with the full int8 scan (swapped for an int8 index; exact like the half one), alternating
in rounds so a noisy neighbour hurts all alike; medians of the whole request (read transaction +
`Pipeline.decide`) and their ratios, and how the decisions compare: the share of requests decided
identically, and the share of the full scan's personalized home items that the partitioned scan also
returned (the recall of what shoppers see).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgewise.core.decisions import DecideRequest, DecideResponse
from edgewise.core.partition import PARTITION_MIN_ROWS
from edgewise.core.pipeline import Pipeline
from edgewise.core.scoring import half_index, int8_index
from edgewise.core.store import Store
from edgewise.core.version_state import VersionState

__all__ = ["format_lines", "measure_scan_ab", "memory_figures"]

AB_ROUNDS: Final = 6
_MB: Final = 1 << 20


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _embedding_bytes(state: VersionState) -> dict[str, float]:
    out = {"float32_mb": 0.0, "half_index_mb": 0.0, "int8_index_mb": 0.0, "partition_mb": 0.0}
    if state.embeddings is not None:
        out["float32_mb"] = round(state.embeddings.nbytes / _MB, 2)
    if state.half_embeddings is not None:
        out["half_index_mb"] = round(state.half_embeddings.blocks.nbytes / _MB, 2)
    if state.int8_embeddings is not None:
        out["int8_index_mb"] = round(state.int8_embeddings.nbytes / _MB, 2)
    if state.partition is not None:
        out["partition_mb"] = round(state.partition.nbytes / _MB, 2)
    return out


def memory_figures(store: Store, state: VersionState) -> dict[str, Any]:
    """The store's size and this process's resident memory (MB)."""
    data = Path(store.path) / "data.mdb"
    st = data.stat()
    part = state.partition
    return {
        "store_file_mb": round(st.st_size / _MB, 1),
        "store_on_disk_mb": round(st.st_blocks * 512 / _MB, 1),
        "store_snapshot_mb": round(store.snapshot_bytes() / _MB, 1),
        "store_used_mb": round(store.used_bytes() / _MB, 1),
        "rss_mb": round(_proc_status_kb("VmRSS") / 1024, 1),
        "rss_peak_mb": round(_proc_status_kb("VmHWM") / 1024, 1),
        "embeddings": _embedding_bytes(state),
        "partition": None if part is None else {"lists": part.lists, "probes": part.probes},
    }


def _home_items(decision: DecideResponse) -> list[str]:
    for placement in decision.placements:
        if placement.placement_id == "home" and placement.strategy == "embedding":
            return [item.id for item in placement.items]
    return []


def _key(decision: DecideResponse) -> tuple[Any, ...]:
    return tuple(
        (p.placement_id, p.strategy, p.content_id, p.variant_id, tuple((i.id, i.score) for i in p.items))
        for p in decision.placements
    )


def measure_scan_ab(
    store: Store, requests: Sequence[DecideRequest], rounds: int = AB_ROUNDS
) -> dict[str, Any]:
    """Partitioned scan vs the full half-precision and int8 scans on the same requests (module doc)."""
    pipeline = Pipeline()
    with store.read() as view:
        state = pipeline.state(view)
    part = state.partition
    if part is None or state.embeddings is None:
        return {"skipped": f"no partition: the catalog has fewer than {PARTITION_MIN_ROWS} items"}
    matrix = np.ascontiguousarray(state.embeddings)
    half, small = half_index(matrix), int8_index(matrix)
    variants = {"partition": (part, None, None), "full": (None, half, None), "int8": (None, None, small)}
    names = list(variants)
    times: dict[str, list[int]] = {name: [] for name in variants}
    # what is compared, not the decisions themselves (kept objects would make the cyclic GC run more)
    decisions: dict[str, list[tuple[tuple[Any, ...], list[str]]]] = {name: [] for name in variants}
    decide = pipeline.decide
    chunk = max(1, -(-len(requests) // rounds))
    try:
        for r in range(rounds):
            part_requests = requests[r * chunk : (r + 1) * chunk]
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                state.partition, state.half_embeddings, state.int8_embeddings = variants[name]
                pipeline._scratch.placer = None  # the compiled placement binds the scan's arrays anew
                for request in part_requests:  # a warm-up pass, then the measured one
                    with store.read() as view:
                        decide(view, request)
                for request in part_requests:
                    t0 = time.perf_counter_ns()
                    with store.read() as view:
                        decision = decide(view, request)
                    times[name].append(time.perf_counter_ns() - t0)
                    decisions[name].append((_key(decision), _home_items(decision)))
    finally:
        state.partition, state.half_embeddings, state.int8_embeddings = part, None, None
        pipeline._scratch.placer = None
    # decisions[name] are in request order per round: the lists line up
    same = shown = found = exact_same = 0
    for (key_a, home_a), (key_b, home_b), (key_c, _) in zip(
        decisions["partition"], decisions["full"], decisions["int8"], strict=True
    ):
        same += key_a == key_b
        exact_same += key_b == key_c
        shown += len(home_b)
        found += len(set(home_b) & set(home_a))
    medians = {name: statistics.median(t) / 1000 for name, t in times.items()}
    return {
        "requests": len(times["partition"]),
        "rounds": rounds,
        "lists": part.lists,
        "probes": part.probes,
        "partition_median_us": round(medians["partition"], 1),
        "full_median_us": round(medians["full"], 1),
        "full_over_partition": round(medians["full"] / medians["partition"], 2),
        "int8_median_us": round(medians["int8"], 1),
        "int8_over_partition": round(medians["int8"] / medians["partition"], 2),
        "int8_same_as_full": round(exact_same / len(times["partition"]), 4),
        "same_decisions": round(same / len(times["partition"]), 4),
        "home_items_recall": round(found / shown, 4) if shown else None,
        "home_items_compared": shown,
    }


def format_lines(memory: dict[str, Any] | None, ab: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if memory is not None:
        e = memory["embeddings"]
        p = memory["partition"]
        lines.append(
            f"memory: store data file {memory['store_file_mb']} MB ({memory['store_on_disk_mb']} MB on disk, "
            f"snapshot pages {memory['store_snapshot_mb']} MB, all pages {memory['store_used_mb']} MB); "
            f"RSS {memory['rss_mb']} MB (peak {memory['rss_peak_mb']} MB); embeddings float32 "
            f"{e['float32_mb']} MB, half-precision index {e['half_index_mb']} MB, int8 index "
            f"{e['int8_index_mb']} MB, partition "
            f"{e['partition_mb']} MB" + (f" ({p['lists']} lists, {p['probes']} scanned)" if p else "")
        )
    if ab is not None:
        if "skipped" in ab:
            lines.append(f"partitioned vs full scan: skipped ({ab['skipped']})")
        else:
            lines.append(
                f"partitioned vs full scan, same {ab['requests']} requests, {ab['rounds']} alternating "
                f"rounds: request median {ab['partition_median_us']} us vs {ab['full_median_us']} us "
                f"(full / partitioned {ab['full_over_partition']}x); decisions identical "
                f"{ab['same_decisions']:.1%}, personalized home items of the full scan also returned "
                f"{ab['home_items_recall']:.1%} (of {ab['home_items_compared']})"
            )
            lines.append(
                f"full int8 scan (exact), same requests: request median {ab['int8_median_us']} us "
                f"(int8 / partitioned {ab['int8_over_partition']}x); decisions identical to the full "
                f"half-precision scan's {ab['int8_same_as_full']:.1%}"
            )
    return lines
