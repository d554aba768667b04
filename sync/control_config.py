"""The control plane's configuration: a TOML file, `EDGEWISE_CONTROL_<SECTION>_<KEY>` environment overrides,
flags on top.

The schema of `edgewise control serve` on the layered engine of `edgewise.config`: precedence, lowest
first: built-in defaults < the `--config` file < environment < command-line flags; every key has the
flag `edgewise control serve` has always had (`--listen`, `--data`, `--heartbeat`, ...). `load_config`
returns a frozen, typed `ControlConfig` and, per dotted key, where its value came from; `format_config`
prints both for `--print-config`, as TOML that loads back to the same configuration. A wrong value raises
`ConfigError` naming the key and its source: `config error: sync.max_snapshots = 0 (from
--max-snapshots): must be >= 1`.

The environment prefix is `EDGEWISE_CONTROL_` (`server.listen` is `EDGEWISE_CONTROL_SERVER_LISTEN`): the
edge reads `EDGEWISE_<SECTION>_<KEY>` and has no `control` section, so one environment can hold both
without either reading the other's. The bearer tokens themselves stay out of the configuration: a token
file (`auth.edge_token_file`, `auth.ops_token_file`, `auth.node_tokens_file` for per-node tokens), else the
`EDGEWISE_EDGE_TOKEN` / `EDGEWISE_OPS_TOKEN` variable, as `load_token` reads them.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
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
from edgewise.sync.admission import EdgeLimits
from edgewise.sync.auth import EDGE_TOKEN_ENV, OPS_TOKEN_ENV
from edgewise.sync.event_retention import DEFAULT_RETAIN_MS
from edgewise.sync.fleet import DEFAULT_EXPIRE_AFTER_MS, DEFAULT_MAX_ENTRIES
from edgewise.sync.nats_bridge import nats_url_problem
from edgewise.sync.nats_security import PASSWORD_ENV, TOKEN_ENV
from edgewise.sync.rollout_health import RolloutPolicy
from edgewise.sync.stalls import DEFAULT_WRITE_TIMEOUT_SECONDS

__all__ = [
    "AuthConfig",
    "BanditsConfig",
    "ConfigError",
    "ControlConfig",
    "DataConfig",
    "EventsConfig",
    "FleetConfig",
    "LogConfig",
    "MetricsConfig",
    "NatsConfig",
    "RefreshConfig",
    "RolloutConfig",
    "ServerConfig",
    "SyncConfig",
    "TlsConfig",
    "add_config_arguments",
    "cli_config",
    "config_keys",
    "env_name",
    "format_config",
    "load_config",
]

ENV_PREFIX: Final = "EDGEWISE_CONTROL_"
_LIMITS: Final = EdgeLimits()  # the defaults of the bounds on edge calls


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = field(
        default="127.0.0.1:50061",
        metadata=meta(
            "HOST:PORT the ControlPlane gRPC service listens on (port 0: any free port)",
            check=check_address,
            flag="--listen",
            metavar="HOST:PORT",
        ),
    )
    ready_file: Path | None = field(
        default=None,
        metadata=meta(
            "write {address, port, pid, version} here once serving (empty: none)",
            flag="--ready-file",
            metavar="FILE",
        ),
    )


@dataclass(frozen=True, slots=True)
class DataConfig:
    dir: Path = field(
        metadata=meta("the control plane's LMDB directory (required)", flag="--data", metavar="DIR")
    )
    map_size_mb: int = field(
        default=65536,
        metadata=meta(
            "LMDB map size in MiB, of the store and of the event store each (an upper bound, not an "
            "allocation)",
            min=1,
            max=1 << 24,
            flag="--map-size-mb",
            metavar="MIB",
        ),
    )
    retain_snapshots: int = field(
        default=3,
        metadata=meta("full snapshots kept for rollback", min=0, flag="--retain-snapshots", metavar="N"),
    )
    retain_log_changes: int = field(
        default=5_000_000,
        metadata=meta(
            "changes the log keeps before compacting its oldest commits",
            min=1,
            flag="--retain-log-changes",
            metavar="N",
        ),
    )


@dataclass(frozen=True, slots=True)
class AuthConfig:
    edge_token_file: Path | None = field(
        default=None,
        metadata=meta(
            f"file holding the edge bearer token (else the {EDGE_TOKEN_ENV} variable)",
            flag="--edge-token-file",
            metavar="FILE",
        ),
    )
    ops_token_file: Path | None = field(
        default=None,
        metadata=meta(
            f"file holding the ops bearer token (else the {OPS_TOKEN_ENV} variable; neither: no pushes)",
            flag="--ops-token-file",
            metavar="FILE",
        ),
    )
    node_tokens_file: Path | None = field(
        default=None,
        metadata=meta(
            "file of per-node edge tokens, a `NODE_ID SHARD TOKEN` line each: a node may then subscribe and "
            "forward as its own node id and shards only (empty: the shared edge token, identities not "
            "enforced)",
            flag="--node-tokens-file",
            metavar="FILE",
        ),
    )


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path | None = field(
        default=None,
        metadata=meta("server certificate (TLS on; with tls.key)", flag="--tls-cert", metavar="FILE"),
    )
    key: Path | None = field(
        default=None, metadata=meta("server private key", flag="--tls-key", metavar="FILE")
    )
    ca: Path | None = field(
        default=None,
        metadata=meta(
            "CA that client certificates must chain to (mutual TLS)", flag="--tls-ca", metavar="FILE"
        ),
    )


@dataclass(frozen=True, slots=True)
class SyncConfig:
    max_snapshots: int = field(
        default=2,
        metadata=meta(
            "full snapshots streaming to edges at once", min=1, flag="--max-snapshots", metavar="N"
        ),
    )
    heartbeat_seconds: float = field(
        default=5.0,
        metadata=meta("seconds between heartbeats to edges", min=0.05, flag="--heartbeat", metavar="SECONDS"),
    )
    max_streams: int = field(
        default=_LIMITS.max_streams,
        metadata=meta(
            "Subscribe streams open at once, in all (each holds a thread; over it: RESOURCE_EXHAUSTED)",
            min=1,
            max=100_000,
            flag="--max-streams",
            metavar="N",
        ),
    )
    max_streams_per_token: int = field(
        default=_LIMITS.max_streams_per_token,
        metadata=meta(
            "Subscribe streams open at once per per-node token (the shared edge token: only max_streams)",
            min=1,
            flag="--max-streams-per-token",
            metavar="N",
        ),
    )
    write_timeout_seconds: float = field(
        default=DEFAULT_WRITE_TIMEOUT_SECONDS,
        metadata=meta(
            "close a stream whose edge has not taken its next message for this long (frees its thread "
            "and snapshot slot; the edge reconnects)",
            min=0.5,
            flag="--write-timeout",
            metavar="SECONDS",
        ),
    )


@dataclass(frozen=True, slots=True)
class EventsConfig:
    retain: timedelta = field(
        default=timedelta(milliseconds=DEFAULT_RETAIN_MS),
        metadata=meta(
            "delete stored events and exposures older than this, once folded into profiles "
            "(e.g. 30d, 12w; 0 keeps them all)",
            min=0,
            flag="--retain-events",
            metavar="DURATION",
        ),
    )
    max_forward_calls: int = field(
        default=_LIMITS.max_forward_calls,
        metadata=meta(
            "Forward calls running or waiting at once, from all edges (over it: RESOURCE_EXHAUSTED)",
            min=1,
            flag="--max-forward-calls",
            metavar="N",
        ),
    )


@dataclass(frozen=True, slots=True)
class FleetConfig:
    expire_after: timedelta = field(
        default=timedelta(milliseconds=DEFAULT_EXPIRE_AFTER_MS),
        metadata=meta(
            "drop an edge from status once it is disconnected and unheard of for this long (e.g. 7d; "
            "0 keeps it)",
            min=0,
            flag="--fleet-expire-after",
            metavar="DURATION",
        ),
    )
    max_entries: int = field(
        default=DEFAULT_MAX_ENTRIES,
        metadata=meta(
            "edges kept in status at most; past it a new one drops the disconnected edge unheard of longest",
            min=1,
            flag="--fleet-max-entries",
            metavar="N",
        ),
    )


@dataclass(frozen=True, slots=True)
class BanditsConfig:
    every_rewards: int = field(
        default=100,
        metadata=meta(
            "publish new bandit posteriors after this many new rewards",
            min=1,
            flag="--bandit-every-rewards",
            metavar="N",
        ),
    )
    every_seconds: float = field(
        default=60.0,
        metadata=meta(
            "... or this long after the last publish, if anything new arrived",
            min=0.1,
            flag="--bandit-every-seconds",
            metavar="SECONDS",
        ),
    )


_POLICY: Final = RolloutPolicy()


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """Canary and shadow rollouts: when the watch aborts or promotes one (docs/rollouts.md)."""

    min_decisions: int = field(
        default=_POLICY.min_decisions,
        metadata=meta(
            "calls the canary edges, and the rest, must have answered before a rollout is judged",
            min=1,
            flag="--rollout-min-decisions",
            metavar="N",
        ),
    )
    max_fallback_increase: float = field(
        default=_POLICY.max_fallback_increase,
        metadata=meta(
            "abort when the canary's fallback rate exceeds the rest's by more than this (0-1)",
            min=0.0,
            max=1.0,
            flag="--rollout-max-fallback-increase",
            metavar="RATE",
        ),
    )
    max_error_increase: float = field(
        default=_POLICY.max_error_increase,
        metadata=meta(
            "abort when the canary's error rate exceeds the rest's by more than this (0-1)",
            min=0.0,
            max=1.0,
            flag="--rollout-max-error-increase",
            metavar="RATE",
        ),
    )
    max_p99_ratio: float = field(
        default=_POLICY.max_p99_ratio,
        metadata=meta(
            "abort when the canary's p99 latency is more than this times the rest's",
            min=1.0,
            flag="--rollout-max-p99-ratio",
            metavar="RATIO",
        ),
    )
    p99_floor_ms: float = field(
        default=_POLICY.p99_floor_ms,
        metadata=meta(
            "a canary p99 under this many milliseconds is never too slow",
            min=0.0,
            flag="--rollout-p99-floor-ms",
            metavar="MS",
        ),
    )
    auto_abort: bool = field(
        default=_POLICY.auto_abort,
        metadata=meta("abort a rollout automatically past the thresholds", flag="--rollout-auto-abort"),
    )
    promote_after: timedelta = field(
        default=timedelta(seconds=_POLICY.promote_after_seconds),
        metadata=meta(
            "promote a rollout automatically once judged healthy this long after it started (0: never)",
            min=0,
            flag="--rollout-promote-after",
            metavar="DURATION",
        ),
    )
    check_seconds: float = field(
        default=_POLICY.check_seconds,
        metadata=meta(
            "seconds between two checks of the rollout in progress",
            min=0.05,
            flag="--rollout-check-seconds",
            metavar="SECONDS",
        ),
    )
    shadow_sample: float = field(
        default=_POLICY.shadow_sample,
        metadata=meta(
            "share of requests a shadow rollout decides again with the candidate, unless the push says",
            min=0.0001,
            max=1.0,
            flag="--rollout-shadow-sample",
            metavar="SHARE",
        ),
    )

    def policy(self) -> RolloutPolicy:
        return RolloutPolicy(
            min_decisions=self.min_decisions,
            max_fallback_increase=self.max_fallback_increase,
            max_error_increase=self.max_error_increase,
            max_p99_ratio=self.max_p99_ratio,
            p99_floor_ms=self.p99_floor_ms,
            auto_abort=self.auto_abort,
            promote_after_seconds=self.promote_after.total_seconds(),
            check_seconds=self.check_seconds,
            shadow_sample=self.shadow_sample,
        )


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    """`[refresh]`: the models the control plane recomputes from forwarded events (docs/refresh.md)."""

    popularity: bool = field(
        default=False,
        metadata=meta(
            "refresh item_popularity and its country / segment scopes from forwarded events",
            flag="--refresh-popularity",
        ),
    )
    popularity_every: timedelta = field(
        default=timedelta(minutes=5),
        metadata=meta("how often", min=1, flag="--refresh-popularity-every", metavar="DURATION"),
    )
    popularity_half_life: timedelta = field(
        default=timedelta(days=7),
        metadata=meta(
            "an event's weight in popularity halves every this long",
            min=1,
            flag="--refresh-popularity-half-life",
            metavar="DURATION",
        ),
    )
    new_items: bool = field(
        default=False,
        metadata=meta(
            "give item ids that events name and the catalog lacks a record and a row (with popularity)",
            flag="--refresh-new-items",
        ),
    )
    new_item_min_users: int = field(
        default=3,
        metadata=meta(
            "... once this many users (or sessions) had one",
            min=1,
            flag="--refresh-new-item-min-users",
            metavar="N",
        ),
    )
    trending: bool = field(
        default=False,
        metadata=meta("refresh item_daily_counts (trending) from forwarded views", flag="--refresh-trending"),
    )
    trending_every: timedelta = field(
        default=timedelta(minutes=5),
        metadata=meta("how often", min=1, flag="--refresh-trending-every", metavar="DURATION"),
    )
    trending_days: int = field(
        default=28,
        metadata=meta(
            "days of daily counts, when the state has none yet (else the current array's)",
            min=1,
            max=3660,
            flag="--refresh-trending-days",
            metavar="N",
        ),
    )
    neighbors: bool = field(
        default=False,
        metadata=meta(
            "refresh item_neighbors from co-occurrence in users' recent events", flag="--refresh-neighbors"
        ),
    )
    neighbors_every: timedelta = field(
        default=timedelta(hours=1),
        metadata=meta("how often", min=1, flag="--refresh-neighbors-every", metavar="DURATION"),
    )
    neighbors_window: timedelta = field(
        default=timedelta(days=30),
        metadata=meta(
            "events of this long before the newest one make the baskets",
            min=1,
            flag="--refresh-neighbors-window",
            metavar="DURATION",
        ),
    )
    neighbors_k: int = field(
        default=20,
        metadata=meta(
            "neighbours per item, when the state has none yet (else the current arrays' k)",
            min=1,
            max=1000,
            flag="--refresh-neighbors-k",
            metavar="N",
        ),
    )
    neighbors_min_support: int = field(
        default=2,
        metadata=meta(
            "users (or sessions) two items must share to be neighbours",
            min=1,
            flag="--refresh-neighbors-min-support",
            metavar="N",
        ),
    )
    embeddings: bool = field(
        default=False,
        metadata=meta(
            "retrain item_embeddings and the profiles' embeddings from forwarded events (als, bpr: "
            "implicit, pip install 'edgewise[train]'; hybrid: NumPy; docs/embeddings.md)",
            flag="--refresh-embeddings",
        ),
    )
    embeddings_every: timedelta = field(
        default=timedelta(hours=24),
        metadata=meta("how often", min=1, flag="--refresh-embeddings-every", metavar="DURATION"),
    )
    embeddings_method: Literal["als", "bpr", "hybrid"] = field(
        default="als",
        metadata=meta(
            "implicit's ALS (weighted implicit feedback) or BPR (pairwise ranking), or hybrid (the retail "
            "bundle's model: purchases smoothed through co-purchase and tag similarity; NumPy only)",
            flag="--refresh-embeddings-method",
        ),
    )
    embeddings_iterations: int = field(
        default=15,
        metadata=meta(
            "training iterations (ALS sweeps, BPR epochs)",
            min=1,
            max=10_000,
            flag="--refresh-embeddings-iterations",
            metavar="N",
        ),
    )
    embeddings_regularization: float = field(
        default=0.1,
        metadata=meta(
            "L2 regularization of the factors",
            min=0.0,
            flag="--refresh-embeddings-regularization",
            metavar="LAMBDA",
        ),
    )
    embeddings_alpha: float = field(
        default=20.0,
        metadata=meta(
            "ALS: an interaction's confidence is alpha times its weight (BPR ignores it)",
            above=0.0,
            flag="--refresh-embeddings-alpha",
            metavar="ALPHA",
        ),
    )
    embeddings_learning_rate: float = field(
        default=0.05,
        metadata=meta(
            "BPR: the SGD step (ALS ignores it)",
            above=0.0,
            flag="--refresh-embeddings-learning-rate",
            metavar="RATE",
        ),
    )
    embeddings_half_life: timedelta = field(
        default=timedelta(days=90),
        metadata=meta(
            "an event's weight in training halves every this long (0: no decay)",
            min=0,
            flag="--refresh-embeddings-half-life",
            metavar="DURATION",
        ),
    )
    embeddings_seed: int = field(
        default=0,
        metadata=meta(
            "the training's random seed (same events and seed: same vectors)",
            min=0,
            max=2**31 - 1,
            flag="--refresh-embeddings-seed",
            metavar="N",
        ),
    )
    embeddings_commit_profiles: int = field(
        default=5000,
        metadata=meta(
            "profiles' new vectors per staging commit (paced: each edge applies one commit of them at a "
            "time; the new generation is switched on by one last commit); 0: the whole refresh in one commit",
            min=0,
            flag="--refresh-embeddings-commit-profiles",
            metavar="N",
        ),
    )
    embeddings_commit_pause: timedelta = field(
        default=timedelta(seconds=1),
        metadata=meta(
            "the pause between two commits of one embeddings refresh",
            min=0,
            flag="--refresh-embeddings-commit-pause",
            metavar="DURATION",
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
            metavar="HOST:PORT",
        ),
    )


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata=meta("lowest level logged", flag="--log-level")
    )


def _check_nats_url(text: str) -> str | None:
    """Empty (the embedded control plane) or a comma-separated list of nats:// or tls:// URLs."""
    for url in (u.strip() for u in text.split(",") if u.strip()):
        problem = nats_url_problem(url)
        if problem is not None:
            return problem
    return None


