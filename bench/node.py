"""Edge node against the gRPC floor in one run: the serving targets measured side by side.

    python -m bench.node                 # about 5 minutes; --quick for a smoke run, --json for a report

Runs real processes on loopback, one server at a time so they never share the cores:

1. `edgewise bench floor-server --workers 2 --pin` (a no-op Personalizer on the same transport):
   closed loop (the capacity of the gRPC floor), and the same with h2load when it is installed;
2. `edgewise edge serve --workers 2 --pin` on the synthetic bundle (100k users x 10k items, the one
   `python -m bench.pipeline` caches) **queueing exposure records** (`track.queue_exposures =
   "always"`, as a node with a control plane does; a standalone node queues none by default): closed
   loop (Decide capacity), h2load, an open loop at 50% of that capacity, then durable Track with one
   event per call and with 50 events per call;
3. the floor server again, open loop at the same rate as the edge's;
4. the edge queueing no exposures (`track.queue_exposures = "never"`, what a standalone node does):
   closed loop and the same open loop (skipped with `--no-unqueued`);
5. the edge queueing exposures again, with per-stage CPU counters on (`EDGEWISE_STAGE_TIMES`,
   edge/stage_times.py): closed loop, and where a Decide's server CPU goes, by stage (skipped with
   `--no-stages`);
6. the edge queueing exposures on the 100k-item bundle (100k users x 100k items, the one
   `python -m bench.pipeline --items 100000` caches; its catalog is scanned through a partition,
   edgewise.core.partition): closed loop, the server's RSS and the store's size (skipped with
   `--no-100k`; the first run generates the bundle, about 2 minutes).

Every Python load is `edgewise bench load` (its client processes share the machine with the server: on
a 2-core VM they take a large part of a core, so capacities here are lower bounds of what the node
would do with the load generator elsewhere). h2load (Debian's nghttp2-client), a C load generator
that costs the server's cores far less, sends the same request bytes (one Decide of the load
generator's pool, with consent and a seed item: a gRPC frame, POST /edgewise.v1.Personalizer/Decide)
with the same number of calls in flight, for the same duration, after a one-second warm-up run.

Server CPU per call comes from /proc: utime + stime of the server process and all its descendants
(supervisor and workers) over each load, less what they use idle (measured for a second before the
loads), divided by the calls completed in the load (warm-up included, as the CPU is).

`--json` carries the issue's ratios: `capacity_ratio` (edge Decide capacity with exposures queued /
the floor's, closed loop), `p99_ratio` (edge p99 / floor p99 in the open loop at 50% of the edge's
capacity), `cpu_ratio` (server CPU per Decide / per no-op call), and their variants (`_h2load`,
`_no_exposures`, and `capacity_ratio_100k` / `cpu_ratio_100k`: the 100k-item edge against the same
floor, measured at the start of the run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from edgewise.bench.load import LoadConfig, decide_requests, parse_mix
from edgewise.bench.pipeline import prepare_bundle
from edgewise.edge.stage_times import STAGES
from edgewise.processes import Process, Processes, edgewise_command

TARGET_DECIDE_PER_S: Final = 8_000
TARGET_P99_RATIO_ISSUE4: Final = 1.3
TARGET_TRACK_EVENTS_PER_S: Final = 5_000
TARGET_CAPACITY_RATIO: Final = 0.8  # issue 17
TARGET_P99_RATIO: Final = 1.5  # issue 17
TARGET_CPU_RATIO: Final = 1.3  # issue 17
TARGET_CAPACITY_RATIO_100K: Final = 0.6  # issue 17: Decide capacity on the 100k-item bundle / the floor's
CATALOG_100K: Final = (100_000, 100_000)  # users, items: the bundle `bench.pipeline --items 100000` caches
START_TIMEOUT_S: Final = 180.0
IDLE_SAMPLE_S: Final = 1.0
H2LOAD_CONNECTIONS: Final = 16
DECIDE_PATH: Final = "/edgewise.v1.Personalizer/Decide"
STAGE_ORDER: Final = STAGES  # edge/stage_times.py: what EDGEWISE_STAGE_TIMES records, in order
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


def _log(message: str) -> None:
    print(f"[bench.node] {message}", file=sys.stderr, flush=True)


# -- server CPU from /proc ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += _children(pid)
    return pids


def _cpu_s(pid: int) -> float | None:
    """utime + stime of `pid` in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15 of stat(5)


