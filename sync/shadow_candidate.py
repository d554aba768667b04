"""The candidate of a shadow rollout, kept on the edge beside the version it serves (docs/shadow.md).

A shadow commit (`Commit.shadow`, a full snapshot of the candidate in chunks flagged `shadow`) is not
applied to the node's store: the syncer writes it into an LMDB environment of its own under
`<data>/shadow/`, through the same `Store.apply_replicated` snapshot path and checks as any snapshot
(records that do not decode, rules that do not compile: refused, nothing kept), then publishes it with
the marker file `<data>/shadow/candidate.json`: {version, base_version, sample, dir, received_at_ms}.
Each candidate gets a directory of its own (`v<version>-<ms>`), written before the marker names it, so
a worker never opens one half written; the workers poll the marker (edge/shadow.py) and open, switch or
close their read-only handle of it. Dropping the candidate (a shadow commit with 0 chunks, or the node
applying the version it stands for or a later one) removes the marker, then the directory: a worker
still holding the old environment open keeps reading its (unlinked) files until it notices.

The syncer is the only writer; it closes its handle as soon as the candidate is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final

from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import Change, ReadView, Store

log = logging.getLogger(__name__)

__all__ = ["MARKER", "SHADOW_DIR", "Candidate", "ShadowCandidates", "read_candidate"]

SHADOW_DIR: Final = "shadow"
MARKER: Final = "candidate.json"


@dataclass(frozen=True, slots=True)
class Candidate:
    """The candidate a node holds: what the marker file says."""

    version: int
    base_version: int  # what the node served when it arrived
    sample: float  # the share of requests to decide again with it, (0, 1]
    dir: str  # its environment's directory, under <data>/shadow/
    received_at_ms: int


def read_candidate(data_dir: Path) -> Candidate | None:
    """The candidate the marker in `data_dir` names (None: none, or a marker that does not parse)."""
    try:
        doc = json.loads((data_dir / SHADOW_DIR / MARKER).read_text())
        return Candidate(
            version=int(doc["version"]),
            base_version=int(doc["base_version"]),
            sample=float(doc["sample"]),
            dir=str(doc["dir"]),
            received_at_ms=int(doc["received_at_ms"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ShadowCandidates:
    """The syncer's side: install, drop and name the node's candidate (one at a time)."""

    def __init__(self, data_dir: Path, map_size: int) -> None:
        self.root = data_dir / SHADOW_DIR
        self.map_size = map_size

    def current(self) -> Candidate | None:
        return read_candidate(self.root.parent)

    def install(
        self,
        version: int,
        base_version: int,
        sample: float,
        changes: list[Change],
        info: SnapshotInfo,
        check: Callable[[ReadView], object] | None = None,
    ) -> Candidate:
        """Write the candidate's snapshot into a new environment (nothing is kept if `apply_replicated`
        or `check` raises), publish it in place of the previous one and remove that one."""
        received = int(time.time() * 1000)
        name = f"v{version}-{received}"
        path = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with Store(path, map_size=self.map_size, write_reserve=0) as store:
                store.apply_replicated(version, changes, snapshot=True, info=info, check=check)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        candidate = Candidate(version, base_version, sample, name, received)
        self._publish(candidate)
        self._remove_others(keep=name)
        return candidate

    def resample(self, sample: float) -> Candidate | None:
        """The candidate held, deciding `sample` of the requests from now on (None: there is none)."""
        current = self.current()
        if current is None:
            return None
        candidate = replace(current, sample=sample)
        self._publish(candidate)
        return candidate

    def _publish(self, candidate: Candidate) -> None:
        marker = self.root / MARKER
        tmp = marker.with_name(MARKER + ".tmp")
        tmp.write_text(json.dumps(asdict(candidate)))
        os.replace(tmp, marker)

    def drop(self) -> Candidate | None:
        """Remove the candidate (the marker first, then every environment); the one dropped, if any."""
        candidate = self.current()
        with contextlib.suppress(FileNotFoundError):
            (self.root / MARKER).unlink()
        self._remove_others(keep=None)
        return candidate

    def _remove_others(self, keep: str | None) -> None:
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name != keep:
                shutil.rmtree(entry, ignore_errors=True)
