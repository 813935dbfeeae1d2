"""TF Serving's REST API on aiohttp, sharing the data plane with gRPC.

    GET  /v1/models/<m>[/versions/<v>|/labels/<l>]              model status
    GET  /v1/models/<m>[/versions/<v>|/labels/<l>]/metadata     signatures
    POST /v1/models/<m>[/versions/<v>|/labels/<l>]:predict      {"instances": [...]} or {"inputs": ...}
    POST /v1/models/<m>[/versions/<v>|/labels/<l>]:classify     {"examples": [{feature: value}, ...]}
    GET  <monitoring path>                                      Prometheus text

Errors are `{"error": "<message>"}` with the status each `ServingError` carries; JSON bodies of
status and metadata are the protobuf messages rendered as JSON, as TF Serving does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format

from serving import codec
from serving.backends.base import Signature
from serving.config import MonitoringConfig
from serving.dataplane import DataPlane
from serving.errors import InvalidArgument, NotFound, ServingError
from serving.metrics import Metrics
from serving.protocol import messages
from serving.repository import Repository

log = logging.getLogger(__name__)

OFFLOAD_BYTES = 256 * 1024  # bodies larger than this are parsed off the event loop

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<rest>/metadata|:predict|:classify|:regress)?$"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The REST twin of the gRPC interceptor: ServingError -> its status; anything else -> 500."""
    try:
        return await handler(request)
    except ServingError as exc:
        return _error(exc.http_status, exc.message)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason)
        raise
    except Exception:
        log.exception("internal error in %s %s", request.method, request.path)
        return _error(500, "internal server error; see the server log")


