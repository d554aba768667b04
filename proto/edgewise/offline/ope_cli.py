"""`edgewise eval ope`: estimate a candidate policy's CTR from another policy's Open Bandit Dataset log.

Reads two logs in the Open Bandit Dataset (OBD) CSV shape, evaluates the candidate policy on the first
with IPS, SNIPS and doubly robust (`edgewise.core.ope`), and compares with the CTR logged under the
candidate policy itself (the second log). Progress goes to stderr, the table (or JSON with `--json`)
to stdout. Exit status 0 on success, 1 when a log cannot be read (the message names the file, line and
column), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core import ope
from edgewise.core.linear_bandits import compile_linear_bandit
from edgewise.offline import contextual_ope

__all__ = [
    "OPE_DOC",
    "POLICIES",
    "ZOZOTOWN_BTS_PRIOR",
    "ObdLog",
    "OpeError",
    "OpeReport",
    "add_ope_arguments",
    "evaluate_ope",
    "load_obd_log",
    "run_ope",
    "zozotown_prior",
]

OPE_DOC = """Offline policy evaluation on Open Bandit Dataset logs: estimate the CTR a candidate policy
would get, from a log collected under another policy (--log, e.g. the uniform-random log), and compare
it with the CTR actually logged under the candidate (--truth, e.g. the Bernoulli-TS log).

Estimators (formulas in edgewise.core.ope), over the --log rows, one row = one (impression, position):
  IPS     mean of w * click, w = pi_e(item | position) / logged propensity_score
  SNIPS   sum(w * click) / sum(w)
  DR      doubly robust with a cross-fitted reward model: the mean click per (item, position), fitted
          on the other --folds folds, shrunk toward the position mean by --smoothing pseudo-rows
Truth: the mean click of the --truth log (on-policy), with the same kind of interval. Relative error
is estimate / truth - 1. Intervals are 95%: percentile bootstrap over rows with --bootstrap resamples
(seeded by --seed, the same resamples for every row of the table), or with --bootstrap 0 the normal
approximation from per-row contributions.

Policies (pi_e):
  bernoulli-ts            ZOZOTOWN's Bernoulli Thompson sampling as the Open Bandit Pipeline defines it
                          (BernoulliTS, is_zozotown_prior=True): Beta(alpha, beta) per item with the
                          production prior of the campaign (--campaign, default from the file name),
                          items ranked by a posterior draw, P(item at position k) by --n-sim
                          Monte-Carlo draws. The same distribution for every round (context-free).
  bernoulli-ts-empirical  the share of each item per position in the --truth log itself (what the
                          deployed policy actually showed, over the whole logging period); a check of
                          how much the prior-based distribution matters.
  contextual              the edge's contextual bandit (edgewise.core.linear_bandits) with the document
                          of --bandit-doc (default: one-hot user_feature_0..3 and the position), its
                          arms' models learned on the first --train-fraction of --log (time order) by
                          the control plane's code; evaluated on the rest of --log, with its exact
                          choice probabilities per row. There is no log of this policy: the truth
                          column is then the --truth policy's CTR, a reference, not this policy's value.

Log format: a CSV with a header holding at least item_id, position (1-based), click (0/1) and
propensity_score (in (0, 1]); other columns are ignored.