@dataclass
class _CpuSample:
    at: float  # monotonic
    by_pid: dict[int, float]


class ServerCpu:
    """CPU of a server's process tree (its root: the supervisor, or the floor's parent process)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.idle_cores = 0.0  # CPU seconds per second the tree uses with no load

    def sample(self) -> _CpuSample:
        by_pid = {pid: cpu for pid in _tree(self.root) if (cpu := _cpu_s(pid)) is not None}
        return _CpuSample(time.monotonic(), by_pid)

    def measure_idle(self, seconds: float = IDLE_SAMPLE_S) -> None:
        before = self.sample()
        time.sleep(seconds)
        after = self.sample()
        supervisor, others = self._delta(before, after)
        self.idle_cores = (supervisor + others) / max(1e-9, after.at - before.at)

    def _delta(self, before: _CpuSample, after: _CpuSample) -> tuple[float, float]:
        """(root's CPU seconds, the descendants') between two samples (processes in both only)."""
        common = before.by_pid.keys() & after.by_pid.keys()
        root = after.by_pid.get(self.root, 0.0) - before.by_pid.get(self.root, 0.0)
        others = sum(after.by_pid[p] - before.by_pid[p] for p in common if p != self.root)
        return root, others

    def per_call(self, before: _CpuSample, after: _CpuSample, calls: int) -> dict[str, Any]:
        supervisor, workers = self._delta(before, after)
        wall = after.at - before.at
        idle = self.idle_cores * wall
        busy = max(0.0, supervisor + workers - idle)
        return {
            "calls": calls,
            "wall_s": round(wall, 3),
            "cpu_s": round(supervisor + workers, 3),
            "supervisor_s": round(supervisor, 3),
            "workers_s": round(workers, 3),
            "idle_s": round(idle, 3),
            "cores_busy": round((supervisor + workers) / wall, 3) if wall > 0 else 0.0,
            "us_per_call": round(1e6 * busy / calls, 1) if calls else None,
            "workers_us_per_call": round(1e6 * max(0.0, workers) / calls, 1) if calls else None,
            "supervisor_us_per_call": round(1e6 * max(0.0, supervisor) / calls, 1) if calls else None,
        }


# -- loads ---------------------------------------------------------------------------------------------


@contextmanager
def _server(
    procs: Processes, name: str, args: Sequence[str], env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, ServerCpu]]:
    """Start `edgewise ARGS` (its own process group, see edgewise.processes), yield its address and CPU
    meter once ready (idle CPU measured), stop it (SIGTERM, SIGKILL to its group after the grace)."""
    proc: Process = procs.start(name, args, env)
    try:
        info = proc.wait_ready(START_TIMEOUT_S)
        cpu = ServerCpu(int(info["pid"]))
        cpu.measure_idle()
        yield str(info["address"]), cpu
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


def _measured_load(target: str, args: Sequence[str], out: Path, cpu: ServerCpu) -> dict[str, Any]:
    """`_load` with the server's CPU per call over it."""
    before = cpu.sample()
    report = _load(target, args, out)
    after = cpu.sample()
    calls = sum(int(c["completed"]) for c in report["clients"])
    return {**_figures(report), "server_cpu": cpu.per_call(before, after, calls)}


