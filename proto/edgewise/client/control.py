"""`ControlClient`: the ops calls of a control plane (push, push a delta, roll back, history, status,
forget, forget status, experiment report, promote and abort a rollout), in plain dataclasses."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias, TypeVar

import grpc

from edgewise.client.channels import Metadata, PathLike, Transport, call_metadata, sync_channel
from edgewise.client.errors import client_error
from edgewise.sync.bundle import load_bundle
from edgewise.sync.control_server import FORGET_STATUS_DEFAULT, FORGET_STATUS_MAX
from edgewise.sync.ops_replies import (
    BundleInfo,
    FleetStatus,
    ForgetResult,
    ForgetStatus,
    History,
    PushResult,
    fleet_status_from_pb,
    forget_result_from_pb,
    forget_status_from_pb,
    history_from_pb,
    push_result_from_pb,
)
from edgewise.sync.push_chunks import Progress, bundle_files, file_chunks
from edgewise.v1 import sync_pb2, sync_pb2_grpc

__all__ = ["ControlClient", "Metric", "SliceBy"]

_MAX_RECEIVE: Final = 64 << 20  # a report or a fleet status of many edges is larger than gRPC's 4 MiB
Metric: TypeAlias = Literal["ctr", "conversion", "revenue"]
SliceBy: TypeAlias = Literal["", "channel", "country", "segment"]
_Reply = TypeVar("_Reply")


class ControlClient:
    """A client of a control plane's ops calls: blocking, thread-safe.

        with ControlClient("127.0.0.1:50061", token=ops_token) as control:
            pushed = control.push("./bundle", description="spring catalog")
            print(pushed.version, [e.applied_version for e in control.status().edges])

    `token` is the ops bearer token (None for a control plane running without tokens). TLS: `tls_ca`
    (and `tls_cert` + `tls_key` for mutual TLS) or `credentials`; plaintext when none is given.
    `timeout` (seconds) is each call's deadline; a push of a large bundle needs a long one.

    Errors: a call the control plane refuses, or cannot be reached for, raises `ClientError` (`.code`,
    `.details`): UNAUTHENTICATED (no or an unknown token), PERMISSION_DENIED (an edge token),
    INVALID_ARGUMENT (a bundle or delta refused, nothing changed; the details name the file and line),
    FAILED_PRECONDITION (e.g. a rollback to a version no snapshot is kept of), NOT_FOUND (e.g. an unknown
    experiment), UNAVAILABLE / DEADLINE_EXCEEDED (unreachable, a TLS mismatch, too slow). A bundle
    that fails local validation raises `BundleError` before anything is uploaded; other bad arguments
    raise ValueError (or FileNotFoundError for a missing delta file), also before any call."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = 600.0,
        tls_ca: PathLike | None = None,
        tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if not target:
            raise ValueError("target: HOST:PORT of the control plane is required")
        if not timeout > 0:
            raise ValueError(f"timeout: must be a positive number of seconds, got {timeout}")
        self.target = target
        self.timeout = timeout
        self._metadata: Metadata = call_metadata(token)
        transport = Transport(
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            credentials=credentials,
            options=(("grpc.max_receive_message_length", _MAX_RECEIVE),),
        )
        self._channel = sync_channel(target, transport)
        self._stub = sync_pb2_grpc.ControlPlaneStub(self._channel)

    # --- pushes ---------------------------------------------------------------------------------------

    def push(
        self,
        bundle_dir: PathLike,
        *,
        description: str = "",
        progress: Progress | None = None,
        canary_percent: float = 0.0,
        canary_nodes: Iterable[str] = (),
        shadow: bool = False,
        shadow_sample: float = 0.0,
    ) -> PushResult:
        """Validate the bundle directory here (a refused bundle raises `BundleError` naming the file,
        record and field, and nothing is uploaded), then upload its files in 1 MiB chunks and return the
        committed version. `progress(sent_bytes, total_bytes)` is called as chunks go out.

        A canary rollout (docs/rollouts.md): `canary_percent` (that share of the edges, at least one) or
        `canary_nodes` get the new version first, the rest once it is promoted; `shadow`: the edges not
        serving it decide `shadow_sample` of their requests with it too (0: the control plane's default).
        The result's `rollout` says which edges are the canary."""
        rollout = _rollout_chunk(canary_percent, canary_nodes, shadow, shadow_sample)
        root = Path(bundle_dir)
        bundle = load_bundle(root)
        info = BundleInfo(version=bundle.version, items=len(bundle.items), profiles=len(bundle.profiles))
        files: list[tuple[str, Path | bytes]] = list(bundle_files(root))
        chunks = file_chunks(sync_pb2.PUSH_KIND_BUNDLE, files, description, progress, rollout)
        return push_result_from_pb(self._call("Push", self._stub.Push, chunks), info)

    def push_delta(
        self,
        delta: PathLike | Iterable[Mapping[str, Any]],
        *,
        description: str = "",
        name: str = "delta.jsonl",
        progress: Progress | None = None,
        canary_percent: float = 0.0,
        canary_nodes: Iterable[str] = (),
        shadow: bool = False,
        shadow_sample: float = 0.0,
    ) -> PushResult:
        """Push a delta (docs/delta-format.md): a JSON-lines file, or its lines as dicts (sent as one
        file called `name`). The control plane applies all of it or nothing: a refused line raises
        ClientError INVALID_ARGUMENT naming the file and line. Canary and shadow: as for `push`."""
        rollout = _rollout_chunk(canary_percent, canary_nodes, shadow, shadow_sample)
        files: list[tuple[str, Path | bytes]]
        if isinstance(delta, str | os.PathLike):
            path = Path(delta)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file")
            files = [(path.name, path)]
        else:
            if isinstance(delta, Mapping):
                raise ValueError("push_delta: expected a file or a list of lines (dicts), got one dict")
            text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in delta)
            files = [(name, text.encode())]
        chunks = file_chunks(sync_pb2.PUSH_KIND_DELTA, files, description, progress, rollout)
        return push_result_from_pb(self._call("Push", self._stub.Push, chunks))

    def promote(self, version: int = 0) -> PushResult:
        """Promote the rollout in progress (of `version`, if given): every edge gets the candidate.
        FAILED_PRECONDITION when no rollout (of that version) is in progress."""
        if version < 0:
            raise ValueError(f"version: must be >= 0, got {version}")
        reply = self._call("Promote", self._stub.Promote, sync_pb2.PromoteRequest(version=version))
        return push_result_from_pb(reply)

    def abort(self, version: int = 0, *, reason: str = "") -> PushResult:
        """Abort the rollout in progress (of `version`, if given): a rollback commit to the base version's
        state, which the canary edges apply; the other edges never apply the candidate."""
        if version < 0:
            raise ValueError(f"version: must be >= 0, got {version}")
        request = sync_pb2.AbortRequest(version=version, reason=reason)
        return push_result_from_pb(self._call("Abort", self._stub.Abort, request))

    def rollback(self, version: int) -> PushResult:
        """Publish the state of an older `version` (one of `history().snapshot_versions`, or within the
        log) as a new version. Forgotten users stay forgotten."""
        if version < 0:
            raise ValueError(f"version: must be >= 0, got {version}")
        reply = self._call("Rollback", self._stub.Rollback, sync_pb2.RollbackRequest(version=version))
        return push_result_from_pb(reply)

    # --- reading --------------------------------------------------------------------------------------

    def history(self, limit: int = 20) -> History:
        """The newest `limit` commits of the change log (0: the control plane's default, 50), newest
        first, with the head, the start of the log and the retained snapshot versions."""
        if limit < 0:
            raise ValueError(f"limit: must be >= 0, got {limit}")
        return history_from_pb(
            self._call("History", self._stub.History, sync_pb2.HistoryRequest(limit=limit))
        )

    def status(self) -> FleetStatus:
        """Every edge the control plane knows: shard, applied version, lag, last ACK/NACK, state."""
        return fleet_status_from_pb(self._call("Status", self._stub.Status, sync_pb2.StatusRequest()))

    def report(
        self,
        experiment: str,
        *,
        metric: Metric = "ctr",
        by: SliceBy = "",
        confidence: float = 0.95,
        bucket_ms: int = 0,
    ) -> dict[str, Any]:
        """The experiment report document (docs/reports.md): exposures, outcomes, per-variant rates with
        intervals, lift vs control, P(beat), SRM, the holdout comparison, slices `by` a dimension, and
        the cumulative series in buckets of `bucket_ms` (0: chosen from the span of the exposures)."""
        if not experiment:
            raise ValueError("experiment: an experiment id is required")
        if not 0.5 <= confidence < 1:
            raise ValueError(f"confidence: must be in [0.5, 1), got {confidence}")
        if bucket_ms < 0:
            raise ValueError(f"bucket_ms: must be >= 0, got {bucket_ms}")
        request = sync_pb2.ReportRequest(
            experiment=experiment, metric=metric, by=by, confidence=confidence, bucket_ms=bucket_ms
        )
        doc: dict[str, Any] = json.loads(self._call("Report", self._stub.Report, request).json)
        return doc

    # --- forgetting -----------------------------------------------------------------------------------

    def forget(self, user_id: str) -> ForgetResult:
        """Forget `user_id` everywhere: its profile, live activity, outbox entries and stored events, by a
        tombstone no later push or rollback undoes. Edges purge it when they apply the returned version
        (`forget_status` says which did)."""
        if not user_id:
            raise ValueError("user_id: the user to forget is required")
        reply = self._call("Forget", self._stub.Forget, sync_pb2.ForgetRequest(user_id=user_id))
        return forget_result_from_pb(user_id, reply)

    def forget_status(
        self, user_id: str | None = None, *, limit: int = FORGET_STATUS_DEFAULT
    ) -> ForgetStatus:
        """Which edges confirmed each forget: `user_id`'s (no users when it was not forgotten), else the
        newest `limit` forgets (1-1000)."""
        if not 1 <= limit <= FORGET_STATUS_MAX:
            raise ValueError(f"limit: must be 1-{FORGET_STATUS_MAX}, got {limit}")
        request = sync_pb2.ForgetStatusRequest(user_id=user_id or "", limit=limit)
        return forget_status_from_pb(self._call("ForgetStatus", self._stub.ForgetStatus, request))

    # --- plumbing -------------------------------------------------------------------------------------

    def _call(self, method: str, rpc: Callable[..., _Reply], request: Any) -> _Reply:
        try:
            return rpc(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise client_error(method, exc) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _rollout_chunk(
    canary_percent: float, canary_nodes: Iterable[str], shadow: bool, shadow_sample: float
) -> sync_pb2.PushChunk | None:
    """The rollout fields of a push's first chunk (None: a plain push), checked before any upload."""
    if isinstance(canary_nodes, str):
        raise ValueError("canary_nodes: a list of node ids, not one string")
    nodes = [n.strip() for n in canary_nodes if n.strip()]
    if canary_percent and nodes:
        raise ValueError("canary_percent and canary_nodes: give one of them, not both")
    if canary_percent and not 0 < canary_percent <= 100:
        raise ValueError(f"canary_percent: a percentage in (0, 100], got {canary_percent:g}")
    if shadow_sample and not shadow:
        raise ValueError("shadow_sample needs shadow=True")
    if not 0 <= shadow_sample <= 1:
        raise ValueError(f"shadow_sample: a share in (0, 1], got {shadow_sample:g}")
    if not (canary_percent or nodes or shadow):
        return None
    return sync_pb2.PushChunk(
        canary_percent=canary_percent, canary_nodes=nodes, shadow=shadow, shadow_sample=shadow_sample
    )
