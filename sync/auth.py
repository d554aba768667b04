"""Authentication for the control plane: bearer tokens with two roles, and TLS credentials.

Every call to `edgewise.v1.ControlPlane` carries `authorization: Bearer <token>` metadata
(`bearer_metadata` builds it on the client). `TokenAuth`, a server interceptor, checks it before the
handler runs:

- no `authorization: Bearer ...` metadata: UNAUTHENTICATED "missing bearer token";
- a token that is neither an edge nor an ops token: UNAUTHENTICATED "unknown token";
- an edge token on an ops-only method (everything but Subscribe and Forward by default; `make_interceptors`
  adds server reflection): PERMISSION_DENIED naming the method and the role.

`make_interceptors` lets the standard health service (`grpc.health.v1.Health`, Check and Watch) through
without a token, so a load balancer can probe the control plane; reflection stays behind the ops token.
Refusals are logged as `call_refused`, at most one line a second per status code (`sync/log_limit.py`:
the next line carries the number left out as `suppressed`).

Per-node identities: besides the one edge token every edge shares, each edge can have a token of its own
(`load_node_tokens` reads a file of `NODE_ID SHARD TOKEN` lines), bound to its node id and the shards it
may subscribe to. `TokenAuth.identity` gives the `NodeIdentity` of a call's token (None for the shared
edge token, an ops token, or no token); the service refuses a Hello or Forward under another node id, or a
shard not listed for it (`identity_refusal`). With the shared edge token, identities are not enforced.

Tokens are compared with `hmac.compare_digest` against every shared token (no early exit), per-node tokens
by their SHA-256 digest (a dict lookup whose timing tells nothing of a token); no token ever appears in
a log record, an error message or a `repr`. A server without any token configured runs without the
interceptor (`make_interceptors` returns none), which is a deployment choice.

TLS: `server_credentials` (mutual TLS when a client CA is given), `channel_credentials` and
`open_channel` (TLS when a CA is given, else plaintext). A certificate or key file that cannot be read,
is empty or is not PEM raises `AuthError` naming the file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

import grpc

from edgewise.sync.log_limit import LogLimiter
from edgewise.sync.shard import Shard, ShardError, parse_shard

__all__ = [
    "ALL_METHODS",
    "AUTHORIZATION",
    "CONTROL_PLANE_SERVICE",
    "EDGE_TOKEN_ENV",
    "HEALTH_METHODS",
    "METHOD_NAMES",
    "OPS_ONLY_METHODS",
    "OPS_TOKEN_ENV",
    "REFLECTION_METHODS",
    "AuthError",
    "NodeIdentity",
    "TokenAuth",
    "bearer_metadata",
    "channel_credentials",
    "identity_refusal",
    "load_node_tokens",
    "load_token",
    "make_interceptors",
    "open_channel",
    "server_credentials",
]

log = logging.getLogger(__name__)

CONTROL_PLANE_SERVICE: Final = "edgewise.v1.ControlPlane"
EDGE_TOKEN_ENV: Final = "EDGEWISE_EDGE_TOKEN"  # the edge token, when no token file is given
OPS_TOKEN_ENV: Final = "EDGEWISE_OPS_TOKEN"  # the ops token, likewise
METHOD_NAMES: Final = (
    "Subscribe",
    "Forward",
    "Push",
    "Rollback",
    "History",
    "Status",
    "Report",
    "Forget",
    "ForgetStatus",
    "Promote",
    "Abort",
)
"""The ControlPlane service's methods (sync.proto)."""
ALL_METHODS: Final = tuple(f"/{CONTROL_PLANE_SERVICE}/{name}" for name in METHOD_NAMES)
EDGE_METHODS: Final = (f"/{CONTROL_PLANE_SERVICE}/Subscribe", f"/{CONTROL_PLANE_SERVICE}/Forward")
OPS_ONLY_METHODS: Final = tuple(m for m in ALL_METHODS if m not in EDGE_METHODS)
HEALTH_METHODS: Final = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
"""Callable without a token under `make_interceptors` (a load balancer's probe)."""
REFLECTION_METHODS: Final = ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",)
"""Ops-only under `make_interceptors`: a reflection stream holds a thread of the ops pool."""
AUTHORIZATION: Final = "authorization"
_BEARER: Final = "bearer"

ROLE_EDGE: Final = "edge"
ROLE_OPS: Final = "ops"


