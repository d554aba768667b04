"""A background loop for the control plane's jobs: call `tick` every `interval` seconds until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


__all__ = ["Periodic"]


class Periodic:
    """A daemon thread calling `tick` every `interval` seconds; a tick that raises is logged as
    `failure_event` and the next one runs as planned."""

    def __init__(self, name: str, interval: float, tick: Callable[[], None], failure_event: str) -> None:
        self.interval = interval
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
        while not self._stop.wait(self.interval):
            try:
                self._tick()
            except Exception as exc:  # a bad batch must not end the job; it is logged
                log.error(self._failure_event, extra={"error": repr(exc)})
