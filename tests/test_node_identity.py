"""Edges cannot impersonate each other (issue 16, item 5): per-node tokens bound to a node id and its
shards (`auth.node_tokens_file`), and versions no edge can have are never recorded in the fleet.

In-process servers with the interceptors `edgewise control serve` installs, and one real control plane
with a real edge using its own token."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from edgewise.core.activity import Event
from edgewise.sync.auth import (
    AuthError,
    NodeIdentity,
    TokenAuth,
    bearer_metadata,
    load_node_tokens,
    make_interceptors,
)
from edgewise.sync.control_server import ControlPlaneService
from edgewise.sync.control_store import ControlStore, RecordChange
from edgewise.sync.event_store import EventStore
from edgewise.sync.shard import parse_shard
from edgewise.v1 import sync_pb2, sync_pb2_grpc
from tests.conftest import EdgeProcess
from tests.sync_support import (
    control_planes,
    following_edge,
    ops_client,
    versions_reach,
    wait_for,
)

OPS_TOKEN = "ops-identity-1f0c"
EDGE_TOKEN = "edge-identity-shared-88e1"
A_TOKEN = "node-a-identity-4b7d"
B_TOKEN = "node-b-identity-c3a9"
NODE_TOKENS_TEXT = f"""\
# node      shard            token
edge-a      hash:0-50/100    {A_TOKEN}
edge-a      hash:50-100/100  {A_TOKEN}
edge-b      region:DE,AT     {B_TOKEN}
"""

_DONE = threading.Event()


def _hello(node: str, shard: str = "all", version: int = 0, lineage: str = "") -> sync_pb2.SubscribeRequest:
    return sync_pb2.SubscribeRequest(
        hello=sync_pb2.Hello(
            node_id=node, shard=parse_shard(shard).to_proto(), last_version=version, lineage=lineage
        )
    )


def _requests(*messages: sync_pb2.SubscribeRequest) -> Iterator[sync_pb2.SubscribeRequest]:
    yield from messages
    _DONE.wait(60)  # keep the stream open


@contextmanager
def served(tmp_path: Path, *, shared_token: bool) -> Iterator[tuple[str, ControlStore, ControlPlaneService]]:
    """A control plane with the ops token, the per-node tokens of NODE_TOKENS_TEXT and (if
    `shared_token`) the shared edge token."""
    (tmp_path / "nodes").write_text(NODE_TOKENS_TEXT)
    [auth] = make_interceptors(
        [EDGE_TOKEN] if shared_token else [], [OPS_TOKEN], load_node_tokens(tmp_path / "nodes")
    )
    assert isinstance(auth, TokenAuth)
    store = ControlStore(tmp_path / "control")
    store.commit([RecordChange("profiles", f"u{n}", b"\x80") for n in range(3)], kind="delta")
    events = EventStore(tmp_path / "events", map_size=64 << 20)
    service = ControlPlaneService(store, events=events, heartbeat_seconds=0.3, identity_of=auth.identity)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[auth])
    sync_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _DONE.clear()
    try:
        yield f"127.0.0.1:{port}", store, service
    finally:
        _DONE.set()
        server.stop(0).wait()
        events.close()
        store.close()


def _first(call: Iterator[sync_pb2.SyncMessage]) -> str:
    """The kind of the first message of a subscription, or "CODE: details" of its refusal."""
    try:
        kind = next(call).WhichOneof("kind")
        return kind or ""
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]


def test_a_per_node_token_subscribes_only_as_its_node_and_its_shards(tmp_path: Path) -> None:
    with served(tmp_path, shared_token=False) as (address, _, _), grpc.insecure_channel(address) as ch:
        stub = sync_pb2_grpc.ControlPlaneStub(ch)
        a = bearer_metadata(A_TOKEN)

        def subscribe(node: str, shard: str, metadata: tuple[tuple[str, str], ...]) -> str:
            call = stub.Subscribe(_requests(_hello(node, shard)), metadata=metadata, timeout=10)
            try:
                return _first(call)
            finally:
                call.cancel()

        assert subscribe("edge-a", "hash:0-50/100", a) == "chunk"
        assert subscribe("edge-a", "hash:50-100/100", a) == "chunk"
        assert subscribe("edge-b", "region:AT,DE", bearer_metadata(B_TOKEN)) == "chunk"
        impersonating = subscribe("edge-b", "region:DE,AT", a)
        assert impersonating.startswith("PERMISSION_DENIED: hello: this token is node edge-a's")
        everything = subscribe("edge-a", "all", a)
        assert everything == (
            "PERMISSION_DENIED: hello: node edge-a may subscribe to shard hash:0-50/100, hash:50-100/100 "
            "only, not all"
        )
        # without per-node entries for it, the shared token is not configured here: unknown
        assert subscribe("edge-a", "all", bearer_metadata(EDGE_TOKEN)).startswith("UNAUTHENTICATED")


def test_a_per_node_token_forwards_only_as_its_node(tmp_path: Path) -> None:
    record = sync_pb2.OutboxRecord(
        seq=1,
        kind="event",
        payload=Event("f1", "view", "u1", "", "i1", "", "", 0.0, time.time_ns() // 1_000_000).encode(),
    )
    with served(tmp_path, shared_token=True) as (address, _, service), grpc.insecure_channel(address) as ch:
        stub = sync_pb2_grpc.ControlPlaneStub(ch)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Forward(
                sync_pb2.ForwardRequest(node_id="edge-b", records=[record]),
                metadata=bearer_metadata(A_TOKEN),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "node_id: this token is node edge-a's; it cannot act as node edge-b" in str(
            refused.value.details()
        )
        reply = stub.Forward(
            sync_pb2.ForwardRequest(node_id="edge-a", records=[record]),
            metadata=bearer_metadata(A_TOKEN),
            timeout=10,
        )
        assert reply.accepted == 1
        # the shared edge token, still configured beside the per-node ones, is not bound to a node
        reply = stub.Forward(
            sync_pb2.ForwardRequest(node_id="anything", records=[record]),
            metadata=bearer_metadata(EDGE_TOKEN),
            timeout=10,
        )
        assert reply.duplicates == 1
        assert {e.node_id for e in service.fleet.edges()} == {"edge-a", "anything"}


def test_versions_no_edge_can_have_are_not_recorded(tmp_path: Path) -> None:
    # The repro: a Hello as "edge-A" and a heartbeat of version 10^12 made `ctl forget --status`
    # report the forget confirmed by edge-A, and `ctl status` show it at 10^12.
    with served(tmp_path, shared_token=True) as (address, store, _), grpc.insecure_channel(address) as ch:
        stub = sync_pb2_grpc.ControlPlaneStub(ch)
        ops = bearer_metadata(OPS_TOKEN)
        forgot = stub.Forget(sync_pb2.ForgetRequest(user_id="u1"), metadata=ops, timeout=10).version
        head = store.head_version()
        made_up = sync_pb2.SubscribeRequest(
            heartbeat=sync_pb2.Heartbeat(version=10**12, state=sync_pb2.EDGE_STATE_READY)
        )
        ahead_ack = sync_pb2.SubscribeRequest(ack=sync_pb2.Ack(version=10**12))
        # each stream ends with a NACK, which the fleet records: once it shows, all before it was read
        marker = sync_pb2.SubscribeRequest(nack=sync_pb2.Nack(version=7, error="marker"))
        streams = [
            # another lineage (or none): its versions mean nothing here until it applied a snapshot
            [_hello("edge-A", version=head), made_up, marker],
            # this lineage, but a heartbeat and an ACK ahead of the head
            [_hello("edge-B", version=1, lineage=store.lineage), made_up, ahead_ack, marker],
            # a hello ahead of the head
            [_hello("edge-C", version=10**12, lineage=store.lineage), marker],
        ]
        calls = [stub.Subscribe(_requests(*m), metadata=bearer_metadata(EDGE_TOKEN)) for m in streams]

        def edges() -> dict[str, sync_pb2.EdgeStatus]:
            reply = stub.Status(sync_pb2.StatusRequest(), metadata=ops, timeout=10)
            return {e.node_id: e for e in reply.edges}

        wait_for(
            lambda: len(edges()) == 3 and all(e.last_nack_version == 7 for e in edges().values()),
            10,
            "three edges' messages read",
        )
        seen = edges()
        assert {n: e.applied_version for n, e in seen.items()} == {"edge-A": 0, "edge-B": 1, "edge-C": 0}
        assert all(e.applied_version <= head for e in seen.values())
        status = stub.ForgetStatus(sync_pb2.ForgetStatusRequest(user_id="u1"), metadata=ops, timeout=10)
        [user] = status.users
        assert user.version == forgot
        assert list(user.confirmed) == [] and sorted(user.pending) == ["edge-A", "edge-B", "edge-C"]
        for call in calls:
            call.cancel()


# --- the node tokens file --------------------------------------------------------------------------------


def test_the_node_tokens_file(tmp_path: Path) -> None:
    (tmp_path / "nodes").write_text(
        NODE_TOKENS_TEXT + f"\n  # rotation: a second token\nedge-b region:CH {A_TOKEN[::-1]}\n"
    )
    tokens = load_node_tokens(tmp_path / "nodes")
    assert tokens[A_TOKEN] == NodeIdentity(
        "edge-a", frozenset({parse_shard("hash:0-50/100"), parse_shard("hash:50-100/100")})
    )
    assert tokens[B_TOKEN] == NodeIdentity("edge-b", frozenset({parse_shard("region:DE,AT")}))
    assert tokens[A_TOKEN[::-1]].node_id == "edge-b"
    auth = TokenAuth([], [OPS_TOKEN], node_tokens=tokens)
    assert auth.role_of(A_TOKEN) == "edge" and auth.role_of(A_TOKEN + "x") is None
    assert auth.identity(bearer_metadata(B_TOKEN)) == tokens[B_TOKEN]
    assert auth.identity(bearer_metadata(OPS_TOKEN)) is None
    assert A_TOKEN not in repr(auth) and "node_tokens=<3>" in repr(auth)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "has no entries"),
        ("# only a comment\n", "has no entries"),
        ("edge-a all\n", "line 1: expected NODE_ID SHARD TOKEN, found 2 fields"),
        (f"edge-a hash:5-2/10 {A_TOKEN}\n", "line 1: hash range 5-2"),
        (f"edge-a all {A_TOKEN}\nedge-b all {A_TOKEN}\n", "line 2: this token is already node edge-a's"),
        (f"edge-a all tok\u00e9n-{A_TOKEN}\n", "line 1 must be printable ASCII"),
    ],
)
def test_a_bad_node_tokens_file_names_file_and_line_never_the_token(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "nodes"
    path.write_text(text)
    with pytest.raises(AuthError, match=message) as refused:
        load_node_tokens(path)
    assert str(path) in str(refused.value) and A_TOKEN not in str(refused.value)


def test_a_node_token_cannot_also_be_the_edge_or_ops_token() -> None:
    node = {OPS_TOKEN: NodeIdentity("edge-a", frozenset({parse_shard("all")}))}
    with pytest.raises(AuthError, match="node edge-a's token is also configured as the ops token") as refused:
        TokenAuth([EDGE_TOKEN], [OPS_TOKEN], node_tokens=node)
    assert OPS_TOKEN not in str(refused.value)


# --- a real control plane and edge ----------------------------------------------------------------------


@pytest.mark.slow
def test_an_edge_with_its_own_token_converges_and_cannot_use_another_node_id(
    tmp_path: Path, bundle_dir: Path, edge_factory: Callable[..., EdgeProcess]
) -> None:
    nodes = tmp_path / "nodes.tokens"
    nodes.write_text(f"pop-1 all {A_TOKEN}\n")
    # no shared edge token (an empty variable is unset), whatever an earlier test left in the environment
    ops_env = {"EDGEWISE_OPS_TOKEN": OPS_TOKEN, "EDGEWISE_EDGE_TOKEN": ""}
    with control_planes(tmp_path, ops_env) as start:
        control = start(None, "--node-tokens-file", str(nodes))
        with ops_client(control.address, ops_env) as ops:
            version = ops.push(bundle_dir).version
        token_file = tmp_path / "a.token"
        token_file.write_text(A_TOKEN)
        good = following_edge(
            edge_factory,
            tmp_path / "pop-1",
            control.address,
            "pop-1",
            {},
            "--token-file",
            str(token_file),
        )
        wait_for(versions_reach([tmp_path / "pop-1"], version), 30, "pop-1 at the pushed version")
        assert good.address
        with ops_client(control.address, ops_env) as ops:
            [row] = ops.status().edges
        assert (row.node_id, row.applied_version, row.connected) == ("pop-1", version, True)
        warnings = {e.get("event") for e in control.log_events() if e.get("level") == "warning"}
        assert "node_identity_off" not in warnings and "node_identity_partial" not in warnings
        # the same token under another node id: refused, nothing applied, the real pop-1 untouched
        with grpc.insecure_channel(control.address) as channel:
            call = sync_pb2_grpc.ControlPlaneStub(channel).Subscribe(
                _requests(_hello("pop-2")), metadata=bearer_metadata(A_TOKEN), timeout=10
            )
            assert _first(call).startswith("PERMISSION_DENIED: hello: this token is node pop-1's")
        with ops_client(control.address, ops_env) as ops:
            assert [e.node_id for e in ops.status().edges] == ["pop-1"]
