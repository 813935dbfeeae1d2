"""gRPC client for TF Serving's PredictionService and ModelService (this server or a stock one).

    with GrpcClient("localhost:8500") as client:
        probabilities = client.predict("digits", {"image": images})["probabilities"]  # [N, 10]

Targets are anything gRPC resolves: `host:port`, `dns:///model-server.ns.svc:8500` (a Kubernetes
headless Service: every pod address, requests spread round-robin over them), `ipv4:a:p,b:p`.
Every failed call raises `clients.errors.ClientError` with the status code name. Calls answered
UNAVAILABLE or RESOURCE_EXHAUSTED are retried (`retries=`, default 2) after the server's
`grpc-retry-pushback-ms` or a jittered backoff, all within the call's deadline (`timeout=`); with
`token=` every call carries the metadata `authorization: Bearer <token>`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

import grpc
import numpy as np

from clients.auth import GRPC_METADATA_KEY, authorization_value
from clients.base import (
    DEFAULT_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    Classes,
    Client,
    ExampleLike,
    ModelStatus,
    TensorLike,
    encode_tensor,
    example_proto,
    metadata_from_proto,
    model_spec,
    status_from_proto,
)
from clients.errors import ClientError
from clients.retries import (
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_BACKOFF_S,
    DEFAULT_RETRIES,
    PUSHBACK_METADATA_KEY,
    RetryableError,
    RetryPolicy,
    check_timeout,
    deadline_after,
    parse_pushback_ms,
    run_with_retries,
)
from serving import codec
from serving.errors import InvalidArgument
from serving.proto import apis_pb2, apis_pb2_grpc

# Round-robin over every address the resolver returns. With one address it behaves like the default
# pick_first; with a headless Service's DNS name it balances across pods, and re-resolves when one goes.
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})

# Worth another attempt: the server (or the connection to it) is down or overloaded for now.
RETRYABLE_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
# gRPC itself answers RESOURCE_EXHAUSTED for a message over a size limit ("Sent/Received message
# larger than max (N vs. M)"): the same request would fail the same way, so it is not retried.
_MESSAGE_TOO_LARGE = "message larger than max"


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", SERVICE_CONFIG),
        # Ping an idle-looking connection under a long call every 60 s, but never without calls in
        # flight: servers refuse (GOAWAY too_many_pings) clients that ping more often than every 5 min
        # with nothing to do.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
    ]


def _read_root_certificates(root_certificates: bytes | str | os.PathLike[str] | None) -> bytes | None:
    if root_certificates is None or isinstance(root_certificates, bytes):
        return root_certificates
    path = Path(root_certificates)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(
            "INVALID_ARGUMENT", None, f"cannot read CA certificates {path}: {exc.strerror}"
        ) from exc


def _trailing_value(error: grpc.RpcError, key: str) -> str | bytes | None:
    metadata = error.trailing_metadata() if isinstance(error, grpc.Call) else None
    for entry_key, value in metadata or ():
        if entry_key == key:
            return value
    return None


def _failure(exc: grpc.RpcError) -> Exception:
    """A failed attempt as `RetryableError` (UNAVAILABLE, RESOURCE_EXHAUSTED) or a final `ClientError`."""
    error = ClientError.from_rpc_error(exc)
    error.__cause__ = exc
    if error.code not in RETRYABLE_CODES or _MESSAGE_TOO_LARGE in error.message.lower():
        return error
    pushback = _trailing_value(exc, PUSHBACK_METADATA_KEY)
    if pushback is None:
        return RetryableError(error)
    delay = parse_pushback_ms(pushback)
    if delay is None:  # the server asked the client not to retry
        final = ClientError(error.code, error.http_status, f"{error.message} (the server asked not to retry)")
        final.__cause__ = exc
        return final
    return RetryableError(error, delay)


class GrpcOptions(TypedDict, total=False):
    """The keyword arguments of `GrpcChannel`, which every gRPC client of this package takes."""

    tls: bool
    root_certificates: bytes | str | os.PathLike[str] | None
    timeout: float
    max_message_bytes: int
    token: str | None
    retries: int
    backoff_seconds: float
    max_backoff_seconds: float


class GrpcChannel:
    """One channel with the client's deadline, retry policy and bearer token; what every gRPC client
    of this package (TF Serving's API here, the Open Inference Protocol in `clients.v2_client`) calls
    through."""

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        token: str | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff_seconds: float = DEFAULT_BACKOFF_S,
        max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_S,
    ) -> None:
        """`root_certificates`: PEM bytes or the path of a CA file (with `tls`; default: system roots).

        `timeout`: default deadline of a call in seconds, retries included (each call may override
        it). `token`: bearer token sent with every call. `retries`: further attempts after an
        UNAVAILABLE / RESOURCE_EXHAUSTED answer (0: none); `backoff_seconds` doubles per retry up to
        `max_backoff_seconds`, jittered.
        """
        self.target = target
        self.timeout = check_timeout(timeout)
        self.retry_policy = RetryPolicy(retries, backoff_seconds, max_backoff_seconds)
        self._metadata: tuple[tuple[str, str], ...] | None = (
            ((GRPC_METADATA_KEY, authorization_value(token)),) if token is not None else None
        )
        options = channel_options(max_message_bytes)
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_root_certificates(root_certificates)
            )
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)

    def call(self, method: Any, request: Any, timeout: float | None) -> Any:
        """One unary call with retries, all within `timeout` (default: the client's) seconds."""

        def attempt(seconds_left: float) -> Any:
            try:
                return method(request, timeout=seconds_left, metadata=self._metadata)
            except grpc.RpcError as exc:
                raise _failure(exc) from exc

        return run_with_retries(
            attempt, self.retry_policy, deadline_after(self.timeout if timeout is None else timeout)
        )

    def close(self) -> None:
        self.channel.close()


class GrpcClient(Client):
    """Blocking gRPC client; one channel, thread-safe, reused for every call until `close()`."""

    def __init__(self, target: str, **options: Unpack[GrpcOptions]) -> None:
        """`options`: the keyword arguments of `GrpcChannel` (TLS, deadline, token, retries)."""
        self._grpc = GrpcChannel(target, **options)
        self.target = target
        self.timeout = self._grpc.timeout
        self.retry_policy = self._grpc.retry_policy
        self._prediction = apis_pb2_grpc.PredictionServiceStub(self._grpc.channel)
        self._models = apis_pb2_grpc.ModelServiceStub(self._grpc.channel)

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        return self._grpc.call(method, request, timeout)

    def predict(
        self,
        model: str,
        inputs: Mapping[str, TensorLike],
        *,
        signature: str | None = None,
        version: int | None = None,
        label: str | None = None,
        output_filter: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        request = apis_pb2.PredictRequest(model_spec=model_spec(model, version, label, signature))
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(encode_tensor(name, value))
        request.output_filter.extend(output_filter or ())
        response = self._call(self._prediction.Predict, request, timeout)
        try:
            return {name: codec.to_numpy(tensor, name) for name, tensor in sorted(response.outputs.items())}
        except InvalidArgument as exc:
            raise ClientError("INTERNAL", None, f"undecodable output in the response: {exc.message}") from exc

    def classify(
        self,
        model: str,
        examples: Sequence[ExampleLike],
        *,
        signature: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> Classes:
        request = apis_pb2.ClassificationRequest(model_spec=model_spec(model, version, label, signature))
        request.input.example_list.examples.extend(example_proto(e) for e in examples)
        response = self._call(self._prediction.Classify, request, timeout)
        return [
            [(entry.label, float(entry.score)) for entry in row.classes]
            for row in response.result.classifications
        ]

    def metadata(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        request = apis_pb2.GetModelMetadataRequest(
            model_spec=model_spec(model, version, label), metadata_field=["signature_def"]
        )
        return metadata_from_proto(self._call(self._prediction.GetModelMetadata, request, timeout))

    def status(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout: float | None = None,
    ) -> list[ModelStatus]:
        request = apis_pb2.GetModelStatusRequest(model_spec=model_spec(model, version, label))
        return status_from_proto(self._call(self._models.GetModelStatus, request, timeout))

    def close(self) -> None:
        self._grpc.close()
