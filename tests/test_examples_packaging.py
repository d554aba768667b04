"""What ships for running edgewise in production: the example configuration files the README's commands
name (loaded by the real config loaders and `--print-config`), the systemd units (`systemd-analyze
verify`), the LICENSE pyproject names."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgewise.edge.config import load_config as load_edge_config
from edgewise.sync.control_config import load_config as load_control_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
UNITS = sorted((EXAMPLES / "systemd").glob("*.service"))
INSTALLED = "/opt/edgewise/bin/edgewise"  # where the units' install notes put the command


def test_the_edge_example_loads() -> None:
    config, sources = load_edge_config(EXAMPLES / "edge.toml", {}, {})
    assert config.server.listen == "0.0.0.0:50051"
    assert config.sync.control == ("control.internal:50061",)
    assert str(config.sync.token_file) == "/etc/edgewise/edge.token"
    assert config.metrics.listen == "127.0.0.1:9464"
    assert sources["sync.control"].startswith("file:")


def test_the_control_example_loads() -> None:
    config, sources = load_control_config(EXAMPLES / "control.toml", {}, {})
    assert config.server.listen == "0.0.0.0:50061"
    assert str(config.data.dir) == "/var/lib/edgewise-control"
    assert str(config.auth.ops_token_file) == "/etc/edgewise/ops.token"
    assert config.metrics.listen == "127.0.0.1:9465"
    assert sources["auth.edge_token_file"].startswith("file:")


@pytest.mark.slow
@pytest.mark.parametrize("command", [("edge", "serve"), ("control", "serve")])
def test_print_config_takes_each_example(command: tuple[str, str]) -> None:
    name = "edge.toml" if command[0] == "edge" else "control.toml"
    done = subprocess.run(
        [sys.executable, "-m", "edgewise.cli", *command, "--config", str(EXAMPLES / name), "--print-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = tomllib.loads(done.stdout)  # the printout is a config file itself
    assert printed["metrics"]["listen"].startswith("127.0.0.1:")


def test_every_unit_runs_the_installed_command_with_an_example_config() -> None:
    assert [u.name for u in UNITS] == ["edgewise-control.service", "edgewise-edge.service"]
    for unit in UNITS:
        start = re.search(r"^ExecStart=(.*)$", unit.read_text(), re.MULTILINE)
        assert start is not None, unit
        program, *args = start.group(1).split()
        assert program == INSTALLED
        config = Path(args[args.index("--config") + 1])
        assert config.parent == Path("/etc/edgewise")
        assert (EXAMPLES / config.name).is_file(), f"{unit.name} names {config}: no examples/{config.name}"


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: the systemd package)")
    edgewise = Path(sys.executable).parent / "edgewise"
    if not edgewise.is_file():
        pytest.skip(f"no edgewise command beside {sys.executable} (install the package into this venv)")
    # verify checks that ExecStart's program exists: the units as shipped, with the install path
    # replaced by this environment's command (the only difference).
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(edgewise)))
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / u.name) for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys and bad values are warnings with exit status 0: none is allowed.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (
        done.stdout + done.stderr
    )


def test_the_license_is_the_one_pyproject_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
