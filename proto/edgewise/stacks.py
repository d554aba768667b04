"""Every thread's Python stack to stderr (file descriptor 2, plain text between the JSON log lines), for
the serving processes (edge supervisor and workers, control plane): on SIGUSR1, and when a process that
was told to stop outlives its bound, which then exits with status 1 instead of hanging (a hang at exit,
say a thread that never ends, keeps a supervisor, systemd or a script waiting for ever)."""

from __future__ import annotations

import faulthandler
import signal

STDERR = 2


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` writes every thread's stack to stderr and the process goes on: what a node or
    control plane that does not exit, or does not answer, is doing."""
    faulthandler.register(signal.SIGUSR1, file=STDERR, all_threads=True, chain=False)


def bound_the_exit(seconds: float) -> None:
    """Call once the process is stopping: if it still runs `seconds` later (its orderly stop and the
    interpreter's exit included), every thread's stack goes to stderr after a `Timeout (H:MM:SS)!` line
    and the process exits with status 1. Runs in a C thread of its own, so a process stuck with the GIL
    held is bounded too."""
    faulthandler.dump_traceback_later(seconds, repeat=False, file=STDERR, exit=True)
