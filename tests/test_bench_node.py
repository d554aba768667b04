"""bench/node.py's measuring parts: server CPU from /proc over a process tree, the per-stage breakdown,
h2load's report read back. (The benchmark itself runs real servers for minutes: `python -m bench.node`.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from edgewise.bench.node import _H2_DONE, _H2_RATE, ServerCpu, _breakdown, _tree


def test_server_cpu_counts_the_whole_process_tree() -> None:
    # The child spins until killed; the test samples until it has seen 0.05 s of the child's CPU (a loaded
    # machine may give the child little of a core, so no fixed sleep), bounded by a deadline.
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 30: pass\n"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])"],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while len(_tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        cpu = ServerCpu(parent.pid)
        before = cpu.sample()
        assert len(before.by_pid) == 2
        figures = cpu.per_call(before, before, calls=100)
        while figures["workers_s"] <= 0.05 and time.monotonic() < deadline:
            time.sleep(0.05)
            figures = cpu.per_call(before, cpu.sample(), calls=100)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(10)
    assert figures["workers_s"] > 0.05  # the child's busy loop, seen from outside
    assert figures["idle_s"] == 0  # not measured here
    assert figures["us_per_call"] > 500  # at least 0.05 s over 100 calls


def test_breakdown_leaves_to_grpc_what_no_stage_accounts_for() -> None:
    before = {"calls": 100, "pipeline": 1_000_000, "convert_in": 0}
    after = {"calls": 1100, "pipeline": 101_000_000, "convert_in": 20_000_000}
    load = {
        "server_cpu": {
            "workers_us_per_call": 400.0,
            "idle_s": 0.0,
            "calls": 1000,
            "supervisor_us_per_call": 1.0,
            "us_per_call": 401.0,
        }
    }
    b = _breakdown(before, after, load)
    assert b["stages_us"]["pipeline"] == 100.0
    assert b["stages_us"]["convert_in"] == 20.0
    assert b["grpc_and_rest_us"] == 280.0


def test_h2load_report_is_read() -> None:
    text = (
        "finished in 352.41ms, 12565.02 req/s, 1.11MB/s\n"
        "requests: 4428 total, 4428 started, 4428 done, 4427 succeeded, 1 failed, 0 errored, 0 timeout\n"
    )
    done, rate = _H2_DONE.search(text), _H2_RATE.search(text)
    assert done is not None and rate is not None
    assert (done.group(4), done.group(5)) == ("4427", "1")
    assert (rate.group(1), rate.group(2)) == ("352.41", "ms")
