"""Request bodies for the peer comparison, serialized once and sent as bytes by every load generator.

* TF Serving `PredictRequest` / `PredictResponse` from the project's generated protos (never
  `tensorflow_serving.apis`, which imports TensorFlow);
* the Open Inference Protocol (V2) `ModelInferRequest` / `ModelInferResponse` that KServe speaks,
  declared here from the spec's field numbers (only the fields the bench uses; anything else in a
  response is kept as unknown fields), in a private descriptor pool so that it can never clash with
  V2 protos generated elsewhere;
* the gRPC length-prefixed frame (RFC: 1 flag byte, 4-byte big-endian length) that h2load posts.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from serving.proto import apis_pb2, tensor_pb2

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


def grpc_frame(message: bytes, compressed: bool = False) -> bytes:
    """One gRPC message on the wire: flag byte (1 = compressed), 4-byte big-endian length, bytes."""
    if len(message) >= 1 << 32:
        raise ValueError(f"a gRPC message is at most 4 GiB, got {len(message)} bytes")
    return bytes([1 if compressed else 0]) + len(message).to_bytes(4, "big") + message


def write_grpc_body(path: Path, message: bytes) -> Path:
    """The file h2load posts (`-d FILE`): the framed message, nothing else."""
    path.write_bytes(grpc_frame(message))
    return path


# -- TF Serving Predict --------------------------------------------------------------------------


def predict_request(images: np.ndarray, model: str = "digits") -> bytes:
    """`PredictRequest` for `serving_default`, `image` float32 [N,28,28,1] in `tensor_content`."""
    request = apis_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    tensor = request.inputs[INPUT_NAME]
    tensor.dtype = tensor_pb2.DT_FLOAT
    for size in images.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = np.ascontiguousarray(images, dtype="<f4").tobytes()
    return request.SerializeToString()


def predict_probabilities(response: bytes) -> np.ndarray:
    """`probabilities` float32 [N,10] out of a serialized `PredictResponse`."""
    message = apis_pb2.PredictResponse.FromString(response)
    tensor = message.outputs[OUTPUT_NAME]
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype="<f4").reshape(shape)
    return np.asarray(tensor.float_val, dtype=np.float32).reshape(shape)


# -- Open Inference Protocol (V2) ModelInfer ------------------------------------------------------


def _add_field(
    message: Any, name: str, number: int, kind: int, repeated: bool = False, type_name: str = ""
) -> None:
    field = descriptor_pb2.FieldDescriptorProto
    entry = message.field.add(name=name, number=number, type=kind)
    entry.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
    if type_name:
        entry.type_name = type_name


@functools.cache
def v2_messages() -> tuple[type[Any], type[Any]]:
    """(ModelInferRequest, ModelInferResponse) classes: the subset of `inference` (the Open Inference
    Protocol's grpc_predict_v2.proto) that the bench sends and reads, with the spec's field numbers."""
    kind = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="loadtests/peers/v2_subset.proto", package="inference", syntax="proto3"
    )
    contents = proto.message_type.add(name="InferTensorContents")
    _add_field(contents, "fp32_contents", 6, kind.TYPE_FLOAT, repeated=True)

    request = proto.message_type.add(name="ModelInferRequest")
    tensor_in = request.nested_type.add(name="InferInputTensor")
    _add_field(tensor_in, "name", 1, kind.TYPE_STRING)
    _add_field(tensor_in, "datatype", 2, kind.TYPE_STRING)
    _add_field(tensor_in, "shape", 3, kind.TYPE_INT64, repeated=True)
    _add_field(tensor_in, "contents", 5, kind.TYPE_MESSAGE, type_name=".inference.InferTensorContents")
    _add_field(request, "model_name", 1, kind.TYPE_STRING)
    _add_field(request, "model_version", 2, kind.TYPE_STRING)
    _add_field(request, "id", 3, kind.TYPE_STRING)
    _add_field(request, "inputs", 5, kind.TYPE_MESSAGE, True, ".inference.ModelInferRequest.InferInputTensor")
    _add_field(request, "raw_input_contents", 7, kind.TYPE_BYTES, repeated=True)

    response = proto.message_type.add(name="ModelInferResponse")
    tensor_out = response.nested_type.add(name="InferOutputTensor")
    _add_field(tensor_out, "name", 1, kind.TYPE_STRING)
    _add_field(tensor_out, "datatype", 2, kind.TYPE_STRING)
    _add_field(tensor_out, "shape", 3, kind.TYPE_INT64, repeated=True)
    _add_field(tensor_out, "contents", 5, kind.TYPE_MESSAGE, type_name=".inference.InferTensorContents")
    _add_field(response, "model_name", 1, kind.TYPE_STRING)
    _add_field(response, "model_version", 2, kind.TYPE_STRING)
    _add_field(response, "id", 3, kind.TYPE_STRING)
    _add_field(
        response, "outputs", 5, kind.TYPE_MESSAGE, True, ".inference.ModelInferResponse.InferOutputTensor"
    )
    _add_field(response, "raw_output_contents", 6, kind.TYPE_BYTES, repeated=True)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelInferRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelInferResponse")),
    )


def model_infer_request(images: np.ndarray, model: str = "digits") -> bytes:
    """`ModelInferRequest`: one FP32 input `image` [N,28,28,1] in `raw_input_contents` (the binary
    form; KServe then answers in `raw_output_contents` too)."""
    request_class, _ = v2_messages()
    request = request_class(model_name=model)
    request.inputs.add(name=INPUT_NAME, datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(np.ascontiguousarray(images, dtype="<f4").tobytes())
    return bytes(request.SerializeToString())


def model_infer_probabilities(response: bytes) -> np.ndarray:
    """The first output, float32 [N,10], of a serialized `ModelInferResponse` (raw or typed contents)."""
    _, response_class = v2_messages()
    message = response_class.FromString(response)
    if not message.outputs:
        raise ValueError("the ModelInferResponse has no outputs")
    output = message.outputs[0]
    if output.datatype != "FP32":
        raise ValueError(f"expected an FP32 output, got {output.datatype!r}")
    shape = list(output.shape)
    if message.raw_output_contents:
        return np.frombuffer(message.raw_output_contents[0], dtype="<f4").reshape(shape)
    return np.asarray(output.contents.fp32_contents, dtype=np.float32).reshape(shape)
