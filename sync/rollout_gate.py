"""What the fan-out may send each edge while rollouts come and go: the control plane's copy of the rollout
state (kept in the control store, `ControlStore.rollout_record`), read by every subscription on every
turn of its loop (docs/rollouts.md).

`plan(node_id)` answers, for one edge: the newest version it may be sent (`limit`: the rollout's base
version for an edge outside the canary set while the rollout is in progress, else None: the head), the
shadow candidate it should hold (version and sample share, for the edges outside the canary set of a
shadow rollout), and the skips of aborted candidates (an edge at a skip's base version moves to its
rollback version by one collapsed commit). Thread-safe; the service replaces the state under its push
lock after the store has it.

`hold(version)` holds every edge at `version` at most until `release()`: a central-tier replica holds its
edges at its head while it applies a log message that carries rollout state, so no edge is sent a commit
of that message before the gate has the rollout state that came with it (sync/central_replica.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from edgewise.sync.control_store import ControlStore
from edgewise.sync.rollout import Rollout, decode_rollout, decode_skips

__all__ = ["Plan", "RolloutGate"]


@dataclass(frozen=True, slots=True)
class Plan:
    limit: int | None = None  # the newest version the edge may be sent; None: the head
    shadow_version: int = 0  # the shadow candidate the edge should hold (0: none)
    shadow_sample: float = 0.0
    skips: dict[int, int] = field(default_factory=dict)  # base version -> rollback version


class RolloutGate:
    def __init__(self, store: ControlStore, default_shadow_sample: float = 0.1) -> None:
        self._lock = threading.Lock()
        self._default_sample = default_shadow_sample
        self._rollout: Rollout | None = None
        self._skips: dict[int, int] = {}
        self._canary: frozenset[str] = frozenset()
        self._hold: int | None = None
        self.reload(store)

    def reload(self, store: ControlStore) -> None:
        """Read the rollout state the store holds (at start, and after every change)."""
        doc, skips = store.rollout_record()
        rollout = None if doc is None else decode_rollout(doc)
        with self._lock:
            self._rollout = rollout
            self._skips = decode_skips(skips)
            self._canary = frozenset(rollout.canary_nodes) if rollout is not None else frozenset()

    def hold(self, version: int) -> None:
        """Send no edge anything past `version` until `release()`."""
        with self._lock:
            self._hold = version

    def release(self) -> None:
        with self._lock:
            self._hold = None

    @property
    def rollout(self) -> Rollout | None:
        """The rollout in progress, else the last one (None: there never was one)."""
        with self._lock:
            return self._rollout

    def in_canary(self, node_id: str) -> bool:
        with self._lock:
            return self._rollout is not None and self._rollout.in_progress and node_id in self._canary

    def plan(self, node_id: str) -> Plan:
        with self._lock:
            rollout = self._rollout
            if rollout is None or not rollout.in_progress or node_id in self._canary:
                return Plan(limit=self._hold, skips=self._skips)
            sample = rollout.shadow_sample or self._default_sample
            return Plan(
                limit=rollout.base_version if self._hold is None else min(self._hold, rollout.base_version),
                shadow_version=rollout.version if rollout.shadow else 0,
                shadow_sample=sample if rollout.shadow else 0.0,
                skips=self._skips,
            )
