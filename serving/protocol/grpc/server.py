"""gRPC: TF Serving's PredictionService and ModelService, standard health checking and reflection.

`create_server(services, config)` returns `(server, port)` so tests bind port 0 and talk over a real
channel. One decorator (`rpc`) wraps every servicer method: it admits the request (refused with
UNAVAILABLE once shutdown began), counts it in the metrics, and maps `ServingError` subclasses to
status codes; anything else becomes INTERNAL with a generic message and a logged traceback, so a
malformed request never takes the server down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any, Generic, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import codec
from serving.accesslog import CURRENT, Telemetry, peer_address
from serving.admission import Admission
from serving.auth import TokenFile
from serving.config import ServerConfig
from serving.dataplane import TaskSpec
from serving.errors import (
    HTTP_STATUS_OF_CODE,
    DeadlineExceeded,
    InvalidArgument,
    ServingError,
    Unauthenticated,
    Unimplemented,
)
from serving.metrics import Metrics
from serving.proto import apis_pb2, apis_pb2_grpc, example_pb2
from serving.protocol import Services, messages
from serving.protocol.grpc.inplace import PredictCall

log = logging.getLogger(__name__)

PREDICTION_SERVICE = apis_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = apis_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVICE_NAMES = (PREDICTION_SERVICE, MODEL_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
# Health services that report readiness: "" (the whole server) and each TF Serving service.
READINESS_SERVICES = ("", PREDICTION_SERVICE, MODEL_SERVICE)
# The names TF Serving (2.15.1 and later, with --enable_grpc_healthcheck_service) gives its services
# in grpc.health.v1 (model_servers/server.cc): SERVING from the moment the port is open, whatever the
# models do. Answered the same here, so clients and probes written for TF Serving keep working.
TF_SERVING_HEALTH_SERVICES = ("ModelService", "PredictionService")

Request = TypeVar("Request")
Response = TypeVar("Response")
Servicer = TypeVar("Servicer", bound="_Servicer")
Method = Callable[[Servicer, Request, grpc.aio.ServicerContext], Coroutine[Any, Any, Response]]


class _Servicer:
    metrics: Metrics
    admission: Admission
    tokens: dict[str, TokenFile]  # api -> the tokens it requires (none: no auth, or exempt)
    # Set by `_register`: the service's full name, and the access log / tracing (None: both off).
    service: str = ""
    telemetry: Telemetry | None = None


# The telemetry of each server being built (see `create_server`), given to the servicers it registers.
_TELEMETRY: weakref.WeakKeyDictionary[grpc.aio.Server, Telemetry] = weakref.WeakKeyDictionary()


# The pushback a refused caller is told to wait before retrying (trailing metadata from the gRPC
# retry design; the project's clients honour it, as REST clients honour Retry-After).
RETRY_PUSHBACK = (("grpc-retry-pushback-ms", "1000"),)
DEADLINE_MARGIN_SECONDS = 0.002
DEADLINE_CANCEL_SLACK_SECONDS = 0.05
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _trace_headers(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The W3C trace context the caller sent in its metadata (traceparent, tracestate)."""
    return {
        key: value if isinstance(value, str) else value.decode("latin-1")
        for key, value in context.invocation_metadata() or ()
        if key in ("traceparent", "tracestate")
    }


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def rpc(
    api: str, request_type: type[Message]
) -> Callable[[Method[Servicer, Request, Response]], Callable[[Servicer, bytes, grpc.aio.ServicerContext], Awaitable[Response]]]:
    """Wrap a servicer method once, at class definition: parsing, admission, auth, metrics, errors.

    Methods are registered with no request deserializer (see `_register`): the raw bytes are parsed
    here, so bytes that are no valid `request_type` are INVALID_ARGUMENT like any malformed request
    (a deserializer's failure would be gRPC's own INTERNAL). The one place gRPC errors are made:
    `ServingError` subclasses become their status code; anything else becomes INTERNAL with a generic
    message and a logged traceback. (A `grpc.aio` server interceptor would do the same per call, at
    the cost of building a handler for every request.)
    """

    def wrap(
        method: Method[Servicer, Request, Response],
    ) -> Callable[[Servicer, bytes, grpc.aio.ServicerContext], Awaitable[Response]]:
        name = method.__name__

        @functools.wraps(method)
        async def guarded(self: Servicer, raw: bytes, context: grpc.aio.ServicerContext) -> Response:
            started = time.perf_counter()
            model = ""
            status = "OK"
            admitted = False
            telemetry, record, token = self.telemetry, None, None
            if telemetry is not None:  # the access log or tracing is on: this request's record
                v2 = self.service.startswith("inference.")  # the Open Inference Protocol's package
                record = telemetry.begin(
                    protocol="v2" if v2 else "grpc",
                    transport="grpc",
                    api=api.removeprefix("v2_") if v2 else api,  # as the REST middleware names it
                    request=f"/{self.service}/{name}",
                    route=f"{self.service}/{name}",
                    peer=peer_address(context.peer() or ""),
                    request_bytes=len(raw),
                    headers=_trace_headers(context) if telemetry.tracing is not None else None,
                )
                token = CURRENT.set(record)
            try:
                self.admission.enter()
                admitted = True
                tokens = self.tokens.get(api)
                if tokens is not None:
                    tokens.check(_authorization(context))
                try:
                    request = request_type.FromString(raw)
                except DecodeError as exc:
                    raise InvalidArgument(
                        f"the request is not a valid {request_type.DESCRIPTOR.full_name} message: {exc}"
                    ) from None
                spec = getattr(request, "model_spec", None)  # ReloadConfigRequest has none
                if spec is None and getattr(request, "tasks", None):  # MultiInference: the first task's
                    spec = request.tasks[0].model_spec
                model = spec.name if spec is not None else getattr(request, "model_name", "")
                if record is not None:
                    record.model = model
                remaining = context.time_remaining()
                if remaining is None:
                    return await method(self, request, context)
                # gRPC does not cancel a handler when its deadline passes: do it here, so a call
                # nobody waits for any more leaves the batch queue before the engine runs it. A hair
                # before gRPC's own timer, so this one (which names the cause) fires first.
                deadline = asyncio.get_running_loop().time() + remaining - DEADLINE_MARGIN_SECONDS
                call = method(self, request, context)
                try:
                    waiting_on = call.send(None)
                except StopIteration as answered:
                    # Answered without waiting (an engine call run on the event loop): a timer
                    # could not have fired, so none is armed. One costs ~10 us per request.
                    return cast(Response, answered.value)
                try:
                    async with asyncio.timeout_at(deadline):
                        return await _Resumed(call, waiting_on)
                except TimeoutError:
                    raise DeadlineExceeded("the call's deadline passed before it was answered") from None
            except ServingError as exc:
                status = exc.grpc_code.name
                if isinstance(exc, DeadlineExceeded) and context.cancelled():
                    raise asyncio.CancelledError from None  # gRPC has already ended the call
                if exc.grpc_code in _RETRYABLE:
                    context.set_trailing_metadata(RETRY_PUSHBACK)
                await context.abort(exc.grpc_code, exc.message)
            except asyncio.CancelledError:
                # The client went away or its deadline passed: nothing to answer, nothing to log.
                remaining = context.time_remaining()
                # The client's clock runs ahead of this one by the transit time: a cancel that comes
                # this close to the deadline is the client's deadline passing.
                expired = remaining is not None and remaining <= DEADLINE_CANCEL_SLACK_SECONDS
                status = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
                raise
            except grpc.aio.AbortError:  # a handler that aborted itself has said everything
                status = "UNKNOWN"
                raise
            except Exception:
                status = "INTERNAL"
                log.exception("internal error in %s", name)
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")
            finally:
                self.metrics.observe_request(model, api, "GRPC", status, time.perf_counter() - started)
                if admitted:
                    self.admission.exit()
                if record is not None:
                    assert telemetry is not None and token is not None
                    CURRENT.reset(token)
                    record.status, record.http_status = status, HTTP_STATUS_OF_CODE.get(status, 500)
                    telemetry.end(record)
            raise AssertionError("unreachable: context.abort raises")

        return guarded

    return wrap


