"""`edgewise ctl ...`: operate a control plane (push, push-delta, status, rollback, history, report,
forget) and print what it answers. The calls are `edgewise.client.ControlClient`'s; this module parses
the flags and prints (tables, JSON, CSV, the report's PNG plot, the upload's progress bar)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

from edgewise.client import (
    BundleError,
    ClientError,
    ControlClient,
    FleetStatus,
    History,
    Metric,
    PushResult,
    Rollout,
    SliceBy,
)
from edgewise.offline.report_chart import PlotUnavailable, plot_series
from edgewise.progress import ProgressLine
from edgewise.sync.auth import OPS_TOKEN_ENV, load_token
from edgewise.sync.control_serve import duration_ms
from edgewise.sync.control_server import FORGET_STATUS_DEFAULT, FORGET_STATUS_MAX

__all__ = ["CTL_DOC", "add_ctl_arguments", "run_ctl"]


CTL_DOC = """Operate a control plane: push bundles and deltas (to every edge, or to a canary first), promote
or abort a rollout, roll back, see every edge's state, report experiments and forget users.

The ops token comes from --token-file or the EDGEWISE_OPS_TOKEN variable.

examples:
  edgewise ctl --control 127.0.0.1:50061 push ./bundle
  edgewise ctl --control 127.0.0.1:50061 push-delta changes.jsonl
  edgewise ctl --control 127.0.0.1:50061 push ./bundle --canary 10 --shadow
  edgewise ctl --control 127.0.0.1:50061 promote     (or: abort --reason "fallbacks up")
  edgewise ctl --control 127.0.0.1:50061 status --json
  edgewise ctl --control 127.0.0.1:50061 history
  edgewise ctl --control 127.0.0.1:50061 rollback 1042
  edgewise ctl --control 127.0.0.1:50061 report hero_test --by country --plot hero.png
  edgewise ctl --control 127.0.0.1:50061 forget u123 && edgewise ctl --control 127.0.0.1:50061 forget --status