@dataclass(frozen=True, slots=True)
class NatsConfig:
    url: str = field(
        default="",
        metadata=meta(
            "NATS servers of the central tier's JetStream cluster, comma-separated (nats://h1:4222,...): "
            "this process is then a replica whose store is a cache of the change log (docs/central.md); "
            "empty: the embedded control plane",
            check=_check_nats_url,
            flag="--nats",
            metavar="URLS",
        ),
    )
    replicas: int = field(
        default=3,
        metadata=meta(
            "copies JetStream keeps of the change log and the snapshots (1, 3 or 5; at most the servers)",
            min=1,
            max=5,
            flag="--nats-replicas",
            metavar="N",
        ),
    )
    partitions: int = field(
        default=8,
        metadata=meta(
            "partitions of the forwarded events stream (by user: one user's events stay in order); fixed "
            "once the stream has events",
            min=1,
            max=1024,
            flag="--nats-partitions",
            metavar="N",
        ),
    )
    duplicate_window: timedelta = field(
        default=timedelta(minutes=2),
        metadata=meta(
            "JetStream's duplicate window of the events stream: a record forwarded again within it is "
            "stored once (events_total counts distinct records either way)",
            min=1,
            flag="--nats-duplicate-window",
            metavar="DURATION",
        ),
    )
    ca: Path | None = field(
        default=None,
        metadata=meta(
            "CA the NATS servers' certificates must chain to (TLS on; empty: the system's CAs, and TLS only "
            "if a server requires it or a URL is tls://)",
            flag="--nats-ca",
            metavar="FILE",
        ),
    )
    cert: Path | None = field(
        default=None,
        metadata=meta(
            "client certificate for NATS servers that verify clients (with nats.key)",
            flag="--nats-cert",
            metavar="FILE",
        ),
    )
    key: Path | None = field(
        default=None, metadata=meta("private key of nats.cert", flag="--nats-key", metavar="FILE")
    )
    user: str = field(
        default="",
        metadata=meta(
            f"NATS user name (its password: nats.password_file, else the {PASSWORD_ENV} variable)",
            flag="--nats-user",
            metavar="NAME",
        ),
    )
    password_file: Path | None = field(
        default=None,
        metadata=meta("file holding nats.user's password", flag="--nats-password-file", metavar="FILE"),
    )
    token_file: Path | None = field(
        default=None,
        metadata=meta(
            f"file holding the NATS token (else the {TOKEN_ENV} variable); instead of a user",
            flag="--nats-token-file",
            metavar="FILE",
        ),
    )
    creds: Path | None = field(
        default=None,
        metadata=meta(
            "NATS .creds file (a user JWT and its NKEY seed: decentralized auth); instead of a user or a "
            "token",
            flag="--nats-creds",
            metavar="FILE",
        ),
    )


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The effective configuration of a control plane; sections as in the TOML file."""

    server: ServerConfig
    data: DataConfig
    auth: AuthConfig
    tls: TlsConfig
    sync: SyncConfig
    events: EventsConfig
    fleet: FleetConfig
    bandits: BanditsConfig
    metrics: MetricsConfig
    log: LogConfig
    nats: NatsConfig = field(default_factory=NatsConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def get(self, key: str) -> object:
        """The value of a dotted key, e.g. `config.get("server.listen")`."""
        return _SCHEMA.get(self, key)


def _cross_check(config: ControlConfig, sources: Mapping[str, str]) -> None:
    tls = config.tls
    if (tls.cert is None) != (tls.key is None):
        given, missing = ("tls.cert", "tls.key") if tls.key is None else ("tls.key", "tls.cert")
        raise ConfigError(
            f"{given} = {toml_value(config.get(given))} (from {origin(sources[given])}) needs {missing} "
            "too: the server certificate and its key go together",
            key=given,
            source=sources[given],
        )


_SCHEMA: Final = ConfigSchema(ControlConfig, ENV_PREFIX, check=_cross_check)


def load_config(
    path: Path | None, env: Mapping[str, str], flags: Mapping[str, object]
) -> tuple[ControlConfig, dict[str, str]]:
    """The effective configuration and, per dotted key, the source of its value (see
    `edgewise.config.ConfigSchema.load`). Raises `ConfigError` naming the key and its source."""
    return _SCHEMA.load(path, env, flags)


def format_config(config: ControlConfig, sources: Mapping[str, str]) -> str:
    """One line per key, `server.listen = "127.0.0.1:50061"    # default`, aligned; TOML that loads back."""
    return _SCHEMA.format(config, sources)


def config_keys() -> list[dict[str, str]]:
    """Every key with its type, default, environment variable, flag and help (for docs and --help)."""
    return _SCHEMA.keys()


def env_name(key: str) -> str:
    """The variable overriding a dotted key: `server.listen` -> `EDGEWISE_CONTROL_SERVER_LISTEN`."""
    return _SCHEMA.env_name(key)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config`, `--print-config` and one flag per key, all defaulting to None (parsed by `load_config`)."""
    _SCHEMA.add_arguments(parser)


def cli_config(args: argparse.Namespace) -> ControlConfig | int:
    """The configuration `args` give (flags, the environment, `--config`), or the exit status when there is
    nothing more to do: 2 after printing what is wrong, 0 after `--print-config`."""
    return _SCHEMA.from_cli(args)
