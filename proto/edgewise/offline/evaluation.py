"""Offline evaluation of a retail bundle, served through the real decision pipeline.

Protocol (`evaluate_offline`):

1. Time split. `retail_bundle(..., split_date=D)` builds the bundle (catalog, profiles, embeddings,
   popularity, neighbors) from the invoices before D only. The held-out set is what customers with
   a profile bought (net of cancellations) on or after D, restricted to catalog items and to items the
   customer had not bought before D (the "new items" protocol: re-orders are not scored, and every
   list excludes the customer's training purchases). Customers with no such item are not evaluated.
2. The bundle is applied to a real LMDB store (`Store` + `apply_bundle`) and every list comes from
   `Pipeline().decide` under a read view, exactly as an edge serves it, with the customer's training
   purchases as `exclude_ids` (the most recent 500, the request cap):
   - popular: placement `home`, no user id, no consent -> the popularity fallback (NO_CONSENT);
   - embedding: placement `home`, user id + consent `personalization` -> profile embedding . item;
   - similar: placement `pdp_similar`, seeds = the customer's last `seeds` training purchases ->
     mean seed embedding . item (the pipeline's similar strategy today).
   A fourth row, co-purchase neighbors, is computed here, outside the pipeline, from the bundle's
   `item_neighbors` / `item_neighbor_scores` (the pipeline does not read them yet): the seeds'
   neighbor scores summed per item, ties and the rest of the list filled by popularity.
3. HR@k: share of users with at least one held-out item in the top k. NDCG@k: binary relevance,
   DCG over the top k divided by the ideal DCG of min(k, held-out items). Both averaged over users.
   The NDCG ratio to popular comes with a 95% paired bootstrap interval over users (1000 resamples).

`--validation` runs the same protocol on folds inside the training period (the data as of D, split
61 days earlier, and two folds a month further back); that is where the model's knobs were chosen.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgewise.core.decisions import DecideRequest, FallbackReason, PlacementRequest
from edgewise.core.pipeline import Pipeline
from edgewise.core.store import ReadView, Store
from edgewise.offline.retail import ModelParams, RetailError, RetailImport, retail_bundle
from edgewise.sync.bundle import Bundle, load_bundle
from edgewise.sync.snapshot import apply_bundle

__all__ = [
    "MAX_EXCLUDE_IDS",
    "OfflineReport",
    "StrategyResult",
    "dcg_hits",
    "evaluate_import",
    "evaluate_offline",
    "format_reports",
    "validation_folds",
]

MAX_EXCLUDE_IDS: Final = 500  # the gRPC request cap on exclude_ids
VALIDATION_WINDOW_DAYS: Final = 61
VALIDATION_STEP_DAYS: Final = 30
VALIDATION_FOLDS: Final = 3
PERSONALIZATION: Final = frozenset({"personalization"})
BOOTSTRAP_ROUNDS: Final = 1000
BOOTSTRAP_SEED: Final = 0

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class StrategyResult:
    """One row of the table."""

    strategy: str
    served_by: str
    users: int
    hr: float
    ndcg: float
    ratio: float  # ndcg / the popular row's ndcg (nan when that is 0)
    ratio_ci: tuple[float, float]  # 95% paired bootstrap interval of `ratio` over users
    off_path: int  # decisions that fell back instead of taking the strategy's own path

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "served_by": self.served_by,
            "users": self.users,
            "hr": round(self.hr, 4),
            "ndcg": round(self.ndcg, 4),
            "ratio_vs_popular": None if math.isnan(self.ratio) else round(self.ratio, 3),
            "ratio_95ci": [None if math.isnan(x) else round(x, 3) for x in self.ratio_ci],
            "off_path_decisions": self.off_path,
        }


@dataclass(frozen=True, slots=True)
class OfflineReport:
    """The evaluation of one split."""

    label: str  # "test" or "validation fold N"
    csv: str
    split_date: date
    until: date | None  # lines on/after this date were ignored (validation folds)
    k: int
    dim: int
    profiles: int
    items: int
    test_customers: int  # customers with a profile and any held-out purchase
    users: int  # evaluated: at least one new held-out item
    targets: int  # new held-out (customer, item) pairs
    results: tuple[StrategyResult, ...]
    seconds: float
    params: dict[str, float] = field(default_factory=dict)

    def result(self, strategy: str) -> StrategyResult:
        for row in self.results:
            if row.strategy == strategy:
                return row
        raise KeyError(strategy)

    def table(self) -> str:
        """The results as a Markdown table."""
        k = self.k
        lines = [
            f"| strategy | served by | users | HR@{k} | NDCG@{k} | NDCG vs popular | 95% CI |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in self.results:
            ratio = "n/a" if math.isnan(row.ratio) else f"{row.ratio:.2f}x"
            lo, hi = row.ratio_ci
            ci = "n/a" if math.isnan(lo) else f"{lo:.2f}-{hi:.2f}x"
            cells = [
                row.strategy,
                row.served_by,
                str(row.users),
                f"{row.hr:.4f}",
                f"{row.ndcg:.4f}",
                ratio,
                ci,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def heading(self) -> str:
        window = f"[{self.split_date}, {self.until})" if self.until else f"on/after {self.split_date}"
        return (
            f"{self.label}: train before {self.split_date}, held out {window}; {self.profiles} profiles, "
            f"{self.items} items, dim {self.dim}; {self.users} users evaluated with {self.targets} new "
            f"held-out items ({self.test_customers} customers bought in the window); {self.seconds:.1f}s"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "csv": self.csv,
            "split_date": self.split_date.isoformat(),
            "until": self.until.isoformat() if self.until else None,
            "k": self.k,
            "dim": self.dim,
            "profiles": self.profiles,
            "items": self.items,
            "test_customers": self.test_customers,
            "users": self.users,
            "targets": self.targets,
            "seconds": round(self.seconds, 2),
            "params": self.params,
            "results": [row.to_json() for row in self.results],
        }


def format_reports(reports: Sequence[OfflineReport]) -> str:
    """Heading and table of each report; with several reports, the mean NDCG ratios at the end."""
    parts = [f"{report.heading()}\n\n{report.table()}" for report in reports]
    if len(reports) > 1:
        means = []
        for row in reports[0].results:
            ratios = [report.result(row.strategy).ratio for report in reports]
            means.append(f"{row.strategy} {np.mean(ratios):.2f}x")
        parts.append("mean NDCG vs popular over the folds: " + ", ".join(means))
    return "\n\n".join(parts) + "\n"


def dcg_hits(ranked: Sequence[str], targets: frozenset[str] | set[str], k: int) -> tuple[float, float]:
    """(hit, ndcg) of one ranked list against a set of relevant ids, at cutoff k (binary relevance)."""
    if not targets:
        raise ValueError("no relevant items: the user cannot be evaluated")
    dcg = sum(1.0 / math.log2(rank + 2) for rank, item in enumerate(ranked[:k]) if item in targets)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(targets))))
    return (1.0 if dcg > 0 else 0.0), dcg / ideal


class _Scores:
    """One strategy's per-user metrics."""

    def __init__(self, strategy: str, served_by: str) -> None:
        self.strategy = strategy
        self.served_by = served_by
        self.hits: list[float] = []
        self.ndcg: list[float] = []
        self.off_path = 0

    def add(self, ranked: Sequence[str], targets: frozenset[str], k: int, *, on_path: bool = True) -> None:
        hit, ndcg = dcg_hits(ranked, targets, k)
        self.hits.append(hit)
        self.ndcg.append(ndcg)
        self.off_path += 0 if on_path else 1

    def result(self, popular: _Scores) -> StrategyResult:
        users = len(self.ndcg)
        if users == 0:
            nan = math.nan
            return StrategyResult(self.strategy, self.served_by, 0, 0.0, 0.0, nan, (nan, nan), 0)
        ndcg = np.asarray(self.ndcg)
        base = np.asarray(popular.ndcg)
        ratio = float(ndcg.mean() / base.mean()) if base.mean() > 0 else math.nan
        # paired bootstrap over users: the same resample for this strategy and popular, fixed seed
        picks = np.random.default_rng(BOOTSTRAP_SEED).integers(0, users, size=(BOOTSTRAP_ROUNDS, users))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = ndcg[picks].mean(axis=1) / base[picks].mean(axis=1)
        finite = ratios[np.isfinite(ratios)]
        ci = (math.nan, math.nan)
        if finite.size:
            ci = (float(np.quantile(finite, 0.025)), float(np.quantile(finite, 0.975)))
        hr = float(np.mean(self.hits))
        return StrategyResult(
            self.strategy, self.served_by, users, hr, float(ndcg.mean()), ratio, ci, self.off_path
        )