def _check_request(target: str, body: bytes) -> None:
    """One Decide with `body` over a real channel: h2load cannot see gRPC status codes (trailers)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            DECIDE_PATH, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        call(body, timeout=10)


_H2_DONE = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed")
_H2_RATE = re.compile(r"finished in ([\d.]+)(s|ms|us), ([\d.]+) req/s")
_H2_UNIT: Final = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def _h2load(
    h2load: str, target: str, body_file: Path, seconds: float, concurrency: int, cpu: ServerCpu | None
) -> dict[str, Any]:
    """Decide calls with h2load for `seconds` (`-D`: every connection sends until then; with `-n` each
    connection gets an equal share of the calls, and the connections of the faster worker run out
    first), `concurrency` in flight over H2LOAD_CONNECTIONS connections. Server CPU per call: over
    h2load's whole run (connecting takes milliseconds) / the calls it completed."""
    connections = min(H2LOAD_CONNECTIONS, concurrency)
    streams = max(1, concurrency // connections)
    cmd = [
        h2load,
        "-D",
        str(max(1, round(seconds))),
        "-c",
        str(connections),
        "-m",
        str(streams),
        "-t",
        "1",
        "-d",
        str(body_file),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        "grpc-timeout: 1000m",
        f"http://{target}{DECIDE_PATH}",
    ]
    before = cpu.sample() if cpu is not None else None
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stdout, _ = proc.communicate(timeout=600)
    after = cpu.sample() if cpu is not None else None
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu_s = reaped.ru_utime + reaped.ru_stime - children.ru_utime - children.ru_stime
    done = _H2_DONE.search(stdout)
    rate = _H2_RATE.search(stdout)
    if proc.returncode != 0 or done is None or rate is None:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {stdout[-2000:]}")
    succeeded, failed = int(done.group(4)), int(done.group(5))
    took = float(rate.group(1)) * _H2_UNIT[rate.group(2)]
    out: dict[str, Any] = {
        "ok_per_s": round(succeeded / took, 1),
        "calls": int(done.group(1)),
        "succeeded": succeeded,
        "failed": failed,
        "seconds": round(took, 3),
        "in_flight": connections * streams,
        "connections": connections,
        "client_cpu": round(client_cpu_s / took, 3),
    }
    if cpu is not None and before is not None and after is not None:
        out["server_cpu"] = cpu.per_call(before, after, succeeded)
    return out


def _h2load_capacity(
    h2load: str, target: str, body_file: Path, duration: float, concurrency: int, cpu: ServerCpu
) -> dict[str, Any]:
    """A one-second warm-up run, then `duration` seconds measured."""
    _log(f"h2load: {target}, {concurrency} in flight")
    _h2load(h2load, target, body_file, 1, concurrency, None)
    return _h2load(h2load, target, body_file, duration, concurrency, cpu)


# -- stage counters ----------------------------------------------------------------------------------


def _stage_totals(directory: Path) -> dict[str, int]:
    """The per-stage CPU nanoseconds and calls of every worker's stage file, summed."""
    sums: dict[str, int] = {}
    for path in directory.glob("stages-*.json"):
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key, value in values.items():
            if key in STAGE_ORDER or key == "calls":
                sums[key] = sums.get(key, 0) + int(value)
    return sums


def _breakdown(before: dict[str, int], after: dict[str, int], load: dict[str, Any]) -> dict[str, Any]:
    """Server CPU per Decide by stage (µs), with gRPC and everything else as what the workers' /proc
    CPU per call leaves."""
    calls = after.get("calls", 0) - before.get("calls", 0)
    if calls <= 0:
        return {}
    stages = {s: round((after.get(s, 0) - before.get(s, 0)) / calls / 1000, 1) for s in STAGE_ORDER}
    server = load["server_cpu"]
    workers = float(server["workers_us_per_call"] or 0.0)
    idle_per_call = 1e6 * float(server["idle_s"]) / max(1, int(server["calls"]))
    workers_busy = workers - idle_per_call
    accounted = sum(stages.values())
    return {
        "calls": calls,
        "stages_us": stages,
        "grpc_and_rest_us": round(workers_busy - accounted, 1),
        "workers_us": round(workers_busy, 1),
        "supervisor_us": server["supervisor_us_per_call"],
        "total_us": server["us_per_call"],
    }


# -- the 100k-item catalog ------------------------------------------------------------------------------


def _rss_mb(root: int) -> dict[str, Any]:
    """Resident memory of a server's processes (MB), each and summed: VmRSS, and its parts RssAnon
    (the process's own memory) and RssFile (pages of files it maps: the LMDB map, which the processes
    share, so the sum counts those pages once per process that read them)."""
    each: dict[str, dict[str, float]] = {}
    for pid in _tree(root):
        fields: dict[str, float] = {}
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("VmRSS", "RssAnon", "RssFile"):
                        fields[key] = round(int(value.split()[0]) / 1024, 1)
        except OSError:
            continue
        each[str(pid)] = fields
    total = {
        key: round(sum(f.get(key, 0.0) for f in each.values()), 1) for key in ("VmRSS", "RssAnon", "RssFile")
    }
    return {
        "sum_mb": total["VmRSS"],
        "anon_mb": total["RssAnon"],
        "file_mb": total["RssFile"],
        "by_pid": each,
    }


def _catalog_100k(
    procs: Processes, tmp: Path, duration: float, concurrency: int, clients: int, quick: bool
) -> dict[str, Any]:
    """The edge on the 100k-item bundle (exposures queued, as in the main phase): closed loop, with the
    server's RSS and the store's size after it. Its capacity over the floor's of the same run is
    `capacity_ratio_100k`."""
    users, items = CATALOG_100K
    bundle, _, _ = prepare_bundle(None, users, items, 7)
    args = ["--duration", str(duration), "--warmup", "1" if quick else "2", "--clients", str(clients)]
    args += ["--users", str(users), "--items", str(items), "--mix", "decide=1"]
    args += ["--concurrency", str(concurrency)]
    data = tmp / "edge-data-100k"
    cmd = ["edge", "serve", "--data", str(data), "--bundle", str(bundle.path), "--listen", "127.0.0.1:0"]
    cmd += ["--workers", "2", "--pin"]
    env = {"EDGEWISE_TRACK_QUEUE_EXPOSURES": "always"}
    with _server(procs, "edge-100k", cmd, env) as (edge, cpu):
        _log(f"edge node at {edge} (100k items, exposures queued)")
        capacity = _measured_load(edge, args, tmp / "l10.json", cpu)
        rss = _rss_mb(cpu.root)
    store = data / "data.mdb"
    return {
        "bundle": str(bundle.path),
        "users": users,
        "items": items,
        "capacity": capacity,
        "server_rss": rss,
        "store_file_mb": round(store.stat().st_size / (1 << 20), 1) if store.exists() else None,
        "store_on_disk_mb": round(store.stat().st_blocks * 512 / (1 << 20), 1) if store.exists() else None,
    }


# -- the run --------------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def run(
    duration: float,
    concurrency: int,
    clients: int,
    quick: bool,
    *,
    h2load: str | None = None,
    unqueued: bool = True,
    stages: bool = True,
    track: bool = True,
    catalog_100k: bool = True,
) -> dict[str, Any]:
    users, items = (20_000, 2_000) if quick else (100_000, 10_000)
    bundle, _, _ = prepare_bundle(None, users, items, 7)
    common = ["--duration", str(duration), "--warmup", "1" if quick else "2", "--clients", str(clients)]
    common += ["--users", str(users), "--items", str(items)]
    decide = [*common, "--mix", "decide=1"]
    closed = [*decide, "--concurrency", str(concurrency)]
    rate = 50
    results: dict[str, Any] = {
        "bundle": str(bundle.path),
        "duration_s": duration,
        "clients": clients,
        "concurrency": concurrency,
        "queue_exposures": "always",
        "h2load": h2load,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
    }
    body = decide_requests(LoadConfig(concurrency=1, mix=parse_mix("decide=1"), users=users, items=items))[0]
    with (
        tempfile.TemporaryDirectory(prefix="edgewise-bench-node-") as tmp_name,
        Processes(Path(tmp_name) / "procs", {"PYTHONUNBUFFERED": "1"}, grace=10) as procs,
    ):
        tmp = Path(tmp_name)
        body_file = tmp / "decide.grpc"
        body_file.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)  # gRPC frame, uncompressed
        floor_cmd = ["bench", "floor-server", "--listen", "127.0.0.1:0", "--workers", "2", "--pin"]

        def edge_cmd(data: str) -> list[str]:
            return [
                "edge",
                "serve",
                "--data",
                str(tmp / data),
                "--bundle",
                str(bundle.path),
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--pin",
            ]

        queued = {"EDGEWISE_TRACK_QUEUE_EXPOSURES": "always"}
        with _server(procs, "floor", floor_cmd) as (floor, cpu):
            _log(f"floor server at {floor}")
            results["floor_capacity"] = _measured_load(floor, closed, tmp / "l1.json", cpu)
            if h2load:
                _check_request(floor, body)
                results["floor_capacity_h2load"] = _h2load_capacity(
                    h2load, floor, body_file, duration, concurrency, cpu
                )
        with _server(procs, "edge", edge_cmd("edge-data"), queued) as (edge, cpu):
            _log(f"edge node at {edge} (exposures queued)")
            capacity = _measured_load(edge, closed, tmp / "l2.json", cpu)
            results["edge_capacity"] = capacity
            if h2load:
                _check_request(edge, body)
                results["edge_capacity_h2load"] = _h2load_capacity(
                    h2load, edge, body_file, duration, concurrency, cpu
                )
            rate = max(50, int(capacity["ok_per_s"] * 0.5))
            results["open_rate"] = rate
            results["edge_open"] = _measured_load(edge, [*decide, "--rate", str(rate)], tmp / "l3.json", cpu)
            if track:
                track_args = [*common, "--mix", "track=1", "--concurrency", str(concurrency)]
                single = _figures(_load(edge, track_args, tmp / "l4.json"))
                batched = _figures(_load(edge, [*track_args, "--track-batch", "50"], tmp / "l5.json"))
                results["track_single"] = {**single, "events_per_s": single["ok_per_s"]}
                results["track_batch50"] = {**batched, "events_per_s": round(batched["ok_per_s"] * 50, 1)}
        with _server(procs, "floor2", floor_cmd) as (floor, cpu):
            open_loop = [*decide, "--rate", str(rate)]
            results["floor_open"] = _measured_load(floor, open_loop, tmp / "l6.json", cpu)
        if unqueued:
            never = {"EDGEWISE_TRACK_QUEUE_EXPOSURES": "never"}
            with _server(procs, "edge-unqueued", edge_cmd("edge-data-2"), never) as (edge, cpu):
                _log(f"edge node at {edge} (no exposures queued)")
                results["edge_capacity_no_exposures"] = _measured_load(edge, closed, tmp / "l7.json", cpu)
                results["edge_open_no_exposures"] = _measured_load(edge, open_loop, tmp / "l8.json", cpu)
        if stages:
            stage_dir = tmp / "stages"
            env = {**queued, "EDGEWISE_STAGE_TIMES": str(stage_dir)}
            with _server(procs, "edge-stages", edge_cmd("edge-data-3"), env) as (edge, cpu):
                _log(f"edge node at {edge} (exposures queued, stage counters on)")
                time.sleep(0.5)  # the workers' first stage files
                before = _stage_totals(stage_dir)
                load = _measured_load(edge, closed, tmp / "l9.json", cpu)
                time.sleep(0.5)  # written every 0.2 s
                after = _stage_totals(stage_dir)
                results["edge_capacity_stages"] = load
                results["breakdown"] = _breakdown(before, after, load)
        if catalog_100k:
            results["catalog_100k"] = _catalog_100k(procs, tmp, duration, concurrency, clients, quick)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    _verdicts(results)
    return results


