"""What the edge's transport path costs beyond the gRPC floor's, per call (issue 17).

`python -m bench.transport` runs three servers side by side, two pinned workers each, all up at once
and loaded one at a time with the same closed-loop Decide load (`edgewise bench load`), in alternating
rounds:

- `floor`: `edgewise bench floor-server` (a plain unary-unary no-op servicer, no interceptor);
- `metered`: the same behind the edge's `_CallMeter` (`--metered`: the interceptor, the stream-unary
  wrapping of each call, a metrics file);
- `edge`: `edgewise edge serve` on the synthetic bundle (exposures queued, as bench.node's edge).

For each it reports the server's CPU per call from /proc (minus its idle CPU), and the workers' CPU per
call by thread (the Python threads by name, from the stage files of `EDGEWISE_STAGE_TIMES`; the others
by their kernel name), and the cyclic collector's collections per 1,000 calls by generation. Medians
over the rounds. `--json` prints every round.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from edgewise.bench.node import _CLK_TCK, STAGE_ORDER, ServerCpu, _load, _server, _stage_totals
from edgewise.bench.pipeline import prepare_bundle
from edgewise.processes import Processes

VARIANTS: Final = ("floor", "metered", "edge")
_RPC_THREAD = re.compile(r"^rpc_\d+$")


def _thread_cpu(pids: Sequence[int], names: dict[str, str]) -> dict[str, float]:
    """CPU seconds of every thread of `pids`, summed by group: a Python thread's name (handler threads
    `rpc_N` as one group), else its kernel name."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            comm = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rpartition(")")[2].split()
            name = names.get(tid)
            group = "rpc handlers" if name and _RPC_THREAD.match(name) else (name or f"[{comm}]")
            if name == "MainThread" or tid == str(pid):
                group = "main"
            out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return out


def _stage_files(directory: Path) -> tuple[dict[str, str], list[int]]:
    """Python thread names by kernel id, and GC collections by generation, over every worker's file."""
    names: dict[str, str] = {}
    collections = [0, 0, 0]
    for path in directory.glob("stages-*.json"):
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        names.update(values.get("threads", {}))
        for i, n in enumerate(values.get("gc_collections", [])[:3]):
            collections[i] += int(n)
    return names, collections


def _round(
    name: str, target: str, cpu: ServerCpu, stage_dir: Path, load: list[str], out: Path
) -> dict[str, Any]:
    workers = [p for p in cpu.sample().by_pid if p != cpu.root]
    names, gc_before = _stage_files(stage_dir)
    stages_before = _stage_totals(stage_dir)
    threads_before = _thread_cpu(workers, names)
    before = cpu.sample()
    report = _load(target, load, out)
    after = cpu.sample()
    names, gc_after = _stage_files(stage_dir)
    stages_after = _stage_totals(stage_dir)
    threads_after = _thread_cpu(workers, names)
    calls = sum(int(c["completed"]) for c in report["clients"])
    server = cpu.per_call(before, after, calls)
    threads = {
        g: round(1e6 * (threads_after[g] - threads_before.get(g, 0.0)) / calls, 1)
        for g in threads_after
        if calls
    }
    return {
        "variant": name,
        "ok_per_s": round(report["overall"]["ok"] / report["measured_s"], 1),
        "us_per_call": server["us_per_call"],
        "workers_us_per_call": server["workers_us_per_call"],
        "threads_us_per_call": {g: us for g, us in sorted(threads.items(), key=lambda kv: -kv[1]) if us > 0},
        # the edge's stage counters (edge/stage_times.py), µs per call: its own work on its threads
        "stages_us_per_call": {
            stage: round((stages_after.get(stage, 0) - stages_before.get(stage, 0)) / calls / 1000, 1)
            for stage in STAGE_ORDER
        }
        if calls
        else {},
        "gc_per_1000_calls": [
            round(1000 * (a - b) / calls, 2) for a, b in zip(gc_after, gc_before, strict=True)
        ]
        if calls
        else None,
    }


