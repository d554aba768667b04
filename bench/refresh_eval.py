"""Continuous embedding refresh on the online-retail data: refreshed models against the frozen bundle.

    python -m bench.refresh_eval                 # the figures in BENCHMARKS.md
    python -m bench.refresh_eval --validation    # the same replay inside the training period (tuning)
    python -m bench.refresh_eval --quick         # two periods, fewer iterations (the test)

The invoices (../shared/data/online-retail/OnlineRetail.csv) are replayed as events in time order:
every product line of a known customer with a positive quantity is a `purchase` event (customer, item,
time); cancellations have no event type and are not replayed (the held-out sets are net of them, as in
`edgewise eval offline`). Two parts:

1. Static split (the split of `edgewise eval offline`, 2011-10-01): the retail bundle's model against
   implicit's ALS and BPR and the hybrid model (the bundle's own model, `core/hybrid_embeddings.py`)
   trained on the purchase events before the split (`core/embedding_training.py`, the code the refresh
   runs), each user scored over the bundle's catalog. The protocol is evaluation.py's
   (new items only, training purchases excluded, NDCG@10 with binary relevance), computed in NumPy with
   the pipeline's ranking for the `home` placement (profile embedding . item embedding, top k; without a
   profile vector the popularity order, ties to the lower row): the popular and retail rows reproduce
   the pipeline's figures of BENCHMARKS.md.
2. Refresh replay: from T0 = the split, periods of 7 days to the end of the data. The frozen models are
   trained once on the events before T0; the refreshed ones at the start of every period on the events
   before it (ALS, BPR and the hybrid warm: the previous period's item rows carried, as the control
   plane's refresh does; the retail model rebuilt from the invoices before the period). The hybrid is
   what the control plane's refresh with method `hybrid` computes: the purchase events (the largest
   decayed weight per pair), the catalog's tags as of the period's start (the tags a bundle or delta of
   the current catalog would carry: the importer's `tags_for` of each product's most common description)
   and the popularity as of the period's start (the popularity refresh keeps the state's array current).
   Each is evaluated on the period's purchases: users = customers with a purchase before the period and
   one of an item they had not bought before it, in the catalog as of the period's start; every purchase
   before the period excluded. A frozen model has no vector for a customer who first bought after T0, or
   for items first sold after it: that customer gets the frozen popularity list, as an edge serves them.
   NDCG@10 of refreshed against frozen: the ratio of means with a 95% cluster bootstrap interval over
   users (all of a user's periods resampled together; 1,000 resamples).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core.embedding_training import (
    TrainingSettings,
    interactions_from_events,
    train_embeddings,
)
from edgewise.offline.evaluation import dcg_hits
from edgewise.offline.retail import (
    SERVICE_CODES,
    InvoiceLine,
    collect_purchases,
    item_id_for,
    profile_id_for,
    read_invoice_lines,
    retail_bundle,
    tags_for,
)
from edgewise.sync.bundle import load_bundle

__all__ = ["DEFAULT_CSV", "ModelScores", "main", "run"]

DEFAULT_CSV: Final = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "online-retail" / "OnlineRetail.csv"
)
SPLIT: Final = date(2011, 10, 1)  # edgewise eval offline's split (BENCHMARKS.md)
VALIDATION_START: Final = date(2011, 8, 1)  # --validation: replay Aug-Sep, nothing on/after SPLIT read
PERIOD_DAYS: Final = 7
K: Final = 10
DIM: Final = 32
BOOTSTRAP_ROUNDS: Final = 1000
# Chosen on the validation period (--validation's static split, BENCHMARKS.md), never on the test period.
ALS: Final = TrainingSettings(method="als", iterations=15, regularization=0.1, alpha=20.0)
BPR: Final = TrainingSettings(method="bpr", iterations=300, regularization=0.1, learning_rate=0.05)
# The retail importer's model with its defaults (chosen on its validation folds, BENCHMARKS.md).
HYBRID: Final = TrainingSettings(method="hybrid")
HALF_LIFE_DAYS: Final = 90.0  # the retail model's history half-life


def _ms(when: datetime) -> int:
    return int((when - datetime(1970, 1, 1)).total_seconds() * 1000)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day)


@dataclass(slots=True)
class Model:
    """A model as an edge holds it: item ids by row, item vectors, user vectors, popularity."""

    name: str
    item_ids: list[str]
    items: NDArray[np.float32] | None
    users: dict[str, NDArray[np.float32]]
    popularity: NDArray[np.float32]
    row: dict[str, int] = field(init=False)
    popular_order: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.row = {item: r for r, item in enumerate(self.item_ids)}
        n = len(self.item_ids)
        self.popular_order = np.lexsort((np.arange(n), -self.popularity.astype(np.float64)))

    def rank(self, user: str, excluded: Sequence[str], k: int) -> list[str]:
        """The home placement's list: profile embedding . item, else popularity; `excluded` left out."""
        banned = {self.row[i] for i in excluded if i in self.row}
        vector = self.users.get(user)
        if vector is None or self.items is None:
            picked = [int(r) for r in self.popular_order[: k + len(banned)] if int(r) not in banned][:k]
            return [self.item_ids[r] for r in picked]
        scores = self.items @ vector
        if banned:
            scores[list(banned)] = -np.inf
        top = np.argpartition(-scores, min(k, len(scores) - 1))[: k + 1]
        top = top[np.lexsort((top, -scores[top]))][:k]
        return [self.item_ids[int(r)] for r in top if np.isfinite(scores[int(r)])]


