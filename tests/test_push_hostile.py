"""Hostile push content (issue 16, item 11): a path the staging directory cannot hold is refused with
INVALID_ARGUMENT naming it, no message shows a server path, and the staging directory a control plane
killed mid-push left behind is removed when it starts again."""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore
from edgewise.v1 import sync_pb2, sync_pb2_grpc
from tests.sync_support import ControlProcess, control_planes, wait_for

OPS = {"EDGEWISE_OPS_TOKEN": "ops-push-1"}
BUNDLE = sync_pb2.PUSH_KIND_BUNDLE


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ControlPlaneService, str]]:
    store = ControlStore(tmp_path / "control", map_size=64 << 20)
    service = ControlPlaneService(store)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()
        store.close()


def _push(address: str, files: list[tuple[str, bytes]], kind: int = BUNDLE) -> grpc.RpcError:
    """Push `files` (path, content) as one chunk each; the error the push ends with."""
    chunks = [
        sync_pb2.PushChunk(kind=kind if n == 0 else 0, path=path, data=data)  # type: ignore[arg-type]
        for n, (path, data) in enumerate(files)
    ]
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
        sync_pb2_grpc.ControlPlaneStub(channel).Push(iter(chunks), timeout=10)
    return refused.value


HOSTILE = {
    "the bundle directory itself": ([(".", b"{}")], "'.'"),
    "a NUL in a path": ([("items\x00.jsonl", b"{}")], "'items\\x00.jsonl'"),
    "a file, then a file below it": ([("a", b"1"), ("a/b", b"2")], "'a/b'"),
    "a file where a directory is": ([("a/b", b"1"), ("a", b"2")], "'a'"),
    "an empty component": ([("models//x.npy", b"1")], "'models//x.npy'"),
    "a trailing slash": ([("models/", b"1")], "'models/'"),
    "a dot component": ([("./manifest.json", b"1")], "'./manifest.json'"),
    "a parent component": ([("../escape", b"1")], "'../escape'"),
    "an absolute path": ([("/etc/passwd", b"1")], "'/etc/passwd'"),
    "a component too long for a file system": ([("x" * 300, b"1")], "xxxx"),
    "a file sent twice": ([("a", b"1"), ("b", b"2"), ("a", b"3")], "'a'"),
}


@pytest.mark.parametrize(("files", "named"), HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_path_is_refused_naming_it_without_server_paths(
    served: tuple[ControlPlaneService, str], tmp_path: Path, files: list[tuple[str, bytes]], named: str
) -> None:
    service, address = served
    error = _push(address, files)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    details = str(error.details())
    assert named in details and "bad file path in push" in details
    _no_server_path(details, tmp_path)
    assert not any(service.staging_root.iterdir())  # nothing left staged


def test_a_push_that_is_no_bundle_is_refused_without_server_paths(
    served: tuple[ControlPlaneService, str], tmp_path: Path
) -> None:
    error = _push(served[1], [("manifest.json/readme.txt", b"hello")])  # manifest.json: a directory
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "manifest.json" in str(error.details())
    _no_server_path(str(error.details()), tmp_path)


def _no_server_path(details: str, tmp_path: Path) -> None:
    assert str(tmp_path) not in details, details
    assert "edgewise-push-" not in details and tempfile.gettempdir() + "/" not in details, details


# --- a control plane killed mid-push ---------------------------------------------------------------------


@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[Callable[..., ControlProcess]]:
    # Where a control plane of any version stages a push: its data directory, or the temporary directory.
    (tmp_path / "tmp").mkdir()
    with control_planes(tmp_path, {**OPS, "TMPDIR": str(tmp_path / "tmp")}) as start:
        yield start


def _staged(tmp_path: Path, data: Path) -> list[Path]:
    """The staging directories of pushes in progress (or left behind)."""
    places = [tmp_path / "tmp", data / "push-staging"]
    return [d for place in places if place.is_dir() for d in place.iterdir()]


@pytest.mark.slow
def test_a_push_staged_when_the_control_plane_was_killed_is_removed_at_the_next_start(
    control_factory: Callable[..., ControlProcess], tmp_path: Path
) -> None:
    data = tmp_path / "control"
    control = control_factory(data)
    release = threading.Event()

    def chunks() -> Iterator[sync_pb2.PushChunk]:
        yield sync_pb2.PushChunk(kind=BUNDLE, path="manifest.json", data=b'{"format": ')
        release.wait(30)  # the rest never comes: the control plane is killed first

    def push() -> None:
        # the control plane dies under it
        with grpc.insecure_channel(control.address) as channel, contextlib.suppress(grpc.RpcError):
            sync_pb2_grpc.ControlPlaneStub(channel).Push(
                chunks(), metadata=(("authorization", f"Bearer {OPS['EDGEWISE_OPS_TOKEN']}"),), timeout=30
            )

    pushing = threading.Thread(target=push, daemon=True)
    pushing.start()
    try:
        wait_for(lambda: any(any(d.iterdir()) for d in _staged(tmp_path, data)), 10, "the push staged")
        control.kill()  # SIGKILL: no cleanup runs
    finally:
        release.set()
        pushing.join(10)
    left = _staged(tmp_path, data)
    assert left, "the killed control plane left its staging directory"

    again = control_factory(data)
    assert _staged(tmp_path, data) == []
    cleaned = [e for e in again.log_events() if e.get("event") == "push_staging_cleaned"]
    assert len(cleaned) == 1 and cleaned[0]["entries"] == len(left)


def test_a_push_the_control_store_has_no_room_for_names_no_server_path(
    tmp_path: Path, bundle_dir: Path
) -> None:
    from edgewise.client import ClientError, ControlClient

    store = ControlStore(tmp_path / "control", map_size=256 << 10)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(ControlPlaneService(store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with ControlClient(f"127.0.0.1:{port}", timeout=30) as client, pytest.raises(ClientError) as refused:
            client.push(bundle_dir)
        assert "full" in str(refused.value)
        _no_server_path(str(refused.value), tmp_path)
    finally:
        server.stop(0).wait()
        store.close()