class AuthError(ValueError):
    """A token or TLS setting that cannot be used; the message names the file or setting, never a token."""


# --- tokens -------------------------------------------------------------------------------------------


def load_token(value: str | None, file: str | None, env: str) -> str | None:
    """The token from a flag `value`, else from `file` (surrounding whitespace stripped), else from the
    environment variable `env`; None when none of them is set (an empty variable counts as unset).

    An empty flag value, or a file that cannot be read or holds only whitespace, raises `AuthError`
    naming the flag or the file."""
    if value is not None:
        token = value.strip()
        if not token:
            raise AuthError("the token given on the command line is empty")
        _check_token(token, "the token given on the command line")
        return token
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise AuthError(f"cannot read token file {file}: {reason}") from None
        token = text.strip()
        if not token:
            raise AuthError(f"token file {file} is empty")
        _check_token(token, f"the token in {file}")
        return token
    token = os.environ.get(env, "").strip()
    if not token:
        return None
    _check_token(token, f"the token in ${env}")
    return token


def _check_token(token: str, where: str) -> None:
    # A token travels in an HTTP/2 header value: printable ASCII, no whitespace inside.
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise AuthError(f"{where} must be printable ASCII without whitespace")


# --- per-node identities ------------------------------------------------------------------------------

MAX_NODE_ID_CHARS: Final = 128


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a per-node token may do: subscribe and forward as `node_id` only, to one of `shards`."""

    node_id: str
    shards: frozenset[Shard]

    def shard_texts(self) -> list[str]:
        return sorted(s.text() for s in self.shards)


def load_node_tokens(file: str | os.PathLike[str]) -> dict[str, NodeIdentity]:
    """The per-node tokens of `file`: token -> identity. One entry a line, `NODE_ID SHARD TOKEN`
    separated by whitespace (SHARD as `--shard` takes it: `all`, `hash:0-50/100`, `region:DE,AT`); blank
    lines and lines starting with `#` are skipped. A node allowed several shards has a line per shard
    (the same token); a node may have several tokens (rotation). A token may belong to one node only.

    Raises `AuthError` naming the file and line (never a token) for anything else, and for a file
    without any entry."""
    path = os.fspath(file)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise AuthError(f"cannot read node tokens file {path}: {reason}") from None
    nodes: dict[str, str] = {}  # token -> node id
    shards: dict[str, set[Shard]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path} line {number}"
        fields = line.split()
        if len(fields) != 3:
            raise AuthError(f"{where}: expected NODE_ID SHARD TOKEN, found {len(fields)} fields")
        node_id, shard_text, token = fields
        if len(node_id) > MAX_NODE_ID_CHARS or not node_id.isprintable():
            raise AuthError(f"{where}: the node id must be 1-{MAX_NODE_ID_CHARS} printable characters")
        try:
            shard = parse_shard(shard_text)
        except ShardError as exc:
            raise AuthError(f"{where}: {exc}") from None
        _check_token(token, f"the token on {where}")
        owner = nodes.setdefault(token, node_id)
        if owner != node_id:
            raise AuthError(f"{where}: this token is already node {owner}'s (a token names one node)")
        shards.setdefault(token, set()).add(shard)
    if not nodes:
        raise AuthError(f"node tokens file {path} has no entries (NODE_ID SHARD TOKEN lines)")
    return {token: NodeIdentity(node, frozenset(shards[token])) for token, node in nodes.items()}


def identity_refusal(identity: NodeIdentity | None, node_id: str, shard: Shard | None) -> str | None:
    """Why a caller of `identity` may not act as `node_id` (on `shard`, for a subscription); None if it
    may. A caller without a per-node identity (the shared edge token, an ops token, no auth) may."""
    if identity is None:
        return None
    if node_id != identity.node_id:
        return f"this token is node {identity.node_id}'s; it cannot act as node {node_id}"
    if shard is not None and shard not in identity.shards:
        allowed = ", ".join(identity.shard_texts())
        return f"node {identity.node_id} may subscribe to shard {allowed} only, not {shard.text()}"
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token` (`metadata=` on a call); empty without a token."""
    if token is None:
        return ()
    return ((AUTHORIZATION, f"Bearer {token}"),)


