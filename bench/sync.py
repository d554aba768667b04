"""Control plane <-> edge sync benchmark: propagation, bootstrap, delta apply rate, events upstream.

Run from the repository root:

    python -m bench.sync            # full run: 10 edges x 200 deltas, a 1M-profile bootstrap, 3 x 50k
                                    # upserts, 2 x 100k events; several minutes (+ about 2 min the first
                                    # time, to generate the 1M-profile bundle, cached in the temp dir)
    python -m bench.sync --quick    # under a minute: a smoke test (2 edges, 10k profiles, 20 deltas,
                                    # 5k events)
    python -m bench.sync --json     # machine-readable output
    python -m bench.sync --stages events   # one stage (or a comma-separated list): fleet, bootstrap, events

Everything runs as real processes on loopback, as in tests/test_sync.py: `edgewise control serve` with
an edge and an ops token, and `edgewise edge serve --control ADDR --workers 1 --node-id e<i>` edges
(each edge is a supervisor with its syncer plus one worker process). Pushes go through the ControlPlane
`Push` RPC of an in-process gRPC stub with the ops token, exactly what `edgewise ctl push` /
`push-delta` send, so their timing is not blurred by a client process starting.

How "applied" is detected: from each edge's own `sync_applied` JSON log line (stderr, to a file per
edge), whose `ts` is the edge's wall clock (`time.time()`, rounded to 1 ms) right after the commit's
LMDB write transaction committed, and whose `ms` is the time the edge spent applying the commit (from
the commit marker arriving to after the commit: decode checks, LMDB puts, fsync). The bench process
reads the log files every few ms but takes the time from the line, so its polling neither delays nor
skews the figure, and it does not steal CPU from the edges the way a tight LMDB polling loop over
10 stores would. Bias: the 1 ms rounding of `ts` (+-0.5 ms) and the microseconds between the commit and
the log call. At the end of each stage every edge's LMDB is opened read-only to check that its version
(and, for the fleet, its replicated records' digest) matches the control plane's head.

Stages:

1. Propagation (fleet of `--edges` edges on a small synthetic bundle): `--deltas` small deltas (a few
   profile upserts each), one at a time, waiting for each to land on all edges and then 20-50 ms
   (random) before the next. Latency per delta = the latest `sync_applied` ts over the edges minus the
   wall-clock time the Push RPC returned in the bench process (the target's figure). Also shown: from
   the Push call start (an upper bound), and from the control plane's own `push_committed` log line
   (its commit, before the reply travels back: under CPU contention the reply can reach the bench after
   an edge has already applied the commit, which makes the first figure low for that delta).
2. Bootstrap: a control plane holding a `--profiles`-profile bundle (generated with
   `edgewise.offline.synth.synth_bundle` and pushed with the Push RPC); an empty edge is started and
   timed from just before its process is spawned to the `ts` of its snapshot's `sync_applied` line.
   Split: process start -> `sync_connected` (interpreter, imports, connect, first chunk), then -> commit
   complete (the control plane reading and framing the snapshot, transfer, reassembly on the edge),
   and the edge's apply (`ms`). Its LMDB version and profile count are checked afterwards.
3. Delta apply rate: `--rounds` deltas of `--upserts` profile upserts (attributes and a new embedding,
   existing ids on the bootstrap edge), on the lone bootstrap edge (1M-profile state) and on the fleet
   (all edges applying at once on this machine's cores). Rate = upserts / the edge's `ms` (apply inside
   the edge), and end to end = upserts / (applied ts - Push returned).
4. Events upstream (`--stages events`; a control plane of its own holding the fleet bundle): edges
   forward their outbox of Track events to the control plane, which stores them and folds them into
   profiles (published as deltas). `--events` view events (random users and items) in Track calls of
   100 with analytics + personalization consent, from `--track-clients` threads, each call as soon as
   the last returned. With one edge (`--workers 1`):
   (b) steady state: tracking at full speed with the control plane up; events stored upstream per
       second (the Status RPC's `events_total`) while tracking, and the edge's outbox backlog (its LMDB,
       read-only) when tracking ended;
   (a) drain: the control plane is stopped, the edge takes `--events` events into its outbox, the
       control plane is started again on the same port; events/s from its process start to
       `events_total` + N (Status polled every 10 ms), split at the edge's first forward after the
       restart (its `outbox_forwarding` log line: the forwarder's retry backoff ends there).
   Then event -> fleet-wide profile: a second edge B; for `--event-users` users (personalization consent,
   not in a holdout) one view of a new item on edge A, then B's Decide (explain, pdp_similar, whose seed
   is the profile's last view) every 5 ms until it shows the item (bounded: 10 s). Latency = when that
   Decide returned - when A's Track returned; split by the control plane's `profiles_folded` and B's
   `sync_applied` log lines. No target is given for these (issue 6): they are printed as figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import lmdb
import numpy as np

from edgewise.bench.pipeline import default_bundle_dir
from edgewise.core.store import REPLICATED, Store
from edgewise.offline.synth import synth_bundle
from edgewise.processes import Process, ProcessError, Processes, wait_ready
from edgewise.sync.auth import bearer_metadata, open_channel
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from edgewise.v1 import sync_pb2, sync_pb2_grpc

__all__ = ["main", "run"]

TARGET_PROPAGATION_P99_MS: Final = 50.0
TARGET_BOOTSTRAP_S: Final = 30.0
TARGET_UPSERTS_PER_S: Final = 50_000.0

STAGES: Final = ("fleet", "bootstrap", "events")

OPS_TOKEN: Final = "bench-sync-ops-token"
EDGE_TOKEN: Final = "bench-sync-edge-token"
UPLOAD_CHUNK: Final = 1 << 20
FLEET_USERS: Final = 10_000
FLEET_ITEMS: Final = 1_000
GAP_MS: Final = (20.0, 50.0)
DETECTION: Final = (
    "edge sync_applied log lines: ts = edge wall clock right after the LMDB commit (1 ms resolution), "
    "ms = apply time inside the edge; the bench reads the log files, it does not poll the stores"
)


def _log(message: str) -> None:
    print(f"[bench.sync] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# --- processes ----------------------------------------------------------------------------------------


def spawn_control(
    procs: Processes, name: str, data: Path, max_snapshots: int, listen: str = "127.0.0.1:0"
) -> Process:
    return procs.start(
        name,
        [
            "control",
            "serve",
            "--data",
            str(data),
            "--listen",
            listen,
            "--max-snapshots",
            str(max_snapshots),
            "--retain-snapshots",
            "1",
        ],
    )


def start_control(procs: Processes, name: str, data: Path, max_snapshots: int) -> tuple[Process, str]:
    p = spawn_control(procs, name, data, max_snapshots)
    (info,) = wait_ready([p], 60)
    return p, str(info["address"])


def spawn_edge(procs: Processes, name: str, data: Path, control: str) -> Process:
    return procs.start(
        name,
        [
            "edge",
            "serve",
            "--data",
            str(data),
            "--listen",
            "127.0.0.1:0",
            "--control",
            control,
            "--workers",
            "1",
            "--node-id",
            name,
            "--grace",
            "1",
        ],
    )


# --- edge logs ----------------------------------------------------------------------------------------


@dataclass
class Applied:
    version: int
    ts: float  # edge wall clock after the commit
    ms: float  # apply time inside the edge
    changes: int
    snapshot: bool


@dataclass
class LogTail:
    """Incremental reader of an edge's JSON log lines."""

    path: Path
    applied: dict[int, Applied] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # first line of each other event
    committed: dict[int, float] = field(default_factory=dict)  # control plane: version -> push_committed ts
    folded: dict[int, float] = field(default_factory=dict)  # control plane: version -> profiles_folded ts
    nacks: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0
    _partial: bytes = b""

    def poll(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if not line.startswith(b"{"):
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            event = doc.get("event")
            if event == "sync_applied":
                v = int(doc["version"])
                self.applied[v] = Applied(
                    v, float(doc["ts"]), float(doc["ms"]), int(doc["changes"]), bool(doc["snapshot"])
                )
            elif event == "push_committed":
                self.committed[int(doc["version"])] = float(doc["ts"])
            elif event == "profiles_folded":
                self.folded[int(doc["version"])] = float(doc["ts"])
            elif event == "sync_nack":
                self.nacks.append(doc)
            if isinstance(event, str) and event not in self.events:
                self.events[event] = doc

    def latest(self) -> int:
        return max(self.applied, default=0)


def _wait_applied(tails: Sequence[LogTail], procs: Sequence[Process], version: int, timeout: float) -> None:
    """Until every edge logged applying `version` (or a later one: a commit it skipped is in it)."""
    deadline = time.monotonic() + timeout
    interval = 0.002
    while True:
        for t in tails:
            t.poll()
        if all(t.latest() >= version for t in tails):
            return
        if time.monotonic() > deadline:
            late = [(p, t) for p, t in zip(procs, tails, strict=True) if t.latest() < version]
            p, t = late[0]
            raise BenchError(
                f"version {version} not applied on {', '.join(q.name for q, _ in late)} in {timeout:.0f} s "
                f"({p.name} at {t.latest()}, NACKs {t.nacks[-1:]}):\n{p.log_tail()}"
            )
        for p in procs:
            if p.proc.poll() is not None:
                raise BenchError(f"{p.name} exited with {p.proc.returncode}:\n{p.log_tail()}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.02)


def _applied_at(tail: LogTail, version: int) -> Applied:
    """The commit that brought the edge to `version` or past it (a commit the edge got folded)."""
    exact = tail.applied.get(version)
    if exact is not None:
        return exact
    return tail.applied[min(v for v in tail.applied if v >= version)]


# --- pushes -------------------------------------------------------------------------------------------


@dataclass
class Pushed:
    version: int
    changes: int
    sent_wall: float  # time.time() just before the Push call
    returned_wall: float  # time.time() when it returned


class Control:
    """The in-process ops client of one control plane."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = open_channel(address, options=(("grpc.max_receive_message_length", 64 << 20),))
        self.stub = sync_pb2_grpc.ControlPlaneStub(self.channel)
        self.meta = bearer_metadata(OPS_TOKEN)

    def close(self) -> None:
        self.channel.close()

    def _push(self, chunks: Iterator[sync_pb2.PushChunk], timeout: float) -> Pushed:
        sent = time.time()
        reply = self.stub.Push(chunks, metadata=self.meta, timeout=timeout)
        returned = time.time()
        return Pushed(int(reply.version), int(reply.changes), sent, returned)

    def push_delta(self, name: str, data: bytes, description: str = "", timeout: float = 600) -> Pushed:
        def chunks() -> Iterator[sync_pb2.PushChunk]:
            for start in range(0, max(len(data), 1), UPLOAD_CHUNK):
                chunk = sync_pb2.PushChunk(
                    kind=sync_pb2.PUSH_KIND_DELTA, path=name, data=data[start : start + UPLOAD_CHUNK]
                )
                if start == 0:
                    chunk.description = description
                yield chunk

        return self._push(chunks(), timeout)

    def push_bundle(self, root: Path, timeout: float = 3600) -> Pushed:
        files = sorted(p for p in root.rglob("*") if p.is_file())

        def chunks() -> Iterator[sync_pb2.PushChunk]:
            first = True
            for path in files:
                rel = path.relative_to(root).as_posix()
                with path.open("rb") as fh:
                    sent_any = False
                    while True:
                        data = fh.read(UPLOAD_CHUNK)
                        if not data and sent_any:
                            break
                        sent_any = True
                        chunk = sync_pb2.PushChunk(kind=sync_pb2.PUSH_KIND_BUNDLE, path=rel, data=data)
                        if first:
                            chunk.description = f"bench.sync bundle {root.name}"
                            first = False
                        yield chunk
                        if not data:
                            break

        return self._push(chunks(), timeout)

    def head(self) -> int:
        reply = self.stub.History(sync_pb2.HistoryRequest(limit=1), metadata=self.meta, timeout=30)
        return int(reply.head_version)

    def status(self) -> sync_pb2.StatusReply:
        reply: sync_pb2.StatusReply = self.stub.Status(
            sync_pb2.StatusRequest(), metadata=self.meta, timeout=10
        )
        return reply

    def events_total(self) -> int:
        """Distinct events stored upstream (the Status RPC: a count of the control plane's event log)."""
        return int(self.status().events_total)


# --- deltas -------------------------------------------------------------------------------------------


def _profile_line(user: str, tag: int, rng: random.Random, embedding: list[float] | None) -> str:
    doc: dict[str, Any] = {
        "op": "upsert",
        "profile": {
            "id": user,
            "attributes": {
                "country": rng.choice(("DE", "FR", "GB", "NL", "US")),
                "device": rng.choice(("mobile", "desktop", "tablet")),
                "app_user": rng.random() < 0.4,
                "interests": ["sports/running", "books"][: rng.randint(0, 2)],
                "ltv": round(tag / 100 + rng.random(), 2),
                "orders": tag % 1000,
                "rfm_segment": "bench",
            },
            "consent": {"personalization": 1_765_000_000_000 + tag},
        },
    }
    if embedding is not None:
        doc["embedding"] = embedding
    return json.dumps(doc, separators=(",", ":"))


def small_delta(users: Sequence[str], index: int, size: int, rng: random.Random) -> bytes:
    """`size` profile upserts (attributes only) of consecutive users, unique to `index`."""
    start = index * size
    lines = [
        _profile_line(users[(start + j) % len(users)], index * size + j + 1, rng, None) for j in range(size)
    ]
    return ("\n".join(lines) + "\n").encode()


def bulk_delta(users: Sequence[str], start: int, size: int, dim: int, tag: int, seed: int) -> bytes:
    """`size` profile upserts with attributes and a new `dim` embedding, users [start, start + size)."""
    rng = random.Random(seed)
    vectors = np.random.default_rng(seed).normal(0, 0.3, (size, dim)).round(4).tolist()
    lines = [_profile_line(users[(start + j) % len(users)], tag + j, rng, vectors[j]) for j in range(size)]
    return ("\n".join(lines) + "\n").encode()


# --- helpers ------------------------------------------------------------------------------------------


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(a, 50)), 2),
        "p90": round(float(np.percentile(a, 90)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "max": round(float(a.max()), 2),
        "min": round(float(a.min()), 2),
        "mean": round(float(a.mean()), 2),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "lmdb": getattr(lmdb, "__version__", "?"),
        "loadavg_at_start": _loadavg(),
    }


def _bundle(path: Path, users: int, items: int, seed: int) -> tuple[Path, float, bool]:
    """A synthetic bundle at `path`: reused if its manifest is there, else generated."""
    if (path / "manifest.json").exists():
        return path, 0.0, False
    if path.exists():
        shutil.rmtree(path)
    _log(f"generating a synthetic bundle ({users} profiles x {items} items, seed {seed}) in {path}")
    t0 = time.perf_counter()
    synth_bundle(path, users=users, items=items, seed=seed)
    return path, time.perf_counter() - t0, True


def _user_ids(bundle: Path, count: int) -> list[str]:
    """`count` distinct profile ids: the bundle's first ones, then new ids (`bench-<n>`) if it has fewer."""
    out: list[str] = []
    with (bundle / "profiles.jsonl").open("rb") as fh:
        for line in fh:
            if len(out) >= count:
                break
            out.append(str(json.loads(line)["id"]))
    out += [f"bench-{n}" for n in range(count - len(out))]
    return out


def _dim(bundle: Path) -> int:
    manifest = json.loads((bundle / "manifest.json").read_text())
    dim = manifest.get("dim")
    if isinstance(dim, int):
        return dim
    from edgewise.sync.bundle import load_bundle  # slower: only when the manifest does not say

    return load_bundle(bundle).dim


def _dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6, 1)


def _store_facts(data: Path, digest: bool) -> dict[str, Any]:
    """Version, record counts and bytes (keys + values) of an edge's replicated namespaces, read-only."""
    with Store(data, readonly=True) as store, store.read() as view:
        facts: dict[str, Any] = {"version": view.version, "records": {}, "record_bytes": 0}
        txn = view._txn
        for name in REPLICATED:
            facts["records"][name] = view.count(name)
            total = 0
            with txn.cursor(db=view._dbs[name]) as cursor:
                for key, value in cursor:
                    total += len(key) + len(value)
            facts["record_bytes"] += total
        if digest:
            facts["digest"] = view.replicated_digest()
    return facts


# --- stages -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    edges: int
    deltas: int
    delta_upserts: int
    profiles: int
    items: int
    upserts: int
    rounds: int
    seed: int
    bundle: Path | None
    quick: bool
    stage_timeout: float
    stages: tuple[str, ...] = STAGES
    events: int = 100_000
    event_users: int = 50
    track_clients: int = 4


def _rate_rows(
    label: str, tails: Sequence[LogTail], pushes: Sequence[Pushed], upserts: int
) -> dict[str, Any]:
    in_edge: list[float] = []
    e2e: list[float] = []
    apply_ms: list[float] = []
    changes: list[int] = []
    for pushed in pushes:
        for t in tails:
            a = _applied_at(t, pushed.version)
            apply_ms.append(a.ms)
            changes.append(a.changes)
            in_edge.append(a.changes / max(a.ms / 1000, 1e-6))
            e2e.append(upserts / max(a.ts - pushed.returned_wall, 1e-6))
    return {
        "label": label,
        "edges": len(tails),
        "deltas": len(pushes),
        "upserts_per_delta": upserts,
        "changes_applied": sorted(set(changes)),
        "apply_ms": _percentiles(apply_ms),
        "in_edge_per_s": {
            "median": round(float(np.median(in_edge))),
            "min": round(min(in_edge)),
            "max": round(max(in_edge)),
        },
        "end_to_end_per_s": {
            "median": round(float(np.median(e2e))),
            "min": round(min(e2e)),
            "max": round(max(e2e)),
        },
        "push_rpc_s": [round(p.returned_wall - p.sent_wall, 2) for p in pushes],
    }


def _throughput_rounds(
    label: str,
    control: Control,
    procs: Sequence[Process],
    tails: Sequence[LogTail],
    users: Sequence[str],
    dim: int,
    config: Config,
    tag: int,
) -> dict[str, Any]:
    pushes: list[Pushed] = []
    for r in range(config.rounds):
        start = r * config.upserts
        data = bulk_delta(users, start, config.upserts, dim, tag + start, config.seed + tag + r)
        pushed = control.push_delta(f"bulk-{tag}-{r}.jsonl", data, f"bench.sync {config.upserts} upserts")
        if pushed.changes != config.upserts:
            raise BenchError(f"bulk delta {r}: {pushed.changes} changes, expected {config.upserts}")
        _wait_applied(tails, procs, pushed.version, config.stage_timeout)
        pushes.append(pushed)
        applied = [_applied_at(t, pushed.version) for t in tails]
        _log(
            f"{label}: round {r + 1}/{config.rounds}: {config.upserts} upserts "
            f"({len(data) / 1e6:.1f} MB delta, Push {pushed.returned_wall - pushed.sent_wall:.2f} s), "
            f"edge apply {min(a.ms for a in applied):.0f}-{max(a.ms for a in applied):.0f} ms"
        )
        time.sleep(0.2)
    return _rate_rows(label, tails, pushes, config.upserts)


def stage_fleet(config: Config, procs: Processes, root: Path, bundle: Path) -> dict[str, Any]:
    """Propagation of small deltas to `config.edges` edges, then bulk deltas on all of them at once."""
    first = len(procs.started)
    control_proc, address = start_control(procs, "control-fleet", root / "control-fleet", config.edges)
    control_log = LogTail(control_proc.log_path)
    control = Control(address)
    try:
        t0 = time.perf_counter()
        base = control.push_bundle(bundle)
        _log(f"fleet: pushed {bundle.name} (version {base.version}) in {time.perf_counter() - t0:.1f} s")
        _log(f"fleet: starting {config.edges} edges (each: supervisor + syncer + 1 worker)")
        t0 = time.perf_counter()
        edges = [spawn_edge(procs, f"e{i}", root / f"edge-{i}", address) for i in range(config.edges)]
        wait_ready(edges, max(120.0, 15.0 * config.edges))
        tails = [LogTail(e.log_path) for e in edges]
        _wait_applied(tails, edges, base.version, config.stage_timeout)
        start_s = time.perf_counter() - t0
        _log(f"fleet: {config.edges} edges serving version {base.version} after {start_s:.1f} s")
        time.sleep(1.0)  # let the start-up settle

        users = _user_ids(bundle, max(config.upserts * config.rounds, config.deltas * config.delta_upserts))
        rng = random.Random(config.seed)
        from_return: list[float] = []
        from_sent: list[float] = []
        from_commit: list[float] = []  # from the control plane's push_committed log line (its clock)
        per_edge: list[float] = []
        push_ms: list[float] = []
        apply_ms: list[float] = []
        changes = 0
        t_prop = time.perf_counter()
        for i in range(config.deltas):
            data = small_delta(users, i, config.delta_upserts, rng)
            pushed = control.push_delta(f"small-{i}.jsonl", data, f"bench.sync small delta {i}")
            if pushed.changes != config.delta_upserts:
                raise BenchError(
                    f"small delta {i}: {pushed.changes} changes, expected {config.delta_upserts}"
                )
            _wait_applied(tails, edges, pushed.version, 30)
            applied = [_applied_at(t, pushed.version) for t in tails]
            last = max(a.ts for a in applied)
            from_return.append((last - pushed.returned_wall) * 1000)
            from_sent.append((last - pushed.sent_wall) * 1000)
            control_log.poll()
            if pushed.version in control_log.committed:
                from_commit.append((last - control_log.committed[pushed.version]) * 1000)
            per_edge += [(a.ts - pushed.returned_wall) * 1000 for a in applied]
            apply_ms += [a.ms for a in applied]
            push_ms.append((pushed.returned_wall - pushed.sent_wall) * 1000)
            changes += pushed.changes
            if (i + 1) % max(1, config.deltas // 10) == 0:
                recent = from_return[-max(1, config.deltas // 10) :]
                _log(
                    f"propagation: {i + 1}/{config.deltas} deltas, last batch p50 "
                    f"{np.median(recent):.1f} ms, max {max(recent):.1f} ms"
                )
            time.sleep(rng.uniform(*GAP_MS) / 1000)
        prop_s = time.perf_counter() - t_prop
        head = control.head()
        facts = [_store_facts(root / f"edge-{i}", digest=True) for i in range(config.edges)]
        converged = all(f["version"] == head for f in facts) and len({f["digest"] for f in facts}) == 1
        stats = _percentiles(from_return)
        propagation = {
            "edges": config.edges,
            "deltas": config.deltas,
            "upserts_per_delta": config.delta_upserts,
            "gap_ms": list(GAP_MS),
            "from_push_returned_ms": stats,
            "from_push_sent_ms": _percentiles(from_sent),
            "from_control_commit_ms": _percentiles(from_commit),
            "per_edge_from_push_returned_ms": _percentiles(per_edge),
            "edge_apply_ms": _percentiles(apply_ms),
            "push_rpc_ms": _percentiles(push_ms),
            "changes": changes,
            "seconds": round(prop_s, 1),
            "edges_start_seconds": round(start_s, 1),
            "converged": converged,
            "head_version": head,
            "target_p99_ms": TARGET_PROPAGATION_P99_MS,
            "met": bool(stats["p99"] < TARGET_PROPAGATION_P99_MS),
        }
        _log(
            f"propagation: p50 {stats['p50']} ms, p99 {stats['p99']} ms, max {stats['max']} ms; "
            f"converged {converged}"
        )
        dim = _dim(bundle)
        fleet_rate = _throughput_rounds(
            f"fleet ({config.edges} edges at once)", control, edges, tails, users, dim, config, 1_000_000
        )
        head = control.head()
        facts = [_store_facts(root / f"edge-{i}", digest=True) for i in range(config.edges)]
        fleet_rate["converged"] = (
            all(f["version"] == head for f in facts) and len({f["digest"] for f in facts}) == 1
        )
        return {"propagation": propagation, "fleet_rate": fleet_rate}
    finally:
        control.close()
        procs.stop(procs.started[first:][::-1])  # the edges, then their control plane


def stage_bootstrap(config: Config, procs: Processes, root: Path, bundle: Path) -> dict[str, Any]:
    """An empty edge against a control plane holding `bundle`; then bulk deltas on that edge alone."""
    _control_proc, address = start_control(procs, "control-big", root / "control-big", 2)
    control = Control(address)
    try:
        _log(f"bootstrap: pushing {bundle} ({_dir_mb(bundle)} MB) with the Push RPC")
        t0 = time.perf_counter()
        pushed = control.push_bundle(bundle)
        push_s = time.perf_counter() - t0
        _log(f"bootstrap: pushed version {pushed.version} ({pushed.changes} records) in {push_s:.1f} s")
        time.sleep(1.0)
        data = root / "edge-boot"
        edge = spawn_edge(procs, "eboot", data, address)
        tail = LogTail(edge.log_path)
        _wait_applied([tail], [edge], pushed.version, config.stage_timeout)
        wait_ready([edge], 120)
        tail.poll()
        applied = _applied_at(tail, pushed.version)
        if not applied.snapshot:
            raise BenchError(f"the bootstrap edge applied {applied} first, not a snapshot")
        connected = float(tail.events["sync_connected"]["ts"])
        serving = float(tail.events["serving"]["ts"])
        total_s = applied.ts - edge.started_wall
        facts = _store_facts(data, digest=False)
        result: dict[str, Any] = {
            "profiles": facts["records"]["profiles"],
            "items": facts["records"]["items"],
            "records": applied.changes,
            "record_mb": round(facts["record_bytes"] / 1e6, 1),
            "bundle_mb": _dir_mb(bundle),
            "push_seconds": round(push_s, 1),
            "start_to_applied_s": round(total_s, 2),
            "split_s": {
                "start_to_connected": round(connected - edge.started_wall, 2),
                "connected_to_commit_received": round(applied.ts - applied.ms / 1000 - connected, 2),
                "edge_apply": round(applied.ms / 1000, 2),
            },
            "start_to_serving_s": round(serving - edge.started_wall, 2),
            "version_ok": facts["version"] == pushed.version,
            "target_s": TARGET_BOOTSTRAP_S,
            "met": bool(total_s < TARGET_BOOTSTRAP_S and facts["version"] == pushed.version),
        }
        _log(
            f"bootstrap: {result['profiles']} profiles applied {total_s:.1f} s after the edge process "
            f"started (apply {applied.ms / 1000:.1f} s)"
        )
        time.sleep(1.0)
        users = _user_ids(bundle, config.upserts * config.rounds)
        alone = _throughput_rounds(
            f"1 edge, {result['profiles']} profiles", control, [edge], [tail], users, _dim(bundle), config, 0
        )
        alone["version_ok"] = _store_facts(data, digest=False)["version"] == control.head()
        return {"bootstrap": result, "alone_rate": alone}
    finally:
        control.close()
        procs.stop_all()


# --- events upstream ----------------------------------------------------------------------------------

EVENT_BATCH: Final = 100  # events per Track call
EVENT_CONSENT: Final = ("analytics", "personalization")
STATUS_POLL_S: Final = 0.01  # Status RPC polling while an outbox drains
SAMPLE_S: Final = 0.25  # events_total + outbox backlog samples while tracking at full speed
SEEDS_POLL_S: Final = 0.005  # edge B's Decide polling for a view made on edge A
FOLD_WAIT_S: Final = 10.0  # bound on the wait for one view to show on edge B


def _consenting_users(bundle: Path) -> tuple[list[str], list[str]]:
    """(every profile id, the ids whose consent has the personalization purpose), in bundle order."""
    every: list[str] = []
    consenting: list[str] = []
    with (bundle / "profiles.jsonl").open("rb") as fh:
        for line in fh:
            doc = json.loads(line)
            every.append(str(doc["id"]))
            if "personalization" in doc.get("consent", {}):
                consenting.append(str(doc["id"]))
    return every, consenting


def track_requests(
    prefix: str, count: int, users: Sequence[str], items: int, seed: int
) -> list[pb.TrackRequest]:
    """`count` view events (ids `<prefix>-<n>`, random users and items) in Track calls of EVENT_BATCH."""
    rng = random.Random(seed)
    out = []
    for start in range(0, count, EVENT_BATCH):
        events = [
            pb.Event(
                event_id=f"{prefix}-{n}",
                type="view",
                user_id=users[rng.randrange(len(users))],
                item_id=f"i{rng.randrange(items)}",
            )
            for n in range(start, min(start + EVENT_BATCH, count))
        ]
        out.append(pb.TrackRequest(events=events, consent=list(EVENT_CONSENT)))
    return out


@dataclass
class Tracked:
    events: int
    accepted: int
    started: float  # perf_counter
    ended: float
    client_cpu_s: float  # the bench process's CPU time while sending (all its threads)
    call_ms: list[float]

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def row(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "accepted": self.accepted,
            "seconds": round(self.seconds, 2),
            "track_per_s": round(self.events / max(self.seconds, 1e-6)),
            "track_call_ms": _percentiles(self.call_ms),
            "client_cpu_s": round(self.client_cpu_s, 2),
        }


def track_all(address: str, requests: Sequence[pb.TrackRequest], clients: int) -> Tracked:
    """Send `requests` from `clients` threads, each with a channel (a connection) of its own, each call
    as soon as the previous one returned. The gRPC calls release the GIL while they wait, and the
    requests are built beforehand, so a thread costs little CPU per call (`client_cpu_s` shows it)."""
    channels = [grpc.insecure_channel(address) for _ in range(clients)]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
        stubs = [pb_grpc.PersonalizerStub(c) for c in channels]
        times: list[list[float]] = [[] for _ in range(clients)]

        def send(k: int) -> int:
            accepted = 0
            for request in requests[k::clients]:
                t0 = time.perf_counter()
                accepted += stubs[k].Track(request, timeout=60).accepted
                times[k].append((time.perf_counter() - t0) * 1000)
            return accepted

        cpu0 = time.process_time()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="track") as pool:
            accepted = sum(pool.map(send, range(clients)))
        ended = time.perf_counter()
        cpu = time.process_time() - cpu0
    finally:
        for channel in channels:
            channel.close()
    events = sum(len(r.events) for r in requests)
    if accepted != events:
        raise BenchError(f"Track accepted {accepted} of {events} events (duplicate ids?)")
    return Tracked(events, accepted, started, ended, cpu, [t for ts in times for t in ts])


def _outbox_pending(data: Path) -> int:
    with Store(data, readonly=True) as store:
        return store.outbox_pending()


class _Sampler:
    """Every SAMPLE_S: (seconds since start, events stored upstream, the edge's outbox backlog)."""

    def __init__(self, control: Control, data: Path) -> None:
        self.control = control
        self.data = data
        self.samples: list[tuple[float, int, int]] = []
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            with contextlib.suppress(grpc.RpcError, lmdb.Error):
                total = self.control.events_total()
                self.samples.append((time.perf_counter() - self.t0, total, _outbox_pending(self.data)))


def _wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float) -> float:
    """Poll `check` every `interval` s; the time.time() at which it first held."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.time()
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def _log_lines(path: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().splitlines():
        if line.startswith(b"{") and f'"event":"{event}"'.encode() in line:
            with contextlib.suppress(json.JSONDecodeError):
                out.append(dict(json.loads(line)))
    return out


def _pdp_similar(stub: pb_grpc.PersonalizerStub, user: str) -> tuple[list[str], bool]:
    """`user`'s pdp_similar seed items (from the profile's activity: the last view) in an explained
    decision, and whether the user is in a holdout (whose decisions ignore the activity)."""
    response = stub.Decide(
        pb.DecideRequest(
            user_id=user,
            consent=["personalization"],
            placements=[pb.PlacementRequest(placement_id="pdp_similar")],
            explain=True,
        ),
        timeout=10,
    )
    placements = response.explanation.placements
    holdout = any("holdout" in note for p in placements for note in p.notes)
    return [s for p in placements for s in p.seed_item_ids], holdout


def _seeds(stub: pb_grpc.PersonalizerStub, user: str) -> list[str]:
    return _pdp_similar(stub, user)[0]


def _settle(control: Control, tails: Sequence[LogTail], edges: Sequence[Process], timeout: float) -> int:
    """Until the control plane's head stayed put for 1 s (the folder is done) and every edge applied it."""
    deadline = time.monotonic() + timeout
    while True:
        head = control.head()
        _wait_applied(tails, edges, head, timeout)
        time.sleep(1.0)
        if control.head() == head:
            return head
        if time.monotonic() > deadline:
            raise BenchError(f"the control plane's head kept moving for {timeout:.0f} s")


def stage_events(config: Config, procs: Processes, root: Path, bundle: Path) -> dict[str, Any]:
    """Events upstream: outbox forwarding rates with one edge, then view on edge A -> edge B's decisions."""
    first = len(procs.started)
    data = root / "control-events"
    control_proc, address = start_control(procs, "control-events", data, 2)
    control_log = LogTail(control_proc.log_path)
    port = int(address.rsplit(":", 1)[1])
    control = Control(address)
    n = config.events
    try:
        base = control.push_bundle(bundle)
        a_data = root / "edge-events-a"
        a = spawn_edge(procs, "ea", a_data, address)
        (a_info,) = wait_ready([a], 120)
        a_tail = LogTail(a.log_path)
        _wait_applied([a_tail], [a], base.version, config.stage_timeout)
        a_address = str(a_info["address"])
        every, consenting = _consenting_users(bundle)
        # the users viewing an item on A: with personalization consent, and not in a holdout (their
        # decisions ignore the activity, so the seeds never show it); none of the load events are theirs
        view_users: list[str] = []
        with grpc.insecure_channel(a_address) as channel:
            stub = pb_grpc.PersonalizerStub(channel)
            for user in consenting:
                if len(view_users) == config.event_users:
                    break
                if not _pdp_similar(stub, user)[1]:
                    view_users.append(user)
        if len(view_users) < config.event_users:
            raise BenchError(f"{bundle} has {len(view_users)} users with consent and not in a holdout")
        skip = set(view_users)
        load_users = [u for u in every if u not in skip]
        steady_requests = track_requests("steady", n, load_users, FLEET_ITEMS, config.seed)
        drain_requests = track_requests("drain", n, load_users, FLEET_ITEMS, config.seed + 1)
        time.sleep(0.5)

        # (b) steady state: Track at full speed, forwarding on
        _log(
            f"events: steady state, {n} events in Track calls of {EVENT_BATCH} "
            f"from {config.track_clients} clients"
        )
        before = control.events_total()
        sampler = _Sampler(control, a_data)
        sampler.start()
        try:
            tracked = track_all(a_address, steady_requests, config.track_clients)
            stored_at_end = control.events_total() - before
            backlog_at_end = _outbox_pending(a_data)
            done_wall = _wait_until(
                lambda: control.events_total() - before >= n,
                config.stage_timeout,
                "steady events upstream",
                0.02,
            )
        finally:
            sampler.stop()
        track_end_wall = time.time() - (time.perf_counter() - tracked.ended)
        drained_after = done_wall - track_end_wall
        total_s = tracked.seconds + drained_after
        steady = {
            **tracked.row(),
            "stored_upstream_at_track_end": stored_at_end,
            "upstream_per_s_while_tracking": round(stored_at_end / max(tracked.seconds, 1e-6)),
            "backlog_at_track_end": backlog_at_end,
            "backlog_max": max([backlog_at_end, *(b for _, _, b in sampler.samples)]),
            "drained_after_track_end_s": round(drained_after, 2),
            "upstream_per_s_first_track_to_all_stored": round(n / max(total_s, 1e-6)),
            "samples": [
                {"s": round(t, 2), "stored": total - before, "backlog": pending}
                for t, total, pending in sampler.samples
            ],
        }
        _log(
            f"events: steady: Track {steady['track_per_s']:,}/s, stored upstream "
            f"{steady['upstream_per_s_while_tracking']:,}/s while tracking, "
            f"backlog {backlog_at_end} at the end, "
            f"drained {drained_after:.2f} s later"
        )
        _wait_until(lambda: _outbox_pending(a_data) == 0, 30, "edge A's outbox empty", 0.05)

        # (a) drain: the control plane is down while the edge takes N events; then it comes back
        control.close()
        procs.stop([control_proc])
        down_wall = time.time()
        _log(f"events: control plane down; Track {n} events on the edge (they wait in its outbox)")
        down_tracked = track_all(a_address, drain_requests, config.track_clients)
        pending = _outbox_pending(a_data)
        if pending != n:
            raise BenchError(f"the edge's outbox holds {pending} entries, expected {n}")
        before_drain = before + n
        restart = spawn_control(procs, "control-events-2", data, 2, listen=f"127.0.0.1:{port}")
        wait_ready([restart], 60)
        control = Control(address)
        control_log = LogTail(restart.log_path)
        target = before_drain + n
        first_seen: list[float] = []

        def drained() -> bool:
            total = control.events_total()
            if total > before_drain and not first_seen:
                first_seen.append(time.time())
            return total >= target

        done_wall = _wait_until(drained, config.stage_timeout, "the outbox drained upstream", STATUS_POLL_S)
        start_wall = restart.started_wall
        serving = [float(d["ts"]) for d in _log_lines(restart.log_path, "control_serving")]
        resumed = [
            float(d["ts"])
            for d in _log_lines(a.log_path, "outbox_forwarding")
            if float(d["ts"]) >= start_wall
        ]
        first_forward = resumed[0] if resumed else first_seen[0]
        all_s = done_wall - start_wall
        drain = {
            **down_tracked.row(),
            "outbox_before": pending,
            "control_down_s": round(start_wall - down_wall, 2),
            "start_to_serving_s": round(serving[0] - start_wall, 2) if serving else None,
            "start_to_first_forward_s": round(first_forward - start_wall, 2),
            "start_to_all_stored_s": round(all_s, 2),
            "per_s_from_control_start": round(n / max(all_s, 1e-6)),
            "per_s_from_first_forward": round(n / max(done_wall - first_forward, 1e-6)),
            "first_forward_from": "edge log outbox_forwarding" if resumed else "Status poll",
        }
        _wait_until(lambda: _outbox_pending(a_data) == 0, 30, "edge A's outbox empty", 0.05)
        drain["outbox_empty"] = True
        _log(
            f"events: drain: {n} events upstream {all_s:.2f} s after the control plane started "
            f"({drain['per_s_from_control_start']:,}/s; "
            f"first forward after {drain['start_to_first_forward_s']} s, "
            f"{drain['per_s_from_first_forward']:,}/s from there)"
        )

        # 2. event -> fleet-wide profile: a view on edge A, seen in edge B's pdp_similar seeds
        b = spawn_edge(procs, "eb", root / "edge-events-b", address)
        (b_info,) = wait_ready([b], 120)
        b_tail = LogTail(b.log_path)
        head = _settle(control, [a_tail, b_tail], [a, b], config.stage_timeout)
        _log(f"events: edges A and B at version {head}; {len(view_users)} users view an item on A")
        fleet = _fleet_views(config, a_address, str(b_info["address"]), view_users, control_log, b_tail)
        return {
            "events": n,
            "batch": EVENT_BATCH,
            "clients": config.track_clients,
            "consent": list(EVENT_CONSENT),
            "users": len(load_users),
            "items": FLEET_ITEMS,
            "steady": steady,
            "drain": drain,
            "fleet_profile": fleet,
        }
    finally:
        control.close()
        procs.stop(procs.started[first:][::-1])


def _fleet_views(
    config: Config,
    a_address: str,
    b_address: str,
    users: Sequence[str],
    control_log: LogTail,
    b_tail: LogTail,
) -> dict[str, Any]:
    rng = random.Random(config.seed)
    from_returned: list[float] = []
    from_sent: list[float] = []
    to_fold: list[float] = []
    fold_to_b: list[float] = []
    decide_ms: list[float] = []
    polls: list[int] = []
    missed = 0
    with grpc.insecure_channel(a_address) as a_channel, grpc.insecure_channel(b_address) as b_channel:
        a_stub, b_stub = pb_grpc.PersonalizerStub(a_channel), pb_grpc.PersonalizerStub(b_channel)
        for j, user in enumerate(users):
            seeds = set(_seeds(b_stub, user))
            item = next(i for i in (f"i{rng.randrange(FLEET_ITEMS)}" for _ in range(1000)) if i not in seeds)
            view = pb.Event(event_id=f"fleet-view-{j}", type="view", user_id=user, item_id=item)
            request = pb.TrackRequest(events=[view], consent=list(EVENT_CONSENT))
            sent_wall = time.time()
            sent = time.perf_counter()
            a_stub.Track(request, timeout=10)
            returned = time.perf_counter()
            returned_wall = sent_wall + (returned - sent)
            deadline = returned + FOLD_WAIT_S
            count = 0
            while True:
                t0 = time.perf_counter()
                shown = item in _seeds(b_stub, user)
                t1 = time.perf_counter()
                count += 1
                decide_ms.append((t1 - t0) * 1000)
                if shown:
                    from_returned.append((t1 - returned) * 1000)
                    from_sent.append((t1 - sent) * 1000)
                    polls.append(count)
                    break
                if t1 > deadline:
                    missed += 1
                    _log(f"events: the view of {user} on {item} not in edge B's seeds in {FOLD_WAIT_S:g} s")
                    break
                time.sleep(max(0.0, SEEDS_POLL_S - (t1 - t0)))
            control_log.poll()
            b_tail.poll()
            folds = [v for v, ts in control_log.folded.items() if ts >= returned_wall - 0.001]
            if folds and shown:
                version = min(folds)
                to_fold.append((control_log.folded[version] - returned_wall) * 1000)
                if version in b_tail.applied or any(v >= version for v in b_tail.applied):
                    fold_to_b.append((_applied_at(b_tail, version).ts - control_log.folded[version]) * 1000)
            time.sleep(rng.uniform(*GAP_MS) / 1000)
    stats = _percentiles(from_returned)
    _log(
        f"events: view on A -> in B's seeds: p50 {stats.get('p50')} ms, p99 {stats.get('p99')} ms, "
        f"max {stats.get('max')} ms ({missed} missed)"
    )
    return {
        "users": len(users),
        "poll_ms": SEEDS_POLL_S * 1000,
        "wait_bound_s": FOLD_WAIT_S,
        "from_track_returned_ms": stats,
        "from_track_sent_ms": _percentiles(from_sent),
        "track_returned_to_fold_commit_ms": _percentiles(to_fold),
        "fold_commit_to_applied_on_b_ms": _percentiles(fold_to_b),
        "decide_ms": _percentiles(decide_ms),
        "polls": _percentiles(polls),
        "missed": missed,
    }


def run(config: Config) -> dict[str, Any]:
    t_run = time.perf_counter()
    machine = _machine()
    fleet: dict[str, Any] | None = None
    boot: dict[str, Any] | None = None
    events: dict[str, Any] | None = None
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgewise-bench-sync-") as tmp:
        root = Path(tmp)
        procs = Processes(
            root / "run",
            {"EDGEWISE_OPS_TOKEN": OPS_TOKEN, "EDGEWISE_EDGE_TOKEN": EDGE_TOKEN, "PYTHONUNBUFFERED": "1"},
            grace=10,
        )
        try:
            fleet_bundle, fleet_synth_s, _ = _bundle(
                root / "fleet-bundle", FLEET_USERS, FLEET_ITEMS, config.seed
            )
            if "bootstrap" not in config.stages:
                pass
            elif config.bundle is not None:
                big = config.bundle
                if not (big / "manifest.json").exists():
                    big, big_synth_s, big_generated = _bundle(big, config.profiles, config.items, config.seed)
                else:
                    big_synth_s, big_generated = 0.0, False
            elif config.profiles == FLEET_USERS and config.items == FLEET_ITEMS:
                big, big_synth_s, big_generated = fleet_bundle, fleet_synth_s, True
            else:
                big, big_synth_s, big_generated = _bundle(
                    default_bundle_dir(config.profiles, config.items, config.seed),
                    config.profiles,
                    config.items,
                    config.seed,
                )
            if "fleet" in config.stages:
                t0 = time.perf_counter()
                fleet = stage_fleet(config, procs, root, fleet_bundle)
                seconds["fleet"] = round(time.perf_counter() - t0, 1)
            if "bootstrap" in config.stages:
                t0 = time.perf_counter()
                boot = stage_bootstrap(config, procs, root, big)
                seconds["bootstrap"] = round(time.perf_counter() - t0, 1)
            if "events" in config.stages:
                t0 = time.perf_counter()
                events = stage_events(config, procs, root, fleet_bundle)
                seconds["events"] = round(time.perf_counter() - t0, 1)
        finally:
            procs.close()
    machine["loadavg_at_end"] = _loadavg()
    targets: list[dict[str, Any]] = []
    figures: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "benchmark": "bench.sync",
        "config": {
            "stages": list(config.stages),
            "edges": config.edges,
            "deltas": config.deltas,
            "delta_upserts": config.delta_upserts,
            "fleet_bundle": {"profiles": FLEET_USERS, "items": FLEET_ITEMS},
            "bootstrap_bundle": {"profiles": config.profiles, "items": config.items},
            "bulk_upserts": config.upserts,
            "rounds": config.rounds,
            "events": config.events,
            "event_users": config.event_users,
            "track_clients": config.track_clients,
            "seed": config.seed,
            "quick": config.quick,
            "edge": "edgewise edge serve --control ADDR --workers 1 --node-id e<i>",
        },
        "machine": machine,
        "detection": DETECTION,
    }
    if fleet is not None:
        prop, fleet_rate = fleet["propagation"], fleet["fleet_rate"]
        result["propagation"] = prop
        result.setdefault("throughput", {"target_per_s": TARGET_UPSERTS_PER_S})["fleet"] = fleet_rate
        targets.append(
            {
                "name": f"propagation p99, push accepted -> applied on all {prop['edges']} edges",
                "figure": prop["from_push_returned_ms"]["p99"],
                "unit": "ms",
                "target": f"< {TARGET_PROPAGATION_P99_MS:g} ms",
                "met": prop["met"],
            }
        )
    if boot is not None:
        b, alone = boot["bootstrap"], boot["alone_rate"]
        b["bundle"] = str(big)
        b["bundle_generated_s"] = round(big_synth_s, 1) if big_generated else None
        result["bootstrap"] = b
        result.setdefault("throughput", {"target_per_s": TARGET_UPSERTS_PER_S})["alone"] = alone
        targets += [
            {
                "name": f"bootstrap of an empty edge, {b['profiles']} profiles: start -> snapshot applied",
                "figure": b["start_to_applied_s"],
                "unit": "s",
                "target": f"< {TARGET_BOOTSTRAP_S:g} s",
                "met": b["met"],
            },
            {
                "name": "delta apply, upserts/s in the edge (1 edge, median)",
                "figure": alone["in_edge_per_s"]["median"],
                "unit": "/s",
                "target": f">= {TARGET_UPSERTS_PER_S:,.0f}/s",
                "met": alone["in_edge_per_s"]["median"] >= TARGET_UPSERTS_PER_S,
            },
            {
                "name": "delta apply, upserts/s push accepted -> applied (1 edge, median)",
                "figure": alone["end_to_end_per_s"]["median"],
                "unit": "/s",
                "target": f">= {TARGET_UPSERTS_PER_S:,.0f}/s",
                "met": alone["end_to_end_per_s"]["median"] >= TARGET_UPSERTS_PER_S,
            },
        ]
    if fleet is not None:
        fleet_rate = fleet["fleet_rate"]
        targets += [
            {
                "name": f"delta apply, upserts/s per edge in the edge ({fleet_rate['edges']} edges at once)",
                "figure": fleet_rate["in_edge_per_s"]["median"],
                "unit": "/s",
                "target": f">= {TARGET_UPSERTS_PER_S:,.0f}/s",
                "met": fleet_rate["in_edge_per_s"]["median"] >= TARGET_UPSERTS_PER_S,
            },
            {
                "name": (
                    f"delta apply, upserts/s per edge push -> applied ({fleet_rate['edges']} edges, median)"
                ),
                "figure": fleet_rate["end_to_end_per_s"]["median"],
                "unit": "/s",
                "target": f">= {TARGET_UPSERTS_PER_S:,.0f}/s",
                "met": fleet_rate["end_to_end_per_s"]["median"] >= TARGET_UPSERTS_PER_S,
            },
        ]
    if events is not None:
        result["events_upstream"] = events
        figures += _event_figures(events)
    result["targets"] = targets
    result["figures"] = figures  # no target for these (issue 6): figures only
    result["seconds"] = {**seconds, "total": round(time.perf_counter() - t_run, 1)}
    return result


