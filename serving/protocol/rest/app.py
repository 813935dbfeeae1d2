"""TF Serving's REST API on aiohttp, sharing the data plane with gRPC.

    GET  /v1/models/<m>[/versions/<v>|/labels/<l>]              model status
    GET  /v1/models/<m>[/versions/<v>|/labels/<l>]/metadata     signatures
    POST /v1/models/<m>[/versions/<v>|/labels/<l>]:predict      {"instances": [...]} or {"inputs": ...}
    POST /v1/models/<m>[/versions/<v>|/labels/<l>]:classify     {"examples": [{feature: value}, ...], "context": {...}}
    POST /v1/models/<m>[/versions/<v>|/labels/<l>]:regress      the same, -> {"results": [value, ...]}
    GET  <monitoring path>                                      Prometheus text
    GET  /v1/openapi.json                                       this API as an OpenAPI 3 document

Errors are `{"error": "<message>"}` with the status each `ServingError` carries (429 and 503 with
`Retry-After`, 401 with `WWW-Authenticate: Bearer`); JSON bodies of status and metadata are the
protobuf messages rendered as JSON, as TF Serving does.

Per request, before a handler sees it: the bearer token (with `--auth_token_file`), admission (503
once draining), the whole-request timeout (`--rest_api_timeout_in_ms`, 504), and for bodies the size
limit (413, from Content-Length before reading), the bytes-in-flight budget across requests (429,
so a burst of huge bodies cannot exhaust memory or monopolise the event loop) and the body timeout
(408, for clients that send slowly). Connection-level protection is in `guard.py`.

JSON is read and written with orjson; a predict body's big numeric arrays are read straight into
flat lists (`codec.loads`), and numeric outputs are written from the arrays themselves. Bodies under
1 MiB are parsed on the event loop (orjson holds the GIL for a whole call, so a thread would stall
the loop as long and add a hop); bigger ones in one parse thread of their own (see `models`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format

from serving import codec
from serving.accesslog import CURRENT, RequestRecord, Telemetry, status_name
from serving.backends import Signature
from serving.config import DEFAULT_MAX_MESSAGE_BYTES, Limits, MonitoringConfig
from serving.errors import (
    ClientClosedRequest,
    DeadlineExceeded,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ResourceExhausted,
    ServingError,
    Unauthenticated,
    Unavailable,
)
from serving.protocol import Services, messages
from serving.protocol.rest import console
from serving.protocol.v2.rest import V2RestApi
from serving.repository import ModelVersion

log = logging.getLogger(__name__)

# Per-request state the middlewares share with the body reader.
RESERVED_BYTES = web.RequestKey("reserved_bytes", int)  # bytes of --rest_max_inflight_bytes this body holds
CLOSE_CONNECTION = web.RequestKey("close_connection", bool)  # its body could not be read: close after the answer

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<rest>/metadata|:predict|:classify|:regress)?$"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


OPENAPI_DOCUMENT = Path(__file__).with_name("openapi.json")
BIG_BODY_BYTES = 1 << 20  # bodies from this size on are parsed one at a time (see `models`)
_VERSION = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes "²" and full-width digits
_MAX_VERSION = 2**63 - 1  # TF Serving's versions are int64


def _json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None, finite: bool = True
) -> web.Response:
    """orjson's JSON of `payload`; with `finite=False` (it may hold NaN or infinities) Python's json,
    which writes the NaN/Infinity literals TF Serving writes where orjson would write null."""
    try:
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY) if finite else json.dumps(payload).encode()
    except orjson.JSONEncodeError:
        # What orjson refuses and json writes: strings with lone surrogates, numpy types orjson
        # does not know. Neither comes from a request orjson parsed; this is a safety net.
        body = json.dumps(payload, default=_plain).encode()
    # Plain `application/json`, as TF Serving, Triton and KServe answer (JSON is UTF-8 and its media
    # type defines no charset parameter, RFC 8259): clients such as KServe's SDK compare it exactly.
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json_response({"error": message}, status=status, headers=headers)


def _error_headers(exc: ServingError) -> dict[str, str] | None:
    if isinstance(exc, MethodNotAllowed):
        return {"Allow": ", ".join(exc.allowed)}
    if isinstance(exc, ResourceExhausted | Unavailable):
        return {"Retry-After": "1"}
    if isinstance(exc, Unauthenticated):
        return {"WWW-Authenticate": "Bearer"}
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The REST twin of the gRPC `rpc` decorator: ServingError -> its status; anything else -> 500."""
    try:
        return await handler(request)
    except ServingError as exc:
        if (record := CURRENT.get()) is not None:  # its code name, which the HTTP status may not tell
            record.status = exc.grpc_code.name
        response = _error(exc.http_status, exc.message, _error_headers(exc))
        if request.get(CLOSE_CONNECTION):
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason)
        raise
    except Exception:
        log.exception("internal error in %s %s", request.method, request.path)
        return _error(500, "internal server error; see the server log")


