"""The control plane's gRPC service: validation and translation between the RPCs and the parts that do
the work.

`Subscribe` checks the edge's hello, registers it in the fleet (`sync/fleet.py`), reads its ACKs, NACKs
and heartbeats into the fleet on a thread of its own, and streams what the fan-out (`sync/fanout.py`)
sends it: deltas after its version from the commit cache (`sync/commit_cache.py`), or a full snapshot
first; an edge over the cap on concurrent full snapshots gets RESOURCE_EXHAUSTED and retries with
backoff. A stream whose edge stops reading is cancelled after `write_timeout_seconds` (`sync/stalls.py`).
The fleet records only versions the edge can have: a hello's version counts when it is of this store's
lineage and not ahead of the head, a heartbeat's or ACK's when it is not ahead of the head (and, for a
heartbeat, once the stream's lineage is known to match). `Status` and `ForgetStatus` read the fleet.
Callers' roles (edge or ops token) are checked by the interceptors of `sync/auth.py` before any method here
runs; a caller with a per-node identity (`identity_of`) may subscribe and forward as its own node id only,
to one of its shards (PERMISSION_DENIED otherwise).

`Push` takes a bundle directory (validated whole with `load_bundle`) or a delta file (validated whole
against the current state with `parse_delta`) and commits it in one transaction; a refused push changes
nothing and answers INVALID_ARGUMENT naming file, record and field. A push may start a canary or shadow
rollout (`PushChunk.canary_percent` / `canary_nodes` / `shadow`, docs/rollouts.md): the rollout state is
written with its commit (`ControlStore` rollout record), the fan-out holds the edges outside the canary
set at the base version (`sync/rollout_gate.py`), `Promote` releases the candidate to every edge and
`Abort` publishes a rollback to the base version's state; a watch compares the canary edges' serving
figures with the rest's every `check_seconds` and aborts (or promotes) past the thresholds of
`RolloutPolicy` (`sync/rollout_health.py`). One rollout at a time: a push, rollback or second rollout
while one is in progress answers FAILED_PRECONDITION. `Forward` stores the events edges
send (de-duplicated, forgotten users' dropped); the background jobs (`sync/control_jobs.py`) fold them
into profiles, learn bandit posteriors from them and expire old ones.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Final, NoReturn

import grpc
import msgpack

from edgewise.core.bandit_learning import LearningSchedule
from edgewise.core.experiment_report import ExperimentReport, ReportError, experiment_report
from edgewise.core.forwarded import ForwardedRecordError, check_forwarded
from edgewise.core.records import Activity, decode_profile, encode_profile
from edgewise.core.rules import compile_rules
from edgewise.sync.auth import NodeIdentity, identity_refusal
from edgewise.sync.bandit_learner import DEFAULT_SCHEDULE
from edgewise.sync.bundle import BundleError, load_bundle
from edgewise.sync.changes import bundle_records, parse_delta
from edgewise.sync.commit_cache import CommitCache, commit_proto
from edgewise.sync.control_config import RefreshConfig
from edgewise.sync.control_jobs import ControlJobs, JobFigures
from edgewise.sync.control_store import CommitInfo, ControlStore, ControlStoreError, RecordChange
from edgewise.sync.embedding_refresh_job import EmbeddingRefreshJob
from edgewise.sync.event_retention import DEFAULT_RETAIN_MS
from edgewise.sync.event_store import MAX_ID_BYTES, EventStore, EventStoreError, IngestResult
from edgewise.sync.fanout import Fanout, SnapshotsBusy
from edgewise.sync.fleet import DEFAULT_EXPIRE_AFTER_MS, DEFAULT_MAX_ENTRIES, EdgeEntry, Fleet
from edgewise.sync.model_refresh import RefreshJob
from edgewise.sync.periodic import Periodic
from edgewise.sync.push_staging import PushLayout, clean_staging
from edgewise.sync.rollout import (
    ABORTED,
    CANARY,
    PROMOTED,
    Rollout,
    RolloutError,
    choose_canary,
    encode_rollout,
)
from edgewise.sync.rollout_gate import RolloutGate
from edgewise.sync.rollout_health import (
    EdgeServing,
    RolloutPolicy,
    health_document,
    judged,
    rollout_health,
    shadow_document,
    sum_shadow,
    unhealthy_reason,
)
from edgewise.sync.shard import Shard, ShardError
from edgewise.sync.stalls import DEFAULT_WRITE_TIMEOUT_SECONDS, StallWatch
from edgewise.sync.wire import DEFAULT_CHUNK_BYTES
from edgewise.v1 import sync_pb2, sync_pb2_grpc

log = logging.getLogger(__name__)

__all__ = [
    "FORGET_STATUS_DEFAULT",
    "FORGET_STATUS_MAX",
    "MAX_FORWARD_RECORDS",
    "ControlPlaneService",
    "RolloutRequest",
    "report_document",
]

_MAX_PUSH_BYTES: Final = 64 << 30
STAGING_DIR: Final = "push-staging"
MAX_FORWARD_RECORDS: Final = 5000
FORGET_STATUS_DEFAULT: Final = 100
FORGET_STATUS_MAX: Final = 1_000  # users per ForgetStatus reply (each lists every edge)
MAX_CANARY_NODES: Final = 10_000


@dataclass(frozen=True, slots=True)
class RolloutRequest:
    """What the first chunk of a push asked for: a canary set (a share of the fleet, or node ids) and/or
    a shadow (validated by `_rollout_request`)."""

    percent: float
    nodes: tuple[str, ...]
    shadow: bool
    shadow_sample: float


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
        write_timeout_seconds: float = DEFAULT_WRITE_TIMEOUT_SECONDS,
        fleet_expire_after_ms: int = DEFAULT_EXPIRE_AFTER_MS,
        fleet_max_entries: int = DEFAULT_MAX_ENTRIES,
        identity_of: Callable[[Iterable[Any] | None], NodeIdentity | None] | None = None,
        staging_dir: Path | None = None,
        rollout_policy: RolloutPolicy | None = None,
        refresh: RefreshConfig | None = None,
    ) -> None:
        self.store = store
        # Pushes are received into a directory of their own under here (the control plane's data directory
        # by default: room for a large push, and nobody else's); what a killed process left is removed now.
        self.staging_root = staging_dir if staging_dir is not None else store.path / STAGING_DIR
        clean_staging(self.staging_root)
        self.events = events
        self.fleet = Fleet(expire_after_ms=fleet_expire_after_ms, max_entries=fleet_max_entries)
        self.stalls = StallWatch(write_timeout_seconds)
        self._identity_of = identity_of  # a call's per-node identity (TokenAuth.identity), if any
        self.cache = CommitCache(store, chunk_bytes=chunk_bytes, budget_bytes=cache_bytes)
        self.rollout_policy = rollout_policy if rollout_policy is not None else RolloutPolicy()
        self.gate = RolloutGate(store, self.rollout_policy.shadow_sample)
        self.fanout = Fanout(
            self.cache,
            self.fleet,
            max_snapshots=max_snapshots,
            heartbeat_seconds=heartbeat_seconds,
            gate=self.gate,
        )
        self._rollout_watch = Periodic(
            "rollout-watch", self.rollout_policy.check_seconds, self.check_rollout, "rollout_check_failed"
        )
        self._push_lock = threading.Lock()  # one push validates and commits at a time
        self._forget_lock = threading.Lock()  # a forget's two stores vs a Forward's check and ingest
        self.refresh_config = refresh  # the model refresh jobs (sync/model_refresh_jobs.py)
        self.jobs = (
            ControlJobs(
                store,
                events,
                self._push_lock,
                self.cache.notify,
                bandit_schedule=bandit_schedule,
                retain_events_ms=retain_events_ms,
                refresh=refresh,
            )
            if events is not None
            else None
        )

    def start_background(self) -> None:
        """Start folding forwarded events into profiles, learning bandit posteriors from them and expiring
        old ones (when this control plane stores events)); watch the rollout in progress."""
        if self.jobs is not None:
            self.jobs.start()
        self._rollout_watch.start()

    def stop_background(self) -> None:
        self._rollout_watch.stop()
        if self.jobs is not None:
            self.jobs.stop()

    def job_figures(self) -> JobFigures | None:
        """The background jobs' figures since start (None without an event store)."""
        jobs, events = self.jobs, self.events
        if jobs is None or events is None:
            return None
        last = events.last_seq()
        folder, learner = jobs.folder, jobs.learner
        return JobFigures(
            fold_backlog=max(0, last - self.store.cursor("profiles")),
            folds=folder.commits,
            folded_profiles=folder.profiles,
            learner_backlog=max(0, last - learner.position),
            bandit_publishes=learner.publishes,
            last_publish=learner.last_publish,
            folder_skipped=folder.skipped.total,
            learner_skipped=learner.skipped.total,
            expired=jobs.retention.expired if jobs.retention is not None else 0,
        )

    def refresh_jobs(self) -> list[RefreshJob | EmbeddingRefreshJob]:
        """The model refresh jobs this process runs now (their figures go to /metrics)."""
        return list(self.jobs.refresh) if self.jobs is not None else []

    def _notify(self) -> None:
        """Wake the subscriptions: a commit was written, or an edge NACKed."""
        self.cache.notify()

    # --- subscriptions -------------------------------------------------------------------------------

    def _identity(self, context: grpc.ServicerContext) -> NodeIdentity | None:
        if self._identity_of is None:
            return None
        return self._identity_of(context.invocation_metadata())

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
        refusal = identity_refusal(self._identity(context), hello.node_id, shard)
        if refusal is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"hello: {refusal}")
        self._await_version(hello.lineage, hello.last_version)
        # The version the edge says it has counts only if it can have it: of this store's lineage, not
        # ahead of the head (else it is getting a full snapshot and has nothing of this store yet).
        ours = hello.lineage == self.store.lineage and hello.last_version <= self.store.head_version()
        entry = self.fleet.connect(
            hello.node_id, shard.text(), context.peer(), hello.last_version if ours else 0
        )
        stream = entry.stream
        log.info(
            "edge_subscribed",
            extra={"node": hello.node_id, "shard": shard.text(), "version": hello.last_version},
        )
        reader = threading.Thread(
            target=self._read_requests,
            args=(request_iterator, entry, ours),
            name=f"sub-{hello.node_id}",
            daemon=True,
        )
        reader.start()
        messages = self.fanout.stream(entry, shard, hello.last_version, hello.lineage, context.is_active)
        watched = self.stalls.watch(context, hello.node_id)
        try:
            for message in messages:
                watched.sending()  # until gRPC asks for the next message: the edge took this one
                yield message
                watched.sent()
        except SnapshotsBusy as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        finally:
            messages.close()  # a stream cut mid-snapshot frees its snapshot slot now
            self.stalls.unwatch(watched)
            self.fleet.disconnect(entry, stream)
            log.info("edge_unsubscribed", extra={"node": hello.node_id})

    def _await_version(self, lineage: str, version: int) -> None:
        """Before a subscription is served: nothing here (this store is the only one making versions, so an
        edge ahead of its head cannot be of it). A central-tier replica waits a little for the log there."""

    def _read_requests(
        self, requests: Iterator[sync_pb2.SubscribeRequest], entry: EdgeEntry, lineage_known: bool
    ) -> None:
        """The edge's side of its subscription, into the fleet; a NACK wakes its stream.

        A version ahead of the head is never recorded (no edge can have it: a caller making it up would
        show as having applied forgets it has not); a heartbeat's version only once the edge is known to
        hold this store's lineage (`lineage_known`: its hello said so, or it ACKed a commit since)."""
        warned = False
        try:
            for request in requests:
                kind = request.WhichOneof("kind")
                if kind in ("ack", "heartbeat"):
                    version = request.ack.version if kind == "ack" else request.heartbeat.version
                    head = self.store.head_version()
                    if version > head and not warned and (lineage_known or kind == "ack"):
                        # An edge of another lineage reports its old version until its snapshot is
                        # applied; anything else ahead is made up. Logged once per stream.
                        warned = True
                        log.warning(
                            "edge_version_ahead",
                            extra={"node": entry.node_id, "kind": kind, "version": version, "head": head},
                        )
                    if kind == "ack" and version <= head:
                        lineage_known = True
                        self.fleet.ack(entry, version)
                    elif kind == "heartbeat":
                        known = lineage_known and version <= head
                        beat = request.heartbeat
                        self.fleet.heartbeat(
                            entry,
                            version if known else None,
                            beat.state,
                            beat.serving if beat.HasField("serving") else None,
                            beat.shadow if beat.HasField("shadow") else None,
                        )
                    else:
                        self.fleet.seen(entry)
                elif kind == "nack":
                    self.fleet.nack(entry, request.nack.version, request.nack.error)
                    log.warning(
                        "edge_nack",
                        extra={
                            "node": entry.node_id,
                            "version": request.nack.version,
                            "error": request.nack.error[:500],
                        },
                    )
                    self._notify()
                else:
                    self.fleet.seen(entry)
        except grpc.RpcError:
            pass  # the stream ended; Subscribe's generator notices through the context

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

    # --- ops -----------------------------------------------------------------------------------------

    def Push(
        self, request_iterator: Iterator[sync_pb2.PushChunk], context: grpc.ServicerContext
    ) -> sync_pb2.PushReply:
        self.staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="push-", dir=self.staging_root))

        def refuse(code: grpc.StatusCode, message: str) -> NoReturn:
            # Server paths are the server's business: a message names the pushed files only.
            public = message.replace(f"{staging}/", "").replace(str(staging), "the push")
            context.abort(code, public.replace(str(self.store.path), "the control plane's data directory"))
            raise AssertionError("context.abort returned")  # it raises; this tells the type checker

        first: list[sync_pb2.PushChunk] = []
        try:
            kind, description, files = self._receive(request_iterator, staging, refuse, first)
            wanted = _rollout_request(first[0], refuse) if first else None
            if wanted is not None:
                info, summary = self._apply_push(kind, description, files, staging, refuse, rollout=wanted)
            else:
                info, summary = self._apply_push(kind, description, files, staging, refuse)
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
        reply = sync_pb2.PushReply(version=info.version, changes=info.changes, summary=summary)
        rollout = self.gate.rollout
        if wanted is not None and rollout is not None and rollout.version == info.version:
            reply.rollout.CopyFrom(self._rollout_proto(rollout))
            log.info(
                "rollout_started",
                extra={
                    "version": rollout.version,
                    "base_version": rollout.base_version,
                    "canary_nodes": list(rollout.canary_nodes)[:100],
                    "shadow": rollout.shadow,
                },
            )
        return reply

    def _in_progress_refusal(self, what: str) -> str | None:
        """The FAILED_PRECONDITION message for `what` while a rollout is in progress (None: none is)."""
        rollout = self.gate.rollout
        if rollout is None or not rollout.in_progress:
            return None
        nodes = ", ".join(rollout.canary_nodes[:10]) or "none"
        more = ", ..." if len(rollout.canary_nodes) > 10 else ""
        return (
            f"{what} refused: the rollout of version {rollout.version} is in progress "
            f"(canary: {nodes}{more}); end it first with `edgewise ctl promote` or `edgewise ctl abort`"
        )

    def _rollout_write(
        self, wanted: RolloutRequest
    ) -> Callable[[CommitInfo | None], tuple[bytes, tuple[int, int] | None] | None]:
        """The rollout record a push starting `wanted` writes with its commit."""
        if wanted.nodes:
            nodes = wanted.nodes
        elif wanted.percent:
            fleet = self._fleet_edges()
            connected = [e.node_id for e in fleet if e.connected]
            try:
                nodes = choose_canary(
                    wanted.percent, connected or [e.node_id for e in fleet], self.store.head_version()
                )
            except RolloutError as exc:
                raise ControlStoreError(str(exc)) from exc
        else:
            nodes = ()
        sample = (wanted.shadow_sample or self.rollout_policy.shadow_sample) if wanted.shadow else 0.0

        def write(info: CommitInfo | None) -> tuple[bytes, tuple[int, int] | None] | None:
            if info is None:
                return None  # nothing changed: no candidate, no rollout
            # Inside the commit's write transaction: until the gate has this rollout (`_apply_push`), no
            # edge is sent anything past the base version.
            self.gate.hold(info.base_version)
            rollout = Rollout(
                version=info.version,
                base_version=info.base_version,
                state=CANARY,
                canary_nodes=tuple(sorted(set(nodes))),
                shadow=wanted.shadow,
                shadow_sample=sample,
                started_at_ms=_now_ms(),
            )
            return encode_rollout(rollout), None

        return write

    def _apply_push(
        self,
        kind: int,
        description: str,
        files: list[str],
        staging: Path,
        refuse: Callable[[grpc.StatusCode, str], NoReturn],
        *,
        rollout: RolloutRequest | None = None,
    ) -> tuple[CommitInfo | None, str]:
        """Validate the staged push and commit it (the commit and a summary of it); refuses what is wrong.
        `rollout`: the push starts that rollout, its state written with the commit."""
        with self._push_lock:
            refusal = self._in_progress_refusal("a canary push" if rollout is not None else "a push")
            if refusal is not None:
                refuse(grpc.StatusCode.FAILED_PRECONDITION, refusal)
            try:
                write = self._rollout_write(rollout) if rollout is not None else None
                if kind == sync_pb2.PUSH_KIND_BUNDLE:
                    bundle = load_bundle(staging)
                    info = self.store.replace_all(
                        _keep_fleet_activity(bundle_records(bundle), self._fleet_activity()),
                        kind="push",
                        description=description or f"bundle {bundle.version}",
                        rollout=write,
                    )
                    summary = (
                        f"bundle version {bundle.version}: {len(bundle.items)} items, "
                        f"{len(bundle.profiles)} profiles"
                    )
                else:
                    if len(files) != 1:
                        refuse(grpc.StatusCode.INVALID_ARGUMENT, "a delta push carries exactly one file")
                    name = files[0]
                    with self.store.read() as view:
                        text = (staging / name).read_text(encoding="utf-8")
                        changes = parse_delta(text.splitlines(), view, file=name)
                    info = self.store.commit(
                        changes, kind="delta", description=description or name, rollout=write
                    )
                    summary = f"delta {name}: {len(changes)} changes"
            except BundleError as exc:
                refuse(grpc.StatusCode.INVALID_ARGUMENT, f"push refused, nothing changed: {exc}")
            except UnicodeDecodeError as exc:
                refuse(grpc.StatusCode.INVALID_ARGUMENT, f"push refused: the delta file is not UTF-8: {exc}")
            except OSError as exc:  # a pushed file that cannot be read as the bundle needs it
                where = Path(exc.filename).name if exc.filename else "a pushed file"
                refuse(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"push refused, nothing changed: {where}: {exc.strerror or exc}",
                )
            except ControlStoreError as exc:
                refuse(grpc.StatusCode.FAILED_PRECONDITION, f"push not applied: {exc}")
            finally:
                if rollout is not None:
                    self.gate.reload(self.store)
                    self.gate.release()
        return info, summary

    def _receive(
        self,
        chunks: Iterator[sync_pb2.PushChunk],
        staging: Path,
        refuse: Callable[[grpc.StatusCode, str], NoReturn],
        first: list[sync_pb2.PushChunk] | None = None,
    ) -> tuple[int, str, list[str]]:
        """Stage the pushed files; `first` (if given) receives the first chunk without its data."""
        kind = sync_pb2.PUSH_KIND_UNSPECIFIED
        description = ""
        files: list[str] = []
        layout = PushLayout()
        total = 0
        handle: BinaryIO | None = None  # the file being written: files[-1]
        try:
            for i, chunk in enumerate(chunks):
                if i == 0:
                    kind = chunk.kind
                    description = chunk.description[:500]
                    if first is not None:
                        head = sync_pb2.PushChunk()
                        head.CopyFrom(chunk)
                        head.data = b""
                        first.append(head)
                    if kind not in (sync_pb2.PUSH_KIND_BUNDLE, sync_pb2.PUSH_KIND_DELTA):
                        refuse(grpc.StatusCode.INVALID_ARGUMENT, "the first push chunk must set kind")
                total += len(chunk.data)
                if total > _MAX_PUSH_BYTES:
                    refuse(grpc.StatusCode.INVALID_ARGUMENT, "push larger than 64 GiB")
                if not files or files[-1] != chunk.path:
                    problem = layout.add(chunk.path)
                    if problem is not None:
                        refuse(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"bad file path in push: {chunk.path[:200]!r}: {problem}",
                        )
                    if handle is not None:
                        handle.close()
                    target = staging / chunk.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    handle = target.open("wb")
                    files.append(chunk.path)
                assert handle is not None
                handle.write(chunk.data)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                refuse(grpc.StatusCode.RESOURCE_EXHAUSTED, "no room on the control plane to stage the push")
            log.error("push_staging_failed", extra={"error": repr(exc)})
            refuse(grpc.StatusCode.INTERNAL, f"staging the push failed: {exc.strerror or exc}")
        finally:
            if handle is not None:
                handle.close()
        if not files:
            refuse(grpc.StatusCode.INVALID_ARGUMENT, "empty push")
        return kind, description, files

    def Rollback(
        self, request: sync_pb2.RollbackRequest, context: grpc.ServicerContext
    ) -> sync_pb2.PushReply:
        with self._push_lock:
            refusal = self._in_progress_refusal("a rollback")
            if refusal is not None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
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
            commits=[commit_proto(c) for c in self.store.history(min(limit, 10_000))],
            head_version=self.store.head_version(),
            log_start_version=self.store.log_start_version(),
            snapshot_versions=self.store.snapshot_versions(),
        )

    def Status(self, request: sync_pb2.StatusRequest, context: grpc.ServicerContext) -> sync_pb2.StatusReply:
        head = self.store.head_version()
        total = self._events_total()
        fleet = self._fleet_edges()
        rollout = self.gate.rollout
        edges = []
        for entry in fleet:
            canary = self.gate.in_canary(entry.node_id)
            limit = self.gate.plan(entry.node_id).limit
            edges.append(_edge_status(entry, head if limit is None else min(head, limit), canary))
        reply = sync_pb2.StatusReply(head_version=head, edges=edges, events_total=total)
        if rollout is not None:
            reply.rollout.CopyFrom(self._rollout_proto(rollout, fleet))
        return reply

    # --- rollouts ------------------------------------------------------------------------------------

    def _rollout_figures(
        self, rollout: Rollout, fleet: list[EdgeEntry] | None = None
    ) -> tuple[sync_pb2.RolloutHealth, sync_pb2.RolloutHealth, int, int, sync_pb2.ShadowStats]:
        """The rollout's live health (canary, rest, their calls) and shadow sums, from the fleet."""
        entries = fleet if fleet is not None else self._fleet_edges()
        canary, rest, canary_calls, rest_calls = rollout_health(
            rollout, (EdgeServing(e.node_id, e.connected, e.serving) for e in entries)
        )
        shadow = sum_shadow(rollout, (e.shadow for e in entries))
        return canary, rest, canary_calls, rest_calls, shadow

    def _rollout_proto(self, rollout: Rollout, fleet: list[EdgeEntry] | None = None) -> sync_pb2.Rollout:
        """A rollout as StatusReply and PushReply carry it: live figures while in progress, else the
        figures kept when it ended."""
        out = sync_pb2.Rollout(
            version=rollout.version,
            base_version=rollout.base_version,
            state=rollout.state,
            canary_nodes=rollout.canary_nodes,
            shadow=rollout.shadow,
            shadow_sample=rollout.shadow_sample,
            started_at_ms=rollout.started_at_ms,
            ended_at_ms=rollout.ended_at_ms,
            reason=rollout.reason,
            rollback_version=rollout.rollback_version,
        )
        if rollout.in_progress:
            canary, rest, _, _, shadow = self._rollout_figures(rollout, fleet)
            out.canary.CopyFrom(canary)
            out.rest.CopyFrom(rest)
            out.shadow_stats.CopyFrom(shadow)
        else:
            final = rollout.final
            out.canary.CopyFrom(sync_pb2.RolloutHealth(**final.get("canary", {})))
            out.rest.CopyFrom(sync_pb2.RolloutHealth(**final.get("rest", {})))
            out.shadow_stats.CopyFrom(sync_pb2.ShadowStats(**final.get("shadow", {})))
        return out

    def _final_figures(self, rollout: Rollout) -> dict[str, Any]:
        canary, rest, _, _, shadow = self._rollout_figures(rollout)
        return {
            "canary": health_document(canary),
            "rest": health_document(rest),
            "shadow": shadow_document(shadow),
        }

    def _current_rollout(self, version: int, context: grpc.ServicerContext, what: str) -> Rollout:
        """The rollout in progress, checked against the version the caller named (0: any)."""
        rollout = self.gate.rollout
        if rollout is None or not rollout.in_progress:
            last = (
                ""
                if rollout is None
                else f" (the last one, of version {rollout.version}, was {rollout.state})"
            )
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{what}: no rollout in progress{last}")
        if version and version != rollout.version:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{what}: the rollout in progress is of version {rollout.version}, not {version}",
            )
        return rollout

    def Promote(self, request: sync_pb2.PromoteRequest, context: grpc.ServicerContext) -> sync_pb2.PushReply:
        with self._push_lock:
            rollout = self._current_rollout(request.version, context, "promote")
            ended = self._promote(rollout, "promoted by ops")
        return sync_pb2.PushReply(
            version=self.store.head_version(),
            changes=0,
            summary=f"version {ended.version} promoted: every edge gets it now",
            rollout=self._rollout_proto(ended),
        )

    def Abort(self, request: sync_pb2.AbortRequest, context: grpc.ServicerContext) -> sync_pb2.PushReply:
        reason = request.reason[:500] or "aborted by ops"
        with self._push_lock:
            rollout = self._current_rollout(request.version, context, "abort")
            try:
                ended, info = self._abort(rollout, reason)
            except ControlStoreError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"abort not applied: {exc}")
        return sync_pb2.PushReply(
            version=ended.rollback_version,
            changes=info.changes if info is not None else 0,
            summary=(
                f"rollout of version {ended.version} aborted: version {ended.rollback_version} has the state "
                f"of version {ended.base_version}"
            ),
            rollout=self._rollout_proto(ended),
        )

    def _promote(self, rollout: Rollout, reason: str) -> Rollout:
        """End `rollout` as promoted (push lock held)."""
        ended = rollout.ended(PROMOTED, reason, _now_ms(), self._final_figures(rollout))
        self.store.put_rollout(encode_rollout(ended))
        self.gate.reload(self.store)
        self._notify()
        log.info("rollout_promoted", extra={"version": rollout.version, "reason": reason})
        return ended

    def _abort(self, rollout: Rollout, reason: str) -> tuple[Rollout, CommitInfo | None]:
        """End `rollout` as aborted: a rollback commit to its base version's state, and the skip that
        moves the edges at the base version past the candidate (push lock held)."""
        final = self._final_figures(rollout)
        ended: list[Rollout] = []

        def write(info: CommitInfo | None) -> tuple[bytes, tuple[int, int] | None]:
            to = info.version if info is not None else self.store.head_version()
            done = rollout.ended(ABORTED, reason, _now_ms(), final, rollback_version=to)
            ended.append(done)
            return encode_rollout(done), (rollout.base_version, to)

        info = self.store.rollback(
            rollout.base_version,
            description=f"abort the rollout of version {rollout.version}: {reason}",
            rollout=write,
        )
        self.gate.reload(self.store)
        self._notify()
        log.warning(
            "rollout_aborted",
            extra={
                "version": rollout.version,
                "base_version": rollout.base_version,
                "rollback_version": ended[0].rollback_version,
                "reason": reason,
            },
        )
        return ended[0], info

    def check_rollout(self) -> None:
        """The watch: abort the rollout in progress past the thresholds, or promote it after the soak time
        with healthy figures (when configured)."""
        policy = self.rollout_policy
        rollout = self.gate.rollout
        if rollout is None or not rollout.in_progress:
            return
        canary, rest, canary_calls, rest_calls, _ = self._rollout_figures(rollout)
        reason = unhealthy_reason(policy, canary, rest, canary_calls, rest_calls)
        soaked = (
            policy.promote_after_seconds > 0
            and _now_ms() - rollout.started_at_ms >= policy.promote_after_seconds * 1000
            and judged(policy, canary_calls, rest_calls)
        )
        if (reason is None or not policy.auto_abort) and not (soaked and reason is None):
            return
        with self._push_lock:
            current = self.gate.rollout
            if current is None or current.version != rollout.version or not current.in_progress:
                return  # ended meanwhile
            if reason is not None:
                self._abort(current, f"automatic abort: {reason}")
            else:
                self._promote(
                    current, f"automatic promotion: healthy after {policy.promote_after_seconds:g} s"
                )

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
                now_ms=time.time_ns() // 1_000_000,
            )
        except ReportError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if report.skipped:
            log.warning(
                "forwarded_records_skipped",
                extra={"consumer": "report", "experiment": request.experiment, "skipped": report.skipped},
            )
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
            removed = self._forget_events(user)
        self._notify()
        version = info.version if info is not None else (self.store.forgotten_version(user) or 0)
        log.info(
            "user_forgotten", extra={"version": version, "events_removed": removed}
        )  # never the user id in logs
        return sync_pb2.ForgetReply(version=version, events_removed=removed)

    def ForgetStatus(
        self, request: sync_pb2.ForgetStatusRequest, context: grpc.ServicerContext
    ) -> sync_pb2.ForgetStatusReply:
        edges = self._fleet_edges()
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
        refusal = identity_refusal(self._identity(context), request.node_id, None)
        if refusal is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"node_id: {refusal}")
        if len(request.records) > MAX_FORWARD_RECORDS:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"records: {len(request.records)} in one call, at most {MAX_FORWARD_RECORDS}",
            )
        checked: list[tuple[str, str, bytes]] = []  # (kind, id, payload): each payload decoded once
        users: list[str] = []
        rejected: list[tuple[int, str]] = []  # (seq, problem)
        now_ms = time.time_ns() // 1_000_000
        for record in request.records:
            # A record that can never be used is acknowledged and dropped, with a log line: refusing the
            # whole call would have the edge send it again forever, its outbox stuck behind it. Checked in
            # full (core/forwarded.py), so nothing stored can stop the jobs that read the events.
            try:
                keys = check_forwarded(record.kind, record.payload, now_ms)
            except ForwardedRecordError as exc:
                rejected.append((record.seq, str(exc)))
                continue
            checked.append((record.kind, keys.event_id, record.payload))
            users.append(keys.user_id)
        if rejected:
            seq, problem = rejected[0]
            log.warning(
                "forward_record_rejected",
                extra={"node": request.node_id, "records": len(rejected), "seq": seq, "error": problem},
            )
        try:
            # Records of forgotten users are dropped, not stored again: an edge that has not applied the
            # forget yet still forwards what it queued. Under the forget lock, so a forget in progress
            # (control store, then event store) cannot slip between this check and the ingest.
            with self._forget_lock:
                forgotten = self.store.forgotten_among(users)
                kept = [(c, u) for c, u in zip(checked, users, strict=True) if u not in forgotten]
                result = self._store_forwarded(request.node_id, [c for c, _ in kept], [u for _, u in kept])
        except EventStoreError as exc:
            log.error("events_not_stored", extra={"node": request.node_id, "error": str(exc)})
            context.abort(grpc.StatusCode.UNAVAILABLE, "events could not be stored; retry later")
        self.fleet.forwarded(request.node_id, result.accepted)
        return sync_pb2.ForwardReply(
            acked_seq=max((r.seq for r in request.records), default=0),
            accepted=result.accepted,
            duplicates=result.duplicates,
            forgotten=len(checked) - len(kept),
            rejected=len(rejected),
        )

    # --- where forwarded events are kept (the central tier keeps them in JetStream) -----------------

    def _store_forwarded(
        self, node_id: str, records: list[tuple[str, str, bytes]], users: list[str]
    ) -> IngestResult:
        """Store checked records (kind, id, payload) of `users`; EventStoreError when they were not."""
        assert self.events is not None
        return self.events.ingest(node_id, records, users)

    def _forget_events(self, user: str) -> int:
        """Delete a forgotten user's stored events and exposures; how many."""
        return self.events.forget(user) if self.events is not None else 0

    def _fleet_edges(self) -> list[EdgeEntry]:
        """The edges `ctl status` and `ctl forget --status` show (the central tier adds other replicas')."""
        return self.fleet.edges()

    def _events_total(self) -> int:
        """Events and exposures stored (`ctl status`)."""
        return self.events.count() if self.events is not None else 0


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
        "skipped": report.skipped,
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
            "rel_lift_low": holdout.relative_low,
            "rel_lift_high": holdout.relative_high,
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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _rollout_request(
    first: sync_pb2.PushChunk, refuse: Callable[[grpc.StatusCode, str], NoReturn]
) -> RolloutRequest | None:
    """The rollout a push's first chunk asks for (None: a plain push), checked."""
    nodes = tuple(first.canary_nodes)
    wants = first.canary_percent != 0 or nodes or first.shadow or first.shadow_sample != 0
    if not wants:
        return None
    if first.canary_percent and nodes:
        refuse(grpc.StatusCode.INVALID_ARGUMENT, "--canary and --canary-nodes: give one of them, not both")
    if first.canary_percent and not 0 < first.canary_percent <= 100:
        refuse(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"--canary: a percentage in (0, 100], got {first.canary_percent:g}",
        )
    if len(nodes) > MAX_CANARY_NODES or any(not n or len(n) > 128 for n in nodes):
        refuse(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"--canary-nodes: at most {MAX_CANARY_NODES} node ids of 1-128 characters each",
        )
    if first.shadow_sample and not first.shadow:
        refuse(grpc.StatusCode.INVALID_ARGUMENT, "--shadow-sample needs --shadow")
    if not 0 <= first.shadow_sample <= 1:
        refuse(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"--shadow-sample: a share in (0, 1], got {first.shadow_sample:g}",
        )
    return RolloutRequest(first.canary_percent, nodes, first.shadow, first.shadow_sample)


def _edge_status(entry: EdgeEntry, target: int, canary: bool = False) -> sync_pb2.EdgeStatus:
    """An edge's row of `ctl status`: a disconnected edge's state is not known (UNSPECIFIED); its lag is
    counted from the version it is meant to have (`target`: the head, or a rollout's base version)."""
    return sync_pb2.EdgeStatus(
        node_id=entry.node_id,
        shard=entry.shard,
        applied_version=entry.applied_version,
        lag=max(0, target - entry.applied_version),
        last_ack_version=entry.last_ack_version,
        last_nack_version=entry.last_nack_version,
        last_error=entry.last_error,
        state=entry.state if entry.connected else sync_pb2.EDGE_STATE_UNSPECIFIED,
        connected=entry.connected,
        last_seen_ms=entry.last_seen_ms,
        peer=entry.peer,
        events_forwarded=entry.events_forwarded,
        serving=entry.serving,
        shadow=entry.shadow,
        canary=canary,
    )
