"""The central tier on NATS JetStream against the embedded control plane, in one run (docs/central.md).

Run from the repository root (needs `pip install -e '.[nats]'`):

    python -m bench.central            # 40 deltas per side, 20k events per replica count
    python -m bench.central --quick    # 10 deltas, 4k events
    python -m bench.central --json

Everything is a real process on loopback: a 3-server JetStream cluster (`edgewise.nats_cluster`, R3
streams), `control serve --nats` replicas, an embedded `control serve`, and `edge serve --workers 1` edges.

1. Push -> applied on all edges: the embedded control plane with 2 edges, and replicas A and B with one
   edge each (so every push through A reaches an edge through B's copy of the log). `--deltas` small
   deltas per side, pushed in alternating rounds (embedded, JetStream, embedded, ...) so both see the same
   machine load; latency = the latest `sync_applied` ts over the side's edges minus the time the Push
   returned (as `bench.sync`). The ratio of the p99s is the figure the issue bounds (<= 1.5).
2. Events stored and folded per second, with 1 and with 2 replicas: `--events` view events tracked into
   one edge per replica (split evenly), at full speed; stored = `events_total` (distinct records in the
   replica's copy of the events stream: it trails the stream by the copy's lag) reaching the count,
   folded = the events of the replicas' `profiles_folded` lines summing to it (each replica folds the
   partitions it holds the leases of). CPU seconds of every replica process (utime + stime from /proc)
   over the stage, per 100k events, and the capacity of a 16-core control machine from that per-event
   cost.
3. Failover: a NATS server SIGKILLed while pushes go through a replica every 50 ms: the longest gap
   between acknowledged pushes (time until pushes are accepted again), and that no acknowledged push is
   missing from the history afterwards.
4. Replica failover: replicas A and B, `--edges` edges following both (`--control a,b` for half of them,
   `--control b,a` for the others). `--rounds` times: the replica the most edges follow is SIGKILLed,
   a small delta pushed through the other at once, and each edge that followed the killed one timed from
   the kill to its `sync_applied` of that push (its switch, resume and apply); then the killed replica is
   restarted on its port and cache (the edges stay where they are, so the next round kills the other
   one). Also counted: full snapshots the edges got after their first (a switch needs none).
5. Partition takeover: replicas A and B (the events partitions spread over both, one lease each);
   `--takeovers` times the replica holding the most is SIGKILLed and timed from the kill to the
   survivor's `fold_partitions` line holding every partition, then restarted on its cache (and the
   partitions spread again).
6. Canary rollouts (`--only-rollout` runs it alone): the embedded control plane with 2 edges against
   replicas A and B with one edge each. `--rollouts` rounds, alternating sides: a small delta pushed with
   `--canary-nodes` = the edge on B (through A on the central tier), timed from the Push call to the
   canary edge's `sync_applied` (from the call, not its return: the edge on B may apply the candidate
   before A's reply arrives); then `ctl promote` (through B), timed from the call to the other edge's (the
   one on A) `sync_applied`, which held at the base version meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from edgewise.bench.sync import (
    EDGE_TOKEN,
    OPS_TOKEN,
    BenchError,
    Control,
    LogTail,
    _applied_at,
    _machine,
    _percentiles,
    _user_ids,
    _wait_applied,
    small_delta,
    spawn_edge,
    track_all,
    track_requests,
)
from edgewise.client import ControlClient
from edgewise.nats_cluster import NatsCluster
from edgewise.offline.synth import synth_bundle
from edgewise.processes import Process, Processes, wait_ready
from edgewise.v1 import sync_pb2

CORES_TARGET: Final = 16


def _log(message: str) -> None:
    print(f"[bench.central] {message}", file=sys.stderr, flush=True)


def _control(
    procs: Processes, name: str, data: Path, *extra: str, listen: str = "127.0.0.1:0"
) -> tuple[Process, str]:
    p = procs.start(name, ["control", "serve", "--data", str(data), "--listen", listen, *extra])
    (info,) = wait_ready([p], 120)
    return p, str(info["address"])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _edges(
    procs: Processes, root: Path, prefix: str, addresses: Sequence[str], version: int
) -> tuple[list[Process], list[LogTail]]:
    edges = [spawn_edge(procs, f"{prefix}{i}", root / f"{prefix}{i}", a) for i, a in enumerate(addresses)]
    wait_ready(edges, 120)
    tails = [LogTail(e.log_path) for e in edges]
    _wait_applied(tails, edges, version, 120)
    return edges, tails


def stage_push(
    procs: Processes, root: Path, cluster: NatsCluster, bundle: Path, deltas: int
) -> dict[str, Any]:
    embedded, e_addr = _control(procs, "embedded", root / "embedded")
    a, a_addr = _control(procs, "ra", root / "ra", "--nats", cluster.url_list)
    b, b_addr = _control(procs, "rb", root / "rb", "--nats", cluster.url_list)
    sides = {"embedded": Control(e_addr), "jetstream": Control(a_addr)}
    base_e = sides["embedded"].push_bundle(bundle)
    base_j = sides["jetstream"].push_bundle(bundle)
    edges_e, tails_e = _edges(procs, root, "ee", [e_addr, e_addr], base_e.version)
    edges_j, tails_j = _edges(procs, root, "je", [a_addr, b_addr], base_j.version)
    users = _user_ids(bundle, 200)
    rng = random.Random(7)
    latency: dict[str, list[float]] = {"embedded": [], "jetstream": []}
    push_ms: dict[str, list[float]] = {"embedded": [], "jetstream": []}
    time.sleep(1.0)
    for i in range(deltas):
        for side, tails, edges in (("embedded", tails_e, edges_e), ("jetstream", tails_j, edges_j)):
            pushed = sides[side].push_delta(f"d{i}.jsonl", small_delta(users, i, 5, rng))
            _wait_applied(tails, edges, pushed.version, 30)
            last = max(_applied_at(t, pushed.version).ts for t in tails)
            latency[side].append((last - pushed.returned_wall) * 1000)
            push_ms[side].append((pushed.returned_wall - pushed.sent_wall) * 1000)
            time.sleep(rng.uniform(0.02, 0.05))
    for c in sides.values():
        c.close()
    for p in (*edges_e, *edges_j, embedded, a, b):
        p.stop()
    out: dict[str, Any] = {
        side: {"push_to_applied_ms": _percentiles(latency[side]), "push_call_ms": _percentiles(push_ms[side])}
        for side in latency
    }
    e99 = float(out["embedded"]["push_to_applied_ms"]["p99"])
    j99 = float(out["jetstream"]["push_to_applied_ms"]["p99"])
    out["p99_ratio"] = round(j99 / max(e99, 1e-6), 2)
    return out


def stage_rollout(
    procs: Processes, root: Path, cluster: NatsCluster, bundle: Path, rounds: int
) -> dict[str, Any]:
    _, e_addr = _control(procs, "embedded", root / "embedded")
    _, a_addr = _control(procs, "ra", root / "ra", "--nats", cluster.url_list)
    _, b_addr = _control(procs, "rb", root / "rb", "--nats", cluster.url_list)
    sides = {
        "embedded": (ControlClient(e_addr, token=OPS_TOKEN), ControlClient(e_addr, token=OPS_TOKEN)),
        "jetstream": (ControlClient(a_addr, token=OPS_TOKEN), ControlClient(b_addr, token=OPS_TOKEN)),
    }
    edges: dict[str, tuple[list[Process], list[LogTail]]] = {}
    for side, prefix, addresses in (
        ("embedded", "re", [e_addr, e_addr]),
        ("jetstream", "rj", [a_addr, b_addr]),
    ):
        base = sides[side][0].push(bundle).version
        edges[side] = _edges(procs, root, prefix, addresses, base)
    users = _user_ids(bundle, 200)
    rng = random.Random(11)
    canary_ms: dict[str, list[float]] = {"embedded": [], "jetstream": []}
    promote_ms: dict[str, list[float]] = {"embedded": [], "jetstream": []}
    time.sleep(1.0)
    for i in range(rounds):
        for side, prefix in (("embedded", "re"), ("jetstream", "rj")):
            pusher, promoter = sides[side]
            (procs_other, procs_canary), (tail_other, tail_canary) = edges[side]  # on A, on B
            delta = root / f"{side}-{i}.jsonl"
            delta.write_bytes(small_delta(users, i, 5, rng))
            called = time.time()  # the edge on B may apply it before A's reply arrives
            pushed = pusher.push_delta(delta, canary_nodes=[f"{prefix}1"])
            _wait_applied([tail_canary], [procs_canary], pushed.version, 30)
            canary_ms[side].append((_applied_at(tail_canary, pushed.version).ts - called) * 1000)
            tail_other.poll()
            if tail_other.latest() >= pushed.version:
                raise BenchError(f"{side}: the edge outside the canary applied the candidate")
            called = time.time()
            promoter.promote(pushed.version)
            _wait_applied([tail_other], [procs_other], pushed.version, 30)
            promote_ms[side].append((_applied_at(tail_other, pushed.version).ts - called) * 1000)
            time.sleep(rng.uniform(0.02, 0.05))
    for pair in sides.values():
        for client in pair:
            client.close()
    return {
        side: {
            "canary_push_call_to_applied_ms": _percentiles(canary_ms[side]),
            "promote_call_to_applied_ms": _percentiles(promote_ms[side]),
        }
        for side in sides
    }


def stage_events(
    procs: Processes, root: Path, cluster: NatsCluster, bundle: Path, events: int, replicas: int, tag: str
) -> dict[str, Any]:
    started = [
        _control(
            procs,
            f"{tag}r{i}",
            root / f"{tag}r{i}",
            "--nats",
            cluster.url_list,
            "--bandit-every-seconds",
            "3600",
        )
        for i in range(replicas)
    ]
    control = Control(started[0][1])
    base = control.push_bundle(bundle)
    edges, _ = _edges(procs, root, f"{tag}e", [addr for _, addr in started], base.version)
    before_total = control.events_total()
    users = _user_ids(bundle, 400)
    cpu0 = {p.pid: _cpu_s(p.pid) for p, _ in started}
    nats_pids = [srv.pid for srv in cluster.servers if srv.pid is not None and srv.running()]
    nats0 = {pid: _cpu_s(pid) for pid in nats_pids}
    t0 = time.perf_counter()
    per_edge = events // len(edges)
    threads = [
        threading.Thread(
            target=track_all,
            args=(e.address, track_requests(f"{tag}{k}", per_edge, users, 300, k), 2),
            daemon=True,
        )
        for k, e in enumerate(edges)
    ]
    for t in threads:
        t.start()
    want = before_total + per_edge * len(edges)
    stored_s = folded_s = None
    tails = [LogTail(p.log_path) for p, _ in started]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if stored_s is None and control.events_total() >= want:
            stored_s = time.perf_counter() - t0
        if stored_s is not None:
            for tail in tails:
                tail.poll()
            folded = sum(int(doc.get("events", 0)) for tail in tails for doc in _folded_lines(tail))
            if folded >= per_edge * len(edges):
                folded_s = time.perf_counter() - t0
                break
        time.sleep(0.05)
    for t in threads:
        t.join(60)
    per_replica = [_cpu_s(p.pid) - cpu0[p.pid] for p, _ in started]
    nats_cpu = sum(_cpu_s(pid) - nats0[pid] for pid in nats_pids)
    control.close()
    for p in (*edges, *(p for p, _ in started)):
        p.stop()
    if stored_s is None or folded_s is None:
        raise BenchError(f"{tag}: {want} events not stored and folded in time (stored after {stored_s})")
    n = per_edge * len(edges)
    busiest = max(per_replica) / n * 100_000  # CPU-s per 100k events of the busiest replica
    nats_per_100k = nats_cpu / n * 100_000
    return {
        "replicas": replicas,
        "events": n,
        "stored_per_s": round(n / stored_s),
        "stored_and_folded_per_s": round(n / folded_s),
        "replica_cpu_s": [round(c, 2) for c in per_replica],
        "cpu_s_per_100k_events_per_replica": [round(c / n * 100_000, 2) for c in per_replica],
        "nats_cpu_s_per_100k_events": round(nats_per_100k, 2),  # the 3 servers together
        # a 16-core machine running one replica (the busiest): events/s its CPU allows
        "events_per_s_16_cores_replica": round(CORES_TARGET / (busiest / 100_000)),
        # ... and running one replica and one NATS server (a third of the cluster's CPU)
        "events_per_s_16_cores_replica_plus_nats_server": round(
            CORES_TARGET / ((busiest + nats_per_100k / 3) / 100_000)
        ),
    }


def _folded_lines(tail: LogTail) -> list[dict[str, Any]]:
    """Every `profiles_folded` line of a replica's log (LogTail keeps only their versions)."""
    out = []
    for line in tail.path.read_text(errors="replace").splitlines():
        if '"profiles_folded"' in line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def stage_failover(procs: Processes, root: Path, cluster: NatsCluster, bundle: Path) -> dict[str, Any]:
    a, a_addr = _control(procs, "fa", root / "fa", "--nats", cluster.url_list)
    control = Control(a_addr)
    control.push_bundle(bundle)
    users = _user_ids(bundle, 100)
    rng = random.Random(3)
    acked: list[tuple[float, int, str]] = []
    failed = 0
    stop = threading.Event()

    def pusher() -> None:
        nonlocal failed
        i = 0
        while not stop.is_set():
            name = f"f{i}.jsonl"
            try:
                pushed = control.push_delta(name, small_delta(users, i, 3, rng), timeout=20)
                acked.append((time.perf_counter(), pushed.version, name))
            except Exception:
                failed += 1
            i += 1
            time.sleep(0.05)

    thread = threading.Thread(target=pusher, daemon=True)
    thread.start()
    time.sleep(2.0)
    killed_at = time.perf_counter()
    cluster.kill(0)
    time.sleep(8.0)
    stop.set()
    thread.join(30)
    times = [t for t, _, _ in acked]
    before = [t for t in times if t < killed_at]
    after = [t for t in times if t >= killed_at]
    gap = (after[0] - (before[-1] if before else killed_at)) * 1000 if after else None
    reply = control.stub.History(sync_pb2.HistoryRequest(limit=10_000), metadata=control.meta, timeout=30)
    history = {c.description for c in reply.commits}
    missing = [name for _, _, name in acked if name not in history]
    control.close()
    a.stop()
    cluster.restart(0)
    return {
        "pushes_acked": len(acked),
        "pushes_failed": failed,
        "gap_after_server_kill_ms": round(gap, 1) if gap is not None else None,
        "acked_missing_from_history": len(missing),
    }