example:
  edgewise eval ope --log ../shared/data/open-bandit/random/men/men.csv --policy bernoulli-ts \\
      --truth ../shared/data/open-bandit/bts/men/men.csv"""

POLICIES: Final = ("bernoulli-ts", "bernoulli-ts-empirical", "contextual")
LEN_LIST: Final = 3  # OBD recommends 3 items per impression (positions 1..3)
REQUIRED_COLUMNS: Final = ("item_id", "position", "click", "propensity_score")

# The Beta prior of ZOZOTOWN's production Bernoulli TS per campaign (one (alpha, beta) pair per item id,
# in item id order), from the Open Bandit Pipeline (obp/policy/conf/prior_bts.yaml, obp 0.4.1,
# Apache-2.0; Saito et al., arXiv:2008.07146). Used by `BernoulliTS(is_zozotown_prior=True)`.
ZOZOTOWN_BTS_PRIOR: Final[dict[str, tuple[str, str]]] = {
    "all": (
        "47 8 62 142 3 14 7 857 12 15 6 100 48 23 71 61 13 16 518 30 7 4 23 8 10 11 11 18 121 11 11 10 14 9 "
        "204 58 3 19 42 1013 2 328 15 31 14 138 45 55 23 38 10 401 52 6 3 6 5 32 35 133 52 820 43 195 8 "
        "42 40 4 32 30 9 22 6 23 5 54 8 22 65 246",
        "12198 3566 15993 35522 2367 4609 3171 181745 4372 4951 3100 24665 13210 7061 18061 17449 5644 "
        "6787 111326 8776 3334 2271 7389 2659 3665 4724 3561 5085 27407 4601 4756 4120 4736 3788 45292 "
        "14719 2189 5589 11995 222255 2308 70034 4801 8274 5421 31912 12213 13576 6230 10382 4141 85731 "
        "12811 2707 2250 2668 2886 9581 9465 28336 12062 162793 12107 41240 3162 11604 10818 2923 8897 "
        "8654 4000 6580 3174 6766 2602 14506 3968 7523 16532 51964",
    ),
    "men": (
        "47 8 62 142 3 6 100 48 23 71 61 13 16 518 30 7 4 23 8 10 11 11 18 121 11 4 32 30 9 22 6 23 5 54",
        "12198 3566 15993 35522 2367 3100 24665 13210 7061 18061 17449 5644 6787 111326 8776 3334 2271 "
        "7389 2659 3665 4724 3561 5085 27407 4601 2923 8897 8654 4000 6580 3174 6766 2602 14506",
    ),
    "women": (
        "12 7 984 13 15 15 11 14 9 200 72 3 14 49 1278 3 325 14 27 14 169 48 47 18 40 12 447 46 5 3 5 7 "
        "35 34 99 30 880 51 182 6 45 39 10 24 72 229",
        "3612 3173 204484 4517 4765 5331 4131 4728 4028 44280 17918 2309 4339 12922 270771 2480 68475 "
        "5129 7367 5819 38026 13047 11604 5394 10912 4439 94485 10700 2679 2319 2578 3288 9566 9775 "
        "20120 7317 172026 13673 37329 3365 10911 10734 4278 7574 16826 47462",
    ),
}

Progress = Callable[[str], None]


class OpeError(Exception):
    """A log that cannot be used; the message names the file (and line and column)."""


def zozotown_prior(campaign: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(alpha, beta) of the production Bernoulli TS prior of an OBD campaign ("all", "men", "women")."""
    try:
        alpha, beta = ZOZOTOWN_BTS_PRIOR[campaign]
    except KeyError:
        raise ValueError(
            f"unknown campaign {campaign!r} (known: {', '.join(sorted(ZOZOTOWN_BTS_PRIOR))})"
        ) from None
    return np.array(alpha.split(), dtype=np.float64), np.array(beta.split(), dtype=np.float64)


