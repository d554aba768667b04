"""`edgewise bundle from-retail` and `edgewise eval offline`: real invoice data in, bundle and metrics out.

Progress goes to stderr, results to stdout (a summary or a Markdown table, or JSON with `--json`).
Exit status 0 on success, 1 when the export cannot be imported (the message names the column, line
or file), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgewise.offline.retail import ModelParams

__all__ = [
    "EVAL_OFFLINE_DOC",
    "FROM_RETAIL_DOC",
    "add_eval_offline_arguments",
    "add_from_retail_arguments",
    "parse_params",
    "run_eval_offline",
    "run_from_retail",
]

FROM_RETAIL_DOC = """Turn an invoice export shaped like the UCI "Online Retail" data (columns InvoiceNo,
StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country) into a bundle:

  customers -> profiles c<CustomerID>: country, RFM (recency_days, orders, ltv), rfm_score,
               rfm_segment, value_segment, recent purchases, top categories; every profile is given
               the personalization consent (the export carries no consent information)
  products  -> items p<StockCode>: category from keyword rules over the description, median price,
               tags from the description, regions ["*"]
  models    -> item popularity (distinct shoppers), item and user embeddings (item-similarity
               smoothed purchase matrix, truncated SVD, plus a popularity coordinate), co-purchase
               neighbors (models/item_neighbors.npy, models/item_neighbor_scores.npy)

Cancellations (InvoiceNo "C...") net out the purchases they cancel; service lines (postage, fees,
manual lines) and lines priced <= 0 are skipped. With --split-date only the invoices before the date
are used (what `edgewise eval offline` evaluates).

example:
  edgewise bundle from-retail ../shared/data/online-retail/OnlineRetail.csv --out /tmp/retail"""

EVAL_OFFLINE_DOC = """Evaluate the retail bundle offline, with a time split, through the real pipeline.
The bundle is built from the invoices before --split-date; each customer with a profile who bought
new items (not bought before) on or after the date is served in-process by the pipeline that edges
run, with their earlier purchases excluded from the lists:

  popular               home placement, anonymous request without consent (popularity)
  embedding             home placement, user id + personalization consent (profile embedding)
  similar (embedding)   pdp_similar placement, seeds = the customer's last --seeds purchases
  similar (co-purchase) the bundle's neighbor arrays with the same seeds, computed outside the
                        pipeline (the pipeline does not read them yet)

Reports HR@k and NDCG@k per strategy and the NDCG ratio to popular with a 95% bootstrap interval.
--validation instead evaluates three folds inside the training period (nothing on or after
--split-date is read): that is where the model's knobs are tuned, with --param.

example:
  edgewise eval offline --csv ../shared/data/online-retail/OnlineRetail.csv --split-date 2011-10-01"""


def _progress(started: float) -> Callable[[str], None]:
    def progress(message: str) -> None:
        print(f"  [{time.monotonic() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    return progress


def add_from_retail_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", type=Path, help="the invoice export (CSV with a header row)")
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory (new, or an existing bundle to replace)"
    )
    parser.add_argument(
        "--split-date",
        metavar="YYYY-MM-DD",
        help="use only the invoices before this date (the rest is the offline evaluation's test period)",
    )
    parser.add_argument("--dim", type=int, default=32, help="embedding dimension (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD (default 0)")
    parser.add_argument("--version", type=int, default=1, help="bundle_version to write (default 1)")
    parser.add_argument("--json", action="store_true", help="print the import summary as JSON")


def add_eval_offline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", type=Path, required=True, help="the invoice export (CSV with a header row)")
    parser.add_argument(
        "--split-date",
        metavar="YYYY-MM-DD",
        required=True,
        help="train on the invoices before this date, evaluate on the purchases on or after it",
    )
    parser.add_argument(
        "--k", type=int, default=10, help="list length and metric cutoff (default 10, max 50)"
    )
    parser.add_argument("--dim", type=int, default=32, help="embedding dimension (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD (default 0)")
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seed items for the similar strategies: last N purchases (default 3)",
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="evaluate three folds inside the training period instead of the test period",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a model knob (repeatable), e.g. --param popularity_weight=2; "
        "names: copurchase_weight, copurchase_shrink, neighbor_shrink, history_half_life_days, "
        "popularity_weight, similar_scale",
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")


def parse_params(pairs: list[str]) -> ModelParams:
    """`--param NAME=VALUE` overrides -> ModelParams; raises ValueError naming a bad one."""
    from edgewise.offline.retail import ModelParams

    known = {f.name for f in fields(ModelParams)}
    values: dict[str, float] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ValueError(
                f"--param {pair!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}"
            )
        try:
            values[name] = float(raw)
        except ValueError:
            raise ValueError(f"--param {pair!r}: {raw!r} is not a number") from None
    return ModelParams(**values)


def run_from_retail(args: argparse.Namespace) -> int:
    from edgewise.offline.retail import RetailError, retail_bundle
    from edgewise.sync.bundle import BundleError

    for name in ("dim", "version"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1", file=sys.stderr)
            return 2
    started = time.monotonic()
    try:
        result = retail_bundle(
            args.csv,
            args.out,
            version=args.version,
            dim=args.dim,
            seed=args.seed,
            split_date=args.split_date,
            progress=_progress(started),
        )
    except (RetailError, BundleError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"wrote bundle {result.out} (version {result.version}): {result.profiles} profiles, "
            f"{result.items} items, dim {args.dim}, in {time.monotonic() - started:.1f}s"
        )
        for key, value in summary.items():
            if key not in ("out", "version"):
                print(f"  {key}: {value}")
    return 0


def run_eval_offline(args: argparse.Namespace) -> int:
    from edgewise.offline.evaluation import evaluate_offline, format_reports
    from edgewise.offline.retail import RetailError
    from edgewise.sync.bundle import BundleError

    for name in ("k", "dim", "seeds"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1", file=sys.stderr)
            return 2
    try:
        params = parse_params(args.param)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        reports = evaluate_offline(
            args.csv,
            args.split_date,
            k=args.k,
            dim=args.dim,
            seed=args.seed,
            seeds=args.seeds,
            validation=args.validation,
            params=params,
            progress=_progress(started),
        )
    except (RetailError, BundleError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([report.to_json() for report in reports], indent=2))
    else:
        print(format_reports(reports), end="")
    return 0
