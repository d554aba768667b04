"""Decide latency while a model refresh applies on the edge: the issue's "a model delta for 10k items and
100k users computed and applied on every edge without raising Decide p99 by more than 10%".

    python -m bench.refresh              # about 6 minutes; --quick for a smoke run, --json for a report
    python -m bench.refresh --baseline DIR   # the same, and an edge running the code installed in DIR

Real processes on loopback: `edgewise control serve` with the popularity, trending and neighbours
refresh on (every second), holding the synthetic bundle `python -m bench.pipeline` caches (100k users x
10k items, 32-dim embeddings, country and segment popularity, 50 neighbours, daily counts), and one
`edgewise edge serve --control ... --workers 2` following it (a fleet's every edge applies the same
commits; one edge is what this machine can hold next to the load). The edge queues no exposure records
(`track.queue_exposures = "never"`): forwarding them would keep the control plane folding them on the
same cores through every round (`python -m bench.node` measures that cost); here the control plane is
idle but for the refresh.

An open loop of Decide (`edgewise bench load --rate`, at half the edge's closed-loop capacity) runs in
alternating rounds: **quiet** (nothing to apply) and **refresh**. Before a refresh round, with the edge's
syncer paused (SIGSTOP to its supervisor; its workers serve on), the bench (1) stores 20,000 item events
(views, carts, purchases of every one of the 10k items, each block of 10 items by two random users of
the bundle, timed now) in the control plane's event store, as `Forward` stores them, so the control
plane's refresh jobs recompute `item_popularity` and its scopes, `item_daily_counts` and the neighbours
and commit them (the item half of the model delta, computed by the real jobs: their compute times are
reported), and (2) the user half: the control plane's own embeddings refresh (`[refresh] embeddings`,
method `als` by default, `--embeddings-method`: the `train` extra; the hybrid's dense item x item arrays
do not fit 10k items in its memory limit), which trains on every stored event and stages every
profile's vector of the next embedding generation (the bundle's 100k users: the seen ones get new
vectors, the others theirs carried into the new space) in paced commits of `--commit-profiles` (5000)
`--commit-pause` (1 s) apart, then flips `item_embeddings` and the generation in one commit
(docs/refresh.md). The bench waits for the item models' commits and the first staging commit (the
training done), then stops the control plane too (SIGSTOP) until the load starts, so that the staging
commits reach the edge at their pace during the load, not as a backlog. `--stand-in` pushes instead a
delta of 100,000 profile upserts with new 32-dim embeddings in one commit (the stand-in of the runs
before the paced refresh existed). Two seconds into the round's load the syncer (and the control plane)
resume (SIGCONT) and the edge receives and applies every commit while the load runs; the bench checks
that each landed inside the round (the edge's `sync_applied` log lines; the flip included) and reports
their apply times. The control plane computes the item models and trains while no load runs because
here it shares the edge's two cores; in a deployment it runs elsewhere, and the figure is about what
applying the refresh costs the edge's Decide (the control plane's encoding of the paced commits does run
during the load here, on the same cores).

`--baseline DIR` measures a second edge beside it, running the edgewise package installed in DIR
(`pip install --no-deps --target DIR <a checkout of the code before a change>`: the same interpreter and
dependencies, its package first on PYTHONPATH): both follow the same control plane, the rounds alternate
between them (this code's edge first in even rounds, the baseline's in odd ones), and each is measured
while the other's processes are stopped (SIGSTOP to its process group), after it caught up with the
commits the other's rounds made. So a before/after comes from one run, under the same machine load.

`--edge-held` keeps the edge's syncer stopped through each refresh round's load (resumed after it, so
every commit lands after the load): the control plane still trains, stages and streams the refresh
during the load, the edge applies none of it, so the rounds show the control plane's share of the cost
alone on these cores (as far as gRPC's flow control lets the stream run ahead of an edge that reads
nothing).

`--mix decide=9,track=1` puts Track calls in the open loop (the load's `--mix`): each Track is a durable
write of the worker's own, so it waits for the LMDB write lock while the syncer's write transaction holds
it; the report adds Track's p50, p99 and max per round (`track`) and their medians (`track_quiet`,
`track_refresh`). The Decide figures stay Decide's alone. `--baseline` may be given more than once (edges
`baseline`, `baseline2`, ...: the rounds rotate which edge goes first).

The figure: `p99_ratio` = median over rounds of the refresh rounds' Decide p99 / median of the quiet
rounds' (one run, alternating rounds, so drifting machine load hits both). During a refresh round the
control plane still streams the commits (the 100k profiles are about 40 MB) and folds the events into
profiles on the same cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgewise.bench.node import ServerCpu, _figures, _load
from edgewise.bench.pipeline import prepare_bundle
from edgewise.client import ControlClient
from edgewise.core.activity import Event
from edgewise.processes import Process, Processes, edgewise_command
from edgewise.sync.event_store import EventStore

TARGET_P99_RATIO: Final = 1.10  # issue 21: Decide p99 while a refresh applies <= +10%
OPS_TOKEN: Final = "bench-refresh-ops"
EDGE_TOKEN: Final = "bench-refresh-edge"
START_TIMEOUT_S: Final = 180.0
LEAD_S: Final = 2.0
CATCH_UP_TIMEOUT_S: Final = 300.0
SETTLE_S: Final = 1.0
THIS: Final = "this"
BASELINE: Final = "baseline"
COMPUTE_TIMEOUT_S: Final = 600.0
STAGING: Final = "refresh embeddings staging: "  # the embeddings refresh's commits (its job's module doc)
FLIP: Final = "refresh embeddings: "
MODELS: Final = frozenset(
    {"popularity", "trending", "neighbors"}
)  # into a refresh round before the refresh starts
ITEM_EVENTS_PER_ITEM: Final = 2
BLOCK: Final = 10
EVENT_TYPES: Final = ("view", "view", "view", "add_to_cart", "purchase")
REFRESH_FLAGS: Final = (
    "--refresh-popularity",
    "--refresh-popularity-every",
    "1s",
    "--refresh-trending",
    "--refresh-trending-every",
    "1s",
    "--refresh-neighbors",
    "--refresh-neighbors-every",
    "1s",
)


def _log(message: str) -> None:
    print(f"[bench.refresh] {message}", file=sys.stderr, flush=True)


def _autogroup_nice(pid: int, nice: int) -> int | None:
    """Set the CPU weight of the process's scheduler autogroup (its session: the control plane and its
    threads) to `nice` (Linux with `sched_autogroup`: nice values of processes in different sessions do
    not order them, their autogroups' do); the value set, None when it cannot be."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        return int(Path(f"/proc/{pid}/autogroup").read_text().split("nice")[1])
    except (OSError, ValueError, IndexError) as exc:
        _log(f"cannot set the control plane's autogroup nice: {exc}")
        return None


def _embedding_flags(method: str, commit_profiles: int, commit_pause: float) -> tuple[str, ...]:
    """The control plane's embeddings refresh: due whenever an item event arrived (checked every second),
    paced as asked."""
    return (
        "--refresh-embeddings",
        "--refresh-embeddings-every",
        "1s",
        "--refresh-embeddings-method",
        method,
        "--refresh-embeddings-commit-profiles",
        str(commit_profiles),
        "--refresh-embeddings-commit-pause",
        f"{commit_pause:g}s" if commit_pause else "0",
    )


def _profiles_delta(bundle: Path, out: Path, dim: int, seed: int) -> int:
    """A delta upserting every profile of the bundle with a new random embedding; its line count."""
    rng = np.random.default_rng(seed)
    lines = 0
    with open(bundle / "profiles.jsonl") as src, open(out, "w") as dst:
        for line in src:
            profile = json.loads(line)
            vector = np.round(rng.normal(0, 0.3, dim), 4).tolist()
            dst.write(json.dumps({"op": "upsert", "profile": profile, "embedding": vector}) + "\n")
            lines += 1
    return lines


def _item_events(
    items: Sequence[str], users: Sequence[str], tag: str, seed: int
) -> list[tuple[str, str, bytes]]:
    """Records as `Forward` stores them: every item `ITEM_EVENTS_PER_ITEM` times, each block of
    `BLOCK` items by `ITEM_EVENTS_PER_ITEM` random users who each had all of it (so the neighbours job
    finds pairs with support: a block's items become each other's neighbours)."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    out: list[tuple[str, str, bytes]] = []
    shift = (seed * 3) % len(items)  # other blocks each round: the neighbours change
    rotated = [*items[shift:], *items[:shift]]
    for start in range(0, len(rotated), BLOCK):
        block = rotated[start : start + BLOCK]
        for _ in range(ITEM_EVENTS_PER_ITEM):
            user = rng.choice(users)
            for item in block:
                event_id = f"{tag}-{len(out)}"
                event = Event(event_id, rng.choice(EVENT_TYPES), user, "", item, "", "", 0.0, now - len(out))
                out.append(("event", event_id, event.encode()))
    return out


def _ids(path: Path) -> list[str]:
    with open(path) as f:
        return [str(json.loads(line)["id"]) for line in f]


def _applied(edge: Process, after: int) -> list[dict[str, Any]]:
    return [
        e for e in edge.log_events() if e.get("event") == "sync_applied" and int(e.get("version", 0)) > after
    ]


def _head(ops: ControlClient) -> int:
    return ops.history(1).head_version


def _wait_applied(edge: Process, version: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(int(e.get("version", 0)) >= version for e in _applied(edge, 0)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the edge did not apply version {version} in {timeout:g} s")
        time.sleep(0.2)


def run(
    duration: float,
    rounds: int,
    clients: int,
    quick: bool,
    *,
    profiles: bool = True,
    baselines: Sequence[Path] = (),
    mix: str = "decide=1",
    stand_in: bool = False,
    method: str = "als",
    commit_profiles: int = 5000,
    commit_pause: float = 1.0,
    control_nice: int = 0,
    edge_held: bool = False,
) -> dict[str, Any]:
    users_n, items_n = (20_000, 2_000) if quick else (100_000, 10_000)
    bundle, _, _ = prepare_bundle(None, users_n, items_n, 7)
    root = Path(bundle.path)
    users, items = _ids(root / "profiles.jsonl"), _ids(root / "items.jsonl")
    common = ["--duration", str(duration), "--warmup", "1", "--clients", str(clients)]
    common += ["--users", str(users_n), "--items", str(items_n), "--mix", mix]
    env = {"PYTHONUNBUFFERED": "1", "EDGEWISE_OPS_TOKEN": OPS_TOKEN, "EDGEWISE_EDGE_TOKEN": EDGE_TOKEN}
    # (name, the edge's extra environment): this code's edge, and the baseline's (its package first on the
    # path, workers included: they inherit the environment)
    specs: list[tuple[str, dict[str, str]]] = [(THIS, {})]
    for i, path in enumerate(baselines):
        specs.append((BASELINE if i == 0 else f"{BASELINE}{i + 1}", {"PYTHONPATH": str(path)}))
    results: dict[str, Any] = {
        "bundle": str(root),
        "duration_s": duration,
        "rounds": rounds,
        "clients": clients,
        "mix": mix,
        "baseline": str(baselines[0]) if baselines else None,
        "user_half": ("stand-in delta" if stand_in else "embeddings refresh") if profiles else None,
    }
    embeddings = profiles and not stand_in
    if embeddings:
        results["embeddings"] = {
            "method": method,
            "commit_profiles": commit_profiles,
            "commit_pause_s": commit_pause,
        }
    with (
        tempfile.TemporaryDirectory(prefix="edgewise-bench-refresh-") as tmp_name,
        Processes(Path(tmp_name) / "procs", env, grace=10) as procs,
    ):
        tmp = Path(tmp_name)
        deltas: dict[tuple[int, str], Path | None] = {}
        lines = 0
        for r in range(rounds):
            for i, (name, _) in enumerate(specs):
                path = tmp / f"profiles-{name}-{r}.jsonl"
                seed = r * len(specs) + i
                lines = _profiles_delta(root, path, bundle.dim, seed=seed) if profiles and stand_in else 0
                deltas[r, name] = path if profiles and stand_in else None
        results["profile_upserts"] = lines
        control_cmd = ["control", "serve", "--data", str(tmp / "control"), "--listen", "127.0.0.1:0"]
        flags = [*REFRESH_FLAGS]
        if embeddings:
            flags += _embedding_flags(method, commit_profiles, commit_pause)
        control = procs.serve(
            "control", [*control_cmd, "--heartbeat", "0.5", *flags], timeout=START_TIMEOUT_S
        )
        if control_nice:
            results["control_nice"] = _autogroup_nice(control.pid, control_nice)
        results["edge_held"] = edge_held
        edges: dict[str, Process] = {}
        try:
            with ControlClient(control.address, token=OPS_TOKEN, timeout=600) as ops:
                pushed = ops.push(root).version
                for name, extra in specs:
                    edge_cmd = [
                        "edge",
                        "serve",
                        "--data",
                        str(tmp / f"edge-{name}"),
                        "--control",
                        control.address,
                    ]
                    edges[name] = procs.serve(
                        f"edge-{name}",
                        [
                            *edge_cmd,
                            "--node-id",
                            f"bench-edge-{name}",
                            "--workers",
                            "2",
                            "--listen",
                            "127.0.0.1:0",
                        ],
                        {"EDGEWISE_TRACK_QUEUE_EXPOSURES": "never", **extra},
                        timeout=START_TIMEOUT_S,
                    )
                for edge in edges.values():
                    _wait_applied(edge, pushed, START_TIMEOUT_S)
                _log(
                    f"control plane at {control.address}, "
                    + ", ".join(f"edge {n} at {e.address}" for n, e in edges.items())
                    + f", bundle version {pushed}"
                )
                capacity: dict[str, float] = {}
                for name in edges:
                    edge = _only(edges, name, ops)
                    figures = _round_figures(
                        _load(edge.address, [*common, "--concurrency", "32"], tmp / f"cap-{name}.json")
                    )
                    capacity[name] = figures["ok_per_s"]
                rate = max(50, int(min(capacity.values()) * 0.5))  # one rate for every edge compared
                results["edge_capacity_per_s"] = capacity[THIS]
                results["open_rate"] = rate
                open_loop = [*common, "--rate", str(rate)]
                quiet: dict[str, list[dict[str, Any]]] = {name: [] for name in edges}
                refresh: dict[str, list[dict[str, Any]]] = {name: [] for name in edges}
                for r in range(rounds):
                    names = list(edges)
                    order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
                    for name in order:
                        edge = _only(edges, name, ops)
                        meter = _Cpu(edge, control)
                        figures = _round_figures(
                            _load(edge.address, open_loop, tmp / f"quiet-{name}-{r}.json")
                        )
                        quiet[name].append(
                            {**figures, "load_avg_1m": round(os.getloadavg()[0], 2), "cpu_s": meter.used()}
                        )
                        refresh[name].append(
                            _refresh_round(
                                edge,
                                ops,
                                control,
                                open_loop,
                                tmp,
                                r,
                                items,
                                users,
                                deltas[r, name],
                                duration,
                                name,
                                embeddings=embeddings,
                                edge_held=edge_held,
                            )
                        )
        finally:
            for edge in edges.values():
                _signal_group(edge, signal.SIGCONT)  # a stopped process would not stop on SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(control.pid, signal.SIGCONT)
        results["control_log"] = [
            {k: e.get(k) for k in ("ts", "event", "model", "version", "changes", "error")}
            for e in control.log_events()
            if e.get("event")
            in ("model_refreshed", "model_refresh_failed", "embeddings_staged", "embeddings_refresh_skipped")
        ]
    results.update(_summary(quiet[THIS], refresh[THIS]))
    if baselines:
        results["baseline_capacity_per_s"] = capacity[BASELINE]
        results["baseline_run"] = _summary(quiet[BASELINE], refresh[BASELINE])
        results["baselines"] = [
            {
                "name": name,
                "dir": str(path),
                "capacity_per_s": capacity[name],
                "run": _summary(quiet[name], refresh[name]),
            }
            for (name, _), path in zip(specs[1:], baselines, strict=True)
        ]
    return results


def _round_figures(report: dict[str, Any]) -> dict[str, Any]:
    """A load's Decide figures (`_figures`), and Track's p50/p99/max as `track` when the mix has it."""
    rpcs = report.get("rpcs", {})
    figures = _figures(report, "Decide") if "Decide" in rpcs else _figures(report)
    if "Track" in rpcs:
        track = _figures(report, "Track")
        figures["track"] = {k: track[k] for k in ("ok_per_s", "p50_ms", "p99_ms", "max_ms")}
    return figures


def _summary(quiet: list[dict[str, Any]], refresh: list[dict[str, Any]]) -> dict[str, Any]:
    p99_quiet = statistics.median(q["p99_ms"] for q in quiet)
    p99_refresh = statistics.median(r["p99_ms"] for r in refresh)
    ratio = round(p99_refresh / p99_quiet, 3) if p99_quiet else None
    track: dict[str, Any] = {}
    if all("track" in row for row in (*quiet, *refresh)):
        for kind, rows in (("track_quiet", quiet), ("track_refresh", refresh)):
            track[kind] = {
                k: statistics.median(row["track"][k] for row in rows) for k in ("p50_ms", "p99_ms", "max_ms")
            }
    return {
        **track,
        "quiet": quiet,
        "refresh": refresh,
        "p99_quiet_ms": p99_quiet,
        "p99_refresh_ms": p99_refresh,
        "p99_ratio": ratio,
        "target_p99_ratio": TARGET_P99_RATIO,
        "met": ratio is not None and ratio <= TARGET_P99_RATIO,
    }


class _Cpu:
    """CPU seconds the edge's supervisor (its syncer), its workers and the control plane use from now on
    (`used`): where a round's CPU went, the load clients and other programs aside."""

    def __init__(self, edge: Process, control: Process) -> None:
        self._edge, self._control = ServerCpu(edge.pid), ServerCpu(control.pid)
        self._before = (self._edge.sample(), self._control.sample())

    def used(self) -> dict[str, float]:
        edge, control = self._edge.sample(), self._control.sample()
        supervisor, workers = self._edge._delta(self._before[0], edge)
        control_root, control_children = self._control._delta(self._before[1], control)
        return {
            "edge_supervisor": round(supervisor, 2),
            "edge_workers": round(workers, 2),
            "control": round(control_root + control_children, 2),
        }


def _signal_group(edge: Process, sig: int) -> None:
    """`sig` to the edge's process group: its supervisor and its workers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(edge.pid, sig)


def _only(edges: dict[str, Process], name: str, ops: ControlClient) -> Process:
    """Make `name` the one edge running: resume it, let it apply every commit so far (the other edge's
    refresh rounds), then stop every other edge's processes, so they take no CPU while it is measured."""
    edge = edges[name]
    _signal_group(edge, signal.SIGCONT)
    _wait_applied(edge, _head(ops), CATCH_UP_TIMEOUT_S)
    for other, process in edges.items():
        if other != name:
            _signal_group(process, signal.SIGSTOP)
    time.sleep(SETTLE_S)
    return edge


def _refresh_round(
    edge: Process,
    ops: ControlClient,
    control: Process,
    open_loop: Sequence[str],
    tmp: Path,
    r: int,
    items: Sequence[str],
    users: Sequence[str],
    delta: Path | None,
    duration: float,
    name: str = THIS,
    *,
    embeddings: bool = False,
    edge_held: bool = False,
) -> dict[str, Any]:
    """One open-loop load during which the edge applies a model refresh (see the module doc); with
    `edge_held`, during which the control plane makes and streams it while the edge's syncer stays
    stopped (it applies the refresh after the load)."""
    out = tmp / f"refresh-{name}-{r}.json"
    head = _head(ops)
    control_stopped = False
    records = _item_events(items, users, f"round{r}-{name}", seed=r * 2 + (name != THIS))
    os.kill(edge.pid, signal.SIGSTOP)  # the edge's syncer (its supervisor) waits; its workers serve on
    try:
        computed = time.time()
        with EventStore(control.data / "events") as events:
            events.ingest("bench", records)
        pushed = 0
        if delta is not None:
            pushed = ops.push_delta(delta, description=f"bench: synthetic user embeddings, round {r}").version
        done = _wait_refreshed(control, head, COMPUTE_TIMEOUT_S, staging=embeddings)
        compute = {m: round(ts - computed, 2) for m, ts in done.items()}
        if embeddings:  # trained, staging: the rest of its commits at their pace during the load
            os.kill(control.pid, signal.SIGSTOP)
            control_stopped = True
        commits = [c for c in ops.history(50).commits if c.version > head] if not embeddings else []
        cmd = edgewise_command(
            "bench", "load", "--target", edge.address, *open_loop, "--quiet", "--json", str(out)
        )
        load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started = time.time()
        time.sleep(1.0 + LEAD_S)  # the load's warm-up, then into the measured part
    finally:
        triggered = time.time()
        meter = _Cpu(edge, control)
        if control_stopped:
            os.kill(control.pid, signal.SIGCONT)
        if not edge_held:
            os.kill(edge.pid, signal.SIGCONT)
    try:
        _, err = load.communicate(timeout=duration + 600)
        cpu = meter.used()
    finally:
        if edge_held:  # the load is over: the edge applies the refresh now
            os.kill(edge.pid, signal.SIGCONT)
    if load.returncode not in (0, 1) or not out.exists():
        raise RuntimeError(f"bench load failed ({load.returncode}): {err[-2000:]}")
    ended = started + 1.0 + duration
    figures = _round_figures(json.loads(out.read_text()))
    if embeddings:  # the refresh's flip ends it (it may land after the load: reported)
        _wait_flip(control, head, COMPUTE_TIMEOUT_S)
        commits = [c for c in ops.history(200).commits if c.version > head]
    last = max(c.version for c in commits)
    _wait_applied(edge, max(last, pushed), 120)
    applied = _applied(edge, head)
    late = [a for a in applied if float(a.get("ts", 0)) > ended]
    row = {
        **figures,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # at the end of the load
        "cpu_s": cpu,  # from the resume to the end of the load
        "compute_s": compute,
        "commits": [
            {"version": c.version, "kind": c.kind, "changes": c.changes, "description": c.description}
            for c in reversed(commits)
        ],
        "apply_ms": [float(a.get("ms", 0)) for a in applied],
        "applied_s_after_resume": round(max(float(a.get("ts", 0)) for a in applied) - triggered, 2),
        "applied_after_load": len(late),
    }
    _log(
        f"{name} refresh round {r}: p99 {figures['p99_ms']} ms, {len(applied)} commits applied "
        f"({', '.join(f'{m:.0f}' for m in row['apply_ms'])} ms), the last {row['applied_s_after_resume']} s "
        f"after the resume, {len(late)} after the load; computed in {compute} s"
    )
    return row


def _wait_refreshed(
    control: Process, after: int, timeout: float, *, staging: bool = False
) -> dict[str, float]:
    """Wait until every refresh job committed after version `after`, and with `staging` until the
    embeddings refresh committed its first staging batch (its training done); when each did (the log
    line's ts; `embeddings_staging`: when the bench saw it)."""
    deadline = time.monotonic() + timeout
    while True:
        done = {
            str(e["model"]): float(e["ts"])
            for e in control.log_events()
            if e.get("event") == "model_refreshed" and int(e.get("version", 0)) > after
        }
        if set(done) >= MODELS and (not staging or _staged_since(control, after)):
            if staging:
                done["embeddings_staging"] = time.time()
            return done
        if time.monotonic() > deadline:
            raise RuntimeError(f"refresh commits after {after}: only {sorted(done)} in {timeout:g} s")
        time.sleep(0.2)


def _staged_since(control: Process, after: int) -> bool:
    """Whether the embeddings refresh committed a staging batch (or, unpaced, its one commit) after
    version `after` (the history says)."""
    with ControlClient(control.address, token=OPS_TOKEN, timeout=60) as ops:
        commits = ops.history(50).commits
    return any(c.version > after and c.description.startswith((STAGING, FLIP)) for c in commits)


def _wait_flip(control: Process, after: int, timeout: float) -> int:
    """Wait for the embeddings refresh's flip after version `after`; its version."""
    deadline = time.monotonic() + timeout
    while True:
        with ControlClient(control.address, token=OPS_TOKEN, timeout=60) as ops:
            flips = [
                c.version
                for c in ops.history(200).commits
                if c.version > after and c.description.startswith(FLIP)
            ]
        if flips:
            return max(flips)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no embeddings flip after version {after} in {timeout:g} s")
        time.sleep(0.2)


def _format(r: dict[str, Any]) -> str:
    lines = [
        f"bundle {r['bundle']}; edge capacity {r['edge_capacity_per_s']}/s; open loop at {r['open_rate']}/s, "
        f"{r['duration_s']} s per round, {r['rounds']} rounds of each"
    ]
    runs = [(THIS, r)]
    for b in r.get("baselines", []):
        lines.append(f"{b['name']} {b['dir']}: edge capacity {b['capacity_per_s']}/s")
        runs.append((b["name"], b["run"]))
    for name, run in runs:
        lines.append(f"{name}: round        p50 ms   p99 ms  p99.9 ms  commits applied (apply ms)")
        for i, (q, f) in enumerate(zip(run["quiet"], run["refresh"], strict=True)):
            where = f"load {q.get('load_avg_1m')}, cpu {q.get('cpu_s')}"
            lines.append(
                f"quiet {i:<5} {q['p50_ms']:>7} {q['p99_ms']:>8} {q['p999_ms']:>9}  {where}{_track(q)}"
            )
            apply = ", ".join(f"{m:.0f}" for m in f["apply_ms"])
            row = f"refresh {i:<3} {f['p50_ms']:>7} {f['p99_ms']:>8} {f['p999_ms']:>9}"
            late = (
                f" ({f['applied_after_load']} applied after the load: make the rounds longer)"
                if f["applied_after_load"]
                else ""
            )
            where = f"load {f.get('load_avg_1m')}, cpu {f.get('cpu_s')}"
            lines.append(f"{row}  {len(f['apply_ms'])} ({apply}){late}  {where}{_track(f)}")
        lines.append(
            f"{name}: p99 median: quiet {run['p99_quiet_ms']} ms, refresh {run['p99_refresh_ms']} ms: ratio "
            f"{run['p99_ratio']} (target <= {run['target_p99_ratio']}: {'met' if run['met'] else 'NOT met'})"
        )
        if "track_quiet" in run:
            lines.append(
                f"{name}: Track medians (p50/p99/max ms): quiet "
                + "/".join(str(run["track_quiet"][k]) for k in ("p50_ms", "p99_ms", "max_ms"))
                + ", refresh "
                + "/".join(str(run["track_refresh"][k]) for k in ("p50_ms", "p99_ms", "max_ms"))
            )
    return "\n".join(lines)


def _track(row: dict[str, Any]) -> str:
    t = row.get("track")
    return f"  Track p50/p99/max {t['p50_ms']}/{t['p99_ms']}/{t['max_ms']} ms" if t else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.refresh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small bundle and short rounds: a smoke run")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per round (default 20, quick 6)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds of each kind (default 3, quick 1)")
    parser.add_argument("--clients", type=int, default=2, help="load client processes (default 2)")
    parser.add_argument(
        "--no-profiles", action="store_true", help="refresh the item models only (no 100k profile embeddings)"
    )
    parser.add_argument(
        "--stand-in",
        action="store_true",
        help="the user half as a pushed delta of every profile with a new embedding, in one commit (the "
        "runs before the paced embeddings refresh), instead of the control plane's embeddings refresh",
    )
    parser.add_argument(
        "--embeddings-method",
        default="als",
        choices=("als", "bpr", "hybrid"),
        help="the embeddings refresh's method (default als; als, bpr: the train extra; hybrid: NumPy only, "
        "up to a few thousand items)",
    )
    parser.add_argument(
        "--commit-profiles",
        type=int,
        default=5000,
        help="profiles per staging commit of the embeddings refresh (default 5000; 0: one commit)",
    )
    parser.add_argument(
        "--commit-pause",
        type=float,
        default=1.0,
        help="seconds between two commits of the embeddings refresh (default 1; 0 or >= 1)",
    )
    parser.add_argument(
        "--mix",
        default="decide=1",
        help="the open loop's request mix (`edgewise bench load --mix`), e.g. decide=9,track=1 "
        "(default decide=1)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also measure an edge running the edgewise package installed in DIR (`pip install --target DIR "
        "<another checkout>`), in rounds alternating with this code's edge, each measured while the other "
        "is stopped: a before/after in one run (may be given more than once)",
    )
    parser.add_argument(
        "--control-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the control plane's session at this nice (its scheduler autogroup, Linux): it then uses "
        "the CPU the edge leaves, closer to a control plane on other machines than the default, where it "
        "competes with the edge on the same cores (default 0)",
    )
    parser.add_argument(
        "--edge-held",
        action="store_true",
        help="keep the edge's syncer stopped through each refresh round's load (it applies the refresh "
        "after it): the rounds then show what the control plane's making and streaming of the refresh "
        "costs Decide on these cores, without the edge's applying",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (20.0 if args.quick else 45.0)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    results = run(
        duration,
        rounds,
        args.clients,
        args.quick,
        profiles=not args.no_profiles,
        baselines=args.baseline,
        mix=args.mix,
        stand_in=args.stand_in,
        method=args.embeddings_method,
        commit_profiles=args.commit_profiles,
        commit_pause=args.commit_pause,
        control_nice=args.control_nice,
        edge_held=args.edge_held,
    )
    print(json.dumps(results, indent=2) if args.json else _format(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
