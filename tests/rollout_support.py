"""A real control plane in process for the tests of the edge's side of canary and shadow rollouts.

`RecordingControlPlane` is the real `ControlPlaneService` (a real `ControlStore`, its commit cache and
fan-out) on a real gRPC server on a free loopback port, which also records every heartbeat its edges
send and can send them a shadow candidate: a real full snapshot of a bundle, encoded by the commit cache
(`CommitCache.snapshot`) and flagged `shadow` (chunks and commit marker), as the control plane's side of
a shadow rollout sends it (docs/rollouts.md). Edges follow it as real processes.

`failing_bundle` makes a bundle whose every item placement falls back (MODEL_UNAVAILABLE): the "bad
version" of the rollout tests.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from edgewise.sync.bundle import load_bundle
from edgewise.sync.changes import bundle_records
from edgewise.sync.commit_cache import CommitCache
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore
from edgewise.sync.shard import parse_shard
from edgewise.v1 import sync_pb2, sync_pb2_grpc
from tests.conftest import rewrite_manifest


@dataclass(frozen=True)
class Beat:
    node: str
    heartbeat: sync_pb2.Heartbeat
    at: float  # time.monotonic() when it arrived


class RecordingControlPlane(ControlPlaneService):
    """The real control plane servicer, recording heartbeats and sending shadow candidates on demand."""

    address = ""

    def __init__(self, store: ControlStore, **kwargs: object) -> None:
        super().__init__(store, **kwargs)  # type: ignore[arg-type]
        self.beats: list[Beat] = []
        self._pending: dict[str, list[sync_pb2.SyncMessage]] = {}
        self._lock = threading.Lock()

    def Subscribe(
        self, request_iterator: Iterator[sync_pb2.SubscribeRequest], context: grpc.ServicerContext
    ) -> Iterator[sync_pb2.SyncMessage]:
        node = [""]

        def recorded() -> Iterator[sync_pb2.SubscribeRequest]:
            for request in request_iterator:
                kind = request.WhichOneof("kind")
                if kind == "hello":
                    node[0] = request.hello.node_id
                elif kind == "heartbeat":
                    with self._lock:
                        self.beats.append(Beat(node[0], request.heartbeat, time.monotonic()))
                yield request

        for message in super().Subscribe(recorded(), context):
            yield message
            if message.WhichOneof("kind") == "heartbeat":  # between commits: send what is pending
                with self._lock:
                    pending = self._pending.pop(node[0], [])
                yield from pending

    def send(self, node: str, messages: list[sync_pb2.SyncMessage]) -> None:
        """Send `messages` on `node`'s stream after its next heartbeat from here."""
        with self._lock:
            self._pending.setdefault(node, []).extend(messages)

    def push(self, bundle: Path) -> int:
        """Make `bundle` the control plane's state (as `ctl push` does); its version."""
        info = self.store.replace_all(bundle_records(load_bundle(bundle)), kind="push", description="test")
        assert info is not None
        self.cache.notify()
        return info.version

    def heartbeats(self, node: str) -> list[Beat]:
        with self._lock:
            return [b for b in self.beats if b.node == node]

    def wait_heartbeat(
        self, node: str, predicate: Callable[[sync_pb2.Heartbeat], bool], timeout: float, what: str
    ) -> sync_pb2.Heartbeat:
        deadline = time.monotonic() + timeout
        while True:
            for beat in reversed(self.heartbeats(node)):
                if predicate(beat.heartbeat):
                    return beat.heartbeat
            if time.monotonic() > deadline:
                last = self.heartbeats(node)[-1:] or None
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; last heartbeat: {last}")
            time.sleep(0.05)


@contextmanager
def recording_control_plane(data: Path, heartbeat_seconds: float = 0.2) -> Iterator[RecordingControlPlane]:
    """A `RecordingControlPlane` over a control store in `data`, served on 127.0.0.1 (no tokens)."""
    store = ControlStore(data)
    service = RecordingControlPlane(store, heartbeat_seconds=heartbeat_seconds)
    pool = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="control")
    server = grpc.server(pool)
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    service.address = f"127.0.0.1:{port}"
    try:
        yield service
    finally:
        server.stop(0).wait()
        pool.shutdown(
            wait=True
        )  # the handlers end (a Subscribe at its next heartbeat) before the store closes
        store.close()


def item_delta(path: Path, item: str) -> Path:
    """A delta file at `path` upserting one item available everywhere."""
    path.write_text(
        json.dumps({"op": "upsert", "item": {"id": item, "category": "x/y", "price": 2.5, "regions": ["*"]}})
        + "\n"
    )
    return path


def shadow_messages(bundle: Path | None, version: int, sample: float) -> list[sync_pb2.SyncMessage]:
    """A shadow commit of `version`: the full snapshot of `bundle` for every shard, encoded by the commit
    cache and flagged shadow (chunks and marker), deciding `sample` of the requests again; `bundle`
    None: the shadow commit with 0 chunks that drops the candidate."""
    if bundle is None:
        marker = sync_pb2.Commit(version=version, snapshot=True, shadow=True, kind="push", chunks=0)
        return [sync_pb2.SyncMessage(commit=marker)]
    with tempfile.TemporaryDirectory(prefix="edgewise-shadow-") as tmp:
        store = ControlStore(Path(tmp), map_size=1 << 30)
        try:
            info = store.replace_all(bundle_records(load_bundle(bundle)), kind="push")
            assert info is not None
            messages = list(CommitCache(store).snapshot(parse_shard("all")))
        finally:
            store.close()
    for message in messages:
        if message.WhichOneof("kind") == "chunk":
            message.chunk.version = version
            message.chunk.shadow = True  # the digest covers the changes only
        else:
            message.commit.version = version
            message.commit.shadow = True
            message.commit.shadow_sample = sample
            message.commit.kind = "push"
    return messages


def failing_bundle(source: Path, out: Path) -> Path:
    """A copy of `source` in which every item placement falls back: their campaigns and defaults serve
    trending, and the bundle has no daily counts (FallbackReason.MODEL_UNAVAILABLE)."""
    shutil.copytree(source, out)
    rules = json.loads((out / "rules.json").read_text())
    for placement in rules["placements"].values():
        if placement["kind"] == "items":
            placement["campaigns"] = [
                {"id": "trending_only", "serve": {"strategy": "trending", "half_life_days": 3}}
            ]
            placement["default"] = {"strategy": "trending", "half_life_days": 3}
    (out / "rules.json").write_text(json.dumps(rules))
    (out / "models" / "item_daily_counts.npy").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]["models/item_daily_counts.npy"]
    manifest.pop("daily_counts_end", None)
    (out / "manifest.json").write_text(json.dumps(manifest))
    rewrite_manifest(out, version=int(manifest.get("bundle_version", 1)) + 1)
    return out
