"""`edgewise call decide|track`: a command-line caller of an edge's Personalizer service.

Prints the response in protobuf's canonical JSON mapping (camelCase names, enum names as strings),
including fields at their default values. The calls are `edgewise.client.EdgeClient`'s; the answer is
turned back into its message (edge/convert.py) only to print it in that mapping.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from google.protobuf import json_format
from google.protobuf.message import Message

from edgewise.client import ClientError, Context, DecideRequest, EdgeClient, Event, PlacementRequest
from edgewise.core.decisions import CONTEXT_FIELDS
from edgewise.edge.client_convert import track_response_to_pb
from edgewise.edge.convert import decide_response

__all__ = ["add_decide_arguments", "add_track_arguments", "run_decide", "run_track"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="HOST:PORT of an edge node")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default 5)")
    parser.add_argument(
        "--consent",
        action="append",
        default=[],
        metavar="PURPOSE",
        help="a granted purpose, e.g. personalization, analytics (repeatable; none = nothing granted)",
    )


def add_decide_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--user", default="", help="pseudonymous user id")
    parser.add_argument("--session", default="", help="session id (anonymous visitors)")
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"request context (repeatable): one of {', '.join(CONTEXT_FIELDS)}; any other key becomes a "
        "custom attribute",
    )
    parser.add_argument(
        "--placement",
        action="append",
        required=True,
        metavar="ID[:COUNT]",
        help="placement to decide, e.g. home:5 (repeatable)",
    )
    parser.add_argument(
        "--seed-item",
        action="append",
        default=[],
        metavar="ITEM",
        help="seed item for similar items (repeatable; applies to every placement)",
    )
    parser.add_argument("--exclude", action="append", default=[], metavar="ITEM", help="item never to return")
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="ITEM",
        help="rerank mode: score only these items (repeatable)",
    )
    parser.add_argument("--filter", default="", help="named filter: category, price")
    parser.add_argument(
        "--filter-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="filter parameter, e.g. category=fashion or min=10 (repeatable)",
    )
    parser.add_argument("--explain", action="store_true", help="ask for the explanation of the decision")


def add_track_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--type", required=True, help="event type: view, click, add_to_cart, purchase, ...")
    parser.add_argument("--user", default="", help="pseudonymous user id")
    parser.add_argument("--session", default="", help="session id (anonymous visitors)")
    parser.add_argument("--item", default="", help="item id")
    parser.add_argument("--decision", default="", help="decision id from a DecideResponse (attribution)")
    parser.add_argument("--placement", default="", help="placement id the event came from")
    parser.add_argument("--value", type=float, default=0.0, help="value, e.g. revenue of a purchase")
    parser.add_argument("--event-id", default="", help="idempotency key (default: a new random id)")


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {flag} expects KEY=VALUE, got {value!r}")
        out[key] = val
    return out


def _placements(values: list[str]) -> list[tuple[str, int]]:
    out = []
    for value in values:
        pid, sep, count = value.partition(":")
        if not pid or (sep and not count.isdigit()):
            raise SystemExit(f"error: --placement expects ID or ID:COUNT, got {value!r}")
        out.append((pid, int(count) if sep else 0))
    return out


def _print(message: Message) -> None:
    print(json_format.MessageToJson(message, always_print_fields_with_no_presence=True, indent=2))


def _fail(method: str, exc: ClientError) -> int:
    print(f"error: {method} failed: {exc.code.name}: {exc.details}", file=sys.stderr)
    return 1


def run_decide(args: argparse.Namespace) -> int:
    context = _pairs(args.context, "--context")
    named = {key: value for key, value in context.items() if key in CONTEXT_FIELDS}
    attributes = {key: value for key, value in context.items() if key not in CONTEXT_FIELDS}
    params = _pairs(args.filter_param, "--filter-param")
    request = DecideRequest(
        user_id=args.user,
        session_id=args.session,
        context=Context(**named, attributes=attributes),
        consent=frozenset(args.consent),
        placements=tuple(
            PlacementRequest(
                placement_id=pid,
                count=count,
                candidate_ids=tuple(args.candidate),
                seed_item_ids=tuple(args.seed_item),
                exclude_ids=tuple(args.exclude),
                filter=args.filter,
                filter_params=params,
            )
            for pid, count in _placements(args.placement)
        ),
        explain=args.explain,
    )
    try:
        with EdgeClient(args.target, timeout=args.timeout) as client:
            response = client.decide(request)
    except ClientError as exc:
        return _fail("Decide", exc)
    except ValueError as exc:  # refused before any call (the timeout, a count out of range)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print(decide_response(response, response.decision_id))
    return 0


def run_track(args: argparse.Namespace) -> int:
    event = Event(
        event_id=args.event_id or uuid.uuid4().hex,
        type=args.type,
        user_id=args.user,
        session_id=args.session,
        item_id=args.item,
        decision_id=args.decision,
        placement_id=args.placement,
        value=args.value,
        timestamp_ms=int(time.time() * 1000),
    )
    try:
        with EdgeClient(args.target, timeout=args.timeout) as client:
            result = client.track([event], consent=args.consent)
    except ClientError as exc:
        return _fail("Track", exc)
    except ValueError as exc:  # refused before any call (the timeout, a value out of range)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print(track_response_to_pb(result))
    return 0
