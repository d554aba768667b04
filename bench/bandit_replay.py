"""Replay the Open Bandit Dataset's uniform-random log through our Thompson-sampling bandit.

Run from the repository root:

    python -m bench.bandit_replay              # 20 seeds, a table (about 10 s)
    python -m bench.bandit_replay --json       # machine-readable output
    python -m bench.bandit_replay --seeds 5 --data ../shared/data/open-bandit

The replay method (Li, Chu, Langford, Wang, "Unbiased offline evaluation of contextual-bandit-based news
article recommendation algorithms", WSDM 2011): walk the log in time order; at each logged impression
the policy chooses an item from its current posteriors; if that is the item the logging policy showed,
the logged click is the policy's reward and updates its posterior; otherwise the impression is skipped
(the policy learns nothing from it). When the logging policy chose uniformly at random among K items,
every impression is kept with probability 1/K independently of the policy's choice, so the CTR over the
kept ("matched") impressions is an unbiased estimate of the CTR of the policy run on a stream of that
many impressions. The log must therefore be uniform: `replay` refuses a log whose propensities are not
all 1/K.

The choice is `edgewise.core.bandits.thompson_index`, the sampling step of `BanditPolicy.choose`
(Beta-Bernoulli Thompson sampling, argmax with ties to the lowest index, optional exploration floor),
called with posteriors that start at Beta(1, 1) and are updated in place after every matched
impression. (`BanditPolicy` itself is immutable, built once per rules/model version with its
propensities integrated at build time; rebuilding it after every update would only recompute
propensities the replay does not use.) Variants:

- `ts pooled`: one bandit over the 34 items, position-agnostic: every position's impressions update the
  same posteriors.
- `ts per position`: one independent bandit per position (3), each learning only from its position.
- `ts pooled, floor f`: the pooled bandit with an exploration floor.
- `uniform`: the uniform-random policy replayed, a sanity check of the method (it must reproduce the
  logged random CTR up to noise).

Next to them: the CTRs logged by the two behaviour policies, the mean click in random/men (uniform
random) and in bts/men (Bernoulli Thompson sampling, ZOZOTOWN's production bandit, trained on far more
traffic than this sample holds). Intervals are 95% Wilson score intervals.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgewise.core.bandits import thompson_index

__all__ = [
    "DEFAULT_DATA",
    "BanditLog",
    "ReplayResult",
    "VariantSummary",
    "load_log",
    "main",
    "replay",
    "run",
    "wilson_interval",
]

# The repository sits next to ../shared (see ../shared/data/README.md).
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "open-bandit"

_Z95 = 1.959963984540054


@dataclass(frozen=True)
class BanditLog:
    """A bandit log in time order: the item shown, its position, the click, the logging propensity."""

    items: NDArray[np.int64]
    positions: NDArray[np.int64]  # 0-based position index
    clicks: NDArray[np.int64]
    propensities: NDArray[np.float64]
    n_arms: int

    def __len__(self) -> int:
        return int(self.items.shape[0])


@dataclass(frozen=True)
class ReplayResult:
    """One replay run: matched impressions, clicks on them, the replay CTR and its 95% Wilson interval."""

    matched: int
    clicks: int
    ctr: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class VariantSummary:
    """Replay runs of one policy variant over several seeds."""

    name: str
    seeds: int
    ctr_mean: float
    ctr_sd: float
    ctr_min: float
    ctr_max: float
    matched_mean: float
    matched_min: int
    matched_max: int
    clicks_mean: float
    ci_low_mean: float  # mean over runs of each run's 95% Wilson bounds
    ci_high_mean: float
    runs: list[ReplayResult]


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion ((0, 1) when n == 0)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def load_log(csv_path: Path, n_arms: int | None = None) -> BanditLog:
    """Read an Open Bandit Dataset log (`men.csv`), sorted by timestamp (stable for equal times).

    Positions (1, 2, 3 in the file) become 0-based indices; `n_arms` defaults to the largest item id + 1.
    """
    stamps: list[float] = []
    items: list[int] = []
    positions: list[int] = []
    clicks: list[int] = []
    propensities: list[float] = []
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            stamps.append(datetime.fromisoformat(row["timestamp"]).timestamp())
            items.append(int(row["item_id"]))
            positions.append(int(row["position"]))
            clicks.append(int(row["click"]))
            propensities.append(float(row["propensity_score"]))
    if not items:
        raise ValueError(f"{csv_path}: empty log")
    order = np.argsort(np.array(stamps), kind="stable")
    position_values, position_index = np.unique(np.array(positions, dtype=np.int64), return_inverse=True)
    del position_values
    item_array = np.array(items, dtype=np.int64)[order]
    return BanditLog(
        items=item_array,
        positions=position_index.astype(np.int64)[order],
        clicks=np.array(clicks, dtype=np.int64)[order],
        propensities=np.array(propensities, dtype=np.float64)[order],
        n_arms=int(item_array.max()) + 1 if n_arms is None else n_arms,
    )


def replay(
    log: BanditLog,
    rng: np.random.Generator,
    *,
    policy: str = "ts",
    per_position: bool = False,
    exploration_floor: float = 0.0,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
) -> ReplayResult:
    """Replay a uniform-random log through a policy ("ts": Thompson sampling; "uniform": random choice).

    Thompson sampling starts every arm at Beta(prior_alpha, prior_beta) and updates the chosen arm's
    posterior with the logged click on every matched impression; `per_position` keeps one bandit per
    position instead of one for all positions.
    """
    if policy not in ("ts", "uniform"):
        raise ValueError(f"unknown policy {policy!r} (known: ts, uniform)")
    k = log.n_arms
    if not np.allclose(log.propensities, 1.0 / k, rtol=1e-9, atol=0.0):
        raise ValueError(f"the replay method needs a uniform-random log (every propensity 1/{k})")
    if log.items.min() < 0 or log.items.max() >= k:
        raise ValueError(f"item ids must lie in [0, {k})")
    bandits = int(log.positions.max()) + 1 if per_position else 1
    alpha = np.full((bandits, k), prior_alpha, dtype=np.float64)
    beta = np.full((bandits, k), prior_beta, dtype=np.float64)
    items = log.items.tolist()
    clicks = log.clicks.tolist()
    positions = log.positions.tolist() if per_position else [0] * len(items)
    matched = 0
    reward = 0
    for item, click, pos in zip(items, clicks, positions, strict=True):
        if policy == "ts":
            chosen = thompson_index(rng, alpha[pos], beta[pos], exploration_floor)
        else:
            chosen = int(rng.integers(k))
        if chosen != item:
            continue
        matched += 1
        reward += click
        alpha[pos, chosen] += click
        beta[pos, chosen] += 1 - click
    low, high = wilson_interval(reward, matched)
    return ReplayResult(matched, reward, reward / matched if matched else 0.0, low, high)


def _summarize(name: str, runs: list[ReplayResult]) -> VariantSummary:
    ctrs = [r.ctr for r in runs]
    matched = [r.matched for r in runs]
    return VariantSummary(
        name=name,
        seeds=len(runs),
        ctr_mean=statistics.fmean(ctrs),
        ctr_sd=statistics.stdev(ctrs) if len(runs) > 1 else 0.0,
        ctr_min=min(ctrs),
        ctr_max=max(ctrs),
        matched_mean=statistics.fmean(matched),
        matched_min=min(matched),
        matched_max=max(matched),
        clicks_mean=statistics.fmean(r.clicks for r in runs),
        ci_low_mean=statistics.fmean(r.ci_low for r in runs),
        ci_high_mean=statistics.fmean(r.ci_high for r in runs),
        runs=runs,
    )


def _logged(path: Path) -> dict[str, Any]:
    log = load_log(path)
    n = len(log)
    clicks = int(log.clicks.sum())
    low, high = wilson_interval(clicks, n)
    return {"path": str(path), "impressions": n, "clicks": clicks, "ctr": clicks / n, "ci": [low, high]}


def run(data: Path, seeds: int, floor: float) -> dict[str, Any]:
    """Replay every variant for seeds 0..seeds-1; return the logged CTRs and the variant summaries."""
    started = time.perf_counter()
    random_csv = data / "random" / "men" / "men.csv"
    log = load_log(random_csv)
    variants: list[tuple[str, dict[str, Any]]] = [
        ("uniform (replay sanity check)", {"policy": "uniform"}),
        ("ts pooled over positions", {"policy": "ts"}),
        ("ts per position", {"policy": "ts", "per_position": True}),
        (f"ts pooled, floor {floor:g}", {"policy": "ts", "exploration_floor": floor}),
    ]
    summaries = []
    for name, options in variants:
        runs = [replay(log, np.random.default_rng(seed), **options) for seed in range(seeds)]
        summaries.append(_summarize(name, runs))
    return {
        "data": str(data),
        "log": {"impressions": len(log), "arms": log.n_arms, "positions": int(log.positions.max()) + 1},
        "logged": {
            "random": _logged(random_csv),
            "bts": _logged(data / "bts" / "men" / "men.csv"),
        },
        "variants": [asdict(s) for s in summaries],
        "seeds": seeds,
        "seconds": time.perf_counter() - started,
    }


def _table(result: dict[str, Any]) -> str:
    info = result["log"]
    lines = [
        f"Open Bandit Dataset, men, random log: {info['impressions']:,} impressions, {info['arms']} items, "
        f"{info['positions']} positions; replay over {result['seeds']} seeds",
        "",
        f"{'policy':<40} {'CTR':>8} {'sd':>8} {'min-max':>16} {'matched':>8} {'(min-max)':>10} "
        f"{'clicks':>6}  95% CI (per run, mean bounds)",
        "-" * 136,
    ]
    for key, label in (
        ("random", "logged: uniform random (random/men)"),
        ("bts", "logged: Bernoulli TS (bts/men)"),
    ):
        row = result["logged"][key]
        lines.append(
            f"{label:<40} {row['ctr']:>8.5f} {'':>8} {'':>17} {row['impressions']:>8} {'(all)':>10} "
            f"{row['clicks']:>6}  [{row['ci'][0]:.5f}, {row['ci'][1]:.5f}]"
        )
    for v in result["variants"]:
        matched_range = f"({v['matched_min']}-{v['matched_max']})"
        lines.append(
            f"{'replay: ' + v['name']:<40} {v['ctr_mean']:>8.5f} {v['ctr_sd']:>8.5f} "
            f"{v['ctr_min']:>8.5f}-{v['ctr_max']:.5f} {v['matched_mean']:>8.1f} "
            f"{matched_range:>10} {v['clicks_mean']:>6.2f}  "
            f"[{v['ci_low_mean']:.5f}, {v['ci_high_mean']:.5f}]"
        )
    lines.append("")
    lines.append(f"({result['seconds']:.1f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the open-bandit folder")
    parser.add_argument("--seeds", type=int, default=20, help="replay runs per variant (seeds 0..n-1)")
    parser.add_argument("--floor", type=float, default=0.1, help="exploration floor of the floor variant")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if not (0.0 <= args.floor < 1.0):
        parser.error("--floor must be in [0, 1)")
    if not (args.data / "random" / "men" / "men.csv").is_file():
        print(f"no Open Bandit data at {args.data} (expected random/men/men.csv)", file=sys.stderr)
        return 2
    result = run(args.data, args.seeds, args.floor)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