"""


# --- ctl ---------------------------------------------------------------------------------------------


def add_ctl_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", required=True, metavar="HOST:PORT", help="the control plane's address")
    p.add_argument("--token-file", type=Path, help=f"ops bearer token (else ${OPS_TOKEN_ENV})")
    p.add_argument("--tls-ca", type=Path, help="CA to verify the control plane with (TLS on)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds before a call gives up (default 600)"
    )
    sub = p.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    push = sub.add_parser("push", help="validate a bundle directory, upload it, print the new version")
    push.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    push.add_argument("--description", default="", help="a note kept in the history")
    push.add_argument("--quiet", action="store_true", help="no progress bar")
    _rollout_arguments(push)
    delta = sub.add_parser("push-delta", help="upload a delta file (JSON lines of upserts and deletes)")
    delta.add_argument("file", type=Path, metavar="FILE", help="see docs/delta-format.md")
    delta.add_argument("--description", default="")
    delta.add_argument("--quiet", action="store_true", help="no progress bar")
    _rollout_arguments(delta)
    promote = sub.add_parser("promote", help="promote the rollout in progress: every edge gets the candidate")
    promote.add_argument("version", type=int, nargs="?", default=0, help="the candidate (default: any)")
    abort = sub.add_parser(
        "abort",
        help="abort the rollout in progress: roll the canary back; the other edges never apply it",
    )
    abort.add_argument("version", type=int, nargs="?", default=0, help="the candidate (default: any)")
    abort.add_argument("--reason", default="", help="kept with the rollout (default: aborted by ops)")
    status = sub.add_parser("status", help="every edge: shard, applied version, lag, last ACK/NACK, state")
    status.add_argument("--json", action="store_true", help="print JSON")
    rollback = sub.add_parser("rollback", help="publish the state of an older version as a new version")
    rollback.add_argument("version", type=int, metavar="VERSION")
    report = sub.add_parser(
        "report",
        help="an experiment's report: exposures, conversions, rates, lift vs control, P(beat), SRM, holdout",
        description="Exposures and outcomes forwarded by the edges, attributed (docs/reports.md).",
    )
    report.add_argument("experiment", metavar="EXPERIMENT", nargs="?", default="")
    report.add_argument(
        "--rollout",
        action="store_true",
        help="instead of an experiment: the rollout in progress (or the last one), canary vs the rest and "
        "the shadow comparison (docs/rollouts.md)",
    )
    report.add_argument("--metric", choices=("ctr", "conversion", "revenue"), default="ctr")
    report.add_argument(
        "--by",
        choices=("channel", "country", "segment"),
        default="",
        help="also one table per value (segment: a unit counts in every segment it matched)",
    )
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    report.add_argument(
        "--bucket",
        type=duration_ms,
        default=0,
        metavar="DURATION",
        help="size of the time buckets of the series and the plot: a number and a unit, s m h d w "
        "(e.g. 30m, 6h, 1d; default: the first of 1h 3h 6h 12h 1d 1w giving at most 100 buckets)",
    )
    report.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="also write a PNG of each variant's cumulative rate with its interval over time",
    )
    forget = sub.add_parser(
        "forget",
        help="forget a user everywhere (profile, activity, outbox, stored events), or --status",
        description="Right to be forgotten: a tombstone no later push or rollback undoes (docs/sync.md).",
    )
    forget.add_argument("user_id", nargs="?", metavar="USER_ID")
    forget.add_argument(
        "--status",
        action="store_true",
        help="which edges confirmed each forget: USER_ID's, else the newest --limit forgets",
    )
    forget.add_argument(
        "--limit",
        type=status_limit,
        default=FORGET_STATUS_DEFAULT,
        metavar="N",
        help=f"with --status: at most N users (1-{FORGET_STATUS_MAX}; default {FORGET_STATUS_DEFAULT})",
    )
    forget.add_argument("--json", action="store_true", help="print JSON (with --status)")
    history = sub.add_parser("history", help="the commits in the log, newest first")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--json", action="store_true", help="print JSON")


def _rollout_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--canary",
        type=float,
        metavar="PERCENT",
        default=0.0,
        help="a canary rollout: this share of the edges gets the new version first (at least one edge); "
        "the rest once `ctl promote` (docs/rollouts.md)",
    )
    group.add_argument(
        "--canary-nodes",
        default="",
        metavar="ID,...",
        help="a canary rollout to these edges (node ids, comma-separated)",
    )
    p.add_argument(
        "--shadow",
        action="store_true",
        help="the edges not serving the new version decide a sample of requests with it, never served",
    )
    p.add_argument(
        "--shadow-sample",
        type=float,
        default=0.0,
        metavar="F",
        help="with --shadow: the share of requests decided again (default: the control plane's, 0.1)",
    )


def _rollout_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "canary_percent": args.canary,
        "canary_nodes": [n for n in args.canary_nodes.split(",") if n.strip()],
        "shadow": args.shadow,
        "shadow_sample": args.shadow_sample,
    }


class _Progress:
    """The upload's progress on stderr (not with --quiet): `push`'s callback. A bar redrawn in place on a
    terminal; elsewhere a plain line every few seconds and one at the end (`edgewise.progress`)."""

    def __init__(self, quiet: bool, line: ProgressLine | None = None) -> None:
        self.quiet = quiet
        self.line = line if line is not None else ProgressLine(sys.stderr)
        self._last = 0.0
        self._started = time.monotonic()
        self._finished = False

    def __call__(self, sent: int, total: int) -> None:
        total = max(total, 1)
        now = time.monotonic()
        if self.quiet or self._finished or (now - self._last < 0.1 and sent < total):
            return
        self._last = now
        width = 30
        done = int(width * sent / total)
        rate = sent / max(now - self._started, 1e-6) / (1 << 20)
        text = (
            f"[{'#' * done}{'.' * (width - done)}] "
            f"{sent / (1 << 20):.1f}/{total / (1 << 20):.1f} MiB"
            f" {rate:.1f} MiB/s"
        )
        if sent >= total:
            self._finished = True
            self.line.done(text)
        else:
            self.line.update(text)


def status_limit(text: str) -> int:
    """`--limit` of `forget --status`: an integer in 1..FORGET_STATUS_MAX."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= FORGET_STATUS_MAX:
        raise argparse.ArgumentTypeError(f"must be 1-{FORGET_STATUS_MAX}, got {value}")
    return value


def _users(count: int) -> str:
    return f"{count:,} user" if count == 1 else f"{count:,} users"


def _fail(message: str) -> int:
    print(f"edgewise ctl: {message}", file=sys.stderr)
    return 1