def _bearer_token(metadata: Iterable[Any] | None) -> str | None:
    """The token of the first `authorization` metadata entry, if it is a Bearer one."""
    for item in metadata or ():
        key, value = item
        if key != AUTHORIZATION:
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = str(value).strip().partition(" ")
        if scheme.lower() != _BEARER:
            return None
        return token.strip() or None
    return None


def _abort(code: grpc.StatusCode, details: str) -> Callable[[Any, grpc.ServicerContext], NoReturn]:
    def behavior(request_or_iterator: Any, context: grpc.ServicerContext) -> NoReturn:
        # The request (or request iterator) is not read: a refused call's payload is never parsed.
        context.abort(code, details)

    return behavior


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, details: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler with the response shape of `handler` that aborts with `code` before reading anything.

    Its request side is always streaming: gRPC hands a request-streaming behavior the iterator without
    reading, where a unary one would first wait (on a pool thread) for the whole request message, which
    a caller could send slowly or never."""
    behavior = _abort(code, details)
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior)
    return grpc.stream_unary_rpc_method_handler(behavior)


class TokenAuth(grpc.ServerInterceptor):
    """Checks the bearer token of every call; see the module docstring for the answers.

    `ops_only_methods`: full method names (`/edgewise.v1.ControlPlane/Push`) an edge token may not call.
    `public_methods`: full method names callable without a token (e.g. `/grpc.health.v1.Health/Check`
    for a load balancer's probe); none by default. Every other method needs an edge or an ops token.
    `node_tokens`: per-node edge tokens (`load_node_tokens`), edge tokens bound to a node identity.
    `log_interval`: seconds between two `call_refused` lines of one status code."""

    def __init__(
        self,
        edge_tokens: Sequence[str],
        ops_tokens: Sequence[str],
        ops_only_methods: Collection[str] = OPS_ONLY_METHODS,
        *,
        public_methods: Collection[str] = (),
        node_tokens: Mapping[str, NodeIdentity] | None = None,
        log_interval: float = 1.0,
    ) -> None:
        if isinstance(edge_tokens, str) or isinstance(ops_tokens, str):
            raise TypeError("edge_tokens and ops_tokens are sequences of tokens, not one string")
        nodes = dict(node_tokens or {})
        if not edge_tokens and not ops_tokens and not nodes:
            raise AuthError("no tokens configured (use make_interceptors, which then installs none)")
        for role, tokens in ((ROLE_EDGE, edge_tokens), (ROLE_OPS, ops_tokens)):
            for i, token in enumerate(tokens):
                if not isinstance(token, str) or not token.strip():
                    raise AuthError(f"{role} token #{i + 1} is empty")
                _check_token(token, f"{role} token #{i + 1}")
        if set(edge_tokens) & set(ops_tokens):
            raise AuthError("a token is configured both as an edge and as an ops token")
        for token, identity in nodes.items():
            _check_token(token, f"the token of node {identity.node_id}")
            if token in edge_tokens or token in ops_tokens:
                role = ROLE_EDGE if token in edge_tokens else ROLE_OPS
                raise AuthError(f"node {identity.node_id}'s token is also configured as the {role} token")
        self._tokens: tuple[tuple[bytes, str], ...] = tuple(
            [(t.encode(), ROLE_EDGE) for t in edge_tokens] + [(t.encode(), ROLE_OPS) for t in ops_tokens]
        )
        self._nodes: dict[bytes, NodeIdentity] = {_digest(t): identity for t, identity in nodes.items()}
        self._ops_only = frozenset(ops_only_methods)
        self._public = frozenset(public_methods)
        self._counts = (len(edge_tokens), len(ops_tokens), len(nodes))
        self._refusals = LogLimiter(log, log_interval)

    def __repr__(self) -> str:
        edge, ops, nodes = self._counts
        return (
            f"TokenAuth(edge_tokens=<{edge}>, ops_tokens=<{ops}>, node_tokens=<{nodes}>, "
            f"ops_only_methods={sorted(self._ops_only)})"
        )

    @property
    def enforces_identities(self) -> bool:
        """Whether per-node tokens are configured (the shared edge token may still be accepted too)."""
        return bool(self._nodes)

    def role_of(self, token: str | None) -> str | None:
        """`"edge"`, `"ops"` or None, in time independent of which token (if any) matches."""
        if token is None:
            return None
        given = token.encode("utf-8", "surrogateescape")
        role: str | None = None
        for known, known_role in self._tokens:
            # Every token is compared, so the time does not tell which one matched.
            if hmac.compare_digest(given, known) and role is None:
                role = known_role
        if role is None and _digest(token) in self._nodes:
            role = ROLE_EDGE
        return role

    def identity(self, metadata: Iterable[Any] | None) -> NodeIdentity | None:
        """The node identity of the call's per-node token; None for any other token or none."""
        token = _bearer_token(metadata)
        if token is None or not self._nodes:
            return None
        return self._nodes.get(_digest(token))

    def check(self, method: str, metadata: Iterable[Any] | None) -> tuple[grpc.StatusCode, str] | None:
        """The refusal (status code, details) for a call of `method` with `metadata`; None if allowed."""
        if method in self._public:
            return None
        token = _bearer_token(metadata)
        if token is None:
            return grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"
        role = self.role_of(token)
        if role is None:
            return grpc.StatusCode.UNAUTHENTICATED, "unknown token"
        if role != ROLE_OPS and method in self._ops_only:
            return grpc.StatusCode.PERMISSION_DENIED, f"{method} needs an ops token; this is an {role} token"
        return None

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        refusal = self.check(method, handler_call_details.invocation_metadata)
        handler = continuation(handler_call_details)
        if refusal is None:
            return handler
        code, details = refusal
        # The method name is the caller's text: cut it, and key the rate limit by the code only.
        self._refusals.warning(
            "call_refused", code.name, {"method": method[:200], "error": details[:300], "code": code.name}
        )
        if handler is None:
            # An unknown method: refuse with the auth status rather than reveal what exists.
            return grpc.stream_unary_rpc_method_handler(_abort(code, details))
        return _refusal(handler, code, details)


def make_interceptors(
    edge_tokens: Sequence[str],
    ops_tokens: Sequence[str],
    node_tokens: Mapping[str, NodeIdentity] | None = None,
) -> list[grpc.ServerInterceptor]:
    """`[TokenAuth(...)]` with the health service public and reflection ops-only, or no interceptor at
    all when no token is configured."""
    if not edge_tokens and not ops_tokens and not node_tokens:
        return []
    return [
        TokenAuth(
            edge_tokens,
            ops_tokens,
            (*OPS_ONLY_METHODS, *REFLECTION_METHODS),
            public_methods=HEALTH_METHODS,
            node_tokens=node_tokens,
        )
    ]


# --- TLS ----------------------------------------------------------------------------------------------


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuthError(f"cannot read TLS {what} file {os.fspath(path)}: {exc.strerror or exc}") from None
    if not data.strip():
        raise AuthError(f"TLS {what} file {os.fspath(path)} is empty")
    if b"-----BEGIN " not in data:
        raise AuthError(f"TLS {what} file {os.fspath(path)} is not PEM (no -----BEGIN line)")
    return data


def server_credentials(
    cert: str | os.PathLike[str], key: str | os.PathLike[str], client_ca: str | os.PathLike[str] | None
) -> grpc.ServerCredentials:
    """TLS for a server from its certificate chain and key (PEM files); with `client_ca`, mutual TLS:
    every client must present a certificate signed by that CA."""
    chain = _read_pem(cert, "certificate")
    private_key = _read_pem(key, "private key")
    if client_ca is None:
        return grpc.ssl_server_credentials([(private_key, chain)])
    roots = _read_pem(client_ca, "client CA")
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=True
    )


def channel_credentials(
    ca: str | os.PathLike[str] | None,
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
) -> grpc.ChannelCredentials:
    """TLS for a client: trust `ca` (None: the system roots); `cert` and `key` (both or neither) are the
    client's certificate for mutual TLS."""
    if (cert is None) != (key is None):
        raise AuthError("a client certificate needs both the certificate and the key file")
    roots = _read_pem(ca, "CA") if ca is not None else None
    chain = _read_pem(cert, "client certificate") if cert is not None else None
    private_key = _read_pem(key, "client key") if key is not None else None
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=private_key, certificate_chain=chain
    )


def open_channel(
    target: str,
    *,
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to `target`: TLS trusting `ca` when it is given (with the client certificate `cert`/`key`
    if given), else plaintext. A client certificate without a CA is refused rather than ignored."""
    if ca is None:
        if cert is not None or key is not None:
            raise AuthError("a client certificate needs a CA file as well (TLS is on only with a CA)")
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, channel_credentials(ca, cert, key), options=list(options))
