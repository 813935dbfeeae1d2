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
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import codec
from serving.admission import Admission
from serving.config import ServerConfig
from serving.errors import InvalidArgument, ServingError, Unimplemented
from serving.metrics import Metrics
from serving.proto import apis_pb2, apis_pb2_grpc, example_pb2
from serving.protocol import Services, messages

log = logging.getLogger(__name__)

PREDICTION_SERVICE = apis_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = apis_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVICE_NAMES = (PREDICTION_SERVICE, MODEL_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
# Health services that report readiness: "" (the whole server) and each TF Serving service.
READINESS_SERVICES = ("", PREDICTION_SERVICE, MODEL_SERVICE)

Request = TypeVar("Request")
Response = TypeVar("Response")
Servicer = TypeVar("Servicer", bound="_Servicer")
Method = Callable[[Servicer, Request, grpc.aio.ServicerContext], Awaitable[Response]]


class _Servicer:
    metrics: Metrics
    admission: Admission


def rpc(api: str) -> Callable[[Method[Servicer, Request, Response]], Method[Servicer, Request, Response]]:
    """Wrap a servicer method once, at class definition: admission, metrics and error mapping.

    The one place gRPC errors are made: `ServingError` subclasses become their status code; anything
    else becomes INTERNAL with a generic message and a logged traceback. (A `grpc.aio` server
    interceptor would do the same per call, at the cost of building a handler for every request.)
    """

    def wrap(method: Method[Servicer, Request, Response]) -> Method[Servicer, Request, Response]:
        name = method.__name__

        @functools.wraps(method)
        async def guarded(self: Servicer, request: Request, context: grpc.aio.ServicerContext) -> Response:
            started = time.perf_counter()
            spec = getattr(request, "model_spec", None)  # ReloadConfigRequest has none
            model = spec.name if spec is not None else ""
            status = "OK"
            admitted = False
            try:
                self.admission.enter()
                admitted = True
                return await method(self, request, context)
            except ServingError as exc:
                status = exc.grpc_code.name
                await context.abort(exc.grpc_code, exc.message)
            except asyncio.CancelledError:  # the client went away or its deadline passed
                status = "CANCELLED"
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
            raise AssertionError("unreachable: context.abort raises")

        return guarded

    return wrap


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


class PredictionService(apis_pb2_grpc.PredictionServiceServicer, _Servicer):
    def __init__(self, services: Services) -> None:
        self.dataplane = services.dataplane
        self.metrics = services.metrics
        self.admission = services.admission
        self.max_bytes = services.dataplane.max_tensor_bytes

    @rpc("predict")
    async def Predict(
        self, request: apis_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.PredictResponse:
        spec = request.model_spec
        version, label = _version_choice(spec)
        inputs = {name: codec.to_numpy(tensor, name, self.max_bytes) for name, tensor in request.inputs.items()}
        result = await self.dataplane.predict(
            spec.name,
            inputs,
            version=version,
            label=label,
            signature=spec.signature_name,
            output_filter=request.output_filter,
        )
        response = apis_pb2.PredictResponse(model_spec=messages.model_spec(result.version, result.signature))
        for name, value in result.outputs.items():
            codec.from_numpy(value, response.outputs[name])
        return response

    @rpc("classify")
    async def Classify(
        self, request: apis_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.ClassificationResponse:
        spec = request.model_spec
        version, label = _version_choice(spec)
        kind = request.input.WhichOneof("kind")
        if kind == "example_list":
            examples = [example_features(e) for e in request.input.example_list.examples]
        elif kind == "example_list_with_context":
            listed = request.input.example_list_with_context
            context_features = example_features(listed.context)
            examples = [{**context_features, **example_features(e)} for e in listed.examples]
        else:
            raise InvalidArgument("ClassificationRequest.input holds no examples")
        result, classes = await self.dataplane.classify(
            spec.name, examples, version=version, label=label, signature=spec.signature_name
        )
        response = apis_pb2.ClassificationResponse(
            model_spec=messages.model_spec(result.version, result.signature)
        )
        for row in classes:
            response.result.classifications.add().classes.extend(
                apis_pb2.Class(label=name, score=score) for name, score in row
            )
        return response

    @rpc("metadata")
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

    @rpc("status")
    async def GetModelStatus(
        self, request: apis_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.GetModelStatusResponse:
        spec = request.model_spec
        version, label = _version_choice(spec)
        return messages.status_response(self.repository.statuses(spec.name, version, label))

    @rpc("reload_config")
    async def HandleReloadConfigRequest(
        self, request: apis_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.ReloadConfigResponse:
        raise Unimplemented(
            "HandleReloadConfigRequest is not supported: restart with the new --model_config_file"
        )


def create_server(services: Services, config: ServerConfig) -> tuple[grpc.aio.Server, int]:
    """Build (not start) the gRPC server on `config.host:config.port`; returns it and the bound port.

    Serves TF Serving's two services, `services.health` (grpc.health.v1) and server reflection.
    """
    address = f"{config.host}:{config.port}"
    options = [
        ("grpc.max_receive_message_length", config.grpc_max_message_bytes),
        ("grpc.max_send_message_length", config.grpc_max_message_bytes),
        ("grpc.so_reuseport", 1 if config.workers > 1 else 0),  # only worker processes share a port
        *config.grpc_channel_arguments,
    ]
    server = grpc.aio.server(options=options)
    apis_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(services), server)
    apis_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(services), server)
    health_pb2_grpc.add_HealthServicer_to_server(services.health, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
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