def stage_replica_failover(
    procs: Processes, root: Path, cluster: NatsCluster, bundle: Path, edges_n: int, rounds: int
) -> dict[str, Any]:
    replicas = {
        name: _control(procs, f"r{name}", root / f"r{name}", "--nats", cluster.url_list) for name in "ab"
    }
    addresses = {name: addr for name, (_, addr) in replicas.items()}
    control = Control(addresses["a"])
    base = control.push_bundle(bundle)
    control.close()
    lists = [
        f"{addresses['a']},{addresses['b']}" if i % 2 == 0 else f"{addresses['b']},{addresses['a']}"
        for i in range(edges_n)
    ]
    edges, tails = _edges(procs, root, "fe", lists, base.version)
    following = {e.name: ("a" if i % 2 == 0 else "b") for i, e in enumerate(edges)}
    users = _user_ids(bundle, 100)
    rng = random.Random(11)
    to_applied: list[float] = []
    push_to_applied: list[float] = []
    moved: list[int] = []
    for r in range(rounds):
        victim = max("ab", key=lambda n: sum(1 for f in following.values() if f == n))
        other = "b" if victim == "a" else "a"
        process, _ = replicas[victim]
        movers = [(e, t) for e, t in zip(edges, tails, strict=True) if following[e.name] == victim]
        time.sleep(1.0)
        killed = time.time()
        process.stop(signal.SIGKILL)
        survivor = Control(addresses[other])
        pushed = survivor.push_delta(f"fo{r}.jsonl", small_delta(users, r, 3, rng), timeout=30)
        survivor.close()
        _wait_applied([t for _, t in movers], [e for e, _ in movers], pushed.version, 30)
        for _, tail in movers:
            applied = _applied_at(tail, pushed.version)
            to_applied.append((applied.ts - killed) * 1000)
            push_to_applied.append((applied.ts - pushed.returned_wall) * 1000)
        _wait_applied(tails, edges, pushed.version, 30)
        moved.append(len(movers))
        for e, _ in movers:
            following[e.name] = other
        port = addresses[victim].rsplit(":", 1)[1]
        replicas[victim] = _control(
            procs,
            f"r{victim}{r}",
            root / f"r{victim}",
            "--nats",
            cluster.url_list,
            listen=f"127.0.0.1:{port}",
        )
    snapshots = sum(
        1 for t in tails for a in sorted(t.applied.values(), key=lambda a: a.version)[1:] if a.snapshot
    )
    for p in (*edges, *(p for p, _ in replicas.values())):
        p.stop()
    return {
        "edges": edges_n,
        "rounds": rounds,
        "edges_moved_per_round": moved,
        "kill_to_applied_ms": _percentiles(to_applied),
        "push_to_applied_ms": _percentiles(push_to_applied),
        "snapshots_after_the_first": snapshots,
    }


