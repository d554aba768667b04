"""Structured logs: one JSON object per line on stderr, one line per event of interest."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

__all__ = ["LEVELS", "log", "set_level"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_LOCK = threading.Lock()
_threshold = LEVELS["info"]


def set_level(level: str) -> None:
    """Log events of `level` and above only (debug, info, warning, error)."""
    global _threshold
    _threshold = LEVELS[level]


def log(event: str, level: str = "info", **fields: Any) -> None:
    """Write {"ts": ..., "level": ..., "event": ..., **fields} as one line to stderr."""
    if LEVELS.get(level, 40) < _threshold:
        return
    record = {"ts": round(time.time(), 3), "level": level, "event": event, **fields}
    line = json.dumps(record, default=str, separators=(",", ":"))
    with _LOCK:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
