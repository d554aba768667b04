"""The `edgewise` command: one console script, one subcommand per job.

edgewise demo                      build a synthetic bundle, serve it, show decisions change
edgewise edge serve ...            run an edge node (from a bundle, or following a control plane)
edgewise edge status ...           what a node's store holds, against its map and size limits
edgewise control serve ...         run the control plane
edgewise ctl --control ... CMD     push bundles/deltas, status, rollback, history, report, forget
edgewise call decide|track ...     call an edge's Personalizer service
edgewise bundle synth|validate ... make or check a bundle
edgewise eval offline|ope ...      evaluate recommendations or policies offline
edgewise bench load|floor-server   drive an edge with load; serve the gRPC floor
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]
EXIT_BROKEN_PIPE: Final = 141
"""`edgewise ... | head`: the status a command killed by SIGPIPE has in a shell (128 + 13)."""


def build_parser() -> argparse.ArgumentParser:
    from edgewise import __version__, call, ctl, demo
    from edgewise.edge import serve, status
    from edgewise.offline import bundle_cli, ope_cli, retail_cli
    from edgewise.sync import control_serve

    parser = argparse.ArgumentParser(
        prog="edgewise",
        description="edgewise: an edge-deployed personalization worker (gRPC Decide/Track, LMDB snapshots).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `edgewise demo`. Each subcommand has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"edgewise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on temporary directories",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(p)
    p.set_defaults(handler=demo.run)

    edge = sub.add_parser("edge", help="run an edge node, or look at its store").add_subparsers(
        dest="edge_command", metavar="COMMAND", required=True
    )
    p = edge.add_parser(
        "serve",
        help="serve Decide/Track from a data directory (and a bundle)",
        description=serve.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_arguments(p)
    p.set_defaults(handler=serve.run)
    p = edge.add_parser(
        "status",
        help="what a node's store holds: snapshot, map, namespaces, size limits (read-only)",
        description=status.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_arguments(p)
    p.set_defaults(handler=status.run)

    control = sub.add_parser("control", help="run the control plane").add_subparsers(
        dest="control_command", metavar="COMMAND", required=True
    )
    p = control.add_parser(
        "serve",
        help="serve the ControlPlane service (push, subscribe, rollback) from its own LMDB store",
        description=control_serve.CONTROL_SERVE_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    control_serve.add_control_serve_arguments(p)
    p.set_defaults(handler=control_serve.run_control_serve)

    p = sub.add_parser(
        "ctl",
        help="operate a control plane: push, push-delta, status, rollback, history, report, forget",
        description=ctl.CTL_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl.add_ctl_arguments(p)
    p.set_defaults(handler=ctl.run_ctl)

    calls = sub.add_parser("call", help="call an edge from the command line").add_subparsers(
        dest="call_command", metavar="COMMAND", required=True
    )
    p = calls.add_parser(
        "decide",
        help="send a DecideRequest, print the response as JSON",
        description=call.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_decide_arguments(p)
    p.set_defaults(handler=call.run_decide)
    p = calls.add_parser(
        "track",
        help="send one event, print the TrackResponse as JSON",
        description=call.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_track_arguments(p)
    p.set_defaults(handler=call.run_track)

    bundles = sub.add_parser("bundle", help="make and check bundles").add_subparsers(
        dest="bundle_command", metavar="COMMAND", required=True
    )
    p = bundles.add_parser(
        "synth",
        help="write a realistic synthetic bundle",
        description=bundle_cli.SYNTH_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bundle_cli.add_synth_arguments(p)
    p.set_defaults(handler=bundle_cli.run_synth)
    p = bundles.add_parser(
        "validate",
        help="validate a bundle and summarize it",
        description=bundle_cli.VALIDATE_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bundle_cli.add_validate_arguments(p)
    p.set_defaults(handler=bundle_cli.run_validate)
    p = bundles.add_parser(
        "from-retail",
        help="turn an invoice export (Online Retail shape) into a bundle",
        description=retail_cli.FROM_RETAIL_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    retail_cli.add_from_retail_arguments(p)
    p.set_defaults(handler=retail_cli.run_from_retail)

    evals = sub.add_parser("eval", help="evaluate recommendations offline").add_subparsers(
        dest="eval_command", metavar="COMMAND", required=True
    )
    p = evals.add_parser(
        "offline",
        help="HR@k and NDCG@k of the retail bundle on a time split, served by the pipeline",
        description=retail_cli.EVAL_OFFLINE_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    retail_cli.add_eval_offline_arguments(p)
    p.set_defaults(handler=retail_cli.run_eval_offline)
    p = evals.add_parser(
        "ope",
        help="IPS, SNIPS and doubly robust estimates of a policy's CTR from Open Bandit Dataset logs",
        description=ope_cli.OPE_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ope_cli.add_ope_arguments(p)
    p.set_defaults(handler=ope_cli.run_ope)
    # `edgewise bench ...` is the load generator in the benchmark package (bench/), which the product does
    # not import: `main` hands those arguments to `edgewise.bench.cli` before this parser sees them.
    sub.add_parser(
        "bench",
        help="load generation (bench load) and the gRPC floor server (bench floor-server)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. A reader that goes away early (`edgewise ... | head`) ends it
    quietly: no traceback, the status of a command stopped by SIGPIPE."""
    try:
        status = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        # Python would flush stdout again at exit and print "Exception ignored ... BrokenPipeError":
        # point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        from edgewise.bench import cli as bench_cli  # the one place the product reaches into bench/

        return bench_cli.main(arguments[1:])
    args = build_parser().parse_args(arguments)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
