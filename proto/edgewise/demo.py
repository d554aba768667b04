"""`edgewise demo`: the whole loop on temporary directories, in well under a minute.

Builds a synthetic bundle, starts a control plane and two edge nodes as real subprocesses on free
loopback ports (with bearer tokens), pushes the bundle, and shows both edges converge to the same
version and give the same user the same decision. Then, on one edge: decisions for a known user, an
anonymous visitor and a user without consent; a tracked view changing the next decision (the viewed
item leaves `home`, `pdp_similar` follows it); an abandoned-cart campaign. Last, a delta (a new item and
a changed campaign) is pushed and shown on both edges within a second. Everything is shut down
cleanly; Ctrl-C at any point stops every process too.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from edgewise.v1 import personalizer_pb2 as _pb
from edgewise.v1 import personalizer_pb2_grpc as _pb_grpc

if TYPE_CHECKING:  # imported by run(): every command builds its parser from this module, the servers too
    from edgewise.processes import Process, Processes

__all__ = ["add_arguments", "run"]

PLACEMENTS = (
    "home",
    "pdp_similar",
    "hero_banner",
    "deals",
    "trending",
    "promo_slot",
)  # the synthetic bundle's, all
REASONS = {v.number: v.name.removeprefix("FALLBACK_REASON_") for v in _pb.FallbackReason.DESCRIPTOR.values}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    parser.add_argument("--items", type=int, default=1000, help="synthetic items (default 1000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    parser.add_argument(
        "--nats",
        action="store_true",
        help="the central tier instead: a 3-server JetStream cluster on loopback, 2 control-plane replicas, "
        "2 edges; a replica and a NATS server killed mid-run (docs/central.md; pip install 'edgewise[nats]')",
    )


def _say(text: str = "") -> None:
    print(text, flush=True)


def _decide(stub: _pb_grpc.PersonalizerStub, **fields: object) -> _pb.DecideResponse:
    request = _pb.DecideRequest(
        context=_pb.Context(channel="web", device="mobile", country="DE", page_type="home"),
        placements=[_pb.PlacementRequest(placement_id=p, count=5) for p in PLACEMENTS],
        **fields,  # type: ignore[arg-type]
    )
    response: _pb.DecideResponse = stub.Decide(request, timeout=5)
    return response


def _table(title: str, response: _pb.DecideResponse) -> None:
    _say(f"  {title}")
    _say(f"    {'placement':<12} {'strategy':<11} {'fallback':<13} result")
    for p in response.placements:
        if p.items:
            result = "  ".join(
                f"{i.id}(promoted)" if i.promoted else f"{i.id}({i.score:.2f})" for i in p.items
            )
        else:
            variant = f" [{p.experiment_id}/{p.variant_id}, p={p.propensity:.2f}]" if p.experiment_id else ""
            result = f"content {p.content_id}{variant}"
        _say(f"    {p.placement_id:<12} {p.strategy:<11} {REASONS[p.fallback_reason]:<13} {result}")
    _say()


def _items(response: _pb.DecideResponse, placement: str) -> list[str]:
    return [i.id for p in response.placements if p.placement_id == placement for i in p.items]


def _pick_users(bundle_dir: Path) -> tuple[str, str]:
    """A user with the personalization consent (outside the global holdout) and one without."""
    from edgewise.core.experiments import in_holdout
    from edgewise.core.rules import compile_rules

    rules = compile_rules(json.loads((bundle_dir / "rules.json").read_text()))
    with_consent = without = ""
    with open(bundle_dir / "profiles.jsonl") as fh:
        for line in fh:
            record = json.loads(line)
            if "personalization" in record.get("consent", {}):
                if not in_holdout(rules.holdout, record["id"]):
                    with_consent = with_consent or record["id"]
            else:
                without = without or record["id"]
            if with_consent and without:
                break
    return with_consent, without


def _show(stub: _pb_grpc.PersonalizerStub, bundle_dir: Path) -> None:
    consent = ["personalization", "analytics"]
    known, no_consent = _pick_users(bundle_dir)
    _say("3. Decisions on edge-a (context: web, mobile, DE)")
    first = _decide(stub, user_id=known, consent=consent)
    _table(f"known user {known} (consent: personalization, analytics)", first)
    anonymous = _decide(stub, session_id="s-demo-visitor", consent=consent)
    _table("anonymous visitor, session s-demo-visitor", anonymous)
    denied = _decide(stub, user_id=no_consent, consent=consent)
    _table(f"user {no_consent}, whose profile lacks the personalization consent", denied)
    same = _items(denied, "home") == _items(anonymous, "home")
    _say(f"  the user without consent gets the anonymous default for home: {'yes' if same else 'NO'}")
    _say()

    viewed = _items(first, "home")[0]
    _say(f"4. Track: {known} views {viewed} (the top home item)")
    event = _pb.Event(
        event_id=uuid.uuid4().hex,
        type="view",
        user_id=known,
        item_id=viewed,
        decision_id=first.decision_id,
        placement_id="home",
    )
    ack: _pb.TrackResponse = stub.Track(_pb.TrackRequest(events=[event], consent=consent), timeout=5)
    again: _pb.TrackResponse = stub.Track(_pb.TrackRequest(events=[event], consent=consent), timeout=5)
    _say(
        f"  accepted {ack.accepted}; the same event sent again: accepted {again.accepted}, "
        f"duplicates {again.duplicates}"
    )
    after = _decide(stub, user_id=known, consent=consent)
    _table(f"next decision for {known}", after)
    gone = viewed not in _items(after, "home")
    seeds = [
        s
        for p in _decide(stub, user_id=known, consent=consent, explain=True).explanation.placements
        if p.placement_id == "pdp_similar"
        for s in p.seed_item_ids
    ]
    _say(
        f"  {viewed} left home: {'yes' if gone else 'NO'}; pdp_similar now shows neighbors of: "
        f"{', '.join(seeds) or 'nothing'}"
    )
    repeat = [
        p.variant_id
        for _ in range(3)
        for p in _decide(stub, user_id=known, consent=consent).placements
        if p.placement_id == "hero_banner"
    ]
    _say(f"  hero_test variant for {known} on 3 more calls: {', '.join(repeat)}")
    _say()

    cart_item = _items(after, "home")[0]
    forty_minutes_ago = int(time.time() * 1000) - 40 * 60_000
    _say(f"5. Track: {known} put {cart_item} in the cart 40 minutes ago and did not buy")
    event = _pb.Event(
        event_id=uuid.uuid4().hex,
        type="add_to_cart",
        user_id=known,
        item_id=cart_item,
        timestamp_ms=forty_minutes_ago,
    )
    stub.Track(_pb.TrackRequest(events=[event], consent=consent), timeout=5)
    reminded = _decide(stub, user_id=known, consent=consent, explain=True)
    home_why = next(p for p in reminded.explanation.placements if p.placement_id == "home")
    _say(
        f"  home now serves campaign {home_why.campaign!r} (segments matched: "
        f"{', '.join(reminded.explanation.segments) or 'none'}): {', '.join(_items(reminded, 'home'))}"
    )
    _say()


def _ctl(env: dict[str, str], control: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edgewise.cli", "ctl", "--control", control, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"edgewise ctl {args[0]} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _edge_version(data: Path) -> int:
    from edgewise.core.store import Store

    try:
        with Store(data, readonly=True) as store:
            return store.version()
    except Exception:  # not created yet
        return 0


def _digest(data: Path) -> str:
    from edgewise.core.store import Store

    with Store(data, readonly=True) as store, store.read() as view:
        return view.replicated_digest()


def _delta_file(path: Path, bundle_dir: Path) -> None:
    rules = json.loads((bundle_dir / "rules.json").read_text())
    hero = rules["placements"]["hero_banner"]
    hero["campaigns"].insert(
        0, {"id": "hero_flash_sale", "channels": ["app"], "serve": {"content": "hero_spring_sale"}}
    )
    lines = [
        {
            "op": "upsert",
            "item": {"id": "demo-new-arrival", "category": "new/arrivals", "price": 19.9, "regions": ["*"]},
            "popularity": 1e9,
        },
        {"op": "upsert", "rules": rules},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _fleet(env: dict[str, str], procs: Processes, tmp: Path, bundle_dir: Path) -> None:
    control = procs.serve(
        "control", ["control", "serve", "--data", str(tmp / "control-data"), "--listen", "127.0.0.1:0"]
    ).wait_ready()
    address = str(control["address"])
    _say(f"2. Control plane started as pid {control['pid']}, serving {address} (bearer tokens on)")
    _say(f"   $ edgewise ctl --control {address} push BUNDLE")
    _say(f"   {_ctl(env, address, 'push', str(bundle_dir), '--quiet')}")
    edges = {}
    for name in ("edge-a", "edge-b"):
        info = procs.serve(
            name,
            [
                "edge",
                "serve",
                "--data",
                str(tmp / f"{name}-data"),
                "--control",
                address,
                "--node-id",
                name,
                "--workers",
                "1",
                "--listen",
                "127.0.0.1:0",
            ],
        ).wait_ready()
        edges[name] = info
        _say(f"   {name}: pid {info['pid']}, serving {info['address']}, version {info['snapshot_version']}")
    digests = {name: _digest(tmp / f"{name}-data") for name in edges}
    same_data = len(set(digests.values())) == 1
    _say(
        "   both edges hold identical data (SHA-256 of every replicated record): "
        + ("yes" if same_data else "NO")
    )
    consent = ["personalization", "analytics"]
    known, _ = _pick_users(bundle_dir)
    answers = {}
    for name, info in edges.items():
        with grpc.insecure_channel(str(info["address"])) as channel:
            answers[name] = _items(
                _decide(_pb_grpc.PersonalizerStub(channel), user_id=known, consent=consent), "home"
            )
    same = answers["edge-a"] == answers["edge-b"]
    _say(
        f"   {known} gets the same home items on both edges: {'yes' if same else 'NO'} "
        f"({', '.join(answers['edge-a'])})"
    )
    _say()

    with grpc.insecure_channel(str(edges["edge-a"]["address"])) as channel:
        _show(_pb_grpc.PersonalizerStub(channel), bundle_dir)

    delta = tmp / "delta.jsonl"
    _delta_file(delta, bundle_dir)
    _say("6. Push a delta: a new item (demo-new-arrival, very popular) and a changed campaign (hero_banner")
    _say("   now serves hero_flash_sale first in the app)")
    before = time.monotonic()
    printed = _ctl(env, address, "push-delta", str(delta), "--quiet")
    pushed = time.monotonic()
    version = int(printed.split("version ")[1].split(",")[0])
    _say(f"   {printed}")
    datas = [tmp / f"{name}-data" for name in edges]
    deadline = pushed + 10
    while any(_edge_version(d) < version for d in datas) and time.monotonic() < deadline:
        time.sleep(0.005)
    landed = time.monotonic()
    _say(
        f"   both edges at version {version} {1000 * (landed - pushed):.0f} ms after `ctl push-delta` "
        f"returned "
        f"({1000 * (landed - before):.0f} ms including the ctl command)"
    )
    for name, info in edges.items():
        with grpc.insecure_channel(str(info["address"])) as channel:
            response = _pb_grpc.PersonalizerStub(channel).Decide(
                _pb.DecideRequest(
                    session_id="s-after-delta",
                    consent=consent,
                    context=_pb.Context(channel="app", device="mobile"),
                    placements=[
                        _pb.PlacementRequest(placement_id="home", count=3),
                        _pb.PlacementRequest(placement_id="hero_banner"),
                    ],
                ),
                timeout=5,
            )
        top = _items(response, "home")
        hero = next(p for p in response.placements if p.placement_id == "hero_banner")
        _say(
            f"   {name}: snapshot {response.snapshot_version}; "
            f"app visitor's home (no country) starts with {top[0] if top else '-'}; "
            f"hero_banner shows {hero.content_id}"
        )
    _say(f"   $ edgewise ctl --control {address} status")
    for line in _ctl(env, address, "status").splitlines():
        _say(f"   {line}")
    _say()
    _canary(env, address, tmp, list(edges))
    _loop(env, address, edges, tmp, bundle_dir)


def _canary(
    env: dict[str, str],
    address: str,
    tmp: Path,
    edges: list[str],
    *,
    step: str = "6b.",
    promote_address: str | None = None,
) -> None:
    """A canary rollout (docs/rollouts.md): a delta to edge-a only, pushed through `address`, then
    promoted to every edge through `promote_address` (the same control plane, or another replica)."""
    promote_address = promote_address or address
    delta = tmp / "canary.jsonl"
    item = {"id": "demo-canary-item", "category": "new/arrivals", "price": 9.9, "regions": ["*"]}
    delta.write_text(json.dumps({"op": "upsert", "item": item}) + "\n")
    datas = {name: tmp / f"{name}-data" for name in edges}
    base = _edge_version(datas["edge-b"])
    _say(f"{step} A canary rollout: a delta to edge-a only; edge-b stays on the version it serves")
    _say(f"   $ edgewise ctl --control {address} push-delta canary.jsonl --canary-nodes edge-a")
    printed = _ctl(env, address, "push-delta", str(delta), "--canary-nodes", "edge-a", "--quiet")
    for line in printed.splitlines():
        _say(f"   {line}")
    version = int(printed.split("version ")[1].split(",")[0])
    reached = _wait(lambda: _edge_version(datas["edge-a"]) >= version, 10)
    time.sleep(0.3)  # edge-b would have it by now if it were sent
    held = _edge_version(datas["edge-b"]) == base
    _say(
        f"   edge-a at version {version} {'yes' if reached is not None else 'NO'}; "
        f"edge-b still at version {base}: {'yes' if held else 'NO'}"
    )
    for line in _ctl(env, address, "status").splitlines():
        if "[canary]" in line or line.lstrip().startswith(("rollout", "canary", "group", "rest")):
            _say(f"   {line.strip()}")
    _say(f"   $ edgewise ctl --control {promote_address} promote")
    _say(f"   {_ctl(env, promote_address, 'promote')}")
    both = _wait(lambda: all(_edge_version(d) >= version for d in datas.values()), 10)
    _say(f"   both edges at version {version} after the promotion: {'yes' if both is not None else 'NO'}")
    _say()


def _wait(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `predicate` held (polled every 10 ms), or None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.01)
    return None


def _hero_session(stub: _pb_grpc.PersonalizerStub, session: str) -> _pb.DecideResponse:
    return stub.Decide(
        _pb.DecideRequest(
            session_id=session,
            consent=["personalization", "analytics"],
            context=_pb.Context(channel="web", device="mobile", country="DE"),
            placements=[_pb.PlacementRequest(placement_id="hero_banner")],
        ),
        timeout=5,
    )


def _seeds(stub: _pb_grpc.PersonalizerStub, user: str) -> list[str]:
    response = _decide(stub, user_id=user, consent=["personalization"], explain=True)
    return [
        s for p in response.explanation.placements if p.placement_id == "pdp_similar" for s in p.seed_item_ids
    ]


def _loop(
    env: dict[str, str], address: str, edges: dict[str, dict[str, object]], tmp: Path, bundle_dir: Path
) -> None:
    """Closing the loop: exposures and clicks reach the report, a view on edge-a shapes edge-b, forget."""
    consent = ["personalization", "analytics"]
    a_address, b_address = (str(edges[name]["address"]) for name in ("edge-a", "edge-b"))
    _say("7. Closing the loop: 300 web visitors see hero_banner on edge-a; new_arrivals gets more clicks")
    with grpc.insecure_channel(a_address) as channel:
        stub = _pb_grpc.PersonalizerStub(channel)
        clicks = exposed = 0
        for n in range(300):
            hero = _hero_session(stub, f"demo-visitor-{n}")
            p = hero.placements[0]
            if p.experiment_id != "hero_test":
                continue
            exposed += 1
            if n % (3 if p.variant_id == "new_arrivals" else 6) == 0:
                clicks += 1
                click = _pb.Event(
                    event_id=f"demo-click-{n}",
                    type="click",
                    session_id=f"demo-visitor-{n}",
                    decision_id=hero.decision_id,
                    placement_id="hero_banner",
                )
                stub.Track(_pb.TrackRequest(events=[click], consent=consent), timeout=5)

    def reported() -> bool:
        doc = json.loads(_ctl(env, address, "report", "hero_test", "--format", "json"))
        return bool(doc["exposures"] >= exposed and doc["attributed"] >= clicks)

    _wait(reported, 10)
    _say(f"   $ edgewise ctl --control {address} report hero_test")
    for line in _ctl(env, address, "report", "hero_test").splitlines():
        _say(f"   {line}")

    known, _ = _pick_users(bundle_dir)
    with grpc.insecure_channel(a_address) as a_channel, grpc.insecure_channel(b_address) as b_channel:
        a_stub, b_stub = _pb_grpc.PersonalizerStub(a_channel), _pb_grpc.PersonalizerStub(b_channel)
        item = next(i for i in _items(_decide(b_stub, session_id="s-pick", consent=consent), "home"))
        _say(f"8. {known} views {item} on edge-a; edge-b's pdp_similar follows it (fleet-wide profile)")
        view = _pb.Event(event_id=uuid.uuid4().hex, type="view", user_id=known, item_id=item)
        a_stub.Track(_pb.TrackRequest(events=[view], consent=consent), timeout=5)
        took = _wait(lambda: item in _seeds(b_stub, known), 10)
        shown = f"after {1000 * took:.0f} ms" if took is not None else "NOT within 10 s"
        _say(f"   edge-b's pdp_similar seeds for {known} include {item} {shown}")

        _say(f"9. Forget {known}: $ edgewise ctl --control {address} forget {known}")
        _say(f"   {_ctl(env, address, 'forget', known)}")
        gone = _wait(
            lambda: all(
                _decide(s, user_id=known, consent=consent).placements[0].fallback_reason
                == _pb.FALLBACK_REASON_UNKNOWN_USER
                for s in (a_stub, b_stub)
            ),
            10,
        )
        _say(f"   both edges now answer {known} as an unknown user: {'yes' if gone is not None else 'NO'}")
        for line in _ctl(env, address, "forget", "--status").splitlines():
            _say(f"   {line}")
    _say()


def run(args: argparse.Namespace) -> int:
    from edgewise.offline.synth import synth_bundle
    from edgewise.processes import Processes

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="edgewise-demo-"))
    env = {
        **os.environ,
        "EDGEWISE_EDGE_TOKEN": secrets.token_urlsafe(24),
        "EDGEWISE_OPS_TOKEN": secrets.token_urlsafe(24),
    }
    procs = Processes(tmp, env, grace=30)
    try:
        _say("edgewise demo")
        _say("=============")
        bundle_dir = tmp / "bundle"
        t0 = time.monotonic()
        synth_bundle(bundle_dir, users=args.users, items=args.items, seed=args.seed)
        _say(
            f"1. Synthetic bundle: {args.users} users, {args.items} items -> {bundle_dir} "
            f"({time.monotonic() - t0:.1f}s)"
        )
        killed = 0  # processes the demo SIGKILLs on purpose (--nats)
        if getattr(args, "nats", False):
            killed = _central(env, procs, tmp, bundle_dir)
        else:
            _fleet(env, procs, tmp, bundle_dir)
        codes = procs.stop_all()
        _say(
            "10. Stopped on SIGTERM (edges: health NOT_SERVING, drained): "
            + ", ".join(f"{name} exit {code}" for name, code in reversed(codes))
        )
        _say(f"done in {time.monotonic() - started:.1f}s")
        failed = [code for _, code in codes if code != 0]
        return 0 if len(failed) <= killed and all(code == -signal.SIGKILL for code in failed) else 1
    except KeyboardInterrupt:
        _say("\ninterrupted: stopping every process")
        return 130
    except (RuntimeError, grpc.RpcError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.close()
        if args.keep:
            _say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --- `edgewise demo --nats`: the central tier (docs/central.md) ------------------------------------------


def _serve_edge(procs: Processes, tmp: Path, name: str, control: str) -> tuple[Process, dict[str, object]]:
    args = ["edge", "serve", "--data", str(tmp / f"{name}-data"), "--control", control, "--node-id", name]
    edge = procs.serve(name, [*args, "--workers", "1", "--listen", "127.0.0.1:0"])
    return edge, edge.wait_ready()


def _switches(edge: Process) -> list[dict[str, object]]:
    """The edge's `sync_control_switched` lines: each time it moved to another replica."""
    return [e for e in edge.log_events() if e.get("event") == "sync_control_switched"]


