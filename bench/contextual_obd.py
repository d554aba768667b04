"""The contextual bandit on the Open Bandit Dataset sample, next to Bernoulli Thompson sampling.

Run from the repository root:

    python -m bench.contextual_obd                 # 20 seeds of replay + OPE on the second half
    python -m bench.contextual_obd --json
    python -m bench.contextual_obd --data ../shared/data/open-bandit --seeds 5

Replay (Li et al. 2011, as in bench.bandit_replay): the uniform-random log in time order; at each
impression the policy chooses an item for the row's context (the hashed user features and the
position, `edgewise.offline.contextual_ope.default_doc`); when it is the logged item, the click is its
reward. The contextual bandit learns as the control plane does: each matched impression is an exposure
with its vector in `LinearStats`, a click rewards it, and every `--publish-every` matched impressions
the arms' A and b are published (`update_linear_bandit_doc`) and the policy compiled again. Bernoulli
TS is `bench.bandit_replay.replay` (pooled over positions, Beta(1, 1) priors). Intervals: each run's
95% Wilson interval, averaged over seeds, and the spread of the CTR over seeds.

OPE: the contextual bandit learned on the first half of the log (time order), and ZOZOTOWN's Bernoulli
TS (its production prior, as in `eval ope`), both evaluated on the second half with IPS, SNIPS and DR
(`edgewise.core.ope`, 95% bootstrap intervals, the same resamples for both: paired).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.bench.bandit_replay import DEFAULT_DATA, ReplayResult, load_log, replay, wilson_interval
from edgewise.core import ope
from edgewise.core.linear_bandit_learning import LinearStats, update_linear_bandit_doc
from edgewise.core.linear_bandits import compile_linear_bandit
from edgewise.offline import contextual_ope
from edgewise.offline.ope_cli import LEN_LIST, load_obd_log, zozotown_prior

__all__ = ["main", "replay_contextual", "run"]


def replay_contextual(
    rows: list[dict[str, str]],
    items: list[int],
    clicks: list[int],
    doc: dict[str, Any],
    rng: np.random.Generator,
    publish_every: int,
) -> ReplayResult:
    """Replay a uniform log through the contextual bandit, learning as the control plane does."""
    policy = compile_linear_bandit(doc, "bandits.obd")
    stats = LinearStats(max_exposures=max(1, len(rows)))
    matched = reward = pending = 0
    for i, (row, item, click) in enumerate(zip(rows, items, clicks, strict=True)):
        x = policy.vector(contextual_ope.RowSource(row), _NO_SEGMENTS, None)
        arm, _ = policy.choose(rng, x)
        if int(arm.id) != item:
            continue
        matched += 1
        reward += click
        stats.add_exposure(f"r{i}", "obd", arm.id, np.array(x))
        if click:
            stats.add_reward(f"r{i}")
        pending += 1
        if pending >= publish_every:
            doc = update_linear_bandit_doc(doc, stats.take(), bandit_id="obd")
            policy = compile_linear_bandit(doc, "bandits.obd")
            pending = 0
    low, high = wilson_interval(reward, matched)
    return ReplayResult(matched, reward, reward / matched if matched else 0.0, low, high)


class _Never:
    def matches(self, segment_id: str) -> bool:
        return False


_NO_SEGMENTS = _Never()


def _summary(runs: list[ReplayResult]) -> dict[str, Any]:
    ctrs = [r.ctr for r in runs]
    return {
        "ctr_mean": statistics.fmean(ctrs),
        "ctr_sd": statistics.stdev(ctrs) if len(ctrs) > 1 else 0.0,
        "matched_mean": statistics.fmean(r.matched for r in runs),
        "clicks_mean": statistics.fmean(r.clicks for r in runs),
        "wilson_ci_mean": [
            statistics.fmean(r.ci_low for r in runs),
            statistics.fmean(r.ci_high for r in runs),
        ],
    }


def run(data: Path, seeds: int, publish_every: int, bootstrap: int) -> dict[str, Any]:
    started = time.perf_counter()
    random_csv = data / "random" / "men" / "men.csv"
    log = load_log(random_csv)
    rows = contextual_ope.read_rows(random_csv)
    items, clicks = log.items.tolist(), log.clicks.tolist()
    doc = contextual_ope.default_doc(rows, log.n_arms)
    ctx_runs = [
        replay_contextual(rows, items, clicks, doc, np.random.default_rng(seed), publish_every)
        for seed in range(seeds)
    ]
    ts_runs = [replay(log, np.random.default_rng(seed)) for seed in range(seeds)]

    # OPE on the second half: the contextual bandit learned on the first half, and ZOZOTOWN's BTS.
    obd = load_obd_log(random_csv)
    half = len(rows) // 2
    learned = contextual_ope.learn(
        contextual_ope.default_doc(rows[:half], log.n_arms),
        rows[:half],
        obd.actions[:half],
        obd.rewards[:half],
    )
    policy = compile_linear_bandit(learned, "bandits.obd")
    actions, rewards = obd.actions[half:], obd.rewards[half:]
    propensities, positions = obd.propensities[half:], obd.positions[half:]
    ctx_dist = contextual_ope.action_dist(policy, rows[half:], positions, LEN_LIST)
    alpha, beta = zozotown_prior("men")
    bts = ope.bernoulli_ts_action_dist(alpha, beta, LEN_LIST, n_sim=100_000, seed=0)
    bts_dist = np.broadcast_to(bts, (len(actions), bts.shape[0], LEN_LIST))
    q_hat = ope.cross_fit_cell_model(
        actions, rewards, positions, log.n_arms, LEN_LIST, folds=2, smoothing=100.0
    )
    estimates: dict[str, list[dict[str, Any]]] = {}
    for name, dist in (("contextual", ctx_dist), ("bernoulli-ts (ZOZOTOWN prior)", bts_dist)):
        common = (actions, rewards, propensities, dist)
        estimates[name] = [
            e.to_json()
            for e in (
                ope.ips(*common, positions, bootstrap=bootstrap, seed=0),
                ope.snips(*common, positions, bootstrap=bootstrap, seed=0),
                ope.doubly_robust(*common, q_hat, positions, bootstrap=bootstrap, seed=0),
            )
        ]
    uniform = ope.on_policy(rewards, bootstrap=bootstrap, seed=0).to_json()
    bts_log = load_obd_log(data / "bts" / "men" / "men.csv")
    return {
        "benchmark": "bench.contextual_obd",
        "data": str(data),
        "features": policy.dim,
        "seeds": seeds,
        "publish_every": publish_every,
        "replay": {"contextual": _summary(ctx_runs), "bernoulli-ts pooled": _summary(ts_runs)},
        "ope_second_half": {
            "rows": len(actions),
            "clicks": int(rewards.sum()),
            "estimates": estimates,
            "uniform_logged": uniform,
        },
        "logged_ctr": {
            "random": float(obd.rewards.mean()),
            "bts": float(bts_log.rewards.mean()),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def _format(result: dict[str, Any]) -> str:
    lines = [
        f"Open Bandit Dataset (men, {result['data']}): contextual bandit ({result['features']} features) "
        f"vs Bernoulli TS; logged CTR random {result['logged_ctr']['random']:.5f}, "
        f"bts {result['logged_ctr']['bts']:.5f}",
        "",
        f"replay over {result['seeds']} seeds (publish every {result['publish_every']} matched impressions):",
        "| policy | replay CTR (mean +- sd over seeds) | matched | clicks | mean 95% Wilson CI |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in result["replay"].items():
        lo, hi = s["wilson_ci_mean"]
        lines.append(
            f"| {name} | {s['ctr_mean']:.5f} +- {s['ctr_sd']:.5f} | {s['matched_mean']:.0f} | "
            f"{s['clicks_mean']:.1f} | [{lo:.5f}, {hi:.5f}] |"
        )
    o = result["ope_second_half"]
    u = o["uniform_logged"]
    lines += [
        "",
        f"OPE on the second half ({o['rows']:,} rows, {o['clicks']} clicks; uniform logged CTR "
        f"{u['value']:.5f} [{u['ci95'][0]:.5f}, {u['ci95'][1]:.5f}]):",
        "| policy | IPS [95% CI] | SNIPS [95% CI] | DR [95% CI] |",
        "|---|---:|---:|---:|",
    ]
    for name, ests in o["estimates"].items():
        cells = [f"{e['value']:.5f} [{e['ci95'][0]:.5f}, {e['ci95'][1]:.5f}]" for e in ests]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"time: {result['seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.contextual_obd", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"Open Bandit data (default {DEFAULT_DATA})"
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--publish-every", type=int, default=10, help="matched impressions per publish (10)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.data, args.seeds, args.publish_every, args.bootstrap)
    print(json.dumps(result, indent=2) if args.json else _format(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
