"""Real `edgewise ...` processes, for the tests, the benchmarks and the demo.

`Processes.start(name, args)` runs `edgewise ARGS --ready-file FILE` (this interpreter, `-m edgewise.cli`)
as a child in a session, and so a process group, of its own: a Ctrl-C at the terminal reaches only the
parent, which stops its children itself. The child's stdout and stderr (the JSON log lines) go to
`NAME.log` in the group's work directory. `Process.wait_ready` waits until the child wrote its ready
file (every serving command writes that JSON atomically once it serves); a child that exits first, or
is not ready in time, fails with the tail of its log. `Process.stop` sends a signal to the child alone
(SIGTERM: it drains and stops its own workers) and waits a grace period; if the child is still running
then, its whole group is SIGKILLed.

`Processes` is a context manager: on the way out, KeyboardInterrupt included, it stops every child it
started that still runs (newest first), then SIGKILLs each child's group, so a worker left behind by a
killed supervisor goes too. Last, an `atexit` hook SIGKILLs the group of every child still running
when the interpreter exits.

Nothing in the product imports this module at serve time (tests/test_layering.py: layer "top").
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

__all__ = [
    "READY_TIMEOUT_S",
    "STOP_GRACE_S",
    "Process",
    "ProcessError",
    "Processes",
    "edgewise_command",
    "wait_ready",
]

READY_TIMEOUT_S: Final = 60.0
STOP_GRACE_S: Final = 20.0
LOG_TAIL_LINES: Final = 15
_POLL_S: Final = 0.02


class ProcessError(RuntimeError):
    """A child exited before it was ready, or did not become ready in time (the message has its log's
    tail)."""


def edgewise_command(*args: str) -> list[str]:
    """The command line of `edgewise ARGS` run by this interpreter."""
    return [sys.executable, "-m", "edgewise.cli", *args]


@dataclass(eq=False)
class Process:
    """One child process (the leader of its own process group), its log file and its ready file."""

    name: str
    args: tuple[str, ...]  # of `edgewise ARGS`, without the --ready-file option the group added
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_path: Path
    started_wall: float  # time.time() just before the child was started
    info: dict[str, Any] | None = field(default=None)  # the ready file's JSON, once read

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def data(self) -> Path:
        """The child's `--data` directory (ProcessError if it was started without one)."""
        if "--data" not in self.args[:-1]:
            raise ProcessError(f"{self.name} was started without --data")
        return Path(self.args[self.args.index("--data") + 1])

    @property
    def address(self) -> str:
        """The `host:port` the child serves on, from its ready file (ProcessError before it is ready)."""
        return str(self._info()["address"])

    @property
    def port(self) -> int:
        return int(self._info()["port"])

    def _info(self) -> dict[str, Any]:
        if self.info is None:
            raise ProcessError(f"{self.name} is not ready yet (call wait_ready first)")
        return self.info

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far, in order (a line still being written is left out)."""
        events = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    events.append(dict(json.loads(line)))
        return events

    def ready(self) -> dict[str, Any] | None:
        """The ready file's JSON if the child wrote it, else None; ProcessError if the child exited
        without writing it."""
        if self.info is not None:
            return self.info
        if self.ready_path.exists():
            self.info = dict(json.loads(self.ready_path.read_text()))
            return self.info
        if self.proc.poll() is not None:
            raise ProcessError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the child wrote its ready file and return its JSON (ProcessError with the log's
        tail if it exits first or `timeout` passes; a child that is not ready in time is killed)."""
        (info,) = wait_ready([self], timeout)
        return info

    def send_signal(self, sig: int) -> None:
        """Signal the child alone (not its group), if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> int:
        """Send `sig` to the child and wait up to `grace` seconds for it to exit; if it still runs then,
        SIGKILL its group. The child's exit status (negative: the signal that ended it)."""
        self.send_signal(sig)
        return self._wait_or_kill(grace)

    def _wait_or_kill(self, grace: float) -> int:
        try:
            code = self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            return self.kill()
        _live.discard(self)
        return code

    def kill(self) -> int:
        """SIGKILL the child's whole group (its workers too) and reap the child."""
        _kill_group(self.proc.pid)
        code = self.proc.wait()
        _live.discard(self)
        return code


