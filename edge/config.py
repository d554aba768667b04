"""The edge node's configuration: a TOML file, `EDGEWISE_<SECTION>_<KEY>` environment overrides, flags on top.

Precedence, lowest first: built-in defaults < the `--config` file < environment < command-line flags.
`load_config` returns a frozen, typed `EdgeConfig` and, for every dotted key, where its value came from
(`default`, `file:/etc/edgewise/edge.toml`, `env:EDGEWISE_SERVER_WORKERS`, `flag:--workers`), which
`format_config` prints for `edgewise edge serve --print-config`.

Every value is checked at start; a wrong one raises `ConfigError` naming the key and its source, e.g.
`config error: server.workers = 0 (from EDGEWISE_SERVER_WORKERS): must be >= 1`. Unknown sections and
keys in the file, and unknown `EDGEWISE_<SECTION>_...` variables of a known section, are refused (with a
suggestion when a known key is close). Paths are made absolute: relative paths in the file are relative
to the file's directory, those from the environment or flags to the working directory. For optional
values (`data.bundle`, `metrics.listen`) an empty string means "not set".

The output of `format_config` is itself a valid TOML file (dotted keys, comments for the sources) that
loads back to the same configuration.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

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
    "load_config",
    "outbox_max_bytes",
    "size_limits",
]

ENV_PREFIX: Final = "EDGEWISE_"


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the key and where it came from."""

    def __init__(self, message: str, key: str = "", source: str = "") -> None:
        super().__init__(f"config error: {message}")
        self.key = key
        self.source = source


def _default_workers() -> int:
    """One worker per CPU this process may run on (the affinity mask, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _check_address(value: str) -> str | None:
    """HOST:PORT with a port in 0..65535 (0 = any free port); IPv6 hosts in brackets: [::1]:50051."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return "must be HOST:PORT, e.g. 127.0.0.1:50051"
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        return "must be HOST:PORT with an IPv6 host in brackets, e.g. [::1]:50051"
    if not port.isdigit() or int(port) > 65535:
        return f"port {port!r} must be a number in 0..65535"
    return None


def _check_optional_address(value: str) -> str | None:
    return None if value == "" else _check_address(value)


def _meta(
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    check: Callable[[str], str | None] | None = None,
    flag: str | None = None,
    default_text: str | None = None,
) -> dict[str, Any]:
    return {
        "help": help,
        "min": min,
        "max": max,
        "above": above,
        "check": check,
        "flag": flag,
        "default_text": default_text,
    }


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = field(
        default="127.0.0.1:50051",
        metadata=_meta(
            "HOST:PORT the workers serve gRPC on (port 0: any free port)",
            check=_check_address,
            flag="--listen",
        ),
    )
    workers: int = field(
        default_factory=_default_workers,
        metadata=_meta(
            "worker processes sharing the port",
            min=1,
            max=1024,
            flag="--workers",
            default_text="CPUs available",
        ),
    )
    pin: bool = field(default=False, metadata=_meta("pin worker i to CPU i", flag="--pin"))
    threads: int = field(
        default=8, metadata=_meta("gRPC handler threads per worker", min=1, max=1024, flag="--threads")
    )
    grace_seconds: float = field(
        default=5.0,
        metadata=_meta("seconds to drain in-flight calls on shutdown", min=0, max=3600, flag="--grace"),
    )
    max_in_flight: int = field(
        default=64,
        metadata=_meta(
            "calls admitted at once per worker; more are shed", min=1, max=1_000_000, flag="--max-in-flight"
        ),
    )
    overload: Literal["reject", "default"] = field(
        default="reject",
        metadata=_meta(
            "what a shed call gets: reject = RESOURCE_EXHAUSTED, default = the fast default answer "
            "(FALLBACK_REASON_OVERLOADED)",
            flag="--overload",
        ),
    )
    min_budget_ms: float = field(
        default=2.0,
        metadata=_meta(
            "answer with the fast default (BUDGET_EXCEEDED) when less of the client's deadline is left",
            min=0,
            max=60_000,
            flag="--min-budget-ms",
        ),
    )


