"""REST client for TF Serving's HTTP/JSON API, mirroring `GrpcClient` method for method.

    with RestClient("http://localhost:8501") as client:
        probabilities = client.predict("digits", {"image": images})["probabilities"]  # [N, 10]

Requests use the columnar `{"inputs": ...}` format; byte strings travel as `{"b64": ...}`. JSON
has no dtypes and a single output comes back unnamed, so the client reads each model's signatures
once (GET .../metadata, cached per model/version/label) and returns exactly what the gRPC client
returns: float32 stays float32, strings are object arrays of `bytes`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
import requests
from google.protobuf import json_format

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
from serving import codec
from serving.errors import InvalidArgument
from serving.proto import apis_pb2

DEFAULT_SIGNATURE = "serving_default"


def _json_value(name: str, value: Any) -> Any:
    """One input or feature value as JSON: numbers as nested lists, bytes as {"b64": ...}."""
    array = as_tensor(name, value)
    try:
        codec.data_type(array.dtype)  # refuses what TensorProto could not carry either (datetime, ...)
        return codec.numpy_to_json(array, binary=True)
    except InvalidArgument as exc:
        raise ClientError("INVALID_ARGUMENT", None, f"input '{name}': {exc.message}") from exc


def _parse(message: Any, body: Any, what: str) -> Any:
    try:
        return json_format.ParseDict(body, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ClientError("INTERNAL", None, f"unreadable {what} response: {exc}") from exc


class RestClient(Client):
    """Blocking HTTP client on one `requests.Session` (connection pooling, keep-alive)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        root_certificates: str | os.PathLike[str] | None = None,
    ) -> None:
        """`root_certificates`: path of a CA bundle for an https:// URL (default: the system's)."""
        self.base_url = base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ClientError(
                "INVALID_ARGUMENT", None, f"base URL must start with http:// or https://, got {base_url!r}"
            )
        self.timeout = timeout
        self._session = requests.Session()
        self._session.verify = os.fspath(root_certificates) if root_certificates is not None else True
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

    def _request(self, method: str, url: str, body: Any = None) -> Any:
        try:
            response = self._session.request(method, url, json=body, timeout=self.timeout)
        except requests.Timeout as exc:
            raise ClientError(
                "DEADLINE_EXCEEDED", None, f"no answer from {url} within {self.timeout:g} s"
            ) from exc
        except requests.ConnectionError as exc:
            raise ClientError("UNAVAILABLE", None, f"cannot connect to {self.base_url}: {exc}") from exc
        except requests.RequestException as exc:
            raise ClientError("UNKNOWN", None, f"{method} {url} failed: {exc}") from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code >= 400:
            if isinstance(payload, dict) and isinstance(payload.get("error"), str):
                message = payload["error"]
            else:
                message = response.text.strip()[:500] or response.reason or "no message"
            raise ClientError.from_http(response.status_code, message)
        if not isinstance(payload, dict):
            raise ClientError(
                "INTERNAL", response.status_code, f"{method} {url}: the answer is not a JSON object"
            )
        return payload

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
    ) -> dict[str, np.ndarray]:
        body: dict[str, Any] = {"inputs": {name: _json_value(name, value) for name, value in inputs.items()}}
        if signature:
            body["signature_name"] = signature
        if output_filter:
            body["output_filter"] = list(output_filter)
        payload = self._request("POST", self._url(model, version, label, ":predict"), body)
        if "outputs" not in payload:
            raise ClientError("INTERNAL", 200, 'predict answer has no "outputs"')
        outputs_spec = self._signature(model, version, label, signature or DEFAULT_SIGNATURE)["outputs"]
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
    ) -> Classes:
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
        payload = self._request("POST", self._url(model, version, label, ":classify"), body)
        try:
            return [[(str(entry[0]), float(entry[1])) for entry in row] for row in payload["results"]]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ClientError(
                "INTERNAL", 200, f'classify answer is not {{"results": [[[label, score], ...]]}}: {exc}'
            ) from exc

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        payload = self._request("GET", self._url(model, version, label, "/metadata"))
        spec = _parse(apis_pb2.ModelSpec(), payload.get("model_spec", {}), "metadata")
        signature_defs = dict(payload.get("metadata", {}).get("signature_def", {}))
        signature_defs.pop("@type", None)  # this server packs an Any; stock TF Serving writes the map bare
        parsed = _parse(apis_pb2.SignatureDefMap(), signature_defs, "metadata")
        signatures = signatures_from_proto(parsed)
        with self._lock:
            self._signatures[(model, version, label)] = signatures
        return {"name": spec.name, "version": int(spec.version.value), "signatures": signatures}

    def status(self, model: str, version: int | None = None, label: str | None = None) -> list[ModelStatus]:
        payload = self._request("GET", self._url(model, version, label))
        return status_from_proto(_parse(apis_pb2.GetModelStatusResponse(), payload, "status"))

    def _signature(
        self, model: str, version: int | None, label: str | None, signature: str
    ) -> dict[str, Any]:
        key = (model, version, label)
        with self._lock:
            signatures = self._signatures.get(key)
        if signatures is None or signature not in signatures:
            signatures = self.metadata(model, version, label)["signatures"]
        if signature not in signatures:
            raise ClientError("NOT_FOUND", 404, f"model '{model}' has no signature '{signature}'")
        return signatures[signature]

    def close(self) -> None:
        self._session.close()
