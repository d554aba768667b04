"""Bearer tokens and TLS of the control plane (edgewise.sync.auth), against a real gRPC server."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from tls_certs import Certs, make_certs, tls_certs  # noqa: F401 (tls_certs is a fixture)

from edgewise.logs import JsonFormatter
from edgewise.sync import auth
from edgewise.sync.auth import (
    ALL_METHODS,
    OPS_ONLY_METHODS,
    AuthError,
    TokenAuth,
    bearer_metadata,
    load_token,
    make_interceptors,
    open_channel,
    server_credentials,
)
from edgewise.sync.log_limit import LogLimiter
from edgewise.v1 import sync_pb2 as pb
from edgewise.v1 import sync_pb2_grpc as pb_grpc

EDGE_TOKEN = "edge-7f3a9c1e5b2d4086a1c3e5f7b9d1a3c5"
OPS_TOKEN = "ops-0b1d3f5a7c9e2b4d6f8a0c2e4a6b8d0f"
WRONG_TOKEN = "wrong-5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b"
TIMEOUT = 5.0


class FakeControlPlane(pb_grpc.ControlPlaneServicer):
    """Answers every method trivially and counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def Subscribe(
        self, request_iterator: Iterator[pb.SubscribeRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.SyncMessage]:
        self._count("Subscribe")
        for request in request_iterator:
            yield pb.SyncMessage(heartbeat=pb.Heartbeat(version=request.hello.last_version + 1))

    def Push(self, request_iterator: Iterator[pb.PushChunk], context: grpc.ServicerContext) -> pb.PushReply:
        self._count("Push")
        size = sum(len(chunk.data) for chunk in request_iterator)
        return pb.PushReply(version=7, changes=size)

    def Rollback(self, request: pb.RollbackRequest, context: grpc.ServicerContext) -> pb.PushReply:
        self._count("Rollback")
        return pb.PushReply(version=request.version + 1)

    def History(self, request: pb.HistoryRequest, context: grpc.ServicerContext) -> pb.HistoryReply:
        self._count("History")
        return pb.HistoryReply(head_version=3)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        self._count("Status")
        return pb.StatusReply(head_version=3)


@dataclass
class Server:
    server: grpc.Server
    servicer: FakeControlPlane
    port: int
    stopped: bool = field(default=False)

    def stop(self) -> None:
        if not self.stopped:
            self.server.stop(None)
            self.stopped = True


def start_server(
    interceptors: list[grpc.ServerInterceptor], credentials: grpc.ServerCredentials | None = None
) -> Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    servicer = FakeControlPlane()
    pb_grpc.add_ControlPlaneServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port
    server.start()
    return Server(server, servicer, port)


@pytest.fixture
def authed() -> Iterator[Server]:
    srv = start_server(make_interceptors([EDGE_TOKEN], [OPS_TOKEN]))
    yield srv
    srv.stop()


@pytest.fixture
def stub(authed: Server) -> Iterator[pb_grpc.ControlPlaneStub]:
    with grpc.insecure_channel(f"127.0.0.1:{authed.port}") as channel:
        yield pb_grpc.ControlPlaneStub(channel)


def subscribe(stub: pb_grpc.ControlPlaneStub, token: str | None) -> list[pb.SyncMessage]:
    requests = iter([pb.SubscribeRequest(hello=pb.Hello(node_id="e1", last_version=4))])
    return list(stub.Subscribe(requests, timeout=TIMEOUT, metadata=bearer_metadata(token)))


def push(stub: pb_grpc.ControlPlaneStub, token: str | None) -> pb.PushReply:
    chunks = iter([pb.PushChunk(kind=pb.PUSH_KIND_DELTA, path="d.jsonl", data=b"0123456789")])
    return stub.Push(chunks, timeout=TIMEOUT, metadata=bearer_metadata(token))


def status(stub: pb_grpc.ControlPlaneStub, token: str | None) -> pb.StatusReply:
    return stub.Status(pb.StatusRequest(), timeout=TIMEOUT, metadata=bearer_metadata(token))


def rpc_error(call: Callable[..., object], *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value


# --- tokens over a real server ------------------------------------------------------------------------


def test_ops_token_calls_everything(authed: Server, stub: pb_grpc.ControlPlaneStub) -> None:
    assert [m.heartbeat.version for m in subscribe(stub, OPS_TOKEN)] == [5]
    assert push(stub, OPS_TOKEN).changes == 10
    assert status(stub, OPS_TOKEN).head_version == 3
    meta = bearer_metadata(OPS_TOKEN)
    assert stub.Rollback(pb.RollbackRequest(version=2), timeout=TIMEOUT, metadata=meta).version == 3
    assert stub.History(pb.HistoryRequest(), timeout=TIMEOUT, metadata=meta).head_version == 3
    assert authed.servicer.calls == {"Subscribe": 1, "Push": 1, "Status": 1, "Rollback": 1, "History": 1}


def test_edge_token_may_subscribe_only(authed: Server, stub: pb_grpc.ControlPlaneStub) -> None:
    assert [m.heartbeat.version for m in subscribe(stub, EDGE_TOKEN)] == [5]
    err = rpc_error(push, stub, EDGE_TOKEN)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "/edgewise.v1.ControlPlane/Push" in (err.details() or "")
    assert "edge" in (err.details() or "")
    for name, request in [
        ("Status", pb.StatusRequest()),
        ("History", pb.HistoryRequest()),
        ("Rollback", pb.RollbackRequest(version=1)),
    ]:
        err = rpc_error(getattr(stub, name), request, TIMEOUT, bearer_metadata(EDGE_TOKEN))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert f"/edgewise.v1.ControlPlane/{name}" in (err.details() or "")
    # Refused calls never reach the servicer.
    assert authed.servicer.calls == {"Subscribe": 1}


@pytest.mark.parametrize("token", [None, WRONG_TOKEN])
def test_missing_or_unknown_token_is_unauthenticated(
    authed: Server, stub: pb_grpc.ControlPlaneStub, token: str | None
) -> None:
    expected = "missing bearer token" if token is None else "unknown token"
    for call in (subscribe, push, status):  # stream-stream, stream-unary, unary-unary
        err = rpc_error(call, stub, token)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, call.__name__
        assert err.details() == expected
    assert authed.servicer.calls == {}


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((("authorization", f"bearer {OPS_TOKEN}"),), grpc.StatusCode.OK),  # the scheme is case-insensitive
        ((("authorization", f"Bearer   {OPS_TOKEN}  "),), grpc.StatusCode.OK),
        ((("authorization", f"Basic {OPS_TOKEN}"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer "),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", OPS_TOKEN),), grpc.StatusCode.UNAUTHENTICATED),
        ((("x-token", f"Bearer {OPS_TOKEN}"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {OPS_TOKEN[:-1]}"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {OPS_TOKEN}x"),), grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_authorization_header_forms(
    stub: pb_grpc.ControlPlaneStub, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode
) -> None:
    try:
        stub.Status(pb.StatusRequest(), timeout=TIMEOUT, metadata=metadata)
    except grpc.RpcError as err:
        assert err.code() == code
    else:
        assert code == grpc.StatusCode.OK


def test_token_never_logged_nor_in_errors(
    authed: Server, stub: pb_grpc.ControlPlaneStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for token in (WRONG_TOKEN, EDGE_TOKEN, None):
        for call in (subscribe, push, status):
            try:
                call(stub, token)
            except grpc.RpcError as err:
                texts += [str(err.details()), str(err), repr(err)]  # str() includes the debug error string
    assert caplog.records, "refusals are logged"
    refusals = [r for r in caplog.records if r.getMessage() == "call_refused"]
    assert any(getattr(r, "method", "") == "/edgewise.v1.ControlPlane/Push" for r in refusals)
    texts += [caplog.text, *(JsonFormatter().format(r) for r in caplog.records)]
    texts.append(repr(TokenAuth([EDGE_TOKEN], [OPS_TOKEN])))
    for text in texts:
        for secret in (EDGE_TOKEN, OPS_TOKEN, WRONG_TOKEN):
            assert secret not in text
            assert secret[-12:] not in text


def test_unknown_method_needs_a_token_too(authed: Server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{authed.port}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/edgewise.v1.ControlPlane/Nope"
        )
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=TIMEOUT, metadata=bearer_metadata(OPS_TOKEN))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_without_tokens_no_interceptor() -> None:
    assert make_interceptors([], []) == []
    [interceptor] = make_interceptors([EDGE_TOKEN], [])
    assert isinstance(interceptor, TokenAuth)
    srv = start_server(make_interceptors([], []))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            assert status(pb_grpc.ControlPlaneStub(channel), None).head_version == 3
    finally:
        srv.stop()


def test_public_and_custom_ops_methods() -> None:
    interceptor = TokenAuth(
        [EDGE_TOKEN], [OPS_TOKEN], ops_only_methods={ALL_METHODS[1]}, public_methods={ALL_METHODS[4]}
    )
    assert interceptor.check(ALL_METHODS[4], ()) is None
    assert interceptor.check(ALL_METHODS[3], bearer_metadata(EDGE_TOKEN)) is None
    refusal = interceptor.check(ALL_METHODS[1], bearer_metadata(EDGE_TOKEN))
    assert refusal is not None and refusal[0] == grpc.StatusCode.PERMISSION_DENIED
    assert interceptor.role_of(OPS_TOKEN) == "ops"
    assert interceptor.role_of(EDGE_TOKEN) == "edge"
    assert interceptor.role_of("é") is None
    assert interceptor.role_of(None) is None


def test_default_ops_methods_match_the_proto() -> None:
    service = pb.DESCRIPTOR.services_by_name["ControlPlane"]
    assert set(ALL_METHODS) == {f"/{service.full_name}/{m.name}" for m in service.methods}
    edge_methods = {"/edgewise.v1.ControlPlane/Subscribe", "/edgewise.v1.ControlPlane/Forward"}
    assert set(OPS_ONLY_METHODS) == set(ALL_METHODS) - edge_methods


@pytest.mark.parametrize(
    ("edge", "ops", "message"),
    [
        ([], [], "no tokens"),
        ([""], [OPS_TOKEN], "edge token #1 is empty"),
        ([EDGE_TOKEN], [OPS_TOKEN, "  "], "ops token #2 is empty"),
        ([EDGE_TOKEN], [EDGE_TOKEN], "both"),
        (["has space"], [OPS_TOKEN], "edge token #1 must be printable ASCII"),
    ],
)
def test_token_configuration_errors(edge: list[str], ops: list[str], message: str) -> None:
    with pytest.raises(AuthError, match=message) as info:
        TokenAuth(edge, ops)
    assert EDGE_TOKEN not in str(info.value)


def test_tokens_must_be_a_sequence_of_strings() -> None:
    with pytest.raises(TypeError):
        TokenAuth(EDGE_TOKEN, [OPS_TOKEN])


def test_bearer_metadata() -> None:
    assert bearer_metadata(None) == ()
    assert bearer_metadata("abc") == (("authorization", "Bearer abc"),)


# --- load_token ---------------------------------------------------------------------------------------


def test_load_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "token"
    file.write_text("  from-file\n")
    monkeypatch.setenv("EW_TEST_TOKEN", "from-env")
    assert load_token("from-flag", str(file), "EW_TEST_TOKEN") == "from-flag"
    assert load_token(None, str(file), "EW_TEST_TOKEN") == "from-file"
    assert load_token(None, None, "EW_TEST_TOKEN") == "from-env"
    monkeypatch.setenv("EW_TEST_TOKEN", "  ")
    assert load_token(None, None, "EW_TEST_TOKEN") is None
    monkeypatch.delenv("EW_TEST_TOKEN")
    assert load_token(None, None, "EW_TEST_TOKEN") is None


def test_load_token_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(AuthError, match=f"cannot read token file {missing}"):
        load_token(None, str(missing), "EW_UNSET_TOKEN")
    empty = tmp_path / "empty"
    empty.write_text(" \n\t\n")
    with pytest.raises(AuthError, match=f"token file {empty} is empty"):
        load_token(None, str(empty), "EW_UNSET_TOKEN")
    with pytest.raises(AuthError, match=f"cannot read token file {tmp_path}"):
        load_token(None, str(tmp_path), "EW_UNSET_TOKEN")
    two_words = tmp_path / "two"
    two_words.write_text("secret-part other-part\n")
    with pytest.raises(AuthError, match=str(two_words)) as info:
        load_token(None, str(two_words), "EW_UNSET_TOKEN")
    assert "secret-part" not in str(info.value)
    with pytest.raises(AuthError, match="empty"):
        load_token("  ", None, "EW_UNSET_TOKEN")


def test_load_token_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    secret = tmp_path / "secret"
    secret.write_text("token\n")
    secret.chmod(0)
    with pytest.raises(AuthError, match=f"cannot read token file {secret}: Permission denied"):
        load_token(None, str(secret), "EW_UNSET_TOKEN")


# --- TLS ----------------------------------------------------------------------------------------------


def test_tls_with_token(tls_certs: Certs) -> None:  # noqa: F811
    creds = server_credentials(str(tls_certs.server_cert), str(tls_certs.server_key), None)
    srv = start_server(make_interceptors([EDGE_TOKEN], [OPS_TOKEN]), creds)
    try:
        for host in ("127.0.0.1", "localhost"):
            with open_channel(f"{host}:{srv.port}", ca=str(tls_certs.ca)) as channel:
                stub = pb_grpc.ControlPlaneStub(channel)
                assert status(stub, OPS_TOKEN).head_version == 3
                assert rpc_error(status, stub, None).code() == grpc.StatusCode.UNAUTHENTICATED
        # Plaintext to a TLS server fails.
        with open_channel(f"127.0.0.1:{srv.port}") as channel:
            err = rpc_error(status, pb_grpc.ControlPlaneStub(channel), OPS_TOKEN)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()


def test_tls_untrusted_server_refused(tls_certs: Certs, tmp_path: Path) -> None:  # noqa: F811
    other = make_certs(tmp_path / "other", ca_name="another CA")
    creds = server_credentials(tls_certs.server_cert, tls_certs.server_key, None)
    srv = start_server([], creds)
    try:
        with open_channel(f"127.0.0.1:{srv.port}", ca=other.ca) as channel:
            err = rpc_error(status, pb_grpc.ControlPlaneStub(channel), None)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()


def test_mutual_tls(tls_certs: Certs, tmp_path: Path) -> None:  # noqa: F811
    creds = server_credentials(tls_certs.server_cert, tls_certs.server_key, tls_certs.ca)
    srv = start_server([], creds)
    target = f"127.0.0.1:{srv.port}"
    try:
        with open_channel(
            target, ca=tls_certs.ca, cert=tls_certs.client_cert, key=tls_certs.client_key
        ) as channel:
            assert status(pb_grpc.ControlPlaneStub(channel), None).head_version == 3
        with open_channel(target, ca=tls_certs.ca) as channel:
            err = rpc_error(status, pb_grpc.ControlPlaneStub(channel), None)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
        # A client certificate from another CA is refused as well.
        other = make_certs(tmp_path / "other", ca_name="another CA")
        with open_channel(target, ca=tls_certs.ca, cert=other.client_cert, key=other.client_key) as channel:
            err = rpc_error(status, pb_grpc.ControlPlaneStub(channel), None)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert srv.servicer.calls == {"Status": 1}
    finally:
        srv.stop()


def test_tls_file_errors_name_the_file(tls_certs: Certs, tmp_path: Path) -> None:  # noqa: F811
    missing = str(tmp_path / "missing.pem")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key, ca = str(tls_certs.server_cert), str(tls_certs.server_key), str(tls_certs.ca)
    with pytest.raises(AuthError, match=f"cannot read TLS certificate file {missing}: No such file"):
        server_credentials(missing, key, None)
    with pytest.raises(AuthError, match=f"private key file {missing}"):
        server_credentials(cert, missing, None)
    with pytest.raises(AuthError, match=f"client CA file {missing}"):
        server_credentials(cert, key, missing)
    with pytest.raises(AuthError, match=f"TLS certificate file {empty} is empty"):
        server_credentials(str(empty), key, None)
    with pytest.raises(AuthError, match=f"{garbage} is not PEM"):
        server_credentials(str(garbage), key, None)
    with pytest.raises(AuthError, match=f"CA file {missing}"):
        auth.channel_credentials(missing, None, None)
    with pytest.raises(AuthError, match=f"client certificate file {missing}"):
        open_channel("127.0.0.1:1", ca=ca, cert=missing, key=key)
    with pytest.raises(AuthError, match="both"):
        auth.channel_credentials(ca, cert, None)
    with pytest.raises(AuthError, match="needs a CA"):
        open_channel("127.0.0.1:1", cert=cert, key=key)
    assert isinstance(auth.channel_credentials(None, None, None), grpc.ChannelCredentials)


# --- refusals are rate limited; the health service is public (issue 16, item 12) --------------------------


def test_refused_calls_are_logged_at_most_once_a_second_per_code(
    authed: Server, stub: pb_grpc.ControlPlaneStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(30):
        assert rpc_error(status, stub, WRONG_TOKEN).code() == grpc.StatusCode.UNAUTHENTICATED
    assert rpc_error(push, stub, EDGE_TOKEN).code() == grpc.StatusCode.PERMISSION_DENIED  # another code
    lines = [r for r in caplog.records if r.getMessage() == "call_refused"]
    by_code = {
        code: [r for r in lines if getattr(r, "code", "") == code]
        for code in ("UNAUTHENTICATED", "PERMISSION_DENIED")
    }
    assert 1 <= len(by_code["UNAUTHENTICATED"]) <= 3  # one a second; the 30 calls take well under that
    assert len(by_code["PERMISSION_DENIED"]) == 1
    time.sleep(1.1)
    assert rpc_error(status, stub, None).code() == grpc.StatusCode.UNAUTHENTICATED
    lines = [
        r
        for r in caplog.records
        if r.getMessage() == "call_refused" and getattr(r, "code", "") == "UNAUTHENTICATED"
    ]
    # every refusal is accounted for: a line, or counted as suppressed in the next line
    assert sum(1 + getattr(r, "suppressed", 0) for r in lines) == 31
    assert getattr(lines[-1], "error", "") == "missing bearer token"


def test_log_limiter_counts_what_it_leaves_out() -> None:
    now = [100.0]
    logger = logging.getLogger("test_log_limiter")
    limiter = LogLimiter(logger, 1.0, clock=lambda: now[0])
    assert limiter.take("a") == 0
    assert limiter.take("a") is None and limiter.take("a") is None
    assert limiter.take("b") == 0  # keys are independent
    now[0] += 1.0
    assert limiter.take("a") == 2
    assert limiter.take("a") is None


def test_health_answers_without_a_token_reflection_needs_the_ops_token() -> None:
    health_servicer = health.HealthServicer()
    # the health and reflection services, added as `edgewise control serve` adds them
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=make_interceptors([EDGE_TOKEN], [OPS_TOKEN])
    )
    try:
        pb_grpc.add_ControlPlaneServicer_to_server(FakeControlPlane(), server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((auth.CONTROL_PLANE_SERVICE, reflection.SERVICE_NAME), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        health_servicer.set(auth.CONTROL_PLANE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            probe = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=auth.CONTROL_PLANE_SERVICE)
            assert probe.Check(request, timeout=TIMEOUT).status == health_pb2.HealthCheckResponse.SERVING
            watch = probe.Watch(request, timeout=TIMEOUT)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            # everything else still needs a token
            assert (
                rpc_error(status, pb_grpc.ControlPlaneStub(channel), None).code()
                == grpc.StatusCode.UNAUTHENTICATED
            )
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            ask = reflection_pb2.ServerReflectionRequest(list_services="")

            def services(metadata: tuple[tuple[str, str], ...]) -> list[str]:
                replies = reflect.ServerReflectionInfo(iter([ask]), timeout=TIMEOUT, metadata=metadata)
                return [s.name for r in replies for s in r.list_services_response.service]

            for token, code in (
                (None, grpc.StatusCode.UNAUTHENTICATED),
                (EDGE_TOKEN, grpc.StatusCode.PERMISSION_DENIED),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    services(bearer_metadata(token))
                assert refused.value.code() == code
            assert auth.CONTROL_PLANE_SERVICE in services(bearer_metadata(OPS_TOKEN))
    finally:
        server.stop(None)
