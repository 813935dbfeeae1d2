"""REST client for TF Serving's HTTP/JSON API, mirroring `GrpcClient` method for method.

    with RestClient("http://localhost:8501") as client:
        probabilities = client.predict("digits", {"image": images})["probabilities"]  # [N, 10]

Requests use the columnar `{"inputs": ...}` format; byte strings travel as `{"b64": ...}`. JSON
has no dtypes and a single output comes back unnamed, so the client reads each model's signatures
once (GET .../metadata, cached per model/version/label) and returns exactly what the gRPC client
returns: float32 stays float32, strings are object arrays of `bytes`.

HTTP 429 and 503, and connections refused or reset, are retried (`retries=`, default 2) after the
server's `Retry-After` or a jittered backoff, all within the call's deadline (`timeout=`); with
`token=` every request carries `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, Unpack
from urllib.parse import quote

import numpy as np
import requests
from google.protobuf import json_format

from clients.auth import HTTP_HEADER, authorization_value
from clients.base import (
    DEFAULT_TIMEOUT_S,
    Classes,
    Client,
    ExampleLike,
    ModelStatus,
    TensorLike,
    as_tensor,
    check_version_choice,
    signatures_from_proto,
    status_from_proto,
)
from clients.errors import ClientError
from clients.retries import (
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_BACKOFF_S,
    DEFAULT_RETRIES,
    RETRY_AFTER_HEADER,
    RetryableError,
    RetryPolicy,
    check_timeout,
    deadline_after,
    parse_retry_after,
    run_with_retries,
)
from serving import codec
from serving.errors import InvalidArgument
from serving.proto import apis_pb2

DEFAULT_SIGNATURE = "serving_default"
# Worth another attempt: too many requests now (429), or the model is not ready yet (503).
RETRYABLE_STATUSES = frozenset({429, 503})
_NO_RETRIES = RetryPolicy(0)


def _json_value(name: str, value: Any) -> Any:
    """One input or feature value as JSON: numbers as nested lists, bytes as {"b64": ...}."""
    array = as_tensor(name, value)
    try:
        codec.data_type(array.dtype)  # refuses what TensorProto could not carry either (datetime, ...)
        return codec.numpy_to_json(array, binary=True)
    except InvalidArgument as exc:
        raise ClientError("INVALID_ARGUMENT", None, f"input '{name}': {exc.message}") from exc


def _is_transient(exc: BaseException) -> bool:
    """Whether a failed connection was refused, reset or aborted (somewhere down its causes).

    requests wraps urllib3's errors, which wrap the socket's; a TLS failure or a name that does not
    resolve would fail the same way again, so only the socket's own ConnectionError counts.
    """
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionError):  # the builtin: refused, reset, aborted, broken pipe
            return True
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
    return False


def _parse(message: Any, body: Any, what: str) -> Any:
    try:
        return json_format.ParseDict(body, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ClientError("INTERNAL", None, f"unreadable {what} response: {exc}") from exc


class HttpOptions(TypedDict, total=False):
    """The keyword arguments of `HttpTransport`, which every HTTP client of this package takes."""

    timeout: float
    root_certificates: str | os.PathLike[str] | None
    token: str | None
    retries: int
    backoff_seconds: float
    max_backoff_seconds: float


class HttpTransport:
    """One `requests.Session` (connection pooling, keep-alive) with the client's base URL, deadline,
    retry policy and bearer token; what every HTTP client of this package (TF Serving's REST API
    here, the Open Inference Protocol in `clients.v2_client`) sends through."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        root_certificates: str | os.PathLike[str] | None = None,
        token: str | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff_seconds: float = DEFAULT_BACKOFF_S,
        max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_S,
    ) -> None:
        """`root_certificates`: path of a CA bundle for an https:// URL (default: the system's).

        `timeout`, `token`, `retries`, `backoff_seconds`, `max_backoff_seconds`: as for `GrpcChannel`.
        """
        self.base_url = base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ClientError(
                "INVALID_ARGUMENT", None, f"base URL must start with http:// or https://, got {base_url!r}"
            )
        self.timeout = check_timeout(timeout)
        self.retry_policy = RetryPolicy(retries, backoff_seconds, max_backoff_seconds)
        authorization = authorization_value(token) if token is not None else None
        self.session = requests.Session()
        # Passed with every request, not only set on the session: requests lets REQUESTS_CA_BUNDLE
        # (set on many machines) override a session's `verify` (psf/requests#3829).
        self._verify: str | bool = os.fspath(root_certificates) if root_certificates is not None else True
        self.session.verify = self._verify
        if authorization is not None:
            self.session.headers[HTTP_HEADER] = authorization

    def deadline(self, timeout: float | None) -> float:
        return deadline_after(self.timeout if timeout is None else timeout)

    def send(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        deadline: float,
        retry: bool = True,
        accept: tuple[int, ...] = (),
    ) -> requests.Response:
        """One request with retries until `deadline` (time.monotonic); the successful response.

        An answer of 400 or more raises `ClientError` with the server's `{"error": ...}` message
        (429 and 503 are retried first, after the server's `Retry-After`), unless its status is in
        `accept`; `retry=False` makes one attempt.
        """
        started = time.monotonic()

        def attempt(seconds_left: float) -> requests.Response:
            return self._attempt(method, url, json, data, headers, accept, seconds_left, deadline - started)

        return run_with_retries(attempt, self.retry_policy if retry else _NO_RETRIES, deadline)

    def _attempt(
        self,
        method: str,
        url: str,
        json: Any,
        data: bytes | None,
        headers: Mapping[str, str] | None,
        accept: tuple[int, ...],
        seconds_left: float,
        timeout: float,
    ) -> requests.Response:
        try:
            # requests' timeout bounds connecting and each read, not the whole exchange.
            response = self.session.request(
                method, url, json=json, data=data, headers=headers, timeout=seconds_left, verify=self._verify
            )
        except requests.Timeout as exc:
            raise ClientError(
                "DEADLINE_EXCEEDED", None, f"no answer from {url} within {timeout:g} s"
            ) from exc
        except requests.ConnectionError as exc:
            error = ClientError("UNAVAILABLE", None, f"cannot connect to {self.base_url}: {exc}")
            if _is_transient(exc):
                error.__cause__ = exc
                raise RetryableError(error) from exc
            raise error from exc
        except requests.RequestException as exc:
            raise ClientError("UNKNOWN", None, f"{method} {url} failed: {exc}") from exc
        if response.status_code >= 400 and response.status_code not in accept:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            if isinstance(payload, dict) and isinstance(payload.get("error"), str):
                message = payload["error"]
            else:
                message = response.text.strip()[:500] or response.reason or "no message"
            error = ClientError.from_http(response.status_code, message)
            if response.status_code in RETRYABLE_STATUSES:
                raise RetryableError(error, parse_retry_after(response.headers.get(RETRY_AFTER_HEADER)))
            raise error
        return response

    def request_json(self, method: str, url: str, body: Any = None, *, deadline: float) -> dict[str, Any]:
        """`send` with a JSON body; the answer's JSON object."""
        response = self.send(method, url, json=body, deadline=deadline)
        return json_object(response, f"{method} {url}")

    def close(self) -> None:
        self.session.close()


