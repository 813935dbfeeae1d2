"""Response messages both protocols share: REST renders the same protos as JSON (as TF Serving does)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import numpy as np

from serving.backends import Signature, TensorMeta
from serving.codec import data_type, length_delimited, tensor_bytes
from serving.proto import apis_pb2, meta_graph_pb2, tensor_pb2
from serving.repository import ModelVersion

SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"


def model_spec(version: ModelVersion, signature: str = "") -> apis_pb2.ModelSpec:
    """The ModelSpec of an answer. Shared and cached: callers copy it (message constructors and
    `CopyFrom` do), never mutate it."""
    return _model_spec(version.name, version.version, signature)


@functools.lru_cache(maxsize=1024)
def _model_spec(name: str, version: int, signature: str) -> apis_pb2.ModelSpec:
    spec = apis_pb2.ModelSpec(name=name, signature_name=signature)
    spec.version.value = version
    return spec


# The tags of PredictResponse's fields (predict.proto: outputs = 1, model_spec = 2) and of a map
# entry's (key = 1, value = 2), all length-delimited.
_OUTPUTS_TAG, _MODEL_SPEC_TAG = bytes([1 << 3 | 2]), bytes([2 << 3 | 2])
_KEY_TAG, _VALUE_TAG = bytes([1 << 3 | 2]), bytes([2 << 3 | 2])


def predict_response(version: ModelVersion, signature: str, outputs: Mapping[str, np.ndarray], tensor_content: bool) -> bytes:
    """A serialized PredictResponse, written to the wire directly: on a 1-image request building
    the message (its map entries, a copy of the model spec) and serializing it cost a measurable
    part of the request (see the README's Speed section). `tensor_content`: as `codec.from_numpy`."""
    parts = [
        length_delimited(_OUTPUTS_TAG, _output_key(name) + length_delimited(_VALUE_TAG, tensor_bytes(value, tensor_content)))
        for name, value in outputs.items()
    ]
    parts.append(_model_spec_field(version.name, version.version, signature))
    return b"".join(parts)


@functools.lru_cache(maxsize=1024)
def _output_key(name: str) -> bytes:
    return length_delimited(_KEY_TAG, name.encode("utf-8"))


@functools.lru_cache(maxsize=1024)
def _model_spec_field(name: str, version: int, signature: str) -> bytes:
    return length_delimited(_MODEL_SPEC_TAG, _model_spec(name, version, signature).SerializeToString())


def signature_def_map(signatures: Mapping[str, Signature]) -> apis_pb2.SignatureDefMap:
    result = apis_pb2.SignatureDefMap()
    for name, signature in signatures.items():
        result.signature_def[name].CopyFrom(signature_def(name, signature))
    return result


def signature_def(name: str, signature: Signature) -> meta_graph_pb2.SignatureDef:
    """One signature as a SignatureDef. A SavedModel's tensors carry their graph names (`x:0`) and
    may have an unknown rank (`GraphTensor`); ONNX signatures get `<signature>_<key>:0`."""
    definition = meta_graph_pb2.SignatureDef(method_name=signature.method)
    for key, meta in signature.inputs.items():
        _tensor_info(definition.inputs[key], name, key, meta)
    for key, meta in signature.outputs.items():
        _tensor_info(definition.outputs[key], name, key, meta)
    return definition


def _tensor_info(info: meta_graph_pb2.TensorInfo, signature: str, key: str, meta: TensorMeta) -> None:
    info.name = getattr(meta, "tensor_name", "") or f"{signature}_{key}:0"
    info.dtype = data_type(meta.dtype)  # type: ignore[assignment]
    if getattr(meta, "unknown_rank", False):
        info.tensor_shape.unknown_rank = True
    else:
        info.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=int(d)) for d in meta.shape)


def classification_result(
    classes: Iterable[Iterable[tuple[str, float]]], result: apis_pb2.ClassificationResult
) -> None:
    """Fill `result` with (label, score) per class per example."""
    for row in classes:
        result.classifications.add().classes.extend(apis_pb2.Class(label=label, score=score) for label, score in row)


def regression_result(values: Iterable[float], result: apis_pb2.RegressionResult) -> None:
    """Fill `result` with one value per example."""
    result.regressions.extend(apis_pb2.Regression(value=value) for value in values)


def metadata_response(
    version: ModelVersion, signatures: Mapping[str, Signature]
) -> apis_pb2.GetModelMetadataResponse:
    response = apis_pb2.GetModelMetadataResponse(model_spec=model_spec(version))
    response.metadata["signature_def"].Pack(signature_def_map(signatures))
    return response


def status_response(versions: Iterable[ModelVersion]) -> apis_pb2.GetModelStatusResponse:
    response = apis_pb2.GetModelStatusResponse()
    for entry in versions:
        status = response.model_version_status.add(version=entry.version, state=int(entry.state))
        status.status.SetInParent()  # TF Serving always reports a status, OK included
        if entry.error:
            status.status.error_code = 2  # UNKNOWN, as TF Serving reports load failures
            status.status.error_message = entry.error
    return response

