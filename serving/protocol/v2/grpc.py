"""The Open Inference Protocol's gRPC service, `inference.GRPCInferenceService`, on TF Serving's port.

Every method is wrapped by TF Serving's `rpc` decorator (`serving.protocol.grpc.server`): request
parsing (bad bytes: INVALID_ARGUMENT), admission, bearer token, deadline, metrics and the one error
mapping. The decorator reads a request's `model_spec` for the metric's model label: V2 requests are
handed to it wrapped (`_named`), with the TF Serving `ModelSpec` their model name and version mean.

ModelInfer takes inputs as typed `contents` or as `raw_input_contents` (one entry per input, what
`tritonclient.grpc` sends) and answers in the same form: raw inputs get `raw_output_contents` (one
entry per output, in output order), typed inputs typed outputs (FP16, which has no typed field,
always goes raw). Unknown request parameters are ignored, as the spec allows; `signature_name`
chooses a signature (see `common`). A requested output with `parameters["classification"].int64_param`
k (`tritonclient.grpc.InferRequestedOutput(name, class_count=k)`) is answered as BYTES [batch,
min(k, classes)] holding "<value>:<index>[:<label>]" per class (Triton's classification extension,
see `common`), raw or typed as the other outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import grpc
import numpy as np
from google.protobuf.message import Message

from serving import codec
from serving.errors import InvalidArgument, Unavailable
from serving.proto import apis_pb2, inference_pb2, inference_pb2_grpc
from serving.protocol import Services
from serving.protocol.grpc import server as tf_grpc
from serving.protocol.grpc.inplace import parse_model_infer
from serving.protocol.grpc.server import rpc
from serving.protocol.v2 import common
from serving.protocol.v2.repository import ModelRepository, unavailable_without_reloader
from serving.repository import State

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# Typed contents field of each datatype (FP16 has none: raw only).


class _Named:
    """A parsed V2 request as `rpc` sees it: the message and the ModelSpec it means."""

    message: Any
    model_spec: apis_pb2.ModelSpec
    # ModelInfer's raw_input_contents when read in place (`inplace.parse_model_infer`); None: the message's
    raw_contents: list[memoryview] | None = None


def _named(
    message_type: type[Message],
    name_field: str,
    version_field: str = "",
    parse: Callable[[bytes], tuple[Message, list[memoryview] | None]] | None = None,
) -> type[Message]:
    """A request type for `rpc` whose parsed requests carry `model_spec` (for the metrics' model label);
    `parse`: the message and its raw contents read in place, instead of protobuf's parse."""

    class Named(_Named):
        DESCRIPTOR = message_type.DESCRIPTOR

        def __init__(self, message: Message) -> None:
            self.message = message
            model, signature = common.split_name(getattr(message, name_field))
            self.model_spec = apis_pb2.ModelSpec(name=model, signature_name=signature)
            version = getattr(message, version_field) if version_field else ""
            if version.isascii() and version.isdigit() and 0 < int(version) < 2**63:
                self.model_spec.version.value = int(version)
            elif version:
                self.model_spec.version_label = version

        @classmethod
        def FromString(cls, raw: bytes) -> Named:  # the name `rpc` calls
            if parse is None:
                return cls(message_type.FromString(raw))
            message, contents = parse(raw)
            named = cls(message)
            named.raw_contents = contents
            return named

    Named.__name__ = f"Named{message_type.DESCRIPTOR.name}"
    return cast(type[Message], Named)


def _parameter(value: Any) -> Any:
    """An InferParameter / ModelRepositoryParameter -> its Python value (None: unset)."""
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _parameter(value) for key, value in parameters.items()}


