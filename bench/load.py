"""`edgewise bench load`: a gRPC load generator for the Personalizer service that does not hide queueing.

Two modes:

- open loop (`rate`): every client process sends on a fixed schedule, request i of client k at
  `t0 + (k + i * clients) / rate`, whether or not earlier calls have come back, and a call's latency
  is measured from that *intended* send time (as wrk2 does). A server that stalls for 100 ms therefore
  shows up as 100 ms of latency for every call that was due in the stall, not as one slow call
  (coordinated omission). How late the sender itself was (`send lag`) is reported, so a client that
  cannot keep up is visible instead of silently lowering the load.
- closed loop (`concurrency`): a fixed number of calls in flight; each completion lets the next call
  go. Latency is measured from the actual send. This finds the throughput a server sustains.

Several client processes (started with the multiprocessing `spawn` method: gRPC does not survive a
fork), each with `connections` gRPC channels of its own (one HTTP/2 connection each, so the server's
SO_REUSEPORT workers all get connections) and a set of sender threads making blocking calls: in
closed loop one thread per call in flight; in open loop `max_in_flight` threads share the schedule (a
free thread claims the next slot, sleeps until it is due, calls), so when all of them are busy the
next call waits and the wait counts in its latency. Blocking calls rather than the future API: the
future API runs a polling thread per channel, and several of those fighting over the GIL cost about
three times the CPU per call; blocking calls poll in the calling thread. A call goes to the less
loaded of two random connections, load being calls in flight times the moving average of the
connection's latency (power of two choices with peak EWMA, as Finagle and Linkerd balance): the
kernel spreads connections over SO_REUSEPORT workers by hash, not evenly, and balancing on calls in
flight alone would load a worker in proportion to its connections; on latency, both workers end up
equally busy. Requests are
pre-serialized where they can be, so the client spends its CPU on gRPC, not on building messages;
each client reports its CPU use (1.0 = one core busy), the achieved vs intended rate and the send
lag.

Requests: a mix of Decide and Track (`mix`, e.g. decide=0.9,track=0.1). Decide asks for the
placements given (default `home:10,pdp_similar:8,hero_banner`, the synthetic bundle's) for user
`u<n>`, n Zipf-distributed over `users` (exponent `zipf`, the hot users are a fixed random subset;
by default `users` is what the target holds: `discover_users`),
with the `personalization` and `analytics` purposes in `consent_share` of the calls (none otherwise),
a country, device and channel context drawn like the synthetic bundle's, and one seed item `i<n>`
(Zipf over `items`) for every placement whose id contains "similar" in `seed_share` of the calls.
Track sends `track_batch` view or click events with unique event ids for the same users and items.
With `payload` (a file of DecideRequests, one per line in protobuf's canonical JSON mapping: the JSON
`POST /v1/decide` takes) Decide sends those requests instead, round-robin, each client process
starting at its own offset. TLS (`tls_ca`, and `tls_cert` + `tls_key` for mutual TLS) and a bearer
token (`token`, as `authorization: Bearer ...` on every call) reach targets behind a TLS-terminating
proxy or gateway.

What is counted: the calls whose intended send time lies in the measured window (after `warmup`),
per RPC. Each of them ends one way: `ok`, `errors` (a gRPC status other than OK and
DEADLINE_EXCEEDED), `timeouts` (DEADLINE_EXCEEDED) or `unfinished` (still open after the drain, then
cancelled), so sent = ok + errors + timeouts + unfinished, and completed = ok + errors + timeouts.
Rates divide those counts by the measured seconds (`achieved_rate` is the completed calls' rate).
Latency histograms (bench/histogram.py: HdrHistogram, 3 significant digits) hold the `ok` calls; the
percentiles reported are p50, p75, p90, p95, p99, p99.9, p99.99 and the max. `hdr_log` writes the
same calls as an HdrHistogram interval log (one histogram a second, untagged: every RPC; `Tag=<RPC>`:
one RPC), whose intervals add up to the report's histograms. Every phase is bounded: at most warmup +
duration of sending, then at most the call deadline plus two seconds of draining.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import multiprocessing as mp
import os
import platform
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.synchronize import Event as MpEvent
from typing import Any, Final, TextIO

import grpc
import numpy as np
from google.protobuf import json_format

from edgewise.bench.histogram import (
    REPORT_PERCENTILES,
    HdrLogWriter,
    Histogram,
    Summary,
    require_hdrhistogram,
    wall_time_of,
)
from edgewise.offline.synth import COUNTRIES, COUNTRY_WEIGHTS, DEVICE_WEIGHTS, DEVICES
from edgewise.sync.auth import bearer_metadata, channel_credentials
from edgewise.v1 import personalizer_pb2 as _pb

__all__ = [
    "DEFAULT_MIX",
    "DEFAULT_PLACEMENTS",
    "RPCS",
    "ClientStats",
    "LoadConfig",
    "LoadError",
    "LoadReport",
    "RpcReport",
    "decide_requests",
    "discover_users",
    "format_report",
    "load_payload",
    "parse_mix",
    "parse_placements",
    "run_load",
]

RPCS: Final = ("Decide", "Track")
DEFAULT_MIX: Final = "decide=0.9,track=0.1"
DEFAULT_PLACEMENTS: Final = "home:10,pdp_similar:8,hero_banner"
SERVICE: Final = "edgewise.v1.Personalizer"
CONSENT: Final = ("personalization", "analytics")
CHANNELS: Final = ("web", "app")
CHANNEL_WEIGHTS: Final = (0.8, 0.2)
DECIDE_POOL: Final = 8192  # pre-serialized Decide requests per client, sent round-robin
TRACK_POOL: Final = 4096  # pre-drawn (user, item, consent) for Track events
READY_TIMEOUT_S: Final = 60.0  # client processes: spawn, import, build requests, connect
CONNECT_TIMEOUT_S: Final = 2.0
DRAIN_EXTRA_S: Final = 2.0
MAX_DURATION_S: Final = 3600.0
START_DELAY_NS: Final = 200_000_000  # t0 is this far after the last client reported ready
PR_SET_TIMERSLACK: Final = 29
EWMA_WEIGHT: Final = 0.1  # of the newest latency in a connection's moving average
EXPLORE_SHARE: Final = 0.02  # calls sent to a random connection whatever its load
CLIENT_CPU_LIMIT: Final = 0.7  # of one core: a Python gRPC client process saturates about here (GIL)
DEFAULT_USERS: Final = 100_000  # when the target does not tell (see discover_users)
MAX_PAYLOAD_LINES: Final = 1_000_000
MAX_PROBE_USERS: Final = 1 << 31
TIMEOUT_CODE: Final = "DEADLINE_EXCEEDED"


class LoadError(RuntimeError):
    """A load run that could not be set up or run (bad configuration, client processes failing)."""


# -- configuration ----------------------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, float]:
    """`decide=0.9,track=0.1` -> {"Decide": 0.9, "Track": 0.1} (weights normalized to sum 1)."""
    names = {r.lower(): r for r in RPCS}
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        rpc = names.get(key.strip().lower())
        if rpc is None or not sep:
            raise LoadError(f"mix: expected NAME=WEIGHT with NAME one of decide, track; got {part!r}")
        try:
            weight = float(value)
        except ValueError:
            raise LoadError(f"mix: weight of {key.strip()!r} is not a number: {value!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise LoadError(f"mix: weight of {key.strip()!r} must be a finite number >= 0, got {value!r}")
        out[rpc] = out.get(rpc, 0.0) + weight
    total = sum(out.values())
    if total <= 0:
        raise LoadError(f"mix: at least one weight must be > 0, got {text!r}")
    return {rpc: w / total for rpc, w in out.items() if w > 0}


def parse_placements(text: str) -> tuple[tuple[str, int], ...]:
    """`home:10,pdp_similar:8,hero_banner` -> (("home", 10), ("pdp_similar", 8), ("hero_banner", 0))."""
    out: list[tuple[str, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        pid, sep, count = part.partition(":")
        if not pid or (sep and not count.isdigit()):
            raise LoadError(f"placements: expected ID or ID:COUNT, got {part!r}")
        if any(pid == p for p, _ in out):
            raise LoadError(f"placements: {pid!r} is given twice")
        out.append((pid, int(count) if sep else 0))
    if not out:
        raise LoadError("placements: at least one placement is required")
    return tuple(out)


@dataclass(frozen=True)
class LoadConfig:
    """One load run. Exactly one of `rate` (open loop) and `concurrency` (closed loop) is set."""

    target: str = "127.0.0.1:50051"
    rate: float | None = None  # requests/s over all clients (open loop)
    concurrency: int | None = None  # calls in flight over all clients (closed loop)
    duration: float = 10.0  # measured seconds
    warmup: float = 1.0  # seconds of load before measuring
    clients: int = 2  # client processes
    connections: int = 4  # gRPC channels (TCP connections) per client process
    mix: Mapping[str, float] = field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    placements: tuple[tuple[str, int], ...] = field(
        default_factory=lambda: parse_placements(DEFAULT_PLACEMENTS)
    )
    users: int | None = None  # None: what the target holds (discover_users), else DEFAULT_USERS
    items: int = 10_000
    zipf: float = 1.0
    consent_share: float = 0.9
    seed_share: float = 0.6
    track_batch: int = 1
    deadline_ms: float = 1000.0
    max_in_flight: int = 64  # open loop: sender threads (= calls in flight) per client process
    seed: int = 1
    payload: str | None = None  # file of DecideRequests (JSON lines, canonical JSON mapping)
    tls_ca: str | None = None  # CA to verify the target with (TLS on)
    tls_cert: str | None = None  # client certificate (mutual TLS)
    tls_key: str | None = None
    tls_server_name: str | None = None  # the name to verify the target's certificate for
    token: str | None = field(default=None, repr=False)  # bearer token; never reported

    @property
    def mode(self) -> str:
        return "open" if self.rate is not None else "closed"

    def validated(self) -> LoadConfig:
        """Self, or LoadError naming the first bad field."""
        if (self.rate is None) == (self.concurrency is None):
            raise LoadError("give exactly one of rate (open loop) and concurrency (closed loop)")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise LoadError(f"rate must be > 0 requests/s, got {self.rate}")
        if self.concurrency is not None and not 1 <= self.concurrency <= 1000 * self.clients:
            raise LoadError(
                f"concurrency must be 1..{1000 * self.clients} (1000 threads per client), "
                f"got {self.concurrency}"
            )
        host, sep, port = self.target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise LoadError(f"target must be HOST:PORT, got {self.target!r}")
        if not 0 < self.duration <= MAX_DURATION_S:
            raise LoadError(f"duration must be in (0, {MAX_DURATION_S:.0f}] seconds, got {self.duration}")
        if not 0 <= self.warmup <= MAX_DURATION_S:
            raise LoadError(f"warmup must be in [0, {MAX_DURATION_S:.0f}] seconds, got {self.warmup}")
        if not 1 <= self.clients <= 64:
            raise LoadError(f"clients must be 1..64, got {self.clients}")
        if not 1 <= self.connections <= 64:
            raise LoadError(f"connections must be 1..64, got {self.connections}")
        if not self.mix or any(r not in RPCS or not w >= 0 for r, w in self.mix.items()):
            raise LoadError(f"mix must map {'/'.join(RPCS)} to weights >= 0, got {dict(self.mix)}")
        if not self.placements and self.mix.get("Decide", 0) > 0:
            raise LoadError("placements: at least one placement is required for Decide")
        if (self.users is not None and self.users < 1) or self.items < 1:
            raise LoadError(f"users and items must be >= 1, got {self.users} and {self.items}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise LoadError("mutual TLS needs both a client certificate and its key")
        if self.tls_ca is None and (self.tls_cert or self.tls_server_name):
            raise LoadError(
                "a client certificate or a TLS server name needs a CA file (TLS is on with --tls-ca)"
            )
        if self.token is not None:
            token = self.token.strip()
            if not token or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
                raise LoadError("the token must be non-empty printable ASCII without whitespace")
        if not 0 <= self.zipf <= 5:
            raise LoadError(f"zipf exponent must be in [0, 5], got {self.zipf}")
        for name in ("consent_share", "seed_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise LoadError(f"{name} must be in [0, 1], got {value}")
        if not 1 <= self.track_batch <= 1000:
            raise LoadError(f"track_batch must be 1..1000, got {self.track_batch}")
        if not 0 < self.deadline_ms <= 600_000:
            raise LoadError(f"deadline_ms must be in (0, 600000], got {self.deadline_ms}")
        if not 1 <= self.max_in_flight <= 1000:
            raise LoadError(f"max_in_flight must be 1..1000 (threads per client), got {self.max_in_flight}")
        total = sum(self.mix.values())
        mix = {r: w / total for r, w in self.mix.items() if w > 0} if total > 0 else {}
        if not mix:
            raise LoadError("mix: at least one weight must be > 0")
        clients = min(self.clients, self.concurrency) if self.concurrency is not None else self.clients
        return replace(self, mix=mix, clients=clients)


# -- report -----------------------------------------------------------------------------------------


@dataclass
class RpcReport:
    """One RPC's (or all RPCs') calls sent in the measured window and how each ended.

    sent = ok + errors + timeouts + unfinished; `failures` holds every status other than OK by name
    (DEADLINE_EXCEEDED included: `timeouts`), so sum(failures) = errors + timeouts."""

    sent: int = 0  # calls whose intended send time is in the measured window
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # gRPC status name -> calls
    unfinished: int = 0  # still open after the drain (cancelled)
    latency: Histogram = field(default_factory=Histogram)  # ok calls, from the intended send

    @property
    def timeouts(self) -> int:
        return self.failures.get(TIMEOUT_CODE, 0)

    @property
    def error_count(self) -> int:
        """Calls that ended with a status other than OK and DEADLINE_EXCEEDED."""
        return sum(self.failures.values()) - self.timeouts

    @property
    def completed(self) -> int:
        """Calls that got an answer: ok + errors + timeouts."""
        return self.ok + sum(self.failures.values())

    def merge(self, other: RpcReport) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.unfinished += other.unfinished
        for code, n in other.failures.items():
            self.failures[code] = self.failures.get(code, 0) + n
        self.latency.merge(other.latency)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.error_count,
            "timeouts": self.timeouts,
            "unfinished": self.unfinished,
            "completed": self.completed,
            "errors_by_code": dict(sorted(self.failures.items())),
            "latency": self.latency.summary().to_dict(),
        }


@dataclass
class ClientStats:
    """What one client process did; `cpu` is CPU seconds over wall seconds (1.0 = one core busy)."""

    index: int
    sent: int  # every call, warmup included
    completed: int  # every call answered, warmup included
    cpu: float
    wall_s: float
    unsent: int  # calls due in the window that were never sent (the sender was too far behind)
    unfinished: int  # calls (any window) still open after the drain, cancelled
    send_lag: Histogram  # open loop: actual send - intended send

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "sent": self.sent,
            "completed": self.completed,
            "cpu": round(self.cpu, 3),
            "wall_s": round(self.wall_s, 3),
            "unsent": self.unsent,
            "unfinished": self.unfinished,
            "send_lag": self.send_lag.summary().to_dict(),
        }


@dataclass
class LoadReport:
    """The result of `run_load`: per-RPC and overall figures, rates, errors, client health."""

    config: LoadConfig
    rpcs: dict[str, RpcReport]  # by RPC name, only RPCs of the mix
    overall: RpcReport
    measured_s: float  # the measured window (= config.duration, less when stopped early)
    unsent: int
    clients: list[ClientStats]
    send_lag: Histogram
    error_examples: dict[str, str]  # status name -> one error message seen
    interrupted: bool = False
    machine: dict[str, Any] = field(default_factory=dict)
    users_source: str = "flag"  # where config.users came from: flag, target, default, payload

    @property
    def intended_rate(self) -> float | None:
        return self.config.rate

    def _rate(self, n: int) -> float:
        return n / self.measured_s if self.measured_s > 0 else 0.0

    @property
    def achieved_rate(self) -> float:
        """Calls answered (ok, errors, timeouts) per second, of those sent in the measured window."""
        return self._rate(self.overall.completed)

    @property
    def sent_rate(self) -> float:
        return self._rate(self.overall.sent)

    @property
    def ok_rate(self) -> float:
        return self._rate(self.overall.ok)

    @property
    def unfinished(self) -> int:
        return self.overall.unfinished

    @property
    def errors(self) -> dict[str, int]:
        """Every status other than OK by name (DEADLINE_EXCEEDED included)."""
        return dict(sorted(self.overall.failures.items()))

    @property
    def client_cpu(self) -> float:
        """The busiest client's CPU use (1.0 = one core, the most a Python client process gets)."""
        return max((c.cpu for c in self.clients), default=0.0)

    def warnings(self) -> list[str]:
        """Reasons to distrust the figures (client-bound, behind schedule, calls left open)."""
        out = []
        rate = self.config.rate
        if rate is not None and self.sent_rate < 0.97 * rate:
            cap = self.config.max_in_flight * self.config.clients
            why = (
                "the client is CPU-bound (more --clients)"
                if self.client_cpu > 0.9
                else f"all {cap} sender threads were waiting on calls: the server is not keeping up "
                "(or raise --max-in-flight); the wait counts in the latency"
            )
            out.append(f"sent {self.sent_rate:.0f}/s of the intended {rate:.0f}/s: {why}")
        if self.unsent:
            out.append(
                f"{self.unsent} call(s) due were never sent (more than 1 s behind schedule at the end); "
                "they are in no count and no percentile"
            )
        if self.client_cpu > CLIENT_CPU_LIMIT:
            out.append(
                f"a client process used {self.client_cpu:.0%} of a core: a Python gRPC client saturates "
                "at about 75-80% (the GIL), so the client may be the bottleneck (more --clients)"
            )
        if self.config.mode == "open" and self.send_lag.count:
            lag_p99 = self.send_lag.percentile(99)
            latency_p99 = self.overall.latency.percentile(99) if self.overall.latency.count else 0
            if lag_p99 > 1_000_000 and lag_p99 > 0.25 * latency_p99:
                out.append(
                    f"send lag p99 {lag_p99 / 1e6:.2f} ms (latency p99 {latency_p99 / 1e6:.2f} ms): calls "
                    "left the client late; counted in the latency, as it should, but the client or the "
                    "machine is a large part of it (more --clients, or fewer other processes)"
                )
        if self.unfinished:
            out.append(f"{self.unfinished} call(s) were still open after the drain and were cancelled")
        if self.users_source == "default" and "Decide" in self.config.mix:
            out.append(
                f"users: the target did not tell how many users it holds; --users {self.config.users} assumed"
            )
        if self.interrupted:
            out.append("interrupted: the figures cover part of the run")
        return out

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config
        config = {k: v for k, v in asdict(cfg).items() if k not in ("mix", "placements", "token")}
        return {
            "mode": cfg.mode,
            "target": cfg.target,
            "config": {
                **config,
                "token": cfg.token is not None,  # whether one was sent; never the token
                "mix": dict(cfg.mix),
                "placements": [f"{p}:{c}" if c else p for p, c in cfg.placements],
                "users_source": self.users_source,
            },
            "measured_s": self.measured_s,
            "intended_rate": self.intended_rate,
            "sent_rate": round(self.sent_rate, 2),
            "achieved_rate": round(self.achieved_rate, 2),
            "ok_rate": round(self.ok_rate, 2),
            "rpcs": {name: r.to_dict() for name, r in self.rpcs.items()},
            "overall": self.overall.to_dict(),
            "errors_by_code": self.errors,
            "error_examples": self.error_examples,
            "unsent": self.unsent,
            "unfinished": self.unfinished,
            "send_lag": self.send_lag.summary().to_dict(),
            "clients": [c.to_dict() for c in self.clients],
            "client_cpu_max": round(self.client_cpu, 3),
            "warnings": self.warnings(),
            "interrupted": self.interrupted,
            "machine": self.machine,
        }


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.3f}"


