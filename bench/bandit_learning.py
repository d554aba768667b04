"""Closed-loop simulation of the control plane's bandit learning (`edgewise.core.bandit_learning`).

`simulate` runs the real policy (`compile_bandit`, `BanditPolicy.choose`) against known arm rates,
feeds the outcomes through `BanditStats` and `update_bandit_doc` as the control plane does, and reports
regret; `python -m bench.bandit_learning` prints the table quoted in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from edgewise.core.bandit_learning import BanditStats, posterior_means, update_bandit_doc
from edgewise.core.bandits import MAX_SHAPE, compile_bandit

__all__ = ["SimulationResult", "main", "simulate"]

# --- closed-loop simulation ------------------------------------------------------------------------

Rates = Sequence[float] | Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class SimulationResult:
    """Outcome of `simulate`. Regret is pseudo-regret: best rate minus the chosen arm's rate, per pull,
    against the rates in force for the pull's segment at that round."""

    pulls: int
    rounds: int
    batch: int
    rewards: int
    cumulative_regret: float
    regret_per_pull: float
    uniform_regret_per_pull: float  # expected regret per pull of choosing uniformly at random
    regret_per_pull_by_decile: tuple[float, ...]  # per tenth of the rounds, in order
    best_arm_share_last_10pct: float  # share of pulls of the (then) best arm in the last 10% of rounds
    best_arm_share_last_10pct_by_segment: Mapping[str | None, float]
    final_means: Mapping[str | None, tuple[float, ...]]  # posterior means per segment (None: global)
    final_doc: Mapping[str, Any]
    seconds: float


def _rate_table(rates: Rates) -> dict[str | None, tuple[float, ...]]:
    table: dict[str | None, tuple[float, ...]] = (
        {name: tuple(float(r) for r in seq) for name, seq in rates.items()}
        if isinstance(rates, Mapping)
        else {None: tuple(float(r) for r in rates)}
    )
    sizes = {len(seq) for seq in table.values()}
    if not table or len(sizes) != 1 or min(sizes) < 1:
        raise ValueError("arm rates: every segment needs the same, non-zero number of arms")
    if any(not 0.0 <= r <= 1.0 for seq in table.values() for r in seq):
        raise ValueError("arm rates must be in [0, 1]")
    return table


def simulate(
    arm_rates: Rates,
    rounds: int,
    batch: int,
    seed: int,
    *,
    decay: float = 1.0,
    prior: tuple[float, float] = (1.0, 1.0),
    exploration_floor: float = 0.0,
    rates_after: Rates | None = None,
    change_round: int | None = None,
    max_shape: float = MAX_SHAPE,
) -> SimulationResult:
    """Closed loop: per round, serve `batch` decisions with the compiled policy (`compile_bandit`,
    `BanditPolicy.choose`), draw Bernoulli rewards from the known rates, count them in a `BanditStats`
    (exposure, then attributed click), and publish: `update_bandit_doc` with the batch's counts and a
    freshly compiled policy.

    `arm_rates`: one rate per arm, or a mapping segment -> rates (the bandit then has those segments, and
    each request belongs to one of them uniformly at random). From round `change_round` on, the rates are
    `rates_after` (same shape): a non-stationary problem.
    """
    if rounds < 1 or batch < 1:
        raise ValueError("rounds and batch must be >= 1")
    before = _rate_table(arm_rates)
    after = _rate_table(rates_after) if rates_after is not None else before
    if set(after) != set(before) or len(next(iter(after.values()))) != len(next(iter(before.values()))):
        raise ValueError("rates_after must have the shape of arm_rates")
    if rates_after is not None and change_round is None:
        raise ValueError("rates_after needs change_round")
    k = len(next(iter(before.values())))
    segment_names = list(before)
    arm_ids = [f"arm{i}" for i in range(k)]
    a0, b0 = prior
    doc: dict[str, Any] = {
        "arms": [{"id": a, "content_id": f"content_{a}", "alpha": a0, "beta": b0} for a in arm_ids],
        "exploration_floor": exploration_floor,
    }
    if segment_names != [None]:
        doc["segments"] = {
            str(s): {"arms": [{"id": a, "alpha": a0, "beta": b0} for a in arm_ids]} for s in segment_names
        }
    bandit_id = "sim"
    started = time.perf_counter()
    policy = compile_bandit(doc, f"bandits.{bandit_id}")
    stats = BanditStats(bandit_ids={bandit_id}, max_exposures=max(4 * batch, 1024))
    streams = np.random.SeedSequence(seed).spawn(3)
    choose_rng, reward_rng, segment_rng = (np.random.default_rng(s) for s in streams)
    index = {a: i for i, a in enumerate(arm_ids)}

    regret_by_round = np.zeros(rounds)
    pulls_last = {s: 0 for s in segment_names}
    best_last = {s: 0 for s in segment_names}
    last_start = rounds - max(1, math.ceil(rounds / 10))
    uniform_regret = 0.0
    total_rewards = 0
    decision = 0
    for rnd in range(rounds):
        table = after if change_round is not None and rnd >= change_round else before
        best = {s: max(table[s]) for s in segment_names}
        best_index = {s: table[s].index(best[s]) for s in segment_names}
        uniform = {s: best[s] - sum(table[s]) / k for s in segment_names}
        draws = reward_rng.random(batch)
        seg_draws = segment_rng.integers(len(segment_names), size=batch) if len(segment_names) > 1 else None
        round_regret = 0.0
        for j in range(batch):
            seg = segment_names[int(seg_draws[j])] if seg_draws is not None else None
            arm, _ = policy.choose(choose_rng, seg)
            i = index[arm.id]
            rate = table[seg][i]
            round_regret += best[seg] - rate
            uniform_regret += uniform[seg]
            if rnd >= last_start:
                pulls_last[seg] += 1
                best_last[seg] += i == best_index[seg]
            eid = f"d{decision}:hero"
            decision += 1
            stats.add_exposure(eid, bandit_id, arm.id, seg)
            if draws[j] < rate and stats.add_reward(eid, "click"):
                total_rewards += 1
        regret_by_round[rnd] = round_regret
        doc = update_bandit_doc(
            doc, stats.take(), bandit_id=bandit_id, prior=prior, decay=decay, max_shape=max_shape
        )
        policy = compile_bandit(doc, f"bandits.{bandit_id}")

    pulls = rounds * batch
    deciles = [chunk for chunk in np.array_split(regret_by_round, 10) if chunk.size]
    final_means: dict[str | None, tuple[float, ...]] = {
        s: tuple(posterior_means(doc, s).values()) for s in segment_names
    }
    last_pulls = sum(pulls_last.values())
    return SimulationResult(
        pulls=pulls,
        rounds=rounds,
        batch=batch,
        rewards=total_rewards,
        cumulative_regret=float(regret_by_round.sum()),
        regret_per_pull=float(regret_by_round.sum()) / pulls,
        uniform_regret_per_pull=uniform_regret / pulls,
        regret_per_pull_by_decile=tuple(float(c.sum()) / (c.size * batch) for c in deciles),
        best_arm_share_last_10pct=sum(best_last.values()) / last_pulls,
        best_arm_share_last_10pct_by_segment={
            s: best_last[s] / pulls_last[s] if pulls_last[s] else math.nan for s in segment_names
        },
        final_means=final_means,
        final_doc=doc,
        seconds=time.perf_counter() - started,
    )


