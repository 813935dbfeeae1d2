"""The Open Inference Protocol's REST API, on TF Serving's REST port and app.

    GET  /v2                                                    server metadata
    GET  /v2/health/live, /v2/health/ready                      200, or 503 when not ready
    GET  /v2/models/<m>[/versions/<v>]                          model metadata
    GET  /v2/models/<m>[/versions/<v>]/ready                    model readiness
    POST /v2/models/<m>[/versions/<v>]/infer                    inference (JSON, or the binary extension)
    POST /v2/repository/index                                   the model repository extension
    POST /v2/repository/models/<m>/load, .../unload

The routes join TF Serving's app (`serving.protocol.rest.app`), so its middlewares apply: bearer
token, admission, the request timeout, the body size limit and bytes-in-flight budget (through the
app's body reader), and the error mapping (`{"error": "..."}` with each `ServingError`'s status).
The two health paths are answered before those, like gRPC health: exempt from the token unless
`--auth_exempt` leaves out `health`, and outside admission (ready turns 503 once draining starts).

Binary tensor data (Triton's extension, `tritonclient.http`'s default): the request header
`Inference-Header-Content-Length` gives the JSON part's length; the inputs whose
`parameters.binary_data_size` is set take that many bytes of what follows, in input order. Outputs
are binary when their `parameters.binary_data` is true, or, for outputs that do not say, when the
request's `parameters.binary_data_output` is true; the answer then carries the same header and the
raw bytes after the JSON. A BYTES output that is not UTF-8 is sent binary, since JSON cannot hold it.

Classification (Triton's extension, `tritonclient`'s `InferRequestedOutput(name, class_count=k)`): an
output requested with `"parameters": {"classification": k}` is answered as BYTES [batch, min(k,
classes)], "<value>:<index>[:<label>]" per class (see `common`), in JSON or binary like any output.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from serving import codec
from serving.backends import Signature
from serving.config import Limits
from serving.errors import InvalidArgument, MethodNotAllowed, NotFound, Unauthenticated
from serving.protocol import Services
from serving.protocol.v2 import common
from serving.protocol.v2.repository import ModelRepository, unavailable_without_reloader
from serving.repository import State

HEADER_LENGTH = "Inference-Header-Content-Length"
BIG_BODY_BYTES = 1 << 20  # JSON parts from this size on are parsed off the event loop

_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")
_REPOSITORY = re.compile(r"^/v2/repository/(?:index|models/(?P<name>[^/]+)/(?P<action>load|unload))$")
HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BodyReader = Callable[[web.Request], Awaitable[bytes]]


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",  # no charset, as `serving.protocol.rest.app` says why
    )


class V2RestApi:
    """The V2 handlers; `add_routes` puts them into TF Serving's REST app."""

    def __init__(self, services: Services, limits: Limits, read_body: BodyReader, parse_executor: Executor) -> None:
        self.services = services
        self.dataplane = services.dataplane
        self.repository = services.repository
        self.metrics = services.metrics
        self.limits = limits
        self.read_body = read_body
        self.parse_executor = parse_executor
        self.max_bytes = services.dataplane.max_tensor_bytes
        self.health_tokens = services.tokens_for("health").get("health")
        self.model_repository = ModelRepository.for_services(services)

    def add_routes(self, app: web.Application) -> None:
        # Outermost, so the health paths pass neither the token (unless health is not exempt) nor admission.
        app.middlewares.insert(0, self.health_middleware)
        app.router.add_route("*", "/v2", self.server_metadata)
        app.router.add_route("*", "/v2/{tail:.*}", self.dispatch)

    @web.middleware
    async def health_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in HEALTH_PATHS or request.method not in ("GET", "HEAD"):
            return await handler(request)
        if self.health_tokens is not None:
            try:
                self.health_tokens.check(request.headers.get("Authorization"))
            except Unauthenticated as exc:
                response = _json({"error": exc.message}, status=exc.http_status)
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        if request.path.endswith("/live"):
            return _json({"live": True})
        ready = common.server_ready(self.services)
        return _json({"ready": ready}, status=200 if ready else 503)

    # -- routing ---------------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in HEALTH_PATHS:  # reached with a method other than GET (see health_middleware)
            raise MethodNotAllowed("health takes GET", allowed=("GET",))
        match = _MODEL.match(path)
        if match is not None:
            name, version, rest = match["name"], match["version"] or "", match["rest"] or ""
            if rest == "/infer":
                if request.method != "POST":
                    raise MethodNotAllowed("infer takes POST", allowed=("POST",))
                return await self.infer(request, name, version)
            if request.method != "GET":
                raise MethodNotAllowed("model metadata and readiness take GET", allowed=("GET",))
            if rest == "/ready":
                return self.model_ready(name, version)
            return self.model_metadata(name, version)
        match = _REPOSITORY.match(path)
        if match is not None:
            if request.method != "POST":
                raise MethodNotAllowed("the model repository extension takes POST", allowed=("POST",))
            return await self.repository_call(request, match["name"], match["action"])
        raise NotFound(f"no such endpoint: {path}")

    def _label(self, name: str) -> str:
        """The model_name label of a V2 model name (its TF Serving model)."""
        return name if name in self.repository.models else common.split_name(name)[0]

    # -- metadata and readiness ------------------------------------------------------------------

    async def server_metadata(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            raise MethodNotAllowed("server metadata takes GET", allowed=("GET",))
        with self.metrics.track("", "v2_server_metadata", "REST"):
            return _json(
                {"name": common.SERVER_NAME, "version": common.server_version(), "extensions": list(common.EXTENSIONS)}
            )

    def model_metadata(self, name: str, version: str) -> web.Response:
        with self.metrics.track(self._label(name), "v2_metadata", "REST"):
            target = common.Target.resolve(self.repository, name, version)
            resolved = target.version_of(self.repository)
            signature = target.signature_of(self.dataplane, resolved)
            available = self.repository.statuses(target.model)
            return _json(
                {
                    "name": target.name,
                    "versions": [str(v.version) for v in available if v.state == State.AVAILABLE],
                    "platform": common.platform_of(resolved),
                    "inputs": _tensors(signature.inputs),
                    "outputs": _tensors(signature.outputs),
                    "properties": common.model_properties(resolved, signature),
                }
            )

    def model_ready(self, name: str, version: str) -> web.Response:
        with self.metrics.track(self._label(name), "v2_model_ready", "REST"):
            target = common.Target.resolve(self.repository, name, version)
            resolved = target.version_of(self.repository)  # not AVAILABLE: 503 (UNAVAILABLE)
            target.signature_of(self.dataplane, resolved)
            return _json({"name": target.name, "ready": True})

    # -- infer -----------------------------------------------------------------------------------

    async def infer(self, request: web.Request, name: str, version: str) -> web.Response:
        with self.metrics.track(self._label(name), "v2_infer", "REST"):
            raw = await self.read_body(request)
            header, binary = _split_body(raw, request.headers.get(HEADER_LENGTH))
            body = await self._parse(header)
            parameters = _parameters(body.get("parameters"), "parameters")
            target = common.Target.resolve(
                self.repository, name, version, common.string_parameter(parameters, common.SIGNATURE_PARAMETER)
            )
            resolved = target.version_of(self.repository)
            signature = target.signature_of(self.dataplane, resolved)
            inputs = self._inputs(body.get("inputs"), binary, signature)
            requested, binary_outputs, classes = _requested_outputs(body.get("outputs"), parameters)
            for output in classes:
                common.check_classification(signature, output)
            labels = common.labels_of(resolved)
            result = await self.dataplane.predict(
                target.model, inputs, version=resolved.version, signature=signature.name, output_filter=requested
            )
            request_id = body.get("id")
            if request_id is not None and not isinstance(request_id, str):
                raise InvalidArgument('"id" must be a string')
            outputs = common.classify_outputs(result.outputs, classes, labels)
            return _infer_response(target.name, result.version.version, request_id, outputs, binary_outputs)

    async def _parse(self, raw: bytes) -> dict[str, Any]:
        depth = self.limits.rest_max_json_depth
        if len(raw) >= BIG_BODY_BYTES:  # as TF Serving's REST API: big bodies off the event loop
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(self.parse_executor, lambda: codec.loads(raw, max_depth=depth))
        else:
            body = codec.loads(raw, max_depth=depth)
        if not isinstance(body, dict):
            raise InvalidArgument("request body must be a JSON object")
        return body

    def _inputs(self, raw_inputs: Any, binary: memoryview, signature: Signature) -> dict[str, np.ndarray]:
        if not isinstance(raw_inputs, list) or not raw_inputs:
            raise InvalidArgument('"inputs" must be a non-empty list of tensors')
        inputs: dict[str, np.ndarray] = {}
        offset = 0
        for tensor in raw_inputs:
            if not isinstance(tensor, dict):
                raise InvalidArgument('every entry of "inputs" must be an object')
            name, datatype = tensor.get("name"), tensor.get("datatype")
            if not isinstance(name, str) or not name:
                raise InvalidArgument('every input needs a "name" (a string)')
            if name in inputs:
                raise InvalidArgument(f"input '{name}' is given twice")
            common.check_datatype(signature, name, datatype)
            parameters = _parameters(tensor.get("parameters"), f"input '{name}' parameters")
            size = parameters.get("binary_data_size")
            if size is not None:
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise InvalidArgument(f"input '{name}': binary_data_size must be a non-negative integer")
                if offset + size > len(binary):
                    raise InvalidArgument(
                        f"input '{name}': binary_data_size {size} passes the end of the binary data "
                        f"({len(binary) - offset} bytes left; is the {HEADER_LENGTH} header right?)"
                    )
                piece = bytes(binary[offset : offset + size])
                offset += size
                inputs[name] = common.decode_raw(datatype, tensor.get("shape"), piece, name, self.max_bytes)
            else:
                if "data" not in tensor:
                    raise InvalidArgument(f"input '{name}' has neither \"data\" nor parameters.binary_data_size")
                inputs[name] = common.decode_values(datatype, tensor.get("shape"), tensor["data"], name, self.max_bytes)
        if offset != len(binary):
            raise InvalidArgument(
                f"{len(binary) - offset} bytes of binary data follow the JSON that no input's binary_data_size claims"
            )
        return inputs

    # -- the model repository extension ----------------------------------------------------------

    async def repository_call(self, request: web.Request, name: str | None, action: str | None) -> web.Response:
        api = f"v2_repository_{action or 'index'}"
        with self.metrics.track(name or "", api, "REST"):
            raw = await self.read_body(request)
            body = await self._parse(raw) if raw.strip() else {}
            if self.model_repository is None:
                raise unavailable_without_reloader()
            if name is None:
                ready = body.get("ready", False)
                if not isinstance(ready, bool):
                    raise InvalidArgument('"ready" must be a boolean')
                return _json(self.model_repository.index(ready))
            parameters = _parameters(body.get("parameters"), "parameters")
            if action == "load":
                await self.model_repository.load(name, parameters)
            else:
                await self.model_repository.unload(name)
            return web.Response(status=200)


def _tensors(tensors: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"name": n, "datatype": d, "shape": s} for n, d, s in common.tensor_metadata(tensors)]


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be an object")
    return value


