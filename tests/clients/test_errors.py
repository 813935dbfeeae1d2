"""Status code <-> HTTP status: the client's tables agree with the server's exception classes."""

from __future__ import annotations

import pickle

import grpc
import pytest

from clients.errors import ClientError, code_for_http_status, http_status_for_code
from serving import errors as server_errors

# REST-only errors (a wrong HTTP method, a slow or oversized body) have no gRPC twin: their HTTP
# status does not come from their code; the client reads 405 back as UNIMPLEMENTED, 408 as
# DEADLINE_EXCEEDED, 413 as RESOURCE_EXHAUSTED (tested below).
REST_ONLY = tuple(
    getattr(server_errors, name)
    for name in ("MethodNotAllowed", "RequestTimeout", "PayloadTooLarge")
    if hasattr(server_errors, name)
)
SERVER_ERRORS = [
    cls
    for cls in vars(server_errors).values()
    if isinstance(cls, type)
    and issubclass(cls, server_errors.ServingError)
    and cls is not server_errors.ServingError
    and cls not in REST_ONLY
]


@pytest.mark.parametrize("error", SERVER_ERRORS, ids=lambda cls: cls.__name__)
def test_code_to_http_matches_the_server(error: type[server_errors.ServingError]) -> None:
    assert http_status_for_code(error.grpc_code.name) == error.http_status


@pytest.mark.parametrize("status", [400, 404, 429, 501, 503])
def test_http_to_code_round_trips(status: int) -> None:
    assert http_status_for_code(code_for_http_status(status)) == status


def test_every_grpc_code_has_an_http_status() -> None:
    assert all(
        http_status_for_code(code.name) != 500 or code.name in ("UNKNOWN", "INTERNAL", "DATA_LOSS")
        for code in grpc.StatusCode
    )


def test_rest_only_errors_read_back_as_their_code() -> None:
    for error in REST_ONLY:
        assert code_for_http_status(error.http_status) == error.grpc_code.name


def test_unlisted_statuses() -> None:
    assert code_for_http_status(418) == "FAILED_PRECONDITION"
    assert code_for_http_status(599) == "UNKNOWN"


def test_client_error_carries_and_pickles_its_status() -> None:
    error = ClientError.from_http(404, "model 'x' is not served")
    assert (error.code, error.http_status, str(error)) == (
        "NOT_FOUND",
        404,
        "NOT_FOUND: model 'x' is not served",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.http_status, copy.message) == (error.code, error.http_status, error.message)
