"""Command-line front ends of `edgewise bench load` and `edgewise bench floor-server`.

The root CLI (edge/cli.py) registers them under `edgewise bench`; this module also runs on its own:

    python -m edgewise.bench.cli floor-server --listen 127.0.0.1:0 --workers 2 --ready-file /tmp/floor.json
    python -m edgewise.bench.cli load --target 127.0.0.1:50052 --rate 2000 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final, TextIO

from edgewise.bench.floor import DEFAULT_FLOOR_LISTEN, FloorConfig, FloorError, serve_floor
from edgewise.bench.load import (
    DEFAULT_MIX,
    DEFAULT_PLACEMENTS,
    LoadConfig,
    LoadError,
    format_report,
    parse_mix,
    parse_placements,
    run_load,
)

__all__ = [
    "FLOOR_DOC",
    "LOAD_DOC",
    "add_floor_arguments",
    "add_load_arguments",
    "build_parser",
    "load_config_from_args",
    "main",
    "run_floor_cli",
    "run_load_cli",
]

TOKEN_ENV: Final = "EDGEWISE_BENCH_TOKEN"

LOAD_DOC: Final = """\
Drive an edge node (or the floor server) with Decide/Track calls and report latency percentiles.

Open loop (--rate R): calls leave on a fixed schedule whatever the server does, and latency is
measured from each call's intended send time (as wrk2 does), so queueing in the server shows up in
the percentiles instead of slowing the client down (no coordinated omission). Closed loop
(--concurrency C): C calls in flight at all times; finds the throughput the server sustains.

Counted: the calls sent in the measured window (after --warmup), per RPC and overall, each ending
one way: sent = ok + errors + timeouts (DEADLINE_EXCEEDED) + unfinished (still open after the drain);
completed = ok + errors + timeouts. Every rate is one of those counts over the measured seconds.
Latency of the ok calls: HdrHistogram (3 significant digits), the spectrum p50, p75, p90, p95, p99,
p99.9, p99.99 and max; --hdr-log FILE writes the same calls as a standard HdrHistogram interval log
(one histogram a second; untagged lines: every RPC, Tag=Decide / Tag=Track: one RPC; values in ns)
for HistogramLogProcessor, HistogramLogAnalyzer or hdr-plot. Failed calls are listed by gRPC status
code. Also reported: the sent vs intended rate, each client process's CPU use (of one core; a Python
gRPC client process saturates at about 75-80%, the GIL) and the send lag (how late calls left the
client); a warning says when the client, not the server, may be what was measured.

Users: Decide asks for users u0..u<N-1>; without --users, N is what the target holds (found with a
few Decide calls asking whether u<n> is known: the ids of `edgewise bundle synth`), else 100000.
--payload FILE sends your own Decide requests instead: one DecideRequest a line, in protobuf's
canonical JSON mapping (the JSON `POST /v1/decide` takes), e.g.
  {"userId": "u42", "consent": ["personalization"], "placements": [{"placementId": "home", "count": 10}]}
