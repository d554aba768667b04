"""`edgewise ctl ...`: operate a control plane (push, push-delta, status, rollback, history, report,
forget) and print what it answers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import grpc

from edgewise.offline.plot_png import plot_series
from edgewise.sync.auth import (
    OPS_TOKEN_ENV,
    bearer_metadata,
    load_token,
    open_channel,
)
from edgewise.sync.bundle import BundleError, load_bundle
from edgewise.sync.control_serve import duration_ms
from edgewise.sync.control_server import FORGET_STATUS_DEFAULT, FORGET_STATUS_MAX
from edgewise.v1 import sync_pb2, sync_pb2_grpc

__all__ = ["CTL_DOC", "add_ctl_arguments", "run_ctl"]

_UPLOAD_CHUNK: Final = 1 << 20

CTL_DOC = """Operate a control plane: push bundles and deltas, roll back, see every edge's state, report
experiments and forget users.

The ops token comes from --token-file or the EDGEWISE_OPS_TOKEN variable.

examples:
  edgewise ctl --control 127.0.0.1:50061 push ./bundle
  edgewise ctl --control 127.0.0.1:50061 push-delta changes.jsonl
  edgewise ctl --control 127.0.0.1:50061 status --json
  edgewise ctl --control 127.0.0.1:50061 history
  edgewise ctl --control 127.0.0.1:50061 rollback 1042
  edgewise ctl --control 127.0.0.1:50061 report hero_test --by country --plot hero.png
  edgewise ctl --control 127.0.0.1:50061 forget u123 && edgewise ctl --control 127.0.0.1:50061 forget --status
