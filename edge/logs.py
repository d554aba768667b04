"""Structured logs: one JSON object per line on stderr, one line per event of interest."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

__all__ = ["log"]

_LOCK = threading.Lock()


def log(event: str, level: str = "info", **fields: Any) -> None:
    """Write {"ts": ..., "level": ..., "event": ..., **fields} as one line to stderr."""
    record = {"ts": round(time.time(), 3), "level": level, "event": event, **fields}
    line = json.dumps(record, default=str, separators=(",", ":"))
    with _LOCK:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