def format_report(report: LoadReport) -> str:
    """The human-readable tables (what `edgewise bench load` prints on stdout)."""
    cfg = report.config
    if cfg.mode == "open":
        how = f"open loop at {cfg.rate:g} req/s"
    else:
        how = f"closed loop, {cfg.concurrency} in flight"
    secure = (" over TLS" if cfg.tls_ca else "") + (" with a bearer token" if cfg.token else "")
    lines = [
        f"{how} against {cfg.target}{secure}: {cfg.clients} client process(es) x {cfg.connections} "
        f"connection(s), {report.measured_s:.3g} s measured after {cfg.warmup:g} s warmup, "
        f"deadline {cfg.deadline_ms:g} ms",
        "mix "
        + ", ".join(f"{r} {w:.0%}" for r, w in cfg.mix.items())
        + (
            f"; Decide requests from {cfg.payload}"
            if cfg.payload
            else f"; users u0..u{(cfg.users or 1) - 1} ({report.users_source})"
        ),
        "",
    ]
    rows = [*report.rpcs.items(), ("all", report.overall)] if len(report.rpcs) > 1 else report.rpcs.items()
    lines.append(
        f"{'rpc':<8} {'sent':>9} = {'ok':>9} + {'errors':>7} + {'timeouts':>8} + {'unfinished':>10}"
        "   (calls sent in the measured window)"
    )
    for name, r in rows:
        lines.append(
            f"{name:<8} {r.sent:>9} = {r.ok:>9} + {r.error_count:>7} + {r.timeouts:>8} + {r.unfinished:>10}"
        )
    lines.append("")
    head = f"{'rpc':<8}" + "".join(f" {'p' + format(q, 'g'):>9}" for q in REPORT_PERCENTILES)
    lines.append(head + f" {'max':>9} {'mean':>9}   (latency in ms of the ok calls)")
    for name, r in rows:
        s: Summary = r.latency.summary()
        line = f"{name:<8}" + "".join(f" {_ms(s.percentiles_ns[q]):>9}" for q in REPORT_PERCENTILES)
        lines.append(line + f" {_ms(s.max_ns):>9} {_ms(s.mean_ns):>9}")
    lines.append("")
    o = report.overall
    rate = (
        f"per second: {report.sent_rate:,.0f} sent = {report.ok_rate:,.0f} ok + "
        f"{report._rate(o.error_count):,.0f} errors + {report._rate(o.timeouts):,.0f} timeouts + "
        f"{report._rate(o.unfinished):,.0f} unfinished; {report.achieved_rate:,.0f} completed"
    )
    if cfg.rate is not None:
        share = report.sent_rate / cfg.rate if cfg.rate else 0.0
        rate += f"; {cfg.rate:,.0f}/s intended ({share:.1%} sent)"
    lines.append(rate)
    if report.errors:
        lines.append("status codes other than OK: " + ", ".join(f"{c} {n}" for c, n in report.errors.items()))
        for code, text in sorted(report.error_examples.items()):
            lines.append(f"  {code}: {text}")
    else:
        lines.append("errors: none")
    cpus = ", ".join(f"{c.cpu:.0%}" for c in report.clients)
    client = f"client CPU per process (of one core): {cpus}"
    if cfg.mode == "open" and report.send_lag.count:
        client += (
            f"; send lag p50 {_ms(report.send_lag.percentile(50))} ms, "
            f"p99 {_ms(report.send_lag.percentile(99))} ms, max {_ms(report.send_lag.max_ns)} ms"
        )
    lines.append(client)
    for warning in report.warnings():
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


