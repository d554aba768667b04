"""Control-plane configuration: file < environment < flags with sources, refusals naming key and source,
--print-config that loads back, and a real `edgewise control serve --config FILE`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgewise.edge.config import load_config as load_edge_config
from edgewise.sync.auth import bearer_metadata
from edgewise.sync.control_config import (
    ConfigError,
    ControlConfig,
    config_keys,
    env_name,
    format_config,
    load_config,
)
from edgewise.sync.control_serve import add_control_serve_arguments
from edgewise.v1 import sync_pb2, sync_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DAY_MS = 86_400_000
OPS_TOKEN = "ops-0b1d3f5a7c9e2b4d6f8a0c2e4a6b8d0f"

# Every flag `edgewise control serve` had before it read a config file, and its default.
FLAG_DEFAULTS = {
    "--listen": ("server.listen", "127.0.0.1:50061"),
    "--ready-file": ("server.ready_file", None),
    "--data": ("data.dir", None),
    "--map-size-mb": ("data.map_size_mb", 65536),
    "--retain-snapshots": ("data.retain_snapshots", 3),
    "--retain-log-changes": ("data.retain_log_changes", 5_000_000),
    "--edge-token-file": ("auth.edge_token_file", None),
    "--ops-token-file": ("auth.ops_token_file", None),
    "--tls-cert": ("tls.cert", None),
    "--tls-key": ("tls.key", None),
    "--tls-ca": ("tls.ca", None),
    "--max-snapshots": ("sync.max_snapshots", 2),
    "--heartbeat": ("sync.heartbeat_seconds", 5.0),
    "--retain-events": ("events.retain", timedelta(days=90)),
    "--bandit-every-rewards": ("bandits.every_rewards", 100),
    "--bandit-every-seconds": ("bandits.every_seconds", 60.0),
    "--log-level": ("log.level", "info"),
    # added since (issue 16: per-node tokens, bounds on edge calls, fleet expiry)
    "--node-tokens-file": ("auth.node_tokens_file", None),
    "--max-streams": ("sync.max_streams", 256),
    "--max-streams-per-token": ("sync.max_streams_per_token", 4),
    "--write-timeout": ("sync.write_timeout_seconds", 60.0),
    "--max-forward-calls": ("events.max_forward_calls", 64),
    "--fleet-expire-after": ("fleet.expire_after", timedelta(days=7)),
    "--fleet-max-entries": ("fleet.max_entries", 10_000),
    # issue 20: the control plane's /metrics
    "--metrics-listen": ("metrics.listen", ""),
    "--nats": ("nats.url", ""),
    "--nats-replicas": ("nats.replicas", 3),
    "--nats-partitions": ("nats.partitions", 8),
    # issue 18: TLS and credentials of the NATS connection, the events stream's duplicate window
    "--nats-duplicate-window": ("nats.duplicate_window", timedelta(minutes=2)),
    "--nats-ca": ("nats.ca", None),
    "--nats-cert": ("nats.cert", None),
    "--nats-key": ("nats.key", None),
    "--nats-user": ("nats.user", ""),
    "--nats-password-file": ("nats.password_file", None),
    "--nats-token-file": ("nats.token_file", None),
    "--nats-creds": ("nats.creds", None),
    "--rollout-min-decisions": ("rollout.min_decisions", 200),
    "--rollout-max-fallback-increase": ("rollout.max_fallback_increase", 0.05),
    "--rollout-max-error-increase": ("rollout.max_error_increase", 0.01),
    "--rollout-max-p99-ratio": ("rollout.max_p99_ratio", 2.0),
    "--rollout-p99-floor-ms": ("rollout.p99_floor_ms", 5.0),
    "--rollout-auto-abort": ("rollout.auto_abort", True),
    "--rollout-promote-after": ("rollout.promote_after", timedelta(0)),
    "--rollout-check-seconds": ("rollout.check_seconds", 1.0),
    "--rollout-shadow-sample": ("rollout.shadow_sample", 0.1),
    # issue 21: model refresh from forwarded events
    "--refresh-popularity": ("refresh.popularity", False),
    "--refresh-popularity-every": ("refresh.popularity_every", timedelta(minutes=5)),
    "--refresh-popularity-half-life": ("refresh.popularity_half_life", timedelta(days=7)),
    "--refresh-new-items": ("refresh.new_items", False),
    "--refresh-new-item-min-users": ("refresh.new_item_min_users", 3),
    "--refresh-trending": ("refresh.trending", False),
    "--refresh-trending-every": ("refresh.trending_every", timedelta(minutes=5)),
    "--refresh-trending-days": ("refresh.trending_days", 28),
    "--refresh-neighbors": ("refresh.neighbors", False),
    "--refresh-neighbors-every": ("refresh.neighbors_every", timedelta(hours=1)),
    "--refresh-neighbors-window": ("refresh.neighbors_window", timedelta(days=30)),
    "--refresh-neighbors-k": ("refresh.neighbors_k", 20),
    "--refresh-neighbors-min-support": ("refresh.neighbors_min_support", 2),
    "--refresh-embeddings": ("refresh.embeddings", False),
    "--refresh-embeddings-every": ("refresh.embeddings_every", timedelta(hours=24)),
    "--refresh-embeddings-method": ("refresh.embeddings_method", "als"),
    "--refresh-embeddings-iterations": ("refresh.embeddings_iterations", 15),
    "--refresh-embeddings-regularization": ("refresh.embeddings_regularization", 0.1),
    "--refresh-embeddings-alpha": ("refresh.embeddings_alpha", 20.0),
    "--refresh-embeddings-learning-rate": ("refresh.embeddings_learning_rate", 0.05),
    "--refresh-embeddings-half-life": ("refresh.embeddings_half_life", timedelta(days=90)),
    "--refresh-embeddings-seed": ("refresh.embeddings_seed", 0),
    "--refresh-embeddings-commit-profiles": ("refresh.embeddings_commit_profiles", 5000),
    "--refresh-embeddings-commit-pause": ("refresh.embeddings_commit_pause", timedelta(seconds=1)),
}


def _file(tmp_path: Path, text: str, name: str = "control.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _load(
    tmp_path: Path, text: str | None = None, env: dict[str, str] | None = None, **flags: object
) -> tuple[ControlConfig, dict[str, str]]:
    path = None if text is None else _file(tmp_path, text)
    return load_config(path, env or {}, {key.replace("__", "."): value for key, value in flags.items()})


def _error(
    tmp_path: Path, text: str | None = None, env: dict[str, str] | None = None, **flags: object
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, env, **flags)
    return info.value


def test_every_flag_keeps_its_name_and_default(tmp_path: Path) -> None:
    config, sources = _load(tmp_path, data__dir="/srv/ctl")
    flags = {k["flag"]: k["key"] for k in config_keys()}
    assert flags == {flag: key for flag, (key, _) in FLAG_DEFAULTS.items()}
    for key, default in FLAG_DEFAULTS.values():
        if key != "data.dir":
            assert config.get(key) == default, key
            assert sources[key] == "default", key
    assert config.data.dir == Path("/srv/ctl") and sources["data.dir"] == "flag:--data"

    parser = argparse.ArgumentParser(prog="edgewise control serve")
    add_control_serve_arguments(parser)
    given = [*("--data", "d", "--listen", "127.0.0.1:0", "--retain-events", "12w", "--tls-ca", "ca.pem")]
    args = parser.parse_args([*given, "--config", "c.toml", "--print-config"])
    assert (args.data, args.listen, args.retain_events, args.tls_ca) == ("d", "127.0.0.1:0", "12w", "ca.pem")
    assert args.config == Path("c.toml") and args.print_config is True
    assert parser.parse_args([]).max_snapshots is None  # not given: the file, environment or default decide


def test_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = """
[server]
listen = "0.0.0.0:6000"
[data]
dir = "ctl-data"
retain_snapshots = 5
[sync]
max_snapshots = 4
heartbeat_seconds = 1.5
[auth]
ops_token_file = "secrets/ops.token"
[events]
retain = "30d"
"""
    env = {
        "EDGEWISE_CONTROL_SYNC_MAX_SNAPSHOTS": "6",
        "EDGEWISE_CONTROL_DATA_RETAIN_SNAPSHOTS": "7",
        "EDGEWISE_CONTROL_TLS_CA": "ca.pem",
        "PATH": "/usr/bin",
    }
    monkeypatch.chdir(tmp_path)
    config, sources = _load(tmp_path, text, env, data__retain_snapshots="8", log__level=None)
    path = f"file:{tmp_path / 'control.toml'}"
    assert config.server.listen == "0.0.0.0:6000" and sources["server.listen"] == path
    assert config.sync.heartbeat_seconds == 1.5 and sources["sync.heartbeat_seconds"] == path
    assert config.sync.max_snapshots == 6
    assert sources["sync.max_snapshots"] == "env:EDGEWISE_CONTROL_SYNC_MAX_SNAPSHOTS"
    assert config.data.retain_snapshots == 8 and sources["data.retain_snapshots"] == "flag:--retain-snapshots"
    assert config.events.retain == timedelta(days=30) and sources["events.retain"] == path
    assert config.log.level == "info" and sources["log.level"] == "default"  # a None flag is "not given"
    # Relative paths: from the file, against its directory; from the environment, the working directory.
    assert config.data.dir == tmp_path / "ctl-data"
    assert config.auth.ops_token_file == tmp_path / "secrets" / "ops.token"
    assert config.tls.ca == tmp_path / "ca.pem" and sources["tls.ca"] == "env:EDGEWISE_CONTROL_TLS_CA"


def test_the_edge_and_the_control_plane_read_only_their_own_variables(tmp_path: Path) -> None:
    edge_env = {
        "EDGEWISE_SERVER_LISTEN": "127.0.0.1:7000",
        "EDGEWISE_SYNC_CONTROL": "127.0.0.1:50061",
        "EDGEWISE_DATA_DIR": "/srv/edge",
        "EDGEWISE_OPS_TOKEN": OPS_TOKEN,
        "EDGEWISE_EDGE_TOKEN": "edge-token",
    }
    control_env = {"EDGEWISE_CONTROL_SERVER_LISTEN": "127.0.0.1:7001", "EDGEWISE_CONTROL_DATA_DIR": "/srv/c"}
    env = {**edge_env, **control_env}
    config, sources = _load(tmp_path, env=env)
    assert config.server.listen == "127.0.0.1:7001" and config.data.dir == Path("/srv/c")
    assert sources["server.listen"] == "env:EDGEWISE_CONTROL_SERVER_LISTEN"
    edge, edge_sources = load_edge_config(None, env, {})
    assert (
        edge.server.listen == "127.0.0.1:7000"
        and edge_sources["server.listen"] == "env:EDGEWISE_SERVER_LISTEN"
    )
    assert env_name("server.listen") == "EDGEWISE_CONTROL_SERVER_LISTEN"
    error = _error(tmp_path, env={**control_env, "EDGEWISE_CONTROL_SYNC_HEARTBEAT": "1"})
    assert str(error) == (
        "config error: unknown key sync.heartbeat (from EDGEWISE_CONTROL_SYNC_HEARTBEAT) "
        "(did you mean EDGEWISE_CONTROL_SYNC_HEARTBEAT_SECONDS?)"
    )


def test_unknown_keys_and_sections_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "control.toml"
    error = _error(tmp_path, "[sync]\nmax_snapshot = 3\n", data__dir="/srv")
    assert str(error).startswith(
        f"config error: unknown key sync.max_snapshot in {path} (did you mean sync.max_snapshots?); "
        "[sync] knows: max_snapshots, heartbeat_seconds"
    )
    assert (error.key, error.source) == ("sync.max_snapshot", f"file:{path}")
    error = _error(tmp_path, "[bandit]\nevery_rewards = 3\n", data__dir="/srv")
    assert str(error).startswith(f"config error: unknown section [bandit] in {path} (did you mean bandits?)")


# (file text, environment, flags, the message's start; {path} is the file)
BAD_VALUES: list[tuple[str | None, dict[str, str], dict[str, object], str]] = [
    (
        None,
        {"EDGEWISE_CONTROL_SYNC_HEARTBEAT_SECONDS": "0.01"},
        {},
        "sync.heartbeat_seconds = 0.01 (from EDGEWISE_CONTROL_SYNC_HEARTBEAT_SECONDS): must be >= 0.05",
    ),
    (None, {}, {"sync.max_snapshots": "0"}, "sync.max_snapshots = 0 (from --max-snapshots): must be >= 1"),
    (
        None,
        {},
        {"data.retain_snapshots": "-1"},
        "data.retain_snapshots = -1 (from --retain-snapshots): must be >= 0",
    ),
    (
        None,
        {},
        {"data.retain_log_changes": "0"},
        "data.retain_log_changes = 0 (from --retain-log-changes): must be >= 1",
    ),
    (
        None,
        {},
        {"bandits.every_rewards": "many"},
        'bandits.every_rewards = "many" (from --bandit-every-rewards): must be an integer',
    ),
    (
        "[bandits]\nevery_seconds = 0.05\n",
        {},
        {},
        "bandits.every_seconds = 0.05 (from {path}): must be >= 0.1",
    ),
    ("[data]\nmap_size_mb = 0\n", {}, {}, "data.map_size_mb = 0 (from {path}): must be >= 1"),
    (
        '[sync]\nmax_snapshots = "2"\n',
        {},
        {},
        'sync.max_snapshots = "2" (from {path}): must be an integer, not a string',
    ),
    (
        None,
        {},
        {"server.listen": "localhost"},
        'server.listen = "localhost" (from --listen): must be HOST:PORT',
    ),
    (
        None,
        {"EDGEWISE_CONTROL_LOG_LEVEL": "loud"},
        {},
        'log.level = "loud" (from EDGEWISE_CONTROL_LOG_LEVEL): must be one of',
    ),
    (
        None,
        {},
        {"refresh.embeddings_method": "svd"},
        'refresh.embeddings_method = "svd" (from --refresh-embeddings-method): must be one of',
    ),
    (
        "[refresh]\nembeddings_alpha = 0.0\n",
        {},
        {},
        "refresh.embeddings_alpha = 0.0 (from {path}): must be > 0",
    ),
    (
        None,
        {"EDGEWISE_CONTROL_REFRESH_EMBEDDINGS_ITERATIONS": "0"},
        {},
        "refresh.embeddings_iterations = 0 (from EDGEWISE_CONTROL_REFRESH_EMBEDDINGS_ITERATIONS): "
        "must be >= 1",
    ),
    (
        None,
        {},
        {"refresh.embeddings_regularization": "-0.5"},
        "refresh.embeddings_regularization = -0.5 (from --refresh-embeddings-regularization): must be >= 0",
    ),
    (
        None,
        {},
        {"refresh.embeddings_every": "0"},
        'refresh.embeddings_every = "0" (from --refresh-embeddings-every): must be >= 1',
    ),
    (
        None,
        {},
        {"refresh.embeddings_seed": "-1"},
        "refresh.embeddings_seed = -1 (from --refresh-embeddings-seed): must be >= 0",
    ),
]


@pytest.mark.parametrize(("text", "env", "flags", "expected"), BAD_VALUES)
def test_a_bad_value_names_key_and_source(
    tmp_path: Path, text: str | None, env: dict[str, str], flags: dict[str, object], expected: str
) -> None:
    path = None if text is None else _file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env, {"data.dir": "/srv", **flags})
    assert str(info.value).startswith("config error: " + expected.format(path=tmp_path / "control.toml"))
    assert info.value.key == expected.split(" = ")[0]


def test_the_server_certificate_and_key_go_together(tmp_path: Path) -> None:
    error = _error(tmp_path, env={"EDGEWISE_CONTROL_TLS_CERT": "/etc/c.pem"}, data__dir="/srv")
    assert str(error) == (
        'config error: tls.cert = "/etc/c.pem" (from EDGEWISE_CONTROL_TLS_CERT) needs tls.key too: the '
        "server certificate and its key go together"
    )
    config, _ = _load(tmp_path, data__dir="/srv", tls__cert="/etc/c.pem", tls__key="/etc/k.pem")
    assert (config.tls.cert, config.tls.key) == (Path("/etc/c.pem"), Path("/etc/k.pem"))


@pytest.mark.parametrize(
    ("text", "ms"),
    [("0", 0), ("90d", 90 * DAY_MS), ("12w", 84 * DAY_MS), ("36h", 36 * 3_600_000), ("1.5s", 1_500)],
)
def test_the_retention_is_a_duration(tmp_path: Path, text: str, ms: int) -> None:
    from_flag, sources = _load(tmp_path, data__dir="/srv", events__retain=text)
    assert (
        from_flag.events.retain == timedelta(milliseconds=ms)
        and sources["events.retain"] == "flag:--retain-events"
    )
    from_file, _ = _load(tmp_path, f'[data]\ndir = "/srv"\n[events]\nretain = "{text}"\n')
    assert from_file.events.retain == from_flag.events.retain


def test_a_bad_retention_names_key_and_source(tmp_path: Path) -> None:
    error = _error(tmp_path, data__dir="/srv", events__retain="ninety days")
    assert str(error) == (
        'config error: events.retain = "ninety days" (from --retain-events): must be a duration: a positive '
        "number and a unit, s m h d or w (e.g. 30m, 6h, 1d), or 0"
    )
    error = _error(tmp_path, env={"EDGEWISE_CONTROL_EVENTS_RETAIN": "0.5s"}, data__dir="/srv")
    assert str(error) == (
        'config error: events.retain = "0.5s" (from EDGEWISE_CONTROL_EVENTS_RETAIN): must be at least one '
        "second (or 0)"
    )
    error = _error(tmp_path, "[events]\nretain = 30\n", data__dir="/srv")
    path = tmp_path / "control.toml"
    assert str(error) == (
        f"config error: events.retain = 30 (from {path}): must be a duration as a string "
        '("30m", "12w"; "0"), not an integer'
    )


def test_print_config_round_trip(tmp_path: Path) -> None:
    path = _file(
        tmp_path, '[data]\ndir = "ctl"\n[events]\nretain = "36h"\n[auth]\nops_token_file = "ops.token"\n'
    )
    env = {"EDGEWISE_CONTROL_SYNC_HEARTBEAT_SECONDS": "0.5"}
    config, sources = load_config(path, env, {"server.listen": "127.0.0.1:0", "bandits.every_seconds": 2})
    text = format_config(config, sources)
    lines = text.splitlines()
    assert len(lines) == len(config_keys())
    assert len({line.index("#") for line in lines}) == 1  # the sources line up
    shown = {line.split(" = ")[0]: line for line in lines}
    assert shown["server.listen"].split("#")[1].strip() == "flag:--listen"
    assert shown["events.retain"].startswith('events.retain = "36h"')
    assert shown["sync.heartbeat_seconds"].endswith("# env:EDGEWISE_CONTROL_SYNC_HEARTBEAT_SECONDS")
    assert shown["data.dir"].startswith(f'data.dir = "{tmp_path / "ctl"}"')
    assert shown["tls.cert"].startswith('tls.cert = ""') and shown["tls.cert"].endswith("# default")
    again = tmp_path / "elsewhere" / "printed.toml"
    again.parent.mkdir()
    again.write_text(text)
    loaded, loaded_sources = load_config(again, {}, {})
    assert loaded == config
    assert set(loaded_sources.values()) == {f"file:{again}"}


def test_every_key_is_documented() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    docs = operations[operations.index("\n## Configuring a control plane") :]
    docs = docs[: docs.index("\n## ", 1)]
    for key in config_keys():
        section, name = key["key"].split(".")
        assert key["env"] == f"EDGEWISE_CONTROL_{section.upper()}_{name.upper()}" == env_name(key["key"])
        assert f"`{key['key']}`" in docs, key["key"]
        assert f"`{key['env']}`" in docs, key["env"]
        assert f"`{key['flag']}`" in docs, key["flag"]


# --- a real `edgewise control serve --config FILE` ---------------------------------------------------------


def _control_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgewise.cli", "control", "serve", *args]


@pytest.mark.slow
def test_control_serve_runs_from_a_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ops.token").write_text(OPS_TOKEN + "\n")
    path = _file(
        conf,
        """