def run_ctl(args: argparse.Namespace) -> int:
    """Run one `edgewise ctl` command through a ControlClient and print what it answers: 0 when done, 1
    when refused (the reason on stderr, "edgewise ctl: CODE: details" for the control plane's)."""
    try:
        token = load_token(None, str(args.token_file) if args.token_file else None, OPS_TOKEN_ENV)
        client = ControlClient(
            args.control,
            token=token,
            timeout=args.timeout,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    with client:
        try:
            return _run_command(args, client)
        except ClientError as exc:
            return _fail(str(exc))
        except (ValueError, OSError) as exc:  # arguments the client refused before any call
            return _fail(str(exc))


def _run_command(args: argparse.Namespace, client: ControlClient) -> int:
    command = args.ctl_command
    if command == "push":
        try:
            pushed = client.push(
                args.bundle,
                description=args.description,
                progress=_Progress(args.quiet),
                **_rollout_kwargs(args),
            )
        except BundleError as exc:
            return _fail(f"push refused, nothing uploaded: {exc}")
        bundle = pushed.bundle
        assert bundle is not None  # a bundle push always says what it uploaded
        what = f"bundle {bundle.version} ({bundle.items} items, {bundle.profiles} profiles)"
        print(f"pushed {what}: version {pushed.version}, {pushed.changes} changes")
        _print_started(pushed)
        return 0
    if command == "push-delta":
        pushed = client.push_delta(
            args.file, description=args.description, progress=_Progress(args.quiet), **_rollout_kwargs(args)
        )
        print(f"pushed delta {args.file.name}: version {pushed.version}, {pushed.changes} changes")
        _print_started(pushed)
        return 0
    if command == "promote":
        done = client.promote(args.version)
        print(done.summary)
        return 0
    if command == "abort":
        done = client.abort(args.version, reason=args.reason)
        print(done.summary)
        return 0
    if command == "rollback":
        rolled = client.rollback(args.version)
        print(
            f"rolled back to the state of version {args.version}: "
            f"new version {rolled.version}, {rolled.changes} changes"
        )
        return 0
    if command == "forget":
        return _forget(args, client)
    if command == "report":
        return _report(args, client)
    if command == "history":
        _print_history(client.history(args.limit), args.json)
        return 0
    _print_status(client.status(), args.json)
    return 0


def _forget(args: argparse.Namespace, client: ControlClient) -> int:
    if args.status:
        status = client.forget_status(args.user_id, limit=args.limit)
        if args.json:
            print(json.dumps([dataclasses.asdict(u) for u in status.users], indent=2))
            return 0
        if args.user_id and not status.users:
            print(f"{args.user_id} was not forgotten ({_users(status.total)} forgotten in all)")
        elif not args.user_id:
            print(f"{_users(status.total)} forgotten; the newest {len(status.users)}:")
        for u in status.users:
            print(
                f"{u.user_id}: version {u.version}; "
                f"confirmed by {', '.join(u.confirmed) or '-'}; "
                f"pending on {', '.join(u.pending) or '-'}"
            )
        return 0
    if not args.user_id:
        return _fail("forget needs a USER_ID (or --status)")
    done = client.forget(args.user_id)
    print(
        f"forgot {args.user_id}: version {done.version} "
        f"({done.events_removed} stored events removed upstream); "
        "edges purge it when they apply that version (see forget --status)"
    )
    return 0


def _print_started(pushed: PushResult) -> None:
    rollout = pushed.rollout
    if rollout is None:
        return
    canary = ", ".join(rollout.canary_nodes) or "no edge"
    shadow = f"; shadow on the others, sample {rollout.shadow_sample:g}" if rollout.shadow else ""
    print(
        f"rollout of version {rollout.version} started: canary {canary}{shadow}; the others stay at "
        f"version {rollout.base_version} until `edgewise ctl promote` (or `edgewise ctl abort`)"
    )


def rollout_lines(rollout: Rollout) -> list[str]:
    """The rollout section of `ctl status` and `ctl report --rollout`: state, canary vs rest, shadow."""
    lines = [
        f"rollout of version {rollout.version} over {rollout.base_version}: {rollout.state}"
        + (f" ({rollout.reason})" if rollout.reason else "")
        + (f"; rolled back by version {rollout.rollback_version}" if rollout.rollback_version else ""),
        f"  canary edges: {', '.join(rollout.canary_nodes) or '-'}",
        f"  {'group':<7} {'edges':>5} {'decisions':>10} {'placements':>10} {'fallback':>9} {'errors':>8} "
        f"{'p99 ms':>8}",
    ]
    for name, h in (("canary", rollout.canary), ("rest", rollout.rest)):
        lines.append(
            f"  {name:<7} {h.edges:>5} {h.decisions:>10} {h.placements:>10} {h.fallback_rate:>9.4f} "
            f"{h.error_rate:>8.4f} {h.latency_p99_us / 1000:>8.2f}"
        )
    s = rollout.shadow_stats
    if rollout.shadow:
        overlap = s.overlap_sum / s.item_placements if s.item_placements else 0.0
        served = s.served_latency_us_sum / s.sampled if s.sampled else 0.0
        shadow = s.shadow_latency_us_sum / s.sampled if s.sampled else 0.0
        lines.append(
            f"  shadow (sample {rollout.shadow_sample:g}): {s.sampled} requests, {s.placements} placements, "
            f"overlap@k {overlap:.3f}, {s.variant_changes} variant changes, {s.new_fallbacks} new fallbacks "
            f"({s.fixed_fallbacks} fixed), {s.errors} errors, latency {served / 1000:.2f} ms served vs "
            f"{shadow / 1000:.2f} ms candidate"
        )
    return lines


def _report(args: argparse.Namespace, client: ControlClient) -> int:
    if args.rollout:
        if args.experiment:
            return _fail("report: give an EXPERIMENT or --rollout, not both")
        rollout = client.status().rollout
        if rollout is None:
            return _fail("report --rollout: this control plane has had no rollout")
        if args.format == "json":
            print(json.dumps(dataclasses.asdict(rollout), indent=2))
        elif args.format == "csv":
            return _fail("report --rollout: --format table or json")
        else:
            print("\n".join(rollout_lines(rollout)))
        return 0
    if not args.experiment:
        return _fail("report: which EXPERIMENT? (or --rollout)")
    if not 0.5 <= args.confidence < 1:
        return _fail(f"--confidence must be in [0.5, 1), got {args.confidence}")
    doc = client.report(
        args.experiment,
        metric=cast(Metric, args.metric),
        by=cast(SliceBy, args.by),
        confidence=args.confidence,
        bucket_ms=args.bucket,
    )
    if args.plot is not None:
        if "series" not in doc:
            return _fail("--plot: this control plane sends no time series; upgrade it")
        try:
            args.plot.write_bytes(report_plot(doc))
        except PlotUnavailable as exc:
            return _fail(str(exc))
        except OSError as exc:
            return _fail(f"--plot: cannot write {args.plot}: {exc.strerror or exc}")
    print_report(doc, args.format)
    if args.plot is not None:  # on stderr when stdout is JSON or CSV, to keep it parseable
        print(f"wrote {args.plot}", file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def _print_history(history: History, as_json: bool) -> None:
    if as_json:
        print(json.dumps(dataclasses.asdict(history), indent=2))
        return
    print(
        f"head {history.head_version}; log from {history.log_start_version}; "
        f"snapshots {', '.join(map(str, history.snapshot_versions)) or '-'}"
    )
    print(f"{'version':>10} {'kind':<9} {'changes':>9}  {'created (UTC)':<19}  description")
    for c in history.commits:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.created_at_ms / 1000))
        print(f"{c.version:>10} {c.kind:<9} {c.changes:>9}  {created:<19}  {c.description}")