def _cpu_per_call(figures: dict[str, Any] | None) -> float | None:
    if not figures or "server_cpu" not in figures:
        return None
    value = figures["server_cpu"]["us_per_call"]
    return float(value) if value is not None else None


def _verdicts(results: dict[str, Any]) -> None:
    r = results
    cap = r["edge_capacity"]["ok_per_s"]
    floor_cap = r["floor_capacity"]["ok_per_s"]
    r["capacity_ratio"] = _ratio(cap, floor_cap)
    r["p99_ratio"] = _ratio(r["edge_open"]["p99_ms"], r["floor_open"]["p99_ms"])
    r["cpu_ratio"] = _ratio(_cpu_per_call(r["edge_capacity"]), _cpu_per_call(r["floor_capacity"]))
    if "edge_capacity_h2load" in r:
        r["capacity_ratio_h2load"] = _ratio(
            r["edge_capacity_h2load"]["ok_per_s"], r["floor_capacity_h2load"]["ok_per_s"]
        )
        r["cpu_ratio_h2load"] = _ratio(
            _cpu_per_call(r["edge_capacity_h2load"]), _cpu_per_call(r["floor_capacity_h2load"])
        )
    if "edge_capacity_no_exposures" in r:
        r["capacity_ratio_no_exposures"] = _ratio(r["edge_capacity_no_exposures"]["ok_per_s"], floor_cap)
        r["p99_ratio_no_exposures"] = _ratio(r["edge_open_no_exposures"]["p99_ms"], r["floor_open"]["p99_ms"])
        r["cpu_ratio_no_exposures"] = _ratio(
            _cpu_per_call(r["edge_capacity_no_exposures"]), _cpu_per_call(r["floor_capacity"])
        )

    if "catalog_100k" in r:
        r["capacity_ratio_100k"] = _ratio(r["catalog_100k"]["capacity"]["ok_per_s"], floor_cap)
        r["cpu_ratio_100k"] = _ratio(
            _cpu_per_call(r["catalog_100k"]["capacity"]), _cpu_per_call(r["floor_capacity"])
        )

    def verdict(figure: float | None, target: float, at_least: bool) -> dict[str, Any]:
        met = figure is not None and (figure >= target if at_least else figure <= target)
        return {"figure": figure, "target": target, "met": met}

    verdicts = {
        "capacity_ratio": verdict(r["capacity_ratio"], TARGET_CAPACITY_RATIO, True),
        "p99_ratio": verdict(r["p99_ratio"], TARGET_P99_RATIO, False),
        "cpu_ratio": verdict(r["cpu_ratio"], TARGET_CPU_RATIO, False),
    }
    if "capacity_ratio_h2load" in r:
        verdicts["capacity_ratio_h2load"] = verdict(r["capacity_ratio_h2load"], TARGET_CAPACITY_RATIO, True)
        verdicts["cpu_ratio_h2load"] = verdict(r["cpu_ratio_h2load"], TARGET_CPU_RATIO, False)
    if "capacity_ratio_100k" in r:
        verdicts["capacity_ratio_100k"] = verdict(r["capacity_ratio_100k"], TARGET_CAPACITY_RATIO_100K, True)
    verdicts["decide_per_s"] = verdict(cap, TARGET_DECIDE_PER_S, True)
    verdicts["p99_ratio_at_half_capacity"] = verdict(r["p99_ratio"], TARGET_P99_RATIO_ISSUE4, False)
    if "track_single" in r:
        verdicts["track_events_per_s_single"] = verdict(
            r["track_single"]["events_per_s"], TARGET_TRACK_EVENTS_PER_S, True
        )
        verdicts["track_events_per_s_batch50"] = verdict(
            r["track_batch50"]["events_per_s"], TARGET_TRACK_EVENTS_PER_S, True
        )
    r["verdicts"] = verdicts


