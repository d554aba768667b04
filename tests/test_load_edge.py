"""`edgewise bench load` against real servers: a real edge node (users read from it, counts that add up,
the HdrHistogram log, payload files, timeouts) and a TLS server that wants a bearer token."""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import process_group, start_edge
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
from tls_certs import Certs, tls_certs  # noqa: F401 (a fixture)

from edgewise.bench import cli
from edgewise.bench.histogram import HIGHEST_NS, LOWEST_NS, SIGNIFICANT_DIGITS
from edgewise.bench.load import SERVICE, LoadConfig, LoadError, load_payload, parse_mix, run_load
from edgewise.sync.auth import server_credentials
from edgewise.v1 import personalizer_pb2 as pb

BUNDLE_USERS = 400  # conftest's bundle_dir


@pytest.fixture(scope="module")
def edge_address(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[str]:
    """One edge node (1 worker) on conftest's 400-user bundle for this module's load runs."""
    root = tmp_path_factory.mktemp("load-edge")
    with process_group(root / "run") as processes:
        edge = start_edge(processes, root / "data", bundle_dir, "--workers", "1")
        yield edge.address
        edge.stop(signal.SIGTERM, grace=20)


def _adds_up(part: dict[str, Any]) -> None:
    assert part["sent"] == part["ok"] + part["errors"] + part["timeouts"] + part["unfinished"]
    assert part["completed"] == part["ok"] + part["errors"] + part["timeouts"]
    assert sum(part["errors_by_code"].values()) == part["errors"] + part["timeouts"]
    assert part["latency"]["count"] == part["ok"]


def _log_totals(path: Path) -> dict[str | None, HdrHistogram]:
    """The log's interval histograms summed per tag (None: the untagged lines), read by `hdrh`'s reader."""
    reader = HistogramLogReader(str(path), HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS))
    totals: dict[str | None, HdrHistogram] = {}
    while (h := reader.get_next_interval_histogram()) is not None:
        tag = h.get_tag()
        totals.setdefault(tag, HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)).add(h)
    return totals


