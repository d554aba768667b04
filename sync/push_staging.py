"""Where the control plane receives a push before it validates it: the paths a push may name, and the
staging directories a killed control plane left behind.

A push names each file by a relative POSIX path (`PushChunk.path`). `PushLayout.add` accepts one only in
its plain form: 1-512 characters, no control characters (NUL among them), no leading `/`, no empty, `.`
or `..` component, none over 255 bytes (so `a//b`, `./a`, `a/` and `.` are refused, and two spellings
can never name one file), not sent before, and not a file below another file of the push nor a file
where the push already has a directory (`a` then `a/b`, or `a/b` then `a`). So writing the push's files
into a fresh directory can only create new files there.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

__all__ = ["MAX_NAME_BYTES", "MAX_PATH_CHARS", "PushLayout", "clean_staging"]

MAX_PATH_CHARS: Final = 512
MAX_NAME_BYTES: Final = 255  # of one component (a file system's NAME_MAX)


class PushLayout:
    """The files and directories one push named so far."""

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._dirs: set[str] = set()

    def add(self, path: str) -> str | None:
        """Take the next file's path; what is wrong with it (then nothing is taken), or None."""
        if not path:
            return "empty"
        if len(path) > MAX_PATH_CHARS:
            return f"{len(path)} characters, more than {MAX_PATH_CHARS}"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            return "contains a control character"
        if path.startswith("/"):
            return "absolute (a path relative to the bundle directory is expected)"
        parts = path.split("/")
        if any(part in ("", ".", "..") for part in parts):
            return "has an empty, '.' or '..' component (a plain relative path like dir/file is expected)"
        if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
            return f"a component longer than {MAX_NAME_BYTES} bytes"
        if path in self._files:
            return "sent twice"
        if path in self._dirs:
            return "is a directory of other files in this push"
        for n in range(1, len(parts)):
            parent = "/".join(parts[:n])
            if parent in self._files:
                return f"{parent!r} is a file in this push, it cannot hold other files"
        self._files.add(path)
        self._dirs.update("/".join(parts[:n]) for n in range(1, len(parts)))
        return None


def clean_staging(root: Path) -> int:
    """Create `root` if needed and delete everything in it (what pushes of a killed control plane left);
    log `push_staging_cleaned` when there was something. Return how many entries were deleted."""
    root.mkdir(parents=True, exist_ok=True)
    stale = sorted(root.iterdir())
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if stale:
        log.info("push_staging_cleaned", extra={"entries": len(stale), "dir": str(root)})
    return len(stale)