sent round-robin. A target behind a TLS-terminating proxy: --tls-ca (and --tls-cert/--tls-key for
mutual TLS, --tls-server-name to verify another name than the target's host); a bearer token on every
call: --token-file FILE or the EDGEWISE_BENCH_TOKEN variable.

Needs the hdrhistogram package: pip install 'edgewise[bench]'.

Typical use, the gRPC floor first and the edge next (same machine, same load):

  edgewise bench floor-server --listen 127.0.0.1:50052 --workers 2 &
  edgewise bench load --target 127.0.0.1:50052 --concurrency 32 --duration 10
  edgewise bench load --target 127.0.0.1:50052 --rate 4000 --duration 20 --json floor.json \
      --hdr-log floor.hlog

A progress line goes to stderr once a second; the table to stdout; --json FILE (or --json alone:
stdout, replacing the table) writes the machine-readable report. Exit status: 0 if the run completed
with at least one successful call, 1 if no call succeeded, 2 on bad arguments or a failed setup.
"""

FLOOR_DOC: Final = """\
Serve a no-op edgewise.v1.Personalizer exactly the way `edgewise edge serve` serves the real one:
sync gRPC worker processes (spawned, one per core by default) sharing one port with SO_REUSEPORT,
the same message-size options and per-worker cap on calls in flight, health and reflection on.
Decide answers an empty DecideResponse with a decision_id; Track answers accepted = len(events).
Measure it with `edgewise bench load` to know the floor that gRPC, protobuf and the client put
under the edge's own figures.

Port 0 picks a free port: --ready-file gets {address, port, pid, workers, worker_pids} as JSON once
every worker serves. SIGTERM / SIGINT: health NOT_SERVING, drain for --grace seconds, exit 0.
Exit status 1 if a worker died, 2 if the server could not start.
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgewise bench load`."""
    defaults = LoadConfig()
    parser.add_argument(
        "--target", default=defaults.target, help=f"HOST:PORT of the server (default {defaults.target})"
    )
    loop = parser.add_mutually_exclusive_group(required=True)
    loop.add_argument(
        "--rate",
        type=_positive_float,
        metavar="R",
        help="open loop: R calls per second in total, latency measured from the intended send time",
    )
    loop.add_argument(
        "--concurrency",
        type=int,
        metavar="C",
        help="closed loop: C calls in flight in total (no rate): finds the sustainable throughput",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=defaults.duration,
        metavar="S",
        help=f"measured seconds (default {defaults.duration:g}; at most 3600)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=defaults.warmup,
        metavar="S",
        help=f"seconds of load before measuring, not reported (default {defaults.warmup:g})",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=defaults.clients,
        metavar="N",
        help=f"client processes (default {defaults.clients}); add more if a client shows 70%% CPU or more",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=defaults.connections,
        metavar="N",
        help=f"gRPC connections per client process (default {defaults.connections}): the server's "
        "SO_REUSEPORT workers each get a share of the connections",
    )
    parser.add_argument(
        "--mix",
        default=DEFAULT_MIX,
        help=f"request mix as NAME=WEIGHT pairs, NAME decide or track (default {DEFAULT_MIX})",
    )
    parser.add_argument(
        "--placements",
        default=DEFAULT_PLACEMENTS,
        metavar="ID[:COUNT],...",
        help=f"placements asked for in every Decide (default {DEFAULT_PLACEMENTS}: the synthetic "
        "bundle's); a placement whose id contains 'similar' gets a seed item in --seed-share of calls",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=None,
        metavar="N",
        help="user ids u0..u<N-1>, Zipf-distributed (default: as many as the target holds, else 100000)",
    )
    parser.add_argument(
        "--items",
        type=int,
        default=defaults.items,
        metavar="N",
        help=f"item ids i0..i<N-1> for seeds and Track events (default {defaults.items})",
    )
    parser.add_argument(
        "--zipf",
        type=float,
        default=defaults.zipf,
        metavar="S",
        help=f"Zipf exponent of user and item popularity (default {defaults.zipf:g}; 0 = uniform)",
    )
    parser.add_argument(
        "--consent-share",
        type=_share,
        default=defaults.consent_share,
        metavar="P",
        help=f"share of calls granting personalization and analytics (default {defaults.consent_share:g})",
    )
    parser.add_argument(
        "--seed-share",
        type=_share,
        default=defaults.seed_share,
        metavar="P",
        help=f"share of Decide calls with a seed item for similar-items placements "
        f"(default {defaults.seed_share:g})",
    )
    parser.add_argument(
        "--track-batch",
        type=int,
        default=defaults.track_batch,
        metavar="N",
        help=f"events per Track call (default {defaults.track_batch})",
    )
    parser.add_argument(
        "--deadline-ms",
        type=_positive_float,
        default=defaults.deadline_ms,
        metavar="MS",
        help=f"deadline of every call (default {defaults.deadline_ms:g}); also bounds the final drain",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=defaults.max_in_flight,
        metavar="N",
        help=f"open loop: calls in flight per client process before the sender waits (default "
        f"{defaults.max_in_flight}; the wait counts in the latency)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help=f"random seed of the requests (default {defaults.seed})",
    )
    parser.add_argument(
        "--payload",
        metavar="FILE",
        help="Decide requests to send instead of generated ones: one DecideRequest a line, in protobuf's "
        "canonical JSON mapping (sent round-robin)",
    )
    parser.add_argument("--tls-ca", metavar="PEM", help="CA to verify the target with (TLS on)")
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="client key (mutual TLS)")
    parser.add_argument(
        "--tls-server-name", metavar="NAME", help="name to verify the target's certificate for"
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"bearer token sent on every call (else the {TOKEN_ENV} variable; none when neither is set)",
    )
    parser.add_argument(
        "--hdr-log",
        metavar="FILE",
        help="write the ok calls' latencies as an HdrHistogram interval log (one histogram a second)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the report as JSON to FILE (or to stdout, instead of the table, when FILE is omitted)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise LoadError(f"--token-file {args.token_file}: {exc}") from None
    return os.environ.get(TOKEN_ENV) or None


def load_config_from_args(args: argparse.Namespace) -> LoadConfig:
    """The LoadConfig the parsed arguments ask for (LoadError if one is wrong)."""
    return LoadConfig(
        target=args.target,
        rate=args.rate,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        clients=args.clients,
        connections=args.connections,
        mix=parse_mix(args.mix),
        placements=parse_placements(args.placements),
        users=args.users,
        items=args.items,
        zipf=args.zipf,
        consent_share=args.consent_share,
        seed_share=args.seed_share,
        track_batch=args.track_batch,
        deadline_ms=args.deadline_ms,
        max_in_flight=args.max_in_flight,
        seed=args.seed,
        payload=args.payload,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        token=_token(args),
    ).validated()


def run_load_cli(args: argparse.Namespace) -> int:
    """`edgewise bench load`: run, print the table (and/or JSON); see LOAD_DOC for the exit status."""
    try:
        config = load_config_from_args(args)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print("stopping (again to abort) ...", file=sys.stderr)
        stop.set()

    hdr_log: TextIO | None = None
    if args.hdr_log:
        try:
            hdr_log = open(args.hdr_log, "w", encoding="ascii")  # noqa: SIM115 (closed below)
        except OSError as exc:
            print(f"error: --hdr-log {args.hdr_log}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = run_load(config, progress=None if args.quiet else sys.stderr, stop=stop, hdr_log=hdr_log)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if hdr_log is not None:
            hdr_log.close()
    if args.json != "-":
        print(format_report(report))
    if args.json is not None:
        text = json.dumps(report.to_dict(), indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0 if report.overall.ok > 0 else 1


def add_floor_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgewise bench floor-server` (the same as `edgewise edge serve` where shared)."""
    defaults = FloorConfig()
    parser.add_argument(
        "--listen",
        default=DEFAULT_FLOOR_LISTEN,
        help=f"HOST:PORT to serve on; port 0 picks a free port (default {DEFAULT_FLOOR_LISTEN})",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="worker processes sharing the port (default: one per core)"
    )
    parser.add_argument("--pin", action="store_true", help="pin worker i to CPU i (of this process's CPUs)")
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help=f"gRPC handler threads per worker (default {defaults.threads})",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=defaults.max_in_flight,
        help="calls handled at once per worker; past it RESOURCE_EXHAUSTED "
        f"(default {defaults.max_in_flight})",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=defaults.grace,
        help=f"seconds to drain in-flight calls on shutdown (default {defaults.grace:g})",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="once every worker serves, write {address, port, pid, workers, worker_pids} as JSON here",
    )
    parser.add_argument(
        "--metered",
        action="store_true",
        help="serve behind the edge's call meter (its interceptor and a metrics file), as an edge worker "
        "serves Decide: the cost of that wrapping against the plain floor",
    )


def run_floor_cli(args: argparse.Namespace) -> int:
    """`edgewise bench floor-server`: serve until SIGTERM/SIGINT; see FLOOR_DOC for the exit status."""
    config = FloorConfig(
        listen=args.listen,
        workers=args.workers,
        threads=args.threads,
        max_in_flight=args.max_in_flight,
        pin=args.pin,
        grace=args.grace,
        ready_file=args.ready_file,
        metered=args.metered,
    )
    try:
        return serve_floor(config)
    except FloorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the two subcommands (`python -m edgewise.bench.cli`)."""
    parser = argparse.ArgumentParser(
        prog="edgewise bench", description="Load generation and the gRPC floor server."
    )
    sub = parser.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "load",
        help="drive a server with Decide/Track, report HDR latency percentiles",
        description=LOAD_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_load_arguments(p)
    p.set_defaults(handler=run_load_cli)
    p = sub.add_parser(
        "floor-server",
        help="serve a no-op Personalizer the way the edge serves (the gRPC floor)",
        description=FLOOR_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_floor_arguments(p)
    p.set_defaults(handler=run_floor_cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
