"""The edge node's configuration: a TOML file, `EDGEWISE_<SECTION>_<KEY>` environment overrides, flags on top.

The schema of `edgewise edge serve` (and `edge status`) on the layered engine of `edgewise.config`:
precedence, lowest first: built-in defaults < the `--config` file < environment < command-line flags.
`load_config` returns a frozen, typed `EdgeConfig` and, for every dotted key, where its value came from
(`default`, `file:/etc/edgewise/edge.toml`, `env:EDGEWISE_SERVER_WORKERS`, `flag:--workers`), which
`format_config` prints for `edgewise edge serve --print-config`.

Every value is checked at start; a wrong one raises `ConfigError` naming the key and its source, e.g.
`config error: server.workers = 0 (from EDGEWISE_SERVER_WORKERS): must be >= 1`. Unknown sections and
keys in the file, and unknown `EDGEWISE_<SECTION>_...` variables of a known section, are refused (with a
suggestion when a known key is close). Paths are made absolute: relative paths in the file are relative
to the file's directory, those from the environment or flags to the working directory. For optional
values (`data.bundle`, `metrics.listen`) an empty string means "not set". `sync.control` is a list of
HOST:PORT (a TOML array, or comma-separated in the environment and flags; one address as before), each
entry checked and named in the error. Beyond each key's own checks,
the edge's cross checks: the size limits together leave room in the map, `data.bundle` and
`sync.control` exclude each other, the metrics port differs from the gRPC port.

The three size limits of the edge-local namespaces (`data.outbox_max_mb`, `track.dedupe_max_mb`,
`track.activity_max_mb`) are upper bounds: the caps in force (`size_limits`, `store_limits`) are derived
from what the snapshot leaves of the map (core/store_budget.py), so they are known once the store is;
`--print-config` shows them, as comments, for the store in `data.dir`.

The output of `format_config` is itself a valid TOML file (dotted keys, comments for the sources) that
loads back to the same configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from edgewise.config import (
    ConfigError,
    ConfigSchema,
    check_address,
    check_optional_address,
    meta,
    origin,
    toml_value,
)
from edgewise.core.store import Store, StoreError
from edgewise.core.store_budget import StoreBudget, headroom_bytes, store_budget

__all__ = [
    "ConfigError",
    "DataConfig",
    "EdgeConfig",
    "HealthConfig",
    "LimitsConfig",
    "LogConfig",
    "MetricsConfig",
    "ServerConfig",
    "TrackConfig",
    "activity_max_bytes",
    "add_config_arguments",
    "cli_config",
    "config_keys",
    "dedupe_max_bytes",
    "env_name",
    "flag_overrides",
    "format_config",
    "format_effective",
    "load_config",
    "outbox_max_bytes",
    "queues_exposures",
    "read_snapshot_bytes",
    "size_limits",
    "store_limits",
]

ENV_PREFIX: Final = "EDGEWISE_"


def _default_workers() -> int:
    """One worker per CPU this process may run on (the affinity mask, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = field(
        default="127.0.0.1:50051",
        metadata=meta(
            "HOST:PORT the workers serve gRPC on (port 0: any free port)",
            check=check_address,
            flag="--listen",
        ),
    )
    workers: int = field(
        default_factory=_default_workers,
        metadata=meta(
            "worker processes sharing the port",
            min=1,
            max=1024,
            flag="--workers",
            default_text="CPUs available",
        ),
    )
    pin: bool = field(default=False, metadata=meta("pin worker i to CPU i", flag="--pin"))
    threads: int = field(
        default=8, metadata=meta("gRPC handler threads per worker", min=1, max=1024, flag="--threads")
    )
    grace_seconds: float = field(
        default=5.0,
        metadata=meta("seconds to drain in-flight calls on shutdown", min=0, max=3600, flag="--grace"),
    )
    max_in_flight: int = field(
        default=64,
        metadata=meta(
            "calls admitted at once per worker; more are shed", min=1, max=1_000_000, flag="--max-in-flight"
        ),
    )
    overload: Literal["reject", "default"] = field(
        default="reject",
        metadata=meta(
            "what a shed call gets: reject = RESOURCE_EXHAUSTED, default = the fast default answer "
            "(FALLBACK_REASON_OVERLOADED)",
            flag="--overload",
        ),
    )
    min_budget_ms: float = field(
        default=2.0,
        metadata=meta(
            "answer with the fast default (BUDGET_EXCEEDED) when less of the client's deadline is left",
            min=0,
            max=60_000,
            flag="--min-budget-ms",
        ),
    )
    http_listen: str = field(
        default="",
        metadata=meta(
            "HOST:PORT the workers also serve Decide and Track on as JSON over HTTP/1.1 (POST /v1/decide, "
            "POST /v1/track, GET /v1/health; docs/http.md); empty: off",
            check=check_optional_address,
            flag="--http-listen",
        ),
    )


@dataclass(frozen=True, slots=True)
class DataConfig:
    dir: Path = field(metadata=meta("data directory of the node's LMDB store (required)", flag="--data"))
    bundle: Path | None = field(
        default=None,
        metadata=meta("bundle directory to load at start and on SIGHUP (empty: none)", flag="--bundle"),
    )
    map_size_mb: int = field(
        default=8192,
        metadata=meta(
            "LMDB map size in MiB (an upper bound, not an allocation)",
            min=1,
            max=1 << 24,
            flag="--map-size-mb",
        ),
    )
    outbox_max_mb: int = field(
        default=0,
        metadata=meta(
            "MiB the outbox (events and exposures waiting to go upstream) may take before housekeeping "
            "deletes its oldest entries unsent (0: a third of what the map leaves after the snapshot, "
            "room for a reload and headroom; a value set is scaled down with the others to fit in that)",
            min=0,
            max=1 << 24,
            flag="--outbox-max-mb",
        ),
    )


def _limit_bytes(mb: int, data: DataConfig) -> int:
    """A size limit in bytes before a snapshot is known: `mb` MiB, or when it is 0 a third of the map less
    its headroom (core/store_budget.py; `size_limits` gives the caps in force beside a snapshot)."""
    map_bytes = data.map_size_mb << 20
    return mb << 20 if mb else max(1, (map_bytes - headroom_bytes(map_bytes)) // 3)


def outbox_max_bytes(data: DataConfig) -> int:
    """The outbox's limit in bytes as configured: `data.outbox_max_mb`, or when it is 0 a third of the map
    less its headroom (the cap in force beside a snapshot: `size_limits`)."""
    return _limit_bytes(data.outbox_max_mb, data)


def dedupe_max_bytes(config: EdgeConfig) -> int:
    """The event ids' limit in bytes as configured: `track.dedupe_max_mb`, or when it is 0 a third of the
    map less its headroom (the cap in force beside a snapshot: `size_limits`)."""
    return _limit_bytes(config.track.dedupe_max_mb, config.data)


def activity_max_bytes(config: EdgeConfig) -> int:
    """Live activity's limit in bytes as configured: `track.activity_max_mb`, or when it is 0 a third of
    the map less its headroom (the cap in force beside a snapshot: `size_limits`)."""
    return _limit_bytes(config.track.activity_max_mb, config.data)


def _configured_limits(config: EdgeConfig) -> tuple[tuple[str, int], ...]:
    """(config key, bytes; 0 for auto) of the three size limits."""
    return (
        ("data.outbox_max_mb", config.data.outbox_max_mb << 20),
        ("track.dedupe_max_mb", config.track.dedupe_max_mb << 20),
        ("track.activity_max_mb", config.track.activity_max_mb << 20),
    )


def store_limits(config: EdgeConfig, snapshot_bytes: int) -> StoreBudget:
    """How the node's map is shared beside a snapshot of `snapshot_bytes`: the caps in force, the reload
    room, the headroom, where Track's writes stop (core/store_budget.py)."""
    return store_budget(config.data.map_size_mb << 20, snapshot_bytes, _configured_limits(config))


def size_limits(config: EdgeConfig, snapshot_bytes: int = 0) -> tuple[tuple[str, int], ...]:
    """The store's size limits housekeeping enforces beside a snapshot of `snapshot_bytes`, as
    (config key, bytes): `store_limits`' caps."""
    return tuple((cap.key, cap.effective_bytes) for cap in store_limits(config, snapshot_bytes).caps)


def read_snapshot_bytes(config: EdgeConfig) -> int | None:
    """Bytes the snapshot in `data.dir` takes (the store opened read-only); None without a store there."""
    if not (Path(config.data.dir) / "data.mdb").is_file():
        return None
    try:
        with Store(config.data.dir, map_size=config.data.map_size_mb << 20, readonly=True) as store:
            return store.snapshot_bytes()
    except StoreError:
        return None


@dataclass(frozen=True, slots=True)
class TrackConfig:
    group_commit_max_events: int = field(
        default=256, metadata=meta("events committed together at most", min=1, max=100_000)
    )
    group_commit_max_wait_ms: float = field(
        default=0.0,
        metadata=meta(
            "extra wait for more Track calls to share a commit (0: none; calls queue during fsync anyway)",
            min=0,
            max=1000,
        ),
    )
    activity_max_views: int = field(
        default=50, metadata=meta("recent views kept per user or session", min=1, max=10_000)
    )
    activity_ttl_hours: float = field(
        default=72.0,
        metadata=meta("recent views and cart entries expire after this many hours", above=0, max=24 * 365),
    )
    activity_purchases_ttl_days: float = field(
        default=400.0,
        metadata=meta("purchases (for replenishment) expire after this many days", above=0, max=3650),
    )
    dedupe_window_hours: float = field(
        default=72.0,
        metadata=meta(
            "event ids are remembered this long for idempotency (a retry later than that counts again)",
            above=0,
            max=24 * 3650,
        ),
    )
    dedupe_max_mb: int = field(
        default=0,
        metadata=meta(
            "MiB the remembered event ids may take; past it housekeeping deletes the oldest before their "
            "window ends (0: a third of what the map leaves, as data.outbox_max_mb)",
            min=0,
            max=1 << 24,
        ),
    )
    activity_max_mb: int = field(
        default=0,
        metadata=meta(
            "MiB live activity (recent views, cart, purchases per user or session) may take; past it "
            "housekeeping deletes the activity of the units last active longest ago before their TTLs "
            "(0: a third of what the map leaves, as data.outbox_max_mb)",
            min=0,
            max=1 << 24,
        ),
    )
    queue_exposures: Literal["auto", "always", "never"] = field(
        default="auto",
        metadata=meta(
            "queue exposure records of decisions with analytics consent for upstream: auto = only with "
            "sync.control (a standalone node has nothing to forward them), always, never"
        ),
    )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_placements: int = field(default=16, metadata=meta("placements per Decide", min=1, max=10_000))
    max_ids: int = field(
        default=500, metadata=meta("candidate / exclude ids per placement", min=1, max=1_000_000)
    )
    max_seeds: int = field(default=50, metadata=meta("seed items per placement", min=1, max=100_000))
    max_attributes: int = field(
        default=64, metadata=meta("custom attributes per request", min=1, max=100_000)
    )
    max_id_length: int = field(
        default=128,
        metadata=meta("characters of a user, session, item, event or placement id", min=1, max=65_536),
    )
    max_string_length: int = field(
        default=2048, metadata=meta("characters of url, referrer, attribute values", min=1, max=1 << 20)
    )
    max_consents: int = field(default=32, metadata=meta("consent purposes per request", min=1, max=10_000))
    max_events: int = field(default=500, metadata=meta("events per Track", min=1, max=1_000_000))
    max_future_seconds: int = field(
        default=86_400,
        metadata=meta(
            "how far after this node's clock an event's timestamp_ms may be (more: INVALID_ARGUMENT)",
            min=0,
            max=10 * 365 * 86_400,
        ),
    )
    max_message_bytes: int = field(
        default=4 << 20, metadata=meta("largest gRPC message received or sent", min=1024, max=(1 << 31) - 1)
    )


@dataclass(frozen=True, slots=True)
class HealthConfig:
    stale_after_seconds: float = field(
        default=300.0,
        metadata=meta(
            "no sync for this long: reported stale (metrics, status); serving goes on",
            above=0,
            max=365 * 86400,
            flag="--stale-after",
        ),
    )


def _check_shard(value: str) -> str | None:
    from edgewise.sync.shard import ShardError, parse_shard

    try:
        parse_shard(value)
    except ShardError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class SyncConfig:
    control: tuple[str, ...] = field(
        default=(),
        metadata=meta(
            "HOST:PORT of the control plane to follow (the syncer becomes the node's writer), or of each of "
            "its replicas, comma-separated (a TOML array in the file): followed one at a time, in this "
            "order, moving to the next when the one followed is lost; empty: none",
            check=check_address,
            flag="--control",
            metavar="HOST:PORT[,HOST:PORT...]",
        ),
    )
    node_id: str = field(
        default="",
        metadata=meta("this node's id at the control plane (empty: the host name)", flag="--node-id"),
    )
    shard: str = field(
        default="all",
        metadata=meta(
            "profiles this node holds: all, hash:LO-HI/SPACE or region:TAG,...",
            check=_check_shard,
            flag="--shard",
        ),
    )
    token_file: Path | None = field(
        default=None,
        metadata=meta(
            "file holding the edge's bearer token (else the EDGEWISE_EDGE_TOKEN variable)",
            flag="--token-file",
        ),
    )
    tls_ca: Path | None = field(
        default=None,
        metadata=meta("CA certificate to verify the control plane with (TLS on)", flag="--tls-ca"),
    )
    tls_cert: Path | None = field(
        default=None, metadata=meta("client certificate for mutual TLS", flag="--tls-cert")
    )
    tls_key: Path | None = field(default=None, metadata=meta("client key for mutual TLS", flag="--tls-key"))
    heartbeat_seconds: float = field(
        default=5.0, metadata=meta("seconds between heartbeats to the control plane", above=0, max=3600)
    )
    silence_seconds: float = field(
        default=30.0,
        metadata=meta(
            "no message from the control plane for this long (it sends a heartbeat every 5 s unless "
            "configured otherwise): its stream counts as lost and the node moves to the next replica",
            above=0,
            max=3600,
        ),
    )
    shadow_max_sample: float = field(
        default=1.0,
        metadata=meta(
            "the largest share of requests this node decides again with the candidate of a shadow rollout "
            "(the control plane asks for a share; this caps it; 0: no shadow decisions here)",
            min=0,
            max=1,
        ),
    )
    shadow_queue: int = field(
        default=256,
        metadata=meta(
            "sampled requests waiting per worker for its shadow thread; past it a sample is dropped and "
            "counted (edgewise_shadow_dropped_total)",
            min=1,
            max=100_000,
        ),
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = field(
        default="",
        metadata=meta(
            "HOST:PORT of the Prometheus endpoint (GET /metrics); empty: off",
            check=check_optional_address,
            flag="--metrics-listen",
        ),
    )


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata=meta("lowest level logged", flag="--log-level")
    )
    requests: bool = field(
        default=False,
        metadata=meta("one log line per request (off: events of interest only)", flag="--log-requests"),
    )


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """The effective configuration of an edge node; sections as in the TOML file."""

    server: ServerConfig
    data: DataConfig
    track: TrackConfig
    limits: LimitsConfig
    health: HealthConfig
    sync: SyncConfig
    metrics: MetricsConfig
    log: LogConfig

    def get(self, key: str) -> object:
        """The value of a dotted key, e.g. `config.get("server.workers")`."""
        return _SCHEMA.get(self, key)


# --- the edge's cross checks ---------------------------------------------------------------------------


def queues_exposures(config: EdgeConfig) -> bool:
    """Whether the node queues exposure records (`track.queue_exposures`; auto: with a control plane)."""
    mode = config.track.queue_exposures
    return mode == "always" or (mode == "auto" and bool(config.sync.control))


def _cross_check(config: EdgeConfig, sources: Mapping[str, str]) -> None:
    if config.data.outbox_max_mb >= config.data.map_size_mb:
        raise ConfigError(
            f"data.outbox_max_mb = {config.data.outbox_max_mb} "
            f"(from {origin(sources['data.outbox_max_mb'])}) "
            f"must be less than data.map_size_mb = {config.data.map_size_mb} "
            f"(from {origin(sources['data.map_size_mb'])}): the rest of the store needs room too",
            key="data.outbox_max_mb",
            source=sources["data.outbox_max_mb"],
        )
    limits = [(key, size) for key, size in _configured_limits(config) if size]
    map_bytes = config.data.map_size_mb << 20
    room = map_bytes - headroom_bytes(map_bytes)
    if sum(size for _, size in limits) >= room:
        named = ", ".join(f"{key} {size >> 20} MiB (from {origin(sources[key])})" for key, size in limits)
        blamed = limits[-1][0]
        raise ConfigError(
            f"{named}: together they must be less than data.map_size_mb = {config.data.map_size_mb} "
            f"less its headroom of {headroom_bytes(map_bytes) / (1 << 20):g} MiB: the snapshot needs room "
            "too (the caps in force are derived from what it leaves; 0 takes a third of that)",
            key=blamed,
            source=sources[blamed],
        )
    if config.sync.control and config.data.bundle is not None:
        raise ConfigError(
            "data.bundle and sync.control cannot both be set: with a control plane its syncer is the node's "
            f"only writer of replicated data (data.bundle from {origin(sources['data.bundle'])}, "
            f"sync.control from {origin(sources['sync.control'])})",
            key="sync.control",
            source=sources["sync.control"],
        )
    _check_http_port(config, sources)
    listen, metrics = config.server.listen, config.metrics.listen
    if metrics:
        g_host, _, g_port = listen.rpartition(":")
        m_host, _, m_port = metrics.rpartition(":")
        if g_port == m_port and g_port != "0" and (g_host == m_host or "0.0.0.0" in (g_host, m_host)):
            m_from, g_from = origin(sources["metrics.listen"]), origin(sources["server.listen"])
            raise ConfigError(
                f"metrics.listen = {toml_value(metrics)} (from {m_from}) uses the same port as "
                f"server.listen = {toml_value(listen)} (from {g_from})",
                "metrics.listen",
                sources["metrics.listen"],
            )


def _check_http_port(config: EdgeConfig, sources: Mapping[str, str]) -> None:
    """`server.http_listen` takes a port of its own: neither the gRPC port nor the metrics port."""
    http = config.server.http_listen
    if not http:
        return
    h_host, _, h_port = http.rpartition(":")
    for key, other in (("server.listen", config.server.listen), ("metrics.listen", config.metrics.listen)):
        o_host, _, o_port = other.rpartition(":")
        if (
            other
            and h_port == o_port
            and h_port != "0"
            and (h_host == o_host or "0.0.0.0" in (h_host, o_host))
        ):
            raise ConfigError(
                f"server.http_listen = {toml_value(http)} (from {origin(sources['server.http_listen'])}) "
                f"uses the same port as {key} = {toml_value(other)} (from {origin(sources[key])})",
                "server.http_listen",
                sources["server.http_listen"],
            )


_SCHEMA: Final = ConfigSchema(EdgeConfig, ENV_PREFIX, check=_cross_check)


def load_config(
    path: Path | None, env: Mapping[str, str], flags: Mapping[str, object]
) -> tuple[EdgeConfig, dict[str, str]]:
    """The effective configuration and, per dotted key, the source of its value.

    `path`: the TOML file or None; `env`: usually `os.environ` (only `EDGEWISE_<SECTION>_<KEY>` variables
    of known sections are read); `flags`: dotted key -> value from the command line (None = not given;
    see `flag_overrides`), strings parsed like environment variables, other values type-checked.
    Raises `ConfigError` naming the key and the source of the first wrong value.
    """
    return _SCHEMA.load(path, env, flags)


def format_config(config: EdgeConfig, sources: Mapping[str, str]) -> str:
    """One line per key, `server.workers = 2    # flag:--workers`, aligned; valid TOML that loads back."""
    return _SCHEMA.format(config, sources)


def config_keys() -> list[dict[str, str]]:
    """Every key with its type, default, environment variable, flag and help (for docs and --help)."""
    return _SCHEMA.keys()


def env_name(key: str) -> str:
    """The environment variable overriding a dotted key: `server.workers` -> `EDGEWISE_SERVER_WORKERS`."""
    return _SCHEMA.env_name(key)


def cli_config(args: argparse.Namespace) -> EdgeConfig | int:
    """The configuration a command's `args` give (flags, the environment, `--config`), or the exit status
    when the command has nothing more to do: 2 after printing what is wrong, 0 after `--print-config`
    (which adds, as TOML comments, the size limits in force for the store in `data.dir`)."""
    if not args.print_config:
        return _SCHEMA.from_cli(args)
    try:
        config, sources = load_config(args.config, os.environ, flag_overrides(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(format_config(config, sources) + format_effective(config, read_snapshot_bytes(config)))
    return 0


def format_effective(config: EdgeConfig, snapshot_bytes: int | None) -> str:
    """What the size limits and `track.queue_exposures` come to beside a snapshot of `snapshot_bytes`
    (None: no store in data.dir yet), as TOML comment lines."""
    budget = store_limits(config, snapshot_bytes or 0)
    mib = 1 << 20
    where = (
        f"the snapshot in {config.data.dir} takes {snapshot_bytes / mib:,.1f} MiB"
        if snapshot_bytes is not None
        else f"no store in {config.data.dir} yet: the caps shrink by twice the snapshot once one is loaded"
    )
    lines = [
        f"# in force: {where}; {budget.reload_bytes / mib:,.1f} MiB kept for a reload's copy of it, "
        f"{budget.headroom_bytes / mib:,.1f} MiB headroom, {budget.free_bytes / mib:,.1f} MiB for the caps",
    ]
    width = max(len(cap.key) for cap in budget.caps)
    for cap in budget.caps:
        how = "auto" if not cap.configured_bytes else f"configured {cap.configured_bytes / mib:,.0f} MiB"
        lines.append(f"#   {cap.key.ljust(width)} = {cap.effective_bytes / mib:,.1f} MiB ({how})")
    lines.append(
        f"#   Track refused (RESOURCE_EXHAUSTED, store full) past {budget.write_limit_bytes / mib:,.1f} MiB "
        "of pages in use"
    )
    if not budget.reload_fits:
        lines.append(
            "#   WARNING: the map cannot hold a reload of this snapshot beside it: raise data.map_size_mb"
        )
    queued = "yes" if queues_exposures(config) else "no"
    lines.append(f'#   track.queue_exposures = "{config.track.queue_exposures}": {queued}')
    return "\n".join(lines) + "\n"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config`, `--print-config` and one flag per configurable key that has one, all defaulting to None.

    Values are parsed by `load_config` (so errors name the flag); turn them into overrides with
    `flag_overrides(args)`.
    """
    _SCHEMA.add_arguments(parser)


def flag_overrides(args: argparse.Namespace, mapping: Mapping[str, str] | None = None) -> dict[str, object]:
    """Dotted-key overrides from parsed flags: `mapping` is argparse dest -> dotted key (default: the flags
    `add_config_arguments` adds); flags left at None (not given) are skipped."""
    return _SCHEMA.flag_overrides(args, mapping)