@dataclass(frozen=True, slots=True)
class DataConfig:
    dir: Path = field(metadata=_meta("data directory of the node's LMDB store (required)", flag="--data"))
    bundle: Path | None = field(
        default=None,
        metadata=_meta("bundle directory to load at start and on SIGHUP (empty: none)", flag="--bundle"),
    )
    map_size_mb: int = field(
        default=8192,
        metadata=_meta(
            "LMDB map size in MiB (an upper bound, not an allocation)",
            min=1,
            max=1 << 24,
            flag="--map-size-mb",
        ),
    )
    outbox_max_mb: int = field(
        default=0,
        metadata=_meta(
            "MiB the outbox (events and exposures waiting to go upstream) may take before housekeeping "
            "deletes its oldest entries unsent (0: a quarter of data.map_size_mb)",
            min=0,
            max=1 << 24,
            flag="--outbox-max-mb",
        ),
    )


def _limit_bytes(mb: int, data: DataConfig) -> int:
    """A size limit in bytes: `mb` MiB, or a quarter of the map when it is 0."""
    return (mb or max(1, data.map_size_mb // 4)) << 20


def outbox_max_bytes(data: DataConfig) -> int:
    """The outbox's limit in bytes: `data.outbox_max_mb`, or a quarter of the map when it is 0."""
    return _limit_bytes(data.outbox_max_mb, data)


def dedupe_max_bytes(config: EdgeConfig) -> int:
    """The event ids' limit in bytes: `track.dedupe_max_mb`, or a quarter of the map when it is 0."""
    return _limit_bytes(config.track.dedupe_max_mb, config.data)


def activity_max_bytes(config: EdgeConfig) -> int:
    """Live activity's limit in bytes: `track.activity_max_mb`, or a quarter of the map when it is 0."""
    return _limit_bytes(config.track.activity_max_mb, config.data)


def size_limits(config: EdgeConfig) -> tuple[tuple[str, int], ...]:
    """The store's size limits housekeeping enforces, as (config key, bytes)."""
    return (
        ("data.outbox_max_mb", outbox_max_bytes(config.data)),
        ("track.dedupe_max_mb", dedupe_max_bytes(config)),
        ("track.activity_max_mb", activity_max_bytes(config)),
    )


@dataclass(frozen=True, slots=True)
class TrackConfig:
    group_commit_max_events: int = field(
        default=256, metadata=_meta("events committed together at most", min=1, max=100_000)
    )
    group_commit_max_wait_ms: float = field(
        default=0.0,
        metadata=_meta(
            "extra wait for more Track calls to share a commit (0: none; calls queue during fsync anyway)",
            min=0,
            max=1000,
        ),
    )
    activity_max_views: int = field(
        default=50, metadata=_meta("recent views kept per user or session", min=1, max=10_000)
    )
    activity_ttl_hours: float = field(
        default=72.0,
        metadata=_meta("recent views and cart entries expire after this many hours", above=0, max=24 * 365),
    )
    activity_purchases_ttl_days: float = field(
        default=400.0,
        metadata=_meta("purchases (for replenishment) expire after this many days", above=0, max=3650),
    )
    dedupe_window_hours: float = field(
        default=72.0,
        metadata=_meta(
            "event ids are remembered this long for idempotency (a retry later than that counts again)",
            above=0,
            max=24 * 3650,
        ),
    )
    dedupe_max_mb: int = field(
        default=0,
        metadata=_meta(
            "MiB the remembered event ids may take; past it housekeeping deletes the oldest before their "
            "window ends (0: a quarter of data.map_size_mb)",
            min=0,
            max=1 << 24,
        ),
    )
    activity_max_mb: int = field(
        default=0,
        metadata=_meta(
            "MiB live activity (recent views, cart, purchases per user or session) may take; past it "
            "housekeeping deletes the activity of the units last active longest ago before their TTLs "
            "(0: a quarter of data.map_size_mb)",
            min=0,
            max=1 << 24,
        ),
    )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_placements: int = field(default=16, metadata=_meta("placements per Decide", min=1, max=10_000))
    max_ids: int = field(
        default=500, metadata=_meta("candidate / exclude ids per placement", min=1, max=1_000_000)
    )
    max_seeds: int = field(default=50, metadata=_meta("seed items per placement", min=1, max=100_000))
    max_attributes: int = field(
        default=64, metadata=_meta("custom attributes per request", min=1, max=100_000)
    )
    max_id_length: int = field(
        default=128,
        metadata=_meta("characters of a user, session, item, event or placement id", min=1, max=65_536),
    )
    max_string_length: int = field(
        default=2048, metadata=_meta("characters of url, referrer, attribute values", min=1, max=1 << 20)
    )
    max_consents: int = field(default=32, metadata=_meta("consent purposes per request", min=1, max=10_000))
    max_events: int = field(default=500, metadata=_meta("events per Track", min=1, max=1_000_000))
    max_future_seconds: int = field(
        default=86_400,
        metadata=_meta(
            "how far after this node's clock an event's timestamp_ms may be (more: INVALID_ARGUMENT)",
            min=0,
            max=10 * 365 * 86_400,
        ),
    )
    max_message_bytes: int = field(
        default=4 << 20, metadata=_meta("largest gRPC message received or sent", min=1024, max=(1 << 31) - 1)
    )


@dataclass(frozen=True, slots=True)
class HealthConfig:
    stale_after_seconds: float = field(
        default=300.0,
        metadata=_meta(
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
    control: str = field(
        default="",
        metadata=_meta(
            "HOST:PORT of the control plane to follow (the syncer becomes the node's writer); empty: none",
            check=_check_optional_address,
            flag="--control",
        ),
    )
    node_id: str = field(
        default="",
        metadata=_meta("this node's id at the control plane (empty: the host name)", flag="--node-id"),
    )
    shard: str = field(
        default="all",
        metadata=_meta(
            "profiles this node holds: all, hash:LO-HI/SPACE or region:TAG,...",
            check=_check_shard,
            flag="--shard",
        ),
    )
    token_file: Path | None = field(
        default=None,
        metadata=_meta(
            "file holding the edge's bearer token (else the EDGEWISE_EDGE_TOKEN variable)",
            flag="--token-file",
        ),
    )
    tls_ca: Path | None = field(
        default=None,
        metadata=_meta("CA certificate to verify the control plane with (TLS on)", flag="--tls-ca"),
    )
    tls_cert: Path | None = field(
        default=None, metadata=_meta("client certificate for mutual TLS", flag="--tls-cert")
    )
    tls_key: Path | None = field(default=None, metadata=_meta("client key for mutual TLS", flag="--tls-key"))
    heartbeat_seconds: float = field(
        default=5.0, metadata=_meta("seconds between heartbeats to the control plane", above=0, max=3600)
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = field(
        default="",
        metadata=_meta(
            "HOST:PORT of the Prometheus endpoint (GET /metrics); empty: off",
            check=_check_optional_address,
            flag="--metrics-listen",
        ),
    )


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata=_meta("lowest level logged", flag="--log-level")
    )
    requests: bool = field(
        default=False,
        metadata=_meta("one log line per request (off: events of interest only)", flag="--log-requests"),
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
        section, _, name = key.partition(".")
        if key not in _SPECS:
            raise KeyError(key)
        return getattr(getattr(self, section), name)


# --- key specifications, derived from the dataclasses above ------------------------------------------

_Kind = Literal["int", "float", "bool", "str", "path", "choice"]


@dataclass(frozen=True, slots=True)
class _Spec:
    key: str
    section: str
    name: str
    kind: _Kind
    optional: bool
    required: bool
    default: object
    default_text: str
    choices: tuple[str, ...]
    minimum: float | None
    maximum: float | None
    above: float | None
    check: Callable[[str], str | None] | None
    flag: str
    has_flag: bool
    env: str
    help: str


_SECTIONS: Final[dict[str, type]] = {
    "server": ServerConfig,
    "data": DataConfig,
    "track": TrackConfig,
    "limits": LimitsConfig,
    "health": HealthConfig,
    "sync": SyncConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
}


def _kind_of(hint: Any) -> tuple[_Kind, bool, tuple[str, ...]]:
    """(kind, optional, choices) of a field's resolved type hint."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "choice", False, tuple(str(c) for c in typing.get_args(hint))
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] is Path:
            return "path", True, ()
    simple: dict[Any, _Kind] = {int: "int", float: "float", bool: "bool", str: "str", Path: "path"}
    if hint in simple:
        return simple[hint], False, ()
    raise TypeError(f"unsupported config type {hint!r}")


def _build_specs() -> dict[str, _Spec]:
    specs: dict[str, _Spec] = {}
    for section, cls in _SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            kind, optional, choices = _kind_of(hints[f.name])
            meta = f.metadata
            if f.default is not MISSING:
                default: object = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                default = None
            key = f"{section}.{f.name}"
            flag = meta["flag"] or "--" + key.replace(".", "-").replace("_", "-")
            specs[key] = _Spec(
                key=key,
                section=section,
                name=f.name,
                kind=kind,
                optional=optional,
                required=f.default is MISSING and f.default_factory is MISSING,
                default=default,
                default_text=meta["default_text"]
                or ("(required)" if default is None and not optional else _toml(default)),
                choices=choices,
                minimum=meta["min"],
                maximum=meta["max"],
                above=meta["above"],
                check=meta["check"],
                flag=flag,
                has_flag=meta["flag"] is not None,
                env=f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}",
                help=meta["help"],
            )
    return specs


def _toml(value: object) -> str:
    """A value in TOML syntax (None, an unset optional value, as the empty string)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


_SPECS: Final = _build_specs()


def config_keys() -> list[dict[str, str]]:
    """Every key with its type, default, environment variable, flag and help (for docs and --help)."""
    return [
        {
            "key": s.key,
            "type": s.kind if s.kind != "choice" else " | ".join(s.choices),
            "default": s.default_text,
            "env": s.env,
            "flag": s.flag if s.has_flag else "",
            "help": s.help,
        }
        for s in _SPECS.values()
    ]


def env_name(key: str) -> str:
    """The environment variable overriding a dotted key: `server.workers` -> `EDGEWISE_SERVER_WORKERS`."""
    return _SPECS[key].env


# --- parsing and checking values ----------------------------------------------------------------------


class _Invalid(ValueError):
    pass


_TOML_TYPE_NAMES: Final[dict[type, str]] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _type_name(value: object) -> str:
    for t, name in _TOML_TYPE_NAMES.items():
        if isinstance(value, t):
            return name
    return f"a {type(value).__name__}"


_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


def _from_string(spec: _Spec, text: str, base: Path) -> object:
    """Parse an environment variable or a flag given as text."""
    value = text.strip()
    if spec.kind == "int":
        try:
            return int(value, 10)
        except ValueError:
            raise _Invalid("must be an integer") from None
    if spec.kind == "float":
        try:
            return float(value)
        except ValueError:
            raise _Invalid("must be a number") from None
    if spec.kind == "bool":
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise _Invalid("must be a boolean: true/false, 1/0, yes/no or on/off")
    if spec.kind == "choice":
        return value.lower()
    if spec.kind == "path":
        return _path(spec, value, base)
    return value


def _from_typed(spec: _Spec, value: object, base: Path) -> object:
    """Check a value from the TOML file (or a typed flag): no coercion but int -> float."""
    if spec.kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Invalid(f"must be an integer, not {_type_name(value)}")
    if spec.kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Invalid(f"must be a number, not {_type_name(value)}")
    if spec.kind == "bool":
        if isinstance(value, bool):
            return value
        raise _Invalid(f"must be a boolean (true or false), not {_type_name(value)}")
    if spec.kind == "path" and isinstance(value, Path):
        return _path(spec, str(value), base)
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, not {_type_name(value)}")
    if spec.kind == "path":
        return _path(spec, value, base)
    return value.lower() if spec.kind == "choice" else value


def _path(spec: _Spec, text: str, base: Path) -> Path | None:
    if text == "":
        if spec.optional:
            return None
        raise _Invalid("must not be empty")
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _check(spec: _Spec, value: object) -> None:
    if spec.kind in ("int", "float"):
        assert isinstance(value, int | float)
        if not math.isfinite(value):
            raise _Invalid("must be a finite number")
        if spec.minimum is not None and value < spec.minimum:
            raise _Invalid(f"must be >= {_num(spec.minimum)}")
        if spec.above is not None and value <= spec.above:
            raise _Invalid(f"must be > {_num(spec.above)}")
        if spec.maximum is not None and value > spec.maximum:
            raise _Invalid(f"must be <= {_num(spec.maximum)}")
    if spec.kind == "choice" and value not in spec.choices:
        raise _Invalid("must be one of " + ", ".join(repr(c) for c in spec.choices))
    if spec.check is not None:
        assert isinstance(value, str)
        problem = spec.check(value)
        if problem is not None:
            raise _Invalid(problem)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _limit_origin(source: str) -> str:
    return "a quarter of the map: the default" if source == "default" else f"from {_origin(source)}"


def _origin(source: str) -> str:
    """`env:EDGEWISE_X` -> `EDGEWISE_X`, `flag:--workers` -> `--workers`, `file:/p` -> `/p`."""
    kind, sep, rest = source.partition(":")
    return rest if sep and kind in ("env", "flag", "file") else source


def _show(value: object) -> str:
    if isinstance(value, str | bool | int | float | Path) or value is None:
        return _toml(value)
    return json.dumps(value, default=str)


def _set(
    values: dict[str, object],
    sources: dict[str, str],
    spec: _Spec,
    raw: object,
    source: str,
    base: Path,
    *,
    typed: bool,
) -> None:
    """Parse (text from the environment or flags) or type-check (file values), then check one value.

    The error shows the parsed value when only the check failed (`= 0`), else the raw one (`= "two"`).
    """
    shown = _show(raw)
    try:
        if not typed and isinstance(raw, str) and spec.kind != "str":
            value = _from_string(spec, raw, base)
        else:
            value = _from_typed(spec, raw, base)
        if value is not None:
            shown = _show(value)
            _check(spec, value)
    except _Invalid as exc:
        raise ConfigError(f"{spec.key} = {shown} (from {_origin(source)}): {exc}", spec.key, source) from None
    values[spec.key] = value
    sources[spec.key] = source


def _suggest(name: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _read_file(path: Path) -> dict[str, Any]:
    source = f"file:{path}"
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}", source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8: {exc}", source=source) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", source=source) from None


def _section_names(section: str) -> list[str]:
    return [s.name for s in _SPECS.values() if s.section == section]


def _apply_file(values: dict[str, object], sources: dict[str, str], path: Path) -> None:
    source = f"file:{path}"
    for section, body in _read_file(path).items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"unknown section [{section}] in {path}{_suggest(section, list(_SECTIONS))}; "
                f"known sections: {', '.join(_SECTIONS)}",
                section,
                source,
            )
        if not isinstance(body, dict):
            raise ConfigError(
                f"{section} in {path} must be a table ([{section}]), not {_type_name(body)}", section, source
            )
        names = _section_names(section)
        for name, raw in body.items():
            key = f"{section}.{name}"
            if key not in _SPECS:
                raise ConfigError(
                    f"unknown key {key} in {path}{_suggest(name, names, section + '.')}; "
                    f"[{section}] knows: {', '.join(names)}",
                    key,
                    source,
                )
            _set(values, sources, _SPECS[key], raw, source, path.parent, typed=True)


def _apply_env(values: dict[str, object], sources: dict[str, str], env: Mapping[str, str], cwd: Path) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, rest = name[len(ENV_PREFIX) :].partition("_")
        section = section.lower()
        if section not in _SECTIONS:
            continue  # other EDGEWISE_ variables (EDGEWISE_DEBUG, ...) are not configuration keys
        key = f"{section}.{rest.lower()}"
        source = f"env:{name}"
        if key not in _SPECS:
            envs = [_SPECS[f"{section}.{n}"].env for n in _section_names(section)]
            raise ConfigError(f"unknown key {key} (from {name}){_suggest(name, envs)}", key, source)
        _set(values, sources, _SPECS[key], env[name], source, cwd, typed=False)


def load_config(
    path: Path | None, env: Mapping[str, str], flags: Mapping[str, object]
) -> tuple[EdgeConfig, dict[str, str]]:
    """The effective configuration and, per dotted key, the source of its value.

    `path`: the TOML file or None; `env`: usually `os.environ` (only `EDGEWISE_<SECTION>_<KEY>` variables
    of known sections are read); `flags`: dotted key -> value from the command line (None = not given;
    see `flag_overrides`), strings parsed like environment variables, other values type-checked.
    Raises `ConfigError` naming the key and the source of the first wrong value.
    """
    values: dict[str, object] = {key: spec.default for key, spec in _SPECS.items()}
    sources: dict[str, str] = dict.fromkeys(_SPECS, "default")
    cwd = Path.cwd()
    if path is not None:
        path = path.expanduser()
        _apply_file(values, sources, path if path.is_absolute() else cwd / path)
    _apply_env(values, sources, env, cwd)
    for key, raw in flags.items():
        if raw is None:
            continue
        if key not in _SPECS:
            raise ConfigError(
                f"unknown key {key} (from a command-line flag){_suggest(key, list(_SPECS))}", key
            )
        spec = _SPECS[key]
        _set(values, sources, spec, raw, f"flag:{spec.flag}", cwd, typed=False)

    for key, spec in _SPECS.items():
        if spec.required and values[key] is None:
            raise ConfigError(
                f"{key} is not set: give {spec.flag}, set {spec.env}, or `{spec.name} = ...` under "
                f"[{spec.section}] in the config file",
                key,
                "default",
            )
    sections = {
        section: cls(**{s.name: values[s.key] for s in _SPECS.values() if s.section == section})
        for section, cls in _SECTIONS.items()
    }
    config = EdgeConfig(**sections)
    _cross_check(config, sources)
    return config, sources


def _cross_check(config: EdgeConfig, sources: Mapping[str, str]) -> None:
    if config.data.outbox_max_mb >= config.data.map_size_mb:
        raise ConfigError(
            f"data.outbox_max_mb = {config.data.outbox_max_mb} "
            f"(from {_origin(sources['data.outbox_max_mb'])}) "
            f"must be less than data.map_size_mb = {config.data.map_size_mb} "
            f"(from {_origin(sources['data.map_size_mb'])}): the rest of the store needs room too",
            key="data.outbox_max_mb",
            source=sources["data.outbox_max_mb"],
        )
    limits = size_limits(config)
    if sum(size for _, size in limits) >> 20 >= config.data.map_size_mb:
        named = ", ".join(f"{key} {size >> 20} MiB ({_limit_origin(sources[key])})" for key, size in limits)
        blamed = next((key for key, _ in reversed(limits) if sources[key] != "default"), limits[-1][0])
        raise ConfigError(
            f"{named}: together they must be less than data.map_size_mb = {config.data.map_size_mb}: "
            "the rest of the store needs room too",
            key=blamed,
            source=sources[blamed],
        )
    if config.sync.control and config.data.bundle is not None:
        raise ConfigError(
            "data.bundle and sync.control cannot both be set: with a control plane its syncer is the node's "
            f"only writer of replicated data (data.bundle from {_origin(sources['data.bundle'])}, "
            f"sync.control from {_origin(sources['sync.control'])})",
            key="sync.control",
            source=sources["sync.control"],
        )
    listen, metrics = config.server.listen, config.metrics.listen
    if metrics:
        g_host, _, g_port = listen.rpartition(":")
        m_host, _, m_port = metrics.rpartition(":")
        if g_port == m_port and g_port != "0" and (g_host == m_host or "0.0.0.0" in (g_host, m_host)):
            m_from, g_from = _origin(sources["metrics.listen"]), _origin(sources["server.listen"])
            raise ConfigError(
                f"metrics.listen = {_toml(metrics)} (from {m_from}) uses the same port as "
                f"server.listen = {_toml(listen)} (from {g_from})",
                "metrics.listen",
                sources["metrics.listen"],
            )


def format_config(config: EdgeConfig, sources: Mapping[str, str]) -> str:
    """One line per key, `server.workers = 2    # flag:--workers`, aligned; valid TOML that loads back."""
    pairs = [(f"{key} = {_toml(config.get(key))}", sources.get(key, "default")) for key in _SPECS]
    width = max(len(left) for left, _ in pairs)
    return "".join(f"{left.ljust(width)}    # {source}\n" for left, source in pairs)


# --- command-line flags ------------------------------------------------------------------------------


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def cli_config(args: argparse.Namespace) -> EdgeConfig | int:
    """The configuration a command's `args` give (flags, the environment, `--config`), or the exit status
    when the command has nothing more to do: 2 after printing what is wrong, 0 after `--print-config`."""
    try:
        config, sources = load_config(args.config, os.environ, flag_overrides(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.print_config:
        print(format_config(config, sources))
        return 0
    return config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config`, `--print-config` and one flag per configurable key that has one, all defaulting to None.

    Values are parsed by `load_config` (so errors name the flag); turn them into overrides with
    `flag_overrides(args)`.
    """
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration and where each value came from, then exit",
    )
    for spec in _SPECS.values():
        if not spec.has_flag:
            continue
        help_text = f"{spec.help} (default {spec.default_text}; env {spec.env})".replace("%", "%%")
        if spec.kind == "bool":
            parser.add_argument(
                spec.flag,
                dest=_dest(spec.flag),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            metavar = "|".join(spec.choices) if spec.kind == "choice" else spec.kind.upper()
            parser.add_argument(
                spec.flag, dest=_dest(spec.flag), default=None, metavar=metavar, help=help_text
            )


def flag_overrides(args: argparse.Namespace, mapping: Mapping[str, str] | None = None) -> dict[str, object]:
    """Dotted-key overrides from parsed flags: `mapping` is argparse dest -> dotted key (default: the flags
    `add_config_arguments` adds); flags left at None (not given) are skipped."""
    if mapping is None:
        mapping = {_dest(s.flag): s.key for s in _SPECS.values() if s.has_flag}
    out: dict[str, object] = {}
    for dest, key in mapping.items():
        value = getattr(args, dest, None)
        if value is not None:
            out[key] = value
    return out