def telemetry_middleware(telemetry: Telemetry) -> Middleware:
    """The outermost middleware when the access log or tracing is on: one record (and span) per
    request, whatever the route (TF Serving's API, V2, metrics), ended with the answer's status."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol, api, model, route = _describe_route(request)
        peername = request.transport.get_extra_info("peername") if request.transport is not None else None
        record = telemetry.begin(
            protocol=protocol,
            transport="http",
            api=api,
            request=f"{request.method} {request.path[:512]}",
            route=f"{request.method} {route}",
            peer=_peer(peername),
            request_bytes=request.content_length or 0,
            model=model,
            headers=request.headers if telemetry.tracing is not None else None,
        )
        token = CURRENT.set(record)
        try:
            response = await handler(request)
            _ended(record, request, response.status)
            return response
        except web.HTTPException as exc:  # what error_middleware passes on (redirects)
            _ended(record, request, exc.status)
            raise
        except BaseException:  # the client went away (cancelled): nobody reads the answer
            _ended(record, request, 499)
            record.status = "CANCELLED"
            raise
        finally:
            CURRENT.reset(token)
            telemetry.end(record)

    return observe


def _ended(record: RequestRecord, request: web.Request, http_status: int) -> None:
    record.http_status = http_status
    if http_status >= 400 and record.status == "OK":  # no ServingError named the code (see error_middleware)
        record.status = status_name(http_status)
    record.request_bytes = max(record.request_bytes, request.get(RESERVED_BYTES, 0))


def _peer(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername or "")


# Path words kept as they are in span names; other segments become "*" (a name per client-chosen
# path would make one span name per typo), and the segment after "models"/"versions"/"labels" a
# placeholder.
_ROUTE_WORDS = frozenset(
    {"v1", "v2", "models", "versions", "labels", "metadata", "infer", "ready", "health", "live", "repository"}
    | {"index", "load", "unload"}
)
_PLACEHOLDERS = {"models": "{model}", "versions": "{version}", "labels": "{label}"}
_VERBS = frozenset(("predict", "classify", "regress"))


def _describe_route(request: web.Request) -> tuple[str, str, str, str]:
    """(protocol, api, model, route template) of a request, from its path and the route it matched.

    The catch-all routes (TF Serving's `/v1/models/...`, V2's `/v2/...`) are templated from the path
    (`/v1/models/{model}/versions/{version}:predict`, `/v2/models/{model}/infer`); any other route
    (metrics, OpenAPI) is named by its aiohttp pattern and its handler.
    """
    path = request.path
    protocol = "v2" if path == "/v2" or path.startswith("/v2/") else "rest"
    resource = request.match_info.route.resource
    if resource is None:  # no route matched: aiohttp answers 404 / 405
        return protocol, "unknown", "", "unmatched"
    if "{tail}" not in resource.canonical:
        handler = getattr(request.match_info.handler, "__name__", "") or "unknown"
        return protocol, handler, "", resource.canonical
    template, model, api, previous = [], "", "", ""
    for segment in path.split("/")[1:12]:
        if previous in _PLACEHOLDERS and segment:
            name, colon, verb = segment.partition(":")
            model = name if previous == "models" else model
            template.append(_PLACEHOLDERS[previous] + (f":{verb}" if verb in _VERBS else ":*" if colon else ""))
            api = verb if verb in _VERBS else ("status" if protocol == "rest" else "metadata")
        else:
            template.append(segment if segment in _ROUTE_WORDS or not segment else "*")
            api = segment if segment in _ROUTE_WORDS else "unknown"
        previous = segment
    if api == "ready" and model:
        api = "model_ready"
    return protocol, api, model, "/" + "/".join(template)


def _message_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _metadata_json(version: ModelVersion, signatures: Mapping[str, Signature]) -> dict[str, Any]:
    """GetModelMetadata as TF Serving's REST API writes it: the SignatureDefMap in place of the Any
    that holds it on gRPC (so no "@type"), every field printed, proto field names."""
    return {
        "model_spec": _message_json(messages.model_spec(version)),
        "metadata": {"signature_def": _message_json(messages.signature_def_map(signatures))},
    }


class RestApi:
    def __init__(
        self,
        services: Services,
        monitoring: MonitoringConfig,
        limits: Limits | None = None,
        parse_threads: int = 1,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.telemetry = telemetry  # the access log and tracing (None: both off, no middleware at all)
        self.dataplane = services.dataplane
        self.repository = services.repository
        self.metrics = services.metrics
        self.admission = services.admission
        self.monitoring = monitoring
        self.limits = limits or Limits()
        self.max_body_bytes = self.limits.rest_max_body_bytes or DEFAULT_MAX_MESSAGE_BYTES
        tokens = services.tokens_for("predict", "status", "metrics")
        self._predict_tokens, self._status_tokens = tokens.get("predict"), tokens.get("status")
        self._metrics_tokens = tokens.get("metrics")
        self.inflight_bytes = 0  # request bodies being read or parsed now
        # --rest_api_num_threads: one by default, so the loop waits for at most one parse call.
        self._parse_thread = ThreadPoolExecutor(max(parse_threads, 1), thread_name_prefix="rest-parse")
        # The Open Inference Protocol's /v2 routes, with this API's body reader and parse thread.
        self.v2 = V2RestApi(services, self.limits, self._read_body, self._parse_thread)

    def app(self) -> web.Application:
        admission, metrics_path = self.admission, self.monitoring.path if self.monitoring.enable else None
        timeout = self.limits.rest_api_timeout_seconds

        @web.middleware
        async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            """Token, then admission for draining (503 once shutdown began; scrapes pass), then the
            whole-request timeout; releases the request's share of the bytes-in-flight budget."""
            if console.is_static(request.path):  # the console's page and script: no data, no token
                return await handler(request)
            if request.path == metrics_path:
                if self._metrics_tokens is not None:
                    self._metrics_tokens.check(request.headers.get("Authorization"))
                return await handler(request)
            tokens = self._status_tokens if request.method == "GET" else self._predict_tokens
            if tokens is not None:
                tokens.check(request.headers.get("Authorization"))
            admission.enter()
            try:
                async with asyncio.timeout(timeout):
                    return await handler(request)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the request took longer than {timeout * 1000:.0f} ms (--rest_api_timeout_in_ms)"
                ) from None
            finally:
                admission.exit()
                self.inflight_bytes -= request.get(RESERVED_BYTES, 0)

        middlewares: list[Middleware] = [error_middleware, admission_middleware]
        if self.telemetry is not None:
            middlewares.insert(0, telemetry_middleware(self.telemetry))
        app = web.Application(middlewares=middlewares, client_max_size=self.max_body_bytes)

        async def stop_parse_thread(app: web.Application) -> None:
            self._parse_thread.shutdown(wait=False, cancel_futures=True)

        app.on_cleanup.append(stop_parse_thread)
        app.router.add_route("*", "/v1/models/{tail:.*}", self.models)
        app.router.add_get("/v1/openapi.json", self.openapi)
        self.v2.add_routes(app)
        if self.monitoring.enable:
            app.router.add_get(self.monitoring.path, self.prometheus)
        return app

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3 document of this REST API (kept beside this module)."""
        return web.Response(body=OPENAPI_DOCUMENT.read_bytes(), content_type="application/json", charset="utf-8")

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
                raise MethodNotAllowed(f"{rest[1:]} takes POST", allowed=("POST",))
            raw = await self._read_body(request)
            depth, dense = self.limits.rest_max_json_depth, rest == ":predict"
            if len(raw) >= BIG_BODY_BYTES:
                # On the event loop a 30 MB body would hold it for about a second (~30 ms per MB), and
                # health checks would time out behind a few of them. Big bodies are parsed in one
                # thread of their own, one after the other: the loop then waits at most for one C
                # call of the parse (orjson, a numpy operation) each time it needs the GIL.
                loop = asyncio.get_running_loop()
                body = await loop.run_in_executor(self._parse_thread, _parse_big_json, raw, depth, dense)
            else:
                body = _parse_json(raw, depth, dense)
            if rest == ":predict":
                return await self.predict(name, version, label, body)
            if rest == ":classify":
                return await self.classify(name, version, label, body)
            return await self.regress(name, version, label, body)
        if request.method != "GET":
            raise MethodNotAllowed("model status and metadata take GET", allowed=("GET",))
        if rest == "/metadata":
            with self.metrics.track(name, "metadata", "REST"):
                resolved, signatures = self.dataplane.metadata(name, version, label)
                # Exactly TF Serving's answer; the engine and providers a version runs on are in
                # the log and in the model_server_model_version_runtime metric.
                return _json_response(_metadata_json(resolved, signatures))
        with self.metrics.track(name, "status", "REST"):
            statuses = self.repository.statuses(name, version, label)
            return _json_response(_message_json(messages.status_response(statuses)))

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, within the size limit, the bytes-in-flight budget and the body timeout."""
        limits = self.limits
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(
                f"Request Entity Too Large: the body is {length} bytes, over the {self.max_body_bytes}-byte "
                f"limit (--rest_max_body_bytes)"
            )
        reserved = length or 0
        if self.inflight_bytes and self.inflight_bytes + reserved > limits.rest_max_inflight_bytes:
            raise ResourceExhausted(
                f"{self.inflight_bytes} bytes of request bodies are in flight; this one ({reserved} bytes) would "
                f"pass the {limits.rest_max_inflight_bytes}-byte budget (--rest_max_inflight_bytes): retry later"
            )
        self.inflight_bytes += reserved
        request[RESERVED_BYTES] = reserved
        try:
            async with asyncio.timeout(limits.rest_body_timeout_seconds):
                raw = await request.read()
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {limits.rest_body_timeout_seconds:g} s "
                f"(--rest_body_timeout_seconds)"
            ) from None
        except ConnectionResetError:
            raise ClientClosedRequest("the client closed the connection before its body arrived") from None
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                f"Request Entity Too Large: the body is over the {self.max_body_bytes}-byte limit "
                f"(--rest_max_body_bytes)"
            ) from None
        except (RequestPayloadError, HttpProcessingError, ValueError) as exc:  # e.g. "gzip" that is not
            # The rest of this body cannot be read either: end it here (aiohttp would otherwise try
            # to drain it after the answer, and fail again) and close the connection after the answer.
            request.content.feed_eof()
            request[CLOSE_CONNECTION] = True
            raise InvalidArgument(f"cannot read the request body: {str(exc).strip()}") from None
        if len(raw) > reserved:  # chunked, or compressed: account for what was actually read
            self.inflight_bytes += len(raw) - reserved
            request[RESERVED_BYTES] = len(raw)
        return raw

    async def predict(
        self, name: str, version: int | None, label: str | None, body: dict[str, Any]
    ) -> web.Response:
        with self.metrics.track(name, "predict", "REST"):
            resolved = self.repository.resolve(name, version, label)
            signature = self.dataplane.signature_of(resolved, _signature_name(body))
            if ("instances" in body) == ("inputs" in body):
                raise InvalidArgument(
                    'the body needs exactly one of "instances" (row format) or "inputs" (columnar format)'
                )
            row_format = "instances" in body
            if row_format:
                inputs = _rows_to_tensors(body["instances"], signature)
            else:
                inputs = _columns_to_tensors(body["inputs"], signature)
            output_filter = body.get("output_filter") or []
            if not isinstance(output_filter, list) or not all(isinstance(n, str) for n in output_filter):
                raise InvalidArgument('"output_filter" must be a list of output names (strings)')
            result = await self.dataplane.predict(
                name, inputs, version=resolved.version, signature=signature.name, output_filter=output_filter
            )
            return _predict_response(result.outputs, row_format)

    async def classify(
        self, name: str, version: int | None, label: str | None, body: dict[str, Any]
    ) -> web.Response:
        """TF Serving's :classify: {"results": [[[label, score], ...], ...]}, one list per example."""
        with self.metrics.track(name, "classify", "REST"):
            examples = _examples(body, "classify")
            _, classes = await self.dataplane.classify(
                name, examples, version=version, label=label, signature=_signature_name(body)
            )
            results = {"results": [[[lab, score] for lab, score in row] for row in classes]}
            return _json_response(results, finite=all(math.isfinite(score) for row in classes for _, score in row))

    async def regress(
        self, name: str, version: int | None, label: str | None, body: dict[str, Any]
    ) -> web.Response:
        """TF Serving's :regress: {"results": [value, ...]}, one value per example."""
        with self.metrics.track(name, "regress", "REST"):
            examples = _examples(body, "regress")
            _, values = await self.dataplane.regress(
                name, examples, version=version, label=label, signature=_signature_name(body)
            )
            return _json_response({"results": values}, finite=all(math.isfinite(v) for v in values))


