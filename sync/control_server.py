"""The control plane's gRPC service: pushes into the control store, subscriptions out of it.

`Subscribe`: the edge says hello (node id, shard, last applied version). While the change log holds the
commits after that version the edge gets them as deltas, else (or after the edge NACKs, or when its
version is unknown here) a full snapshot of the head, then the tail. Every commit is framed by
`sync.wire`. At most `max_snapshots` full snapshots stream at once; an edge over the cap gets
RESOURCE_EXHAUSTED and retries with backoff. Heartbeats go both ways every `heartbeat_seconds`.

`Push` takes a bundle directory (validated whole with `load_bundle`) or a delta file (validated whole
against the current state with `parse_delta`) and commits it in one transaction; a refused push changes
nothing and answers INVALID_ARGUMENT naming file, record and field.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Final

import grpc
import msgpack

from edgewise.core.bandit_learning import LearningSchedule
from edgewise.core.experiment_report import ExperimentReport, ReportError, experiment_report
from edgewise.core.records import Activity, decode_profile, encode_profile
from edgewise.core.rules import compile_rules
from edgewise.sync.bandit_learner import DEFAULT_SCHEDULE, BanditLearner
from edgewise.sync.bundle import BundleError, load_bundle
from edgewise.sync.changes import bundle_records, parse_delta
from edgewise.sync.control_store import (
    CommitInfo,
    ControlStore,
    ControlStoreError,
    LogCompacted,
    RecordChange,
)
from edgewise.sync.event_retention import DEFAULT_RETAIN_MS, EventRetention
from edgewise.sync.event_store import MAX_ID_BYTES, EventStore, EventStoreError, forwarded_keys
from edgewise.sync.profile_folder import ProfileFolder
from edgewise.sync.shard import Shard, ShardError
from edgewise.sync.wire import DEFAULT_CHUNK_BYTES, encode_commit
from edgewise.v1 import sync_pb2, sync_pb2_grpc

log = logging.getLogger(__name__)

__all__ = ["ControlPlaneService", "Fleet"]

_MAX_PUSH_BYTES: Final = 64 << 30
MAX_FORWARD_RECORDS: Final = 5000
_POLL_SECONDS: Final = 0.25  # how often a subscription looks for commits written by another process


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class EdgeEntry:
    node_id: str
    shard: str
    peer: str
    applied_version: int = 0
    last_ack_version: int = 0
    last_nack_version: int = 0
    last_error: str = ""
    state: sync_pb2.EdgeState.ValueType = sync_pb2.EDGE_STATE_NOT_SERVING
    connected: bool = False
    last_seen_ms: int = 0
    stream: int = 0  # which subscription owns the entry (a reconnect replaces the old one)
    events_forwarded: int = 0
    nack_pending: bool = False


class Fleet:
    """What the control plane knows of every edge that subscribed since it started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._edges: dict[str, EdgeEntry] = {}
        self._streams = 0

    def connect(self, hello: sync_pb2.Hello, shard: Shard, peer: str) -> EdgeEntry:
        with self._lock:
            self._streams += 1
            entry = self._edges.get(hello.node_id)
            if entry is None:
                entry = EdgeEntry(hello.node_id, shard.text(), peer)
                self._edges[hello.node_id] = entry
            entry.shard = shard.text()
            entry.peer = peer
            entry.applied_version = hello.last_version
            entry.connected = True
            entry.last_seen_ms = _now_ms()
            entry.stream = self._streams
            entry.nack_pending = False
            return entry

    def disconnect(self, entry: EdgeEntry, stream: int) -> None:
        with self._lock:
            if entry.stream == stream:
                entry.connected = False

    def on_request(self, entry: EdgeEntry, request: sync_pb2.SubscribeRequest) -> None:
        with self._lock:
            entry.last_seen_ms = _now_ms()
            kind = request.WhichOneof("kind")
            if kind == "ack":
                entry.applied_version = request.ack.version
                entry.last_ack_version = request.ack.version
                entry.last_error = ""
                entry.state = sync_pb2.EDGE_STATE_READY  # it applied what we sent: it is in contact
            elif kind == "nack":
                entry.last_nack_version = request.nack.version
                entry.last_error = request.nack.error[:2000]
                entry.nack_pending = True
            elif kind == "heartbeat":
                entry.applied_version = request.heartbeat.version
                entry.state = request.heartbeat.state

    def on_forward(self, node_id: str, accepted: int) -> None:
        with self._lock:
            entry = self._edges.get(node_id)
            if entry is None:
                entry = EdgeEntry(node_id, "", "")
                self._edges[node_id] = entry
            entry.events_forwarded += accepted
            entry.last_seen_ms = _now_ms()

    def take_nack(self, entry: EdgeEntry) -> int | None:
        """The version the edge NACKed since the last call, if any."""
        with self._lock:
            if not entry.nack_pending:
                return None
            entry.nack_pending = False
            return entry.last_nack_version

    def status(self, head: int) -> list[sync_pb2.EdgeStatus]:
        with self._lock:
            return [
                sync_pb2.EdgeStatus(
                    node_id=e.node_id,
                    shard=e.shard,
                    applied_version=e.applied_version,
                    lag=max(0, head - e.applied_version),
                    last_ack_version=e.last_ack_version,
                    last_nack_version=e.last_nack_version,
                    last_error=e.last_error,
                    state=e.state if e.connected else sync_pb2.EDGE_STATE_UNSPECIFIED,
                    connected=e.connected,
                    last_seen_ms=e.last_seen_ms,
                    peer=e.peer,
                    events_forwarded=e.events_forwarded,
                )
                for e in sorted(self._edges.values(), key=lambda e: e.node_id)
            ]


