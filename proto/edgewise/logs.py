"""JSON log lines through the standard `logging` module.

Library code logs with `logging.getLogger(__name__)` and puts an event's fields in `extra`:

    log = logging.getLogger(__name__)
    log.info("snapshot_applied", extra={"version": 12, "source": "bundle"})

The `edgewise` command installs `JsonFormatter` on the root logger (`configure_logging`), so every line
a server writes to stderr is one JSON object: `{"ts": ..., "level": ..., "event": ..., "logger": ...,
**fields}`. An embedder who never calls `configure_logging` gets the records through their own handlers
(the fields are attributes of the `LogRecord`). Uncaught exceptions, in the main thread or any other,
and Python warnings become JSON lines too.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
from types import TracebackType
from typing import Any, Final, TextIO

__all__ = ["LEVELS", "JsonFormatter", "configure_logging"]

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# The attributes every LogRecord has: anything else on a record came from `extra` and is a field.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (seconds, 3 decimals), level, event (the message), logger, the
    record's `extra` fields, and `traceback` when the record carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            line.setdefault("error", f"{record.exc_info[0].__name__}: {record.exc_info[1]}")
            line["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(line, default=str, separators=(",", ":"))


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("edgewise").error("uncaught_exception", exc_info=(kind, value, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    thread = args.thread.name if args.thread is not None else ""
    logging.getLogger("edgewise").error(
        "uncaught_exception",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"in_thread": thread},
    )


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every log record of `level` and above to `stream` (stderr) as a JSON line, replacing the
    root logger's handlers; uncaught exceptions and warnings go the same way. Idempotent."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: must be one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_uncaught
