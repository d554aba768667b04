"""`edgewise edge status`: what a node's store holds, against its map and its size limits.

    edgewise edge status --data /srv/edgewise
    edgewise edge status --config edge.toml --json

The store is opened read-only, so this runs beside a serving node (LMDB readers do not block its
writer) as well as on a stopped one. It takes `edgewise edge serve`'s own flags, environment and
config file, so the limits it reports are the ones that node applies: run it with the node's command
line. It prints the snapshot being served, the map's size and high-water mark, how the map is shared
(the snapshot, room for a reload, headroom, where Track's writes stop: core/store_budget.py), every
namespace's entries and bytes, and the three size limits housekeeping enforces (`data.outbox_max_mb`,
`track.dedupe_max_mb`, `track.activity_max_mb`) as they are in force beside this snapshot, with how full
each is. A node that follows a control plane: the replicas configured (`sync.control`) and the one its
last applied commit came from (the one it followed then; its metrics name the one it follows now,
`edgewise_sync_control_info`). The candidate of a shadow rollout the node holds, if any, and how its
decisions differ from those served so far (docs/shadow.md). Exit status 2 when the configuration is
wrong or there is no store in the data directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import DERIVED, REPLICATED, Store, StoreError, StoreUsage
from edgewise.edge.config import EdgeConfig, add_config_arguments, cli_config, store_limits
from edgewise.edge.shadow_stats import read_status
from edgewise.sync.shadow_candidate import read_candidate

__all__ = ["add_arguments", "format_report", "run", "status_report"]

MIB: Final = 1 << 20
# The namespaces each limit covers (the event ids' limit counts their arrival index too).
LIMITED: Final = {
    "data.outbox_max_mb": ("outbox",),
    "track.dedupe_max_mb": ("events", "event_times"),
    "track.activity_max_mb": ("activity",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _mib(size: int) -> float:
    return round(size / MIB, 1)


def shadow_report(path: Path) -> dict[str, Any] | None:
    """The shadow candidate the node holds and its decisions so far (docs/shadow.md); None: none."""
    candidate = read_candidate(path)
    if candidate is None:
        return None
    stats = read_status(path, candidate)
    report: dict[str, Any] = {
        "version": candidate.version,
        "base_version": candidate.base_version,
        "sample": candidate.sample,
        "received_at_ms": candidate.received_at_ms,
        "stats": stats,  # None until the node wrote them (once a second)
    }
    if stats:
        sampled, compared = stats.get("sampled", 0), stats.get("placements", 0)
        items = stats.get("item_placements", 0)
        report["mean_overlap"] = round(stats.get("overlap_sum", 0.0) / items, 4) if items else None
        report["new_fallback_rate"] = round(stats.get("new_fallbacks", 0) / compared, 4) if compared else None
        report["variant_change_rate"] = (
            round(stats.get("variant_changes", 0) / compared, 4) if compared else None
        )
        report["served_cpu_us_mean"] = (
            round(stats.get("served_latency_us_sum", 0) / sampled, 1) if sampled else None
        )
        report["shadow_cpu_us_mean"] = (
            round(stats.get("shadow_latency_us_sum", 0) / sampled, 1) if sampled else None
        )
    return report


def status_report(
    config: EdgeConfig, path: Path, usage: StoreUsage, snapshot: SnapshotInfo, now_ms: int
) -> dict[str, Any]:
    """The report `run` prints: plain data, for the table and for --json."""
    snapshot_bytes = sum(
        size for name, (_, size) in usage.namespaces.items() if name in (*REPLICATED, *DERIVED)
    )
    budget = store_limits(config, snapshot_bytes)
    limits = []
    for cap in budget.caps:
        names = LIMITED[cap.key]
        used = sum(usage.namespaces.get(name, (0, 0))[1] for name in names)
        limit = cap.effective_bytes
        limits.append(
            {
                "key": cap.key,
                "namespaces": list(names),
                "used_mib": _mib(used),
                "limit_mib": _mib(limit),  # in force beside this snapshot
                "configured_mib": _mib(cap.configured_bytes) if cap.configured_bytes else None,  # None: auto
                "share": round(used / limit, 6) if limit else 0.0,
            }
        )
    in_use = sum(size for _, size in usage.namespaces.values())
    oldest = usage.oldest_event_ms
    map_bytes = config.data.map_size_mb * MIB  # the node's; LMDB's own is at least the file's extent
    return {
        "store": str(path),
        "snapshot": {
            "version": snapshot.version,
            "source": snapshot.source,
            "profiles": snapshot.profiles,
            "items": snapshot.items,
            "loaded_at_ms": snapshot.loaded_at_ms,
            "control": snapshot.control,  # the replica the last applied commit came from ("": a bundle)
        },
        "sync_control": list(config.sync.control),  # the replicas configured, in order
        "map_mib": _mib(map_bytes),
        "high_water_mib": _mib(usage.high_water_bytes),
        "high_water_share": round(usage.high_water_bytes / map_bytes, 4),
        "budget": {
            "snapshot_mib": _mib(budget.snapshot_bytes),
            "reload_room_mib": _mib(budget.reload_bytes),
            "headroom_mib": _mib(budget.headroom_bytes),
            "caps_mib": _mib(budget.free_bytes),
            "write_limit_mib": _mib(budget.write_limit_bytes),
            "used_mib": _mib(in_use),
            "full": in_use > budget.write_limit_bytes,
            "reload_fits": budget.reload_fits,
        },
        "namespaces": {
            name: {"entries": entries, "mib": _mib(size)}
            for name, (entries, size) in usage.namespaces.items()
        },
        "limits": limits,
        "oldest_event_id_age_s": round(max(0, now_ms - oldest) / 1000, 1) if oldest else None,
        "forget_purges_pending": usage.purges_pending,
        "readers": usage.readers,
        "shadow": shadow_report(path),
    }


def format_report(report: Mapping[str, Any]) -> str:
    snap = report["snapshot"]
    if snap["version"]:
        loaded = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snap["loaded_at_ms"] / 1000))
        serving = (
            f"snapshot version {snap['version']} ({snap['source'] or 'unknown source'}): "
            f"{snap['profiles']:,} profiles, {snap['items']:,} items, loaded {loaded}"
        )
    else:
        serving = "no snapshot loaded yet: the node is not SERVING"
    lines = [f"store {report['store']}", serving]
    if report["sync_control"] or snap["control"]:
        configured = ", ".join(report["sync_control"]) or "not given here"
        lines.append(
            f"control plane (sync.control): {configured}; last commit applied from {snap['control'] or '-'}"
        )
    lines += [
        f"map {report['map_mib']:,} MiB; high-water mark {report['high_water_mib']:,} MiB "
        f"({report['high_water_share']:.1%}; free pages below it are reused first)",
    ]
    budget = report["budget"]
    lines.append(
        f"in use {budget['used_mib']:,} MiB: snapshot {budget['snapshot_mib']:,} MiB, kept free for a reload "
        f"{budget['reload_room_mib']:,} MiB, headroom {budget['headroom_mib']:,} MiB, "
        f"{budget['caps_mib']:,} MiB for the limits below; Track refused past "
        f"{budget['write_limit_mib']:,} MiB"
    )
    if report["high_water_share"] >= 0.9:
        lines.append(
            "WARNING: the data file is past 90% of data.map_size_mb: give the node a larger map (the file "
            "grows only within it), or lower the size limits below"
        )
    if budget["full"]:
        lines.append(
            "WARNING: the store is full: Track is answered RESOURCE_EXHAUSTED until housekeeping brings the "
            "namespaces under the limits below"
        )
    if not budget["reload_fits"]:
        lines.append(
            "WARNING: the map cannot hold a reload of this snapshot beside it (a reload would fail): raise "
            "data.map_size_mb to at least twice the snapshot plus the headroom"
        )
    lines += ["", f"{'namespace':<14} {'entries':>12} {'MiB':>10}"]
    for name, row in report["namespaces"].items():
        lines.append(f"{name:<14} {row['entries']:>12,} {row['mib']:>10,}")
    lines += ["", f"{'limit':<24} {'used MiB':>10} {'limit MiB':>10} {'full':>7}  namespaces (configured)"]
    for limit in report["limits"]:
        configured = "auto" if limit["configured_mib"] is None else f"{limit['configured_mib']:,} MiB"
        lines.append(
            f"{limit['key']:<24} {limit['used_mib']:>10,} {limit['limit_mib']:>10,} {limit['share']:>7.1%}  "
            + " + ".join(limit["namespaces"])
            + f" ({configured})"
        )
    age = report["oldest_event_id_age_s"]
    lines.append("")
    lines.append(
        "oldest remembered event id: "
        + ("none" if age is None else f"{age / 3600:.2f} h ago (retries back to then are recognized)")
    )
    if report["forget_purges_pending"]:
        pending = report["forget_purges_pending"]
        lines.append(f"forgotten users whose outbox entries housekeeping is still deleting: {pending}")
    shadow = report.get("shadow")
    if shadow is not None:
        lines.append(_shadow_line(shadow))
    readers = report["readers"]
    lines.append(f"read transaction slots in use: {readers} (the node's processes, and this command)")
    return "\n".join(lines)


def _shadow_line(shadow: Mapping[str, Any]) -> str:
    head = (
        f"shadow candidate version {shadow['version']} (arrived while serving {shadow['base_version']}), "
        f"deciding {shadow['sample']:.1%} of requests again"
    )
    stats = shadow.get("stats")
    if not stats:
        return head + ": no decisions counted yet"
    overlap = shadow["mean_overlap"]
    return (
        f"{head}: {stats['sampled']:,} sampled, {stats['placements']:,} placements compared; "
        f"mean overlap@k {'-' if overlap is None else f'{overlap:.3f}'}, "
        f"{stats['variant_changes']:,} variant changes, {stats['new_fallbacks']:,} new and "
        f"{stats['fixed_fallbacks']:,} fixed fallbacks, {stats['errors']:,} errors, "
        f"{stats['dropped']:,} dropped (queue full); pipeline CPU per request "
        f"{shadow['served_cpu_us_mean'] or 0:,} us served, {shadow['shadow_cpu_us_mean'] or 0:,} us candidate"
    )


def run(args: argparse.Namespace) -> int:
    config = cli_config(args)
    if isinstance(config, int):
        return config
    path = Path(config.data.dir)
    if not (path / "data.mdb").is_file():
        print(f"no edgewise store in {path} (`edgewise edge serve --data {path}` makes one)", file=sys.stderr)
        return 2
    try:
        with Store(path, map_size=config.data.map_size_mb * MIB, readonly=True) as store:
            usage = store.usage()
            snapshot = store.snapshot_info()
    except StoreError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    report = status_report(config, path, usage, snapshot, time.time_ns() // 1_000_000)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