[server]
listen = "127.0.0.1:0"
ready_file = "ready.json"
[data]
dir = "ctl-data"
map_size_mb = 256
[auth]
ops_token_file = "ops.token"
[sync]
heartbeat_seconds = 0.5
""",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWISE_")}
    env["EDGEWISE_CONTROL_SYNC_MAX_SNAPSHOTS"] = "1"
    printed = subprocess.run(
        _control_cmd("--config", str(path), "--print-config", "--retain-events", "2w"),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    assert f'server.ready_file = "{conf / "ready.json"}"' in printed.stdout
    assert "# env:EDGEWISE_CONTROL_SYNC_MAX_SNAPSHOTS" in printed.stdout
    assert 'events.retain = "2w"' in printed.stdout
    assert not (conf / "ctl-data").exists()  # --print-config only prints

    # Started by hand, not with edgewise.processes: the launcher passes its own --ready-file, and this
    # test is about the one the file names.
    log_path = tmp_path / "control.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            _control_cmd("--config", str(path)), stdout=log_file, stderr=log_file, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while not (conf / "ready.json").exists():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        info = json.loads((conf / "ready.json").read_text())
        assert (conf / "ctl-data").is_dir()  # relative to the file's directory
        address = f"127.0.0.1:{info['port']}"
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="edgewise.v1.ControlPlane")
            reply = health.Check(request, timeout=10, metadata=bearer_metadata(OPS_TOKEN))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = sync_pb2_grpc.ControlPlaneStub(channel)
            status = stub.Status(sync_pb2.StatusRequest(), timeout=10, metadata=bearer_metadata(OPS_TOKEN))
            assert status.head_version == info["version"]
            with pytest.raises(grpc.RpcError) as refused:  # the ops token from the file is in force
                stub.Status(sync_pb2.StatusRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_control_serve_refuses_a_bad_config_file(tmp_path: Path) -> None:
    path = _file(tmp_path, '[data]\ndir = "ctl-data"\n[sync]\nmax_snapshots = 0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWISE_")}
    done = subprocess.run(
        _control_cmd("--config", str(path)), capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"config error: sync.max_snapshots = 0 (from {path}): must be >= 1"
    assert not (tmp_path / "ctl-data").exists()