def wait_ready(processes: Sequence[Process], timeout: float = READY_TIMEOUT_S) -> list[dict[str, Any]]:
    """Wait until every one of `processes` is ready (they start in parallel); their ready files' JSON, in
    order. On failure the children not yet ready are killed and ProcessError names them."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            late = [p for p in processes if p.ready() is None]
            if not late:
                return [p.info for p in processes if p.info is not None]
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{', '.join(p.name for p in late)} not ready in {timeout:g} s:\n{late[0].log_tail()}"
                )
            time.sleep(_POLL_S)
    except ProcessError:
        for p in processes:
            if p.info is None:
                p.kill()
        raise


class Processes:
    """The children started for one run (a test, a benchmark, the demo), with their files in `workdir`.

    Every child gets `os.environ`, updated with `env` and then with the `env` given to `start`. Leaving
    the `with` block (or `close()`) stops each child still running with `exit_signal` and `grace` (tests
    use SIGKILL: nothing to drain), then SIGKILLs every child's group."""

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        *,
        exit_signal: int = signal.SIGTERM,
        grace: float = STOP_GRACE_S,
    ) -> None:
        self.workdir = workdir
        self.env = dict(env or {})
        self.exit_signal = exit_signal
        self.grace = grace
        self.started: list[Process] = []
        self._names: dict[str, int] = {}

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _stem(self, name: str) -> str:
        """`name`, or `name-N` if `name` was used in this work directory before (by any group)."""
        count = self._names.get(name, 0)
        while True:
            count += 1
            stem = name if count == 1 else f"{name}-{count}"
            if not (self.workdir / f"{stem}.log").exists():
                self._names[name] = count
                return stem

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> Process:
        """Start `edgewise ARGS --ready-file FILE` as `name` without waiting for it (see
        `Process.wait_ready`). A name used before gets a numbered suffix for its files."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        stem = self._stem(name)
        log_path = self.workdir / f"{stem}.log"
        ready_path = self.workdir / f"{stem}.ready.json"
        cmd = edgewise_command(*args, "--ready-file", str(ready_path))
        child_env = {**os.environ, **self.env, **(env or {})}
        with open(log_path, "wb") as log_file:
            started_wall = time.time()
            proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
            )
        process = Process(stem, tuple(args), proc, log_path, ready_path, started_wall)
        self.started.append(process)
        _live.add(process)
        return process

    def serve(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = READY_TIMEOUT_S,
    ) -> Process:
        """`start`, then `wait_ready`: the child serves when this returns."""
        process = self.start(name, args, env)
        process.wait_ready(timeout)
        return process

    def stop(
        self, which: Sequence[Process], sig: int | None = None, grace: float | None = None
    ) -> list[tuple[str, int]]:
        """Stop `which`: signal every one first (they drain in parallel), then wait for each (SIGKILL to
        its group after the grace). (name, exit status) of each, in the order given."""
        sig = self.exit_signal if sig is None else sig
        grace = self.grace if grace is None else grace
        for p in which:
            p.send_signal(sig)
        deadline = time.monotonic() + grace
        return [(p.name, p._wait_or_kill(max(0.0, deadline - time.monotonic()))) for p in which]

    def stop_all(self) -> list[tuple[str, int]]:
        """Stop every child started so far, newest first; (name, exit status) of each, newest first."""
        return self.stop(self.started[::-1])

    def close(self) -> None:
        """`stop_all`, then SIGKILL every child's group (what a killed supervisor left behind)."""
        try:
            self.stop_all()
        finally:
            for p in self.started:
                _kill_group(p.pid)
                _live.discard(p)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


_live: set[Process] = set()


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_live):
        _kill_group(p.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.proc.wait(timeout=5)
    _live.clear()