def _print_status(status: FleetStatus, as_json: bool) -> None:
    if as_json:
        print(json.dumps(dataclasses.asdict(status), indent=2))
        return
    print(
        f"head version {status.head_version}; {len(status.edges)} edges; "
        f"{status.events_total} events stored upstream"
    )
    print(
        f"{'node':<20} {'shard':<16} {'applied':>9} {'lag':>6} {'ack':>9} {'nack':>9} "
        f"{'state':<12} last error"
    )
    for e in status.edges:
        print(
            f"{e.node_id:<20} {e.shard:<16} {e.applied_version:>9} {e.lag:>6} "
            f"{e.last_ack_version:>9} "
            f"{e.last_nack_version or '-':>9} {e.state:<12} {e.last_error or '-'}"
            + ("  [canary]" if e.canary else "")
        )
    if status.rollout is not None:
        print("\n".join(rollout_lines(status.rollout)))


_REPORT_COLUMNS: Final = (
    "group",
    "variant",
    "units",
    "share",
    "conversions",
    "value",
    "value_low",
    "value_high",
    "rel_lift",
    "rel_lift_low",
    "rel_lift_high",
    "p_beat",
)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_METRIC_NAMES: Final = {
    "ctr": "click-through rate",
    "conversion": "conversion rate",
    "revenue": "revenue per unit",
}