# --- benchmark table -------------------------------------------------------------------------------

_THREE: Final = (0.02, 0.035, 0.05)
_TEN: Final = tuple(round(0.01 + 0.004 * i, 4) for i in range(10))  # 0.010 .. 0.046


@dataclass(frozen=True)
class _Config:
    name: str
    rates: tuple[float, ...]
    decay: float
    rates_after: tuple[float, ...] | None = None


_CONFIGS: Final = (
    _Config("3 arms", _THREE, 1.0),
    _Config("3 arms, decay 0.99", _THREE, 0.99),
    _Config("10 arms", _TEN, 1.0),
    _Config("10 arms, decay 0.99", _TEN, 0.99),
    _Config("3 arms, best changes at 1/2", _THREE, 1.0, _THREE[::-1]),
    _Config("3 arms, best changes at 1/2, decay 0.99", _THREE, 0.99, _THREE[::-1]),
)


def _benchmark(rounds: int, batch: int, seeds: int) -> list[dict[str, Any]]:
    rows = []
    for cfg in _CONFIGS:
        results = [
            simulate(
                cfg.rates,
                rounds,
                batch,
                seed,
                decay=cfg.decay,
                rates_after=cfg.rates_after,
                change_round=rounds // 2 if cfg.rates_after is not None else None,
            )
            for seed in range(seeds)
        ]
        ratio = [r.regret_per_pull / r.uniform_regret_per_pull for r in results]
        share = [r.best_arm_share_last_10pct for r in results]
        rows.append(
            {
                "config": cfg.name,
                "pulls": rounds * batch,
                "regret_per_pull": statistics.fmean(r.regret_per_pull for r in results),
                "uniform_regret_per_pull": statistics.fmean(r.uniform_regret_per_pull for r in results),
                "regret_vs_uniform": statistics.fmean(ratio),
                "regret_vs_uniform_min": min(ratio),
                "regret_vs_uniform_max": max(ratio),
                "first_decile_regret": statistics.fmean(r.regret_per_pull_by_decile[0] for r in results),
                "last_decile_regret": statistics.fmean(r.regret_per_pull_by_decile[-1] for r in results),
                "best_share_last_10pct": statistics.fmean(share),
                "best_share_min": min(share),
                "seconds_per_run": statistics.fmean(r.seconds for r in results),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bandit_learning",
        description="Closed-loop Thompson-sampling learning against known arm rates: regret and convergence.",
    )
    parser.add_argument("--rounds", type=int, default=500, help="publishes per run (default 500)")
    parser.add_argument("--batch", type=int, default=100, help="decisions per publish (default 100)")
    parser.add_argument("--seeds", type=int, default=5, help="runs per configuration (default 5)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    rows = _benchmark(args.rounds, args.batch, args.seeds)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.rounds} publishes x {args.batch} decisions, {args.seeds} seeds per configuration")
    print(
        "| configuration | pulls | regret/pull | uniform regret/pull | regret vs uniform (min-max) "
        "| regret/pull 1st / last decile | best-arm share, last 10% (min) | s/run |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['config']} | {r['pulls']:,} | {r['regret_per_pull']:.5f} | "
            f"{r['uniform_regret_per_pull']:.5f} | {r['regret_vs_uniform']:.3f} "
            f"({r['regret_vs_uniform_min']:.3f}-{r['regret_vs_uniform_max']:.3f}) | "
            f"{r['first_decile_regret']:.5f} / {r['last_decile_regret']:.5f} | "
            f"{r['best_share_last_10pct']:.3f} ({r['best_share_min']:.3f}) | {r['seconds_per_run']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