def json_object(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ClientError("INTERNAL", response.status_code, f"{what}: the answer is not a JSON object")
    return payload


class RestClient(Client):
    """Blocking HTTP client on one `requests.Session` (connection pooling, keep-alive)."""

    def __init__(self, base_url: str, **options: Unpack[HttpOptions]) -> None:
        """`options`: the keyword arguments of `HttpTransport` (CA bundle, deadline, token, retries)."""
        self._http = HttpTransport(base_url, **options)
        self.base_url = self._http.base_url
        self.timeout = self._http.timeout
        self.retry_policy = self._http.retry_policy
        self._signatures: dict[tuple[str, int | None, str | None], dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    # -- transport -----------------------------------------------------------------------------

    def _url(self, model: str, version: int | None, label: str | None, suffix: str = "") -> str:
        check_version_choice(version, label)
        url = f"{self.base_url}/v1/models/{quote(model, safe='')}"
        if version is not None:
            url += f"/versions/{version}"
        elif label is not None:
            url += f"/labels/{quote(label, safe='')}"
        return url + suffix

    def _deadline(self, timeout: float | None) -> float:
        return self._http.deadline(timeout)

    def _request(self, method: str, url: str, body: Any = None, *, deadline: float) -> Any:
        return self._http.request_json(method, url, body, deadline=deadline)

    # -- calls ---------------------------------------------------------------------------------

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
        deadline = self._deadline(timeout)
        body: dict[str, Any] = {"inputs": {name: _json_value(name, value) for name, value in inputs.items()}}
        if signature:
            body["signature_name"] = signature
        if output_filter:
            body["output_filter"] = list(output_filter)
        payload = self._request("POST", self._url(model, version, label, ":predict"), body, deadline=deadline)
        if "outputs" not in payload:
            raise ClientError("INTERNAL", 200, 'predict answer has no "outputs"')
        outputs_spec = self._signature(model, version, label, signature or DEFAULT_SIGNATURE, deadline)[
            "outputs"
        ]
        names = list(output_filter) if output_filter else sorted(outputs_spec)
        raw = payload["outputs"]
        values = {names[0]: raw} if len(names) == 1 else raw
        if not isinstance(values, dict):
            raise ClientError("INTERNAL", 200, f"predict answer holds one unnamed output, expected {names}")
        result = {}
        for name, value in sorted(values.items()):
            dtype = outputs_spec.get(name, {}).get("dtype", "float32")
            try:
                result[name] = codec.json_to_numpy(value, codec.dtype_from_name(dtype), name)
            except (InvalidArgument, TypeError) as exc:
                raise ClientError("INTERNAL", 200, f"output '{name}' is not a {dtype} tensor: {exc}") from exc
        return result

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
        deadline = self._deadline(timeout)
        body: dict[str, Any] = {
            "examples": [
                {
                    name: _json_value(name, [v] if isinstance(v, bytes | str) else v)
                    for name, v in example.items()
                }
                for example in examples
            ]
        }
        if signature:
            body["signature_name"] = signature
        payload = self._request(
            "POST", self._url(model, version, label, ":classify"), body, deadline=deadline
        )
        try:
            return [[(str(entry[0]), float(entry[1])) for entry in row] for row in payload["results"]]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ClientError(
                "INTERNAL", 200, f'classify answer is not {{"results": [[[label, score], ...]]}}: {exc}'
            ) from exc

    def metadata(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        return self._metadata(model, version, label, self._deadline(timeout))

    def _metadata(
        self, model: str, version: int | None, label: str | None, deadline: float
    ) -> dict[str, Any]:
        payload = self._request("GET", self._url(model, version, label, "/metadata"), deadline=deadline)
        spec = _parse(apis_pb2.ModelSpec(), payload.get("model_spec", {}), "metadata")
        signature_defs = dict(payload.get("metadata", {}).get("signature_def", {}))
        signature_defs.pop("@type", None)  # this server packs an Any; stock TF Serving writes the map bare
        parsed = _parse(apis_pb2.SignatureDefMap(), signature_defs, "metadata")
        signatures = signatures_from_proto(parsed)
        with self._lock:
            self._signatures[(model, version, label)] = signatures
        return {"name": spec.name, "version": int(spec.version.value), "signatures": signatures}

    def status(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout: float | None = None,
    ) -> list[ModelStatus]:
        payload = self._request("GET", self._url(model, version, label), deadline=self._deadline(timeout))
        return status_from_proto(_parse(apis_pb2.GetModelStatusResponse(), payload, "status"))

    def _signature(
        self, model: str, version: int | None, label: str | None, signature: str, deadline: float
    ) -> dict[str, Any]:
        key = (model, version, label)
        with self._lock:
            signatures = self._signatures.get(key)
        if signatures is None or signature not in signatures:
            signatures = self._metadata(model, version, label, deadline)["signatures"]
        if signature not in signatures:
            raise ClientError("NOT_FOUND", 404, f"model '{model}' has no signature '{signature}'")
        return signatures[signature]

    def close(self) -> None:
        self._http.close()
