"""Decentralized NATS auth for the tests (NKEYs and JWTs, as `nsc` would make them): an operator, a
system account and an account with JetStream, a user of it and its `.creds` file, and the server
configuration (`operator`, `system_account`, a MEMORY resolver preloaded with both accounts).

Made with the `nkeys` package (the one nats-py signs with); the JWTs are the v2 claims nats-server
reads: header `{"typ": "JWT", "alg": "ed25519-nkey"}`, claims signed by their issuer's key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _keypair(prefix: int) -> tuple[Any, str, bytes]:
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), prefix)
    kp = nkeys.from_seed(bytearray(seed))
    return kp, kp.public_key.decode(), bytes(seed)


def _jwt(issuer: Any, issuer_pub: str, subject: str, name: str, nats: dict[str, Any]) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer_pub, "name": name, "sub": subject}
    claims["nats"] = {**nats, "version": 2}
    digest = hashlib.sha512(json.dumps(claims, sort_keys=True).encode()).digest()[:32]
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")  # the claims' unique id
    body = _b64(json.dumps(claims).encode())
    signature = issuer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True}


@dataclass(frozen=True)
class Decentralized:
    server_config: str  # to put into each server's configuration file
    creds: str  # the user's .creds file


def decentralized_auth() -> Decentralized:
    import nkeys

    op, op_pub, _ = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _, sys_pub, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    acct, acct_pub, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    _, user_pub, user_seed = _keypair(nkeys.PREFIX_BYTE_USER)
    operator_jwt = _jwt(op, op_pub, op_pub, "edgewise-test", {"type": "operator", "system_account": sys_pub})
    limits = {**_UNLIMITED, "conn": -1, "leaf": -1}
    sys_jwt = _jwt(op, op_pub, sys_pub, "SYS", {"type": "account", "limits": limits})
    js = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    acct_jwt = _jwt(op, op_pub, acct_pub, "EDGEWISE", {"type": "account", "limits": {**limits, **js}})
    user_jwt = _jwt(acct, acct_pub, user_pub, "replica", {"type": "user", "pub": {}, "sub": {}, **_UNLIMITED})
    server_config = (
        f"operator: {operator_jwt}\n"
        f"system_account: {sys_pub}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {sys_pub}: {sys_jwt}\n  {acct_pub}: {acct_jwt}\n}}\n"
    )
    creds = (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    return Decentralized(server_config, creds)
