"""The README's commands work when pasted in order: the Quickstart, the control-plane walk-through and
the Python example run in one bash shell against this tree's venv (ports and /tmp paths swapped for free
ones), and what the README says about their output holds; every `ctl` line carries the ops token; the
synthetic bundle's placements are named the same everywhere."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from edgewise.demo import PLACEMENTS as DEMO_PLACEMENTS
from edgewise.offline.synth import synth_rules

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```sh\n(.*?)```", README, re.S)
QUICKSTART = next(b for b in BLOCKS if "edgewise bundle synth" in b)
FLEET = next(b for b in BLOCKS if "edgewise control serve --data" in b)
PYTHON = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "ControlClient(" in b)
STOP = "kill $edge_pid $control_pid"


def test_the_synthetic_placements_are_one_list() -> None:
    placements = tuple(synth_rules()["placements"])
    assert placements == ("home", "pdp_similar", "hero_banner", "deals", "trending", "promo_slot")
    assert placements == DEMO_PLACEMENTS
    named = ", ".join(f"`{p}`" for p in placements[:-1]) + f" and `{placements[-1]}`"
    assert named in " ".join(README.split()), "README's list of the synthetic bundle's placements"
    comment = " ".join(line.strip("# ") for line in QUICKSTART.splitlines() if line.startswith("#"))
    assert all(p in comment for p in placements)


def test_every_ctl_line_carries_the_ops_token() -> None:
    for block in BLOCKS:
        for line in block.splitlines():
            if re.search(r"\bedgewise ctl\b", line):
                assert line.startswith("EDGEWISE_OPS_TOKEN=") or "--token-file" in line, line


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports free now (all held until each is chosen, so none is chosen twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _documents(text: str) -> list[dict[str, Any]]:
    """The JSON documents `call decide` / `call track` printed (an object from a line "{" to "}")."""
    return [json.loads(m) for m in re.findall(r"^\{\n.*?^\}$", text, re.S | re.M)]


@pytest.mark.slow
def test_the_quickstart_and_the_fleet_walkthrough_run_pasted_in_order(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        pytest.skip("no .venv in the repository root (the README installs into it)")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    assert STOP in README
    script = QUICKSTART + FLEET + f"python3 - <<'EOF'\n{PYTHON}EOF\n{STOP}\n"
    for port, free in zip(("50051", "50052", "50061", "9465"), _free_ports(4), strict=True):
        script = script.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free}")
    script = script.replace("/tmp/", f"{tmp_path}/")
    work = tmp_path / "shell"
    work.mkdir()
    # The tokens and changes.jsonl are written to the working directory: ROOT's .venv is activated
    # through an absolute path instead of the README's relative one.
    script = script.replace(". .venv/bin/activate", f". {ROOT}/.venv/bin/activate")
    # Each command is traced to fd 9 with the seconds since the start, so a slow step or a process that
    # does not exit names itself in the failure message.
    trace = tmp_path / "trace"
    wrapped = (
        f"exec 9>{trace}\nBASH_XTRACEFD=9\nPS4='+ $SECONDS '\nset -ex\n"
        "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    )
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    done = _run_walkthrough(wrapped, work, env, tmp_path, trace)
    state = _walkthrough_state(tmp_path, trace, []) if done.returncode else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + state
    assert "Traceback" not in done.stderr
    # A process that needed its exit bound (edgewise/stacks.py) wrote its stacks to its log and exited 1
    stuck = [log.name for log in tmp_path.glob("*.log") if "(most recent call first)" in log.read_text()]
    assert not stuck, _walkthrough_state(tmp_path, trace, [], log_lines=120)

    first, tracked, after = _documents(done.stdout)[:3]
    home = [i["id"] for i in first["placements"][0]["items"]]
    assert home[0] == "i866", "the README names the first item home shows u0 in DE"
    assert first["explanation"]["features"]["context.country"] == "DE"
    assert tracked["accepted"] == 1
    home_after, similar = after["placements"]
    assert "i866" not in [i["id"] for i in home_after["items"]]
    assert len(home_after["items"]) == 5 and similar["strategy"] == "similar"
    assert "i866" in after["explanation"]["placements"][1]["seedItemIds"]
    assert after["explanation"]["features"]["context.country"] == "DE"

    assert re.search(r"^pushed .*: version \d+, \d+ changes$", done.stdout, re.M)  # ctl push
    assert re.search(r"^pushed delta changes.jsonl: version \d+, \d+ changes$", done.stdout, re.M)
    assert "pop-fra-1" in done.stdout  # ctl status
    assert re.search(r'^edgewise_control_edges\{state="ready"\} 1\.0$', done.stdout, re.M)
    assert (work / "ops.token").read_text().strip() and (work / "edge.token").read_text().strip()
    # the Python example: the push (the bundle again: the delta's item goes), the edge in status, a
    # decision and a tracked click
    assert re.search(r"^version \d+: bundle version 1: 2000 items, 10000 profiles$", done.stdout, re.M)
    assert re.search(r"^pop-fra-1 \d+ \d+ ", done.stdout, re.M)
    assert re.search(r"TrackResponse\(accepted=1", done.stdout)


def _run_walkthrough(
    script: str, work: Path, env: dict[str, str], tmp_path: Path, trace: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run `script` in bash; the whole walk-through, the background processes' exits included (they hold
    its stdout), within `timeout` s, or fail with the trace, the logs and the processes still running."""
    shell = subprocess.Popen(
        ["bash", "-c", script], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert shell.stdout is not None
    pipe = f"pipe:[{os.fstat(shell.stdout.fileno()).st_ino}]"
    try:
        stdout, stderr = shell.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        holders = _holders(pipe)
        for pid in holders:  # the edges' and control plane's stacks to their logs (docs/operations.md)
            with contextlib.suppress(OSError):
                if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes() or _is_edgewise(pid):
                    os.kill(pid, signal.SIGUSR1)
        time.sleep(1)
        state = _walkthrough_state(tmp_path, trace, holders, log_lines=120)
        for pid in holders:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shell.kill()
        shell.communicate()
        pytest.fail(f"the walk-through took over {timeout} s (bash exit status {shell.returncode})\n{state}")
    return subprocess.CompletedProcess(shell.args, shell.returncode, stdout, stderr)


def _holders(pipe: str) -> list[int]:
    """The processes other than this one holding `pipe` open (the shell, its background processes and
    theirs: the walk-through is over when none is left)."""
    found = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) == pipe:
                found.add(int(fd.parent.parent.name))
    return sorted(found - {os.getpid()})


def _is_edgewise(pid: int) -> bool:
    return b"bin/edgewise\0" in Path(f"/proc/{pid}/cmdline").read_bytes()


def _walkthrough_state(tmp_path: Path, trace: Path, pids: list[int], log_lines: int = 15) -> str:
    """The trace's last lines, each log's last lines and the processes `pids`, for a failure."""
    parts = ["--- trace (+ seconds since start, command) ---", *_tail(trace, 40)]
    for log in sorted(tmp_path.glob("*.log")):
        parts += [f"--- {log.name} ---", *_tail(log, log_lines)]
    parts.append("--- still running ---")
    for pid in pids:
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            parts.append(f"{pid}: {command[:200].decode(errors='replace')}")
    return "\n".join(parts)


def _tail(path: Path, lines: int) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else [f"({path} missing)"]
