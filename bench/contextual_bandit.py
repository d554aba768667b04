"""Closed-loop simulation: a contextual bandit against the Beta bandit, with context-dependent rewards.

Each request has a context (device, channel, a loyalty attribute) drawn from a fixed distribution; arm k
clicks with probability r_k(x) = w_k . x (x: the intercept and one-hot columns), so the best arm depends
on the context. Both bandits run through the code the control plane and the edges run:

- Beta (context-free): `compile_bandit` / `BanditPolicy.choose`, `BanditStats` + `update_bandit_doc`;
- contextual: `compile_linear_bandit` / `LinearBanditPolicy.vector` + `choose` (the kernel),
  `LinearStats` + `update_linear_bandit_doc` (the exposure's vector, then the attributed click).

Per round, `batch` requests are decided with the policy of the last publish, then the round's exposures
and clicks are published (a new document, compiled again). Regret is pseudo-regret: the best arm's
rate for the request's context minus the chosen arm's. `python -m bench.contextual_bandit` prints the
table quoted in BENCHMARKS.md ("Contextual bandits"); several seeds give a mean and a 95% interval of
the ratio contextual / Beta.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from edgewise.core.bandit_learning import BanditStats, update_bandit_doc
from edgewise.core.bandits import compile_bandit
from edgewise.core.features import MISSING
from edgewise.core.linear_bandit_learning import LinearStats, update_linear_bandit_doc
from edgewise.core.linear_bandits import compile_linear_bandit
from edgewise.core.records import Activity
from edgewise.offline.contextual_ope import NoSegments

__all__ = ["FEATURES", "WEIGHTS", "SimulationResult", "main", "simulate"]

FEATURES: Final[list[dict[str, Any]]] = [
    {"path": "context.device", "values": ["mobile", "desktop", "tablet"]},
    {"path": "context.channel", "values": ["web", "app"]},
    {"path": "context.attributes.loyal", "values": ["yes"]},
]
# Click rate of each arm: w . x, x = [1, mobile, desktop, tablet, web, app, loyal].
WEIGHTS: Final = np.array(
    [
        [0.03, 0.07, 0.00, 0.00, 0.01, 0.00, 0.00],
        [0.03, 0.00, 0.06, 0.02, 0.00, 0.01, 0.00],
        [0.03, 0.00, 0.00, 0.07, 0.00, 0.03, 0.00],
        [0.02, 0.01, 0.01, 0.01, 0.00, 0.00, 0.09],
    ]
)
DEVICES: Final = (("mobile", 0.5), ("desktop", 0.35), ("tablet", 0.15))
CHANNELS: Final = (("web", 0.6), ("app", 0.4))
LOYAL: Final = 0.25


class _Source:
    """The request's context as a feature source (what `FeatureView` answers for these paths)."""

    __slots__ = ("_values",)
    now_ms = 0
    activity: Activity | None = None

    def __init__(self, device: str, channel: str, loyal: bool) -> None:
        self._values: dict[tuple[str, ...], str] = {
            ("context", "device"): device,
            ("context", "channel"): channel,
        }
        if loyal:
            self._values[("context", "attributes", "loyal")] = "yes"

    def get(self, path: tuple[str, ...]) -> Any:
        return self._values.get(path, MISSING)

    def item_category(self, item_id: str) -> str | None:
        return None

    def replenish_days(self, item_id: str) -> float | None:
        return None


@dataclass(frozen=True)
class SimulationResult:
    policy: str
    pulls: int
    cumulative_regret: float
    regret_per_pull_by_decile: tuple[float, ...]
    clicks: int
    seconds: float


def _contexts(rng: np.random.Generator, n: int) -> list[tuple[str, str, bool]]:
    devices = rng.choice([d for d, _ in DEVICES], size=n, p=[p for _, p in DEVICES])
    channels = rng.choice([c for c, _ in CHANNELS], size=n, p=[p for _, p in CHANNELS])
    loyal = rng.random(n) < LOYAL
    return [(str(d), str(c), bool(v)) for d, c, v in zip(devices, channels, loyal, strict=True)]


def _true_x(device: str, channel: str, loyal: bool) -> np.ndarray:
    return np.array(
        [
            1.0,
            device == "mobile",
            device == "desktop",
            device == "tablet",
            channel == "web",
            channel == "app",
            loyal,
        ],
        dtype=np.float64,
    )


