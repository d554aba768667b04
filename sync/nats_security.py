"""How a central-tier replica proves itself to NATS and checks the servers: TLS and credentials
(`[nats]` in the control configuration, docs/central.md "Security").

- TLS: `nats.ca` (the CA the servers' certificates must chain to; else the system's), `nats.cert` and
  `nats.key` (a client certificate, for servers that verify clients). TLS is on when any of them is set
  or a URL is `tls://`; a server that requires TLS gets it either way (nats-py upgrades the connection).
- Credentials, at most one kind: `nats.user` with a password (`nats.password_file`, else the
  `EDGEWISE_NATS_PASSWORD` variable), a token (`nats.token_file`, else `EDGEWISE_NATS_TOKEN`), or a
  `.creds` file (`nats.creds`: a user JWT and its NKEY seed, decentralized auth; the `nkeys` package,
  which the `nats` extra brings, signs the server's challenge).

The secrets stay out of the configuration (files or variables, as the edge and ops tokens do).
`load_security` reads and checks every file at start, so a missing or unreadable one is an error naming
it (`NatsSecurityError`: `control serve` exits 2); `connect_problem` turns what nats-py reports while it
fails to connect into a sentence naming the cause (a refused login, an untrusted certificate).
"""

from __future__ import annotations

import importlib.util
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "PASSWORD_ENV",
    "TOKEN_ENV",
    "NatsSecurity",
    "NatsSecurityError",
    "connect_problem",
    "load_security",
]

PASSWORD_ENV: Final = "EDGEWISE_NATS_PASSWORD"
TOKEN_ENV: Final = "EDGEWISE_NATS_TOKEN"


class NatsSecurityError(ValueError):
    """A TLS or credential setting of `[nats]` cannot be used (the message names it and why)."""


@dataclass(frozen=True, slots=True)
class NatsSecurity:
    """The TLS and credentials of one NATS connection (secrets already read)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str = ""
    password: str = ""
    token: str = ""
    creds: Path | None = None

    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    @property
    def login(self) -> str:
        """What the connection logs in with, for messages: 'user NAME', 'a token', 'FILE', or ''."""
        if self.user:
            return f"user {self.user!r}"
        if self.token:
            return "a token"
        if self.creds is not None:
            return f"the credentials in {self.creds}"
        return ""

    def context(self, urls: Sequence[str]) -> ssl.SSLContext | None:
        """The TLS context to connect with (None: nats-py's default, used only if a server requires TLS).
        NatsSecurityError when a file is not a certificate or key."""
        if not self.tls and not any(u.startswith("tls://") for u in urls):
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        except (ssl.SSLError, OSError) as exc:
            raise NatsSecurityError(f"nats.ca = {self.ca}: not a CA certificate (PEM): {exc}") from None
        if self.cert is not None and self.key is not None:
            try:
                context.load_cert_chain(str(self.cert), str(self.key))
            except (ssl.SSLError, OSError) as exc:
                raise NatsSecurityError(
                    f"nats.cert = {self.cert}, nats.key = {self.key}: not a certificate and its private key "
                    f"(PEM): {exc}"
                ) from None
        return context

    def connect_options(self, urls: Sequence[str]) -> dict[str, Any]:
        """The keyword arguments of `nats.connect` for TLS and the login."""
        options: dict[str, Any] = {}
        context = self.context(urls)
        if context is not None:
            options["tls"] = context
        if self.user:
            options["user"], options["password"] = self.user, self.password
        elif self.token:
            options["token"] = self.token
        elif self.creds is not None:
            options["user_credentials"] = str(self.creds)
        return options


def _readable(key: str, path: Path | None) -> Path | None:
    if path is None:
        return None
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise NatsSecurityError(f"{key} = {path}: cannot read it: {exc.strerror or exc}") from None
    return path


def _secret(key: str, path: Path | None, env_name: str, env: Mapping[str, str]) -> str:
    """The secret in the file `path` (whitespace around it stripped), else in the variable; '' if neither."""
    if path is None:
        return env.get(env_name, "").strip()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise NatsSecurityError(f"{key} = {path}: cannot read it: {reason}") from None
    if not text:
        raise NatsSecurityError(f"{key} = {path}: the file is empty")
    return text


def load_security(
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    user: str = "",
    password_file: Path | None = None,
    token_file: Path | None = None,
    creds: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> NatsSecurity:
    """Read and check the TLS files and the credentials (see the module doc); NatsSecurityError naming
    the setting that cannot be used."""
    env = os.environ if env is None else env
    if (cert is None) != (key is None):
        given, missing = ("nats.cert", "nats.key") if key is None else ("nats.key", "nats.cert")
        raise NatsSecurityError(f"{given} needs {missing} too: a client certificate and its key go together")
    token = _secret("nats.token_file", token_file, TOKEN_ENV, env)
    kinds = [name for name, set_ in (("nats.user", user), ("a token", token), ("nats.creds", creds)) if set_]
    if len(kinds) > 1:
        raise NatsSecurityError(
            f"{' and '.join(kinds)} are both set: a NATS connection logs in with one of a user and password, "
            "a token, or a .creds file"
        )
    password = ""
    if user:
        password = _secret("nats.password_file", password_file, PASSWORD_ENV, env)
        if not password:
            raise NatsSecurityError(
                f"nats.user = {user!r} needs a password: nats.password_file, or the {PASSWORD_ENV} variable"
            )
    elif password_file is not None:
        raise NatsSecurityError("nats.password_file is set without nats.user")
    if creds is not None and importlib.util.find_spec("nkeys") is None:
        raise NatsSecurityError(
            "nats.creds needs the nkeys package to sign the server's challenge: pip install 'edgewise[nats]' "
            "(or pip install nkeys)"
        )
    return NatsSecurity(
        ca=_readable("nats.ca", ca),
        cert=_readable("nats.cert", cert),
        key=_readable("nats.key", key),
        user=user,
        password=password,
        token=token,
        creds=_readable("nats.creds", creds),
    )


def connect_problem(errors: Sequence[BaseException], security: NatsSecurity) -> str | None:
    """What the errors nats-py reported while connecting say is wrong with TLS or the login, or None
    (then no server answered)."""
    for exc in errors:
        if type(exc).__name__ == "AuthorizationError" or "authorization violation" in str(exc).lower():
            login = f"with {security.login}" if security.login else "no credentials given"
            return (
                f"the NATS servers refused the login ({login}): "
                "check nats.user and its password, nats.token_file or nats.creds against the servers' "
                "authorization"
            )
    for exc in errors:
        if isinstance(exc, ssl.SSLCertVerificationError):
            trusted = f"nats.ca = {security.ca}" if security.ca else "the system's CAs (nats.ca is not set)"
            return (
                f"TLS: the NATS server's certificate is not trusted by {trusted}: {exc.verify_message or exc}"
            )
    for exc in errors:
        if isinstance(exc, ssl.SSLError):
            if "CERTIFICATE_REQUIRED" in str(exc).upper() and security.cert is None:
                return (
                    "TLS: the NATS servers verify clients and want a client certificate: set nats.cert "
                    f"and nats.key ({exc})"
                )
            return f"TLS with the NATS server failed: {exc}"
    return None
