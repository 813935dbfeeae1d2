"""One exception hierarchy for the server; each class carries its gRPC code and HTTP status.

The gRPC `rpc` decorator and the REST error middleware are the only places that translate these into
wire errors (`serving.protocol.grpc.server` and `serving.protocol.rest.app`). Anything else that
escapes a handler becomes INTERNAL with a generic message and a logged traceback.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

# gRPC status code name -> the HTTP status of the same meaning: the pairing the classes below carry
# (NOT_FOUND 404, INVALID_ARGUMENT 400, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...), and Google's
# canonical HTTP mapping for the codes the server never raises. The REST API answers with it, the
# access log writes it for gRPC calls, and the clients report it (`clients.errors`).
HTTP_STATUS_OF_CODE: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """Base class: a request failed for a reason the caller should be told."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServingError):
    """The request is malformed: wrong input name, dtype, shape, size, undecodable bytes..."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(ServingError):
    """Unknown model, version, version label or signature."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class Unavailable(ServingError):
    """The model exists but is not loaded yet (or is unloading)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class ResourceExhausted(ServingError):
    """Overload: the batch queue is full or the message is too large."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Unauthenticated(ServingError):
    """No bearer token, or one the server does not know (the answer never says which tokens exist)."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class DeadlineExceeded(ServingError):
    """The request's deadline (gRPC) or the REST timeout passed before it was answered."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class RequestTimeout(ServingError):
    """REST only: the request body did not arrive in time (`--rest_body_timeout_seconds`)."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 408


class ClientClosedRequest(ServingError):
    """REST only: the client closed the connection before its body arrived (nginx's 499); there
    is nobody left to answer, and nothing to log."""

    grpc_code = grpc.StatusCode.CANCELLED
    http_status = 499


class PayloadTooLarge(ServingError):
    """REST only: the body is larger than `--rest_max_body_bytes`."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class FailedPrecondition(ServingError):
    """The request is well-formed but cannot run in the current state (e.g. Classify on a regressor)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400


class Unimplemented(ServingError):
    """The API exists in TF Serving but this server does not offer it for this model."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class MethodNotAllowed(ServingError):
    """An HTTP endpoint called with a method it does not take (REST only; the answer names the
    methods it does take in `Allow`)."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 405

    def __init__(self, message: str, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allowed = allowed