def run(rounds: int, duration: float, concurrency: int, clients: int, quick: bool) -> dict[str, Any]:
    users, items = (20_000, 2_000) if quick else (100_000, 10_000)
    bundle, _, _ = prepare_bundle(None, users, items, 7)
    load = ["--duration", str(duration), "--warmup", "1", "--clients", str(clients)]
    load += [
        "--users",
        str(users),
        "--items",
        str(items),
        "--mix",
        "decide=1",
        "--concurrency",
        str(concurrency),
    ]
    floor = ["bench", "floor-server", "--listen", "127.0.0.1:0", "--workers", "2", "--pin"]
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="edgewise-bench-transport-") as tmp_name,
        Processes(Path(tmp_name) / "procs", {"PYTHONUNBUFFERED": "1"}, grace=10) as procs,
    ):
        tmp = Path(tmp_name)
        commands = {
            "floor": floor,
            "metered": [*floor, "--metered"],
            "edge": [
                *("edge", "serve", "--data", str(tmp / "edge-data"), "--bundle", str(bundle.path)),
                *("--listen", "127.0.0.1:0", "--workers", "2", "--pin"),
            ],
        }
        envs = {v: {"EDGEWISE_STAGE_TIMES": str(tmp / f"stages-{v}")} for v in VARIANTS}
        envs["edge"]["EDGEWISE_TRACK_QUEUE_EXPOSURES"] = "always"
        with (
            _server(procs, "floor", commands["floor"], envs["floor"]) as (floor_at, floor_cpu),
            _server(procs, "metered", commands["metered"], envs["metered"]) as (metered_at, metered_cpu),
            _server(procs, "edge", commands["edge"], envs["edge"]) as (edge_at, edge_cpu),
        ):
            servers = {"floor": (floor_at, floor_cpu), "metered": (metered_at, metered_cpu)}
            servers["edge"] = (edge_at, edge_cpu)
            for i in range(rounds):
                order = VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS))
                for v in order:
                    target, cpu = servers[v]
                    row = _round(v, target, cpu, tmp / f"stages-{v}", load, tmp / f"l-{v}-{i}.json")
                    row["round"] = i
                    print(f"[bench.transport] {json.dumps(row)}", file=sys.stderr, flush=True)
                    rows.append(row)
    medians: dict[str, Any] = {}
    for v in VARIANTS:
        mine = [r for r in rows if r["variant"] == v]
        groups = {g for r in mine for g in r["threads_us_per_call"]}
        medians[v] = {
            "ok_per_s": statistics.median(r["ok_per_s"] for r in mine),
            "us_per_call": statistics.median(r["us_per_call"] for r in mine),
            "workers_us_per_call": statistics.median(r["workers_us_per_call"] for r in mine),
            "threads_us_per_call": {
                g: statistics.median(r["threads_us_per_call"].get(g, 0.0) for r in mine)
                for g in sorted(groups)
            },
            "stages_us_per_call": {
                s: statistics.median(r["stages_us_per_call"].get(s, 0.0) for r in mine) for s in STAGE_ORDER
            },
            "gc_per_1000_calls": [
                statistics.median(r["gc_per_1000_calls"][k] for r in mine) for k in range(3)
            ],
        }
    return {"rounds": rows, "medians": medians, "duration_s": duration, "concurrency": concurrency}


def _format(result: dict[str, Any]) -> str:
    m = result["medians"]
    lines = [
        f"medians over the rounds ({result['duration_s']:g} s closed loop, "
        f"{result['concurrency']} in flight):"
    ]
    lines.append(f"  {'':34s}" + "".join(f"{v:>10s}" for v in VARIANTS))
    for key, label in (
        ("ok_per_s", "calls/s"),
        ("us_per_call", "server CPU µs/call"),
        ("workers_us_per_call", "workers µs/call"),
    ):
        lines.append(f"  {label:34s}" + "".join(f"{m[v][key]:>10.1f}" for v in VARIANTS))
    groups = sorted({g for v in VARIANTS for g in m[v]["threads_us_per_call"]})
    for g in groups:
        lines.append(
            f"  {'  thread ' + g:34s}"
            + "".join(f"{m[v]['threads_us_per_call'].get(g, 0.0):>10.1f}" for v in VARIANTS)
        )
    for stage in STAGE_ORDER:
        lines.append(
            f"  {'  stage ' + stage:34s}"
            + "".join(f"{m[v]['stages_us_per_call'].get(stage, 0.0):>10.1f}" for v in VARIANTS)
        )
    for k in range(3):
        lines.append(
            f"  {f'GC gen{k} per 1000 calls':34s}"
            + "".join(f"{m[v]['gc_per_1000_calls'][k]:>10.2f}" for v in VARIANTS)
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.transport", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per load (default 6)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight (default 32)")
    parser.add_argument("--clients", type=int, default=2, help="load client processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="a small bundle")
    parser.add_argument("--json", action="store_true", help="print every round as JSON")
    args = parser.parse_args(argv)
    result = run(args.rounds, args.duration, args.concurrency, args.clients, args.quick)
    print(json.dumps(result, indent=2) if args.json else _format(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