"""

_STATES: Final = {
    sync_pb2.EDGE_STATE_UNSPECIFIED: "DISCONNECTED",
    sync_pb2.EDGE_STATE_READY: "READY",
    sync_pb2.EDGE_STATE_STALE: "STALE",
    sync_pb2.EDGE_STATE_NOT_SERVING: "NOT_SERVING",
}


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
    delta = sub.add_parser("push-delta", help="upload a delta file (JSON lines of upserts and deletes)")
    delta.add_argument("file", type=Path, metavar="FILE", help="see docs/delta-format.md")
    delta.add_argument("--description", default="")
    delta.add_argument("--quiet", action="store_true", help="no progress bar")
    status = sub.add_parser("status", help="every edge: shard, applied version, lag, last ACK/NACK, state")
    status.add_argument("--json", action="store_true", help="print JSON")
    rollback = sub.add_parser("rollback", help="publish the state of an older version as a new version")
    rollback.add_argument("version", type=int, metavar="VERSION")
    report = sub.add_parser(
        "report",
        help="an experiment's report: exposures, conversions, rates, lift vs control, P(beat), SRM, holdout",
        description="Exposures and outcomes forwarded by the edges, attributed (docs/reports.md).",
    )
    report.add_argument("experiment", metavar="EXPERIMENT")
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


class _Progress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total = max(total, 1)
        self.sent = 0
        self.quiet = quiet or not sys.stderr.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def add(self, n: int) -> None:
        self.sent += n
        now = time.monotonic()
        if self.quiet or (now - self._last < 0.1 and self.sent < self.total):
            return
        self._last = now
        width = 30
        done = int(width * self.sent / self.total)
        rate = self.sent / max(now - self._started, 1e-6) / (1 << 20)
        sys.stderr.write(
            f"\r[{'#' * done}{'.' * (width - done)}] "
            f"{self.sent / (1 << 20):.1f}/{self.total / (1 << 20):.1f} MiB"
            f" {rate:.1f} MiB/s"
        )
        if self.sent >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _bundle_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _upload(
    kind: sync_pb2.PushKind.ValueType, root: Path, files: list[Path], description: str, progress: _Progress
) -> Iterator[sync_pb2.PushChunk]:
    first = True
    for path in files:
        rel = path.relative_to(root).as_posix() if path != root else path.name
        with path.open("rb") as fh:
            sent_any = False
            while True:
                data = fh.read(_UPLOAD_CHUNK)
                if not data and sent_any:
                    break
                sent_any = True
                chunk = sync_pb2.PushChunk(kind=kind, path=rel, data=data)
                if first:
                    chunk.description = description
                    first = False
                progress.add(len(data))
                yield chunk
                if not data:
                    break


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
    try:
        token = load_token(None, str(args.token_file) if args.token_file else None, OPS_TOKEN_ENV)
        channel = open_channel(
            args.control,
            ca=str(args.tls_ca) if args.tls_ca else None,
            cert=str(args.tls_cert) if args.tls_cert else None,
            key=str(args.tls_key) if args.tls_key else None,
            options=(("grpc.max_receive_message_length", 64 << 20),),
        )
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    stub = sync_pb2_grpc.ControlPlaneStub(channel)
    meta = bearer_metadata(token)
    try:
        return _run_command(args, stub, meta)
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "ERROR"
        return _fail(f"{code}: {exc.details() if hasattr(exc, 'details') else exc}")
    finally:
        channel.close()


def _run_command(args: argparse.Namespace, stub: Any, meta: tuple[tuple[str, str], ...]) -> int:
    command = args.ctl_command
    if command in ("push", "push-delta"):
        if command == "push":
            try:
                bundle = load_bundle(args.bundle)  # validate here first: refuse before uploading anything
            except BundleError as exc:
                return _fail(f"push refused, nothing uploaded: {exc}")
            root, files, kind = args.bundle, _bundle_files(args.bundle), sync_pb2.PUSH_KIND_BUNDLE
            what = f"bundle {bundle.version} ({len(bundle.items)} items, {len(bundle.profiles)} profiles)"
        else:
            if not args.file.is_file():
                return _fail(f"{args.file}: no such file")
            root, files, kind = args.file, [args.file], sync_pb2.PUSH_KIND_DELTA
            what = f"delta {args.file.name}"
        progress = _Progress(sum(p.stat().st_size for p in files), args.quiet)
        reply = stub.Push(
            _upload(kind, root, files, args.description, progress), metadata=meta, timeout=args.timeout
        )
        print(f"pushed {what}: version {reply.version}, {reply.changes} changes")
        return 0
    if command == "rollback":
        reply = stub.Rollback(
            sync_pb2.RollbackRequest(version=args.version), metadata=meta, timeout=args.timeout
        )
        print(
            f"rolled back to the state of version {args.version}: "
            f"new version {reply.version}, {reply.changes} changes"
        )
        return 0
    if command == "forget":
        if args.status:
            status = stub.ForgetStatus(
                sync_pb2.ForgetStatusRequest(user_id=args.user_id or "", limit=args.limit),
                metadata=meta,
                timeout=args.timeout,
            )
            users = status.users
            rows = [
                {
                    "user_id": u.user_id,
                    "version": u.version,
                    "confirmed": list(u.confirmed),
                    "pending": list(u.pending),
                }
                for u in users
            ]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                if args.user_id and not rows:
                    print(f"{args.user_id} was not forgotten ({_users(status.total)} forgotten in all)")
                elif not args.user_id:
                    print(f"{_users(status.total)} forgotten; the newest {len(rows)}:")
                for r in rows:
                    print(
                        f"{r['user_id']}: version {r['version']}; "
                        f"confirmed by {', '.join(r['confirmed']) or '-'}; "
                        f"pending on {', '.join(r['pending']) or '-'}"
                    )
            return 0
        if not args.user_id:
            return _fail("forget needs a USER_ID (or --status)")
        done = stub.Forget(sync_pb2.ForgetRequest(user_id=args.user_id), metadata=meta, timeout=args.timeout)
        print(
            f"forgot {args.user_id}: version {done.version} "
            f"({done.events_removed} stored events removed upstream); "
            "edges purge it when they apply that version (see forget --status)"
        )
        return 0
    if command == "report":
        if not 0.5 <= args.confidence < 1:
            return _fail(f"--confidence must be in [0.5, 1), got {args.confidence}")
        reply = stub.Report(
            sync_pb2.ReportRequest(
                experiment=args.experiment,
                metric=args.metric,
                by=args.by,
                confidence=args.confidence,
                bucket_ms=args.bucket,
            ),
            metadata=meta,
            timeout=args.timeout,
        )
        doc = json.loads(reply.json)
        if args.plot is not None:
            if "series" not in doc:
                return _fail("--plot: this control plane sends no time series; upgrade it")
            try:
                args.plot.write_bytes(report_plot(doc))
            except OSError as exc:
                return _fail(f"--plot: cannot write {args.plot}: {exc.strerror or exc}")
        print_report(doc, args.format)
        if args.plot is not None:  # on stderr when stdout is JSON or CSV, to keep it parseable
            print(f"wrote {args.plot}", file=sys.stdout if args.format == "table" else sys.stderr)
        return 0
    if command == "history":
        hist = stub.History(sync_pb2.HistoryRequest(limit=args.limit), metadata=meta, timeout=args.timeout)
        rows = [
            {
                "version": c.version,
                "base_version": c.base_version,
                "kind": c.kind,
                "changes": c.changes,
                "created_at_ms": c.created_at_ms,
                "description": c.description,
            }
            for c in hist.commits
        ]
        if args.json:
            print(
                json.dumps(
                    {
                        "head_version": hist.head_version,
                        "log_start_version": hist.log_start_version,
                        "snapshot_versions": list(hist.snapshot_versions),
                        "commits": rows,
                    },
                    indent=2,
                )
            )
            return 0
        print(
            f"head {hist.head_version}; log from {hist.log_start_version}; "
            f"snapshots {', '.join(map(str, hist.snapshot_versions)) or '-'}"
        )
        print(f"{'version':>10} {'kind':<9} {'changes':>9}  {'created (UTC)':<19}  description")
        for r in rows:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created_at_ms"] / 1000))
            print(f"{r['version']:>10} {r['kind']:<9} {r['changes']:>9}  {created:<19}  {r['description']}")
        return 0
    status = stub.Status(sync_pb2.StatusRequest(), metadata=meta, timeout=args.timeout)
    edges = [
        {
            "node_id": e.node_id,
            "shard": e.shard,
            "applied_version": e.applied_version,
            "lag": e.lag,
            "last_ack_version": e.last_ack_version,
            "last_nack_version": e.last_nack_version,
            "last_error": e.last_error,
            "state": _STATES.get(e.state, "UNKNOWN"),
            "connected": e.connected,
            "last_seen_ms": e.last_seen_ms,
            "peer": e.peer,
            "events_forwarded": e.events_forwarded,
        }
        for e in status.edges
    ]
    if args.json:
        print(
            json.dumps(
                {"head_version": status.head_version, "events_total": status.events_total, "edges": edges},
                indent=2,
            )
        )
        return 0
    print(
        f"head version {status.head_version}; {len(edges)} edges; "
        f"{status.events_total} events stored upstream"
    )
    print(
        f"{'node':<20} {'shard':<16} {'applied':>9} {'lag':>6} {'ack':>9} {'nack':>9} "
        f"{'state':<12} last error"
    )
    for e in edges:
        print(
            f"{e['node_id']:<20} {e['shard']:<16} {e['applied_version']:>9} {e['lag']:>6} "
            f"{e['last_ack_version']:>9} "
            f"{e['last_nack_version'] or '-':>9} {e['state']:<12} {e['last_error'] or '-'}"
        )
    return 0


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
        "revenue per unit" if metric == "revenue" else metric,
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
        print(
            f"personalization vs global holdout: {holdout['personalized_units']} vs "
            f"{holdout['holdout_units']} units, lift {_cell(holdout['lift'])} "
            f"[{_cell(holdout['lift_low'])}, {_cell(holdout['lift_high'])}], "
            f"P(beat) {_cell(holdout['p_beat'])}"
        )
