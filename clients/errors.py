"""One exception type for every failure a client call can have, whatever the transport.

`ClientError` carries the gRPC status code name (`"NOT_FOUND"`, `"INVALID_ARGUMENT"`, ...) and the
HTTP status, so callers handle errors the same way with `GrpcClient` and `RestClient` (Triton's
clients do the same). The two tables below map one to the other in both directions, using the
server's own pairing (`serving.errors`: NOT_FOUND 404, INVALID_ARGUMENT 400, RESOURCE_EXHAUSTED 429,
UNAVAILABLE 503, ...) and Google's canonical HTTP mapping for the codes the server never sends.
"""

from __future__ import annotations

from typing import Any

import grpc

from serving.errors import HTTP_STATUS_OF_CODE  # gRPC code name -> HTTP status, as the REST API answers

# HTTP status -> gRPC code name. Several codes share 400/409/500; the reverse picks the usual one.
CODE_OF_HTTP_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",  # wrong method on a known path: the call does not exist as sent
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",  # body over the server's size limit
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def code_for_http_status(status: int) -> str:
    """The gRPC code name for an HTTP error status (unlisted 4xx -> FAILED_PRECONDITION, 5xx -> UNKNOWN)."""
    if status in CODE_OF_HTTP_STATUS:
        return CODE_OF_HTTP_STATUS[status]
    if 400 <= status < 500:
        return "FAILED_PRECONDITION"
    return "UNKNOWN"


def http_status_for_code(code: str) -> int:
    """The HTTP status for a gRPC code name (500 for a name this table does not know)."""
    return HTTP_STATUS_OF_CODE.get(code, 500)


class ClientError(Exception):
    """A call failed: the server refused it, the transport broke, or the request could not be built.

    `code` is a gRPC status code name. `http_status` is the HTTP status the server answered with
    (REST), or the status the same error has on the REST API (gRPC); None when no HTTP response was
    involved, e.g. a REST connection that never opened. `attempts`: how many times the call was
    sent before it failed for good (more than 1 after retries, see `clients.retries`).
    """

    def __init__(self, code: str, http_status: int | None, message: str, *, attempts: int = 1) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.http_status = http_status
        self.message = message
        self.attempts = attempts

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ClientError:
        """Wrap a failed gRPC call (`grpc.RpcError` is also a `grpc.Call` with code() and details())."""
        status = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
        return cls(code, http_status_for_code(code), details or code.lower().replace("_", " "))

    @classmethod
    def from_http(cls, status: int, message: str) -> ClientError:
        return cls(code_for_http_status(status), status, message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with extra __init__ arguments need this to pickle (e.g. across processes).
        return (_rebuild, (type(self), self.code, self.http_status, self.message, self.attempts))


def _rebuild(
    cls: type[ClientError], code: str, http_status: int | None, message: str, attempts: int
) -> ClientError:
    return cls(code, http_status, message, attempts=attempts)