# -- the client process -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClientSpec:
    index: int
    config: LoadConfig
    rate: float | None  # this client's share
    concurrency: int | None  # this client's share
    offset_ns: int  # open loop: this client's phase in the common schedule
    run_id: str
    payload: tuple[bytes, ...] = ()  # serialized DecideRequests from config.payload


def _zipf_sampler(
    rng: np.random.Generator, n: int, exponent: float, order_seed: int
) -> Callable[[int], list[int]]:
    """Draws of ids 0..n-1 whose popularity follows Zipf; the hot ids are a fixed random subset."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    order = np.random.default_rng(order_seed).permutation(n)

    def draw(size: int) -> list[int]:
        ranks = np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n - 1)
        ids: list[int] = order[ranks].tolist()
        return ids

    return draw


class _Requests:
    """Pre-serialized Decide requests and pre-drawn Track material for one client."""

    def __init__(self, spec: _ClientSpec) -> None:
        pb = _pb
        cfg = spec.config
        rng = np.random.default_rng([cfg.seed, spec.index])
        users = _zipf_sampler(rng, cfg.users or DEFAULT_USERS, cfg.zipf, cfg.seed)
        items = _zipf_sampler(rng, cfg.items, cfg.zipf, cfg.seed + 1)
        cw = np.asarray(COUNTRY_WEIGHTS) / sum(COUNTRY_WEIGHTS)
        dw = np.asarray(DEVICE_WEIGHTS) / sum(DEVICE_WEIGHTS)
        self.decide: list[bytes] = []
        if spec.payload:  # each client starts at its own offset of the file's requests
            start = spec.index * len(spec.payload) // max(1, cfg.clients)
            self.decide = [*spec.payload[start:], *spec.payload[:start]]
        elif cfg.mix.get("Decide", 0) > 0:
            n = DECIDE_POOL
            u = users(n)
            seeds = items(n)
            consent = rng.random(n) < cfg.consent_share
            with_seed = rng.random(n) < cfg.seed_share
            country = rng.choice(len(COUNTRIES), n, p=cw)
            device = rng.choice(len(DEVICES), n, p=dw)
            channel = rng.choice(len(CHANNELS), n, p=CHANNEL_WEIGHTS)
            for j in range(n):
                request = pb.DecideRequest(
                    user_id=f"u{u[j]}",
                    context=pb.Context(
                        channel=CHANNELS[channel[j]],
                        device=DEVICES[device[j]],
                        country=COUNTRIES[country[j]],
                        page_type="pdp" if with_seed[j] else "home",
                    ),
                    consent=CONSENT if consent[j] else (),
                )
                for pid, count in cfg.placements:
                    place = request.placements.add(placement_id=pid, count=count)
                    if with_seed[j] and "similar" in pid:
                        place.seed_item_ids.append(f"i{seeds[j]}")
                self.decide.append(request.SerializeToString())
        n = TRACK_POOL
        self._t_users = [f"u{x}" for x in users(n)]
        self._t_items = [f"i{x}" for x in items(n)]
        self._t_consent = (rng.random(n) < cfg.consent_share).tolist()
        self._t_click = (rng.random(n) < 0.2).tolist()
        self._batch = cfg.track_batch
        self._prefix = f"{spec.run_id}-{spec.index}-"
        self._decides = itertools.count()
        self._events = itertools.count()  # next() is atomic: event ids stay unique across threads

    def next_decide(self) -> bytes:
        return self.decide[next(self._decides) % len(self.decide)]

    def next_track(self) -> bytes:
        request = _pb.TrackRequest()
        for _ in range(self._batch):
            seq = next(self._events)
            j = seq % TRACK_POOL
            click = self._t_click[j]
            request.events.add(
                event_id=f"{self._prefix}{seq}",
                type="click" if click else "view",
                user_id=self._t_users[j],
                item_id=self._t_items[j],
                placement_id="home" if click else "",
            )
        if self._t_consent[j]:
            request.consent.extend(CONSENT)
        return request.SerializeToString()


def load_payload(path: str) -> tuple[bytes, ...]:
    """The DecideRequests of a payload file, serialized: one request a line in protobuf's canonical JSON
    mapping (camelCase or the proto's field names); blank lines are skipped. LoadError names the line
    of the first one that does not parse."""
    out: list[bytes] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if len(out) >= MAX_PAYLOAD_LINES:
                    raise LoadError(f"payload {path}: more than {MAX_PAYLOAD_LINES:,} requests")
                try:
                    request = json_format.Parse(line, _pb.DecideRequest())
                except json_format.ParseError as exc:
                    raise LoadError(f"payload {path}, line {number}: not a DecideRequest: {exc}") from None
                out.append(request.SerializeToString())
    except OSError as exc:
        raise LoadError(f"payload {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise LoadError(f"payload {path}: not UTF-8 text ({exc.reason})") from None
    if not out:
        raise LoadError(f"payload {path}: no requests in the file")
    return tuple(out)


def decide_requests(config: LoadConfig, client: int = 0) -> list[bytes]:
    """The serialized Decide requests client `client` of a run with `config` sends, in order (for other
    load generators, e.g. h2load in bench.node, to send the same bytes)."""
    cfg = config.validated()
    payload = load_payload(cfg.payload) if cfg.payload else ()
    return _Requests(_ClientSpec(client, cfg, cfg.rate, cfg.concurrency, 0, "", payload)).decide


class _Recorder:
    """What one sender thread saw; only that thread writes, under `lock` (the ticker reads and drains
    the latency lists into the client's histograms once a second: a sender only appends an int)."""

    __slots__ = (
        "completed",
        "errors",
        "examples",
        "lag",
        "latencies",
        "lock",
        "others",
        "rpcs",
        "sent",
    )

    def __init__(self, rpcs: Sequence[str]) -> None:
        self.lock = threading.Lock()
        self.rpcs = {name: _Counts() for name in rpcs}  # calls sent in the measured window
        self.sent = 0  # every call, warmup included
        self.completed = 0
        self.errors = 0
        self.latencies: dict[str, list[int]] = {name: [] for name in rpcs}  # ok, measured, not drained
        self.others: list[int] = []  # ok calls outside the measured window (progress line only)
        self.lag: list[int] = []  # open loop send lag of measured calls
        self.examples: dict[str, str] = {}


class _Counts:
    """Calls of one RPC sent in the measured window by one sender, and how they ended so far."""

    __slots__ = ("failures", "ok", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.ok = 0
        self.failures: dict[str, int] = {}


def _credentials(cfg: LoadConfig) -> grpc.ChannelCredentials | None:
    if cfg.tls_ca is None:
        return None
    try:
        return channel_credentials(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
    except (OSError, ValueError) as exc:
        raise LoadError(f"TLS: {exc}") from None


def _channel(cfg: LoadConfig, options: list[tuple[str, Any]]) -> grpc.Channel:
    credentials = _credentials(cfg)
    if credentials is None:
        return grpc.insecure_channel(cfg.target, options=options)
    if cfg.tls_server_name:
        options = [*options, ("grpc.ssl_target_name_override", cfg.tls_server_name)]
    return grpc.secure_channel(cfg.target, credentials, options=options)


class _Channel:
    """One gRPC channel (its own TCP connection) and the calls in flight on it."""

    __slots__ = ("channel", "ewma_ns", "in_flight", "methods")

    def __init__(self, cfg: LoadConfig, index: int) -> None:
        # A local subchannel pool: each channel gets a TCP connection of its own.
        self.channel = _channel(
            cfg, [("grpc.use_local_subchannel_pool", 1), ("edgewise.bench.connection", index)]
        )
        self.methods: dict[str, grpc.UnaryUnaryMultiCallable[bytes, bytes]] = {
            name: self.channel.unary_unary(f"/{SERVICE}/{name}") for name in RPCS
        }
        self.in_flight = 0
        self.ewma_ns = 1_000_000.0  # moving average of this connection's latency

    def cost(self) -> float:
        """Peak-EWMA load estimate (as Finagle and Linkerd balance): expected wait of one more call."""
        return (self.in_flight + 1) * self.ewma_ns


def _connect(channels: Sequence[_Channel], timeout: float) -> None:
    """Ask every channel to connect; wait until each is READY or failing, at most `timeout`."""
    settled = [threading.Event() for _ in channels]
    callbacks = []
    for ch, done in zip(channels, settled, strict=True):

        def on_state(state: grpc.ChannelConnectivity, done: threading.Event = done) -> None:
            if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
                done.set()

        ch.channel.subscribe(on_state, try_to_connect=True)
        callbacks.append(on_state)
    deadline = time.monotonic() + timeout
    for done in settled:
        done.wait(max(0.0, deadline - time.monotonic()))
    for ch, cb in zip(channels, callbacks, strict=True):
        ch.channel.unsubscribe(cb)


def _set_timer_slack(ns: int) -> None:
    """Sleep more precisely in this thread (Linux default slack: 50 us); best effort."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0)


def _client_main(
    spec: _ClientSpec, out: mp.Queue[tuple[Any, ...]], go: MpEvent, t0_ns: Any, stop: MpEvent
) -> None:
    """Entry point of a client process (spawned). Reports ("ready"), ("tick", ...) and ("result", ...)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sets `stop`
    try:
        _client_run(spec, out, go, t0_ns, stop)
    except BaseException as exc:
        out.put(("error", spec.index, f"{type(exc).__name__}: {exc}"))
        raise


class _Client:
    """One client process's senders: threads making blocking calls, one call at a time each.

    Open loop: the threads share one schedule; a free thread claims the next slot, sleeps until its
    intended time and calls; when every thread is busy the next slot waits, and that wait counts in
    its latency. Closed loop: each thread calls back to back. Blocking calls (not the future API)
    because each sync channel's future API runs a polling thread of its own, and several of them
    fight over the GIL: the blocking API polls in the calling thread and scales with channels."""

    def __init__(self, spec: _ClientSpec, t0: int) -> None:
        cfg = spec.config
        self.spec = spec
        self.cfg = cfg
        self.requests = _Requests(spec)
        self.kinds = list(cfg.mix)
        acc = 0.0
        self.cumulative = []
        for kind in self.kinds:
            acc += cfg.mix[kind]
            self.cumulative.append(acc)
        self.cumulative[-1] = 1.0
        self.channels = [_Channel(cfg, i) for i in range(cfg.connections)]
        self.metadata = bearer_metadata(cfg.token) if cfg.token else None
        self.timeout_s = cfg.deadline_ms / 1000.0
        self.closed = spec.concurrency is not None
        self.threads = spec.concurrency if spec.concurrency is not None else cfg.max_in_flight
        self.t0 = t0
        self.warm_end = t0 + int(cfg.warmup * 1e9)
        self.end = self.warm_end + int(cfg.duration * 1e9)
        self.interval_ns = 1e9 * cfg.clients / cfg.rate if cfg.rate else 0.0
        self.base = t0 + spec.offset_ns
        self.slots = itertools.count()
        self.recorders = [_Recorder(self.kinds) for _ in range(self.threads)]
        # Filled by drain() in the ticking thread, never by a sender.
        self.interval = {name: Histogram() for name in self.kinds}  # measured ok calls, since the tick
        self.progress = Histogram()  # every ok call since the tick (the progress line)
        self.send_lag = Histogram()
        self.lock = threading.Lock()  # channel in-flight counts
        self.halt = threading.Event()
        self.halted_at = 2**63  # monotonic ns when the run was stopped early

    def set_start(self, t0: int) -> None:
        cfg = self.cfg
        self.t0 = t0
        self.warm_end = t0 + int(cfg.warmup * 1e9)
        self.end = self.warm_end + int(cfg.duration * 1e9)
        self.base = t0 + self.spec.offset_ns

    def _pick(self) -> tuple[str, bytes, _Channel]:
        x = random.random()
        kind = self.kinds[-1]
        for k, edge in zip(self.kinds, self.cumulative, strict=True):
            if x < edge:
                kind = k
                break
        payload = self.requests.next_decide() if kind == "Decide" else self.requests.next_track()
        channels = self.channels
        if len(channels) == 1:
            return kind, payload, channels[0]
        a = channels[int(random.random() * len(channels))]
        if random.random() < EXPLORE_SHARE:  # keeps every connection's average fresh
            return kind, payload, a
        b = channels[int(random.random() * len(channels))]
        return kind, payload, (a if a.cost() <= b.cost() else b)

    def _call(self, rec: _Recorder, intended: int, sent_at: int) -> None:
        kind, payload, ch = self._pick()
        measured = self.warm_end <= intended < self.end
        with rec.lock:
            rec.sent += 1
            if measured:
                rec.rpcs[kind].sent += 1
                if not self.closed:
                    rec.lag.append(sent_at - intended)
        with self.lock:
            ch.in_flight += 1
        name = "OK"
        try:
            ch.methods[kind](payload, timeout=self.timeout_s, metadata=self.metadata)
        except ValueError:  # the channel was closed at the end of the run: unfinished, not an answer
            with self.lock:
                ch.in_flight -= 1
            return
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            name = code.name if code is not None else "UNKNOWN"
            if name == "CANCELLED" and self.halt.is_set():  # cancelled by the end of the run: unfinished
                with self.lock:
                    ch.in_flight -= 1
                return
            if name not in rec.examples:
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                rec.examples[name] = str(details or "")[:300]
        now = time.monotonic_ns()
        with self.lock:
            ch.in_flight -= 1
            ch.ewma_ns += EWMA_WEIGHT * (now - sent_at - ch.ewma_ns)
        with rec.lock:
            rec.completed += 1
            if name == "OK":
                if measured:
                    rec.rpcs[kind].ok += 1
                    rec.latencies[kind].append(now - intended)
                else:
                    rec.others.append(now - intended)
            else:
                rec.errors += 1
                if measured:
                    failures = rec.rpcs[kind].failures
                    failures[name] = failures.get(name, 0) + 1

    def open_loop(self, rec: _Recorder) -> None:
        _set_timer_slack(1_000)
        late_limit = self.end + 1_000_000_000  # a sender this far behind gives up
        while not self.halt.is_set():
            intended = self.base + int(next(self.slots) * self.interval_ns)
            if intended >= self.end:
                return
            now = time.monotonic_ns()
            if now < intended:
                time.sleep((intended - now) / 1e9)
                if self.halt.is_set():  # stopped early while this slot was waiting
                    return
                now = time.monotonic_ns()
            elif now > late_limit:
                return
            self._call(rec, intended, now)

    def closed_loop(self, rec: _Recorder) -> None:
        _set_timer_slack(1_000)
        delay = self.t0 - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        while not self.halt.is_set():
            now = time.monotonic_ns()
            if now >= self.end:
                return
            self._call(rec, now, now)

    def due_in_window(self) -> int:
        """Open loop: how many slots of this client's schedule fall in the measured window."""
        if self.closed or not self.interval_ns:
            return 0

        def first_at_or_after(t: int) -> int:
            """The first slot whose intended time (computed as the senders do) is >= t."""
            i = max(0, math.ceil((t - self.base) / self.interval_ns) - 2)
            while self.base + int(i * self.interval_ns) < t:
                i += 1
            return i

        return first_at_or_after(min(self.end, self.halted_at)) - first_at_or_after(self.warm_end)

    def window_s(self) -> float:
        """The measured window as it ran: cut short when the run was stopped early."""
        return max(0, min(self.end, self.halted_at) - self.warm_end) / 1e9

    def drain(self) -> None:
        """Move what the senders recorded since the last drain into the client's histograms."""
        for rec in self.recorders:
            with rec.lock:
                latencies, others, lag = rec.latencies, rec.others, rec.lag
                rec.latencies = {name: [] for name in self.kinds}
                rec.others, rec.lag = [], []
            for name, values in latencies.items():
                self.interval[name].record_many(values)
                self.progress.record_many(values)
            self.progress.record_many(others)
            self.send_lag.record_many(lag)

    def take_interval(self) -> dict[str, str]:
        """The measured ok latencies drained since the last call, per RPC, encoded; then reset."""
        out = {name: h.encode() for name, h in self.interval.items()}
        self.interval = {name: Histogram() for name in self.kinds}
        return out

    def tick(self) -> tuple[int, int, int, str, dict[str, str]]:
        self.drain()
        sent = completed = errors = 0
        for rec in self.recorders:
            with rec.lock:
                sent += rec.sent
                completed += rec.completed
                errors += rec.errors
        progress, self.progress = self.progress.encode(), Histogram()
        return sent, completed, errors, progress, self.take_interval()


def _client_run(
    spec: _ClientSpec, out: mp.Queue[tuple[Any, ...]], go: MpEvent, t0_ns: Any, stop: MpEvent
) -> None:
    client = _Client(spec, 0)
    _connect(client.channels, CONNECT_TIMEOUT_S)
    out.put(("ready", spec.index))
    if not go.wait(READY_TIMEOUT_S + 30):
        raise LoadError("never told to start")
    if stop.is_set():
        return
    client.set_start(int(t0_ns.value))
    target = client.closed_loop if client.closed else client.open_loop
    threads = [
        threading.Thread(target=target, args=(rec,), name=f"sender-{i}", daemon=True)
        for i, rec in enumerate(client.recorders)
    ]
    cpu0 = time.process_time()
    wall0 = time.monotonic_ns()
    for t in threads:
        t.start()
    k = 1
    finish_by = client.end + int((client.timeout_s + DRAIN_EXTRA_S) * 1e9)
    while any(t.is_alive() for t in threads):
        now = time.monotonic_ns()
        if now >= finish_by:
            break
        if stop.is_set() and not client.halt.is_set():
            client.halted_at = now
            client.halt.set()
        next_tick = client.t0 + k * 1_000_000_000
        if now >= next_tick:
            out.put(("tick", spec.index, k, *client.tick()))
            k += 1
            continue
        time.sleep(min(0.05, (next_tick - now) / 1e9))
    client.halt.set()
    unfinished = sum(1 for t in threads if t.is_alive())
    # One consistent snapshot of the counts: a measured call not answered by now is unfinished.
    rpcs = {name: RpcReport() for name in client.kinds}
    examples: dict[str, str] = {}
    sent = completed = sent_in_window = 0
    for rec in client.recorders:
        with rec.lock:
            for name, c in rec.rpcs.items():
                r = rpcs[name]
                r.sent += c.sent
                r.ok += c.ok
                for code, n in c.failures.items():
                    r.failures[code] = r.failures.get(code, 0) + n
                sent_in_window += c.sent
            sent += rec.sent
            completed += rec.completed
            for code, text in rec.examples.items():
                examples.setdefault(code, text)
    client.drain()
    tail_end_s = (time.monotonic_ns() - client.t0) / 1e9
    cpu = time.process_time() - cpu0
    wall = (time.monotonic_ns() - wall0) / 1e9
    for ch in client.channels:
        ch.channel.close()  # cancels whatever is still open (counted as unfinished, not as errors)
    for t in threads:
        t.join(1.0)
    unsent = max(0, client.due_in_window() - sent_in_window) if not client.closed else 0
    result = {
        "rpcs": {
            name: {"sent": r.sent, "ok": r.ok, "failures": r.failures, "unfinished": r.sent - r.completed}
            for name, r in rpcs.items()
        },
        "tail": client.take_interval(),  # the measured ok latencies drained after the last tick
        "tail_start_s": float(k - 1),
        "tail_end_s": tail_end_s,
        "sent": sent,
        "completed": completed,
        "unsent": unsent,
        "unfinished": unfinished,
        "cpu": cpu / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "window_s": client.window_s(),
        "send_lag": client.send_lag.encode(),
        "examples": examples,
    }
    out.put(("result", spec.index, result))


# -- the parent -------------------------------------------------------------------------------------


@dataclass
class _Progress:
    sent: dict[int, int] = field(default_factory=dict)
    completed: dict[int, int] = field(default_factory=dict)
    errors: dict[int, int] = field(default_factory=dict)
    interval: Histogram = field(default_factory=Histogram)
    last_print: float = 0.0


class _Intervals:
    """The clients' per-second histograms of measured ok calls: summed into the report's histograms and,
    with `log`, written as HdrHistogram log intervals once every client has sent (or ended) a second."""

    def __init__(self, kinds: Sequence[str], clients: int, log: HdrLogWriter | None) -> None:
        self.kinds = list(kinds)
        self.clients = clients
        self.log = log
        self.total = {name: Histogram() for name in kinds}
        self.pending: dict[int, tuple[set[int], dict[str, Histogram]]] = {}
        self.done: set[int] = set()
        self.tail = {name: Histogram() for name in kinds}
        self.tail_span = (math.inf, 0.0)

    def add(self, client: int, second: int, encoded: Mapping[str, str]) -> None:
        parts = {name: Histogram.decode(text) for name, text in encoded.items()}
        for name, h in parts.items():
            self.total[name].merge(h)
        if self.log is None:
            return
        clients, merged = self.pending.setdefault(second, (set(), {n: Histogram() for n in self.kinds}))
        clients.add(client)
        for name, h in parts.items():
            merged[name].merge(h)
        self._flush()

    def add_tail(self, client: int, encoded: Mapping[str, str], start_s: float, end_s: float) -> None:
        parts = {name: Histogram.decode(text) for name, text in encoded.items()}
        for name, h in parts.items():
            self.total[name].merge(h)
            self.tail[name].merge(h)
        self.tail_span = (min(self.tail_span[0], start_s), max(self.tail_span[1], end_s))
        self.done.add(client)
        self._flush()

    def _flush(self, everything: bool = False) -> None:
        while self.pending:
            second = min(self.pending)
            clients, merged = self.pending[second]
            waiting = [c for c in range(self.clients) if c not in clients and c not in self.done]
            if waiting and not everything:
                return
            del self.pending[second]
            self._write(merged, second - 1.0, 1.0)

    def close(self) -> None:
        """Write what is left: every pending second, then the clients' tails (after their last tick)."""
        if self.log is None:
            return
        self._flush(everything=True)
        start, end = self.tail_span
        if math.isfinite(start):
            self._write(self.tail, start, end - start)
        self.log.flush()

    def _write(self, parts: Mapping[str, Histogram], start_s: float, length_s: float) -> None:
        assert self.log is not None
        overall = Histogram()
        for h in parts.values():
            overall.merge(h)
        self.log.interval(overall, start_s, length_s)
        for name in self.kinds:
            self.log.interval(parts[name], start_s, length_s, tag=name)


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    info["grpcio"] = grpc.__version__
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _print_progress(p: _Progress, elapsed: float, cfg: LoadConfig, stream: TextIO) -> None:
    phase = (
        "warmup"
        if elapsed <= cfg.warmup
        else ("measure" if elapsed <= cfg.warmup + cfg.duration else "drain")
    )
    p99 = p.interval.percentile(99) / 1e6 if p.interval.count else float("nan")
    sent, completed, errors = sum(p.sent.values()), sum(p.completed.values()), sum(p.errors.values())
    stream.write(
        f"[{elapsed:6.1f}s {phase:<7}] sent {sent:>9} completed {completed:>9} errors {errors:>7}  "
        f"p99 {p99:8.3f} ms (last second)\n"
    )
    stream.flush()
    p.interval = Histogram()


def _user_known(call: grpc.UnaryUnaryMultiCallable[bytes, bytes], cfg: LoadConfig, n: int) -> bool:
    """Whether the target holds a profile for u<n>: Decide with the personalization purpose and
    `explain` says `user_known`, or answers NO_CONSENT (a profile whose stored consent lacks it)."""
    pid, count = cfg.placements[0]
    request = _pb.DecideRequest(user_id=f"u{n}", consent=CONSENT, explain=True)
    request.placements.add(placement_id=pid, count=count)
    metadata = bearer_metadata(cfg.token) if cfg.token else None
    reply = _pb.DecideResponse.FromString(
        call(request.SerializeToString(), timeout=cfg.deadline_ms / 1000.0, metadata=metadata)
    )
    return reply.explanation.user_known or any(
        p.fallback_reason == _pb.FALLBACK_REASON_NO_CONSENT for p in reply.placements
    )


def discover_users(config: LoadConfig) -> int | None:
    """How many users u0..u<N-1> the target holds (the ids of a synthetic bundle), found with about
    2 log2(N) Decide calls that ask whether a user is known (exponential, then binary search), then
    checked at 8 ids spread below N. None when the target does not answer, does not know u0, or does
    not know every id checked (not a synthetic bundle's ids, or a shard of them)."""
    cfg = config
    if not cfg.placements:
        return None
    channel = _channel(cfg, [])
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{SERVICE}/Decide")
    try:
        if not _user_known(call, cfg, 0):
            return None
        low, high = 0, 1  # u<low> known; u<high> to try
        while high < MAX_PROBE_USERS and _user_known(call, cfg, high):
            low, high = high, high * 2
        while high - low > 1:  # u<low> known, u<high> not
            mid = (low + high) // 2
            low, high = (mid, high) if _user_known(call, cfg, mid) else (low, mid)
        n = high
        if not all(_user_known(call, cfg, (n - 1) * i // 8) for i in range(1, 8)):
            return None
        return n
    except grpc.RpcError:
        return None
    finally:
        channel.close()


def run_load(
    config: LoadConfig,
    *,
    progress: TextIO | None = None,
    stop: threading.Event | None = None,
    hdr_log: TextIO | None = None,
) -> LoadReport:
    """Run one load test and return its report. Bounded in time; raises LoadError on a bad config.

    `progress`: a stream for the once-a-second progress line (None: quiet). `stop`: set it (e.g. from
    a signal handler) to end the run early; the report then covers what ran and says so. `hdr_log`: a
    stream for the HdrHistogram interval log of the measured ok calls (see the module docstring).
    `config.users` None: what `discover_users` finds, else DEFAULT_USERS (the report says which)."""
    try:
        require_hdrhistogram()
    except RuntimeError as exc:
        raise LoadError(str(exc)) from None
    cfg = config.validated()
    payload = load_payload(cfg.payload) if cfg.payload else ()
    users_source = "flag"
    if cfg.users is None:
        found = None if payload or "Decide" not in cfg.mix else discover_users(cfg)
        users_source = "payload" if payload else ("target" if found else "default")
        cfg = replace(cfg, users=found or DEFAULT_USERS)
    ctx = mp.get_context("spawn")
    out: mp.Queue[tuple[Any, ...]] = ctx.Queue()
    go = ctx.Event()
    halt = ctx.Event()
    t0_value = ctx.Value("q", 0, lock=False)
    run_id = os.urandom(6).hex()
    specs = []
    for k in range(cfg.clients):
        share_c = None
        if cfg.concurrency is not None:
            share_c = cfg.concurrency // cfg.clients + (1 if k < cfg.concurrency % cfg.clients else 0)
        share_r = cfg.rate / cfg.clients if cfg.rate is not None else None
        offset = int(k * 1e9 / cfg.rate) if cfg.rate is not None else 0
        specs.append(_ClientSpec(k, cfg, share_r, share_c, offset, run_id, payload))
    machine = _machine()
    processes = [
        ctx.Process(
            target=_client_main, args=(s, out, go, t0_value, halt), name=f"load-client-{s.index}", daemon=True
        )
        for s in specs
    ]
    results: dict[int, dict[str, Any]] = {}
    failures: list[str] = []
    interrupted = False
    intervals = _Intervals(list(cfg.mix), cfg.clients, None)
    try:
        for p in processes:
            p.start()
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) < len(processes):
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadError(
                    f"{len(processes) - len(ready)} client process(es) not ready "
                    f"after {READY_TIMEOUT_S:.0f} s"
                )
            try:
                msg = out.get(timeout=min(left, 0.5))
            except queue.Empty:
                dead = [p.name for p in processes if not p.is_alive()]
                if dead:
                    raise LoadError(f"client process(es) exited before starting: {', '.join(dead)}") from None
                continue
            if msg[0] == "ready":
                ready.add(msg[1])
            elif msg[0] == "error":
                raise LoadError(f"client {msg[1]} failed: {msg[2]}")
        t0 = time.monotonic_ns() + START_DELAY_NS
        if hdr_log is not None:
            log = HdrLogWriter(hdr_log, wall_time_of(t0), f"edgewise bench load against {cfg.target}")
            intervals = _Intervals(list(cfg.mix), cfg.clients, log)
        t0_value.value = t0
        go.set()
        prog = _Progress()
        end_s = cfg.warmup + cfg.duration + cfg.deadline_ms / 1000.0 + DRAIN_EXTRA_S + 30.0
        while len(results) + len(failures) < len(processes):
            elapsed = (time.monotonic_ns() - t0) / 1e9
            if elapsed > end_s:
                failures.append(
                    f"{len(processes) - len(results)} client(s) did not report within {end_s:.0f} s"
                )
                break
            if stop is not None and stop.is_set() and not halt.is_set():
                halt.set()
                interrupted = True
            try:
                msg = out.get(timeout=0.2)
            except queue.Empty:
                dead = [x.name for x in processes if not x.is_alive() and x.exitcode not in (0, None)]
                if dead and len(results) + len(failures) < len(processes):
                    failures.append(f"client process(es) died: {', '.join(dead)}")
                    break
                continue
            if msg[0] == "tick":
                _, index, second, sent, completed, errors, hist, measured = msg
                prog.sent[index], prog.completed[index], prog.errors[index] = sent, completed, errors
                prog.interval.merge(Histogram.decode(hist))
                intervals.add(index, second, measured)
                if progress is not None and time.monotonic() - prog.last_print >= 0.95:
                    prog.last_print = time.monotonic()
                    _print_progress(prog, float(second), cfg, progress)
            elif msg[0] == "result":
                res = msg[2]
                results[msg[1]] = res
                intervals.add_tail(msg[1], res["tail"], res["tail_start_s"], res["tail_end_s"])
            elif msg[0] == "error":
                failures.append(f"client {msg[1]} failed: {msg[2]}")
    except KeyboardInterrupt:
        halt.set()
        interrupted = True
        raise
    finally:
        halt.set()
        go.set()
        for proc in processes:
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
        out.close()
        out.join_thread()
        intervals.close()
    if failures or not results:
        raise LoadError("; ".join(failures) or "no client reported")
    interrupted = interrupted or (stop is not None and stop.is_set())
    report = _merge(cfg, results, intervals.total, machine, interrupted)
    report.users_source = users_source
    return report


def _merge(
    cfg: LoadConfig,
    results: dict[int, dict[str, Any]],
    latency: Mapping[str, Histogram],
    machine: dict[str, Any],
    interrupted: bool,
) -> LoadReport:
    rpcs = {name: RpcReport(latency=latency[name]) for name in cfg.mix}
    overall = RpcReport()
    send_lag = Histogram()
    clients = []
    examples: dict[str, str] = {}
    unsent = 0
    for index in sorted(results):
        res = results[index]
        for name, data in res["rpcs"].items():
            part = RpcReport(data["sent"], data["ok"], dict(data["failures"]), data["unfinished"])
            part.latency = Histogram()  # the latency comes from the intervals, summed once
            rpcs[name].merge(part)
        lag = Histogram.decode(res["send_lag"])
        send_lag.merge(lag)
        unsent += res["unsent"]
        for code, text in res["examples"].items():
            examples.setdefault(code, text)
        clients.append(
            ClientStats(
                index,
                res["sent"],
                res["completed"],
                res["cpu"],
                res["wall_s"],
                res["unsent"],
                res["unfinished"],
                lag,
            )
        )
    for r in rpcs.values():
        overall.merge(r)
    return LoadReport(
        config=cfg,
        rpcs=rpcs,
        overall=overall,
        measured_s=max(r["window_s"] for r in results.values()),
        unsent=unsent,
        clients=clients,
        send_lag=send_lag,
        error_examples=examples,
        interrupted=interrupted,
        machine=machine,
    )