def _split_body(raw: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return raw, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(raw):
        raise InvalidArgument(
            f"{HEADER_LENGTH} must be the length of the JSON part (0..{len(raw)} bytes), got {header_length!r}"
        )
    return raw[:length], memoryview(raw)[length:]


def _requested_outputs(
    raw: Any, parameters: Mapping[str, Any]
) -> tuple[list[str], dict[str, bool], dict[str, int]]:
    """The requested output names, which of them are binary (absent: all, by `binary_data_output`)
    and the class count of those asked for as classifications."""
    default = parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidArgument("parameter 'binary_data_output' must be a boolean")
    if raw is None:
        return [], {"*": default}, {}
    if not isinstance(raw, list):
        raise InvalidArgument('"outputs" must be a list of {"name": ...} objects')
    names: list[str] = []
    binary: dict[str, bool] = {"*": default}
    classes: dict[str, int] = {}
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidArgument('every entry of "outputs" must be an object with a "name"')
        name = entry["name"]
        if name in binary and name != "*":
            raise InvalidArgument(f"output '{name}' is requested twice")
        output_parameters = _parameters(entry.get("parameters"), f"output '{name}' parameters")
        count = common.classification_count(output_parameters, name)
        if count:
            classes[name] = count
        wanted = output_parameters.get("binary_data", default)
        if not isinstance(wanted, bool):
            raise InvalidArgument(f"output '{name}': binary_data must be a boolean")
        names.append(name)
        binary[name] = wanted
    return names, binary, classes


def _infer_response(
    model: str, version: int, request_id: str | None, outputs: Mapping[str, np.ndarray], binary: Mapping[str, bool]
) -> web.Response:
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    finite = True
    for name, value in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": common.datatype_of(value.dtype), "shape": common.shape_of(value)}
        as_binary = binary.get(name, binary["*"])
        data: Any = None
        if not as_binary:
            if value.dtype == codec.STRING:
                try:
                    data = [element.decode("utf-8") for element in value.reshape(-1)]
                except UnicodeDecodeError:  # JSON cannot carry it: binary, which clients of the extension read
                    as_binary = True
            else:
                flat = value.reshape(-1)
                if flat.dtype.kind == "f" and not np.isfinite(flat).all():
                    finite = False
                    data = flat.tolist()
                else:
                    data = codec.json_ready(flat)
        if as_binary:
            payload = common.encode_raw(value)
            entry["parameters"] = {"binary_data_size": len(payload)}
            chunks.append(payload)
        else:
            entry["data"] = data
        described.append(entry)
    answer: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request_id is not None:
        answer["id"] = request_id
    answer["outputs"] = described
    # NaN and infinities: Python's json writes them as NaN/Infinity (orjson would write null).
    header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY) if finite else json.dumps(answer).encode()
    if not chunks:
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=b"".join([header, *chunks]),
        headers={HEADER_LENGTH: str(len(header))},
        content_type="application/octet-stream",
    )