@dataclass(slots=True)
class ModelScores:
    """Per observation (user, period) NDCG@k and HR@k of one model."""

    name: str
    ndcg: list[float] = field(default_factory=list)
    hits: list[float] = field(default_factory=list)


def paired_ratio(
    a: Sequence[float], b: Sequence[float], clusters: Sequence[str], seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) / mean(b) with a 95% cluster bootstrap interval (clusters resampled whole)."""
    labels, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    sa = np.bincount(inverse, weights=np.asarray(a, dtype=np.float64), minlength=len(labels))
    sb = np.bincount(inverse, weights=np.asarray(b, dtype=np.float64), minlength=len(labels))
    total_b = sb.sum()
    ratio = float(sa.sum() / total_b) if total_b > 0 else math.nan
    picks = np.random.default_rng(seed).integers(0, len(labels), size=(BOOTSTRAP_ROUNDS, len(labels)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = sa[picks].sum(axis=1) / sb[picks].sum(axis=1)
    finite = ratios[np.isfinite(ratios)]
    if not finite.size:
        return ratio, math.nan, math.nan
    return ratio, float(np.quantile(finite, 0.025)), float(np.quantile(finite, 0.975))


class Replay:
    """The invoice lines, cleaned as `retail_bundle` cleans them, in time order."""

    def __init__(self, csv: Path) -> None:
        self.csv = csv
        lines = [
            line
            for line in read_invoice_lines(csv)
            if line.stock_code not in SERVICE_CODES and line.unit_price > 0
        ]
        self.lines: list[InvoiceLine] = sorted(lines, key=lambda line: (line.when, line.line_no))
        self.end = max(line.when for line in self.lines).date() + timedelta(days=1)
        self._before: dict[date, list[InvoiceLine]] = {}
        self._positive: dict[date, dict[tuple[str, str], int]] = {}

    def before(self, day: date) -> list[InvoiceLine]:
        if day not in self._before:
            cut = _midnight(day)
            self._before[day] = [line for line in self.lines if line.when < cut]
        return self._before[day]

    def positive_before(self, day: date) -> dict[tuple[str, str], int]:
        """Net purchases per (customer, stock code) before `day` (> 0 only)."""
        if day not in self._positive:
            self._positive[day] = collect_purchases(self.before(day)).positive()
        return self._positive[day]

    def between(self, start: date, end: date) -> list[InvoiceLine]:
        lo, hi = _midnight(start), _midnight(end)
        return [line for line in self.lines if lo <= line.when < hi]

    def catalog(self, day: date) -> list[str]:
        """Item ids of the products with a purchase line before `day`, sorted by stock code (the retail
        bundle's row order)."""
        codes = sorted({line.stock_code for line in self.before(day) if line.quantity > 0})
        return [item_id_for(code) for code in codes]

    def tags(self, day: date, item_ids: Sequence[str]) -> list[list[str]]:
        """Each item's tags as a bundle of the catalog as of `day` stores them (`tags_for` of the product's
        most common description on the purchase lines before `day`, as the importer picks it)."""
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for line in self.before(day):
            if line.quantity > 0 and line.description:
                seen = counts[item_id_for(line.stock_code)]
                seen[line.description] = seen.get(line.description, 0) + 1
        out = []
        for item in item_ids:
            seen = counts.get(item, {})
            text = (
                max(seen, key=lambda d: seen[d]) if seen else ""
            )  # first of the most common: Counter's pick
            out.append(tags_for(text))
        return out

    def events(self, day: date) -> list[tuple[str, str, str, int]]:
        """The purchase events before `day`: (profile id, item id, "purchase", Unix ms)."""
        return [
            (profile_id_for(line.customer), item_id_for(line.stock_code), "purchase", _ms(line.when))
            for line in self.before(day)
            if line.customer and line.quantity > 0
        ]

    def history(self, day: date) -> dict[str, tuple[str, ...]]:
        """Profile id -> item ids bought (net) before `day`."""
        out: dict[str, list[str]] = defaultdict(list)
        for customer, code in sorted(self.positive_before(day)):
            out[profile_id_for(customer)].append(item_id_for(code))
        return {user: tuple(items) for user, items in out.items()}

    def bought(self, start: date, end: date) -> dict[str, set[str]]:
        """Profile id -> item ids bought (net) in [start, end)."""
        out: dict[str, set[str]] = defaultdict(set)
        for customer, code in collect_purchases(self.between(start, end)).positive():
            out[profile_id_for(customer)].add(item_id_for(code))
        return out

    def popularity(self, day: date, item_ids: Sequence[str]) -> NDArray[np.float32]:
        """Distinct shoppers per item before `day` (customers net > 0, one per anonymous invoice)."""
        before = self.before(day)
        shoppers: dict[str, set[str]] = defaultdict(set)
        for customer, code in self.positive_before(day):
            shoppers[item_id_for(code)].add(customer)
        for line in before:
            if not line.customer and line.quantity > 0:
                shoppers[item_id_for(line.stock_code)].add("invoice " + line.invoice)
        return np.array([len(shoppers[item]) for item in item_ids], dtype=np.float32)


def retail_model(replay: Replay, day: date, workdir: Path, name: str) -> Model:
    """The retail bundle built from the invoices before `day` (`retail_bundle`), as a Model."""
    imported = retail_bundle(replay.csv, workdir / f"bundle-{day}", dim=DIM, split_date=day.isoformat())
    bundle = load_bundle(imported.out)
    assert bundle.user_embeddings is not None
    users = {p.id: bundle.user_embeddings[j] for j, p in enumerate(bundle.profiles)}
    return Model(
        name, [item.id for item in bundle.items], bundle.item_embeddings, users, bundle.item_popularity
    )


def trained_model(
    replay: Replay,
    day: date,
    settings: TrainingSettings,
    name: str,
    previous: Model | None = None,
) -> Model:
    """The model of `settings` (implicit's ALS or BPR, or the hybrid) trained on the purchase events before
    `day`, over the catalog as of `day`: the previous model's rows first (in its order), then items
    first sold since, as the refresh appends them. The hybrid also reads the items' tags and popularity
    as of `day`."""
    item_ids = list(previous.item_ids) if previous is not None else []
    known = set(item_ids)
    item_ids += [item for item in replay.catalog(day) if item not in known]
    rows = {item: r for r, item in enumerate(item_ids)}
    hybrid = settings.method == "hybrid"
    interactions = interactions_from_events(
        replay.events(day),
        rows,
        now_ms=_ms(_midnight(day)),
        half_life_days=HALF_LIFE_DAYS,
        combine="max" if hybrid else "sum",
    )
    popularity = replay.popularity(day, item_ids)
    result = train_embeddings(
        interactions.users,
        interactions.items,
        interactions.weights,
        n_items=len(item_ids),
        dim=DIM,
        previous=previous.items if previous is not None else None,
        settings=settings,
        item_terms=replay.tags(day, item_ids) if hybrid else None,
        popularity=popularity if hybrid else None,
    )
    users = {interactions.user_ids[int(u)]: result.users[j] for j, u in enumerate(result.user_rows)}
    return Model(name, item_ids, result.items, users, popularity)


def popularity_model(replay: Replay, day: date, name: str) -> Model:
    item_ids = replay.catalog(day)
    return Model(name, item_ids, None, {}, replay.popularity(day, item_ids))


def _score(
    models: Sequence[Model],
    scores: Mapping[str, ModelScores],
    cases: Sequence[tuple[str, tuple[str, ...], frozenset[str]]],
    k: int,
) -> None:
    for user, history, targets in cases:
        for model in models:
            hit, ndcg = dcg_hits(model.rank(user, history, k), targets, k)
            scores[model.name].hits.append(hit)
            scores[model.name].ndcg.append(ndcg)


def static_split(replay: Replay, split: date, end: date, workdir: Path, bpr: bool, k: int) -> dict[str, Any]:
    """Part 1: the retail model, ALS and BPR, trained before `split`, on the purchases in [split, end)."""
    retail = retail_model(replay, split, workdir, "retail (bundle)")
    models = [popularity_model(replay, split, "popular"), retail]
    models.append(trained_model(replay, split, ALS, "implicit ALS"))
    models.append(trained_model(replay, split, HYBRID, "hybrid (events)"))
    if bpr:
        models.append(trained_model(replay, split, BPR, "implicit BPR"))
    catalog = set(retail.item_ids)
    history = replay.history(split)
    later = replay.bought(split, end)
    cases = []
    for user in sorted(later):
        targets = frozenset(i for i in later[user] if i in catalog) - frozenset(history.get(user, ()))
        if history.get(user) and targets:
            cases.append((user, history[user], targets))
    scores = {m.name: ModelScores(m.name) for m in models}
    _score(models, scores, cases, k)
    users = [user for user, _, _ in cases]
    rows = []
    base = scores["popular"].ndcg
    for model in models:
        s = scores[model.name]
        rows.append(
            {
                "model": model.name,
                "users": len(s.ndcg),
                "hr": float(np.mean(s.hits)),
                "ndcg": float(np.mean(s.ndcg)),
                "vs_popular": paired_ratio(s.ndcg, base, users),
                "vs_retail": paired_ratio(s.ndcg, scores[retail.name].ndcg, users),
            }
        )
    return {"split": split.isoformat(), "end": end.isoformat(), "users": len(cases), "rows": rows}


def refresh_replay(
    replay: Replay, start: date, end: date, workdir: Path, *, bpr: bool, retail: bool, k: int
) -> dict[str, Any]:
    """Part 2: frozen at `start` against refreshed every PERIOD_DAYS until `end`."""
    frozen = [
        popularity_model(replay, start, "popular (frozen)"),
        retail_model(replay, start, workdir, "retail (frozen)"),
        trained_model(replay, start, ALS, "ALS (frozen)"),
    ]
    if bpr:
        frozen.append(trained_model(replay, start, BPR, "BPR (frozen)"))
    names = [m.name for m in frozen] + ["popular (refreshed)", "ALS (refreshed)", "hybrid (refreshed)"]
    names += ["BPR (refreshed)"] if bpr else []
    names += ["retail (refreshed)"] if retail else []
    scores = {name: ModelScores(name) for name in names}
    clusters: list[str] = []
    periods = []
    als: Model | None = None
    bpr_model: Model | None = None
    hybrid: Model | None = None
    day = start
    train_seconds = 0.0
    hybrid_seconds = 0.0
    while day < end:
        stop = min(day + timedelta(days=PERIOD_DAYS), end)
        started = time.perf_counter()
        als = trained_model(replay, day, ALS, "ALS (refreshed)", previous=als if als else frozen[2])
        refreshed = [popularity_model(replay, day, "popular (refreshed)"), als]
        if bpr:
            bpr_model = trained_model(
                replay, day, BPR, "BPR (refreshed)", previous=bpr_model if bpr_model else frozen[3]
            )
            refreshed.append(bpr_model)
        train_seconds += time.perf_counter() - started
        started = time.perf_counter()
        hybrid = trained_model(replay, day, HYBRID, "hybrid (refreshed)", previous=hybrid)
        hybrid_seconds += time.perf_counter() - started
        refreshed.append(hybrid)
        if retail:
            refreshed.append(retail_model(replay, day, workdir, "retail (refreshed)"))
        catalog = set(refreshed[0].item_ids)
        history = replay.history(day)
        bought = replay.bought(day, stop)
        cases = []
        for user in sorted(bought):
            targets = frozenset(i for i in bought[user] if i in catalog) - frozenset(history.get(user, ()))
            if history.get(user) and targets:
                cases.append((user, history[user], targets))
        _score([*frozen, *refreshed], scores, cases, k)
        clusters += [user for user, _, _ in cases]
        new_users = sum(1 for user, _, _ in cases if user not in frozen[1].users)
        periods.append(
            {
                "start": day.isoformat(),
                "end": stop.isoformat(),
                "users": len(cases),
                "users_without_frozen_profile": new_users,
                "items": len(catalog),
                "ndcg": {name: float(np.mean(scores[name].ndcg[-len(cases) :])) for name in names}
                if cases
                else {},
            }
        )
        day = stop
    comparisons = [
        ("hybrid (refreshed)", "retail (frozen)"),
        ("ALS (refreshed)", "retail (frozen)"),
        ("ALS (refreshed)", "ALS (frozen)"),
        ("popular (refreshed)", "popular (frozen)"),
    ]
    if bpr:
        comparisons.append(("BPR (refreshed)", "BPR (frozen)"))
    if retail:
        comparisons.append(("retail (refreshed)", "retail (frozen)"))
        comparisons.append(("ALS (refreshed)", "retail (refreshed)"))
        comparisons.append(("hybrid (refreshed)", "retail (refreshed)"))
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "observations": len(clusters),
        "users": len(set(clusters)),
        "periods": periods,
        "models": {
            name: {"ndcg": float(np.mean(s.ndcg)), "hr": float(np.mean(s.hits))} for name, s in scores.items()
        },
        "comparisons": [
            {"model": a, "against": b, "ratio": paired_ratio(scores[a].ndcg, scores[b].ndcg, clusters)}
            for a, b in comparisons
        ],
        "train_seconds_per_refresh": train_seconds / max(len(periods), 1),
        "hybrid_seconds_per_refresh": hybrid_seconds / max(len(periods), 1),
    }


