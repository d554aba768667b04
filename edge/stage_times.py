"""Where a worker's CPU goes per Decide, by stage: thread-CPU counters for benchmarks, off by default.

With `EDGEWISE_STAGE_TIMES` set to a directory, each worker adds the CPU time its threads spend in each
stage of a Decide (`time.thread_time_ns`, so a thread waiting for the GIL or for the network is not
charged) and writes the sums, with the number of calls, to `<dir>/stages-<pid>.json` every 0.2 s and
when it stops. `python -m bench.node` reads them before and after a load, takes the differences and
sets them beside the worker's whole CPU from /proc: what no stage accounts for is gRPC's own work (its
polling thread, the hand-off of each call to a handler thread, HTTP/2), the GIL's hand-offs and the
interpreter's other threads.

Stages (`STAGES`): `interceptor` (`_CallMeter`: its part on the polling thread and around the handler),
`decode` (gRPC's deserializer: for Decide only the hand-over of the bytes), `convert_in` (the request's
bytes -> core request, with its checks: edge/_wire.pyx, or the message path),
`pipeline` (the read transaction and the decision), `exposures` (the records built and queued),
`response` (the response's bytes, written from the decision: edge/_wire.pyx; or, with an explanation,
the response message and its serialization), `serialize` (gRPC's serializer: nothing for Decide, whose
bytes `response` wrote),
`servicer_other` (the rest of the servicer's Decide: in-flight count, decision metrics), `commit` (the
committer thread: exposure and Track commits).

Every thread adds to its own counters (no lock, no lost update); `totals` sums the threads'. Off (the
variable unset), the servicer and the interceptor test one attribute per call and take no time.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path
from typing import Final

__all__ = ["ENV", "STAGES", "StageTimes", "stage_times_from_env"]

ENV: Final = "EDGEWISE_STAGE_TIMES"
STAGES: Final = (
    "interceptor",
    "decode",
    "convert_in",
    "pipeline",
    "exposures",
    "response",
    "serialize",
    "servicer_other",
    "commit",
)
INTERCEPTOR, DECODE, CONVERT_IN, PIPELINE, EXPOSURES, RESPONSE, SERIALIZE, SERVICER_OTHER, COMMIT = range(
    len(STAGES)
)
CALLS: Final = len(STAGES)  # the slot counting Decide calls

now_ns = time.thread_time_ns


class StageTimes:
    """Per-thread CPU nanoseconds by stage, summed on demand, written to `path` as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._threads: list[list[int]] = []
        self._register = threading.Lock()

    def slots(self) -> list[int]:
        """This thread's counters (STAGES, then calls): add to them in place."""
        try:
            slots: list[int] = self._local.slots
        except AttributeError:
            slots = self._local.slots = [0] * (len(STAGES) + 1)
            with self._register:
                self._threads.append(slots)
        return slots

    def add(self, stage: int, since_ns: int) -> int:
        """Charge `stage` with this thread's CPU since `since_ns` (a `now_ns()`); the time now."""
        now = now_ns()
        self.slots()[stage] += now - since_ns
        return now

    def totals(self) -> dict[str, int]:
        with self._register:
            threads = list(self._threads)
        sums = [sum(t[i] for t in threads) for i in range(len(STAGES) + 1)]
        return {**dict(zip(STAGES, sums, strict=False)), "calls": sums[CALLS], "pid": os.getpid()}

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        written: dict[str, object] = {
            **self.totals(),
            # the cyclic collector's collections so far, by generation, and the Python threads by their
            # kernel id (bench.transport reads each thread's CPU from /proc/<pid>/task/<id>)
            "gc_collections": [generation["collections"] for generation in gc.get_stats()],
            "threads": {str(t.native_id): t.name for t in threading.enumerate() if t.native_id is not None},
        }
        tmp.write_text(json.dumps(written))
        os.replace(tmp, self.path)


def stage_times_from_env() -> StageTimes | None:
    """A `StageTimes` writing to `$EDGEWISE_STAGE_TIMES/stages-<pid>.json`, or None when it is unset."""
    directory = os.environ.get(ENV)
    if not directory:
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    return StageTimes(Path(directory) / f"stages-{os.getpid()}.json")