def _neighbor_list(
    bundle: Bundle,
    rows: Mapping[str, int],
    seeds: Sequence[str],
    excluded: Sequence[str],
    k: int,
) -> list[str]:
    """Top k by the seeds' summed co-purchase neighbor scores, then popularity (outside the pipeline)."""
    neighbors, scores = bundle.item_neighbors, bundle.item_neighbor_scores
    n_items = len(bundle.items)
    total = np.zeros(n_items, dtype=np.float64)
    if neighbors is not None and scores is not None:
        for seed in seeds:
            row = rows[seed]
            valid = neighbors[row] >= 0
            np.add.at(total, neighbors[row][valid], scores[row][valid])
    allowed = np.ones(n_items, dtype=bool)
    allowed[[rows[i] for i in (*excluded, *seeds) if i in rows]] = False
    candidates = np.flatnonzero(allowed)
    order = np.lexsort((candidates, -bundle.item_popularity[candidates], -total[candidates]))
    return [bundle.items[int(candidates[j])].id for j in order[:k]]


def evaluate_import(
    imported: RetailImport,
    *,
    k: int = 10,
    seeds: int = 3,
    workdir: str | Path | None = None,
    progress: Progress | None = None,
) -> tuple[tuple[StrategyResult, ...], int, int]:
    """Serve every evaluable held-out customer of `imported` through the pipeline.

    Returns (results, users evaluated, new held-out pairs). The bundle is applied to a fresh store in
    `workdir` (a temporary directory by default).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    bundle = load_bundle(imported.out)
    for placement in ("home", "pdp_similar"):
        if k > bundle.rules.placements[placement].max_count:
            raise ValueError(f"k {k} is more than placement {placement!r} allows")
    rows = {item.id: i for i, item in enumerate(bundle.items)}
    cases: list[tuple[str, tuple[str, ...], frozenset[str]]] = []
    for pid, bought in sorted(imported.test.items()):
        history = imported.history.get(pid, ())
        targets = frozenset(bought) - frozenset(history)
        if history and targets:
            cases.append((pid, history, targets))
    popular = _Scores("popular", "pipeline: home, anonymous, no consent")
    embedding = _Scores("embedding", "pipeline: home, user id + consent")
    similar = _Scores("similar (embedding)", f"pipeline: pdp_similar, last {seeds} purchases as seeds")
    copurchase = _Scores(
        "similar (co-purchase neighbors)", f"outside the pipeline: neighbor arrays, same {seeds} seeds"
    )
    with tempfile.TemporaryDirectory(prefix="edgewise-eval-") as scratch:
        store_dir = Path(workdir) if workdir is not None else Path(scratch)
        with Store(store_dir / "store", map_size=1 << 30) as store:
            apply_bundle(store, bundle)
            pipeline = Pipeline()
            with store.read() as view:
                for n, (pid, history, targets) in enumerate(cases, start=1):
                    excluded = history[-MAX_EXCLUDE_IDS:]
                    seed_ids = history[-seeds:]
                    _serve(pipeline, view, pid, excluded, seed_ids, targets, k, popular, embedding, similar)
                    copurchase.add(_neighbor_list(bundle, rows, seed_ids, excluded, k), targets, k)
                    if progress is not None and (n % 200 == 0 or n == len(cases)):
                        progress(f"served {n}/{len(cases)} customers")
    results = tuple(s.result(popular) for s in (popular, embedding, similar, copurchase))
    return results, len(cases), sum(len(t) for _, _, t in cases)


def _serve(
    pipeline: Pipeline,
    view: ReadView,
    pid: str,
    excluded: tuple[str, ...],
    seed_ids: tuple[str, ...],
    targets: frozenset[str],
    k: int,
    popular: _Scores,
    embedding: _Scores,
    similar: _Scores,
) -> None:
    home = PlacementRequest("home", count=k, exclude_ids=excluded)
    place = pipeline.decide(view, DecideRequest(placements=(home,))).placements[0]
    popular.add(
        [item.id for item in place.items], targets, k, on_path=place.fallback == FallbackReason.NO_CONSENT
    )
    place = pipeline.decide(
        view, DecideRequest(user_id=pid, consent=PERSONALIZATION, placements=(home,))
    ).placements[0]
    embedding.add([item.id for item in place.items], targets, k, on_path=place.strategy == "embedding")
    ask = PlacementRequest("pdp_similar", count=k, seed_item_ids=seed_ids, exclude_ids=excluded)
    place = pipeline.decide(
        view, DecideRequest(user_id=pid, consent=PERSONALIZATION, placements=(ask,))
    ).placements[0]
    similar.add([item.id for item in place.items], targets, k, on_path=place.strategy == "similar")


def validation_folds(split: date, folds: int = VALIDATION_FOLDS) -> list[tuple[date, date]]:
    """(inner split, until) pairs inside the training period of `split`, newest first."""
    out = []
    for j in range(folds):
        until = split - timedelta(days=VALIDATION_STEP_DAYS * j)
        out.append((until - timedelta(days=VALIDATION_WINDOW_DAYS), until))
    return out


def evaluate_offline(
    csv_path: str | Path,
    split_date: str,
    *,
    k: int = 10,
    dim: int = 32,
    seed: int = 0,
    seeds: int = 3,
    validation: bool = False,
    params: ModelParams | None = None,
    progress: Progress | None = None,
) -> list[OfflineReport]:
    """Build the train bundle(s) in temporary directories and evaluate them (see the module docstring).

    Without `validation`: one report for the split at `split_date`. With it: one report per
    validation fold inside the training period (nothing on or after `split_date` is read).
    """
    try:
        split = date.fromisoformat(split_date)
    except ValueError:
        raise RetailError(f"split date must be YYYY-MM-DD, got {split_date!r}") from None
    params = params or ModelParams()
    plan: list[tuple[str, date, date | None]]
    if validation:
        plan = [
            (f"validation fold {j + 1}", inner, until)
            for j, (inner, until) in enumerate(validation_folds(split))
        ]
    else:
        plan = [("test", split, None)]
    reports = []
    for label, inner, until in plan:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="edgewise-eval-bundle-") as tmp:
            imported = retail_bundle(
                csv_path,
                Path(tmp) / "bundle",
                dim=dim,
                seed=seed,
                split_date=inner.isoformat(),
                until=until.isoformat() if until else None,
                params=params,
                progress=progress,
            )
            results, users, targets = evaluate_import(
                imported, k=k, seeds=seeds, workdir=Path(tmp), progress=progress
            )
        reports.append(
            OfflineReport(
                label=label,
                csv=str(csv_path),
                split_date=inner,
                until=until,
                k=k,
                dim=dim,
                profiles=imported.profiles,
                items=imported.items,
                test_customers=len(imported.test),
                users=users,
                targets=targets,
                results=results,
                seconds=time.monotonic() - started,
                params={name: float(value) for name, value in asdict(params).items()},
            )
        )
    return reports