@dataclass(frozen=True)
class ObdLog:
    """The columns of an OBD log that OPE needs, in file order; positions 0-based."""

    path: str
    actions: NDArray[np.int64]
    positions: NDArray[np.int64]
    rewards: NDArray[np.float64]
    propensities: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def load_obd_log(path: str | Path, progress: Progress | None = None) -> ObdLog:
    """Read an OBD CSV (see OPE_DOC for the columns); raises OpeError naming file, line and column."""
    path = Path(path)
    if not path.exists():
        raise OpeError(f"{path}: no such file")
    if not path.is_file():
        raise OpeError(f"{path}: not a file")
    actions: list[int] = []
    positions: list[int] = []
    rewards: list[float] = []
    propensities: list[float] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise OpeError(f"{path}: empty file (expected a header with {', '.join(REQUIRED_COLUMNS)})")
            names = [name.strip() for name in header]
            missing = [name for name in REQUIRED_COLUMNS if name not in names]
            if missing:
                raise OpeError(
                    f"{path}:1: missing column(s) {', '.join(missing)} in the header "
                    f"(an Open Bandit Dataset log has {', '.join(REQUIRED_COLUMNS)})"
                )
            col = {name: names.index(name) for name in REQUIRED_COLUMNS}
            width = len(names)
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != width:
                    raise OpeError(f"{path}:{line}: expected {width} fields like the header, got {len(row)}")
                actions.append(_field_int(path, line, "item_id", row[col["item_id"]], minimum=0))
                positions.append(_field_int(path, line, "position", row[col["position"]], minimum=1) - 1)
                click = row[col["click"]].strip()
                if click not in ("0", "1"):
                    raise OpeError(f"{path}:{line}: column 'click': expected 0 or 1, got {click!r}")
                rewards.append(float(click))
                propensities.append(_field_propensity(path, line, row[col["propensity_score"]]))
                if progress is not None and len(actions) % 250_000 == 0:
                    progress(f"{path.name}: read {len(actions):,} rows")
    except UnicodeDecodeError as exc:
        raise OpeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise OpeError(f"{path}: malformed CSV: {exc}") from None
    if not actions:
        raise OpeError(f"{path}: no data rows after the header")
    return ObdLog(
        path=str(path),
        actions=np.array(actions, dtype=np.int64),
        positions=np.array(positions, dtype=np.int64),
        rewards=np.array(rewards, dtype=np.float64),
        propensities=np.array(propensities, dtype=np.float64),
    )