def report_plot(doc: dict[str, Any]) -> bytes:
    """The PNG of `ctl report --plot`: per variant, the cumulative rate with its interval per time bucket
    of the report document's "series" (the server sends the numbers, the client draws)."""
    points = doc.get("series") or []
    size = int(doc.get("bucket_size_ms") or 3_600_000)
    day = 86_400_000
    unit_ms, unit = (day, "days") if size >= day // 2 else (3_600_000, "hours")
    start = min((int(p["bucket_ms"]) for p in points), default=0)
    series: dict[str, list[tuple[float, float | None, float | None, float | None]]] = {
        r["variant"]: [] for r in doc.get("rows", [])
    }
    for p in points:
        x = (int(p["bucket_ms"]) - start) / unit_ms
        series.setdefault(p["variant"], []).append((x, p["value"], p["low"], p["high"]))
    metric = str(doc.get("metric", ""))
    since = datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    confidence = float(doc.get("confidence", 0.95)) * 100
    return plot_series(
        series,
        f"{doc.get('experiment', '')}: {metric}, cumulative, {confidence:g}% interval",
        f"{unit} since {since} (buckets of {size / 3_600_000:g} h, by first exposure)",
        _METRIC_NAMES.get(metric, metric),
        y_percent=metric != "revenue",
    )


def print_report(doc: dict[str, Any], fmt: str) -> None:
    """Print a report document as a table, JSON or CSV (every row of the overall report and its slices)."""
    if fmt == "json":
        print(json.dumps(doc, indent=2))
        return
    rows = [dict(r, group=r.get("group") or "all") for r in doc["rows"] + doc["slices"]]
    if fmt == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(doc["rows"][0]) if doc["rows"] else ["variant"])
        writer.writeheader()
        for r in doc["rows"] + doc["slices"]:
            writer.writerow(r)
        return
    srm = doc["srm"]
    print(
        f"experiment {doc['experiment']}: metric {doc['metric']}, control {doc['control']}, "
        f"{doc['exposures']} exposures, {doc['outcomes']} outcomes ({doc['attributed']} attributed)"
    )
    if doc.get("skipped"):
        print(f"{doc['skipped']} stored records skipped: the control plane cannot use them (docs/sync.md)")
    if srm["srm"]:
        print(
            f"WARNING: SAMPLE RATIO MISMATCH (chi-square p = {srm['p_value']:.2g}): the split does not match "
            "the configured weights; do not trust these numbers until the cause is found (docs/reports.md)"
        )
    widths = {
        c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) if rows else len(c) for c in _REPORT_COLUMNS
    }
    print("  ".join(c.ljust(widths[c]) for c in _REPORT_COLUMNS))
    for r in rows:
        print("  ".join(_cell(r.get(c)).ljust(widths[c]) for c in _REPORT_COLUMNS))
    holdout = doc.get("holdout")
    if holdout:
        print(holdout_line(holdout, str(doc["metric"])))


def holdout_line(holdout: dict[str, Any], metric: str) -> str:
    """Personalization vs the global holdout, its lifts named as the table's columns: `rel_lift`
    (relative: personalized / holdout - 1) and `abs_lift` (absolute: the difference of the metric)."""

    def interval(low: object, high: object) -> str:
        return f"[{_cell(low)}, {_cell(high)}]"

    relative = f"rel_lift {_cell(holdout.get('rel_lift'))}"
    if "rel_lift_low" in holdout:  # control planes before the relative interval send the value alone
        relative += " " + interval(holdout["rel_lift_low"], holdout.get("rel_lift_high"))
    return (
        f"personalization vs global holdout: {holdout['personalized_units']} vs "
        f"{holdout['holdout_units']} units, {relative} (relative: personalized / holdout - 1), "
        f"abs_lift {_cell(holdout['lift'])} {interval(holdout['lift_low'], holdout['lift_high'])} "
        f"(absolute: difference of the {metric}), P(beat) {_cell(holdout['p_beat'])}"
    )
