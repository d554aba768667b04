"""A background loop for the control plane's jobs: call `tick` every `interval` seconds until stopped
(with `first_now`, also once at start)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


__all__ = ["Periodic"]


class Periodic:
    """A daemon thread calling `tick` every `interval` seconds (`first_now`: the first call at start, not
    one interval after); a tick that raises is logged as `failure_event` and the next one runs as planned."""

    def __init__(
        self,
        name: str,
        interval: float,
        tick: Callable[[], None],
        failure_event: str,
        *,
        first_now: bool = False,
    ) -> None:
        self.interval = interval
        self.first_now = first_now
        self._tick = tick
        self._failure_event = failure_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        if self.first_now and not self._stop.is_set():
            self._call()
        while not self._stop.wait(self.interval):
            self._call()

    def _call(self) -> None:
        try:
            self._tick()
        except Exception as exc:  # a bad batch must not end the job; it is logged
            log.error(self._failure_event, extra={"error": repr(exc)})
