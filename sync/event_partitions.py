"""Which partition of the forwarded events a user's records belong to (the central tier, docs/central.md).

`partition_of(user, partitions)`: a hash of the user id modulo the number of partitions, so one user's
records always land in one partition, in order. The events stream's subjects carry it
(`sync/central_events.py`), each replica's local copy indexes its records by it (`sync/event_store.py`),
and the jobs that work one partition (`sync/central_partitions.py`) read that partition alone.
"""

from __future__ import annotations

import hashlib

__all__ = ["partition_of"]


def partition_of(user: str, partitions: int) -> int:
    return int.from_bytes(hashlib.sha256(user.encode()).digest()[-4:], "big") % partitions
