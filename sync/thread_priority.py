"""Lower the CPU and I/O priority of the calling thread (Linux; a no-op elsewhere).

The edge's syncer runs beside the workers that serve Decide, on the same cores and disk: what it does
(receive, assemble and check a commit, write it in one LMDB transaction and fsync it) can wait a little,
a request cannot. On Linux both priorities are per thread: `lower_cpu_priority` raises the thread's nice
value (an unprivileged thread cannot lower it again, so a thread that lowers itself stays lowered), and
`lower_io_priority` puts it in the lowest level of the best-effort I/O class (`ioprio_set`, by syscall
number through ctypes, as Python has no wrapper). The I/O priority matters only where the disk's
scheduler honours it (BFQ; `none` and `mq-deadline` do not): then the transaction's writes and its
fsync queue behind the workers' reads. Neither can fail the caller: what the system refuses is logged
at debug level.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import threading
from typing import Final

log = logging.getLogger(__name__)

__all__ = ["IOPRIO_LOWEST_BEST_EFFORT", "io_priority", "lower_cpu_priority", "lower_io_priority"]

_IOPRIO_CLASS_SHIFT: Final = 13
_IOPRIO_CLASS_BE: Final = 2
_IOPRIO_WHO_PROCESS: Final = 1  # `who` is a process or thread id
IOPRIO_LOWEST_BEST_EFFORT: Final = (_IOPRIO_CLASS_BE << _IOPRIO_CLASS_SHIFT) | 7
# (ioprio_set, ioprio_get) syscall numbers per machine (arm64, riscv and loongarch share the generic table)
_SYSCALLS: Final = {
    "x86_64": (251, 252),
    "amd64": (251, 252),
    "i386": (289, 290),
    "i686": (289, 290),
    "aarch64": (30, 31),
    "arm64": (30, 31),
    "riscv64": (30, 31),
    "loongarch64": (30, 31),
    "armv7l": (314, 315),
    "ppc64le": (273, 274),
    "ppc64": (273, 274),
    "s390x": (282, 283),
}


def lower_cpu_priority(steps: int) -> None:
    """Raise the calling thread's nice value by `steps` (at most 19)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
    except OSError as exc:
        log.debug("thread_priority_unchanged", extra={"error": repr(exc)})


def _syscall(index: int, *args: int) -> int | None:
    """The ioprio syscall's result (-1: refused, errno set), None where there is none to call."""
    numbers = _SYSCALLS.get(platform.machine().lower())
    if not sys.platform.startswith("linux") or numbers is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(ctypes.c_long(numbers[index]), *(ctypes.c_int(a) for a in args)))


def lower_io_priority() -> None:
    """Put the calling thread in the lowest level of the best-effort I/O class (Linux `ioprio_set`)."""
    try:
        result = _syscall(0, _IOPRIO_WHO_PROCESS, threading.get_native_id(), IOPRIO_LOWEST_BEST_EFFORT)
    except (OSError, AttributeError) as exc:  # no libc to load, no syscall symbol
        log.debug("thread_io_priority_unchanged", extra={"error": repr(exc)})
        return
    if result is not None and result != 0:
        log.debug("thread_io_priority_unchanged", extra={"error": os.strerror(ctypes.get_errno())})


def io_priority(tid: int) -> int | None:
    """The I/O priority of thread `tid` as `ioprio_get` returns it (class << 13 | level); None where it
    cannot be read."""
    try:
        result = _syscall(1, _IOPRIO_WHO_PROCESS, tid)
    except (OSError, AttributeError):
        return None
    return None if result is None or result < 0 else result