def _message_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class RestApi:
    def __init__(
        self, dataplane: DataPlane, repository: Repository, metrics: Metrics, monitoring: MonitoringConfig
    ) -> None:
        self.dataplane = dataplane
        self.repository = repository
        self.metrics = metrics
        self.monitoring = monitoring

    def app(self, max_body_bytes: int) -> web.Application:
        app = web.Application(middlewares=[error_middleware], client_max_size=max_body_bytes)
        app.router.add_route("*", "/v1/models/{tail:.*}", self.models)
        if self.monitoring.enable:
            app.router.add_get(self.monitoring.path, self.prometheus)
        return app

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def models(self, request: web.Request) -> web.StreamResponse:
        match = _PATH.match(request.path)
        if match is None:
            raise NotFound(f"no such endpoint: {request.path}")
        name, rest = match["name"], match["rest"] or ""
        version = _parse_version(match["version"])
        label = match["label"]
        if rest in (":predict", ":classify", ":regress"):
            if request.method != "POST":
                return _error(405, f"{rest[1:]} takes POST")
            if rest == ":regress":
                return _error(501, "regress is not supported: these models are classifiers")
            raw = await request.read()
            large = len(raw) > OFFLOAD_BYTES
            body = await self._offload(large, _parse_json, raw)
            if rest == ":predict":
                return await self.predict(name, version, label, body, large)
            return await self.classify(name, version, label, body)
        if request.method != "GET":
            return _error(405, "model status and metadata take GET")
        if rest == "/metadata":
            with self.metrics.track(name, "metadata", "REST"):
                resolved, signatures = self.dataplane.metadata(name, version, label)
                return web.json_response(_message_json(messages.metadata_response(resolved, signatures)))
        with self.metrics.track(name, "status", "REST"):
            statuses = self.repository.statuses(name, version, label)
            return web.json_response(_message_json(messages.status_response(statuses)))

    async def _offload(self, large: bool, function: Callable[..., Any], *args: Any) -> Any:
        """Parse big JSON bodies in a worker thread: 1 MB of pixels takes ~30 ms of parsing, which
        on the event loop would stall every other request for that long."""
        if not large:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.dataplane.executor, function, *args)

    async def predict(
        self, name: str, version: int | None, label: str | None, body: dict[str, Any], large: bool = False
    ) -> web.Response:
        with self.metrics.track(name, "predict", "REST"):
            signature_name = body.get("signature_name", "")
            if not isinstance(signature_name, str):
                raise InvalidArgument("signature_name must be a string")
            resolved = self.repository.resolve(name, version, label)
            signature = self.dataplane.signature_of(resolved, signature_name)
            if ("instances" in body) == ("inputs" in body):
                raise InvalidArgument(
                    'the body needs exactly one of "instances" (row format) or "inputs" (columnar format)'
                )
            row_format = "instances" in body
            inputs = await self._offload(
                large,
                _rows_to_tensors if row_format else _columns_to_tensors,
                body["instances"] if row_format else body["inputs"],
                signature,
            )
            output_filter = body.get("output_filter") or []
            result = await self.dataplane.predict(
                name, inputs, version=resolved.version, signature=signature.name, output_filter=output_filter
            )
            outputs = {
                k: codec.numpy_to_json(v, binary=k.endswith("_bytes")) for k, v in result.outputs.items()
            }
            if row_format:
                rows = len(next(iter(result.outputs.values())))
                if len(outputs) == 1:
                    return web.json_response({"predictions": next(iter(outputs.values()))})
                predictions = [{k: v[i] for k, v in outputs.items()} for i in range(rows)]
                return web.json_response({"predictions": predictions})
            return web.json_response(
                {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
            )

    async def classify(
        self, name: str, version: int | None, label: str | None, body: dict[str, Any]
    ) -> web.Response:
        with self.metrics.track(name, "classify", "REST"):
            examples = body.get("examples")
            if not isinstance(examples, list):
                raise InvalidArgument('classify takes {"examples": [{"feature": value, ...}, ...]}')
            context = body.get("context") or {}
            if not isinstance(context, dict):
                raise InvalidArgument('"context" must be an object of features')
            resolved = self.repository.resolve(name, version, label)
            signature = self.dataplane.signature_of(resolved, body.get("signature_name", ""))
            decoded = []
            for example in examples:
                if not isinstance(example, dict):
                    raise InvalidArgument("each example must be an object of features")
                features = {**context, **example}
                decoded.append({k: _feature(k, v, signature) for k, v in features.items()})
            _, classes = await self.dataplane.classify(
                name, decoded, version=resolved.version, signature=signature.name
            )
            return web.json_response({"results": [[[lab, score] for lab, score in row] for row in classes]})


def _parse_version(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise InvalidArgument(f"version must be a positive integer, got '{raw}'")
    return int(raw)


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body


def _spec(signature: Signature, name: str) -> Any:
    if name in signature.inputs:
        return signature.inputs[name].dtype
    if name in signature.alternatives:
        return codec.STRING
    raise InvalidArgument(
        f"unknown input '{name}': signature '{signature.name}' takes {sorted(signature.inputs)}"
    )


def _rows_to_tensors(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument('"instances" must be a non-empty list')
    if all(isinstance(row, dict) and "b64" not in row for row in instances):
        names = set(instances[0])
        if any(set(row) != names for row in instances):
            raise InvalidArgument("every instance must name the same inputs")
        return {n: codec.json_to_numpy([row[n] for row in instances], _spec(signature, n), n) for n in names}
    accepted = set(signature.inputs) | set(signature.alternatives)
    if len(signature.inputs) != 1:
        raise InvalidArgument(
            f"signature '{signature.name}' takes several inputs {sorted(accepted)}: send each instance as an object"
        )
    (only,) = signature.inputs
    return {only: codec.json_to_numpy(instances, signature.inputs[only].dtype, only)}


def _columns_to_tensors(inputs: Any, signature: Signature) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict) and "b64" not in inputs:
        return {n: codec.json_to_numpy(v, _spec(signature, n), n) for n, v in inputs.items()}
    if len(signature.inputs) != 1:
        raise InvalidArgument(
            f"signature '{signature.name}' takes several inputs: send \"inputs\" as an object"
        )
    (only,) = signature.inputs
    return {only: codec.json_to_numpy(inputs, signature.inputs[only].dtype, only)}


def _feature(name: str, value: Any, signature: Signature) -> np.ndarray:
    dtype = _spec(signature, name)
    array = codec.json_to_numpy(value if isinstance(value, list) else [value], dtype, name)
    return array.reshape(-1)