# -- report ------------------------------------------------------------------------------------------------


def _format(r: dict[str, Any]) -> str:
    def cpu(f: dict[str, Any]) -> str:
        s = f.get("server_cpu")
        if not s or s["us_per_call"] is None:
            return ""
        return f"  server {s['us_per_call']:>6.0f} us/call ({s['cores_busy']:.2f} cores)"

    def row(name: str, f: dict[str, Any], extra: str = "") -> str:
        errors = sum(f["errors"].values())
        return (
            f"{name:46s} {f['ok_per_s']:>7,.0f}/s  p50 {f['p50_ms']:>6.2f}  p99 {f['p99_ms']:>6.2f}  "
            f"max {f['max_ms']:>7.2f} ms  err {errors}  client {f['client_cpu_max']:.0%}{cpu(f)}{extra}"
        )

    def h2row(name: str, f: dict[str, Any]) -> str:
        return (
            f"{name:46s} {f['ok_per_s']:>7,.0f}/s  {f['succeeded']} ok, {f['failed']} failed in "
            f"{f['seconds']:.1f} s, {f['in_flight']} in flight, client {f['client_cpu']:.0%}{cpu(f)}"
        )

    rate = r["open_rate"]
    lines = [
        f"bench.node: edge vs gRPC floor, 2 workers pinned, {r['clients']} load client processes on the same "
        f"machine ({r['machine']['cpus']} cpus), {r['duration_s']:.0f} s per load; bundle {r['bundle']}",
        f"load average {r['machine']['loadavg_start']} at start, {r['machine']['loadavg_end']} at end",
        "",
        row(f"floor: closed loop, {r['concurrency']} in flight", r["floor_capacity"]),
        row(f"edge Decide (exposures queued): closed loop, {r['concurrency']}", r["edge_capacity"]),
    ]
    if "edge_capacity_no_exposures" in r:
        lines.append(row("edge Decide (no exposures): closed loop", r["edge_capacity_no_exposures"]))
    if "floor_capacity_h2load" in r:
        lines.append(h2row("floor: h2load closed loop", r["floor_capacity_h2load"]))
        lines.append(h2row("edge Decide (exposures queued): h2load", r["edge_capacity_h2load"]))
    lines.append(row(f"edge Decide (exposures queued): open {rate}/s", r["edge_open"]))
    if "edge_open_no_exposures" in r:
        lines.append(row(f"edge Decide (no exposures): open {rate}/s", r["edge_open_no_exposures"]))
    lines.append(row(f"floor: open loop at {rate}/s", r["floor_open"]))
    if "track_single" in r:
        lines.append(row("edge Track, 1 event per call (durable)", r["track_single"]))
        lines.append(
            row(
                "edge Track, 50 events per call (durable)",
                r["track_batch50"],
                f"  = {r['track_batch50']['events_per_s']:,.0f} events/s",
            )
        )
    c100 = r.get("catalog_100k")
    if c100:
        lines.append(row(f"edge Decide, {c100['items']:,} items: closed loop", c100["capacity"]))
        lines.append(
            f"  100k-item node: RSS {c100['server_rss']['sum_mb']} MB (supervisor + workers): "
            f"{c100['server_rss']['anon_mb']} MB their own, {c100['server_rss']['file_mb']} MB mapped "
            f"file pages (the store's, counted in each process), store data file {c100['store_file_mb']} MB "
            f"({c100['store_on_disk_mb']} MB on disk)"
        )
    b = r.get("breakdown")
    if b:
        cap = r["edge_capacity_stages"]
        lines += [
            "",
            f"server CPU per Decide by stage (exposures queued, stage counters on: closed loop "
            f"{cap['ok_per_s']:,.0f}/s, {b['calls']} calls counted), us:",
        ]
        for stage, us in b["stages_us"].items():
            lines.append(f"  {stage:34s} {us:>7.1f}")
        lines += [
            f"  {'gRPC and everything else':34s} {b['grpc_and_rest_us']:>7.1f}",
            f"  {'= workers (from /proc)':34s} {b['workers_us']:>7.1f}",
            f"  {'supervisor (from /proc)':34s} {b['supervisor_us']!s:>7}",
            f"  {'server total':34s} {b['total_us']!s:>7}",
        ]
    lines.append("")
    for name in ("capacity_ratio", "p99_ratio", "cpu_ratio"):
        for suffix in ("", "_h2load", "_no_exposures", "_100k"):
            if f"{name}{suffix}" in r:
                lines.append(f"{name + suffix:34s} {r[name + suffix]!s:>10}")
    lines.append("")
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
    parser.add_argument(
        "--h2load", default=shutil.which("h2load"), help="h2load binary (default: on PATH; '' to skip)"
    )
    parser.add_argument("--no-unqueued", action="store_true", help="skip the edge queueing no exposures")
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage CPU breakdown")
    parser.add_argument("--no-track", action="store_true", help="skip the Track loads")
    parser.add_argument(
        "--no-100k",
        action="store_true",
        help="skip the edge on the 100k-item bundle (capacity_ratio_100k; the first run generates the "
        "bundle, about 2 minutes, then cached)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (2.0 if args.quick else 10.0)
    result = run(
        duration,
        args.concurrency,
        args.clients,
        args.quick,
        h2load=args.h2load or None,
        unqueued=not args.no_unqueued,
        stages=not args.no_stages,
        track=not args.no_track,
        catalog_100k=not args.no_100k,
    )
    print(json.dumps(result, indent=2) if args.json else _format(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