def _snapshots_after_first(edge: Process) -> int:
    applied = [e for e in edge.log_events() if e.get("event") == "sync_applied"]
    return sum(1 for e in applied[1:] if e.get("snapshot"))


def _events_total(env: dict[str, str], control: str) -> int:
    from edgewise.client import ControlClient

    with ControlClient(control, token=env["EDGEWISE_OPS_TOKEN"], timeout=30) as ops:
        return ops.status().events_total


def _track_views(address: str, prefix: str, count: int) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = _pb_grpc.PersonalizerStub(channel)
        for start in range(0, count, 50):
            events = [
                _pb.Event(event_id=f"{prefix}-{n}", type="view", user_id=f"u{n % 60}", item_id=f"i{n % 40}")
                for n in range(start, min(start + 50, count))
            ]
            stub.Track(_pb.TrackRequest(events=events, consent=["analytics"]), timeout=10)


def _central(env: dict[str, str], procs: Processes, tmp: Path, bundle_dir: Path) -> int:
    """The central tier's run; the number of processes it SIGKILLed on purpose."""
    from edgewise.nats_cluster import NATS_EXTRA_HINT, NatsCluster, NatsClusterError, nats_server_binary

    if nats_server_binary() is None:
        raise RuntimeError(f"--nats needs the nats-server binary and the NATS client: {NATS_EXTRA_HINT}")
    try:
        cluster = NatsCluster(tmp / "nats", size=3).start()
    except NatsClusterError as exc:
        raise RuntimeError(str(exc)) from exc
    try:
        _say(f"2. NATS JetStream cluster: 3 servers on loopback ({cluster.url_list})")
        replicas = {}
        for name in ("replica-a", "replica-b"):
            args = ["control", "serve", "--data", str(tmp / f"{name}-data"), "--listen", "127.0.0.1:0"]
            replicas[name] = procs.serve(name, [*args, "--nats", cluster.url_list])
            _say(f"   {name}: pid {replicas[name].pid}, serving {replicas[name].address}")
        a, b = replicas["replica-a"], replicas["replica-b"]
        _say(f"3. $ edgewise ctl --control {a.address} push BUNDLE   (through replica A)")
        _say(f"   {_ctl(env, a.address, 'push', str(bundle_dir), '--quiet')}")
        served = {
            "edge-a": _serve_edge(procs, tmp, "edge-a", f"{a.address},{b.address}"),
            "edge-b": _serve_edge(procs, tmp, "edge-b", f"{b.address},{a.address}"),
        }
        edges = {name: info for name, (_, info) in served.items()}
        _say("   both edges list both replicas, each its own first:")
        _say(f"   edge-a: --control {a.address},{b.address} (follows replica A)")
        _say(f"   edge-b: --control {b.address},{a.address} (follows replica B)")
        for name, info in edges.items():
            _say(f"   {name}: version {info['snapshot_version']}")
        datas = [tmp / f"{name}-data" for name in edges]
        _say(f"   identical data on both edges: {'yes' if _digest(datas[0]) == _digest(datas[1]) else 'NO'}")

        _say("4. 300 views tracked on each edge (100 event ids on both): forwarded into the events stream")
        _track_views(str(edges["edge-a"]["address"]), "ev", 300)
        _track_views(str(edges["edge-b"]["address"]), "ev", 100)
        _track_views(str(edges["edge-b"]["address"]), "evb", 200)

        _say("5. Replica A killed (SIGKILL) and NATS server n1 killed (SIGKILL) mid-run; a delta pushed")
        _say("   through replica B meanwhile")
        killed = time.monotonic()
        a.stop(signal.SIGKILL)
        cluster.kill(0)
        delta = tmp / "delta.jsonl"
        _delta_file(delta, bundle_dir)
        printed = _ctl(env, b.address, "push-delta", str(delta), "--quiet")
        version = int(printed.split("version ")[1].split(",")[0])
        _say(f"   {printed}")
        pushed = time.monotonic()
        took = _wait(lambda: all(_edge_version(d) >= version for d in datas), 60)
        # The replica folding the views of step 4 may commit meanwhile: the edges agree once both applied it.
        same = _wait(lambda: len({(_edge_version(d), _digest(d)) for d in datas}) == 1, 10) is not None
        edge_a = served["edge-a"][0]
        moved = [f"{e['from']} -> {e['to']}" for e in _switches(edge_a)]
        _say(
            f"   edge-a failed over to replica B ({', '.join(moved) or 'NOT moved'}); both edges at version "
            f"{version} "
            + (
                f"{1000 * took:.0f} ms after `ctl push-delta` returned ({pushed + took - killed:.1f} s after "
                "the kills: the ctl command and the push waiting for the streams' new leaders included)"
                if took is not None
                else "NOT reached"
            )
            + f"; full snapshots after the first: {_snapshots_after_first(edge_a)}; identical data: "
            + ("yes" if same else "NO")
        )
        _say("   replica A restarted on its cache and port (the edges stay on B; A serves again):")
        a2 = procs.serve(
            "replica-a",
            [
                *a.args[: a.args.index("--listen") + 1],
                f"127.0.0.1:{a.port}",
                *a.args[a.args.index("--listen") + 2 :],
            ],
        )
        _say(f"   replica-a: pid {a2.pid}, caught up to the log before serving")
        counted = _wait(lambda: _events_total(env, a2.address) == 500 == _events_total(env, b.address), 60)
        _say(
            "6. events stored in the stream, asked through replica A and replica B: "
            f"{_events_total(env, a2.address)} and {_events_total(env, b.address)} "
            f"(500 distinct ids: counted once{'' if counted is not None else ' NOT reached'})"
        )
        for line in _ctl(env, b.address, "status").splitlines():
            _say(f"   {line}")
        _say()
        _say("   (the canary is pushed through replica A, promoted through replica B)")
        _canary(env, a2.address, tmp, list(edges), step="7.", promote_address=b.address)
        return 1
    finally:
        procs.stop_all()  # the replicas first, while NATS still answers
        cluster.stop()
