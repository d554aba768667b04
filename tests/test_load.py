"""The load generator: the HdrHistogram wrapper, the floor server as real processes, open/closed loop runs
(tests/test_load_edge.py: against a real edge, TLS and tokens)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import process_group
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgewise.bench import cli
from edgewise.bench.histogram import HIGHEST_NS, LOWEST_NS, Histogram, HistogramError, HistogramUnavailable
from edgewise.bench.load import LoadConfig, LoadError, format_report, parse_mix, parse_placements, run_load
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc

SPECTRUM = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0)

# -- histogram --------------------------------------------------------------------------------------

BUCKET = 1 / 1024  # HdrHistogram's widest bucket at 3 significant digits, relative


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng, n: rng.lognormal(12.0, 1.5, n),  # ~160 us median, heavy tail
        lambda rng, n: rng.exponential(300_000.0, n),  # ~300 us mean
        lambda rng, n: 10 ** rng.uniform(3, 10.7, n),  # log-uniform over 1 us .. 50 s
        lambda rng, n: rng.uniform(0, 3_000_000, n),  # the linear range and just above it
    ],
)
def test_histogram_percentiles_match_numpy_within_the_precision(draw: object) -> None:
    rng = np.random.default_rng(20260509)
    n = 100_003
    values = np.asarray(draw(rng, n), dtype=np.float64).astype(np.int64)  # type: ignore[operator]
    hist = Histogram()
    hist.record_many(values.tolist())
    ordered = np.sort(values)
    got = hist.percentiles(SPECTRUM)
    for q in SPECTRUM:
        # HdrHistogram: the highest value equivalent to the recording of rank round(q n / 100); the rank
        # differs from nearest-rank's ceil(q n / 100) by at most one.
        rank = int(np.ceil(q * n / 100))
        low = int(ordered[max(rank - 2, 0)])
        high = int(ordered[min(rank, n - 1)])
        assert low - LOWEST_NS <= got[q] <= high * (1 + BUCKET) + LOWEST_NS, (q, got[q], low, high)
    assert hist.count == n
    assert int(values.max()) <= hist.max_ns <= values.max() * (1 + BUCKET) + LOWEST_NS
    assert hist.min_ns <= int(values.min())
    assert hist.mean_ns == pytest.approx(float(values.mean()), rel=2 * BUCKET, abs=LOWEST_NS)


def test_histogram_merges_and_round_trips_in_the_standard_encoding() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(13.0, 1.0, 20_000).astype(np.int64).tolist()
    whole, a, b = Histogram(), Histogram(), Histogram()
    whole.record_many(values)
    a.record_many(values[:7_000])
    b.record_many(values[7_000:])
    text = b.encode()
    assert text.startswith("HISTF")  # HdrHistogram's compressed V2 encoding, base64
    merged = Histogram.decode(a.encode())
    merged += Histogram.decode(text)
    assert merged.count == whole.count == 20_000
    assert merged.percentiles(SPECTRUM) == whole.percentiles(SPECTRUM)
    assert merged.max_ns == whole.max_ns
    assert Histogram().merge(Histogram()).count == 0
    assert Histogram.decode(Histogram().encode()).count == 0
    with pytest.raises(HistogramError, match="HdrHistogram"):
        Histogram.decode("nonsense")
    with pytest.raises(HistogramError, match="percentile"):
        whole.percentile(0)


def test_histogram_clamps_to_its_range_and_summarizes_the_whole_spectrum() -> None:
    hist = Histogram()
    for v in (-5, 0, 999, 2 * HIGHEST_NS):
        hist.record(v)
    assert hist.count == 4
    assert hist.min_ns == 0
    assert HIGHEST_NS <= hist.max_ns <= HIGHEST_NS * (1 + BUCKET)  # past one hour: recorded as one hour
    assert hist.percentile(50) < 1_000
    summary = hist.summary().to_dict()
    assert list(summary) == [
        "count", "mean_us", "p50_us", "p75_us", "p90_us", "p95_us", "p99_us", "p99.9_us", "p99.99_us",
        "max_us", "min_us",
    ]  # fmt: skip
    assert Histogram().summary().count == 0
    assert Histogram().summary().to_dict()["p99.99_us"] == 0


def test_a_plain_install_without_hdrhistogram_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "hdrh" or m.startswith("hdrh.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "hdrh", None)  # import hdrh raises ImportError, as when missing
    with pytest.raises(HistogramUnavailable, match=r"pip install 'edgewise\[bench\]'"):
        Histogram()
    code = cli.main(["load", "--target", "127.0.0.1:1", "--rate", "10", "--duration", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: edgewise bench load needs the hdrhistogram package")
    assert "pip install 'edgewise[bench]'" in err


# -- configuration ----------------------------------------------------------------------------------


def test_mix_placements_and_config_errors_name_the_field() -> None:
    assert parse_mix("decide=9,track=1") == {"Decide": 0.9, "Track": 0.1}
    assert parse_mix("track=1") == {"Track": 1.0}
    assert parse_placements("home:10, pdp_similar:8,hero_banner") == (
        ("home", 10),
        ("pdp_similar", 8),
        ("hero_banner", 0),
    )
    with pytest.raises(LoadError, match="decide, track"):
        parse_mix("search=1")
    with pytest.raises(LoadError, match="weight"):
        parse_mix("decide=-1")
    with pytest.raises(LoadError, match="ID:COUNT"):
        parse_placements("home:x")
    with pytest.raises(LoadError, match="exactly one"):
        LoadConfig(rate=10, concurrency=2).validated()
    with pytest.raises(LoadError, match="exactly one"):
        LoadConfig().validated()
    with pytest.raises(LoadError, match="duration"):
        LoadConfig(rate=10, duration=0).validated()
    with pytest.raises(LoadError, match="target"):
        LoadConfig(rate=10, target="nowhere").validated()
    assert LoadConfig(concurrency=1, clients=4).validated().clients == 1


# -- against a real floor server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """`edgewise bench floor-server` with 2 workers on port 0, as a real process; its ready file."""
    args = ["bench", "floor-server", "--listen", "127.0.0.1:0", "--workers", "2", "--grace", "1"]
    with process_group(tmp_path_factory.mktemp("floor")) as processes:
        server = processes.serve("floor", args, timeout=30)
        yield server.wait_ready()
        server.stop(signal.SIGTERM, grace=20)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_floor_server_answers_like_a_personalizer(floor: dict[str, object]) -> None:
    assert floor["workers"] == 2
    pids = floor["worker_pids"]
    assert isinstance(pids, list) and len(set(pids)) == 2 and all(_alive(p) for p in pids)
    with grpc.insecure_channel(str(floor["address"])) as channel:
        stub = pb_grpc.PersonalizerStub(channel)
        decided = stub.Decide(
            pb.DecideRequest(user_id="u1", placements=[pb.PlacementRequest(placement_id="home")]), timeout=5
        )
        assert len(decided.decision_id) == 32 and not decided.placements
        tracked = stub.Track(
            pb.TrackRequest(events=[pb.Event(event_id=str(i), type="view") for i in range(3)]), timeout=5
        )
        assert tracked.accepted == 3
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="edgewise.v1.Personalizer"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
def test_open_loop_run_reports_the_intended_rate(
    floor: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "report.json"
    started = time.monotonic()
    code = cli.main(
        [
            "load",
            "--target",
            str(floor["address"]),
            "--rate",
            "300",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--clients",
            "2",
            "--json",
            str(report_file),
        ]
    )
    assert code == 0
    assert time.monotonic() - started < 20
    out = capsys.readouterr()
    assert "p99.99" in out.out and "per second: " in out.out
    assert "[" in out.err and "sent" in out.err  # the progress line
    report = json.loads(report_file.read_text())
    assert report["mode"] == "open"
    assert report["intended_rate"] == 300
    assert 600 - 3 <= report["overall"]["sent"] <= 600 + 3  # the schedule: rate x duration
    assert report["errors_by_code"] == {}
    assert report["overall"]["errors"] == 0
    assert report["unsent"] == 0 and report["unfinished"] == 0
    # The floor holds no users: the default, and a warning saying so.
    assert report["config"]["users"] == 100_000 and report["config"]["users_source"] == "default"
    assert any("did not tell how many users" in w for w in report["warnings"])
    assert 0.9 * 300 <= report["achieved_rate"] <= 1.1 * 300
    assert set(report["rpcs"]) == {"Decide", "Track"}
    assert report["rpcs"]["Decide"]["sent"] > report["rpcs"]["Track"]["sent"] > 0
    latency = report["overall"]["latency"]
    assert set(latency) >= {"count", "mean_us", "p50_us", "p90_us", "p99_us", "p99.9_us", "max_us"}
    assert latency["count"] == report["overall"]["ok"] == report["overall"]["sent"]
    assert 0 < latency["p50_us"] <= latency["p90_us"] <= latency["p99_us"] <= latency["p99.9_us"]
    assert latency["p99.9_us"] <= latency["max_us"] < 1_000_000
    assert latency["p50_us"] < 100_000  # a no-op on loopback, even on a busy 2-core machine
    assert len(report["clients"]) == 2 and all(0 < c["cpu"] <= 2 for c in report["clients"])
    assert report["send_lag"]["count"] == report["overall"]["sent"]
    assert report["machine"]["cpus"] >= 1


@pytest.mark.slow
def test_closed_loop_run_keeps_calls_in_flight(floor: dict[str, object]) -> None:
    progress = io.StringIO()
    report = run_load(
        LoadConfig(
            target=str(floor["address"]),
            concurrency=4,
            duration=1.5,
            warmup=0.3,
            clients=2,
            mix=parse_mix("decide=1"),
        ),
        progress=progress,
    )
    assert report.config.mode == "closed"
    assert report.errors == {}
    assert set(report.rpcs) == {"Decide"}
    assert report.overall.ok == report.overall.sent > 100
    assert report.achieved_rate > 100
    assert report.overall.latency.percentile(50) > 0
    assert report.send_lag.count == 0  # no schedule in a closed loop
    assert "completed" in progress.getvalue()
    assert "closed loop, 4 in flight" in format_report(report)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_dead_port_gives_unavailable_errors_without_hanging() -> None:
    started = time.monotonic()
    report = run_load(
        LoadConfig(
            target=f"127.0.0.1:{_dead_port()}",
            rate=200,
            duration=1.0,
            warmup=0.0,
            clients=1,
            connections=2,
            deadline_ms=500,
        )
    )
    assert time.monotonic() - started < 20
    assert report.overall.ok == 0
    assert report.errors.get("UNAVAILABLE", 0) >= 0.9 * report.overall.sent > 0
    assert report.unfinished == 0
    assert "UNAVAILABLE" in report.error_examples