def _event_figures(ev: dict[str, Any]) -> list[dict[str, Any]]:
    d, st, fp = ev["drain"], ev["steady"], ev["fleet_profile"]["from_track_returned_ms"]
    users = ev["fleet_profile"]["users"]
    n = ev["events"]
    return [
        {
            "name": f"events upstream, outbox of {n} drained: control plane start -> all stored",
            "figure": d["per_s_from_control_start"],
            "unit": "/s",
        },
        {
            "name": f"events upstream, outbox of {n} drained: first forward -> all stored",
            "figure": d["per_s_from_first_forward"],
            "unit": "/s",
        },
        {
            "name": f"events upstream, steady: stored upstream while tracking {n} at full speed",
            "figure": st["upstream_per_s_while_tracking"],
            "unit": "/s",
        },
        {
            "name": "events upstream, steady: edge outbox backlog when tracking ended",
            "figure": st["backlog_at_track_end"],
            "unit": "events",
        },
        *(
            {
                "name": f"view on edge A -> in edge B's pdp_similar seeds, {q} ({users} users)",
                "figure": fp.get(q, 0.0),
                "unit": "ms",
            }
            for q in ("p50", "p99", "max")
        ),
    ]


# --- output -------------------------------------------------------------------------------------------


def _fmt_figure(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:g} {unit}"


