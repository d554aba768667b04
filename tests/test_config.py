"""Edge configuration: file < environment < flags, sources, refusals naming key and source, --print-config."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from edgewise.core.store import Store
from edgewise.core.store_budget import MIN_CAP_BYTES
from edgewise.edge.config import (
    ConfigError,
    EdgeConfig,
    activity_max_bytes,
    add_config_arguments,
    cli_config,
    config_keys,
    dedupe_max_bytes,
    env_name,
    flag_overrides,
    format_config,
    load_config,
    outbox_max_bytes,
    size_limits,
    store_limits,
)

ROOT = Path(__file__).resolve().parent.parent


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def _load(
    tmp_path: Path, text: str | None = None, env: dict[str, str] | None = None, **flags: object
) -> tuple[EdgeConfig, dict[str, str]]:
    path = None if text is None else _file(tmp_path, text)
    overrides = {key.replace("__", "."): value for key, value in flags.items()}
    return load_config(path, env or {}, overrides)


def _error(
    tmp_path: Path, text: str | None = None, env: dict[str, str] | None = None, **flags: object
) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, env, **flags)
    return str(info.value)


def test_defaults_and_their_sources(tmp_path: Path) -> None:
    config, sources = _load(tmp_path, data__dir=str(tmp_path / "data"))
    assert config.server.listen == "127.0.0.1:50051"
    assert config.server.workers >= 1
    assert (config.server.threads, config.server.max_in_flight, config.server.overload) == (8, 64, "reject")
    assert (config.server.grace_seconds, config.server.min_budget_ms, config.server.pin) == (5.0, 2.0, False)
    assert config.data.dir == tmp_path / "data"
    assert config.data.bundle is None and config.data.map_size_mb == 8192
    assert config.track.group_commit_max_events == 256 and config.track.activity_ttl_hours == 72
    assert config.limits.max_message_bytes == 4 << 20 and config.limits.max_placements == 16
    assert config.health.stale_after_seconds == 300
    assert config.metrics.listen == "" and config.log.level == "info" and config.log.requests is False
    assert set(sources) == {k["key"] for k in config_keys()}
    assert sources["data.dir"] == "flag:--data"
    assert {v for k, v in sources.items() if k != "data.dir"} == {"default"}


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    text = """
[server]
listen = "0.0.0.0:6000"
workers = 3
threads = 4
pin = true
[data]
dir = "data"
bundle = "bundles/current"
[log]
level = "debug"
"""
    env = {
        "EDGEWISE_SERVER_WORKERS": "5",
        "EDGEWISE_SERVER_THREADS": "6",
        "EDGEWISE_TRACK_GROUP_COMMIT_MAX_WAIT_MS": "0.5",
        "EDGEWISE_DEBUG": "1",  # not a configuration key: ignored
        "PATH": "/usr/bin",
    }
    config, sources = _load(tmp_path, text, env, server__workers="7", log__level=None)
    path = tmp_path / "edge.toml"
    assert config.server.workers == 7 and sources["server.workers"] == "flag:--workers"
    assert config.server.threads == 6 and sources["server.threads"] == "env:EDGEWISE_SERVER_THREADS"
    assert config.server.listen == "0.0.0.0:6000" and sources["server.listen"] == f"file:{path}"
    assert config.server.pin is True and sources["server.pin"] == f"file:{path}"
    assert config.track.group_commit_max_wait_ms == 0.5
    assert (
        config.log.level == "debug" and sources["log.level"] == f"file:{path}"
    )  # a None flag is "not given"
    assert config.server.max_in_flight == 64 and sources["server.max_in_flight"] == "default"
    # Relative paths in the file are relative to the file's directory.
    assert config.data.dir == tmp_path / "data"
    assert config.data.bundle == tmp_path / "bundles" / "current"


def test_relative_paths_from_env_and_flags_use_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config, sources = _load(tmp_path, env={"EDGEWISE_DATA_DIR": "node1"}, data__bundle=Path("b"))
    assert config.data.dir == tmp_path / "node1" and sources["data.dir"] == "env:EDGEWISE_DATA_DIR"
    assert config.data.bundle == tmp_path / "b" and sources["data.bundle"] == "flag:--bundle"
    # An empty optional value means "not set".
    config, _ = _load(tmp_path, env={"EDGEWISE_DATA_DIR": "node1", "EDGEWISE_DATA_BUNDLE": ""})
    assert config.data.bundle is None


def test_env_values_are_parsed(tmp_path: Path) -> None:
    env = {
        "EDGEWISE_DATA_DIR": "/srv/edge",
        "EDGEWISE_SERVER_PIN": "yes",
        "EDGEWISE_LOG_REQUESTS": "0",
        "EDGEWISE_SERVER_OVERLOAD": "DEFAULT",
        "EDGEWISE_SERVER_GRACE_SECONDS": "2",
        "EDGEWISE_METRICS_LISTEN": "[::1]:9100",
        "EDGEWISE_LIMITS_MAX_MESSAGE_BYTES": "1048576",
    }
    config, sources = _load(tmp_path, env=env)
    assert config.server.pin is True and config.log.requests is False
    assert config.server.overload == "default" and config.server.grace_seconds == 2.0
    assert config.metrics.listen == "[::1]:9100" and config.limits.max_message_bytes == 1 << 20
    assert sources["limits.max_message_bytes"] == "env:EDGEWISE_LIMITS_MAX_MESSAGE_BYTES"


def test_the_documented_error_message(tmp_path: Path) -> None:
    message = _error(tmp_path, env={"EDGEWISE_SERVER_WORKERS": "0"}, data__dir="/srv")
    assert message == "config error: server.workers = 0 (from EDGEWISE_SERVER_WORKERS): must be >= 1"


ENV_CASES = [
    ("SERVER_WORKERS", "two", 'server.workers = "two"', "must be an integer"),
    ("SERVER_THREADS", "-1", "server.threads = -1", "must be >= 1"),
    ("SERVER_PIN", "maybe", 'server.pin = "maybe"', "must be a boolean: true/false, 1/0, yes/no or on/off"),
    ("SERVER_OVERLOAD", "drop", 'server.overload = "drop"', "must be one of 'reject', 'default'"),
    ("SERVER_LISTEN", "localhost", 'server.listen = "localhost"', "must be HOST:PORT"),
    (
        "SERVER_LISTEN",
        "127.0.0.1:70000",
        'server.listen = "127.0.0.1:70000"',
        "port '70000' must be a number",
    ),
    (
        "SERVER_LISTEN",
        "::1:80",
        'server.listen = "::1:80"',
        "must be HOST:PORT with an IPv6 host in brackets",
    ),
    ("SERVER_GRACE_SECONDS", "nan", "server.grace_seconds = nan", "must be a finite number"),
    ("HEALTH_STALE_AFTER_SECONDS", "0", "health.stale_after_seconds = 0.0", "must be > 0"),
    ("LIMITS_MAX_MESSAGE_BYTES", "100", "limits.max_message_bytes = 100", "must be >= 1024"),
    ("LOG_LEVEL", "loud", 'log.level = "loud"', "must be one of 'debug', 'info', 'warning', 'error'"),
    ("METRICS_LISTEN", "9100", 'metrics.listen = "9100"', "must be HOST:PORT"),
    ("DATA_DIR", "", 'data.dir = ""', "must not be empty"),
]


@pytest.mark.parametrize(("var", "raw", "shown", "problem"), ENV_CASES)
def test_bad_env_values_name_key_and_source(
    tmp_path: Path, var: str, raw: str, shown: str, problem: str
) -> None:
    env = {"EDGEWISE_DATA_DIR": "/srv", f"EDGEWISE_{var}": raw}
    message = _error(tmp_path, env=env)
    assert message.startswith(f"config error: {shown} (from EDGEWISE_{var}): {problem}")


def test_unknown_env_keys_of_known_sections_are_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, env={"EDGEWISE_DATA_DIR": "/srv", "EDGEWISE_SERVER_WORKRS": "2"})
    assert message == (
        "config error: unknown key server.workrs (from EDGEWISE_SERVER_WORKRS) "
        "(did you mean EDGEWISE_SERVER_WORKERS?)"
    )


FILE_CASES = [
    ('[server]\nworkers = "2"', 'server.workers = "2" (from {path}): must be an integer, not a string'),
    ("[server]\nworkers = 2.5", "server.workers = 2.5 (from {path}): must be an integer, not a float"),
    ("[server]\npin = 1", "server.pin = 1 (from {path}): must be a boolean (true or false), not an integer"),
    ("[server]\nlisten = 50051", "server.listen = 50051 (from {path}): must be a string, not an integer"),
    ("[server]\nthreads = true", "server.threads = true (from {path}): must be an integer, not a boolean"),
    ('[data]\ndir = ["a"]', 'data.dir = ["a"] (from {path}): must be a string, not an array'),
    ("[server]\ngrace_seconds = -1", "server.grace_seconds = -1.0 (from {path}): must be >= 0"),
    ("[server]\nwrokers = 2", "unknown key server.wrokers in {path} (did you mean server.workers?)"),
    ("[sever]\nworkers = 2", "unknown section [sever] in {path} (did you mean server?)"),
    ("server = 2", "server in {path} must be a table ([server]), not an integer"),
    ("[server\nworkers = 2", "config file {path} is not valid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), FILE_CASES)
def test_bad_file_values_and_unknown_keys_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    message = _error(tmp_path, text, data__dir="/srv")
    assert message.startswith("config error: " + expected.format(path=tmp_path / "edge.toml"))


def test_flag_values_name_the_flag(tmp_path: Path) -> None:
    assert "server.workers = 0 (from --workers): must be >= 1" in _error(
        tmp_path, data__dir="/srv", server__workers=0
    )
    assert "server.threads = true (from --threads): must be an integer, not a boolean" in _error(
        tmp_path, data__dir="/srv", server__threads=True
    )
    assert "unknown key server.worker (from a command-line flag)" in _error(
        tmp_path, data__dir="/srv", server__worker=2
    )


def test_missing_file_and_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml"):
        load_config(tmp_path / "nope.toml", {}, {"data.dir": "/srv"})
    message = _error(tmp_path)
    assert message == (
        "config error: data.dir is not set: give --data, set EDGEWISE_DATA_DIR, or `dir = ...` under [data] "
        "in the config file"
    )


def test_metrics_port_must_differ_from_the_grpc_port(tmp_path: Path) -> None:
    message = _error(tmp_path, env={"EDGEWISE_METRICS_LISTEN": "127.0.0.1:50051"}, data__dir="/srv")
    assert "metrics.listen" in message and "EDGEWISE_METRICS_LISTEN" in message and "server.listen" in message
    _load(
        tmp_path,
        env={"EDGEWISE_METRICS_LISTEN": "127.0.0.1:0"},
        data__dir="/srv",
        server__listen="127.0.0.1:0",
    )


def test_outbox_limit_must_leave_room_in_the_map(tmp_path: Path) -> None:
    message = _error(
        tmp_path, env={"EDGEWISE_DATA_OUTBOX_MAX_MB": "512"}, data__dir="/srv", data__map_size_mb=512
    )
    assert message == (
        "config error: data.outbox_max_mb = 512 (from EDGEWISE_DATA_OUTBOX_MAX_MB) must be less than "
        "data.map_size_mb = 512 (from --map-size-mb): the rest of the store needs room too"
    )
    # 0 (auto): before a snapshot is known, a third of the map less its headroom (a sixteenth of it)
    config, _ = _load(tmp_path, data__dir="/srv", data__map_size_mb=1000)
    assert config.data.outbox_max_mb == 0 and outbox_max_bytes(config.data) == (1000 << 20) * 15 // 16 // 3
    config, _ = _load(tmp_path, env={"EDGEWISE_DATA_OUTBOX_MAX_MB": "64"}, data__dir="/srv")
    assert outbox_max_bytes(config.data) == 64 << 20
    assert dedupe_max_bytes(config) == 2560 << 20  # a third of the default 8192 MiB map less 512 MiB
    assert activity_max_bytes(config) == 2560 << 20
    # One limit set high leaves the auto ones to share the rest: no error, and the caps in force fit.
    config, _ = _load(
        tmp_path, env={"EDGEWISE_TRACK_DEDUPE_MAX_MB": "800"}, data__dir="/srv", data__map_size_mb=1000
    )
    assert sum(size for _, size in size_limits(config, 100 << 20)) <= (1000 - 200 - 62.5) * (1 << 20)
    # Limits set that cannot fit beside even an empty snapshot are refused.
    message = _error(
        tmp_path,
        env={"EDGEWISE_TRACK_DEDUPE_MAX_MB": "800", "EDGEWISE_TRACK_ACTIVITY_MAX_MB": "200"},
        data__dir="/srv",
        data__map_size_mb=1000,
    )
    assert message == (
        "config error: track.dedupe_max_mb 800 MiB (from EDGEWISE_TRACK_DEDUPE_MAX_MB), "
        "track.activity_max_mb 200 MiB (from EDGEWISE_TRACK_ACTIVITY_MAX_MB): together they must be less "
        "than data.map_size_mb = 1000 less its headroom of 62.5 MiB: the snapshot needs room too (the caps "
        "in force are derived from what it leaves; 0 takes a third of that)"
    )
    config, _ = _load(tmp_path, env={"EDGEWISE_TRACK_ACTIVITY_MAX_MB": "100"}, data__dir="/srv")
    assert activity_max_bytes(config) == 100 << 20
    with pytest.raises(ConfigError) as caught:
        _load(
            tmp_path,
            env={"EDGEWISE_TRACK_ACTIVITY_MAX_MB": "960"},
            data__dir="/srv",
            data__map_size_mb=1000,
        )
    assert caught.value.key == "track.activity_max_mb"
    assert "track.activity_max_mb 960 MiB (from EDGEWISE_TRACK_ACTIVITY_MAX_MB)" in str(caught.value)


def test_the_caps_in_force_shrink_with_the_snapshot(tmp_path: Path) -> None:
    """Each cap in force is at most its configured value, together they are at most what the map leaves
    after twice the snapshot and the headroom, and a larger snapshot leaves them less."""
    config, _ = _load(
        tmp_path, env={"EDGEWISE_DATA_OUTBOX_MAX_MB": "100"}, data__dir="/srv", data__map_size_mb=1024
    )
    for snapshot_mib in (0, 100, 300, 600):
        budget = store_limits(config, snapshot_mib << 20)
        caps = dict(size_limits(config, snapshot_mib << 20))
        assert caps["data.outbox_max_mb"] <= 100 << 20
        room = max(0, (1024 - 2 * snapshot_mib - 64) << 20)
        assert sum(caps.values()) <= max(room, 3 * MIN_CAP_BYTES)
        assert budget.free_bytes == room and budget.reload_fits == (room > 0)
    assert dict(size_limits(config, 0))["data.outbox_max_mb"] == 100 << 20  # fits: as configured
    assert (
        dict(size_limits(config, 400 << 20))["track.dedupe_max_mb"]
        < dict(size_limits(config, 0))["track.dedupe_max_mb"]
    )


def test_print_config_shows_the_caps_in_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Store(tmp_path / "data", map_size=64 << 20):
        pass  # an empty store: a snapshot of 0 bytes
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--data", str(tmp_path / "data"), "--map-size-mb", "64", "--print-config"])
    assert cli_config(args) == 0
    printed = capsys.readouterr().out
    assert "# in force: the snapshot in" in printed and "data.outbox_max_mb" in printed
    assert "#   track.dedupe_max_mb   = 20.0 MiB (auto)" in printed  # (64 - 4) / 3
    assert "Track refused (RESOURCE_EXHAUSTED, store full) past 62.0 MiB" in printed
    assert '#   track.queue_exposures = "auto": no' in printed
    (tmp_path / "back.toml").write_text(printed)  # still a config file that loads back
    config, _ = load_config(tmp_path / "back.toml", {}, {})
    assert config.data.map_size_mb == 64


def test_config_is_frozen(tmp_path: Path) -> None:
    config, _ = _load(tmp_path, data__dir="/srv")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.workers = 3  # type: ignore[misc]
    assert config.get("server.threads") == 8
    with pytest.raises(KeyError):
        config.get("server.nope")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgewise edge serve")
    add_config_arguments(parser)
    return parser


def test_argparse_flags_override_env_and_file(tmp_path: Path) -> None:
    path = _file(tmp_path, '[server]\nworkers = 3\nthreads = 2\n[data]\ndir = "/srv/a"\n')
    args = _parser().parse_args(
        [
            "--config",
            str(path),
            "--workers",
            "2",
            "--no-pin",
            "--metrics-listen",
            "127.0.0.1:9100",
            "--data",
            "/srv/b",
        ]
    )
    assert args.config == path and args.print_config is False
    overrides = flag_overrides(args)
    assert overrides == {
        "server.workers": "2",
        "server.pin": False,
        "metrics.listen": "127.0.0.1:9100",
        "data.dir": "/srv/b",
    }
    config, sources = load_config(
        args.config, {"EDGEWISE_SERVER_WORKERS": "9", "EDGEWISE_SERVER_THREADS": "5"}, overrides
    )
    assert config.server.workers == 2 and sources["server.workers"] == "flag:--workers"
    assert config.server.pin is False and sources["server.pin"] == "flag:--pin"
    assert config.server.threads == 5 and sources["server.threads"] == "env:EDGEWISE_SERVER_THREADS"
    assert config.data.dir == Path("/srv/b") and config.metrics.listen == "127.0.0.1:9100"
    # Flags not given leave everything else alone.
    assert flag_overrides(_parser().parse_args([])) == {}
    # A caller's own flag names map through `mapping` (argparse dest -> dotted key).
    custom = argparse.Namespace(procs=4, unused=None)
    assert flag_overrides(custom, {"procs": "server.workers", "unused": "server.threads"}) == {
        "server.workers": 4
    }


_LINE = re.compile(r"^(?P<key>[a-z_]+\.[a-z_]+) = (?P<value>.+?)(?P<gap> {4,})# (?P<source>\S+)$")


def test_print_config_format_and_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path, '[data]\ndir = "/srv/edge"\n[metrics]\nlisten = "127.0.0.1:9100"\n')
    config, sources = load_config(path, {"EDGEWISE_SERVER_THREADS": "4"}, {"server.workers": "2"})
    text = format_config(config, sources)
    lines = text.splitlines()
    assert len(lines) == len(config_keys())
    parsed = {}
    columns = set()
    for line in lines:
        match = _LINE.match(line)
        assert match, line
        parsed[match["key"]] = (match["value"], match["source"])
        columns.add(line.index("#"))
    assert len(columns) == 1  # the sources line up
    assert parsed["server.workers"] == ("2", "flag:--workers")
    assert parsed["server.threads"] == ("4", "env:EDGEWISE_SERVER_THREADS")
    assert parsed["data.dir"] == ('"/srv/edge"', f"file:{path}")
    assert parsed["metrics.listen"] == ('"127.0.0.1:9100"', f"file:{path}")
    assert parsed["server.listen"] == ('"127.0.0.1:50051"', "default")
    assert parsed["data.bundle"] == ('""', "default")
    assert parsed["server.pin"] == ("false", "default")
    assert parsed["server.grace_seconds"] == ("5.0", "default")
    assert re.search(r"^server\.workers = 2 {4,}# flag:--workers$", text, re.M)
    # The printout is itself a config file that loads back to the same values.
    again = tmp_path / "printed.toml"
    again.write_text(text)
    assert load_config(again, {}, {})[0] == config


def test_every_key_has_an_env_name_and_is_documented() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text()
    for key in config_keys():
        section, name = key["key"].split(".")
        assert key["env"] == f"EDGEWISE_{section.upper()}_{name.upper()}" == env_name(key["key"])
        assert f"`{key['key']}`" in docs, key["key"]
        assert f"`{key['env']}`" in docs, key["env"]


def test_limits_section_covers_the_request_limits() -> None:
    from edgewise.edge.convert import Limits

    config, _ = load_config(None, {}, {"data.dir": "/srv"})
    names = {f.name for f in dataclasses.fields(Limits)}
    assert names <= {f.name for f in dataclasses.fields(config.limits)}
    limits = Limits(**{name: getattr(config.limits, name) for name in names})
    assert limits == Limits()


# --- sync.control: one control plane or a list of replicas ------------------------------------------------


def test_one_control_address_works_as_before(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    for config, source in (
        _load(tmp_path, data__dir=data, sync__control="ctl:50061"),
        _load(tmp_path, env={"EDGEWISE_SYNC_CONTROL": "ctl:50061"}, data__dir=data),
        _load(tmp_path, f'[data]\ndir = "{data}"\n[sync]\ncontrol = "ctl:50061"\n'),
    ):
        assert config.sync.control == ("ctl:50061",), source["sync.control"]
    config, sources = _load(tmp_path, data__dir=data)
    assert config.sync.control == () and sources["sync.control"] == "default"
    config, _ = _load(tmp_path, env={"EDGEWISE_SYNC_CONTROL": ""}, data__dir=data)
    assert config.sync.control == ()


def test_a_list_of_replicas_from_file_env_and_flags(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    text = f'[data]\ndir = "{data}"\n[sync]\ncontrol = ["a:50061", "b:50061", "[::1]:50061"]\n'
    config, sources = _load(tmp_path, text)
    assert config.sync.control == ("a:50061", "b:50061", "[::1]:50061")
    assert sources["sync.control"].startswith("file:")
    config, _ = _load(tmp_path, text, env={"EDGEWISE_SYNC_CONTROL": "c:1, d:2"})
    assert config.sync.control == ("c:1", "d:2")  # entries are stripped
    config, sources = _load(tmp_path, text, sync__control="e:1,f:2")
    assert config.sync.control == ("e:1", "f:2") and sources["sync.control"] == "flag:--control"
    config, _ = _load(tmp_path, f'[data]\ndir = "{data}"\n[sync]\ncontrol = []\n')
    assert config.sync.control == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a:50061,b", 'entry "b": must be HOST:PORT'),
        ("a:50061,,b:50061", 'entry "": must be HOST:PORT'),
        ("a:50061,b:99999", "entry \"b:99999\": port '99999' must be a number in 0..65535"),
        ("a:50061,a:50061", 'entry "a:50061" is listed twice'),
        ("::1:50061", 'entry "::1:50061": must be HOST:PORT with an IPv6 host in brackets'),
    ],
)
def test_a_bad_control_entry_is_named(tmp_path: Path, value: str, expected: str) -> None:
    message = _error(tmp_path, data__dir=str(tmp_path), sync__control=value)
    assert message.startswith("config error: sync.control = [") and "(from --control)" in message
    assert expected in message
    message = _error(tmp_path, env={"EDGEWISE_SYNC_CONTROL": value}, data__dir=str(tmp_path))
    assert "(from EDGEWISE_SYNC_CONTROL)" in message and expected in message


def test_a_control_array_of_other_things_is_refused(tmp_path: Path) -> None:
    base = f'[data]\ndir = "{tmp_path}"\n[sync]\n'
    message = _error(tmp_path, base + 'control = ["a:1", 50061]\n')
    assert "sync.control" in message and "entry 2 must be a string, not an integer" in message
    message = _error(tmp_path, base + "control = 50061\n")
    assert "must be an array of strings, not an integer" in message
    message = _error(tmp_path, base + 'control = ["a:1", "nope"]\n')
    assert 'entry "nope": must be HOST:PORT' in message and str(tmp_path / "edge.toml") in message


def test_a_control_list_prints_as_a_toml_array_that_loads_back(tmp_path: Path) -> None:
    config, sources = _load(tmp_path, data__dir=str(tmp_path / "data"), sync__control="a:1,b:2")
    text = format_config(config, sources)
    assert re.search(r'^sync\.control = \["a:1", "b:2"\] {4,}# flag:--control$', text, re.M)
    again = tmp_path / "printed.toml"
    again.write_text(text)
    assert load_config(again, {}, {})[0] == config
    keys = {k["key"]: k for k in config_keys()}
    assert keys["sync.control"]["type"] == "list" and keys["sync.control"]["default"] == "[]"


def test_control_replicas_with_a_bundle_are_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    message = _error(tmp_path, data__dir=str(tmp_path), sync__control="a:1,b:2", data__bundle=str(bundle))
    assert "data.bundle and sync.control cannot both be set" in message
