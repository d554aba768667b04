"""A digest of the decisions the bench mix gets: the check that a change left behaviour unchanged.

    python -m bench.digest                  # 20k users x 5k items, 3,000 mix requests + 300 returning
    python -m bench.digest --users 100000 --items 10000 --requests 6000

It builds the synthetic bundle (seeded), applies it to a fresh store, records the mix's live activity,
decides every request of the bench mix (bench.pipeline's `make_requests`) and the returning shoppers
(full activity), each with and without `explain`, and prints one SHA-256 over every decision: the
snapshot version, every placement's items with their scores, reasons and promotion, its content,
experiment, variant, propensity, strategy and fallback, and the explanation. Run it before and after a
change: the same line means the same decisions.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.bench.pipeline import (
    Population,
    make_requests,
    prepare_bundle,
    record_activity,
    returning_shoppers,
)
from edgewise.core.decisions import DecideResponse
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store
from edgewise.sync.snapshot import apply_bundle

__all__ = ["canonical", "main"]

# Fields added after the digest was first taken, left out while empty (as they are in every decision
# that does not use them), so the same decisions keep the same digest: a placement's contextual
# bandit feature vector.
_OMITTED_WHEN_EMPTY = frozenset({"context_vector"})


def canonical(value: Any) -> Any:
    """Plain JSON-able data of a decision (dataclasses by field name, without the empty fields of
    `_OMITTED_WHEN_EMPTY`; enums by value, sets sorted). A
    DecideResponse's `decision_id` is left out: the edge assigns it per call, the pipeline leaves it
    empty, so it is not part of what was decided."""
    if isinstance(value, DecideResponse):
        fields = [f.name for f in dataclasses.fields(value) if f.name != "decision_id"]
        return {name: canonical(getattr(value, name)) for name in fields}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (f.name in _OMITTED_WHEN_EMPTY and not getattr(value, f.name))
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(canonical(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, np.generic):
        return canonical(value.item())
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.digest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000, help="synthetic profiles (default 20000)")
    parser.add_argument("--items", type=int, default=5_000, help="synthetic items (default 5000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3_000, help="mix requests (default 3000)")
    parser.add_argument("--returning", type=int, default=300, help="returning shoppers (default 300)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    bundle, _, _ = prepare_bundle(None, args.users, args.items, args.seed)
    rng = np.random.default_rng(args.seed)
    pop = Population.of(bundle, rng)
    requests = make_requests(pop, args.requests, rng)
    digest = hashlib.sha256()
    decided = 0
    with tempfile.TemporaryDirectory(prefix="edgewise-digest-") as tmp:
        store = Store(Path(tmp) / "store", map_size=4 << 30)
        try:
            apply_bundle(store, bundle)
            record_activity(store, pop, requests, rng)
            requests = [*requests, *returning_shoppers(store, pop, args.returning, rng)]
            pipeline = Pipeline()
            for request in requests:
                for explain in (False, True):
                    asked = dataclasses.replace(request, explain=explain)
                    with store.read() as view:
                        decision = pipeline.decide(view, asked)
                    line = json.dumps(canonical(decision), sort_keys=True, separators=(",", ":"))
                    digest.update(line.encode())
                    digest.update(b"\n")
                    decided += 1
        finally:
            store.close()
    print(
        f"decisions {decided} ({args.users} users x {args.items} items, seed {args.seed}): "
        f"sha256 {digest.hexdigest()}  [{time.perf_counter() - t0:.1f} s]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
