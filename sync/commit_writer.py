"""The thread that runs the edge syncer's write transactions at the process's own priority.

The syncer thread runs below the workers (sync/thread_priority.py): receiving, assembling and checking a
commit can wait. Its write transaction cannot wait as cheaply: the workers are separate processes sharing
the LMDB write lock, so a worker's Track (a durable write of its own) queues behind a transaction that
holds the lock, and at nice +10 on a busy node that transaction would take many times its CPU time in
wall time (priority inversion). So the syncer hands the checked commit to this thread, started by the
process at its own CPU and I/O priority (a Linux thread inherits them from the thread that starts it,
so `CommitWriter.start` must be called from one that was not lowered), and waits for it: the lock is
held for the transaction's CPU time, not for what is left of the lowered thread's share.

One call at a time, one write transaction per call: what `call` runs is the whole transaction (apply,
check, commit), never split.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)

__all__ = ["CommitWriter", "WriterStopped"]

T = TypeVar("T")


class WriterStopped(RuntimeError):
    """The writer was stopped before it ran the call: nothing of it was done."""


class CommitWriter:
    """Runs calls, one at a time, on a thread of its own (started by `start` from the caller's thread, at
    its priority); `call` waits for the result or re-raises the call's exception."""

    def __init__(self, name: str = "edge-sync-writer") -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._lock = threading.Lock()  # a call is queued while the writer runs, or refused
        self._running = False

    @property
    def native_id(self) -> int | None:
        return self._thread.native_id

    def start(self) -> None:
        with self._lock:
            self._running = True
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Let a call in progress finish (a transaction is not cut short), refuse those after it."""
        with self._lock:
            self._running = False
            self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        future: Future[T] = Future()
        with self._lock:
            if not self._running:
                raise WriterStopped("the commit writer is not running")
            self._jobs.put((fn, future))
        return future.result()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # the caller's to handle, in its thread
                future.set_exception(exc)
        # calls queued before the stop but behind it: their callers must not wait forever (none can be
        # queued after it: `call` refuses once `_running` is False, under the lock `stop` took)
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job is not None:
                job[1].set_exception(WriterStopped("the commit writer stopped before this call"))
