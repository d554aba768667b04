"""A layered configuration engine: a TOML file, `<PREFIX><SECTION>_<KEY>` environment overrides, flags on top.

A program describes its configuration as a frozen dataclass whose fields are sections, each a frozen
dataclass whose fields are keys; each key carries `meta(...)` in its field metadata (help, flag, checks).
`ConfigSchema(Root, "EDGEWISE_")` turns that into the keys `section.name`, their environment variables
(`EDGEWISE_SECTION_NAME`) and flags, and does the rest:

- `load(path, env, flags)`: precedence, lowest first: defaults < the file < environment < flags. Returns
  the typed, frozen root and, for every dotted key, where its value came from (`default`,
  `file:/etc/edgewise/edge.toml`, `env:EDGEWISE_SERVER_WORKERS`, `flag:--workers`).
- Every value is checked; a wrong one raises `ConfigError` naming the key and its source, e.g.
  `config error: server.workers = 0 (from EDGEWISE_SERVER_WORKERS): must be >= 1`. Unknown sections and
  keys in the file, and unknown `<PREFIX><SECTION>_...` variables of a known section, are refused (with a
  suggestion when a known key is close); other variables under the prefix are not configuration and are
  ignored. A program's own cross checks run last (`check=`).
- Paths are made absolute: relative paths in the file are relative to the file's directory, those from
  the environment or flags to the working directory. For optional values (`Path | None`) an empty string
  means "not set".
- `format(config, sources)` (for `--print-config`) is itself a valid TOML file (dotted keys, the sources
  as comments) that loads back to the same configuration.
- `add_arguments`, `flag_overrides` and `from_cli` wire it to argparse: `--config`, `--print-config` and
  one flag per key that names one.

Key types: int, float, bool, str, Path, `Path | None`, a `Literal[...]` of strings (a choice, compared
lowercased), `timedelta` (a duration: a number and a unit, s m h d or w, such as "90s" or "12w", or
"0"; printed back the same way) and `tuple[str, ...]` (a list: a TOML array of strings, or one string of
comma-separated entries, as the environment and flags give it; "" or [] is the empty list; the key's
`check` runs on each entry and an error names the entry; entries must be distinct).
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
from dataclasses import MISSING, dataclass, fields, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Generic, Literal, TypeVar

__all__ = [
    "DURATION_FORMAT",
    "ConfigError",
    "ConfigSchema",
    "DurationError",
    "check_address",
    "check_optional_address",
    "duration_ms",
    "format_duration",
    "meta",
    "origin",
    "toml_value",
]

C = TypeVar("C")


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the key and where it came from."""

    def __init__(self, message: str, key: str = "", source: str = "") -> None:
        super().__init__(f"config error: {message}")
        self.key = key
        self.source = source


def meta(
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    check: Callable[[str], str | None] | None = None,
    flag: str | None = None,
    default_text: str | None = None,
    metavar: str | None = None,
) -> dict[str, Any]:
    """A key's field metadata: `help`; bounds `min` <= value, value > `above`, value <= `max` (numbers;
    durations in seconds); `check(text)` returning a problem or None (strings); the command-line `flag`
    (None: environment and file only); `default_text` to show instead of the default's value (one computed
    at start, say); `metavar` for --help."""
    return {
        "help": help,
        "min": min,
        "max": max,
        "above": above,
        "check": check,
        "flag": flag,
        "default_text": default_text,
        "metavar": metavar,
    }


