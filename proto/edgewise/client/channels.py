"""Channels and call metadata for the clients: plaintext, TLS from PEM files, or given credentials; an
optional bearer token on every call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeAlias

import grpc
import grpc.aio

from edgewise.sync.auth import AuthError, bearer_metadata, channel_credentials

__all__ = ["Metadata", "PathLike", "Transport", "aio_channel", "call_metadata", "sync_channel"]

PathLike: TypeAlias = str | os.PathLike[str]
Metadata: TypeAlias = tuple[tuple[str, str], ...]


class Transport:
    """How to reach a server: TLS (`tls_ca`, with `tls_cert` + `tls_key` for mutual TLS; or ready-made
    `credentials`) or plaintext when neither is given, plus gRPC channel `options`.

    Checked here, before any call: a client certificate without a CA, a certificate without its key,
    both PEM files and `credentials`, or a PEM file that cannot be read raise `AuthError` (a ValueError)
    naming the file or the setting."""

    __slots__ = ("credentials", "options")

    def __init__(
        self,
        *,
        tls_ca: PathLike | None = None,
        tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if credentials is not None and (tls_ca or tls_cert or tls_key):
            raise AuthError("give either credentials or the TLS files (tls_ca, tls_cert, tls_key), not both")
        if credentials is None and tls_ca is None and (tls_cert is not None or tls_key is not None):
            raise AuthError("a client certificate needs a CA file as well (TLS is on only with a CA)")
        if credentials is None and tls_ca is not None:
            credentials = channel_credentials(tls_ca, tls_cert, tls_key)
        self.credentials = credentials
        self.options = list(options)


def sync_channel(target: str, transport: Transport) -> grpc.Channel:
    if transport.credentials is None:
        return grpc.insecure_channel(target, options=transport.options)
    return grpc.secure_channel(target, transport.credentials, options=transport.options)


def aio_channel(target: str, transport: Transport) -> grpc.aio.Channel:
    if transport.credentials is None:
        return grpc.aio.insecure_channel(target, options=transport.options)
    return grpc.aio.secure_channel(target, transport.credentials, options=transport.options)


def call_metadata(token: str | None) -> Metadata:
    """`authorization: Bearer <token>` for every call (none without a token). A token that is empty or
    not printable ASCII raises AuthError (it could not travel in a header); the token never appears in
    a message."""
    if token is None:
        return ()
    token = token.strip()
    if not token:
        raise AuthError("the token is empty (give None for no token)")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise AuthError("the token must be printable ASCII without whitespace")
    return bearer_metadata(token)