def run(
    csv: Path,
    *,
    validation: bool = False,
    quick: bool = False,
    bpr: bool = True,
    k: int = K,
) -> dict[str, Any]:
    started, cpu = time.perf_counter(), time.process_time()
    replay = Replay(csv)
    start = VALIDATION_START if validation else SPLIT
    end = SPLIT if validation else replay.end
    if quick:
        end = min(end, start + timedelta(days=2 * PERIOD_DAYS))
    with tempfile.TemporaryDirectory(prefix="edgewise-refresh-eval-") as tmp:
        workdir = Path(tmp)
        out: dict[str, Any] = {"csv": str(csv), "k": k, "dim": DIM, "validation": validation, "quick": quick}
        if not quick:
            out["static"] = static_split(replay, start, end, workdir, bpr, k)
        out["replay"] = refresh_replay(replay, start, end, workdir, bpr=bpr, retail=not quick, k=k)
    out["seconds"] = time.perf_counter() - started
    out["cpu_seconds"] = time.process_time() - cpu
    return out


def _ratio(cell: Sequence[float]) -> str:
    ratio, lo, hi = cell
    return "n/a" if math.isnan(ratio) else f"{ratio:.2f}x ({lo:.2f}-{hi:.2f})"


def format_result(result: Mapping[str, Any]) -> str:
    k = result["k"]
    parts = []
    static = result.get("static")
    if static:
        parts.append(
            f"Static split at {static['split']}: train before, evaluate the purchases until {static['end']} "
            f"({static['users']} users)\n\n"
            f"| model | HR@{k} | NDCG@{k} | vs popular (95% CI) | vs retail (95% CI) |\n"
            "|---|---:|---:|---:|---:|"
        )
        for row in static["rows"]:
            parts.append(
                f"| {row['model']} | {row['hr']:.4f} | {row['ndcg']:.4f} | {_ratio(row['vs_popular'])} "
                f"| {_ratio(row['vs_retail'])} |"
            )
    replay = result["replay"]
    parts.append(
        f"\nRefresh replay {replay['start']} .. {replay['end']}, periods of {PERIOD_DAYS} days: "
        f"{replay['observations']} (user, period) observations, {replay['users']} users; "
        f"training {replay['train_seconds_per_refresh']:.2f} s per refresh (ALS, BPR), "
        f"{replay['hybrid_seconds_per_refresh']:.2f} s (hybrid)\n"
    )
    names = list(replay["models"])
    parts.append("| period | users | no frozen profile | " + " | ".join(names) + " |")
    parts.append("|---|---:|---:|" + "---:|" * len(names))
    for period in replay["periods"]:
        cells = [f"{period['ndcg'].get(name, math.nan):.4f}" for name in names]
        parts.append(
            f"| {period['start']} | {period['users']} | {period['users_without_frozen_profile']} | "
            + " | ".join(cells)
            + " |"
        )
    cells = [f"**{replay['models'][name]['ndcg']:.4f}**" for name in names]
    parts.append("| all | | | " + " | ".join(cells) + " |")
    parts.append(f"\n| NDCG@{k} of | against | ratio (95% cluster bootstrap over users) |\n|---|---|---:|")
    for row in replay["comparisons"]:
        parts.append(f"| {row['model']} | {row['against']} | {_ratio(row['ratio'])} |")
    parts.append(f"\n{result['seconds']:.1f} s in all ({result['cpu_seconds']:.1f} s of CPU)")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.refresh_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="the invoice export")
    parser.add_argument("--validation", action="store_true", help=f"replay {VALIDATION_START} .. {SPLIT}")
    parser.add_argument(
        "--quick", action="store_true", help="two periods, no static split, no retail refresh"
    )
    parser.add_argument("--no-bpr", action="store_true", help="leave BPR out")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        print(f"no invoice export at {args.csv} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    result = run(args.csv, validation=args.validation, quick=args.quick, bpr=not (args.no_bpr or args.quick))
    print(
        json.dumps(result, indent=2) if args.json else format_result(result),
        end="" if not args.json else "\n",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
