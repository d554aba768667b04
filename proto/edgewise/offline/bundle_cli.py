"""`edgewise bundle synth|validate`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgewise.progress import ProgressLine

__all__ = [
    "SYNTH_DOC",
    "VALIDATE_DOC",
    "add_synth_arguments",
    "add_validate_arguments",
    "run_synth",
    "run_validate",
]

SYNTH_DOC = """Write a realistic synthetic bundle: Zipf item popularity, categories, user interests,
countries, devices, ~10% of profiles without the personalization consent, item and user embeddings
consistent with the interests. Ids are u<n> and i<n>. Placements: home, pdp_similar, hero_banner (experiment
hero_test). Deterministic for a seed."""

VALIDATE_DOC = """Validate a bundle exactly as an edge would before loading it, and summarize it. Exit
status 1 and a message naming the file, record and field when it is refused (never a traceback)."""


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=10_000, help="number of profiles (default 10000)")
    parser.add_argument("--items", type=int, default=2_000, help="number of catalog items (default 2000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--dim", type=int, default=32, help="embedding dimension (default 32)")
    parser.add_argument("--version", type=int, default=1, help="bundle_version to write (default 1)")
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory (new, or an existing bundle)"
    )


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle directory")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run_synth(args: argparse.Namespace) -> int:
    from edgewise.offline.synth import synth_bundle
    from edgewise.sync.bundle import BundleError

    for name in ("users", "items", "dim", "version"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1", file=sys.stderr)
            return 2
    started = time.monotonic()
    line = ProgressLine(sys.stderr)

    def progress(message: str) -> None:
        line.update(f"  {message}")

    try:
        out = synth_bundle(
            args.out,
            users=args.users,
            items=args.items,
            seed=args.seed,
            dim=args.dim,
            version=args.version,
            progress=progress,
        )
    except (BundleError, OSError, ValueError) as exc:
        line.done()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    line.done()
    print(
        f"wrote bundle {out} (version {args.version}, {args.users} users, {args.items} items, "
        f"dim {args.dim}) in {time.monotonic() - started:.1f}s"
    )
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from edgewise.sync.bundle import BundleError, bundle_summary, load_bundle

    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except Exception as exc:  # a bundle load_bundle does not refuse cleanly: a bug, still no traceback
        print(
            f"bundle not validated: {type(exc).__name__}: {str(exc)[:500]} (an error edgewise should have "
            "reported as a refusal naming the file: please report it with the bundle)",
            file=sys.stderr,
        )
        return 1
    summary = bundle_summary(bundle)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"bundle {args.bundle}: valid")
        for key, value in summary.items():
            print(f"  {key}: {value}")
    return 0