def format_report(result: dict[str, Any]) -> str:
    c, m = result["config"], result["machine"]
    lines = [
        f"bench.sync: control plane + edges ({c['edge']}) as processes on loopback; "
        f"stages: {', '.join(c['stages'])}" + (" [--quick: a smoke test, not figures]" if c["quick"] else ""),
        f"machine: {m['nproc']} cpus, {m['cpu']}; python {m['python']}, grpc {m['grpc']}, lmdb {m['lmdb']}; "
        f"load average {m['loadavg_at_start']} at start, {m['loadavg_at_end']} at end",
        f"applied detected from: {result['detection']}",
        "",
    ]
    if "propagation" in result:
        p = result["propagation"]
        r, s = p["from_push_returned_ms"], p["from_push_sent_ms"]
        k = p.get("from_control_commit_ms", {"n": 0})
        lines += [
            f"propagation: {p['deltas']} deltas of {p['upserts_per_delta']} profile upserts, one at a time, "
            f"{p['gap_ms'][0]:g}-{p['gap_ms'][1]:g} ms apart, to {p['edges']} edges "
            f"({c['fleet_bundle']['profiles']} profiles x {c['fleet_bundle']['items']} items); "
            f"converged (LMDB version + digest): {p['converged']}",
            f"  push accepted -> applied on all edges: p50 {r['p50']} ms, p90 {r['p90']} ms, "
            f"p99 {r['p99']} ms, max {r['max']} ms (min {r['min']})",
            f"  control plane committed (its push_committed log ts) -> applied on all edges: "
            f"p50 {k.get('p50')} ms, p99 {k.get('p99')} ms, max {k.get('max')} ms (n {k['n']})",
            f"  push sent -> applied on all edges:     p50 {s['p50']} ms, p99 {s['p99']} ms, "
            f"max {s['max']} ms; "
            f"Push RPC p50 {p['push_rpc_ms']['p50']} ms, p99 {p['push_rpc_ms']['p99']} ms",
            f"  per edge (push accepted -> applied):   p50 {p['per_edge_from_push_returned_ms']['p50']} ms, "
            f"p99 {p['per_edge_from_push_returned_ms']['p99']} ms; apply inside the edge p50 "
            f"{p['edge_apply_ms']['p50']} ms, p99 {p['edge_apply_ms']['p99']} ms",
            "",
        ]
    if "bootstrap" in result:
        b = result["bootstrap"]
        lines += [
            f"bootstrap: empty edge, control plane at {b['profiles']} profiles + {b['items']} items "
            f"({b['records']} records, {b['record_mb']} MB of record keys + values sent; "
            f"bundle {b['bundle_mb']} MB, pushed in {b['push_seconds']} s)",
            f"  process start -> snapshot applied {b['start_to_applied_s']} s = "
            f"start -> first chunk (sync_connected) "
            f"{b['split_s']['start_to_connected']} s + control plane read/frame, transfer, reassembly "
            f"{b['split_s']['connected_to_commit_received']} s + edge apply {b['split_s']['edge_apply']} s; "
            f"serving (worker up) at {b['start_to_serving_s']} s; LMDB version ok: {b['version_ok']}",
            "",
        ]
    t = result.get("throughput", {})
    for key in ("alone", "fleet"):
        if key not in t:
            continue
        row = t[key]
        lines.append(
            f"delta apply, {row['label']}: {row['deltas']} deltas x {row['upserts_per_delta']} "
            f"profile upserts (with embeddings); apply ms in the edge p50 {row['apply_ms']['p50']}, "
            f"max {row['apply_ms']['max']}; "
            f"in edge {row['in_edge_per_s']['median']:,}/s (min {row['in_edge_per_s']['min']:,}), "
            f"end to end {row['end_to_end_per_s']['median']:,}/s (min {row['end_to_end_per_s']['min']:,}); "
            f"Push RPC (upload + validate + commit) {row['push_rpc_s']} s"
        )
    if t:
        lines.append("")
    if "events_upstream" in result:
        lines += [*_events_lines(result["events_upstream"]), ""]
    rows = [(x, f"{'MET' if x['met'] else 'NOT MET'}", x["target"]) for x in result["targets"]]
    rows += [(x, "figure", "none given") for x in result.get("figures", [])]
    width = max(len(x["name"]) for x, _, _ in rows)
    header = f"{'measure':<{width}}  {'figure':>12}  {'target':>14}  verdict"
    lines += [header, "-" * len(header)]
    for x, verdict, target in rows:
        lines.append(
            f"{x['name']:<{width}}  {_fmt_figure(x['figure'], x['unit']):>12}  {target:>14}  {verdict}"
        )
    lines.append(f"time: {result['seconds']['total']} s")
    return "\n".join(lines)


