"""How the `edgewise` command behaves as part of a shell pipeline: a reader that leaves early
(`edgewise ... | head`) ends it quietly, and progress lines are redrawn in place (`\\r`) on a terminal only,
plain lines elsewhere."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from edgewise.cli import EXIT_BROKEN_PIPE
from edgewise.ctl import _Progress
from edgewise.progress import ProgressLine

EDGEWISE = [sys.executable, "-m", "edgewise.cli"]


# --- progress lines ------------------------------------------------------------------------------------


def test_on_a_terminal_the_line_is_redrawn_in_place() -> None:
    out = io.StringIO()
    line = ProgressLine(out, tty=True)
    line.update("profiles 1000/2000")
    line.update("items 5/9")
    line.done()
    assert out.getvalue() == "\rprofiles 1000/2000\ritems 5/9         \n"


def test_elsewhere_plain_lines_at_most_one_per_interval_and_the_last_one() -> None:
    now = [0.0]
    out = io.StringIO()
    line = ProgressLine(out, tty=False, every=5.0, clock=lambda: now[0])
    for step in range(1, 13):  # one update a second for 12 s
        line.update(f"step {step}")
        now[0] += 1.0
    line.done()
    assert out.getvalue() == "step 1\nstep 6\nstep 11\nstep 12\n"
    assert "\r" not in out.getvalue()


def test_a_done_message_is_the_last_line() -> None:
    out = io.StringIO()
    line = ProgressLine(out, tty=False, clock=lambda: 0.0)
    line.update("a")
    line.update("b")  # held back: within the interval
    line.done("finished")
    assert out.getvalue() == "a\nfinished\n"


def test_ctl_push_progress_is_a_bar_on_a_terminal_and_two_lines_elsewhere() -> None:
    for tty in (True, False):
        out = io.StringIO()
        progress = _Progress(False, ProgressLine(out, tty=tty))
        for sent in range(0, 11 << 20, 1 << 20):
            progress(sent, 10 << 20)
            progress._last = 0.0  # as if 0.1 s passed
        text = out.getvalue()
        if tty:
            assert text.count("\r") == 11 and text.endswith("\n") and text.count("\n") == 1
        else:
            assert "\r" not in text and text.count("\n") == 2  # the first and the last
            assert "10.0/10.0 MiB" in text.splitlines()[-1]
    quiet = io.StringIO()
    _Progress(True, ProgressLine(quiet, tty=True))(1, 1)
    assert quiet.getvalue() == ""


def _synth(tmp_path: Path, stderr: int) -> subprocess.Popen[bytes]:
    args = ["bundle", "synth", "--users", "3000", "--items", "300", "--seed", "3"]
    args += ["--out", str(tmp_path / "b")]
    return subprocess.Popen([*EDGEWISE, *args], stdout=subprocess.DEVNULL, stderr=stderr)


@pytest.mark.slow
def test_bundle_synth_progress_to_a_terminal_and_to_a_pipe(tmp_path: Path) -> None:
    # a real terminal: a pseudo-terminal as stderr
    leader, follower = pty.openpty()
    proc = _synth(tmp_path / "tty", follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(60) == 0
    assert b"\r  profiles" in seen and seen.rstrip().endswith(b"validating")

    # a pipe (a log file, CI, the journal): plain lines, no carriage return
    proc = _synth(tmp_path / "pipe", subprocess.PIPE)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert b"\r" not in err
    lines = err.decode().splitlines()
    assert lines and all(line.startswith("  ") for line in lines)
    assert lines[-1] == "  validating"


# --- a reader that leaves early ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_closed_pipe_ends_the_command_quietly(bundle_dir: Path) -> None:
    # The reader is gone before the command writes anything: every write fails with EPIPE.
    proc = subprocess.Popen(
        [*EDGEWISE, "bundle", "validate", str(bundle_dir), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == EXIT_BROKEN_PIPE
    assert err == "", err


@pytest.mark.slow
def test_edgewise_piped_into_head_prints_no_traceback(bundle_dir: Path) -> None:
    command = " ".join([*EDGEWISE, "bundle", "validate", str(bundle_dir), "--json"])
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{command} | head -n 1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip().startswith("{")
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (0, EXIT_BROKEN_PIPE)  # 0 when it wrote everything before head left