class InferenceService(inference_pb2_grpc.GRPCInferenceServiceServicer, tf_grpc._Servicer):
    """inference.GRPCInferenceService over the data plane, its methods wrapped by `rpc`."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.dataplane = services.dataplane
        self.repository = services.repository
        self.metrics = services.metrics
        self.admission = services.admission
        self.max_bytes = services.dataplane.max_tensor_bytes
        self.model_repository = ModelRepository.for_services(services)
        # The token each method requires: that of the TF Serving API it stands beside.
        required = services.tokens_for("health", "status", "metadata", "predict", "reload_config")
        apis = {
            "v2_server_live": "health",
            "v2_server_ready": "health",
            "v2_model_ready": "status",
            "v2_server_metadata": "metadata",
            "v2_metadata": "metadata",
            "v2_infer": "predict",
            "v2_repository_index": "status",
            "v2_repository_load": "reload_config",
            "v2_repository_unload": "reload_config",
        }
        self.tokens = {api: required[tf_api] for api, tf_api in apis.items() if tf_api in required}

    @rpc("v2_server_live", inference_pb2.ServerLiveRequest)
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> inference_pb2.ServerLiveResponse:
        return inference_pb2.ServerLiveResponse(live=True)

    @rpc("v2_server_ready", inference_pb2.ServerReadyRequest)
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> inference_pb2.ServerReadyResponse:
        return inference_pb2.ServerReadyResponse(ready=common.server_ready(self.services))

    @rpc("v2_model_ready", _named(inference_pb2.ModelReadyRequest, "name", "version"))
    async def ModelReady(self, request: _Named, context: grpc.aio.ServicerContext) -> inference_pb2.ModelReadyResponse:
        message = request.message
        target = common.Target.resolve(self.repository, message.name, message.version)
        try:
            resolved = target.version_of(self.repository)
        except Unavailable:
            return inference_pb2.ModelReadyResponse(ready=False)
        target.signature_of(self.dataplane, resolved)
        return inference_pb2.ModelReadyResponse(ready=True)

    @rpc("v2_server_metadata", inference_pb2.ServerMetadataRequest)
    async def ServerMetadata(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ServerMetadataResponse:
        return inference_pb2.ServerMetadataResponse(
            name=common.SERVER_NAME, version=common.server_version(), extensions=common.EXTENSIONS
        )

    @rpc("v2_metadata", _named(inference_pb2.ModelMetadataRequest, "name", "version"))
    async def ModelMetadata(
        self, request: _Named, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ModelMetadataResponse:
        message = request.message
        target = common.Target.resolve(self.repository, message.name, message.version)
        resolved = target.version_of(self.repository)
        signature = target.signature_of(self.dataplane, resolved)
        TensorMetadata = inference_pb2.ModelMetadataResponse.TensorMetadata
        return inference_pb2.ModelMetadataResponse(
            name=target.name,
            versions=[str(v.version) for v in self.repository.statuses(target.model) if v.state == State.AVAILABLE],
            platform=common.platform_of(resolved),
            inputs=[TensorMetadata(name=n, datatype=d, shape=s) for n, d, s in common.tensor_metadata(signature.inputs)],
            outputs=[
                TensorMetadata(name=n, datatype=d, shape=s) for n, d, s in common.tensor_metadata(signature.outputs)
            ],
            properties=common.model_properties(resolved, signature),
        )

    @rpc("v2_infer", _named(inference_pb2.ModelInferRequest, "model_name", "model_version", parse_model_infer))
    async def ModelInfer(self, request: _Named, context: grpc.aio.ServicerContext) -> bytes:
        """A serialized ModelInferResponse (registered with no serializer: see `RESPONSES`)."""
        message: inference_pb2.ModelInferRequest = request.message
        parameters = _parameters(message.parameters)
        target = common.Target.resolve(
            self.repository,
            message.model_name,
            message.model_version,
            common.string_parameter(parameters, common.SIGNATURE_PARAMETER),
        )
        resolved = target.version_of(self.repository)
        signature = target.signature_of(self.dataplane, resolved)
        raw = message.raw_input_contents if request.raw_contents is None else request.raw_contents
        if raw and len(raw) != len(message.inputs):
            raise InvalidArgument(
                f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: give one per input, "
                "or none and typed contents"
            )
        inputs: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(message.inputs):
            name = tensor.name
            if name in inputs:
                raise InvalidArgument(f"input '{name}' is given twice")
            common.check_datatype(signature, name, tensor.datatype)
            shape = list(tensor.shape)
            if raw:
                if tensor.HasField("contents"):
                    raise InvalidArgument(f"input '{name}' has contents, but the request uses raw_input_contents")
                inputs[name] = common.decode_raw(tensor.datatype, shape, raw[index], name, self.max_bytes)
            else:
                inputs[name] = self._typed_input(tensor, shape)
        requested: list[str] = []
        classes: dict[str, int] = {}
        for output in message.outputs:
            if output.name in requested:
                raise InvalidArgument(f"output '{output.name}' is requested twice")
            count = common.classification_count(_parameters(output.parameters), output.name)
            if count:
                common.check_classification(signature, output.name)
                classes[output.name] = count
            requested.append(output.name)
        labels = common.labels_of(resolved)
        result = await self.dataplane.predict(
            target.model, inputs, version=resolved.version, signature=signature.name, output_filter=requested
        )
        outputs = common.classify_outputs(result.outputs, classes, labels)
        version = str(result.version.version)
        as_raw = bool(raw) or any(common.datatype_of(v.dtype) not in common.CONTENTS_FIELDS for v in outputs.values())
        if as_raw:  # as Triton's clients ask (and every output then fits the raw form)
            return infer_response_raw(target.name, version, message.id, outputs)
        response = inference_pb2.ModelInferResponse(model_name=target.name, model_version=version, id=message.id)
        for name, value in outputs.items():
            datatype = common.datatype_of(value.dtype)
            entry = response.outputs.add(name=name, datatype=datatype, shape=common.shape_of(value))
            field = getattr(entry.contents, common.CONTENTS_FIELDS[datatype])
            flat = value.reshape(-1)
            field.extend(list(flat) if value.dtype == codec.STRING else flat.tolist())
        return response.SerializeToString()

    def _typed_input(self, tensor: Any, shape: list[int]) -> np.ndarray:
        name, datatype, contents = tensor.name, tensor.datatype, tensor.contents
        common.dtype_of(datatype, name)  # unknown datatypes first
        field = common.CONTENTS_FIELDS.get(datatype)
        for other in set(common.CONTENTS_FIELDS.values()) - {field} if field is not None else ():
            if len(getattr(contents, other)):
                raise InvalidArgument(f"input '{name}' is {datatype}: its values go in contents.{field}, not {other}")
        return common.decode_contents(datatype, shape, contents, name, self.max_bytes)

    # -- the model repository extension ----------------------------------------------------------

    def _model_repository(self) -> ModelRepository:
        if self.model_repository is None:
            raise unavailable_without_reloader()
        return self.model_repository

    @rpc("v2_repository_index", inference_pb2.RepositoryIndexRequest)
    async def RepositoryIndex(
        self, request: inference_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.RepositoryIndexResponse:
        entries = self._model_repository().index(request.ready)
        ModelIndex = inference_pb2.RepositoryIndexResponse.ModelIndex
        return inference_pb2.RepositoryIndexResponse(models=[ModelIndex(**entry) for entry in entries])

    @rpc("v2_repository_load", _named(inference_pb2.RepositoryModelLoadRequest, "model_name"))
    async def RepositoryModelLoad(
        self, request: _Named, context: grpc.aio.ServicerContext
    ) -> inference_pb2.RepositoryModelLoadResponse:
        message = request.message
        await self._model_repository().load(message.model_name, _parameters(message.parameters))
        return inference_pb2.RepositoryModelLoadResponse()

    @rpc("v2_repository_unload", _named(inference_pb2.RepositoryModelUnloadRequest, "model_name"))
    async def RepositoryModelUnload(
        self, request: _Named, context: grpc.aio.ServicerContext
    ) -> inference_pb2.RepositoryModelUnloadResponse:
        await self._model_repository().unload(request.message.model_name)
        return inference_pb2.RepositoryModelUnloadResponse()


# The wire of ModelInferResponse (model_name 1, model_version 2, id 3, outputs 5,
# raw_output_contents 6) and of its InferOutputTensor (name 1, datatype 2, shape 3: packed int64).
_MODEL_NAME_TAG, _MODEL_VERSION_TAG, _ID_TAG = b"\x0a", b"\x12", b"\x1a"
_OUTPUTS_TAG, _RAW_OUTPUT_TAG = b"\x2a", b"\x32"
_NAME_TAG, _DATATYPE_TAG, _SHAPE_TAG = b"\x0a", b"\x12", b"\x1a"


def infer_response_raw(model: str, version: str, request_id: str, outputs: Mapping[str, np.ndarray]) -> bytes:
    """A serialized ModelInferResponse with every output in raw_output_contents, written to the
    wire directly (as `messages.predict_response` writes Predict's): no message, repeated fields or
    copies per request. Empty strings are left out, as protobuf leaves out a default value."""
    parts = [
        codec.length_delimited(tag, value.encode("utf-8"))
        for tag, value in ((_MODEL_NAME_TAG, model), (_MODEL_VERSION_TAG, version), (_ID_TAG, request_id))
        if value
    ]
    for name, value in outputs.items():
        tensor = codec.length_delimited(_NAME_TAG, name.encode("utf-8")) + codec.length_delimited(
            _DATATYPE_TAG, common.datatype_of(value.dtype).encode("ascii")
        )
        if value.ndim:
            tensor += codec.length_delimited(_SHAPE_TAG, codec.packed_varints(value.shape))
        parts.append(codec.length_delimited(_OUTPUTS_TAG, tensor))
    parts.extend(codec.length_delimited(_RAW_OUTPUT_TAG, common.encode_raw(value)) for value in outputs.values())
    return b"".join(parts)


# Each method's response type; None: the method returns its response already serialized.
RESPONSES: dict[str, type[Message] | None] = {
    "ServerLive": inference_pb2.ServerLiveResponse,
    "ServerReady": inference_pb2.ServerReadyResponse,
    "ModelReady": inference_pb2.ModelReadyResponse,
    "ServerMetadata": inference_pb2.ServerMetadataResponse,
    "ModelMetadata": inference_pb2.ModelMetadataResponse,
    "ModelInfer": None,  # `infer_response_raw`, or the message serialized
    "RepositoryIndex": inference_pb2.RepositoryIndexResponse,
    "RepositoryModelLoad": inference_pb2.RepositoryModelLoadResponse,
    "RepositoryModelUnload": inference_pb2.RepositoryModelUnloadResponse,
}


def register(server: grpc.aio.Server, services: Services) -> None:
    """Serve inference.GRPCInferenceService on `server` (called by `create_server`)."""
    tf_grpc._register(server, SERVICE_NAME, InferenceService(services), RESPONSES)