def _events_lines(ev: dict[str, Any]) -> list[str]:
    st, d, f = ev["steady"], ev["drain"], ev["fleet_profile"]
    r, split_fold, split_b = (
        f["from_track_returned_ms"],
        f["track_returned_to_fold_commit_ms"],
        f["fold_commit_to_applied_on_b_ms"],
    )
    return [
        f"events upstream: 1 edge (--workers 1) forwarding its outbox to the control plane; "
        f"{ev['events']} view events in Track calls of {ev['batch']} from {ev['clients']} client threads, "
        f"consent {'+'.join(ev['consent'])}, {ev['users']} users x {ev['items']} items "
        f"(the control plane folds them)",
        f"  steady, control plane up: Track {st['track_per_s']:,}/s at the edge ({st['seconds']} s, "
        f"call p50 {st['track_call_ms']['p50']} ms, client CPU {st['client_cpu_s']} s); stored upstream "
        f"{st['upstream_per_s_while_tracking']:,}/s while tracking "
        f"({st['stored_upstream_at_track_end']} stored when tracking ended); outbox backlog at the end "
        f"{st['backlog_at_track_end']} (max sampled {st['backlog_max']}), drained "
        f"{st['drained_after_track_end_s']} s later; first Track -> all stored "
        f"{st['upstream_per_s_first_track_to_all_stored']:,}/s",
        f"  drain, control plane down while the edge took {d['events']} events "
        f"(Track {d['track_per_s']:,}/s), down {d['control_down_s']} s: control plane start -> serving "
        f"{d['start_to_serving_s']} s -> first batch forwarded {d['start_to_first_forward_s']} s "
        f"(the forwarder's retry backoff) -> all {d['outbox_before']} stored {d['start_to_all_stored_s']} s: "
        f"{d['per_s_from_control_start']:,}/s from the control plane's start, "
        f"{d['per_s_from_first_forward']:,}/s from the first forward",
        f"  event -> fleet-wide profile: {f['users']} users, one view each on edge A, edge B's Decide "
        f"(explain, pdp_similar seeds) polled every {f['poll_ms']:g} ms: Track returned -> seen on B "
        f"p50 {r.get('p50')} ms, p99 {r.get('p99')} ms, max {r.get('max')} ms "
        f"(missed within {f['wait_bound_s']:g} s: {f['missed']}); split p50: Track returned -> fold "
        f"committed {split_fold.get('p50')} ms, -> applied on B {split_b.get('p50')} ms; "
        f"B's Decide p50 {f['decide_ms'].get('p50')} ms",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sync",
        description=(__doc__ or "").split("\n")[0],
        epilog="Progress goes to stderr; the report (or --json) to stdout.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 edges, 20 deltas, 10k profiles: a smoke test, not figures"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--edges", type=int, help="edges in the fleet (default 10, quick 2)")
    parser.add_argument("--deltas", type=int, help="small deltas for propagation (default 200, quick 20)")
    parser.add_argument("--delta-upserts", type=int, default=5, help="profile upserts per small delta")
    parser.add_argument(
        "--profiles", type=int, help="profiles of the bootstrap state (default 1M, quick 10k)"
    )
    parser.add_argument("--items", type=int, help="items of the bootstrap state (default 10000, quick 1000)")
    parser.add_argument(
        "--upserts", type=int, help="profile upserts per bulk delta (default 50000, quick 5000)"
    )
    parser.add_argument("--rounds", type=int, help="bulk deltas per edge set (default 3, quick 2)")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="bootstrap bundle dir (generated there if empty; default: a cache in the temp dir)",
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated stages to run, of {', '.join(STAGES)} (default: all)",
    )
    parser.add_argument(
        "--events", type=int, help="events stage: events tracked per phase (default 100000, quick 5000)"
    )
    parser.add_argument(
        "--event-users",
        type=int,
        help="events stage: users viewing an item on edge A, seen on edge B (default 50, quick 10)",
    )
    parser.add_argument(
        "--track-clients", type=int, default=4, help="events stage: client threads calling Track (default 4)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--stage-timeout", type=float, default=600.0, help="seconds to wait for one commit to land"
    )
    args = parser.parse_args(argv)
    q = args.quick
    stages = tuple(dict.fromkeys(x.strip() for x in args.stages.split(",") if x.strip()))
    unknown = [x for x in stages if x not in STAGES]
    if unknown or not stages:
        parser.error(f"--stages: {', '.join(unknown) or 'none given'}; choose from {', '.join(STAGES)}")
    config = Config(
        edges=args.edges or (2 if q else 10),
        deltas=args.deltas or (20 if q else 200),
        delta_upserts=args.delta_upserts,
        profiles=args.profiles or (FLEET_USERS if q else 1_000_000),
        items=args.items or (FLEET_ITEMS if q else 10_000),
        upserts=args.upserts or (5_000 if q else 50_000),
        rounds=args.rounds or (2 if q else 3),
        seed=args.seed,
        bundle=args.bundle,
        quick=q,
        stage_timeout=args.stage_timeout,
        stages=tuple(x for x in STAGES if x in stages),
        events=args.events or (5_000 if q else 100_000),
        event_users=args.event_users or (10 if q else 50),
        track_clients=args.track_clients,
    )
    names = ("edges", "deltas", "delta_upserts", "profiles", "items", "upserts", "rounds")
    for name in (*names, "events", "event_users", "track_clients"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    _log(
        f"stages {', '.join(config.stages)}: {config.edges} edges, {config.deltas} deltas; bootstrap "
        f"{config.profiles} profiles; {config.rounds} x {config.upserts} upserts; events {config.events}, "
        f"{config.event_users} users viewing on edge A"
    )
    try:
        result = run(config)
    except (BenchError, ProcessError) as exc:
        print(f"bench.sync failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through run()'s finally: every process is stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