def _commit_proto(info: CommitInfo, lineage: str = "") -> sync_pb2.Commit:
    return sync_pb2.Commit(
        version=info.version,
        base_version=info.base_version,
        kind=info.kind,
        lineage=lineage,
        created_at_ms=info.created_at_ms,
        description=info.description,
    )


FORGET_STATUS_DEFAULT: Final = 100
FORGET_STATUS_MAX: Final = 1_000  # users per ForgetStatus reply (each lists every edge)


class ControlPlaneService(sync_pb2_grpc.ControlPlaneServicer):
    def __init__(
        self,
        store: ControlStore,
        *,
        max_snapshots: int = 2,
        heartbeat_seconds: float = 5.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        cache_bytes: int = 256 << 20,
        events: EventStore | None = None,
        bandit_schedule: LearningSchedule = DEFAULT_SCHEDULE,
        retain_events_ms: int = DEFAULT_RETAIN_MS,
    ) -> None:
        self.store = store
        self.events = events

        self.fleet = Fleet()
        self._snapshots = threading.BoundedSemaphore(max_snapshots)
        self._heartbeat_seconds = heartbeat_seconds
        self._chunk_bytes = chunk_bytes
        self._changed = threading.Condition()
        self._push_lock = threading.Lock()  # one push validates and commits at a time
        self._forget_lock = threading.Lock()  # a forget's two stores vs a Forward's check and ingest
        # encoded commits by (version, shard), newest last, bounded by the bytes of their changes
        self._cache: OrderedDict[tuple[int, str], tuple[list[sync_pb2.SyncMessage], int]] = OrderedDict()
        self._cache_bytes = 0
        self._cache_budget = cache_bytes
        self._cache_lock = threading.Lock()
        self.folder = (
            ProfileFolder(store, events, self._push_lock, self._notify) if events is not None else None
        )
        self.learner = (
            BanditLearner(store, events, self._push_lock, self._notify, schedule=bandit_schedule)
            if events is not None
            else None
        )
        self.retention = (  # retain_events_ms 0: keep every stored event
            EventRetention(store, events, retain_events_ms)
            if events is not None and retain_events_ms
            else None
        )

    # --- subscriptions -------------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def Subscribe(
        self, request_iterator: Iterator[sync_pb2.SubscribeRequest], context: grpc.ServicerContext
    ) -> Iterator[sync_pb2.SyncMessage]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a subscription must start with hello")
        hello = first.hello
        if not hello.node_id or len(hello.node_id) > 128:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello.node_id must be 1-128 characters")
        try:
            shard = Shard.from_proto(hello.shard)
        except ShardError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"hello.shard: {exc}")
        entry = self.fleet.connect(hello, shard, context.peer())
        stream = entry.stream
        log.info(
            "edge_subscribed",
            extra={"node": hello.node_id, "shard": shard.text(), "version": hello.last_version},
        )
        reader = threading.Thread(
            target=self._read_requests,
            args=(request_iterator, entry),
            name=f"sub-{hello.node_id}",
            daemon=True,
        )
        reader.start()
        try:
            yield from self._stream(entry, shard, hello.last_version, hello.lineage, context)
        finally:
            self.fleet.disconnect(entry, stream)
            log.info("edge_unsubscribed", extra={"node": hello.node_id})

    def _read_requests(self, requests: Iterator[sync_pb2.SubscribeRequest], entry: EdgeEntry) -> None:
        try:
            for request in requests:
                self.fleet.on_request(entry, request)
                if request.WhichOneof("kind") == "nack":
                    log.warning(
                        "edge_nack",
                        extra={
                            "node": entry.node_id,
                            "version": request.nack.version,
                            "error": request.nack.error[:500],
                        },
                    )
                    self._notify()
        except grpc.RpcError:
            pass  # the stream ended; Subscribe's generator notices through the context

    def _stream(
        self, entry: EdgeEntry, shard: Shard, sent: int, lineage: str, context: grpc.ServicerContext
    ) -> Generator[sync_pb2.SyncMessage, None, None]:
        head = self.store.head_version()
        need_snapshot = (
            sent == 0 or sent > head or sent < self.store.log_start_version() or lineage != self.store.lineage
        )
        # After a NACK the edge gets a full snapshot of the head, at once if there is a newer version,
        # else after a backoff that doubles with every NACK in a row (a corrupted chunk heals on the
        # retry; a commit the edge cannot apply is not resent in a tight loop).
        retry_at = 0.0
        nack_backoff = 0.5
        last_beat = 0.0
        while context.is_active():
            head = self.store.head_version()
            nacked = self.fleet.take_nack(entry)
            if nacked is not None:
                need_snapshot = True
                retry_at = 0.0 if head > nacked else time.monotonic() + nack_backoff
                nack_backoff = min(nack_backoff * 2, 60.0)
            if need_snapshot and head > 0 and time.monotonic() >= retry_at:
                if not self._snapshots.acquire(timeout=1.0):
                    context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "too many full snapshots streaming; retry with backoff",
                    )
                try:
                    sent = yield from self._send_snapshot(shard)
                finally:
                    self._snapshots.release()
                need_snapshot = False
                last_beat = time.monotonic()
                continue
            if not need_snapshot and head > sent:
                try:
                    for info, changes in self.store.commits_after(sent):
                        if not context.is_active() or entry.nack_pending:
                            break
                        yield from self._encoded(info, changes, shard)
                        sent = info.version
                except LogCompacted:
                    need_snapshot = True
                last_beat = time.monotonic()
                continue
            if time.monotonic() - last_beat >= self._heartbeat_seconds:
                last_beat = time.monotonic()
                yield sync_pb2.SyncMessage(heartbeat=sync_pb2.Heartbeat(version=head, sent_at_ms=_now_ms()))
            with self._changed:
                self._changed.wait(_POLL_SECONDS)

    def _encoded(
        self, info: CommitInfo, changes: list[RecordChange], shard: Shard
    ) -> list[sync_pb2.SyncMessage]:
        """A commit's messages for one shard, encoded once and shared by every subscriber that needs them
        (protobuf messages are not changed after encoding; each stream serializes its own copy)."""
        key = (info.version, shard.text())
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached[0]
        messages = list(
            encode_commit(
                _commit_proto(info, self.store.lineage),
                _for_shard(shard, changes),
                chunk_bytes=self._chunk_bytes,
            )
        )
        size = sum(len(c.key) + len(c.value or b"") + 32 for c in changes)
        with self._cache_lock:
            if key not in self._cache and size <= self._cache_budget:
                self._cache[key] = (messages, size)
                self._cache_bytes += size
                while self._cache_bytes > self._cache_budget:
                    _, (_, dropped) = self._cache.popitem(last=False)
                    self._cache_bytes -= dropped
        return messages

    def start_background(self) -> None:
        """Start folding forwarded events into profiles, learning bandit posteriors from them and expiring
        old ones (when this control plane stores events)."""
        for job in (self.folder, self.learner, self.retention):
            if job is not None:
                job.start()

    def stop_background(self) -> None:
        for job in (self.folder, self.learner, self.retention):
            if job is not None:
                job.stop()

    def _fleet_activity(self) -> dict[str, Activity]:
        """The folded activity of every profile that has some (kept across bundle pushes)."""
        out: dict[str, Activity] = {}
        with self.store.read() as view:
            for key, value in view.items("profiles"):
                if b"act" in value:  # cheap filter; decode only candidates
                    activity = decode_profile(key, value).activity
                    if activity is not None:
                        out[key] = activity
        return out

    def _send_snapshot(self, shard: Shard) -> Generator[sync_pb2.SyncMessage, None, int]:
        with self.store.read() as view:
            version = view.version
            newest = self.store.history(1)
            commit = sync_pb2.Commit(
                version=version,
                snapshot=True,
                kind="snapshot",
                created_at_ms=newest[0].created_at_ms if newest else 0,
                description=f"full snapshot at version {version}",
                lineage=self.store.lineage,
            )

            def records() -> Iterator[tuple[str, str, bytes | None]]:
                for namespace in ("rules", "models", "items", "profiles", "forgotten"):
                    for key, value in view.items(namespace):
                        if namespace != "profiles" or shard.holds(key, value):
                            yield namespace, key, value

            yield from encode_commit(commit, records(), chunk_bytes=self._chunk_bytes)
        return version

    # --- ops -----------------------------------------------------------------------------------------

    def Push(
        self, request_iterator: Iterator[sync_pb2.PushChunk], context: grpc.ServicerContext
    ) -> sync_pb2.PushReply:
        staging = Path(tempfile.mkdtemp(prefix="edgewise-push-"))
        try:
            kind, description, files = self._receive(request_iterator, staging, context)
            with self._push_lock:
                try:
                    if kind == sync_pb2.PUSH_KIND_BUNDLE:
                        bundle = load_bundle(staging)
                        info = self.store.replace_all(
                            _keep_fleet_activity(bundle_records(bundle), self._fleet_activity()),
                            kind="push",
                            description=description or f"bundle {bundle.version}",
                        )
                        summary = (
                            f"bundle version {bundle.version}: {len(bundle.items)} items, "
                            f"{len(bundle.profiles)} profiles"
                        )
                    else:
                        if len(files) != 1:
                            context.abort(
                                grpc.StatusCode.INVALID_ARGUMENT, "a delta push carries exactly one file"
                            )
                        name = files[0]
                        with self.store.read() as view:
                            text = (staging / name).read_text(encoding="utf-8")
                            changes = parse_delta(text.splitlines(), view, file=name)
                        info = self.store.commit(changes, kind="delta", description=description or name)
                        summary = f"delta {name}: {len(changes)} changes"
                except BundleError as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"push refused, nothing changed: {exc}")
                except UnicodeDecodeError as exc:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"push refused: the delta file is not UTF-8: {exc}"
                    )
                except ControlStoreError as exc:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"push not applied: {exc}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._notify()
        if info is None:
            head = self.store.head_version()
            log.info("push_unchanged", extra={"version": head, "summary": summary})
            return sync_pb2.PushReply(version=head, changes=0, summary=summary + " (no change)")
        log.info(
            "push_committed",
            extra={"version": info.version, "changes": info.changes, "kind": info.kind, "summary": summary},
        )
        return sync_pb2.PushReply(version=info.version, changes=info.changes, summary=summary)

    def _receive(
        self, chunks: Iterator[sync_pb2.PushChunk], staging: Path, context: grpc.ServicerContext
    ) -> tuple[int, str, list[str]]:
        kind = sync_pb2.PUSH_KIND_UNSPECIFIED
        description = ""
        files: list[str] = []
        total = 0
        handle: BinaryIO | None = None  # the file being written: files[-1]
        try:
            for i, chunk in enumerate(chunks):
                if i == 0:
                    kind = chunk.kind
                    description = chunk.description[:500]
                    if kind not in (sync_pb2.PUSH_KIND_BUNDLE, sync_pb2.PUSH_KIND_DELTA):
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first push chunk must set kind")
                rel = PurePosixPath(chunk.path)
                if not chunk.path or rel.is_absolute() or ".." in rel.parts or len(chunk.path) > 512:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad file path in push: {chunk.path!r}")
                total += len(chunk.data)
                if total > _MAX_PUSH_BYTES:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "push larger than 64 GiB")
                if not files or files[-1] != chunk.path:
                    if chunk.path in files:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"file {chunk.path} sent twice")
                    if handle is not None:
                        handle.close()
                    target = staging / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    handle = target.open("wb")
                    files.append(chunk.path)
                assert handle is not None
                handle.write(chunk.data)
        finally:
            if handle is not None:
                handle.close()
        if not files:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty push")
        return kind, description, files

    def Rollback(
        self, request: sync_pb2.RollbackRequest, context: grpc.ServicerContext
    ) -> sync_pb2.PushReply:
        with self._push_lock:
            try:
                info = self.store.rollback(request.version)
            except ControlStoreError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"rollback refused: {exc}")
        self._notify()
        if info is None:
            head = self.store.head_version()
            return sync_pb2.PushReply(
                version=head, changes=0, summary=f"version {request.version} equals the head"
            )
        log.info(
            "rollback_committed",
            extra={"version": info.version, "to": request.version, "changes": info.changes},
        )
        return sync_pb2.PushReply(
            version=info.version, changes=info.changes, summary=f"state of version {request.version}"
        )

    def History(
        self, request: sync_pb2.HistoryRequest, context: grpc.ServicerContext
    ) -> sync_pb2.HistoryReply:
        limit = request.limit or 50
        return sync_pb2.HistoryReply(
            commits=[_commit_proto(c) for c in self.store.history(min(limit, 10_000))],
            head_version=self.store.head_version(),
            log_start_version=self.store.log_start_version(),
            snapshot_versions=self.store.snapshot_versions(),
        )

    def Status(self, request: sync_pb2.StatusRequest, context: grpc.ServicerContext) -> sync_pb2.StatusReply:
        head = self.store.head_version()
        total = self.events.count() if self.events is not None else 0
        return sync_pb2.StatusReply(head_version=head, edges=self.fleet.status(head), events_total=total)

    def Report(self, request: sync_pb2.ReportRequest, context: grpc.ServicerContext) -> sync_pb2.ReportReply:
        if self.events is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this control plane does not store events")
        with self.store.read() as view:
            raw = view.get("rules", "rules")
        if raw is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nothing pushed yet: no rules, no experiments")
        experiments = compile_rules(msgpack.unpackb(raw, raw=False)).experiments
        experiment = experiments.get(request.experiment)
        if experiment is None:
            known = ", ".join(sorted(experiments)) or "none"
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no experiment {request.experiment!r} in the rules (known: {known})",
            )
        weights = {v.id: v.weight for v in experiment.variants}
        metric = request.metric or "ctr"
        try:
            report = experiment_report(
                (record for _, _, record in self.events.events()),
                request.experiment,
                weights,
                metric,  # type: ignore[arg-type]  # checked by experiment_report
                by=request.by,
                confidence=request.confidence or 0.95,
                bucket_ms=request.bucket_ms or None,
            )
        except ReportError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return sync_pb2.ReportReply(json=json.dumps(report_document(report)))

    def Forget(self, request: sync_pb2.ForgetRequest, context: grpc.ServicerContext) -> sync_pb2.ForgetReply:
        user = request.user_id
        if not user or len(user.encode()) > MAX_ID_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"user_id must be 1-{MAX_ID_BYTES} bytes")
        with self._push_lock, self._forget_lock:
            try:
                info = self.store.forget(user)
            except ControlStoreError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"forget not applied: {exc}")
            removed = self.events.forget(user) if self.events is not None else 0
        self._notify()
        version = info.version if info is not None else (self.store.forgotten_version(user) or 0)
        log.info(
            "user_forgotten", extra={"version": version, "events_removed": removed}
        )  # never the user id in logs
        return sync_pb2.ForgetReply(version=version, events_removed=removed)

    def ForgetStatus(
        self, request: sync_pb2.ForgetStatusRequest, context: grpc.ServicerContext
    ) -> sync_pb2.ForgetStatusReply:
        edges = self.fleet.status(self.store.head_version())
        limit = request.limit or FORGET_STATUS_DEFAULT
        if limit > FORGET_STATUS_MAX:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"limit: {limit} is over the cap of {FORGET_STATUS_MAX}",
            )
        if len(request.user_id.encode()) > MAX_ID_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"user_id must be at most {MAX_ID_BYTES} bytes")
        forgotten, total = self.store.forgotten_newest(0 if request.user_id else limit)
        if request.user_id:
            version = self.store.forgotten_version(request.user_id)
            forgotten = [] if version is None else [(request.user_id, version)]
        users = []
        for user, version in forgotten:
            done = [e.node_id for e in edges if e.applied_version >= version]
            users.append(
                sync_pb2.ForgottenUser(
                    user_id=user,
                    version=version,
                    confirmed=done,
                    pending=[e.node_id for e in edges if e.node_id not in done],
                )
            )
        return sync_pb2.ForgetStatusReply(users=users, total=total)

    # --- events upstream -----------------------------------------------------------------------------

    def Forward(
        self, request: sync_pb2.ForwardRequest, context: grpc.ServicerContext
    ) -> sync_pb2.ForwardReply:
        if self.events is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this control plane does not store events")
        if not request.node_id or len(request.node_id) > 128:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id must be 1-128 characters")
        if len(request.records) > MAX_FORWARD_RECORDS:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"records: {len(request.records)} in one call, at most {MAX_FORWARD_RECORDS}",
            )
        checked: list[tuple[str, str, bytes]] = []  # (kind, id, payload): each payload decoded once
        users: list[str] = []
        rejected = 0
        for record in request.records:
            # A record that can never be stored is acknowledged and dropped, with a log line: refusing
            # the whole call would have the edge send it again forever, its outbox stuck behind it.
            try:
                if record.kind not in ("event", "exposure"):
                    raise ValueError(f"kind {record.kind!r} is not event or exposure")
                event_id, user = forwarded_keys(record.payload)
            except ValueError as exc:
                rejected += 1
                log.warning(
                    "forward_record_rejected",
                    extra={"node": request.node_id, "seq": record.seq, "error": str(exc)},
                )
                continue
            checked.append((record.kind, event_id, record.payload))
            users.append(user)
        try:
            # Records of forgotten users are dropped, not stored again: an edge that has not applied the
            # forget yet still forwards what it queued. Under the forget lock, so a forget in progress
            # (control store, then event store) cannot slip between this check and the ingest.
            with self._forget_lock:
                forgotten = self.store.forgotten_among(users)
                kept = [(c, u) for c, u in zip(checked, users, strict=True) if u not in forgotten]
                result = self.events.ingest(request.node_id, [c for c, _ in kept], [u for _, u in kept])
        except EventStoreError as exc:
            log.error("events_not_stored", extra={"node": request.node_id, "error": str(exc)})
            context.abort(grpc.StatusCode.UNAVAILABLE, "events could not be stored; retry later")
        self.fleet.on_forward(request.node_id, result.accepted)
        return sync_pb2.ForwardReply(
            acked_seq=max((r.seq for r in request.records), default=0),
            accepted=result.accepted,
            duplicates=result.duplicates,
            forgotten=len(checked) - len(kept),
            rejected=rejected,
        )