def _field_int(path: Path, line: int, column: str, raw: str, *, minimum: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise OpeError(f"{path}:{line}: column {column!r}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise OpeError(f"{path}:{line}: column {column!r}: expected >= {minimum}, got {value}")
    return value


def _field_propensity(path: Path, line: int, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise OpeError(f"{path}:{line}: column 'propensity_score': expected a number, got {raw!r}") from None
    if not (0.0 < value <= 1.0):
        raise OpeError(f"{path}:{line}: column 'propensity_score': expected a value in (0, 1], got {raw!r}")
    return value


def campaign_of(path: str | Path) -> str | None:
    """The OBD campaign a log belongs to, from its file name or folder (".../men/men.csv" -> "men")."""
    p = Path(path)
    for name in (p.stem, p.parent.name):
        if name in ZOZOTOWN_BTS_PRIOR:
            return name
    return None


@dataclass(frozen=True)
class OpeReport:
    """The estimates for one (log, policy, truth) triple."""

    log: str
    truth_log: str
    policy: str
    policy_note: str
    campaign: str | None
    n_actions: int
    n_positions: int
    log_rows: int
    log_clicks: int
    truth_rows: int
    truth_clicks: int
    estimates: tuple[ope.Estimate, ...]
    truth: ope.Estimate
    max_weight: float
    # per position: the total variation distance of pi_e to the truth log's item shares
    tv_to_truth_shares: tuple[float, ...]
    settings: dict[str, Any]
    seconds: float

    def relative_error(self, estimate: ope.Estimate) -> float:
        return estimate.value / self.truth.value - 1.0 if self.truth.value else math.nan

    def relative_error_ci(self, estimate: ope.Estimate) -> tuple[float, float]:
        """95% interval of estimate / truth - 1, the two logs independent (delta method on the SEs)."""
        t = self.truth
        if not t.value or not estimate.value:
            return math.nan, math.nan
        ratio = estimate.value / t.value
        se = ratio * math.hypot(estimate.se / estimate.value, t.se / t.value)
        return ratio - 1.0 - ope.Z95 * se, ratio - 1.0 + ope.Z95 * se

    def table(self) -> str:
        """The results as a Markdown table."""
        t = self.truth
        truth = f"{t.value:.5f} [{t.ci_low:.5f}, {t.ci_high:.5f}]"
        lines = [
            "| estimator | estimate | 95% CI | truth (on-policy CTR, 95% CI) | relative error | "
            "rel. error 95% CI | truth in CI |",
            "|---|---:|---:|---:|---:|---:|:---:|",
        ]
        for e in self.estimates:
            rel = self.relative_error(e)
            rel_low, rel_high = self.relative_error_ci(e)
            cells = [
                e.estimator,
                f"{e.value:.5f}",
                f"[{e.ci_low:.5f}, {e.ci_high:.5f}]",
                truth,
                "n/a" if math.isnan(rel) else f"{rel:+.1%}",
                "n/a" if math.isnan(rel_low) else f"[{rel_low:+.0%}, {rel_high:+.0%}]",
                "yes" if e.covers(t.value) else "no",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def heading(self) -> str:
        return "\n".join(
            [
                f"log: {self.log} ({self.log_rows:,} rows, {self.log_clicks} clicks, "
                f"CTR {self.log_clicks / self.log_rows:.5f})",
                f"truth: {self.truth_log} ({self.truth_rows:,} rows, {self.truth_clicks} clicks)",
                f"policy: {self.policy}: {self.policy_note}",
                f"{self.n_actions} items x {self.n_positions} positions; max importance weight "
                f"{self.max_weight:.2f}; intervals: {self.truth.ci_method}; {self.seconds:.1f}s",
                "total variation distance of pi_e to the item shares per position in the truth log: "
                + ", ".join(f"{tv:.3f}" for tv in self.tv_to_truth_shares),
            ]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "log": self.log,
            "truth_log": self.truth_log,
            "policy": self.policy,
            "policy_note": self.policy_note,
            "campaign": self.campaign,
            "n_actions": self.n_actions,
            "n_positions": self.n_positions,
            "log_rows": self.log_rows,
            "log_clicks": self.log_clicks,
            "truth_rows": self.truth_rows,
            "truth_clicks": self.truth_clicks,
            "truth": self.truth.to_json(),
            "estimates": [
                {
                    **e.to_json(),
                    "relative_error": self.relative_error(e),
                    "relative_error_ci95": list(self.relative_error_ci(e)),
                    "truth_in_ci": e.covers(self.truth.value),
                }
                for e in self.estimates
            ],
            "max_importance_weight": self.max_weight,
            "tv_to_truth_shares": list(self.tv_to_truth_shares),
            "settings": self.settings,
            "seconds": round(self.seconds, 2),
        }


def evaluate_ope(
    log_path: str | Path,
    truth_path: str | Path,
    *,
    policy: str = "bernoulli-ts",
    campaign: str | None = None,
    seed: int = 0,
    bootstrap: int = 1000,
    n_sim: int = 100_000,
    folds: int = 2,
    smoothing: float = 100.0,
    progress: Progress | None = None,
    bandit_doc: dict[str, Any] | None = None,
    train_fraction: float = 0.5,
) -> OpeReport:
    """Load both logs, build the policy's action distribution, run the three estimators (see OPE_DOC)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    started = time.monotonic()
    say = progress or (lambda _message: None)
    log = load_obd_log(log_path, progress)
    say(f"read {log.path}: {len(log):,} rows")
    truth_log = load_obd_log(truth_path, progress)
    say(f"read {truth_log.path}: {len(truth_log):,} rows")
    max_position = int(max(log.positions.max(), truth_log.positions.max())) + 1
    if max_position > LEN_LIST:
        raise OpeError(f"positions go up to {max_position}; an Open Bandit Dataset log has 1..{LEN_LIST}")
    settings: dict[str, Any] = {"seed": seed, "bootstrap": bootstrap, "folds": folds, "smoothing": smoothing}
    if policy == "bernoulli-ts":
        campaign = campaign or campaign_of(log_path)
        if campaign is None:
            raise ValueError(
                f"cannot tell the OBD campaign from {log_path}: give --campaign "
                f"({', '.join(sorted(ZOZOTOWN_BTS_PRIOR))})"
            )
        alpha, beta = zozotown_prior(campaign)
        n_actions = alpha.shape[0]
        say(f"Monte-Carlo of Bernoulli TS with the ZOZOTOWN {campaign} prior ({n_sim:,} draws)")
        dist = ope.bernoulli_ts_action_dist(alpha, beta, LEN_LIST, n_sim=n_sim, seed=seed)
        note = (
            f"Bernoulli TS with ZOZOTOWN's production prior for '{campaign}' (obp BernoulliTS, "
            f"is_zozotown_prior=True), P(item at position) from {n_sim:,} Monte-Carlo draws (seed {seed})"
        )
        settings["n_sim"] = n_sim
    elif policy == "contextual":
        n_actions = int(max(log.actions.max(), truth_log.actions.max())) + 1
        rows = contextual_ope.read_rows(log_path)
        cut = int(len(log) * train_fraction)
        if not 0 <= cut < len(log):
            raise ValueError(f"--train-fraction {train_fraction} leaves no rows to evaluate on")
        doc = (
            bandit_doc
            if bandit_doc is not None
            else contextual_ope.default_doc(rows[:cut] or rows, n_actions)
        )
        if cut:
            say(f"learning the contextual bandit's arm models on the first {cut:,} rows")
            doc = contextual_ope.learn(doc, rows[:cut], log.actions[:cut], log.rewards[:cut])
        linear = compile_linear_bandit(doc, "bandits.obd")
        log = ObdLog(
            log.path,
            log.actions[cut:],
            log.positions[cut:],
            log.rewards[cut:],
            log.propensities[cut:],
        )
        full = contextual_ope.action_dist(linear, rows[cut:], log.positions, LEN_LIST)
        dist = full.mean(axis=0)
        note = (
            f"contextual bandit (linear model per arm, softmax over LinUCB scores, floor "
            f"{linear.exploration_floor}, temperature {linear.temperature}, ucb {linear.ucb}; {linear.dim} "
            f"features), learned on the first {cut:,} rows of the log, evaluated on the other {len(log):,}; "
            "the truth column is the --truth log's CTR (a reference: no log of this policy exists)"
        )
        settings["train_fraction"] = train_fraction
    else:
        n_actions = int(max(log.actions.max(), truth_log.actions.max())) + 1
        dist = ope.empirical_action_dist(truth_log.actions, truth_log.positions, n_actions, LEN_LIST)
        note = (
            "empirical: the share of each item per position in the truth log (not the policy's "
            "computed choice probabilities)"
        )
    for which in (log, truth_log):
        top = int(which.actions.max())
        if top >= n_actions:
            raise OpeError(f"{which.path}: item_id {top} is out of range for the policy's {n_actions} items")
    shares = ope.empirical_action_dist(truth_log.actions, truth_log.positions, n_actions, LEN_LIST)
    tv = tuple(float(x) for x in 0.5 * np.abs(dist - shares).sum(axis=0))
    n = len(log)
    # One distribution for every round: a broadcast view, no (n, A, P) copy (contextual: one per row).
    action_dist = full if policy == "contextual" else np.broadcast_to(dist, (n, n_actions, LEN_LIST))
    weights = ope.importance_weights(log.actions, log.propensities, action_dist, log.positions)
    say(f"fitting the cross-fitted reward model ({folds} folds)")
    q_hat = ope.cross_fit_cell_model(  # per-fold tables: no (n, A, P) array
        log.actions,
        log.rewards,
        log.positions,
        n_actions,
        LEN_LIST,
        folds=folds,
        smoothing=smoothing,
        seed=seed,
    )
    what = f"bootstrap ({bootstrap} resamples)" if bootstrap else "normal intervals"
    say(f"estimating IPS, SNIPS, DR and the truth, {what}")
    common = (log.actions, log.rewards, log.propensities, action_dist)
    estimates = (
        ope.ips(*common, log.positions, bootstrap=bootstrap, seed=seed),
        ope.snips(*common, log.positions, bootstrap=bootstrap, seed=seed),
        ope.doubly_robust(*common, q_hat, log.positions, bootstrap=bootstrap, seed=seed),
    )
    truth = ope.on_policy(truth_log.rewards, bootstrap=bootstrap, seed=seed)
    return OpeReport(
        log=log.path,
        truth_log=truth_log.path,
        policy=policy,
        policy_note=note,
        campaign=campaign,
        n_actions=n_actions,
        n_positions=LEN_LIST,
        log_rows=n,
        log_clicks=int(log.rewards.sum()),
        truth_rows=len(truth_log),
        truth_clicks=int(truth_log.rewards.sum()),
        estimates=estimates,
        truth=truth,
        max_weight=float(weights.max()),
        tv_to_truth_shares=tv,
        settings=settings,
        seconds=time.monotonic() - started,
    )


def add_ope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log",
        type=Path,
        required=True,
        help="the logged data to evaluate on (OBD CSV, e.g. random/men/men.csv)",
    )
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default="bernoulli-ts",
        help="the evaluation policy (default bernoulli-ts)",
    )
    parser.add_argument(
        "--truth",
        type=Path,
        required=True,
        help="a log collected under the evaluation policy: its CTR is the truth (e.g. bts/men/men.csv)",
    )
    parser.add_argument(
        "--campaign",
        choices=sorted(ZOZOTOWN_BTS_PRIOR),
        help="OBD campaign of the prior for bernoulli-ts (default: from the --log file name)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the 95%% intervals (default 1000; 0 = normal approximation)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap, the folds and the Monte Carlo (default 0)"
    )
    parser.add_argument(
        "--n-sim",
        type=int,
        default=100_000,
        metavar="N",
        help="Monte-Carlo draws for the Bernoulli TS action distribution (default 100000)",
    )
    parser.add_argument(
        "--folds", type=int, default=2, help="cross-fitting folds of the DR reward model (default 2)"
    )
    parser.add_argument(
        "--smoothing",
        type=float,
        default=100.0,
        help="pseudo-rows shrinking each (item, position) mean toward the position mean (default 100)",
    )
    parser.add_argument(
        "--bandit-doc",
        type=Path,
        help='contextual: a contextual bandit document (JSON, as in rules.json\'s bandits; arms "0"..'
        '"A-1"); default: one-hot user_feature_0..3 and the position',
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="contextual: share of --log (time order) the arm models learn on (default 0.5)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _progress(started: float) -> Progress:
    def progress(message: str) -> None:
        print(f"  [{time.monotonic() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    return progress


def run_ope(args: argparse.Namespace) -> int:
    if args.bootstrap < 0 or args.bootstrap == 1:
        print("error: --bootstrap must be 0 (normal approximation) or >= 2", file=sys.stderr)
        return 2
    for name in ("n_sim", "folds"):
        if getattr(args, name) < (2 if name == "folds" else 1):
            print(f"error: --{name.replace('_', '-')} is too small", file=sys.stderr)
            return 2
    if args.smoothing < 0:
        print("error: --smoothing must be >= 0", file=sys.stderr)
        return 2
    if not 0 <= args.train_fraction < 1:
        print("error: --train-fraction must be in [0, 1)", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        report = evaluate_ope(
            args.log,
            args.truth,
            policy=args.policy,
            campaign=args.campaign,
            seed=args.seed,
            bootstrap=args.bootstrap,
            n_sim=args.n_sim,
            folds=args.folds,
            smoothing=args.smoothing,
            progress=_progress(started),
            bandit_doc=json.loads(args.bandit_doc.read_text()) if args.bandit_doc else None,
            train_fraction=args.train_fraction,
        )
    except (OpeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"{report.heading()}\n\n{report.table()}")
    return 0
