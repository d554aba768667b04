"""`edgewise demo`: the whole loop on temporary directories, in well under a minute.

Builds a synthetic bundle, starts a standalone edge as a real subprocess on a free loopback port,
decides for a known user, an anonymous visitor and a user without consent, tracks a view and shows
the next decision change (the viewed item leaves `home`, `pdp_similar` follows it), then shuts the
edge down cleanly. Ctrl-C at any point stops the edge too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from edgewise.v1 import personalizer_pb2 as _pb
from edgewise.v1 import personalizer_pb2_grpc as _pb_grpc

__all__ = ["add_arguments", "run"]

PLACEMENTS = ("home", "pdp_similar", "hero_banner", "deals", "promo_slot")
REASONS = {v.number: v.name.removeprefix("FALLBACK_REASON_") for v in _pb.FallbackReason.DESCRIPTOR.values}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    parser.add_argument("--items", type=int, default=1000, help="synthetic items (default 1000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _wait_ready(
    proc: subprocess.Popen[bytes], ready: Path, log_path: Path, timeout: float
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            info: dict[str, object] = json.loads(ready.read_text())
            return info
        if proc.poll() is not None:
            raise RuntimeError(f"the edge exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"the edge did not become ready in {timeout:.0f}s:\n{log_path.read_text()[-2000:]}")


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
    _say("3. Decisions (context: web, mobile, DE)")
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
        f"  {viewed} left home: {'yes' if gone else 'NO'}; pdp_similar now shows neighbours of: "
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


def run(args: argparse.Namespace) -> int:
    from edgewise.bench.synth import synth_bundle

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="edgewise-demo-"))
    proc: subprocess.Popen[bytes] | None = None
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
        ready = tmp / "edge.ready"
        log_path = tmp / "edge.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgewise.edge.cli",
                    "edge",
                    "serve",
                    "--data",
                    str(tmp / "edge-data"),
                    "--bundle",
                    str(bundle_dir),
                    "--listen",
                    "127.0.0.1:0",
                    "--ready-file",
                    str(ready),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        info = _wait_ready(proc, ready, log_path, timeout=60)
        _say(
            f"2. Edge started as pid {info['pid']}, serving {info['address']}, snapshot version "
            f"{info['snapshot_version']} (logs: JSON lines in {log_path})"
        )
        _say()
        with grpc.insecure_channel(str(info["address"])) as channel:
            _show(_pb_grpc.PersonalizerStub(channel), bundle_dir)
        proc.terminate()
        code = proc.wait(timeout=30)
        _say(f"6. Edge stopped on SIGTERM (health NOT_SERVING, drained), exit status {code}")
        _say(f"done in {time.monotonic() - started:.1f}s")
        return 0 if code == 0 else 1
    except KeyboardInterrupt:
        _say("\ninterrupted: stopping the edge")
        return 130
    except (RuntimeError, grpc.RpcError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if args.keep:
            _say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