def check_address(value: str) -> str | None:
    """HOST:PORT with a port in 0..65535 (0 = any free port); IPv6 hosts in brackets: [::1]:50051."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return "must be HOST:PORT, e.g. 127.0.0.1:50051"
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        return "must be HOST:PORT with an IPv6 host in brackets, e.g. [::1]:50051"
    if not port.isdigit() or int(port) > 65535:
        return f"port {port!r} must be a number in 0..65535"
    return None


def check_optional_address(value: str) -> str | None:
    """`check_address`, or the empty string (not set)."""
    return None if value == "" else check_address(value)


# --- durations ---------------------------------------------------------------------------------------

DURATION_FORMAT: Final = "a positive number and a unit, s m h d or w (e.g. 30m, 6h, 1d)"
_UNIT_MS: Final = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class DurationError(ValueError):
    """A text that is not a duration (`short`: one that is, but under a second)."""

    def __init__(self, text: str, *, short: bool) -> None:
        self.text = text
        self.short = short
        problem = "is shorter than one second" if short else f"is not a duration: {DURATION_FORMAT}"
        super().__init__(f"{text!r} {problem}")


def duration_ms(text: str) -> int:
    """A duration such as "90s", "30m", "1.5h", "1d" or "2W" in milliseconds, at least one second."""
    value, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if unit not in _UNIT_MS or not (0 < number < 1e9):
        raise DurationError(text, short=False)
    ms = round(number * _UNIT_MS[unit])
    if ms < 1_000:
        raise DurationError(text, short=True)
    return ms


def format_duration(duration: timedelta) -> str:
    """The shortest text `duration_ms` reads back as the same milliseconds: "12w", "90m", "1.5s"; "0"."""
    ms = duration // timedelta(milliseconds=1)
    if ms == 0:
        return "0"
    for unit, size in sorted(_UNIT_MS.items(), key=lambda item: -item[1]):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms / 1000!r}s"


# --- key specifications ------------------------------------------------------------------------------

_Kind = Literal["int", "float", "bool", "str", "path", "choice", "duration", "list"]


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
    metavar: str
    env: str
    help: str


def _kind_of(hint: Any) -> tuple[_Kind, bool, tuple[str, ...]]:
    """(kind, optional, choices) of a field's resolved type hint."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "choice", False, tuple(str(c) for c in typing.get_args(hint))
    if origin is tuple and typing.get_args(hint) == (str, ...):
        return "list", False, ()
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] is Path:
            return "path", True, ()
    simple: dict[Any, _Kind] = {
        int: "int",
        float: "float",
        bool: "bool",
        str: "str",
        Path: "path",
        timedelta: "duration",
    }
    if hint in simple:
        return simple[hint], False, ()
    raise TypeError(f"unsupported config type {hint!r}")


