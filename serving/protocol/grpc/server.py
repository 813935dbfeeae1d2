"""gRPC: TF Serving's PredictionService and ModelService, standard health checking and reflection.

`create_server(...)` returns `(server, port)` so tests bind port 0 and talk over a real channel.
One interceptor maps `ServingError` subclasses to status codes; anything else becomes INTERNAL with
a generic message and a logged traceback, so a malformed request never takes the server down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import codec
from serving.config import TlsConfig
from serving.dataplane import DataPlane
from serving.errors import InvalidArgument, ServingError, Unimplemented
from serving.metrics import Metrics
from serving.proto import apis_pb2, apis_pb2_grpc, example_pb2
from serving.protocol import messages
from serving.repository import Repository

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    apis_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
    apis_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns exceptions raised by unary handlers into status codes (the only place that does)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except ServingError as exc:
                await context.abort(exc.grpc_code, exc.message)
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("internal error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


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


class PredictionService(apis_pb2_grpc.PredictionServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: Metrics, max_bytes: int) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.max_bytes = max_bytes

    async def Predict(
        self, request: apis_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.PredictResponse:
        spec = request.model_spec
        with self.metrics.track(spec.name, "predict", "GRPC"):
            version, label = _version_choice(spec)
            inputs = {
                name: codec.to_numpy(tensor, name, self.max_bytes) for name, tensor in request.inputs.items()
            }
            result = await self.dataplane.predict(
                spec.name,
                inputs,
                version=version,
                label=label,
                signature=spec.signature_name,
                output_filter=list(request.output_filter),
            )
            response = apis_pb2.PredictResponse(
                model_spec=messages.model_spec(result.version, result.signature)
            )
            for name, value in result.outputs.items():
                codec.from_numpy(value, response.outputs[name])
            return response

    async def Classify(
        self, request: apis_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.ClassificationResponse:
        spec = request.model_spec
        with self.metrics.track(spec.name, "classify", "GRPC"):
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

    async def GetModelMetadata(
        self, request: apis_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.GetModelMetadataResponse:
        spec = request.model_spec
        with self.metrics.track(spec.name, "metadata", "GRPC"):
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise InvalidArgument(
                    f"metadata_field must be ['signature_def'] (the only metadata TF Serving defines), got {fields}"
                )
            version, label = _version_choice(spec)
            resolved, signatures = self.dataplane.metadata(spec.name, version, label)
            return messages.metadata_response(resolved, signatures)


class ModelService(apis_pb2_grpc.ModelServiceServicer):
    def __init__(self, repository: Repository, metrics: Metrics) -> None:
        self.repository = repository
        self.metrics = metrics

    async def GetModelStatus(
        self, request: apis_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.GetModelStatusResponse:
        spec = request.model_spec
        with self.metrics.track(spec.name, "status", "GRPC"):
            version, label = _version_choice(spec)
            return messages.status_response(self.repository.statuses(spec.name, version, label))

    async def HandleReloadConfigRequest(
        self, request: apis_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.ReloadConfigResponse:
        raise Unimplemented(
            "HandleReloadConfigRequest is not supported: restart with the new --model_config_file"
        )


def create_server(
    dataplane: DataPlane,
    repository: Repository,
    metrics: Metrics,
    address: str,
    max_message_bytes: int,
    tls: TlsConfig | None = None,
    channel_arguments: Sequence[tuple[str, int | str]] = (),
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build (not start) the gRPC server; returns it, the bound port and the health servicer."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),  # only worker processes share a port
        *channel_arguments,
    ]
    server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=options)
    apis_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(dataplane, metrics, max_message_bytes), server
    )
    apis_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(repository, metrics), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
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
    return server, port, health_servicer