@pytest.mark.slow
def test_a_run_against_an_edge_reads_its_users_counts_add_up_and_logs_hdr_intervals(
    edge_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file, log_file = tmp_path / "report.json", tmp_path / "run.hlog"
    code = cli.main(
        [
            "load", "--target", edge_address, "--rate", "150", "--duration", "2", "--warmup", "0.3",
            "--clients", "1", "--json", str(report_file), "--hdr-log", str(log_file), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(report_file.read_text())
    # Users: what the node holds, not the 100k default.
    assert report["config"]["users"] == BUNDLE_USERS and report["config"]["users_source"] == "target"
    assert f"users u0..u{BUNDLE_USERS - 1} (target)" in out
    # Counts add up, per RPC and overall, and the table prints the same sums.
    for part in [report["overall"], *report["rpcs"].values()]:
        _adds_up(part)
    overall = report["overall"]
    assert overall["sent"] == sum(r["sent"] for r in report["rpcs"].values())
    assert overall["ok"] > 200 and overall["errors"] == 0
    line = next(x for x in out.splitlines() if x.startswith("all "))
    assert line.split() == [
        "all", str(overall["sent"]), "=", str(overall["ok"]), "+", "0", "+", str(overall["timeouts"]), "+",
        str(overall["unfinished"]),
    ]  # fmt: skip
    assert report["achieved_rate"] == pytest.approx(overall["completed"] / report["measured_s"], abs=0.01)
    assert report["ok_rate"] <= report["achieved_rate"] <= report["sent_rate"]
    # The whole spectrum.
    latency = overall["latency"]
    keys = ["p50_us", "p75_us", "p90_us", "p95_us", "p99_us", "p99.9_us", "p99.99_us", "max_us"]
    assert all(0 < latency[a] <= latency[b] for a, b in itertools.pairwise(keys))
    # The HdrHistogram log: its intervals add up to the report's histograms, overall and per RPC.
    text = log_file.read_text()
    assert text.startswith("#[edgewise bench load") and "#[Histogram log format version 1.3]" in text
    assert '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"' in text
    totals = _log_totals(log_file)
    assert set(totals) == {None, "Decide", "Track"}
    for tag, h in totals.items():
        part = overall if tag is None else report["rpcs"][tag]
        assert h.get_total_count() == part["ok"]
        assert h.get_value_at_percentile(99) / 1000 == pytest.approx(part["latency"]["p99_us"], abs=0.001)
        assert h.get_max_value() / 1000 == pytest.approx(part["latency"]["max_us"], abs=0.001)


@pytest.mark.slow
def test_deadline_exceeded_calls_count_as_timeouts(edge_address: str) -> None:
    report = run_load(
        LoadConfig(
            target=edge_address,
            concurrency=2,
            duration=1.0,
            warmup=0.2,
            clients=1,
            mix=parse_mix("decide=1"),
            users=BUNDLE_USERS,
            deadline_ms=0.01,  # expires before the call leaves the client
        )
    )
    o = report.overall
    assert o.timeouts > 0
    # A loaded edge may shed a call that arrives with almost none of its time left (RESOURCE_EXHAUSTED):
    # an error, not a timeout.
    assert set(o.failures) <= {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
    assert o.error_count == o.failures.get("RESOURCE_EXHAUSTED", 0)
    assert o.sent == o.ok + o.error_count + o.timeouts + o.unfinished
    assert report.errors == dict(o.failures)
    _adds_up(report.to_dict()["overall"])
    assert report.users_source == "flag"


@pytest.mark.slow
def test_decide_requests_from_a_payload_file(edge_address: str, tmp_path: Path) -> None:
    payload = tmp_path / "decide.jsonl"
    payload.write_text(
        '{"userId": "u1", "consent": ["personalization"],'
        ' "placements": [{"placementId": "home", "count": 4}]}\n'
        "\n"
        '{"user_id": "u2", "context": {"country": "DE"}, "placements": [{"placement_id": "hero_banner"}]}\n'
    )
    assert len(load_payload(str(payload))) == 2
    report = run_load(
        LoadConfig(
            target=edge_address,
            concurrency=2,
            duration=0.8,
            warmup=0.2,
            clients=2,
            mix=parse_mix("decide=1"),
            payload=str(payload),
        )
    )
    assert report.overall.ok == report.overall.sent > 20
    assert report.users_source == "payload"  # no probing: the file says who
    # A request the edge refuses shows as its status code: the file's requests are what is sent.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"userId": "u1", "placements": [{"placementId": "nowhere"}]}\n')
    refused = run_load(
        LoadConfig(
            target=edge_address, concurrency=1, duration=0.5, warmup=0.0, clients=1,
            mix=parse_mix("decide=1"), payload=str(bad),
        )
    )  # fmt: skip
    assert refused.overall.ok == 0 and set(refused.errors) == {"INVALID_ARGUMENT"}


def test_a_payload_file_that_does_not_parse_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"userId": "u1"}\n{"userID": "u2"}\n')
    with pytest.raises(LoadError, match=r"line 2: not a DecideRequest"):
        load_payload(str(path))
    path.write_text("\n\n")
    with pytest.raises(LoadError, match="no requests"):
        load_payload(str(path))
    with pytest.raises(LoadError, match="No such file"):
        load_payload(str(tmp_path / "missing.jsonl"))


# -- TLS and a bearer token ------------------------------------------------------------------------------

TOKEN = "load-test-token-1"


class _TokenPersonalizer(grpc.GenericRpcHandler):
    """A Personalizer that answers only calls carrying `authorization: Bearer TOKEN` (as a gateway would)."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(details.method)
        if method not in (f"/{SERVICE}/Decide", f"/{SERVICE}/Track"):
            return None
        metadata = dict(details.invocation_metadata or ())
        authorized = metadata.get("authorization") == f"Bearer {TOKEN}"
        reply = (
            pb.DecideResponse(decision_id="d") if method.endswith("Decide") else pb.TrackResponse(accepted=1)
        )

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            if not authorized:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            return reply.SerializeToString()

        return grpc.unary_unary_rpc_method_handler(handle)


@pytest.fixture
def tls_target(tls_certs: Certs) -> Iterator[str]:  # noqa: F811 (the fixture)
    server = grpc.server(futures.ThreadPoolExecutor(8), handlers=[_TokenPersonalizer()])
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(tls_certs.server_cert, tls_certs.server_key, None)
    )
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.mark.slow
def test_tls_and_a_bearer_token_reach_a_target_that_wants_them(
    tls_target: str,
    tls_certs: Certs,  # noqa: F811 (the fixture)
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    common = [
        "load", "--target", tls_target, "--concurrency", "2", "--duration", "0.8", "--warmup", "0.2",
        "--clients", "1", "--users", "10", "--tls-ca", str(tls_certs.ca), "--quiet", "--json",
    ]  # fmt: skip
    assert cli.main([*common, "--token-file", str(token_file)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["overall"]["ok"] == report["overall"]["sent"] > 10
    assert report["config"]["token"] is True and TOKEN not in captured.out + captured.err
    # Without the token: every call is refused, and says why.
    assert cli.main(common) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["overall"]["ok"] == 0
    assert report["errors_by_code"] == {"UNAUTHENTICATED": report["overall"]["sent"]}
    assert "bearer token" in report["error_examples"]["UNAUTHENTICATED"]