def simulate(
    policy: str,
    rounds: int,
    batch: int,
    seed: int,
    *,
    exploration_floor: float = 0.05,
    temperature: float | None = None,
    ucb: float | None = None,
) -> SimulationResult:
    """Run one policy ("beta" or "contextual") for `rounds` publishes of `batch` requests each."""
    if policy not in ("beta", "contextual"):
        raise ValueError(f"policy must be beta or contextual, got {policy!r}")
    k = WEIGHTS.shape[0]
    arm_ids = [f"arm{i}" for i in range(k)]
    streams = np.random.SeedSequence(seed).spawn(3)
    context_rng, choose_rng, reward_rng = (np.random.default_rng(s) for s in streams)
    doc: dict[str, Any]
    if policy == "beta":
        doc = {
            "arms": [{"id": a, "content_id": a, "alpha": 1, "beta": 1} for a in arm_ids],
            "exploration_floor": exploration_floor,
        }
    else:
        doc = {
            "context": FEATURES,
            "arms": [{"id": a} for a in arm_ids],
            "exploration_floor": exploration_floor,
        }
        if temperature is not None:
            doc["temperature"] = temperature
        if ucb is not None:
            doc["ucb"] = ucb
    started = time.perf_counter()
    regret = np.zeros(rounds)
    clicks = 0
    no_segments = NoSegments()
    seq = 0
    for r in range(rounds):
        contexts = _contexts(context_rng, batch)
        beta_stats = BanditStats(bandit_ids={"sim"})
        linear_stats = LinearStats()
        if policy == "beta":
            beta_policy = compile_bandit(doc, "bandits.sim")
        else:
            linear_policy = compile_linear_bandit(doc, "bandits.sim")
        for device, channel, loyal in contexts:
            seq += 1
            eid = f"d{seq}:slot"
            truth = WEIGHTS @ _true_x(device, channel, loyal)
            if policy == "beta":
                arm, _ = beta_policy.choose(choose_rng)
                index = arm_ids.index(arm.id)
                beta_stats.add_exposure(eid, "sim", arm.id)
            else:
                x = linear_policy.vector(_Source(device, channel, loyal), no_segments, None)
                larm, _ = linear_policy.choose(choose_rng, x)
                index = arm_ids.index(larm.id)
                linear_stats.add_exposure(eid, "sim", larm.id, np.array(x))
            regret[r] += float(truth.max() - truth[index])
            if reward_rng.random() < truth[index]:
                clicks += 1
                if policy == "beta":
                    beta_stats.add_reward(eid)
                else:
                    linear_stats.add_reward(eid)
        if policy == "beta":
            doc = update_bandit_doc(doc, beta_stats, bandit_id="sim")
        else:
            doc = update_linear_bandit_doc(doc, linear_stats.take(), bandit_id="sim")
    deciles = tuple(float(chunk.sum() / (len(chunk) * batch)) for chunk in np.array_split(regret, 10))
    return SimulationResult(
        policy, rounds * batch, float(regret.sum()), deciles, clicks, time.perf_counter() - started
    )


def _interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and a 95% t interval (normal for many values) over seeds."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(
        len(values), 2.0
    )
    half = t * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def run(rounds: int, batch: int, seeds: Sequence[int]) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        beta = simulate("beta", rounds, batch, seed)
        ctx = simulate("contextual", rounds, batch, seed)
        rows.append((seed, beta, ctx))
        print(
            f"seed {seed}: regret beta {beta.cumulative_regret:.1f}, contextual {ctx.cumulative_regret:.1f} "
            f"(ratio {ctx.cumulative_regret / beta.cumulative_regret:.3f})",
            file=sys.stderr,
        )
    ratios = [c.cumulative_regret / b.cumulative_regret for _, b, c in rows]
    mean, low, high = _interval(ratios)
    return {
        "benchmark": "bench.contextual_bandit",
        "rounds": rounds,
        "batch": batch,
        "pulls": rounds * batch,
        "seeds": list(seeds),
        "per_seed": [
            {
                "seed": seed,
                "beta_regret": b.cumulative_regret,
                "contextual_regret": c.cumulative_regret,
                "beta_clicks": b.clicks,
                "contextual_clicks": c.clicks,
                "beta_by_decile": b.regret_per_pull_by_decile,
                "contextual_by_decile": c.regret_per_pull_by_decile,
            }
            for seed, b, c in rows
        ],
        "ratio": {"mean": mean, "ci95": [low, high], "max": max(ratios)},
        "met": max(ratios) <= 0.5,
    }


def _format(result: dict[str, Any]) -> str:
    lines = [
        f"contextual vs Beta bandit: {result['pulls']} pulls ({result['rounds']} publishes of "
        f"{result['batch']}), {len(result['seeds'])} seeds; cumulative pseudo-regret",
        f"{'seed':>6} {'beta':>10} {'contextual':>11} {'ratio':>7} {'clicks beta':>12} {'clicks ctx':>11}",
    ]
    for row in result["per_seed"]:
        lines.append(
            f"{row['seed']:>6} {row['beta_regret']:>10.1f} {row['contextual_regret']:>11.1f} "
            f"{row['contextual_regret'] / row['beta_regret']:>7.3f} {row['beta_clicks']:>12} "
            f"{row['contextual_clicks']:>11}"
        )
    r = result["ratio"]
    lines.append(
        f"ratio contextual / beta: mean {r['mean']:.3f} (95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}), "
        f"worst seed {r['max']:.3f} -> {'at most half: MET' if result['met'] else 'NOT MET'}"
    )
    first = result["per_seed"][0]
    lines.append(
        "regret per pull by tenth of the run (seed "
        f"{first['seed']}): beta " + " ".join(f"{v:.4f}" for v in first["beta_by_decile"])
    )
    lines.append(
        "                                      contextual "
        + " ".join(f"{v:.4f}" for v in first["contextual_by_decile"])
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.contextual_bandit", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke test: 20 rounds of 100, 2 seeds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rounds, batch, seeds = (20, 100, 2) if args.quick else (args.rounds, args.batch, args.seeds)
    result = run(rounds, batch, list(range(1, seeds + 1)))
    print(json.dumps(result, indent=2) if args.json else _format(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