def _examples(body: dict[str, Any], method: str) -> list[dict[str, np.ndarray]]:
    """The tf.Examples of a :classify / :regress body, `context` merged into each, with TF Serving's
    checks and words (json_tensor.cc); feature values are typed by their JSON (`codec.json_feature`)."""
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {_json_type(context)}")
    if "examples" not in body:
        raise InvalidArgument(f"When method is {method}, key 'examples' is expected and was not found")
    examples = body["examples"]
    if not isinstance(examples, list):
        raise InvalidArgument("Expecting 'examples' value to be an list/array")
    if not examples:
        raise InvalidArgument("'examples' value is an empty array")
    shared = {name: codec.json_feature(name, value) for name, value in context.items()}
    decoded = []
    for example in examples:
        if not isinstance(example, dict):
            raise InvalidArgument(f"Example must be JSON object but got JSON {_json_type(example)}")
        decoded.append({**shared, **{name: codec.json_feature(name, value) for name, value in example.items()}})
    return decoded


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for kind, name in ((list, "array"), (str, "string"), (int | float, "number")):
        if isinstance(value, kind):
            return name
    return "object"


def _predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> web.Response:
    """TF Serving's predict answer: {"predictions": ...} (row format) or {"outputs": ...}."""
    # Answers with NaN or infinities take the slow path (see `_json_response`).
    finite = all(v.dtype.kind != "f" or np.isfinite(v).all() for v in outputs.values())
    convert = codec.json_ready if finite else codec.numpy_to_json
    values = {k: convert(v, binary=k.endswith("_bytes")) for k, v in outputs.items()}
    payload: dict[str, Any]
    if not row_format:
        payload = {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    elif len(values) == 1:
        payload = {"predictions": next(iter(values.values()))}
    else:
        rows = len(next(iter(outputs.values())))
        payload = {"predictions": [{k: v[i] for k, v in values.items()} for i in range(rows)]}
    return _json_response(payload, finite=finite)


def _signature_name(body: dict[str, Any]) -> str:
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidArgument('"signature_name" must be a string')
    return name


def _parse_version(raw: str | None) -> int | None:
    if raw is None:
        return None
    if _VERSION.fullmatch(raw) is None or not 0 < int(raw) <= _MAX_VERSION:
        raise InvalidArgument(f"version must be a positive integer, got '{raw}'")
    return int(raw)


def _parse_big_json(raw: bytes, max_depth: int, dense_arrays: bool) -> dict[str, Any]:
    """`_parse_json` in the parse thread; then the thread's free heap goes back to the system, or
    every big body would leave the process larger (glibc keeps a thread's arena otherwise)."""
    try:
        return _parse_json(raw, max_depth, dense_arrays)
    finally:
        if _malloc_trim is not None:
            _malloc_trim(0)


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()


def _parse_json(raw: bytes, max_depth: int, dense_arrays: bool = False) -> dict[str, Any]:
    body = codec.loads(raw, dense_arrays=dense_arrays, max_depth=max_depth)
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
    dense = isinstance(instances, codec.NumberArray)  # rows of numbers, so one unnamed input
    if not dense and (not isinstance(instances, list) or not instances):
        raise InvalidArgument('"instances" must be a non-empty list')
    if not dense and all(isinstance(row, dict) and "b64" not in row for row in instances):
        names = set(instances[0])
        if any(set(row) != names for row in instances):
            raise InvalidArgument("every instance must name the same inputs")
        return {
            n: codec.json_rows_to_numpy([row[n] for row in instances], _spec(signature, n), n) for n in names
        }
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
