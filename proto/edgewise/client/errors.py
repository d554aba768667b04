"""The one exception a failed call raises: `ClientError`, with the gRPC status code and the details."""

from __future__ import annotations

import grpc

__all__ = ["ClientError", "client_error"]


class ClientError(Exception):
    """A call that failed on the server or on the way there.

    `code` is the `grpc.StatusCode` (for example INVALID_ARGUMENT: fix the request, the details name the
    field; UNAUTHENTICATED / PERMISSION_DENIED: the token; UNAVAILABLE or DEADLINE_EXCEEDED: the server
    is unreachable, busy or restarting, retry later or elsewhere; NOT_FOUND / FAILED_PRECONDITION: what
    was asked for does not exist or cannot be done now), `details` the server's message and `method` the
    RPC (`Decide`, `Push`, ...). `str(error)` is "CODE: details"."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details

    def __reduce__(self) -> tuple[type[ClientError], tuple[str, grpc.StatusCode, str]]:
        return (type(self), (self.method, self.code, self.details))


def client_error(method: str, exc: grpc.RpcError) -> ClientError:
    """The ClientError of a failed call (sync or asyncio: both errors carry `code()` and `details()`)."""
    code = exc.code() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else None
    details = exc.details() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else None
    return ClientError(method, code or grpc.StatusCode.UNKNOWN, details or str(exc) or type(exc).__name__)