def report_document(report: ExperimentReport) -> dict[str, object]:
    """The JSON document of `edgewise ctl report --format json` (docs/reports.md)."""
    holdout = report.holdout
    return {
        "experiment": report.experiment,
        "metric": report.overall.metric,
        "control": report.overall.control,
        "confidence": report.overall.confidence,
        "exposures": report.exposures,
        "outcomes": report.outcomes,
        "attributed": report.attributed,
        "mixed_units": report.mixed_units,
        "srm": {
            "chi2": report.overall.srm.chi2,
            "p_value": report.overall.srm.p_value,
            "srm": report.overall.srm.srm,
        },
        "rows": report.overall.records(),
        "slices": [r for s in report.slices for r in s.records()],
        "holdout": None
        if holdout is None
        else {
            "personalized_units": report.holdout_units[0],
            "holdout_units": report.holdout_units[1],
            "lift": holdout.absolute,
            "lift_low": holdout.absolute_low,
            "lift_high": holdout.absolute_high,
            "rel_lift": holdout.relative,
            "p_beat": holdout.p_beat,
        },
        "bucket_size_ms": report.bucket_ms,
        "series": [
            {
                "bucket_ms": p.bucket_ms,
                "variant": p.variant,
                "units": p.units,
                "value": p.value,
                "low": p.low,
                "high": p.high,
            }
            for p in report.series
        ],
    }


def _keep_fleet_activity(
    records: Iterable[RecordChange], activity: Mapping[str, Activity]
) -> Iterator[RecordChange]:
    """A bundle's profiles with the fleet-wide activity folded so far (a bundle does not carry it)."""
    for record in records:
        folded = activity.get(record.key) if record.namespace == "profiles" else None
        if folded is not None and record.value is not None:
            profile = decode_profile(record.key, record.value)
            record = RecordChange(
                record.namespace, record.key, encode_profile(replace(profile, activity=folded))
            )
        yield record


def _for_shard(shard: Shard, changes: list[RecordChange]) -> Iterator[tuple[str, str, bytes | None]]:
    """A commit's changes as one shard's edge needs them: profiles outside the shard are left out, or
    sent as deletes for region shards (a profile that moved to another region must leave the edge)."""
    for c in changes:
        if c.namespace != "profiles" or shard.everything or shard.holds(c.key, c.value):
            yield c.namespace, c.key, c.value
        elif shard.regions:
            yield c.namespace, c.key, None
