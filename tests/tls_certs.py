"""Test certificates made with the `openssl` command-line tool: a CA, a server certificate for
127.0.0.1/localhost and a client certificate, all EC P-256, PEM, valid for two days.

    from tls_certs import Certs, make_certs, tls_certs  # noqa: F401 (tls_certs is a fixture)

`make_certs(tmp_path)` writes them into a folder; the session fixture `tls_certs` makes them once.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

# A self-contained configuration: the system's openssl.cnf is not read, so its defaults do not matter.
_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Certs:
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    proc = subprocess.run(
        [OPENSSL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")


def _key_and_csr(folder: Path, config: Path, name: str, cn: str) -> tuple[Path, Path]:
    key, csr = folder / f"{name}.key", folder / f"{name}.csr"
    _openssl(
        "req", "-config", config, "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={cn}",
        cwd=folder,
    )  # fmt: skip
    return key, csr


def _sign(folder: Path, config: Path, csr: Path, ca: Path, ca_key: Path, name: str, serial: int) -> Path:
    cert = folder / f"{name}.pem"
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", str(serial),
        "-days", "2", "-sha256", "-extfile", config, "-extensions", name, "-out", cert,
        cwd=folder,
    )  # fmt: skip
    return cert


def make_certs(tmp_path: Path, *, ca_name: str = "edgewise test CA") -> Certs:
    """Write a CA, a server certificate (SAN 127.0.0.1, localhost) and a client certificate into
    `tmp_path` (created if needed). Each call makes a new, independent CA."""
    folder = Path(tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "openssl.cnf"
    config.write_text(_CONFIG)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    _openssl(
        "req", "-config", config, "-x509", "-new", "-newkey", "ec", "-pkeyopt",
        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
        "-sha256", "-subj", f"/CN={ca_name}", "-extensions", "ca",
        cwd=folder,
    )  # fmt: skip
    server_key, server_csr = _key_and_csr(folder, config, "server", "localhost")
    server_cert = _sign(folder, config, server_csr, ca, ca_key, "server", 2)
    client_key, client_csr = _key_and_csr(folder, config, "client", "edgewise test client")
    client_cert = _sign(folder, config, client_csr, ca, ca_key, "client", 3)
    return Certs(ca, ca_key, server_cert, server_key, client_cert, client_key)


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """One set of test certificates for the session (read-only)."""
    return make_certs(tmp_path_factory.mktemp("tls"))