class _Resumed(Generic[Response]):
    """The rest of a coroutine whose first step has run and now waits on `waiting_on` (what that
    step yielded to the task): awaiting this continues the coroutine exactly as awaiting it whole
    would have, values sent and exceptions thrown (a cancel) passed on to it. `rpc` runs a handler's
    first step bare and arms the deadline's timer only for a handler that has to wait."""

    __slots__ = ("_call", "_waiting_on")

    def __init__(self, call: Coroutine[Any, Any, Response], waiting_on: Any) -> None:
        self._call, self._waiting_on = call, waiting_on

    def __await__(self) -> Generator[Any, Any, Response]:
        call, value = self._call, self._waiting_on
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                call.close()
                raise
            except BaseException as exc:  # (a cancel, or any other: the coroutine handles it)
                try:
                    value = call.throw(exc)
                except StopIteration as done:
                    return cast(Response, done.value)
            else:
                try:
                    value = call.send(sent)
                except StopIteration as done:
                    return cast(Response, done.value)


class HealthServicer(health.aio.HealthServicer):
    """The standard grpc.health.v1 servicer, requiring a token when health is not exempt.

    Services: "" and the full names in READINESS_SERVICES follow model readiness (set by the server);
    TF Serving's short names (TF_SERVING_HEALTH_SERVICES) are SERVING from the start, as TF Serving's.
    """

    def __init__(self, tokens: TokenFile | None = None) -> None:
        super().__init__()
        self._tokens = tokens
        for service in TF_SERVING_HEALTH_SERVICES:
            self._server_status[service] = health_pb2.HealthCheckResponse.SERVING

    async def _check_token(self, context: grpc.aio.ServicerContext) -> None:
        if self._tokens is not None:
            try:
                self._tokens.check(_authorization(context))
            except Unauthenticated as exc:
                await context.abort(exc.grpc_code, exc.message)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        await self._check_token(context)
        status = self._server_status.get(request.service)
        if status is None:  # the stock servicer answers NOT_FOUND with no message at all
            known = sorted(repr(name) for name in self._server_status)
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown health service {request.service!r}; known: {', '.join(known)}"
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        await self._check_token(context)
        await super().Watch(request, context)


