"""The edge's syncer: the node's single writer of replicated data when it follows a control plane.

It subscribes with the node id, shard and the store's applied version, applies every commit that
arrives in one LMDB write transaction (`Store.apply_replicated`, which records the version) and ACKs it; a
commit that does not arrive whole (digest, order, count) or does not make a valid state (records that
do not decode, item rows or model arrays out of step, rules that do not compile) is NACKed with the
reason and nothing of it is applied: the last good state keeps serving.

With several control-plane replicas (`SyncTarget.controls`) it follows one at a time
(`sync/control_replicas.py`, shared with the outbox forwarder). A stream that fails (but for a refusal of the
request itself), ends, or brings no message (not even the control plane's heartbeat) for `silence_seconds`
while the syncer waits for one loses its replica: the node moves to the next, and the syncer subscribes there
with the version it applied (and its lineage), so it resumes with the commits after it: no full snapshot
unless the replica cannot serve that tail. When the forwarder moved the node, the syncer ends its stream and
follows. Between sessions it waits a jittered exponential backoff (0.2 s doubling to 30 s, reset by a session
that heard from its replica, or ended early by `wake`: the forwarder's first ACK after failures), so a
fleet does not stampede a replica and an outage of every replica costs little.

The syncer thread runs SYNC_NICE steps below the process and in the lowest best-effort I/O level
(sync/thread_priority.py, Linux): the workers serving Decide on the same cores go first. A commit's profile
records are checked before its write transaction by a scan of their bytes in C, without the GIL
(core/profile_check.py: the records refused, and the errors, are `check_profile`'s). The write
transaction itself (apply, the state check, commit and fsync) runs on a writer thread at the process's
own priority (sync/commit_writer.py), the syncer waiting for it: the transaction holds the LMDB write lock
the workers' Track writes wait for, so it must not run at the lowered priority (priority inversion). A
commit is still one write transaction, however large: atomicity is not traded for latency.

It keeps serving its last state through an outage of any length; `state()` reports READY, STALE (no contact
for `stale_after` seconds) or NOT_SERVING (nothing applied yet).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

import grpc
import msgpack

from edgewise.core.profile_check import check_profiles
from edgewise.core.snapshot_info import SnapshotInfo
from edgewise.core.store import CATALOG_NAMESPACES, NOT_CATALOG, PER_USER, ReadView, Store
from edgewise.core.version_state import build_state, check_models
from edgewise.sync.auth import bearer_metadata, open_channel
from edgewise.sync.commit_writer import CommitWriter
from edgewise.sync.control_replicas import ControlReplicas, loses_replica
from edgewise.sync.shadow_candidate import Candidate, ShadowCandidates
from edgewise.sync.shard import Shard
from edgewise.sync.thread_priority import lower_cpu_priority, lower_io_priority
from edgewise.sync.wire import Assembler, FramingError
from edgewise.v1 import sync_pb2, sync_pb2_grpc

log = logging.getLogger(__name__)

__all__ = ["Backoff", "EdgeSyncer", "HeartbeatStats", "SyncTarget", "rpc_error_text"]

SYNC_NICE: Final = 10
"""How many nice steps the syncer thread runs below the process (`EdgeSyncer._run`)."""

HeartbeatStats = Callable[[], tuple[sync_pb2.ServingStats | None, sync_pb2.ShadowStats | None]]
"""What the node adds to each heartbeat: how the version it serves is doing, and its shadow decisions
(edge/serving_stats.py, edge/shadow_stats.py); None for either leaves that field out."""


class Backoff:
    """Jittered exponential backoff: each delay uniform in [d/2, d], d doubling from `start` to `cap`;
    `reset` after a success starts over."""

    def __init__(self, start: float = 0.2, cap: float = 30.0) -> None:
        self.start = start
        self.cap = cap
        self._next = start

    def next(self) -> float:
        delay = random.uniform(self._next / 2, self._next)
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.start


def rpc_error_text(exc: grpc.RpcError) -> str:
    """ "CODE: details" of a failed call, for logs and status."""
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code}: {detail}"


KEEPALIVE_OPTIONS: Final = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 << 20),
    # Each channel its own subchannels: a new channel (the syncer's next session, the forwarder's after a
    # wake) connects at once instead of inheriting gRPC's own reconnect backoff (up to minutes) from an
    # earlier channel to the same address.
    ("grpc.use_local_subchannel_pool", 1),
)


@dataclass(frozen=True, slots=True)
class SyncTarget:
    controls: tuple[str, ...]  # HOST:PORT of the control plane, or of each of its replicas, in order
    node_id: str
    shard: Shard
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    heartbeat_seconds: float = 5.0
    stale_after_seconds: float = 300.0
    silence_seconds: float = 30.0  # a stream silent this long (while the syncer waits) is lost


DEFAULT_SHADOW_SAMPLE: Final = 0.1
"""The share of requests a shadow commit without a valid `shadow_sample` has decided again."""


class _ShadowIntake:
    """The chunks of a shadow candidate being received (an `Assembler` of their own, so they may come
    between the chunks of the commits served); one that does not arrive whole is refused at its marker."""

    def __init__(self) -> None:
        self._assembler = Assembler()
        self._error = ""

    def add(self, chunk: sync_pb2.Chunk) -> None:
        if chunk.index == 0:
            self._error = ""
        elif self._error:
            return
        try:
            self._assembler.add(chunk)
        except FramingError as exc:
            self._assembler.reset()
            self._error = str(exc)

    def finish(self, commit: sync_pb2.Commit) -> list[tuple[str, bytes, bytes | None]]:
        try:
            if self._error:
                raise FramingError(self._error)
            return self._assembler.finish(commit)
        finally:
            self.reset()

    def reset(self) -> None:
        self._assembler.reset()
        self._error = ""


def _check_state(
    changes: list[tuple[str, bytes, bytes | None]],
    rebuild: bool,
    snapshot: bool = True,
    *,
    profiles: bool = True,
) -> Callable[[ReadView], None]:
    """The check of a commit's new state, inside its write transaction: its profile records are ones this
    code reads (unless `profiles` is False: checked before the transaction), and the version state a
    worker builds from it builds. A commit that changes neither items nor rules (a model refresh) leaves
    the catalog half as the last commit checked it: only the model half is built, as the workers do then
    (`check_models`)."""
    catalog = snapshot or any(
        ns in CATALOG_NAMESPACES and (ns, key) not in NOT_CATALOG for ns, key, _ in changes
    )
    embeddings = any(ns == "models" and key == b"item_embeddings" for ns, key, _ in changes)

    def check(view: ReadView) -> None:
        if profiles:
            check_profiles(changes)
        if rebuild and catalog:
            build_state(view)
        elif rebuild:
            check_models(view, embeddings=embeddings)

    return check


class EdgeSyncer:
    def __init__(
        self,
        store: Store,
        target: SyncTarget,
        *,
        replicas: ControlReplicas | None = None,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.target = target
        # The replica the node follows (shared with the forwarder, which moves it too).
        self.replicas = replicas if replicas is not None else ControlReplicas(target.controls)
        self._on_connected = on_connected  # called when a session hears from the control plane
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by wake() and stop(): ends a backoff wait early
        self._thread = threading.Thread(target=self._run, name="edge-sync", daemon=True)
        self._watch = threading.Thread(target=self._watch_sessions, name="edge-sync-watch", daemon=True)
        # The write transactions, at the priority of the thread calling start() (sync/commit_writer.py).
        self._writer = CommitWriter()
        self._outbox: queue.Queue[sync_pb2.SubscribeRequest | None] = queue.Queue()
        self._call: Any = None
        self._lock = threading.Lock()
        self.last_contact = 0.0  # time.monotonic() of the last message from the control plane
        self.applied = threading.Condition()
        self.last_error = ""
        self.following = self.replicas.current  # the replica of the current (or last) session
        self._heard = False  # the current session received a message from the control plane
        self._waiting_since = 0.0  # monotonic: the session started or last took a message (0: not waiting)
        self._ended = ""  # why the watch ended the current session ("": it did not)
        # Set by the node once its counters exist (edge/serve.py): the heartbeat's ServingStats and
        # ShadowStats, and a call after every commit applied (the serving counters start again).
        self.heartbeat_stats: HeartbeatStats | None = None
        self.on_applied: Callable[[int], None] | None = None
        self.on_shadow: Callable[[Candidate | None], None] | None = None  # a candidate installed or dropped
        # The candidate of a shadow rollout, beside the store (sync/shadow_candidate.py); one the node
        # serves by now (or a later version) is of no use any more.
        self.shadow = ShadowCandidates(store.path, store.map_bytes)
        self._drop_superseded_shadow(store.version())

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._writer.start()  # first, from this thread: the syncer thread lowers itself (and what it starts)
        self._thread.start()
        self._watch.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        self._outbox.put(None)
        self._thread.join(timeout)
        self._watch.join(timeout)
        self._writer.stop(timeout)  # after the syncer: a transaction it waits for finishes first

    def wake(self) -> None:
        """Reconnect now with a fresh backoff: a control plane answers again (the forwarder got an ACK)."""
        self._wake.set()

    def state(self) -> sync_pb2.EdgeState.ValueType:
        if not self.store.has_snapshot():
            return sync_pb2.EDGE_STATE_NOT_SERVING
        if self.last_contact and time.monotonic() - self.last_contact < self.target.stale_after_seconds:
            return sync_pb2.EDGE_STATE_READY
        return sync_pb2.EDGE_STATE_STALE

    def contact_age(self) -> float | None:
        return None if not self.last_contact else time.monotonic() - self.last_contact

    def wait_for_version(self, predicate: Callable[[int], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.applied:
            while not predicate(self.store.version()):
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self.applied.wait(min(left, 0.5))
        return True

    # --- the loop ------------------------------------------------------------------------------------

    def _run(self) -> None:
        # What this thread does (receive, assemble and check commits) can wait; the workers' requests on
        # the same cores and disk cannot (thread_priority.py; BENCHMARKS.md, "Profile records scanned in C,
        # the syncer below the workers"). The write transactions run on `_writer`, not lowered: the
        # workers' Track writes wait for the LMDB write lock they hold.
        lower_cpu_priority(SYNC_NICE)
        lower_io_priority()
        backoff = Backoff()
        while not self._stop.is_set():
            self._heard = False
            self._wake.clear()  # a wake while a session runs means nothing to the wait after it
            address = self.following = self.replicas.current
            lost = True
            try:
                self._session(address)
                error = self._ended or "the control plane ended the stream"
                if not self._stop.is_set():
                    log.warning("sync_disconnected", extra={"control": address, "error": error})
            except grpc.RpcError as exc:
                error = self._ended or rpc_error_text(exc)
                lost = bool(self._ended) or loses_replica(exc)
                if not self._stop.is_set():
                    log.warning("sync_disconnected", extra={"control": address, "error": error})
            except Exception as exc:
                error = repr(exc)
                log.error("sync_failed", extra={"control": address, "error": error})
            finally:
                with self._lock:
                    self._call = None
                    self._waiting_since = 0.0
                    self._ended = ""
            if self._stop.is_set():
                break
            self.last_error = error
            if lost:
                self.replicas.lost(address, error, link="sync")  # no-op when the node already moved on
            if self._heard:
                backoff.reset()  # the control plane answered: a new outage starts over
            if self._wake.wait(backoff.next()):
                self._wake.clear()
                backoff.reset()

    def _watch_sessions(self) -> None:
        """Ends the session whose stream stayed silent past `silence_seconds` while the syncer waited for
        a message (an apply in progress does not count), or whose replica the node left (the forwarder
        lost it): the stream is cancelled and `_run` moves on."""
        tick = min(0.25, self.target.silence_seconds / 4)
        while not self._stop.wait(tick):
            with self._lock:
                call, since = self._call, self._waiting_since
                if call is None or self._ended:
                    continue
                current = self.replicas.current
                if current != self.following:
                    self._ended = f"the node moved to {current}"
                elif since and time.monotonic() - since > self.target.silence_seconds:
                    self._ended = f"no message for {self.target.silence_seconds:g} s"
                else:
                    continue
            call.cancel()

    def _requests(self, hello: sync_pb2.SubscribeRequest) -> Iterator[sync_pb2.SubscribeRequest]:
        """The hello, then ACKs and NACKs as they come, and a heartbeat every `heartbeat_seconds` however
        busy the ACK traffic is (the control plane reads the node's health from them)."""
        yield hello
        period = self.target.heartbeat_seconds
        next_beat = time.monotonic() + period
        while not self._stop.is_set():
            try:
                item = self._outbox.get(timeout=max(0.0, next_beat - time.monotonic()))
            except queue.Empty:
                item = None if self._stop.is_set() else self._heartbeat()
                next_beat = time.monotonic() + period
            if item is None:
                return
            yield item
            if time.monotonic() >= next_beat and not self._stop.is_set():
                yield self._heartbeat()
                next_beat = time.monotonic() + period

    def _heartbeat(self) -> sync_pb2.SubscribeRequest:
        beat = sync_pb2.Heartbeat(
            version=self.store.version(), sent_at_ms=int(time.time() * 1000), state=self.state()
        )
        stats = self.heartbeat_stats
        if stats is not None:
            try:
                serving, shadow = stats()
            except Exception as exc:  # the heartbeat itself must go out
                log.warning("heartbeat_stats_failed", extra={"error": repr(exc)})
            else:
                if serving is not None:
                    beat.serving.CopyFrom(serving)
                if shadow is not None:
                    beat.shadow.CopyFrom(shadow)
        return sync_pb2.SubscribeRequest(heartbeat=beat)

    def _session(self, address: str) -> None:
        target = self.target
        channel = open_channel(
            address,
            ca=target.tls_ca,
            cert=target.tls_cert,
            key=target.tls_key,
            options=KEEPALIVE_OPTIONS,
        )
        try:
            while not self._outbox.empty():  # ACKs of a dead stream mean nothing to the next one
                self._outbox.get_nowait()
            stub = sync_pb2_grpc.ControlPlaneStub(channel)
            hello = sync_pb2.SubscribeRequest(
                hello=sync_pb2.Hello(
                    node_id=target.node_id,
                    shard=target.shard.to_proto(),
                    last_version=self._resume_version(),
                    lineage=self.store.snapshot_info().lineage,
                    edge_version="edgewise",
                )
            )
            call = stub.Subscribe(self._requests(hello), metadata=bearer_metadata(target.token))
            with self._lock:
                self._call = call
                self._waiting_since = time.monotonic()
            assembler = Assembler()
            failed = 0  # a commit NACKed for its framing: ignore the rest of its messages
            shadow = _ShadowIntake()  # a shadow candidate's chunks, apart from the commits served
            for message in call:
                self.last_contact = time.monotonic()
                with self._lock:
                    self._waiting_since = 0.0  # busy with this message: silence is not counted
                if not self._heard:
                    self._heard = True
                    log.info(
                        "sync_connected",
                        extra={
                            "control": address,
                            "version": self.store.version(),
                            "resume_from": hello.hello.last_version,  # 0: a full snapshot is wanted
                            "replicas": len(self.replicas.addresses),
                            "switches": self.replicas.switches,
                        },
                    )
                    if self._on_connected is not None:
                        self._on_connected()
                kind = message.WhichOneof("kind")
                if kind == "chunk" and message.chunk.shadow:
                    shadow.add(message.chunk)
                elif kind == "commit" and message.commit.shadow:
                    self._on_shadow_commit(shadow, message.commit)
                elif kind == "chunk":
                    if message.chunk.version == failed and message.chunk.index > 0:
                        continue
                    failed = 0
                    try:
                        assembler.add(message.chunk)
                    except FramingError as exc:
                        assembler.reset()
                        failed = message.chunk.version
                        self._nack(message.chunk.version, str(exc))
                elif kind == "commit":
                    if message.commit.version == failed:
                        failed = 0
                        continue
                    self._on_commit(assembler, message.commit, address)
                with self._lock:
                    self._waiting_since = time.monotonic()
        finally:
            channel.close()

    def _resume_version(self) -> int:
        info = self.store.snapshot_info()
        if info.source != "control" or info.shard != self.target.shard.text():
            return 0  # data from a bundle or another shard: start from a full snapshot
        return self.store.version()

    def _nack(self, version: int, error: str) -> None:
        self.last_error = error
        log.warning("sync_nack", extra={"version": version, "error": error})
        self._outbox.put(sync_pb2.SubscribeRequest(nack=sync_pb2.Nack(version=version, error=error)))

    def _on_commit(self, assembler: Assembler, commit: sync_pb2.Commit, address: str) -> None:
        try:
            changes = assembler.finish(commit)
        except FramingError as exc:
            assembler.reset()
            self._nack(commit.version, str(exc))
            return
        current = self.store.version()
        stored = self.store.snapshot_info()
        if commit.version <= current and not commit.snapshot:
            self._outbox.put(sync_pb2.SubscribeRequest(ack=sync_pb2.Ack(version=current)))
            return
        lineage = stored.lineage
        if not commit.snapshot and commit.lineage != lineage:
            self._nack(
                commit.version,
                f"commit {commit.version} is from control store {commit.lineage or '?'}, "
                f"this edge's data from {lineage or 'a bundle'}",
            )
            return
        if not commit.snapshot and commit.base_version != current:
            self._nack(
                commit.version,
                f"commit {commit.version} applies on {commit.base_version}, this edge has {current}",
            )
            return
        started = time.monotonic()
        try:
            info = self._info(commit, changes, SnapshotInfo() if commit.snapshot else stored, address)
            rebuild = commit.snapshot or any(ns not in PER_USER for ns, _, _ in changes)
            check_profiles(changes)  # before the write lock: scanned in C without the GIL
            check = _check_state(changes, rebuild, commit.snapshot, profiles=False)
            # the one write transaction, at the process's priority: it holds the lock Track waits for
            self._writer.call(
                lambda: self.store.apply_replicated(
                    commit.version, changes, snapshot=commit.snapshot, info=info, check=check
                )
            )
        except Exception as exc:
            self._nack(commit.version, f"commit {commit.version} refused, nothing applied: {exc}")
            return
        self.last_error = ""
        self._outbox.put(sync_pb2.SubscribeRequest(ack=sync_pb2.Ack(version=commit.version)))
        self._drop_superseded_shadow(commit.version)
        on_applied = self.on_applied
        if on_applied is not None:
            try:
                on_applied(commit.version)
            except Exception as exc:  # the node's bookkeeping: never the commit's fate
                log.warning("sync_on_applied_failed", extra={"version": commit.version, "error": repr(exc)})
        log.info(
            "sync_applied",
            extra={
                "version": commit.version,
                "snapshot": commit.snapshot,
                "control": address,
                "changes": len(changes),
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        with self.applied:
            self.applied.notify_all()

    # --- shadow candidates (docs/shadow.md) -------------------------------------------------------------

    def _on_shadow_commit(self, intake: _ShadowIntake, commit: sync_pb2.Commit) -> None:
        """A shadow commit: with 0 chunks it drops the candidate; else its snapshot becomes the candidate
        (sync/shadow_candidate.py), never served. Nothing is ACKed or NACKed: the heartbeats' ShadowStats
        name the candidate the node holds."""
        if commit.chunks == 0:
            intake.reset()
            dropped = self.shadow.drop()
            self._shadow_changed(None)
            if dropped is not None:
                log.info(
                    "shadow_dropped",
                    extra={"version": dropped.version, "reason": "shadow commit with 0 chunks"},
                )
            return
        started = time.monotonic()
        try:
            changes = intake.finish(commit)
            if not commit.snapshot:
                raise FramingError(f"shadow commit {commit.version} is not a full snapshot")
            current = self.store.version()
            if commit.version <= current:
                raise FramingError(f"shadow commit {commit.version}: this edge serves {current} already")
            sample = commit.shadow_sample if 0.0 < commit.shadow_sample <= 1.0 else DEFAULT_SHADOW_SAMPLE
            held = self.shadow.current()
            if held is not None and held.version == commit.version:  # sent again (a reconnect, say)
                if held.sample != sample:
                    self.shadow.resample(sample)
                log.info("shadow_kept", extra={"version": held.version, "sample": sample})
                return
            info = self._info(commit, changes, SnapshotInfo(), self.following)
            candidate = self.shadow.install(
                commit.version, current, sample, changes, info, check=_check_state(changes, True)
            )
        except Exception as exc:
            log.warning(
                "shadow_refused",
                extra={"version": commit.version, "error": f"shadow commit {commit.version} refused: {exc}"},
            )
            return
        self._shadow_changed(candidate)
        log.info(
            "shadow_received",
            extra={
                "version": candidate.version,
                "base_version": candidate.base_version,
                "sample": candidate.sample,
                "changes": len(changes),
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )

    def _drop_superseded_shadow(self, version: int) -> None:
        """The node serves `version`: a candidate it does not exceed is dropped (promoted, or replaced)."""
        candidate = self.shadow.current()
        if candidate is not None and candidate.version <= version:
            self.shadow.drop()
            self._shadow_changed(None)
            log.info(
                "shadow_dropped", extra={"version": candidate.version, "reason": f"version {version} applied"}
            )

    def _shadow_changed(self, candidate: Candidate | None) -> None:
        hook = self.on_shadow
        if hook is not None:
            try:
                hook(candidate)
            except Exception as exc:  # the node's bookkeeping: never the candidate's fate
                log.warning("sync_on_shadow_failed", extra={"error": repr(exc)})

    def _info(
        self,
        commit: sync_pb2.Commit,
        changes: list[tuple[str, bytes, bytes | None]],
        previous: SnapshotInfo,
        address: str,
    ) -> SnapshotInfo:
        """The snapshot info recorded with the commit (`address`: the replica it came from): the
        previous one (none for a snapshot), updated."""
        info = previous
        for namespace, key, value in changes:
            if namespace == "rules" and key == b"manifest" and value is not None:
                manifest = msgpack.unpackb(value, raw=False)
                info = replace(
                    info,
                    daily_counts_end_ms=int(manifest.get("daily_counts_end_ms", 0)),
                    bundle_version=int(manifest.get("bundle_version", 0)),
                )
        return replace(
            info,
            version=commit.version,
            source="control",
            control=address,
            shard=self.target.shard.text(),
            loaded_at_ms=int(time.time() * 1000),
            commit_kind=commit.kind,
            lineage=commit.lineage,
        )
