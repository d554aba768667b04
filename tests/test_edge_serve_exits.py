"""`edgewise edge serve` exits early, in-process: every way out before serving returns its status, logs
why, stops the syncer before the store closes, closes the store exactly once (it reopens at once) and
puts the signal handlers back. SIGTERM's exit 0 is tested on a real process (test_edge_server.py)."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edgewise.edge.serve as serve_module
from edgewise.core.store import Store
from edgewise.edge.config import EdgeConfig, load_config
from edgewise.edge.serve import load_bundle_file, serve
from edgewise.edge.sync_setup import NodeSync

UNBINDABLE = "192.0.2.1:0"  # TEST-NET-1: not an address of this host


class Released:
    """What the node released, in order: its store (each close) and its syncer (each stop)."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.stores = 0


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> Released:
    seen = Released()

    class CountingStore(Store):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            seen.stores += 1

        def close(self) -> None:
            seen.order.append("store closed")
            super().close()

    real_stop = NodeSync.stop

    def stop(self: NodeSync) -> None:
        seen.order.append("syncer stopped")
        real_stop(self)

    monkeypatch.setattr(serve_module, "Store", CountingStore)
    monkeypatch.setattr(NodeSync, "stop", stop)
    # the test process keeps its own logging (caplog); serve() would install the JSON handler
    monkeypatch.setattr(serve_module, "configure_logging", lambda level: None)
    return seen


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other socket listens on (without SO_REUSEPORT, so nobody can share it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def config_of(data: Path, **flags: str) -> EdgeConfig:
    values: dict[str, object] = {"data.dir": str(data), "server.workers": "1", "server.listen": "127.0.0.1:0"}
    values.update({key.replace("__", "."): value for key, value in flags.items()})
    config, _ = load_config(None, {}, values)
    return config


def loaded(data: Path, bundle: Path) -> Path:
    with Store(data) as store:
        assert load_bundle_file(store, bundle)
    return data


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == serve_module.log.name]


def check_released(data: Path, released: Released, *, syncer: bool = False) -> None:
    assert released.stores == 1
    expected = ["syncer stopped", "store closed"] if syncer else ["store closed"]
    assert released.order == expected  # each once; the syncer (a writer) before the store closes
    with Store(data) as again:  # closed, so it opens again in this very process
        assert again.version() >= 0


def run_serve(config: EdgeConfig) -> int:
    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)]
    code = serve(config)
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)] == handlers
    return code


def test_nothing_to_serve_exits_2(
    tmp_path: Path, released: Released, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    assert run_serve(config_of(data)) == 2
    assert "no_snapshot" in events(caplog)
    check_released(data, released)


def test_a_listen_failure_exits_2(
    tmp_path: Path, bundle_dir: Path, released: Released, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = loaded(tmp_path / "data", bundle_dir)
    assert run_serve(config_of(data, server__listen=UNBINDABLE)) == 2
    assert "listen_failed" in events(caplog)
    check_released(data, released)


def test_a_listen_failure_with_a_syncer_stops_it_before_the_store_closes(
    tmp_path: Path, bundle_dir: Path, released: Released, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = loaded(tmp_path / "data", bundle_dir)  # a snapshot on disk: it serves before the control answers
    config = config_of(data, server__listen=UNBINDABLE, sync__control="127.0.0.1:1", sync__node_id="exits")
    assert run_serve(config) == 2
    assert "listen_failed" in events(caplog)
    check_released(data, released, syncer=True)


def test_a_syncer_that_cannot_start_exits_2(
    tmp_path: Path, released: Released, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    config = config_of(data, sync__control="127.0.0.1:1", sync__token_file=str(tmp_path / "no-such-token"))
    assert run_serve(config) == 2
    assert "sync_unavailable" in events(caplog)
    check_released(data, released)


def test_a_taken_metrics_port_exits_2(
    tmp_path: Path, bundle_dir: Path, taken_port: int, released: Released, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = loaded(tmp_path / "data", bundle_dir)
    assert run_serve(config_of(data, metrics__listen=f"127.0.0.1:{taken_port}")) == 2
    assert "metrics_listen_failed" in events(caplog)
    check_released(data, released)


def test_workers_on_a_taken_port_exit_2(
    tmp_path: Path, bundle_dir: Path, taken_port: int, released: Released, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = loaded(tmp_path / "data", bundle_dir)
    assert run_serve(config_of(data, server__listen=f"127.0.0.1:{taken_port}")) == 2
    # The node finds the port taken before it opens its store, so it loads nothing into a data
    # directory another node may be serving (issue 16, item 9): nothing was acquired, nothing released.
    assert "listen_failed" in events(caplog) and "start_failed" not in events(caplog)
    assert released.stores == 0 and released.order == []
    with Store(data) as again:
        assert again.version() >= 0
