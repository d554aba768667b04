"""The control plane's security end to end, with real processes: mutual TLS for edges, ControlClient and
`edgewise ctl`, bearer tokens with two roles, and tokens kept out of every log and every error."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edgewise.client import ClientError, ControlClient, FleetStatus
from edgewise.processes import Processes
from edgewise.v1 import personalizer_pb2 as pb
from edgewise.v1 import personalizer_pb2_grpc as pb_grpc
from tests.conftest import EdgeProcess
from tests.sync_support import (
    ControlProcess,
    ctl,
    edge_address,
    edge_state,
    spawn_edge,
    start_control,
    versions_reach,
    wait_for,
)
from tests.tls_certs import Certs, make_certs

pytestmark = pytest.mark.slow  # every test here runs a control plane and edges as real processes

OPS_TOKEN = "ops-tls-secret-8f3a"
EDGE_TOKEN = "edge-tls-secret-51c9"
WRONG_TOKEN = "edge-wrong-secret-77d2"
TOKENS = {"EDGEWISE_OPS_TOKEN": OPS_TOKEN, "EDGEWISE_EDGE_TOKEN": EDGE_TOKEN}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


class Nodes:
    def __init__(self, tmp: Path, certs: Certs, processes: Processes) -> None:
        self.tmp = tmp
        self.certs = certs
        self.processes = processes
        self.outputs: list[str] = []  # everything ctl printed

    def control(self) -> ControlProcess:
        c = self.certs
        return start_control(
            self.processes,
            self.tmp / "control",
            "--tls-cert",
            str(c.server_cert),
            "--tls-key",
            str(c.server_key),
            "--tls-ca",
            str(c.ca),
            env=TOKENS,
        )

    def tls_flags(self) -> tuple[str, ...]:
        c = self.certs
        return ("--tls-ca", str(c.ca), "--tls-cert", str(c.client_cert), "--tls-key", str(c.client_key))

    def ctl(
        self,
        control: ControlProcess,
        *args: str,
        tls: bool = True,
        token: str = OPS_TOKEN,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        flags = self.tls_flags() if tls else ()
        done = ctl(
            control.address,
            *flags,
            "--timeout",
            "15",
            *args,
            env={"EDGEWISE_OPS_TOKEN": token},
            check=check,
            timeout=60,
        )
        self.outputs += [done.stdout, done.stderr]
        return done

    def ops(self, control: ControlProcess, *, tls: bool = True, token: str = OPS_TOKEN) -> ControlClient:
        """A ControlClient over mutual TLS (`tls=False`: plaintext) with `token`."""
        c = self.certs
        if not tls:
            return ControlClient(control.address, token=token, timeout=15)
        return ControlClient(
            control.address,
            token=token,
            timeout=15,
            tls_ca=c.ca,
            tls_cert=c.client_cert,
            tls_key=c.client_key,
        )

    def refused(self, call: Callable[[], object]) -> ClientError:
        """The ClientError `call` raises; its text joins `outputs`, which must not hold a token."""
        with pytest.raises(ClientError) as refused:
            call()
        self.outputs.append(str(refused.value))
        return refused.value

    def edge(
        self, control: ControlProcess, node: str, *extra: str, env: dict[str, str] | None = None
    ) -> tuple[EdgeProcess, Path]:
        data = self.tmp / node
        edge = spawn_edge(
            self.processes,
            data,
            "--control",
            control.address,
            "--node-id",
            node,
            "--workers",
            "1",
            *extra,
            env={"EDGEWISE_EDGE_TOKEN": EDGE_TOKEN, **(env or {})},
        )
        return edge, data

    def status(self, control: ControlProcess) -> FleetStatus:
        with self.ops(control) as ops:
            return ops.status()


@pytest.fixture
def nodes(tmp_path: Path, certs: Certs, processes: Processes) -> Nodes:
    return Nodes(tmp_path, certs, processes)


def _decide_version(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = pb.DecideRequest(
            user_id="u1", consent=["personalization"], placements=[pb.PlacementRequest(placement_id="home")]
        )
        return int(pb_grpc.PersonalizerStub(channel).Decide(request, timeout=10).snapshot_version)


def _events(edge: EdgeProcess, name: str) -> list[dict[str, object]]:
    return [e for e in edge.log_events() if e.get("event") == name]


def test_mutual_tls_edge_converges_and_ctl_works(nodes: Nodes, bundle_dir: Path, tmp_path: Path) -> None:
    control = nodes.control()
    assert _events_of(control.logs(), "control_serving")[0]["tls"] is True
    ops = nodes.ops(control)
    version = ops.push(bundle_dir).version
    edge, data = nodes.edge(control, "edge-tls", *nodes.tls_flags())
    wait_for(versions_reach([data], version), 40, "the TLS edge at the pushed version")
    rows = {r.node_id: r for r in ops.status().edges}
    assert rows["edge-tls"].applied_version == version and rows["edge-tls"].connected
    v2 = ops.push_delta([{"op": "delete", "profile": "u2"}]).version
    assert v2 > version
    ops.close()
    wait_for(versions_reach([data], v2), 20, "the TLS edge at the delta")
    # ctl with the TLS flags
    assert json.loads(nodes.ctl(control, "history", "--json").stdout)["head_version"] == v2
    assert [e["version"] for e in _events(edge, "sync_applied")] == [version, v2]
    edge_address(edge)
    assert _decide_version(edge.address) == v2


def test_plaintext_clients_fail_cleanly_against_tls(nodes: Nodes, bundle_dir: Path) -> None:
    control = nodes.control()
    with nodes.ops(control) as ops:
        version = ops.push(bundle_dir).version
    # a plaintext client of a TLS port: UNAVAILABLE, soon
    with nodes.ops(control, tls=False) as plain:
        assert nodes.refused(plain.status).code is grpc.StatusCode.UNAVAILABLE
    # ctl without any TLS flag: likewise
    started = time.monotonic()
    for args in (("status",), ("push", str(bundle_dir), "--quiet")):
        done = nodes.ctl(control, *args, tls=False, check=False)
        assert done.returncode == 1, done
        assert done.stderr.startswith("edgewise ctl: UNAVAILABLE"), done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
    assert time.monotonic() - started < 40, "ctl gives up quickly instead of hanging"
    # ctl that trusts the CA but shows no client certificate: mutual TLS refuses it
    c = nodes.certs
    done = ctl(control.address, "--tls-ca", str(c.ca), "--timeout", "15", "status", env=TOKENS, check=False)
    nodes.outputs += [done.stdout, done.stderr]
    assert done.returncode == 1 and done.stderr.startswith("edgewise ctl: UNAVAILABLE"), done.stderr
    assert "Traceback" not in done.stderr
    # an edge without TLS flags never gets data
    edge, data = nodes.edge(control, "edge-plain")
    wait_for(lambda: len(_events(edge, "sync_disconnected")) >= 2, 20, "the plaintext edge's failed tries")
    assert edge.proc.poll() is None and not _events(edge, "sync_applied")
    assert edge_state(data)[0] == 0
    assert "edge-plain" not in [r.node_id for r in nodes.status(control).edges]
    with nodes.ops(control) as ops:
        assert ops.history().head_version == version


def test_wrong_token_edge_gets_nothing_and_edge_token_cannot_push(
    nodes: Nodes, bundle_dir: Path, tmp_path: Path
) -> None:
    control = nodes.control()
    with nodes.ops(control) as ops:
        version = ops.push(bundle_dir).version
    _, good_data = nodes.edge(control, "edge-good", *nodes.tls_flags())
    token_file = tmp_path / "wrong.token"
    token_file.write_text(WRONG_TOKEN + "\n")
    wrong, wrong_data = nodes.edge(control, "edge-wrong", *nodes.tls_flags(), "--token-file", str(token_file))
    wait_for(versions_reach([good_data], version), 40, "the edge with the right token at the version")
    wait_for(
        lambda: (
            len([e for e in _events(wrong, "sync_disconnected") if "UNAUTHENTICATED" in str(e["error"])]) >= 2
        ),
        20,
        "the wrong-token edge refused twice with UNAUTHENTICATED",
    )
    assert wrong.proc.poll() is None and not _events(wrong, "sync_applied")
    assert edge_state(wrong_data)[0] == 0, "the wrong-token edge holds no data"
    rows = {r.node_id: r for r in nodes.status(control).edges}
    assert set(rows) == {"edge-good"} and rows["edge-good"].applied_version == version
    assert "unknown token" in control.logs()

    # the edge token is not an ops token: no push, no delta, no status
    with nodes.ops(control, token=EDGE_TOKEN) as edge_ops:
        for call in (
            lambda: edge_ops.push(bundle_dir),
            lambda: edge_ops.push_delta([{"op": "delete", "profile": "u3"}]),
            edge_ops.status,
        ):
            assert nodes.refused(call).code is grpc.StatusCode.PERMISSION_DENIED
    with nodes.ops(control, token=WRONG_TOKEN) as wrong_ops:
        assert nodes.refused(wrong_ops.status).code is grpc.StatusCode.UNAUTHENTICATED
    done = nodes.ctl(control, "status", token=EDGE_TOKEN, check=False)
    assert done.returncode == 1 and done.stderr.startswith("edgewise ctl: PERMISSION_DENIED"), done.stderr
    with nodes.ops(control) as ops:
        assert ops.history().head_version == version

    # no token appears in any log file or ctl output
    logs = sorted(nodes.processes.workdir.glob("*.log"))
    assert len(logs) >= 3
    texts = [p.read_text(errors="replace") for p in logs] + nodes.outputs
    for token in (OPS_TOKEN, EDGE_TOKEN, WRONG_TOKEN):
        names = [*map(str, logs), *["ctl output or client error"] * len(nodes.outputs)]
        leaks = [name for name, text in zip(names, texts, strict=True) if token in text]
        assert not leaks, f"a token leaked into {leaks}"


def _events_of(text: str, name: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") == name]