def _register(
    server: grpc.aio.Server, service: str, servicer: object, responses: Mapping[str, type[Message] | None]
) -> None:
    """Add `servicer`'s methods as `service` with raw request bytes (parsed by `rpc`); a method whose
    response type is None returns bytes, sent as they are."""
    servicer.service = service  # type: ignore[attr-defined]  # read by `rpc` (a `_Servicer`)
    servicer.telemetry = _TELEMETRY.get(server)  # type: ignore[attr-defined]
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method),
            request_deserializer=None,
            response_serializer=None if response is None else response.SerializeToString,
        )
        for method, response in responses.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def _version_choice(spec: apis_pb2.ModelSpec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        if spec.version.value <= 0:
            raise InvalidArgument(f"model_spec.version must be positive, got {spec.version.value}")
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def example_features(example: example_pb2.Example) -> dict[str, Any]:
    """tf.Example features -> numpy arrays (float32, int64, or bytes objects)."""
    import numpy as np

    result: dict[str, Any] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            result[name] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            result[name] = np.asarray(feature.int64_list.value, dtype=np.int64)
        elif kind == "bytes_list":
            values = np.empty(len(feature.bytes_list.value), dtype=codec.STRING)
            values[:] = list(feature.bytes_list.value)
            result[name] = values
        else:
            raise InvalidArgument(f"feature '{name}' is empty")
    return result


def request_examples(request_input: apis_pb2.Input) -> list[dict[str, Any]]:
    """The examples of a Classify / Regress / MultiInference input, the context's features merged
    into each (an example's own win, as when TF Serving concatenates the serialized messages)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [example_features(e) for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        context_features = example_features(listed.context)
        return [{**context_features, **example_features(e)} for e in listed.examples]
    return []  # the data plane answers TF Serving's "Input is empty."


class PredictionService(apis_pb2_grpc.PredictionServiceServicer, _Servicer):
    def __init__(self, services: Services, tensor_content: bool = False) -> None:
        self.dataplane = services.dataplane
        self.metrics = services.metrics
        self.admission = services.admission
        self.tokens = services.tokens_for("predict", "classify", "regress", "multi_inference", "metadata")
        self.max_bytes = services.dataplane.max_tensor_bytes
        # Predict's numeric outputs: in their typed fields (float_val...), TF Serving's default, or
        # in tensor_content (--enable_serialization_as_tensor_content).
        self.tensor_content = tensor_content

    @rpc("predict", cast(type[Message], PredictCall))  # tensor_content read in place (see `inplace`)
    async def Predict(self, request: PredictCall, context: grpc.aio.ServicerContext) -> bytes:
        """A serialized PredictResponse (registered with no serializer: see `_PREDICTION_RESPONSES`)."""
        message, contents = request.message, request.contents
        spec = message.model_spec
        version, label = _version_choice(spec)
        inputs = {
            name: codec.to_numpy(tensor, name, self.max_bytes, contents.get(name))
            for name, tensor in message.inputs.items()
        }
        result = await self.dataplane.predict(
            spec.name,
            inputs,
            version=version,
            label=label,
            signature=spec.signature_name,
            output_filter=message.output_filter,
        )
        return messages.predict_response(result.version, result.signature, result.outputs, self.tensor_content)

    @rpc("classify", apis_pb2.ClassificationRequest)
    async def Classify(
        self, request: apis_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.ClassificationResponse:
        spec = request.model_spec
        version, label = _version_choice(spec)
        result, classes = await self.dataplane.classify(
            spec.name, request_examples(request.input), version=version, label=label, signature=spec.signature_name
        )
        response = apis_pb2.ClassificationResponse(
            model_spec=messages.model_spec(result.version, result.signature)
        )
        messages.classification_result(classes, response.result)
        return response

    @rpc("regress", apis_pb2.RegressionRequest)
    async def Regress(
        self, request: apis_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.RegressionResponse:
        spec = request.model_spec
        version, label = _version_choice(spec)
        result, values = await self.dataplane.regress(
            spec.name, request_examples(request.input), version=version, label=label, signature=spec.signature_name
        )
        response = apis_pb2.RegressionResponse(model_spec=messages.model_spec(result.version, result.signature))
        messages.regression_result(values, response.result)
        return response

    @rpc("multi_inference", apis_pb2.MultiInferenceRequest)
    async def MultiInference(
        self, request: apis_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.MultiInferenceResponse:
        """TF Serving's MultiInference: the version is the first task's (all name one model)."""
        first = request.tasks[0].model_spec if request.tasks else apis_pb2.ModelSpec()
        version, label = _version_choice(first)
        tasks = [TaskSpec(t.model_spec.name, t.model_spec.signature_name, t.method_name) for t in request.tasks]
        answers = await self.dataplane.multi_inference(
            tasks, request_examples(request.input), version=version, label=label
        )
        response = apis_pb2.MultiInferenceResponse()
        for answer in answers:
            entry = response.results.add(model_spec=messages.model_spec(answer.result.version, answer.result.signature))
            if answer.classes is not None:
                messages.classification_result(answer.classes, entry.classification_result)
            else:
                assert answer.values is not None
                messages.regression_result(answer.values, entry.regression_result)
        return response

    @rpc("metadata", apis_pb2.GetModelMetadataRequest)
    async def GetModelMetadata(
        self, request: apis_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.GetModelMetadataResponse:
        spec = request.model_spec
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidArgument(
                f"metadata_field must be ['signature_def'] (the only metadata TF Serving defines), got {fields}"
            )
        version, label = _version_choice(spec)
        resolved, signatures = self.dataplane.metadata(spec.name, version, label)
        return messages.metadata_response(resolved, signatures)


class ModelService(apis_pb2_grpc.ModelServiceServicer, _Servicer):
    def __init__(self, services: Services) -> None:
        self.repository = services.repository
        self.metrics = services.metrics
        self.admission = services.admission
        self.tokens = services.tokens_for("status", "reload_config")
        self.reloader = services.reloader

    @rpc("status", apis_pb2.GetModelStatusRequest)
    async def GetModelStatus(
        self, request: apis_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.GetModelStatusResponse:
        spec = request.model_spec
        version, label = _version_choice(spec)
        return messages.status_response(self.repository.statuses(spec.name, version, label))

    @rpc("reload_config", apis_pb2.ReloadConfigRequest)
    async def HandleReloadConfigRequest(
        self, request: apis_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.ReloadConfigResponse:
        """Serve exactly the request's model_config_list (see `serving.reload`); answers once the
        added models are AVAILABLE, or with the error (the status is in the response too, as TF
        Serving sets it, but a client sees it as the call's status).

        `metric_names`: as TF Serving, each named TF metric's growth during the reload, one `metric`
        entry per distinct name (see `serving.reload.tf_metric_values` for what is read)."""
        if self.reloader is None:
            raise Unimplemented("HandleReloadConfigRequest is not offered by this server")
        before = self.reloader.metric_values(request.metric_names)
        await self.reloader.handle_request(request.config)
        response = apis_pb2.ReloadConfigResponse()
        response.status.SetInParent()  # OK
        for name, value in self.reloader.metric_values(request.metric_names).items():
            response.metric.add(name=name, int64_value_increase=value - before[name])
        return response


# Each method's response type; None: the method returns its response already serialized.
_PREDICTION_RESPONSES: dict[str, type[Message] | None] = {
    "Predict": None,  # `messages.predict_response`
    "Classify": apis_pb2.ClassificationResponse,
    "Regress": apis_pb2.RegressionResponse,
    "MultiInference": apis_pb2.MultiInferenceResponse,
    "GetModelMetadata": apis_pb2.GetModelMetadataResponse,
}
_MODEL_RESPONSES: dict[str, type[Message]] = {
    "GetModelStatus": apis_pb2.GetModelStatusResponse,
    "HandleReloadConfigRequest": apis_pb2.ReloadConfigResponse,
}


def create_server(
    services: Services, config: ServerConfig, telemetry: Telemetry | None = None
) -> tuple[grpc.aio.Server, int]:
    """Build (not start) the gRPC server on `config.host:config.port`; returns it and the bound port.

    Serves TF Serving's two services, `services.health` (grpc.health.v1) and server reflection.
    `telemetry` (the access log, tracing) sees every call of every servicer `_register` adds.
    """
    address = f"{config.host}:{config.port}"
    limits = config.limits
    options = [
        ("grpc.max_receive_message_length", config.grpc_max_message_bytes),
        ("grpc.max_send_message_length", config.grpc_max_message_bytes),
        ("grpc.so_reuseport", 1 if config.workers > 1 else 0),  # only worker processes share a port
        ("grpc.max_concurrent_streams", limits.grpc_max_concurrent_streams),
        # Ping idle connections and cut peers that do not answer, so a vanished client does not hold
        # its calls' memory; accept clients' own keepalive pings down to every 10 s.
        ("grpc.keepalive_time_ms", int(limits.grpc_keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(limits.grpc_keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        *config.grpc_channel_arguments,
    ]
    # Beyond maximum_concurrent_rpcs, gRPC answers RESOURCE_EXHAUSTED before any handler runs: the
    # bound on what calls in flight (including those whose client never reads) can hold.
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=limits.grpc_max_concurrent_rpcs)
    if telemetry is not None:
        _TELEMETRY[server] = telemetry
    tensor_content = config.enable_serialization_as_tensor_content  # TF Serving's default: off
    _register(server, PREDICTION_SERVICE, PredictionService(services, tensor_content), _PREDICTION_RESPONSES)
    _register(server, MODEL_SERVICE, ModelService(services), _MODEL_RESPONSES)
    from serving.protocol.v2 import grpc as v2_grpc  # here: it builds on this module's `rpc` and `_register`

    v2_grpc.register(server, services)  # the Open Inference Protocol (inference.GRPCInferenceService)
    health_pb2_grpc.add_HealthServicer_to_server(services.health, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, v2_grpc.SERVICE_NAME), server)
    tls = config.tls
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.server_key, tls.server_cert)],
            root_certificates=tls.custom_ca,
            require_client_auth=tls.client_verify,
        )
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port