def _held(process: Process) -> tuple[float, int]:
    """(ts, partitions held) of a replica's last `fold_partitions` line ((0, 0) before one)."""
    found = (0.0, 0)
    for line in process.log_path.read_text(errors="replace").splitlines():
        if '"fold_partitions"' in line:
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            found = (float(doc["ts"]), len(doc["partitions"]))
    return found


def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def stage_takeover(
    procs: Processes, root: Path, cluster: NatsCluster, bundle: Path, rounds: int, partitions: int = 8
) -> dict[str, Any]:
    replicas = {
        name: _control(procs, f"t{name}", root / f"t{name}", "--nats", cluster.url_list)[0] for name in "ab"
    }
    takeover_ms: list[float] = []
    for r in range(rounds):
        _until(
            lambda: all(_held(p)[1] == partitions // 2 for p in replicas.values()), 60, "partitions spread"
        )
        time.sleep(1.0)
        victim = "a" if r % 2 == 0 else "b"
        other = "b" if victim == "a" else "a"
        killed = time.time()
        replicas[victim].stop(signal.SIGKILL)
        survivor = replicas[other]
        _until(lambda: _held(survivor)[1] == partitions, 30, "the survivor holding every partition")  # noqa: B023
        takeover_ms.append((_held(survivor)[0] - killed) * 1000)
        data = root / f"t{victim}"
        replicas[victim] = _control(procs, f"t{victim}{r}", data, "--nats", cluster.url_list)[0]
    for p in replicas.values():
        p.stop()
    return {"rounds": rounds, "kill_to_all_partitions_held_ms": _percentiles(takeover_ms)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.central", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--deltas", type=int, default=None)
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--edges", type=int, default=None, help="edges of the replica failover stage")
    parser.add_argument("--rounds", type=int, default=None, help="replicas killed in that stage")
    parser.add_argument(
        "--only-replica-failover", action="store_true", help="run the replica failover stage alone"
    )
    parser.add_argument("--takeovers", type=int, default=None, help="replicas killed in the takeover stage")
    parser.add_argument(
        "--only-events", action="store_true", help="run the events stages (1 and 2 replicas) alone"
    )
    parser.add_argument("--rollouts", type=int, default=None, help="rounds of the rollout stage")
    parser.add_argument("--only-rollout", action="store_true", help="run the rollout stage alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    deltas = args.deltas or (10 if args.quick else 40)
    events = args.events or (4000 if args.quick else 20_000)
    root = Path(tempfile.mkdtemp(prefix="bench-central-"))
    edges_n = args.edges or (4 if args.quick else 6)
    rounds = args.rounds or (3 if args.quick else 8)
    takeovers = args.takeovers or (2 if args.quick else 6)
    rollouts = args.rollouts or (5 if args.quick else 20)
    result: dict[str, Any] = {"machine": _machine(), "deltas": deltas, "events": events}
    try:
        bundle = synth_bundle(root / "bundle", users=2000, items=500, seed=5)
        env = {"EDGEWISE_OPS_TOKEN": OPS_TOKEN, "EDGEWISE_EDGE_TOKEN": EDGE_TOKEN, "PYTHONUNBUFFERED": "1"}
        with NatsCluster(root / "nats", size=3).start() as cluster, Processes(root / "run", env) as procs:
            _log(f"cluster up: {cluster.url_list}")
            if args.only_rollout:
                result["rollout"] = stage_rollout(procs, root / "ro", cluster, bundle, rollouts)
                _log(f"rollouts: {result['rollout']}")
                print(json.dumps(result, indent=None if args.json else 2))
                return 0
            if args.only_replica_failover:
                result["replica_failover"] = stage_replica_failover(
                    procs, root / "rf", cluster, bundle, edges_n, rounds
                )
                _log(f"replica failover: {result['replica_failover']}")
                print(json.dumps(result, indent=None if args.json else 2))
                return 0
            if not args.only_events:
                result["push"] = stage_push(procs, root / "push", cluster, bundle, deltas)
                _log(f"push -> applied: {json.dumps(result['push'])}")
            result["events_1"] = stage_events(procs, root / "ev1", cluster, bundle, events, 1, "a")
            _log(f"events, 1 replica: {result['events_1']}")
            result["events_2"] = stage_events(procs, root / "ev2", cluster, bundle, events, 2, "b")
            _log(f"events, 2 replicas: {result['events_2']}")
            if args.only_events:
                print(json.dumps(result, indent=None if args.json else 2))
                return 0
            result["takeover"] = stage_takeover(procs, root / "to", cluster, bundle, takeovers)
            _log(f"partition takeover: {result['takeover']}")
            result["failover"] = stage_failover(procs, root / "fo", cluster, bundle)
            _log(f"failover: {result['failover']}")
            result["replica_failover"] = stage_replica_failover(
                procs, root / "rf", cluster, bundle, edges_n, rounds
            )
            _log(f"replica failover: {result['replica_failover']}")
            result["rollout"] = stage_rollout(procs, root / "ro", cluster, bundle, rollouts)
            _log(f"rollouts: {result['rollout']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    raise SystemExit(main())
