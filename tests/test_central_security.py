"""TLS and credentials between a central-tier replica and NATS (docs/central.md, "Security";
`sync/nats_security.py`): a real 3-server cluster whose client ports are TLS with verified client
certificates and a user and password (or a token), started from the installed binary
(`edgewise.nats_cluster`, certificates made with the openssl CLI: tests/tls_certs.py).

- A replica given the CA, its client certificate and the user (password in a file) connects, takes a push
  and serves it; one given a token connects to a cluster that wants that token; one given a `.creds`
  file connects to a cluster in operator mode (decentralized JWT auth: tests/nats_jwt.py).
- A wrong password, a missing token, a CA that did not sign the servers' certificate, no client
  certificate for servers that want one, a missing file, a TLS setting against a server without TLS:
  each stops the start with exit 2 and a message naming it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tls_certs import Certs, make_certs

from edgewise.client import ControlClient
from edgewise.nats_cluster import NatsCluster, NatsTls
from edgewise.processes import Processes
from tests.nats_support import nats_cluster, require_nats  # noqa: F401  (fixture)
from tests.sync_support import start_control

pytestmark = pytest.mark.slow

OPS = {"EDGEWISE_OPS_TOKEN": "ops-secret-t"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("nats-tls"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[NatsCluster]:
    """Three servers: client ports TLS, client certificates verified, user `edgewise` / `s3cret-pw`."""
    require_nats()
    tls = NatsTls(certs.server_cert, certs.server_key, certs.ca)
    workdir = tmp_path_factory.mktemp("nats-secure")
    with NatsCluster(workdir, size=3, tls=tls, user="edgewise", password="s3cret-pw").start() as cluster:
        yield cluster


def _serve(data: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edgewise.cli", "control", "serve", "--data", str(data)]
    cmd += ["--listen", "127.0.0.1:0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False, env=env)


def _tls_args(certs: Certs) -> list[str]:
    return [
        "--nats-ca",
        str(certs.ca),
        "--nats-cert",
        str(certs.client_cert),
        "--nats-key",
        str(certs.client_key),
    ]


def test_a_replica_connects_over_tls_with_a_user_and_takes_a_push(
    tls_cluster: NatsCluster, certs: Certs, bundle_dir: Path, tmp_path: Path
) -> None:
    password = tmp_path / "nats-password"
    password.write_text("s3cret-pw\n")
    args = ["--nats", tls_cluster.url_list, *_tls_args(certs), "--nats-user", "edgewise"]
    with Processes(tmp_path / "run", env=OPS) as processes:
        replica = start_control(
            processes, tmp_path / "r", *args, "--nats-password-file", str(password), env=OPS, timeout=60
        )
        with ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
            version = ops.push(bundle_dir).version
            assert version >= 1
            assert ops.history(limit=5).commits[0].version == version


def test_a_wrong_password_stops_the_start(tls_cluster: NatsCluster, certs: Certs, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "EDGEWISE_NATS_PASSWORD": "not-the-password"}
    args = ["--nats", tls_cluster.url_list, *_tls_args(certs), "--nats-user", "edgewise"]
    done = _serve(tmp_path / "r", *args, env=env)
    assert done.returncode == 2, done.stderr
    assert "the NATS servers refused the login (with user 'edgewise')" in done.stderr


def test_a_ca_that_did_not_sign_the_servers_stops_the_start(
    tls_cluster: NatsCluster, certs: Certs, tmp_path: Path
) -> None:
    other = make_certs(tmp_path / "other", ca_name="another CA")
    done = _serve(tmp_path / "r", "--nats", tls_cluster.url_list, "--nats-ca", str(other.ca))
    assert done.returncode == 2, done.stderr
    assert f"the NATS server's certificate is not trusted by nats.ca = {other.ca}" in done.stderr


def test_no_client_certificate_for_servers_that_verify_clients_stops_the_start(
    tls_cluster: NatsCluster, certs: Certs, tmp_path: Path
) -> None:
    import os

    env = {**os.environ, "EDGEWISE_NATS_PASSWORD": "s3cret-pw"}
    args = ["--nats", tls_cluster.url_list, "--nats-ca", str(certs.ca), "--nats-user", "edgewise"]
    done = _serve(tmp_path / "r", *args, env=env)
    assert done.returncode == 2, done.stderr
    assert "the NATS servers verify clients and want a client certificate: set nats.cert" in done.stderr


def test_a_missing_file_stops_the_start_before_connecting(tmp_path: Path) -> None:
    require_nats()
    missing = tmp_path / "nope.pem"
    done = _serve(tmp_path / "r", "--nats", "nats://127.0.0.1:9", "--nats-ca", str(missing))
    assert done.returncode == 2, done.stderr
    assert f"nats.ca = {missing}: cannot read it" in done.stderr
    done = _serve(tmp_path / "r", "--nats", "nats://127.0.0.1:9", "--nats-user", "u")
    assert done.returncode == 2, done.stderr
    assert "nats.user = 'u' needs a password" in done.stderr


def test_a_replica_logs_in_with_a_token(certs: Certs, bundle_dir: Path, tmp_path: Path) -> None:
    require_nats()
    token = tmp_path / "nats-token"
    token.write_text("t0ken-for-nats")
    with NatsCluster(tmp_path / "nats", size=3, token="t0ken-for-nats").start() as cluster:
        done = _serve(tmp_path / "r0", "--nats", cluster.url_list)  # no token: refused
        assert done.returncode == 2, done.stderr
        assert "the NATS servers refused the login (no credentials given)" in done.stderr
        # TLS asked for, and the servers do not use it: the replica does not go on in the clear
        args = ["--nats", cluster.url_list, "--nats-ca", str(certs.ca), "--nats-token-file", str(token)]
        done = _serve(tmp_path / "r1", *args)
        assert done.returncode == 2, done.stderr
        assert "does not use TLS, and TLS is configured" in done.stderr
        with Processes(tmp_path / "run", env=OPS) as processes:
            replica = start_control(
                processes,
                tmp_path / "r",
                "--nats",
                cluster.url_list,
                "--nats-token-file",
                str(token),
                env=OPS,
                timeout=60,
            )
            with ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
                assert ops.push(bundle_dir).version >= 1


def test_a_replica_logs_in_with_a_creds_file(bundle_dir: Path, tmp_path: Path) -> None:
    require_nats()
    if importlib.util.find_spec("nkeys") is None:
        pytest.skip("the nkeys package is not installed: pip install 'edgewise[nats]'")
    from tests.nats_jwt import decentralized_auth

    auth = decentralized_auth()
    creds = tmp_path / "replica.creds"
    creds.write_text(auth.creds)
    with NatsCluster(tmp_path / "nats", size=3, config=auth.server_config).start() as cluster:
        done = _serve(tmp_path / "r0", "--nats", cluster.url_list)  # no credentials: refused
        assert done.returncode == 2, done.stderr
        assert "the NATS servers refused the login (no credentials given)" in done.stderr
        with Processes(tmp_path / "run", env=OPS) as processes:
            args = ["--nats", cluster.url_list, "--nats-creds", str(creds)]
            replica = start_control(processes, tmp_path / "r", *args, env=OPS, timeout=60)
            with ControlClient(replica.address, token=OPS["EDGEWISE_OPS_TOKEN"], timeout=60) as ops:
                assert ops.push(bundle_dir).version >= 1
