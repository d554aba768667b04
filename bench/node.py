"""Edge node against the gRPC floor in one run: the issue's serving targets measured side by side.

    python -m bench.node                 # about 3 minutes; --quick for a smoke run, --json for a report

Runs real processes on loopback, one after the other so they never share the cores:

1. `edgewise bench floor-server --workers 2 --pin`: closed loop (capacity of the gRPC floor);
2. `edgewise edge serve --workers 2 --pin` on the synthetic bundle (100k users x 10k items, the one
   `python -m bench.pipeline` caches): closed loop (Decide capacity), then an open loop at 50% of that
   capacity, then durable Track with one event per call and with 50 events per call;
3. the floor server again, open loop at the same rate as the edge's.

Every load is `edgewise bench load` (its client processes share the machine with the server: on a
2-core VM they take a large part of a core, so capacities here are lower bounds of what the node
would do with the load generator elsewhere). The table prints each figure next to its target:
Decide/s with 2 workers, p99 at 50% of capacity against the floor's p99 at the same rate, durable
Track events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from edgewise.bench.pipeline import prepare_bundle
from edgewise.processes import Processes, edgewise_command

TARGET_DECIDE_PER_S: Final = 8_000
TARGET_P99_RATIO: Final = 1.3
TARGET_TRACK_EVENTS_PER_S: Final = 5_000
START_TIMEOUT_S: Final = 180.0


def _log(message: str) -> None:
    print(f"[bench.node] {message}", file=sys.stderr, flush=True)


@contextmanager
def _server(procs: Processes, name: str, args: Sequence[str]) -> Iterator[str]:
    """Start `edgewise ARGS` (its own process group, see edgewise.processes), yield its address once
    ready, stop it (SIGTERM, SIGKILL to its group after the grace) at the end."""
    proc = procs.start(name, args)
    try:
        yield str(proc.wait_ready(START_TIMEOUT_S)["address"])
    finally:
        procs.stop([proc])


def _load(target: str, args: Sequence[str], out: Path) -> dict[str, Any]:
    """One `edgewise bench load` run; its JSON report."""
    cmd = edgewise_command("bench", "load", "--target", target, *args, "--quiet", "--json", str(out))
    _log("load: " + " ".join(args))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode not in (0, 1) or not out.exists():
        raise RuntimeError(f"bench load failed ({done.returncode}): {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def _figures(report: dict[str, Any], rpc: str = "overall") -> dict[str, Any]:
    part = report["overall"] if rpc == "overall" else report["rpcs"][rpc]
    lat = part["latency"]

    def ms(key: str) -> float:
        return round(float(lat.get(f"{key}_us", 0.0)) / 1000, 3)

    return {
        "ok_per_s": round(part["ok"] / report["measured_s"], 1),
        "achieved_per_s": report["achieved_rate"],
        "errors": report["errors_by_code"],
        "p50_ms": ms("p50"),
        "p90_ms": ms("p90"),
        "p99_ms": ms("p99"),
        "p999_ms": ms("p99.9"),
        "max_ms": ms("max"),
        "client_cpu_max": report["client_cpu_max"],
        "warnings": report["warnings"],
    }


def run(duration: float, concurrency: int, clients: int, quick: bool) -> dict[str, Any]:
    bundle, _, _ = prepare_bundle(None, 20_000 if quick else 100_000, 2_000 if quick else 10_000, 7)
    common = ["--duration", str(duration), "--warmup", "1" if quick else "2", "--clients", str(clients)]
    decide = [*common, "--mix", "decide=1"]
    results: dict[str, Any] = {
        "bundle": str(bundle.path),
        "duration_s": duration,
        "clients": clients,
        "concurrency": concurrency,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
    }
    with (
        tempfile.TemporaryDirectory(prefix="edgewise-bench-node-") as tmp_name,
        Processes(Path(tmp_name) / "procs", {"PYTHONUNBUFFERED": "1"}, grace=10) as procs,
    ):
        tmp = Path(tmp_name)
        floor_cmd = [
            "bench",
            "floor-server",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--pin",
        ]
        edge_cmd = [
            "edge",
            "serve",
            "--data",
            str(tmp / "edge-data"),
            "--bundle",
            str(bundle.path),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--pin",
        ]
        with _server(procs, "floor", floor_cmd) as floor:
            _log(f"floor server at {floor}")
            results["floor_capacity"] = _figures(
                _load(floor, [*decide, "--concurrency", str(concurrency)], tmp / "l1.json")
            )
        with _server(procs, "edge", edge_cmd) as edge:
            _log(f"edge node at {edge}")
            capacity = _figures(_load(edge, [*decide, "--concurrency", str(concurrency)], tmp / "l2.json"))
            results["edge_capacity"] = capacity
            rate = max(50, int(capacity["ok_per_s"] * 0.5))
            results["open_rate"] = rate
            results["edge_open"] = _figures(_load(edge, [*decide, "--rate", str(rate)], tmp / "l3.json"))
            track = [*common, "--mix", "track=1", "--concurrency", str(concurrency)]
            single = _figures(_load(edge, track, tmp / "l4.json"))
            batched = _figures(_load(edge, [*track, "--track-batch", "50"], tmp / "l5.json"))
            results["track_single"] = {**single, "events_per_s": single["ok_per_s"]}
            results["track_batch50"] = {**batched, "events_per_s": round(batched["ok_per_s"] * 50, 1)}
        with _server(procs, "floor2", floor_cmd) as floor:
            results["floor_open"] = _figures(_load(floor, [*decide, "--rate", str(rate)], tmp / "l6.json"))
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    edge_p99 = results["edge_open"]["p99_ms"]
    floor_p99 = results["floor_open"]["p99_ms"]
    ratio = edge_p99 / floor_p99 if edge_p99 and floor_p99 else None
    results["verdicts"] = {
        "decide_per_s": {
            "figure": results["edge_capacity"]["ok_per_s"],
            "target": TARGET_DECIDE_PER_S,
            "met": results["edge_capacity"]["ok_per_s"] >= TARGET_DECIDE_PER_S,
        },
        "p99_ratio_at_half_capacity": {
            "figure": round(ratio, 2) if ratio is not None else None,
            "target": TARGET_P99_RATIO,
            "met": ratio is not None and ratio <= TARGET_P99_RATIO,
        },
        "track_events_per_s_single": {
            "figure": results["track_single"]["events_per_s"],
            "target": TARGET_TRACK_EVENTS_PER_S,
            "met": results["track_single"]["events_per_s"] >= TARGET_TRACK_EVENTS_PER_S,
        },
        "track_events_per_s_batch50": {
            "figure": results["track_batch50"]["events_per_s"],
            "target": TARGET_TRACK_EVENTS_PER_S,
            "met": results["track_batch50"]["events_per_s"] >= TARGET_TRACK_EVENTS_PER_S,
        },
    }
    return results


def _format(r: dict[str, Any]) -> str:
    def row(name: str, f: dict[str, Any], extra: str = "") -> str:
        errors = sum(f["errors"].values())
        return (
            f"{name:44s} {f['ok_per_s']:>9,.0f}/s  p50 {f['p50_ms']:>7.2f}  p90 {f['p90_ms']:>7.2f}  "
            f"p99 {f['p99_ms']:>7.2f}  max {f['max_ms']:>8.2f} ms  errors {errors}  client cpu "
            f"{f['client_cpu_max']:.0%}{extra}"
        )

    lines = [
        f"bench.node: edge vs gRPC floor, 2 workers pinned, {r['clients']} load client processes on the same "
        f"machine ({r['machine']['cpus']} cpus), {r['duration_s']:.0f} s per load; bundle {r['bundle']}",
        f"load average {r['machine']['loadavg_start']} at start, {r['machine']['loadavg_end']} at end",
        "",
        row(f"floor: closed loop, {r['concurrency']} in flight", r["floor_capacity"]),
        row(f"edge Decide: closed loop, {r['concurrency']} in flight", r["edge_capacity"]),
        row(f"edge Decide: open loop at {r['open_rate']}/s (50%)", r["edge_open"]),
        row(f"floor: open loop at {r['open_rate']}/s", r["floor_open"]),
        row("edge Track, 1 event per call (durable)", r["track_single"]),
        row(
            "edge Track, 50 events per call (durable)",
            r["track_batch50"],
            f"  = {r['track_batch50']['events_per_s']:,.0f} events/s",
        ),
        "",
    ]
    for name, v in r["verdicts"].items():
        lines.append(
            f"{name:34s} {v['figure']!s:>10}  target {v['target']!s:>6}  {'met' if v['met'] else 'NOT met'}"
        )
    warnings = [(k, w) for k, f in r.items() if isinstance(f, dict) for w in f.get("warnings", [])]
    if warnings:
        lines.append("")
        lines += [f"warning ({k}): {w}" for k, w in warnings]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.node",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--quick", action="store_true", help="short loads on a small bundle: a smoke run")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load (default 10, quick 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight in closed loops")
    parser.add_argument("--clients", type=int, default=2, help="load client processes (default 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (2.0 if args.quick else 10.0)
    result = run(duration, args.concurrency, args.clients, args.quick)
    print(json.dumps(result, indent=2) if args.json else _format(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