def toml_value(value: object) -> str:
    """A value in TOML syntax (None, an unset optional value, as the empty string; a duration as text)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, timedelta):
        return json.dumps(format_duration(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(json.dumps(str(v), ensure_ascii=False) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def origin(source: str) -> str:
    """`env:EDGEWISE_X` -> `EDGEWISE_X`, `flag:--workers` -> `--workers`, `file:/p` -> `/p`."""
    kind, sep, rest = source.partition(":")
    return rest if sep and kind in ("env", "flag", "file") else source


# --- parsing and checking values ---------------------------------------------------------------------


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
    if spec.kind == "duration":
        return _duration(value)
    if spec.kind == "list":
        return _split_list(value)
    return value


def _split_list(text: str) -> tuple[str, ...]:
    """Comma-separated entries, each stripped; the empty (or blank) text is the empty list."""
    return tuple(part.strip() for part in text.split(",")) if text.strip() else ()


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
    if spec.kind == "duration" and isinstance(value, timedelta):
        return value
    if spec.kind == "list" and isinstance(value, list | tuple):
        for number, entry in enumerate(value, 1):
            if not isinstance(entry, str):
                raise _Invalid(f"entry {number} must be a string, not {_type_name(entry)}")
        return tuple(entry.strip() for entry in value)
    if not isinstance(value, str):
        if spec.kind == "list":
            raise _Invalid(f"must be an array of strings, not {_type_name(value)}")
        if spec.kind == "duration":
            raise _Invalid(f'must be a duration as a string ("30m", "12w"; "0"), not {_type_name(value)}')
        raise _Invalid(f"must be a string, not {_type_name(value)}")
    if spec.kind == "path":
        return _path(spec, value, base)
    if spec.kind == "duration":
        return _duration(value)
    if spec.kind == "list":
        return _split_list(value)
    return value.lower() if spec.kind == "choice" else value


def _path(spec: _Spec, text: str, base: Path) -> Path | None:
    if text == "":
        if spec.optional:
            return None
        raise _Invalid("must not be empty")
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _duration(text: str) -> timedelta:
    if text.strip() == "0":
        return timedelta(0)
    try:
        return timedelta(milliseconds=duration_ms(text))
    except DurationError as exc:
        if exc.short:
            raise _Invalid("must be at least one second (or 0)") from None
        raise _Invalid(f"must be a duration: {DURATION_FORMAT}, or 0") from None


def _check(spec: _Spec, value: object) -> None:
    if spec.kind in ("int", "float", "duration"):
        if isinstance(value, timedelta):
            number, show = value.total_seconds(), _seconds
        else:
            assert isinstance(value, int | float)
            number, show = value, _num
        if not math.isfinite(number):
            raise _Invalid("must be a finite number")
        if spec.minimum is not None and number < spec.minimum:
            raise _Invalid(f"must be >= {show(spec.minimum)}")
        if spec.above is not None and number <= spec.above:
            raise _Invalid(f"must be > {show(spec.above)}")
        if spec.maximum is not None and number > spec.maximum:
            raise _Invalid(f"must be <= {show(spec.maximum)}")
    if spec.kind == "choice" and value not in spec.choices:
        raise _Invalid("must be one of " + ", ".join(repr(c) for c in spec.choices))
    if spec.kind == "list":
        assert isinstance(value, tuple)
        seen: set[str] = set()
        for entry in value:
            problem = spec.check(entry) if spec.check is not None else None
            if problem is not None:
                raise _Invalid(f"entry {toml_value(entry)}: {problem}")
            if entry in seen:
                raise _Invalid(f"entry {toml_value(entry)} is listed twice")
            seen.add(entry)
        return
    if spec.check is not None:
        assert isinstance(value, str)
        problem = spec.check(value)
        if problem is not None:
            raise _Invalid(problem)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _seconds(x: float) -> str:
    return format_duration(timedelta(seconds=x))


def _show(value: object) -> str:
    if isinstance(value, str | bool | int | float | Path | timedelta | tuple) or value is None:
        return toml_value(value)
    return json.dumps(value, default=str)


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


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


# --- the schema --------------------------------------------------------------------------------------


class ConfigSchema(Generic[C]):
    """The keys of a root configuration dataclass, and loading, checking and printing them.

    `root`: a frozen dataclass whose fields are the sections (each a frozen dataclass of keys with
    `meta(...)` metadata; a key without a default is required). `env_prefix`: `EDGEWISE_` gives
    `EDGEWISE_SERVER_WORKERS` for `server.workers`; section names have no `_`, so the variable's first
    word after the prefix is the section. `check(config, sources)`: cross checks after every key is
    valid, raising `ConfigError`.
    """

    def __init__(
        self,
        root: type[C],
        env_prefix: str,
        *,
        check: Callable[[C, Mapping[str, str]], None] | None = None,
    ) -> None:
        if not is_dataclass(root):
            raise TypeError(f"{root!r} is not a dataclass")
        self.env_prefix = env_prefix
        self._make: Callable[..., C] = root
        self._cross_check = check
        hints = typing.get_type_hints(root)
        self._sections: dict[str, type] = {f.name: hints[f.name] for f in fields(root)}
        for section, cls in self._sections.items():
            if "_" in section or not is_dataclass(cls):
                raise TypeError(f"section {section!r}: a dataclass named without '_'")
        self._specs = self._build_specs()

    def _build_specs(self) -> dict[str, _Spec]:
        specs: dict[str, _Spec] = {}
        for section, cls in self._sections.items():
            hints = typing.get_type_hints(cls)
            for f in fields(cls):
                kind, optional, choices = _kind_of(hints[f.name])
                m = f.metadata
                if f.default is not MISSING:
                    default: object = f.default
                elif f.default_factory is not MISSING:
                    default = f.default_factory()
                else:
                    default = None
                key = f"{section}.{f.name}"
                flag = m["flag"] or "--" + key.replace(".", "-").replace("_", "-")
                if m.get("metavar"):
                    metavar = m["metavar"]
                elif kind == "choice":
                    metavar = "|".join(choices)
                else:
                    metavar = kind.upper()
                specs[key] = _Spec(
                    key=key,
                    section=section,
                    name=f.name,
                    kind=kind,
                    optional=optional,
                    required=f.default is MISSING and f.default_factory is MISSING,
                    default=default,
                    default_text=m["default_text"]
                    or ("(required)" if default is None and not optional else toml_value(default)),
                    choices=choices,
                    minimum=m["min"],
                    maximum=m["max"],
                    above=m["above"],
                    check=m["check"],
                    flag=flag,
                    has_flag=m["flag"] is not None,
                    metavar=metavar,
                    env=f"{self.env_prefix}{section.upper()}_{f.name.upper()}",
                    help=m["help"],
                )
        return specs

    # --- keys ----------------------------------------------------------------------------------------

    def keys(self) -> list[dict[str, str]]:
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
            for s in self._specs.values()
        ]

    def env_name(self, key: str) -> str:
        """The environment variable overriding a dotted key: `server.workers` -> `EDGEWISE_SERVER_WORKERS`."""
        return self._specs[key].env

    def get(self, config: C, key: str) -> object:
        """The value of a dotted key in `config`; KeyError for a key the schema does not have."""
        if key not in self._specs:
            raise KeyError(key)
        section, _, name = key.partition(".")
        return getattr(getattr(config, section), name)

    # --- loading -------------------------------------------------------------------------------------

    def load(
        self, path: Path | None, env: Mapping[str, str], flags: Mapping[str, object]
    ) -> tuple[C, dict[str, str]]:
        """The effective configuration and, per dotted key, the source of its value.

        `path`: the TOML file or None; `env`: usually `os.environ` (only `<PREFIX><SECTION>_<KEY>`
        variables of known sections are read); `flags`: dotted key -> value from the command line (None =
        not given; see `flag_overrides`), strings parsed like environment variables, other values
        type-checked. Raises `ConfigError` naming the key and the source of the first wrong value.
        """
        specs = self._specs
        values: dict[str, object] = {key: spec.default for key, spec in specs.items()}
        sources: dict[str, str] = dict.fromkeys(specs, "default")
        cwd = Path.cwd()
        if path is not None:
            path = path.expanduser()
            self._apply_file(values, sources, path if path.is_absolute() else cwd / path)
        self._apply_env(values, sources, env, cwd)
        for key, raw in flags.items():
            if raw is None:
                continue
            if key not in specs:
                raise ConfigError(
                    f"unknown key {key} (from a command-line flag){_suggest(key, list(specs))}", key
                )
            spec = specs[key]
            _set(values, sources, spec, raw, f"flag:{spec.flag}", cwd, typed=False)

        for key, spec in specs.items():
            if spec.required and values[key] is None:
                give = f"give {spec.flag}, " if spec.has_flag else ""
                raise ConfigError(
                    f"{key} is not set: {give}set {spec.env}, or `{spec.name} = ...` under "
                    f"[{spec.section}] in the config file",
                    key,
                    "default",
                )
        sections = {
            section: cls(**{s.name: values[s.key] for s in specs.values() if s.section == section})
            for section, cls in self._sections.items()
        }
        config = self._make(**sections)
        if self._cross_check is not None:
            self._cross_check(config, sources)
        return config, sources

    def _section_names(self, section: str) -> list[str]:
        return [s.name for s in self._specs.values() if s.section == section]

    def _apply_file(self, values: dict[str, object], sources: dict[str, str], path: Path) -> None:
        source = f"file:{path}"
        sections = list(self._sections)
        for section, body in _read_file(path).items():
            if section not in self._sections:
                raise ConfigError(
                    f"unknown section [{section}] in {path}{_suggest(section, sections)}; "
                    f"known sections: {', '.join(sections)}",
                    section,
                    source,
                )
            if not isinstance(body, dict):
                raise ConfigError(
                    f"{section} in {path} must be a table ([{section}]), not {_type_name(body)}",
                    section,
                    source,
                )
            names = self._section_names(section)
            for name, raw in body.items():
                key = f"{section}.{name}"
                if key not in self._specs:
                    raise ConfigError(
                        f"unknown key {key} in {path}{_suggest(name, names, section + '.')}; "
                        f"[{section}] knows: {', '.join(names)}",
                        key,
                        source,
                    )
                _set(values, sources, self._specs[key], raw, source, path.parent, typed=True)

    def _apply_env(
        self, values: dict[str, object], sources: dict[str, str], env: Mapping[str, str], cwd: Path
    ) -> None:
        prefix = self.env_prefix
        for name in sorted(env):
            if not name.startswith(prefix):
                continue
            section, _, rest = name[len(prefix) :].partition("_")
            section = section.lower()
            if section not in self._sections:
                continue  # other variables under the prefix (EDGEWISE_DEBUG, ...) are not configuration keys
            key = f"{section}.{rest.lower()}"
            source = f"env:{name}"
            if key not in self._specs:
                envs = [self._specs[f"{section}.{n}"].env for n in self._section_names(section)]
                raise ConfigError(f"unknown key {key} (from {name}){_suggest(name, envs)}", key, source)
            _set(values, sources, self._specs[key], env[name], source, cwd, typed=False)

    # --- printing ------------------------------------------------------------------------------------

    def format(self, config: C, sources: Mapping[str, str]) -> str:
        """One line per key, `server.workers = 2    # flag:--workers`, aligned; valid TOML that loads back."""
        pairs = [
            (f"{key} = {toml_value(self.get(config, key))}", sources.get(key, "default"))
            for key in self._specs
        ]
        width = max(len(left) for left, _ in pairs)
        return "".join(f"{left.ljust(width)}    # {source}\n" for left, source in pairs)

    # --- command-line flags --------------------------------------------------------------------------

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """`--config`, `--print-config` and one flag per key that has one, all defaulting to None.

        Values are parsed by `load` (so errors name the flag); turn them into overrides with
        `flag_overrides(args)`.
        """
        parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
        parser.add_argument(
            "--print-config",
            action="store_true",
            help="print the effective configuration and where each value came from, then exit",
        )
        for spec in self._specs.values():
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
                parser.add_argument(
                    spec.flag, dest=_dest(spec.flag), default=None, metavar=spec.metavar, help=help_text
                )

    def flag_overrides(
        self, args: argparse.Namespace, mapping: Mapping[str, str] | None = None
    ) -> dict[str, object]:
        """Dotted-key overrides from parsed flags: `mapping` is argparse dest -> dotted key (default: the
        flags `add_arguments` adds); flags left at None (not given) are skipped."""
        if mapping is None:
            mapping = {_dest(s.flag): s.key for s in self._specs.values() if s.has_flag}
        out: dict[str, object] = {}
        for dest, key in mapping.items():
            value = getattr(args, dest, None)
            if value is not None:
                out[key] = value
        return out

    def from_cli(self, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> C | int:
        """The configuration a command's `args` give (flags, the environment, `--config`), or the exit
        status when the command has nothing more to do: 2 after printing what is wrong, 0 after
        `--print-config`."""
        try:
            config, sources = self.load(
                args.config, os.environ if env is None else env, self.flag_overrides(args)
            )
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        if args.print_config:
            print(self.format(config, sources))
            return 0
        return config


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
        raise ConfigError(f"{spec.key} = {shown} (from {origin(source)}): {exc}", spec.key, source) from None
    values[spec.key] = value
    sources[spec.key] = source
